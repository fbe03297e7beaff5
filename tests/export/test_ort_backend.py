"""The ONNX Runtime backend against the torch backend, the export cache and the env path."""

from __future__ import annotations

import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import export.cache as cache_mod
import worldsim  # noqa: F401  (registers the dream env)
from export.manifest import ManifestError
from export.ort_session import CUDA_EP, require_onnxruntime
from tests.export.conftest import SPEC, toy_rollouts, train_tiny
from worldsim.errors import WorldSimError
from worldsim.runtime import load

STEPS = 50


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine a second thread mostly waits."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def record_codes(model) -> list[np.ndarray]:
    """Capture the codes of every generated frame (what the backend is asked to decode)."""
    seen: list[np.ndarray] = []
    decode = model.backend.decode

    def spy(codes: np.ndarray) -> np.ndarray:
        seen.append(np.array(codes))
        return decode(codes)

    model.backend.decode = spy
    return seen


def open_loop(model, steps: int, seed: int = 1) -> np.ndarray:
    """Prompt 2 worlds with 4 real frames, then ``steps`` random actions: frames ``[steps, B, H, W, 3]``."""
    frames, actions = toy_rollouts(2, 4, seed=100 + seed)
    model.prompt(frames, actions)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        acts = np.stack([rng.integers(0, n, 2) for n in SPEC.nvec], -1)
        out.append(model.step(acts).frames)
    return np.stack(out)


def test_greedy_rollouts_of_both_backends_agree_pixel_for_pixel(tiny_export: Path, tiny_checkpoint: Path) -> None:
    kw = {"precision": "fp32", "temperature": 0.0}
    onnx = load(tiny_export, backend="onnx", **kw)
    assert (onnx.backend.device, onnx.backend.provider) in {("cpu", "CPUExecutionProvider")} | (
        {("cuda:0", CUDA_EP)} if CUDA_EP in require_onnxruntime().get_available_providers() else set()
    )
    a = open_loop(onnx, STEPS)
    b = open_loop(load(tiny_checkpoint, backend="torch", **kw), STEPS)
    within = np.abs(a.astype(np.int16) - b.astype(np.int16)) <= 1
    assert within.mean() >= 0.99, f"only {within.mean():.2%} of pixels within 1 level over {STEPS} steps"
    assert a.std() > 5, "the rollout is flat: the comparison would prove nothing"


def test_same_seed_samples_the_same_tokens_on_both_backends(tiny_export: Path, tiny_checkpoint: Path) -> None:
    kw = {"precision": "fp32", "temperature": 1.0, "chunks": 3}
    runs = {}
    for name, path, seed in (("onnx", tiny_export, 7), ("torch", tiny_checkpoint, 7), ("other seed", tiny_checkpoint, 8)):
        model = load(path, backend="torch" if name != "onnx" else "onnx", seed=seed, **kw)
        codes = record_codes(model)
        open_loop(model, 10)
        runs[name] = np.stack(codes)
    same = (runs["onnx"] == runs["torch"]).mean()
    assert same >= 0.99, f"only {same:.2%} of sampled tokens agree"
    assert (runs["torch"] == runs["other seed"]).mean() < 0.9, "another seed should sample other tokens"


def test_a_checkpoint_is_exported_once_into_the_cache_and_then_reused(tiny_checkpoint: Path, tmp_path: Path, private_cache: Path, monkeypatch) -> None:
    ckpt = tmp_path / "model.safetensors"  # a folder with no export beside it
    shutil.copy(tiny_checkpoint, ckpt)
    first = cache_mod.resolve_export(ckpt)
    assert first.source == "exported" and first.folder.parent == private_cache
    stamp = (first.folder / "dynamics.onnx").stat().st_mtime_ns

    import export.onnx_export

    def no_export(*args, **kwargs):
        raise AssertionError("exported again instead of reusing the cache")

    monkeypatch.setattr(export.onnx_export, "write_export", no_export)
    model = load(ckpt, backend="onnx")
    assert model.backend.folder == first.folder
    assert (first.folder / "dynamics.onnx").stat().st_mtime_ns == stamp
    assert cache_mod.resolve_export(ckpt).source == "cache"


def test_an_export_beside_the_checkpoint_is_used_and_must_match_it(tiny_export: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.safetensors"
    shutil.copy(tiny_checkpoint, ckpt)
    shutil.copytree(tiny_export, tmp_path / "model.onnx")
    assert cache_mod.resolve_export(ckpt).source == "beside"
    other = train_tiny(tmp_path / "other.safetensors", seed=1, steps=1)
    shutil.copytree(tiny_export, tmp_path / "other.onnx")
    with pytest.raises(ManifestError, match="does not match"):
        load(other, backend="onnx")


def test_precision_and_device_errors(tiny_export: Path) -> None:
    with pytest.raises(WorldSimError, match="fp32"):
        load(tiny_export, backend="onnx", precision="bf16")
    with pytest.raises(WorldSimError, match="expected 'auto', 'cpu'"):
        load(tiny_export, backend="onnx", device="tpu")
    if CUDA_EP not in require_onnxruntime().get_available_providers():
        with pytest.raises(WorldSimError, match="onnxruntime-gpu"):
            load(tiny_export, backend="onnx", device="cuda")


def test_the_dream_env_runs_on_the_onnx_backend(tiny_export: Path) -> None:
    env = gym.make("worldsim/Dream-v0", checkpoint=str(tiny_export), backend="onnx", width=16, height=16)
    frames, actions = toy_rollouts(1, 4, seed=3)
    obs, _ = env.reset(seed=0, options={"frames": frames[0], "actions": actions[0]})
    for _ in range(3):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert obs.shape == (16, 16, 3) and obs.dtype == np.uint8 and np.isfinite(reward)
    env.close()
