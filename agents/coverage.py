"""How recorded data covers the action space: the figures the world model's training lives on.

A world model can only imagine what its data shows. :class:`Coverage` counts, per action
component, how often each value is taken, how long a non-zero value is held on average (a
turn held for 10 steps shows a turn; one held for 1 step shows noise), how much the frame
changes on the steps each value is taken (an action whose frames change no more than idle
ones teaches the model nothing), how often every component is idle at once, and how often
the env reports a mined or a placed block.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.atomic import atomic_write_text
from worldsim.spaces import ActionSpec

EVENT_KEYS = ("mined", "placed")
"""Per-step info keys counted as events when their value is not None (BlockWorld's); an
env whose info lacks them reports no events."""


@dataclass
class Coverage:
    """Running counts over recorded steps; merge the counts of parallel workers with ``+``."""

    nvec: tuple[int, ...]
    names: tuple[str, ...]
    steps: int = 0
    episodes: int = 0
    idle_steps: int = 0
    counts: list[list[int]] = field(default_factory=list)
    """counts[c][v]: steps on which component c took value v."""
    runs: list[int] = field(default_factory=list)
    """Number of runs of a held non-zero value, per component."""
    run_steps: list[int] = field(default_factory=list)
    """Steps inside those runs, per component."""
    events: dict[str, int] = field(default_factory=dict)
    """Event key -> steps on which it happened; only keys the env's info has."""
    change: list[list[float]] = field(default_factory=list)
    """change[c][v]: summed mean absolute pixel change of the steps where c took value v."""
    idle_change: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [[0] * n for n in self.nvec]
            self.runs = [0] * len(self.nvec)
            self.run_steps = [0] * len(self.nvec)
            self.change = [[0.0] * n for n in self.nvec]

    @classmethod
    def for_spec(cls, spec: ActionSpec, names: tuple[str, ...] | None = None) -> Coverage:
        names = names if names and len(names) == spec.num_components else None
        return cls(spec.nvec, names or tuple(f"a{i}" for i in range(spec.num_components)))

    def add(
        self,
        action: np.ndarray,
        previous: np.ndarray | None,
        info: dict[str, Any],
        frame_change: float = 0.0,
    ) -> None:
        """Count one step.

        Args:
            action: int64 [C].
            previous: the episode's previous action, if any.
            info: the step's info (for events).
            frame_change: mean absolute difference of the frames before and after, in
                pixel levels: it shows whether an action visibly does something.
        """
        self.steps += 1
        for c, v in enumerate(action.tolist()):
            self.counts[c][v] += 1
            self.change[c][v] += frame_change
            if v != 0:
                self.run_steps[c] += 1
                if previous is None or int(previous[c]) != v:
                    self.runs[c] += 1
        if not action.any():
            self.idle_steps += 1
            self.idle_change += frame_change
        for key in EVENT_KEYS:
            if key in info:
                self.events[key] = self.events.get(key, 0) + (info[key] is not None)

    def __add__(self, other: Coverage) -> Coverage:
        out = Coverage(self.nvec, self.names)
        out.steps = self.steps + other.steps
        out.episodes = self.episodes + other.episodes
        out.idle_steps = self.idle_steps + other.idle_steps
        out.counts = [[a + b for a, b in zip(x, y)] for x, y in zip(self.counts, other.counts)]
        out.runs = [a + b for a, b in zip(self.runs, other.runs)]
        out.run_steps = [a + b for a, b in zip(self.run_steps, other.run_steps)]
        out.change = [[a + b for a, b in zip(x, y)] for x, y in zip(self.change, other.change)]
        out.idle_change = self.idle_change + other.idle_change
        keys = [k for k in EVENT_KEYS if k in self.events or k in other.events]
        out.events = {k: self.events.get(k, 0) + other.events.get(k, 0) for k in keys}
        return out

    def to_json(self) -> dict[str, Any]:
        """Shares of each value, mean held-run lengths and event rates, ready for JSON."""
        n = max(self.steps, 1)
        components = {}
        for c, name in enumerate(self.names):
            components[name] = {
                "share": [round(k / n, 4) for k in self.counts[c]],
                "mean_run_length": round(self.run_steps[c] / self.runs[c], 2)
                if self.runs[c]
                else 0.0,
                "mean_frame_change": [
                    round(ch / k, 2) if k else 0.0 for ch, k in zip(self.change[c], self.counts[c])
                ],
            }
        return {
            "steps": self.steps,
            "episodes": self.episodes,
            "idle_share": round(self.idle_steps / n, 4),
            "idle_frame_change": round(self.idle_change / max(self.idle_steps, 1), 2),
            "components": components,
            "events": {
                k: {"count": v, "per_1000_steps": round(1000 * v / n, 2)}
                for k, v in self.events.items()
            },
            "counts": {name: self.counts[c] for c, name in enumerate(self.names)},
        }

    def write(self, path: Path) -> None:
        """Write :meth:`to_json` to ``path`` whole or not at all (a kill mid-write keeps the old file)."""
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    def table(self) -> str:
        """A short human-readable summary, one line per component."""
        doc = self.to_json()
        lines = [f"coverage over {self.steps} steps, {self.episodes} episodes "
                 f"(idle, every component 0: {100 * doc['idle_share']:.1f}%, "
                 f"mean pixel change when idle {doc['idle_frame_change']:.2f})"]  # fmt: skip
        width = max(len(name) for name in self.names)
        for name, comp in doc["components"].items():
            shares = " ".join(f"{100 * s:5.1f}" for s in comp["share"])
            change = " ".join(f"{c:.1f}" for c in comp["mean_frame_change"])
            lines.append(
                f"  {name:<{width}}  % per value: {shares}   mean held run "
                f"{comp['mean_run_length']:.1f}   mean pixel change per value: {change}"
            )
        for key, ev in doc["events"].items():
            lines.append(
                f"  {key:<{width}}  {ev['count']} events, {ev['per_1000_steps']:.1f} per 1000 steps"
            )
        return "\n".join(lines)
