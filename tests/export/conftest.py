"""A tiny world model, briefly trained so its logits are decisive, and its ONNX export.

Trained weights matter for parity: a freshly initialised model's logits are all near-ties,
where fp32 rounding alone may flip a greedy choice; a trained model's are not. The toy world
is a striped texture that the first action component scrolls left or right, so a few
seconds of training give the dynamics something real to predict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.onnx_export import export_onnx
from worldsim.checkpoint import ModelConfig, save_model
from worldsim.presets import dynamics_config, get_preset
from worldsim.spaces import ActionSpec
from worldsim.tokenizer import Tokenizer
from worldsim.transformer import Dynamics

SIDE = 16
SPEC = ActionSpec("MultiDiscrete", (3, 3, 2))
STEPS = 40


def toy_rollouts(batch: int, T: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames ``[B, T, 16, 16, 3]`` and actions ``[B, T-1, 3]`` of the scrolling world."""
    rng = np.random.default_rng(seed)
    x = np.arange(4 * SIDE)
    frames, actions = [], []
    for _ in range(batch):
        colours = rng.integers(0, 256, (4, 3))
        strip = colours[(x // rng.integers(2, 6)) % 4]  # (4*SIDE, 3) vertical stripes
        shade = np.linspace(0.6, 1.0, SIDE)[:, None, None]
        pos = int(rng.integers(0, 3 * SIDE))
        acts = np.stack([rng.integers(0, n, T - 1) for n in SPEC.nvec], -1)
        seq = []
        for t in range(T):
            if t:
                pos = (pos + 2 * (int(acts[t - 1, 0]) - 1)) % (3 * SIDE)
            seq.append((strip[None, pos : pos + SIDE] * shade).astype(np.uint8))
        frames.append(np.stack(seq))
        actions.append(acts)
    return np.stack(frames), np.stack(actions)


def train_tiny(path: Path, seed: int = 0, steps: int = STEPS, stay_gate: bool = False, still_head: bool = False) -> Path:
    """Train the ``tiny`` preset for ``steps`` steps per model with their own losses; save it."""
    torch.manual_seed(seed)
    preset = get_preset("tiny")
    tok = Tokenizer(preset.tokenizer)
    dyn = Dynamics(dynamics_config(preset, preset.tokenizer.levels, SPEC, context=4, stay_gate=stay_gate, still_head=still_head))
    frames, actions = toy_rollouts(64, 4, seed)
    flat = torch.from_numpy(frames.reshape(-1, SIDE, SIDE, 3))
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    for i in range(steps):
        batch = flat[(i * 16) % len(flat) :][:16]
        opt.zero_grad()
        tok(batch).loss.backward()
        opt.step()
    tok.eval()
    with torch.no_grad():
        codes = tok.encode(flat).reshape(64, 4, SIDE // 2, SIDE // 2)  # (B, T, h, w)
    acts = torch.from_numpy(actions)
    opt = torch.optim.Adam(dyn.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for i in range(steps):
        sl = slice((i * 16) % 64, (i * 16) % 64 + 16)
        opt.zero_grad()
        zeros = torch.zeros(16, 3)
        dyn(codes[sl], acts[sl], zeros, zeros.bool(), generator=gen).loss.backward()
        opt.step()
    config = ModelConfig(tokenizer=preset.tokenizer, dynamics=dyn.cfg, frame_shape=(SIDE, SIDE), preset="tiny")
    save_model(path, config, tok, dyn.eval())
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine a second thread mostly waits
    try:
        return train_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoint: Path, tmp_path_factory) -> Path:
    """The export folder of :func:`tiny_checkpoint` (not beside it: the cache tests need it absent)."""
    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("export") / "tiny-export").folder


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets an empty ONNX cache of its own, never the user's."""
    root = tmp_path / "onnx-cache"
    monkeypatch.setenv("WORLDSIM_ONNX_CACHE", str(root))
    return root
