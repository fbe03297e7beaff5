"""Training data for the world model: splits of recordings, and windows of tokenizer codes.

Training the dynamics model on pixels would run the tokenizer's encoder on every frame of
every window at every step: on a CPU that costs more than the transformer itself. So
:class:`CodeWindows` encodes each recorded frame once, keeps the codes (a few hundred bytes
a frame) and the actions, rewards and ends in memory, and cuts windows from those arrays
using the :class:`~worldsim.data.WindowDataset` index.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from worldsim.errors import WorldSimError
from worldsim.tokenizer import Tokenizer

ENCODE_BATCH = 256
"""Frames per tokenizer call while encoding a dataset."""


def open_split(paths: Sequence[str | Path], window: int, split: str, seed: int, required: bool = True):
    """The ``split`` (``"train"`` / ``"val"``) windows of ``window`` frames, or None when empty
    and not ``required``.

    Raises:
        WorldSimError: no such data, a bad file, or (when required) no window that long.
    """
    from worldsim.data import WindowDataset

    ds = WindowDataset(list(paths), window, split=split, seed=seed)
    if len(ds) == 0:
        if required:
            raise WorldSimError(
                f"no {split} episode in {', '.join(map(str, paths))} has {window} frames; record longer "
                "or more episodes, or shorten --context"
            )
        return None
    return ds


class CodeWindows:
    """Windows of tokenizer codes cut from a :class:`~worldsim.data.WindowDataset`.

    Args:
        windows: the dataset (its window length and split are kept).
        tokenizer: encodes every frame once, here.
        device: where the tokenizer runs.
    """

    def __init__(self, windows, tokenizer: Tokenizer, device: torch.device) -> None:
        self.windows = windows
        self.action_spec = windows.action_spec
        h, w = windows.observation_shape[:2]
        tokenizer.check_frame_size(h, w)
        self.frame_shape = (h, w)
        n = windows.num_frames
        s = tokenizer.config.stride
        # int32 halves the memory of int64; codebooks stay far below 2**31 codes.
        self.codes = np.zeros((n, h // s, w // s), dtype=np.int32)
        self.actions = np.zeros((n, self.action_spec.num_components), dtype=np.int64)
        self.rewards = np.zeros(n, dtype=np.float32)
        self.terminated = np.zeros(n, dtype=bool)
        buf: list[np.ndarray] = []
        start = 0
        with torch.inference_mode():
            for r in tqdm(range(n), desc="encode frames", unit="frame", leave=False):
                rec = windows.record(r)
                buf.append(rec.image((h, w)))
                if rec.kind == "step":
                    self.actions[r] = rec.action
                    self.rewards[r] = rec.reward
                    self.terminated[r] = rec.terminated
                if len(buf) == ENCODE_BATCH or r == n - 1:
                    frames = torch.from_numpy(np.stack(buf)).to(device)
                    self.codes[start : start + len(buf)] = tokenizer.encode(frames).cpu().numpy()
                    start += len(buf)
                    buf = []

    def __len__(self) -> int:
        return len(self.windows)

    def sample(self, rng: np.random.Generator, batch: int) -> dict[str, torch.Tensor]:
        """``batch`` windows: codes ``[B, T, h, w]``, actions ``[B, T-1, C]``, rewards and
        terminated ``[B, T-1]`` (``actions[:, i]`` led from frame i to frame i+1)."""
        idx = rng.integers(0, len(self.windows), size=batch)
        spans = [self.windows.record_range(int(i)) for i in idx]
        codes = np.stack([self.codes[a:b] for a, b in spans])
        # A step record holds the action that led to its frame: records a+1..b-1.
        acts = np.stack([self.actions[a + 1 : b] for a, b in spans])
        rew = np.stack([self.rewards[a + 1 : b] for a, b in spans])
        term = np.stack([self.terminated[a + 1 : b] for a, b in spans])
        return {
            "codes": torch.from_numpy(codes).long(),
            "actions": torch.from_numpy(acts),
            "rewards": torch.from_numpy(rew),
            "terminated": torch.from_numpy(term),
        }
