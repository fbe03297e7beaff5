"""The stay gate's reference, moved with the camera (``DynamicsConfig.stay_motion``).

The stay gate (:mod:`worldsim.transformer`) adds a learned bonus to the code each cell had
in the previous frame: "unchanged" is the likeliest next code of most cells. When the camera
moves, that guess is wrong almost everywhere: in BlockWorld at 64x64 a pitch step (5
degrees) slides the picture about 4 pixels up or down, one cell of the stride-4 tokenizer,
so a cell's likeliest next code is its neighbour's. A gate that can only say "keep" holds
such a step back.

With ``stay_motion`` the reference is the previous frame's codes shifted by whole cells, by
an amount that depends on the action: a table of ``(component, value, dx, dy)`` rows, where
a step whose action has ``value`` in ``component`` shifts the reference ``dx`` cells right
and ``dy`` cells down (rows add up when several match; cells shifted in from outside the
grid repeat the edge cell). The model still predicts every cell; the gate only changes
which code it favours. Training and the runtime build the reference the same way
(:func:`stay_reference`), so what the gate learns is what it gets.

The table is measured, not written by hand: :func:`estimate_motion` finds, for each value of
each component, the whole-cell shift that makes the most cells of the next frame equal to
the shifted previous one in recorded data, and keeps it where it beats no shift clearly
(``worldsim train dynamics --stay-motion auto``).

For BlockWorld it finds pitch (one cell up or down) and not yaw: a turn's picture slides by
about 4 pixels in the middle and up to 6 at the sides, and the tokenizer's codes change
when a frame slides by a fraction of a cell, so no whole-cell shift keeps them. Trained on
the shipped model, the pitch rows changed no eval figure beyond what the seeds move, so the
shipped model has no table (docs/model.md, "Not met", "A stay gate that moves with the
camera").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:
    import torch

Array = Union["torch.Tensor", np.ndarray]
"""Codes and actions: torch tensors in training, numpy arrays in the runtime."""

MotionTable = tuple[tuple[int, int, int, int], ...]
"""``(component, value, dx, dy)`` rows: see the module docstring."""

ESTIMATE_WINDOWS = 4096
"""Training windows ``--stay-motion auto`` measures the table on."""
MAX_SHIFT = 2
"""Largest shift, in cells, :func:`estimate_motion` tries in each direction."""
MIN_GAIN = 0.05
"""A shift is kept when the share of cells it matches beats no shift's by at least this."""
MIN_PAIRS = 200
"""Frame pairs a component's value needs before its shift is estimated."""


def action_shifts(actions: Array, motion: MotionTable) -> tuple[Array, Array]:
    """int64 actions ``[..., C]`` -> the reference's shift in cells ``(dx, dy)``, each ``[...]``
    (torch tensors or numpy arrays, as given)."""
    dx = actions[..., 0] * 0
    dy = actions[..., 0] * 0
    for c, v, sx, sy in motion:
        hit = actions[..., c] == v
        dx = dx + hit * sx
        dy = dy + hit * sy
    return dx, dy


def shift_codes(codes: Array, dx: Array, dy: Array) -> Array:
    """``out[..., y, x] = codes[..., y - dy, x - dx]``, with coordinates clamped to the grid
    (the edge repeats). ``codes`` ``[..., h, w]``; ``dx``, ``dy`` int ``[...]``; torch tensors
    (training) or numpy arrays (the runtime, whose sampler works in numpy)."""
    h, w = codes.shape[-2:]
    if isinstance(codes, np.ndarray):
        rows = np.clip(np.arange(h) - np.asarray(dy)[..., None], 0, h - 1)  # [..., h]
        cols = np.clip(np.arange(w) - np.asarray(dx)[..., None], 0, w - 1)  # [..., w]
        out = np.take_along_axis(codes, np.broadcast_to(rows[..., :, None], codes.shape), -2)
        return np.take_along_axis(out, np.broadcast_to(cols[..., None, :], codes.shape), -1)
    import torch  # here, so the runtime (numpy alone) does not import it

    rows = (torch.arange(h, device=codes.device) - dy[..., None]).clamp(0, h - 1)
    cols = (torch.arange(w, device=codes.device) - dx[..., None]).clamp(0, w - 1)
    out = codes.gather(-2, rows[..., :, None].expand(codes.shape))
    return out.gather(-1, cols[..., None, :].expand(codes.shape))


