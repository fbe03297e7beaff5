"""Torch and ONNX Runtime rolled out side by side: how closely the two backends agree.

The export's self-verification compares single graph calls; this compares what a user
sees, whole open-loop rollouts through :class:`worldsim.runtime.WorldModel`, where one
flipped token would be fed back and grow. ``worldsim export onnx --parity N`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldsim.runtime import WorldModel, load


@dataclass(frozen=True)
class ParityResult:
    """Agreement of the two backends over the same open-loop rollout."""

    steps: int
    batch: int
    pixels_within_1: float
    """Greedy (temperature 0): share of all pixels of all steps within 1 level of 255."""
    greedy_tokens_equal: float
    """Greedy: share of generated tokens that are identical."""
    sampled_tokens_equal: float
    """Temperature 1, same seed: share of sampled tokens that are identical."""


def record_codes(model: WorldModel) -> list[np.ndarray]:
    """From now on, collect the codes of every frame ``model`` generates (it decodes them all)."""
    seen: list[np.ndarray] = []
    decode = model.backend.decode

    def spy(codes: np.ndarray) -> np.ndarray:
        seen.append(np.array(codes))
        return decode(codes)

    model.backend.decode = spy
    return seen


def rollout(model: WorldModel, frames: np.ndarray, actions: np.ndarray, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompt, then ``steps`` random actions: (frames ``[steps, B, H, W, 3]``, codes ``[steps, B, h, w]``)."""
    codes = record_codes(model)
    model.prompt(frames, actions)
    rng = np.random.default_rng(seed)
    nvec = np.asarray(model.action_spec.nvec)
    B = frames.shape[0]
    out = [model.step(rng.integers(0, nvec, (B, len(nvec)))).frames for _ in range(steps)]
    return np.stack(out), np.stack(codes)


def measure_parity(
    checkpoint: str | Path,
    export_folder: str | Path,
    *,
    steps: int = 50,
    batch: int = 2,
    chunks: int | None = None,
    seed: int = 0,
    prompt: tuple[np.ndarray, np.ndarray] | None = None,
) -> ParityResult:
    """Roll out ``checkpoint`` on torch and ``export_folder`` on ONNX Runtime, both fp32 on the CPU.

    Args:
        prompt: frames uint8 ``[B, T, H, W, 3]`` and actions ``[B, T-1, C]``; None = ``batch``
            worlds of random pixels at the model's frame size (what the graphs compute does
            not need in-distribution frames to be compared).
    """
    kw = {"device": "cpu", "precision": "fp32", "chunks": chunks}
    torch_greedy = load(checkpoint, backend="torch", temperature=0.0, seed=seed, **kw)
    if prompt is None:
        H, W = torch_greedy.config.frame_shape
        T = min(4, torch_greedy.context_frames)
        rng = np.random.default_rng(seed)
        nvec = np.asarray(torch_greedy.action_spec.nvec)
        prompt = (rng.integers(0, 256, (batch, T, H, W, 3), dtype=np.uint8), rng.integers(0, nvec, (batch, T - 1, len(nvec))))
    frames, actions = prompt
    a, ca = rollout(torch_greedy, frames, actions, steps, seed)
    b, cb = rollout(load(export_folder, backend="onnx", temperature=0.0, seed=seed, **kw), frames, actions, steps, seed)
    sampled = [
        rollout(load(path, backend=backend, temperature=1.0, seed=seed + 1, **kw), frames, actions, steps, seed)[1]
        for path, backend in ((checkpoint, "torch"), (export_folder, "onnx"))
    ]
    return ParityResult(
        steps=steps,
        batch=frames.shape[0],
        pixels_within_1=float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16)) <= 1)),
        greedy_tokens_equal=float(np.mean(ca == cb)),
        sampled_tokens_equal=float(np.mean(sampled[0] == sampled[1])),
    )
