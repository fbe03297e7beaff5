"""The explorer: a scripted BlockWorld player whose recordings teach a world model the game.

A world model learns what its data shows, so the explorer is written for the data, not to
win. It switches between *behaviours* (walk, turn, look, mine, tunnel, dig down, place,
build a pillar, swim, pause), each held for a sampled number of steps, because a held
action is what makes its effect visible: a turn held for 5-30 steps sweeps the view, one
held for a single step is noise. Reflexes react to ``info``: it jumps when walking gets
stuck, mines what blocks its way, swims up in water, turns away from lava, and keeps the
view from staring at the sky or the ground for long. Every choice comes from its own
``np.random.Generator``, so a seeded recording repeats exactly.

Day and night come from the env: every BlockWorld episode starts at a uniform time of day.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.blockworld import ACTION_NAMES
from envs.blockworld.blocks import BLOCKS

MOVE, STRAFE, JUMP, YAW, PITCH, ATTACK, USE, HOTBAR = range(len(ACTION_NAMES))
FORWARD, BACK = 1, 2
UP, DOWN = 1, 2
PLACEABLE = frozenset(b.name for b in BLOCKS if b.placeable)
HARDNESS = {b.name: b.hardness for b in BLOCKS}
_DRY_ONLY = ("walk", "pause", "tunnel", "dig_down", "place", "pillar")
"""Behaviours that falling into water interrupts (turning, looking, mining go on)."""
PITCH_STEP = 5.0
"""Degrees per pitch step (the env's documented 5 degrees per step)."""


@dataclass(frozen=True)
class ExplorerConfig:
    """How often and how long the explorer does each thing."""

    weights: tuple[tuple[str, float], ...] = (
        ("walk", 3.0),
        ("turn", 2.0),
        ("look", 1.5),
        ("mine", 1.3),
        ("tunnel", 0.4),
        ("dig_down", 0.25),
        ("place", 2.0),
        ("pillar", 0.3),
        ("pause", 0.3),
    )
    """Relative chance of each behaviour when a new one starts (if it is possible now)."""
    walk_steps: tuple[int, int] = (15, 70)
    turn_steps: tuple[int, int] = (5, 30)
    """A held turn: 25-150 degrees."""
    look_steps: tuple[int, int] = (3, 12)
    pause_steps: tuple[int, int] = (1, 6)
    """Short and rare: long frozen stretches teach nothing."""
    place_steps: tuple[int, int] = (6, 20)
    tunnel_steps: tuple[int, int] = (25, 70)
    pillar_steps: tuple[int, int] = (10, 30)
    hotbar_chance: float = 0.02
    """Chance per step of pressing a random hotbar key."""
    strafe_chance: float = 0.03
    """Chance per walking step of starting a strafe run."""
    veer_chance: float = 0.04
    """Chance per walking step of starting a short turn while walking."""
    backup_chance: float = 0.025
    """Chance per walking step of backing up for a few steps."""
    swim_share: float = 0.6
    """In water, the chance that the next behaviour is swimming (else turn, look, mine...)."""
    swim_jump_share: float = 0.7
    """Share of swimming spent holding jump (rising); the rest sinks and looks around."""
    stuck_window: int = 4
    """Steps over which less than ``stuck_distance`` of travel means walking is blocked."""
    stuck_distance: float = 0.15
    max_pitch: float = 40.0
    """Walking drifts the view back to level beyond this many degrees."""
    mine_patience: int = 20
    """Ticks of attack beyond the block's hardness before giving up (it moved, or fell)."""


def hotbar(info: dict[str, Any]) -> list[tuple[str | None, int]]:
    """(item name or None, count) per hotbar slot, from a single env's ``inventory`` or a
    vector env's ``inventory_items`` and ``inventory_counts``."""
    if info.get("inventory") is not None:
        return [(item, int(n)) for item, n in info["inventory"]]
    items, counts = info.get("inventory_items"), info.get("inventory_counts")
    if items is None or counts is None:
        return []
    return [(item, int(n)) for item, n in zip(items, counts)]


class Explorer:
    """Scripted BlockWorld agent for recording varied, realistic, learnable data.

    Args:
        rng: the source of every random choice.
        config: behaviour weights and durations.
    """

    name = "explorer"

    def __init__(self, rng: np.random.Generator, config: ExplorerConfig | None = None) -> None:
        self.rng = rng
        self.config = config or ExplorerConfig()
        self._names = [n for n, _ in self.config.weights]
        self._weights = np.array([w for _, w in self.config.weights], dtype=np.float64)
        self.reset(None, {})

    # -- episode state ------------------------------------------------------------------

    def reset(self, obs: np.ndarray | None, info: dict[str, Any]) -> None:
        """Forget the last episode; start with a walk."""
        self.behaviour = "walk"
        self.left = self._draw(self.config.walk_steps)
        self.held = np.zeros(len(ACTION_NAMES), dtype=np.int64)  # the behaviour's held keys
        self.yaw_run = self.strafe_run = self.back_run = 0  # runs held inside a walk
        self.yaw_dir = self.strafe_dir = 1
        self.hotbar_once = 0  # a hotbar key to press on the next step (0: none)
        self.dig_blocks = 0  # blocks still to dig through when digging down
        self.jump_left = 0
        self.stuck_jumps = 0
        self.mine_ticks = 0
        self.target_pitch: float | None = None
        self.positions: deque[tuple[float, float]] = deque(maxlen=self.config.stuck_window + 1)
        self.last_health = info.get("health")
        self.mined = self.placed = 0

    def _draw(self, span: tuple[int, int]) -> int:
        return int(self.rng.integers(span[0], span[1] + 1))

    # -- choosing behaviours ------------------------------------------------------------

    def _possible(self, name: str, info: dict[str, Any]) -> bool:
        target = info.get("target_block")
        if name == "mine":
            return target is not None and HARDNESS.get(target, -1) > 0
        if name in ("place", "pillar"):
            return self._placeable_slot(info) is not None and not info.get("in_water", False)
        if name in ("dig_down", "tunnel"):
            return not info.get("in_water", False)
        return True

    def _placeable_slot(self, info: dict[str, Any]) -> int | None:
        slots = [i for i, (item, n) in enumerate(hotbar(info)) if item in PLACEABLE and n > 0]
        return None if not slots else int(self.rng.choice(slots))

    def _start(self, info: dict[str, Any], name: str | None = None) -> None:
        if name is None:
            ok = np.array([self._possible(n, info) for n in self._names])
            p = self._weights * ok
            name = self._names[int(self.rng.choice(len(p), p=p / p.sum()))]
        cfg = self.config
        self.behaviour = name
        self.held[:] = 0
        self.target_pitch = None
        self.mine_ticks = 0
        if name == "walk":
            self.left = self._draw(cfg.walk_steps)
            self.held[MOVE] = FORWARD
        elif name == "turn":
            self.left = self._draw(cfg.turn_steps)
            self.held[YAW] = self.rng.integers(1, 3)
            self.held[MOVE] = self.rng.choice([FORWARD, BACK, 0], p=[0.5, 0.15, 0.35])
        elif name == "look":
            self.left = self._draw(cfg.look_steps)
            pitch = float(info.get("pitch", 0.0))
            down = pitch > 20 or (pitch > -50 and self.rng.random() < 0.5)
            self.held[PITCH] = DOWN if down else UP
        elif name == "mine":
            target = info.get("target_block")
            self.left = HARDNESS.get(target, 40) + cfg.mine_patience
            self.held[ATTACK] = 1
        elif name == "tunnel":
            self.left = self._draw(cfg.tunnel_steps)
            self.target_pitch = float(self.rng.uniform(-15, 5))
            self.held[MOVE], self.held[ATTACK] = FORWARD, 1
        elif name == "dig_down":
            self.dig_blocks = int(self.rng.integers(2, 5))
            self.left = self.dig_blocks * 40  # gives up on bedrock or an endless fall
            self.target_pitch = -85.0
            self.held[ATTACK] = 1
        elif name == "place":
            self.left = self._draw(cfg.place_steps)
            self.target_pitch = float(self.rng.uniform(-70, -25))
            self.held[USE] = 1
            self.held[MOVE] = BACK if self.rng.random() < 0.4 else 0
            self.held[YAW] = self.rng.integers(1, 3) if self.rng.random() < 0.3 else 0
            self._select(info)
        elif name == "pillar":
            self.left = self._draw(cfg.pillar_steps)
            self.target_pitch = -85.0
            self.held[USE], self.held[JUMP] = 1, 1
            self._select(info)
        elif name == "pause":
            self.left = self._draw(cfg.pause_steps)
        elif name == "swim":
            self.left = self._draw(cfg.walk_steps)
            self.held[MOVE] = FORWARD
            self.held[JUMP] = 1
        elif name == "flee":
            self.left = 36  # half a turn at 5 degrees per step
            self.held[YAW] = self.rng.integers(1, 3)
            self.held[MOVE] = BACK

    def _select(self, info: dict[str, Any]) -> None:
        slot = self._placeable_slot(info)
        if slot is not None and slot != info.get("selected_slot"):
            self.hotbar_once = slot + 1  # hotbar values 1-9 select slots 0-8

    # -- one step -----------------------------------------------------------------------

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        """The next action, int64 [8], given the latest observation and info."""
        cfg = self.config
        pos = info.get("position")
        if pos is not None:
            self.positions.append((float(pos[0]), float(pos[2])))
        self.mined += info.get("mined") is not None
        self.placed += info.get("placed") is not None
        self._reflexes(info)
        self.left -= 1
        if self.left <= 0 or self._finished(info):
            in_water = info.get("in_water") and self.rng.random() < self.config.swim_share
            self._start(info, "swim" if in_water else None)

        a = self.held.copy()
        pitch = float(info.get("pitch", 0.0))
        if self.target_pitch is not None and abs(pitch - self.target_pitch) >= PITCH_STEP:
            # Aim first: behaviours that need a view angle hold pitch until they have it.
            a[PITCH] = UP if pitch < self.target_pitch else DOWN
            if self.behaviour in ("place", "pillar"):
                a[USE] = a[JUMP] = 0
        if self.behaviour in ("walk", "swim", "turn"):
            a = self._walk_extras(a, pitch)
        if self.jump_left > 0:
            a[JUMP] = 1
            self.jump_left -= 1
        if self.hotbar_once:
            a[HOTBAR], self.hotbar_once = self.hotbar_once, 0
        elif self.rng.random() < cfg.hotbar_chance:
            a[HOTBAR] = self.rng.integers(1, 10)
        return a

    def _walk_extras(self, a: np.ndarray, pitch: float) -> np.ndarray:
        cfg = self.config
        if (
            self.behaviour == "walk"
            and self.back_run <= 0
            and self.rng.random() < cfg.backup_chance
        ):
            self.back_run = self._draw((4, 12))
        if self.back_run > 0:
            a[MOVE] = BACK
            self.back_run -= 1
        if self.behaviour == "swim" and self.rng.random() < 0.1:
            # Re-decide every ~10 steps whether to rise (hold jump) or sink and look around.
            self.held[JUMP] = int(self.rng.random() < cfg.swim_jump_share)
        if self.strafe_run <= 0 and self.rng.random() < cfg.strafe_chance:
            self.strafe_run = self._draw((4, 15))
            self.strafe_dir = int(self.rng.integers(1, 3))
        if self.strafe_run > 0:
            a[STRAFE] = self.strafe_dir
            self.strafe_run -= 1
        if self.behaviour != "turn":
            if self.yaw_run <= 0 and self.rng.random() < cfg.veer_chance:
                self.yaw_run = self._draw((5, 18))
                self.yaw_dir = int(self.rng.integers(1, 3))
            if self.yaw_run > 0:
                a[YAW] = self.yaw_dir
                self.yaw_run -= 1
        if abs(pitch) > cfg.max_pitch:
            a[PITCH] = DOWN if pitch > 0 else UP  # drift back to level
        return a

    def _finished(self, info: dict[str, Any]) -> bool:
        b = self.behaviour
        if b == "mine":
            return info.get("mined") is not None or info.get("target_block") is None
        if b in ("place", "pillar"):
            return self._placeable_slot(info) is None and self.hotbar_once == 0
        if b == "swim":
            return not info.get("in_water", False)
        if b == "dig_down" and info.get("mined") is not None:
            self.dig_blocks -= 1
            return self.dig_blocks <= 0
        return False

    def _reflexes(self, info: dict[str, Any]) -> None:
        cfg = self.config
        health = info.get("health")
        if info.get("target_block") == "lava" and self.behaviour != "flee":
            self._start(info, "flee")
            return
        if health is not None and self.last_health is not None and health < self.last_health:
            self.jump_left = max(self.jump_left, 3)
        self.last_health = health
        if info.get("in_water") and self.behaviour in _DRY_ONLY:
            self._start(info, "swim")
            return
        walking = self.held[MOVE] == FORWARD and self.behaviour in (
            "walk",
            "turn",
            "swim",
            "tunnel",
        )
        if walking and len(self.positions) == self.positions.maxlen:
            (x0, z0), (x1, z1) = self.positions[0], self.positions[-1]
            if np.hypot(x1 - x0, z1 - z0) < cfg.stuck_distance and self.jump_left == 0:
                self.stuck_jumps += 1
                self.positions.clear()
                if self.stuck_jumps <= 2:
                    self.jump_left = 4  # hop onto the step in front
                elif self._possible("mine", info) and self.behaviour != "tunnel":
                    self._start(info, "mine")
                    self.stuck_jumps = 0
                else:
                    self._start(info, "turn")
                    self.stuck_jumps = 0
            elif np.hypot(x1 - x0, z1 - z0) >= cfg.stuck_distance:
                self.stuck_jumps = 0