def stay_reference(prev_codes: Array, actions: Array, motion: MotionTable) -> Array:
    """The codes the stay gate favours for the next frame: ``prev_codes`` ``[..., h, w]``
    shifted by what ``actions`` ``[..., C]`` (the actions that lead to the next frame) move
    the picture; ``prev_codes`` itself without a table or where no row matches."""
    if not motion:
        return prev_codes
    dx, dy = action_shifts(actions, motion)
    if not bool((dx != 0).any() or (dy != 0).any()):
        return prev_codes
    return shift_codes(prev_codes, dx, dy)


@dataclass(frozen=True)
class MotionEstimate:
    """What :func:`estimate_motion` measured."""

    table: MotionTable
    """The rows kept."""
    matches: dict[str, dict[str, float]]
    """``"component=value"`` -> ``{"pairs", "none", "best", "dx", "dy"}``: frame pairs seen, the
    share of inner cells equal to the previous frame unshifted and at the best shift; only
    ``{"pairs"}`` for a value seen in fewer than :data:`MIN_PAIRS` pairs, which gets no row."""


def estimate_motion(codes: torch.Tensor, actions: torch.Tensor, nvec: tuple[int, ...], names: list[str] | None = None) -> MotionEstimate:
    """Measure the motion table on windows of recorded codes.

    Args:
        codes: int64 ``[N, T, h, w]``, windows of consecutive frames' codes.
        actions: int64 ``[N, T-1, C]``; ``actions[:, i]`` led from frame i to frame i+1.
        nvec: choices per action component. Every value is measured, "none" too: a value
            whose best shift is no shift gets no row.
        names: component names for ``matches`` (default: their indices).

    Only the inner cells (``MAX_SHIFT`` from each edge) are compared, so the edge that a
    shift fills by repetition does not count for or against it.
    """
    m = MAX_SHIFT
    prev, nxt = codes[:, :-1].reshape(-1, *codes.shape[2:]), codes[:, 1:].reshape(-1, *codes.shape[2:])
    acts = actions.reshape(-1, actions.shape[-1])
    inner = (slice(None), slice(m, codes.shape[-2] - m), slice(m, codes.shape[-1] - m))
    rows: list[tuple[int, int, int, int]] = []
    matches: dict[str, dict[str, float]] = {}
    for c, n in enumerate(nvec):
        for v in range(n):
            sel = acts[:, c] == v
            count = int(sel.sum())
            key = f"{names[c] if names else c}={v}"
            if count < MIN_PAIRS:
                matches[key] = {"pairs": count}  # too few to measure: no row
                continue
            p, q = prev[sel], nxt[sel]
            score = {}
            for dy in range(-m, m + 1):
                for dx in range(-m, m + 1):
                    shifted = shift_codes(p, p[:, 0, 0] * 0 + dx, p[:, 0, 0] * 0 + dy)
                    score[dx, dy] = float((shifted[inner] == q[inner]).float().mean())
            (bx, by), best = max(score.items(), key=lambda kv: kv[1])
            matches[key] = {"pairs": count, "none": score[0, 0], "best": best, "dx": bx, "dy": by}
            if (bx, by) != (0, 0) and best >= score[0, 0] + MIN_GAIN:
                rows.append((c, v, bx, by))
    return MotionEstimate(tuple(rows), matches)


def as_table(rows) -> MotionTable:
    """A table from JSON (lists) or tuples, checked: four ints a row."""
    out = []
    for r in rows or ():
        r = tuple(int(x) for x in r)
        if len(r) != 4:
            raise ValueError(f"a stay_motion row is (component, value, dx, dy), got {r}")
        out.append(r)
    return tuple(out)
