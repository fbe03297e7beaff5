"""Training data for the world model: splits of recordings, and windows of tokenizer codes.

Training the dynamics model on pixels would run the tokenizer's encoder on every frame of
every window at every step: on a CPU that costs more than the transformer itself. So
:class:`CodeWindows` encodes each recorded frame once, keeps the codes (a few hundred bytes
a frame) and the actions, rewards and ends in memory, and cuts windows from those arrays
using the :class:`~worldsim.data.WindowDataset` index.

Encoding is the slow part of starting a run (about 160 frames/s on one CPU core: 10 minutes
for 100,000 frames), and a long run on a CPU is many ``--resume`` sessions. So the codes are
also written to a cache file, keyed by the recordings, the split and the tokenizer's
weights, and a later start with the same three loads them instead of encoding again.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from worldsim.atomic import turn_to_fill
from worldsim.checkpoint import atomic_save, weights_digest
from worldsim.data import training_reward
from worldsim.errors import WorldSimError
from worldsim.progress import progress
from worldsim.tokenizer import Tokenizer

ENCODE_BATCH = 256
"""Frames per tokenizer call while encoding a dataset."""


def open_split(
    paths: Sequence[str | Path], window: int, split: str, seed: int, required: bool = True
):
    """The ``split`` (``"train"`` / ``"val"``) windows of ``window`` frames, or None when empty
    and not ``required``.

    Raises:
        WorldSimError: no such data, a bad file, or (when required) no window that long.
    """
    from worldsim.data import WindowDataset

    ds = WindowDataset(list(paths), window, split=split, seed=seed)
    if len(ds) == 0:
        if required:
            where = ", ".join(map(str, paths))
            if window == 1:  # the tokenizer's: it has no --context to shorten
                raise WorldSimError(f"no {split} episode in {where} holds a frame; record some")
            raise WorldSimError(
                f"no {split} episode in {where} has {window} frames (--context {window - 1}, plus the frame "
                "before them); record longer or more episodes, or shorten --context"
            )
        return None
    return ds


_ARRAYS = ("codes", "actions", "rewards", "terminated")


class CodeWindows:
    """Windows of tokenizer codes cut from a :class:`~worldsim.data.WindowDataset`.

    Args:
        windows: the dataset (its window length and split are kept).
        tokenizer: encodes every frame once, here.
        device: where the tokenizer runs.
        cache_dir: where to keep the encoded codes between runs (None: do not). The file is
            ``codes-<key>.safetensors``, with the key a digest of the recordings (paths,
            sizes, modification times), the split's records and the tokenizer's weights.
            A missing, stale or unreadable cache file is simply encoded again.
    """

    def __init__(
        self,
        windows,
        tokenizer: Tokenizer,
        device: torch.device,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.windows = windows
        self.action_spec = windows.action_spec
        h, w = windows.observation_shape[:2]
        tokenizer.check_frame_size(h, w)
        self.frame_shape = (h, w)
        self.cache_file: Path | None = None
        if cache_dir is not None:
            tok_key = weights_digest({"": tokenizer}, json.dumps(tokenizer.config.to_dict(), sort_keys=True))
            key = hashlib.sha256(f"{windows.fingerprint()} {tok_key} {h}x{w}".encode()).hexdigest()
            self.cache_file = Path(cache_dir) / f"codes-{key[:24]}.safetensors"
            if self._load_cache(windows.num_frames, tokenizer.config.stride):
                return
            # Runs started together on the same recordings and tokenizer (a sweep of dynamics
            # settings, whose --out share code-cache/) each encoded every frame at once, for one
            # cache file. The later ones now wait for the first and read what it wrote.
            waited: list[str] = []

            def waiting(holder: str) -> None:
                print(f"worldsim: waiting for process {holder}, which is encoding the same codes ({self.cache_file})",
                      file=sys.stderr)  # fmt: skip
                waited.append(holder)

            with turn_to_fill(self.cache_file, waiting):
                if waited and self._load_cache(windows.num_frames, tokenizer.config.stride):
                    return
                self._encode_and_cache(windows, tokenizer, device)
            return
        self._encode(windows, tokenizer, device)

    def _encode_and_cache(self, windows, tokenizer: Tokenizer, device: torch.device) -> None:
        self._encode(windows, tokenizer, device)
        if self.cache_file is not None:
            tensors = {name: torch.from_numpy(getattr(self, name)) for name in _ARRAYS}
            try:
                atomic_save(
                    tensors,
                    self.cache_file,
                    {"format": "worldsim-codes-1", "frames": str(windows.num_frames)},
                )
            except OSError as e:  # the codes are encoded: train on them rather than fail the run
                print(
                    f"worldsim: could not write the code cache {self.cache_file} ({e.strerror or e}); "
                    "the codes are encoded again next time",
                    file=sys.stderr,
                )

    def _load_cache(self, n: int, stride: int) -> bool:
        """Take the arrays from ``self.cache_file`` if it holds this dataset's; else False."""
        assert self.cache_file is not None
        if not self.cache_file.is_file():
            return False
        h, w = self.frame_shape
        want = {"codes": (n, h // stride, w // stride), "actions": (n, self.action_spec.num_components),
                "rewards": (n,), "terminated": (n,)}  # fmt: skip
        try:
            loaded = load_file(str(self.cache_file))
        except (OSError, SafetensorError) as e:
            print(
                f"worldsim: ignoring unreadable code cache {self.cache_file} ({e}); encoding again",
                file=sys.stderr,
            )
            return False
        dtypes = {
            "codes": torch.int32,
            "actions": torch.int64,
            "rewards": torch.float32,
            "terminated": torch.bool,
        }
        if set(loaded) != set(_ARRAYS) or any(
            tuple(loaded[k].shape) != want[k] or loaded[k].dtype != dtypes[k] for k in _ARRAYS
        ):
            print(
                f"worldsim: code cache {self.cache_file} does not fit this dataset; encoding again",
                file=sys.stderr,
            )
            return False
        for name in _ARRAYS:
            setattr(self, name, loaded[name].numpy())
        return True

    def _encode(self, windows, tokenizer: Tokenizer, device: torch.device) -> None:
        h, w = self.frame_shape
        n = windows.num_frames
        s = tokenizer.config.stride
        # int32 halves the memory of int64; codebooks stay far below 2**31 codes.
        self.codes = np.zeros((n, h // s, w // s), dtype=np.int32)
        self.actions = np.zeros((n, self.action_spec.num_components), dtype=np.int64)
        self.rewards = np.zeros(n, dtype=np.float32)
        self.terminated = np.zeros(n, dtype=bool)
        buf: list[np.ndarray] = []
        start = 0
        bar = progress(n, "encode frames", unit="frame", leave=False)
        with torch.inference_mode():
            try:
                for r in range(n):
                    rec = windows.record(r)
                    buf.append(rec.image((h, w)))
                    if rec.kind == "step":
                        self.actions[r] = rec.action
                        self.rewards[r] = training_reward(rec)
                        self.terminated[r] = rec.terminated
                    if len(buf) == ENCODE_BATCH or r == n - 1:
                        frames = torch.from_numpy(np.stack(buf)).to(device)
                        self.codes[start : start + len(buf)] = tokenizer.encode(frames).cpu().numpy()
                        start += len(buf)
                        buf = []
                    bar.update(1)
            finally:
                bar.close()

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
