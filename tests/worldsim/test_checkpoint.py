"""Checkpoints: round trip, training state, and the errors for files that are not ours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import worldsim
from worldsim.checkpoint import (
    CheckpointError,
    ModelConfig,
    load_model,
    load_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_model,
    save_state,
)
from worldsim.presets import dynamics_config, get_preset
from worldsim.spaces import ActionSpec
from worldsim.tokenizer import Tokenizer
from worldsim.transformer import Dynamics


def build(seed: int = 0) -> tuple[ModelConfig, Tokenizer, Dynamics]:
    torch.manual_seed(seed)
    p = get_preset("tiny")
    dyn = Dynamics(dynamics_config(p, p.tokenizer.levels, ActionSpec("MultiDiscrete", (3, 2))))
    cfg = ModelConfig(tokenizer=p.tokenizer, dynamics=dyn.cfg, frame_shape=(16, 16), env_id="X-v0", env_kwargs={"a": 1})
    return cfg, Tokenizer(p.tokenizer), dyn


def test_round_trip_rebuilds_the_same_model_from_the_file_alone(tmp_path) -> None:
    cfg, tok, dyn = build()
    path = tmp_path / "m.safetensors"
    save_model(path, cfg, tok, dyn, info={"steps": 3})
    loaded = load_model(path)
    assert loaded.config == cfg and loaded.info == {"steps": 3}
    for a, b in zip(list(tok.state_dict().values()) + list(dyn.state_dict().values()),
                    list(loaded.tokenizer.state_dict().values()) + list(loaded.dynamics.state_dict().values())):
        assert torch.equal(a, b)
    frames = np.random.default_rng(0).integers(0, 256, (2, 2, 16, 16, 3), dtype=np.uint8)
    m1, m2 = worldsim.load(path, device="cpu", seed=0), worldsim.load(path, device="cpu", seed=0)
    m1.prompt(frames, np.zeros((2, 1, 2), dtype=np.int64))
    m2.prompt(frames, np.zeros((2, 1, 2), dtype=np.int64))
    assert np.array_equal(m1.step(np.ones((2, 2), dtype=np.int64)).frames, m2.step(np.ones((2, 2), dtype=np.int64)).frames)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left behind


def test_a_saved_checkpoint_gets_the_permissions_of_any_new_file(tmp_path) -> None:
    """Atomic writes go through a private temporary file; the checkpoint itself must end up
    readable as a plain new file would be (0o644 under umask 022), not owner-only."""
    import os

    cfg, tok, dyn = build()
    old = os.umask(0o022)
    try:
        save_model(tmp_path / "m.safetensors", cfg, tok, dyn)
        save_state(tmp_path / "s.safetensors", {"x": torch.zeros(1)}, {})
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"m.safetensors": 0o644, "s.safetensors": 0o644}


def test_files_that_are_not_worldsim_checkpoints_are_refused(tmp_path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors"):
        load_model(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a WorldSim"):
        load_model(foreign)
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "missing.safetensors")
    cfg, tok, dyn = build()
    path = tmp_path / "m.safetensors"
    save_model(path, cfg, tok, dyn)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(tmp_path / "future.safetensors"), metadata={**meta, "version": "99"})
    with pytest.raises(CheckpointError, match="incompatible"):
        load_model(tmp_path / "future.safetensors")
    bad_cfg = json.loads(meta["config"])
    bad_cfg["dynamics"]["width"] = 32
    save_file(tensors, str(tmp_path / "mismatch.safetensors"), metadata={**meta, "config": json.dumps(bad_cfg)})
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path / "mismatch.safetensors")
    with pytest.raises(worldsim.WorldSimError):  # the runtime reports the same, as a WorldSimError
        worldsim.load(junk)


def test_training_state_round_trip_restores_the_optimizer_exactly(tmp_path) -> None:
    _, _, dyn = build()
    opt = torch.optim.AdamW(dyn.parameters(), lr=1e-3)
    dyn(torch.randint(0, 125, (1, 3, 8, 8)), torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool)).loss.backward()
    opt.step()
    tensors, struct = optimizer_to_tensors(opt)
    save_state(tmp_path / "s.safetensors", tensors, {"opt": struct, "step": 1})
    t2, s2 = load_state(tmp_path / "s.safetensors")
    opt2 = torch.optim.AdamW(dyn.parameters(), lr=1e-3)
    optimizer_from_tensors(opt2, t2, s2["opt"])
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"] and s2["step"] == 1
    for pid in a["state"]:
        for k, v in a["state"][pid].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][pid][k]))
    with pytest.raises(CheckpointError, match="not a WorldSim"):
        load_model(tmp_path / "s.safetensors")  # a state file is not a model
