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


def test_a_save_onto_a_full_disk_is_an_os_error_naming_the_file_and_keeps_the_old_one(tmp_path, full_disk) -> None:
    """safetensors reports a failed write as its own SafetensorError: a full disk ended training
    with a traceback, and the IDM and code caches, which go on without their file on an
    OSError, took the eval or the run down with them."""
    import errno

    cfg, tok, dyn = build()
    path, state = tmp_path / "m.safetensors", tmp_path / "m.state.safetensors"
    save_model(path, cfg, tok, dyn, info={"steps": 3})
    save_state(state, {"x": torch.zeros(4)}, {"step": 3})
    with full_disk(1000):
        with pytest.raises(OSError) as e:
            save_model(path, cfg, *build(1)[1:], info={"steps": 4})
        with pytest.raises(OSError) as e2:
            save_state(state, {"x": torch.ones(1000)}, {"step": 4})
    assert (e.value.errno, e.value.filename, e2.value.filename) == (errno.EFBIG, str(path), str(state))
    assert load_model(path).info == {"steps": 3} and load_state(state)[1] == {"step": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "m.state.safetensors"]  # no temporary file


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
    with pytest.raises(CheckpointError, match=r"mask_emb has shape \[64\], its config needs \[32\]"):
        load_model(tmp_path / "mismatch.safetensors")
    with pytest.raises(worldsim.WorldSimError):  # the runtime reports the same, as a WorldSimError
        worldsim.load(junk)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:1000])  # a copy or download stopped early
    with pytest.raises(CheckpointError, match="cut short"):
        load_model(cut)


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
    save_file({"x": torch.zeros(1)}, str(tmp_path / "cut.safetensors"), metadata={"format": "worldsim-train-state", "version": "1", "state": "{cut"})
    with pytest.raises(CheckpointError, match="malformed training state"):  # was a JSONDecodeError traceback
        load_state(tmp_path / "cut.safetensors")


def _resave(tmp_path, name: str, config=None, tensors=None, **meta_changes) -> str:
    """The tiny model saved, then rewritten with another config, tensors or metadata."""
    from safetensors import safe_open

    cfg, tok, dyn = build()
    good = tmp_path / "good.safetensors"
    save_model(good, cfg, tok, dyn)
    with safe_open(str(good), framework="pt") as f:
        meta, original = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    c = json.loads(meta["config"])
    if config is not None:
        config(c)
    path = tmp_path / name
    save_file(original if tensors is None else tensors(original), str(path), metadata={**meta, "config": json.dumps(c), **meta_changes})
    return str(path)


def test_a_config_asking_for_absurd_sizes_fails_at_once_without_allocating(tmp_path) -> None:
    """A config made elsewhere is checked against the file's tensors before any module is
    built: a width of 10**9 used to try a 48 GB allocation, 10**7 layers ran out of memory
    after half a minute; heads 0 was a ZeroDivisionError. Sizes that allocate only later
    (the context's KV cache, the frame size's observation space) are refused here too."""
    import time

    cases = {
        "width": (lambda c: c["dynamics"].update(width=10**9), "no model that can be built|shape"),
        "layers": (lambda c: c["dynamics"].update(layers=10**7), "asks for 10000004 blocks"),
        "channels": (lambda c: c["tokenizer"].update(channels=[10**6, 10**6]), "tokenizer.encoder.0.weight has shape"),
        "heads": (lambda c: c["dynamics"].update(heads=0), "dynamics.heads must be an integer >= 1"),
        "context": (lambda c: c["dynamics"].update(context=2000, time_period=1000), "context 2000 exceeds dynamics.time_period"),
        # A time_period to match used to let 10**7 frames through: the first prompt tried an 82 GB cache.
        "period": (lambda c: c["dynamics"].update(context=10**7, time_period=10**7), "context 10000000 exceeds 4096 frames"),
        # The dream env's observation space was 2.7 TiB of bounds arrays: a MemoryError naming no file.
        "frame_size": (lambda c: c.update(frame_shape=[10**6, 10**6]), "frame_shape .* exceeds 8192 pixels a side"),
        "context_by_one": (lambda c: c["dynamics"].update(time_period=100, context=101), "context 101 exceeds dynamics.time_period"),
        "guidance": (lambda c: c.update(guidance=float("nan")), "guidance must be a finite scale"),
        "guided": (lambda c: c.update(guided_actions=[7]), "guided_actions must be distinct"),
        "guided_twice": (lambda c: c.update(guided_actions=[0, 0]), "guided_actions must be distinct"),
        "kind": (lambda c: c["dynamics"].update(action_kind="Box"), "action_kind"),
        "frame_shape": (lambda c: c.update(frame_shape="abc"), "frame_shape must be 2 integers"),
        "preset": (lambda c: c.update(preset=5), "preset must be a string or null"),
        "levels": (lambda c: c["dynamics"].update(levels=[5, 5]), "differ from tokenizer.levels"),
        "actions": (lambda c: c["dynamics"].update(action_nvec=[3, 10**5]), "100003 choices in all, more than 65536"),
        # Read at every step: these loaded, and the first step raised IndexError or OverflowError.
        "motion": (lambda c: c["dynamics"].update(stay_motion=[[7, 0, 1, 1]]), "stay_motion row \\[7, 0, 1, 1\\] is not"),
        "shift": (lambda c: c["dynamics"].update(stay_motion=[[0, 1, 10**30, 0]]), "shifts of at most 8192 cells"),
    }
    for name, (change, message) in cases.items():
        path = _resave(tmp_path, f"{name}.safetensors", config=change)
        start = time.perf_counter()
        with pytest.raises(CheckpointError, match=message) as e:
            worldsim.load(path, device="cpu")
        assert str(path) in str(e.value)
        assert time.perf_counter() - start < 5, name
    # A layer or a tokenizer stage takes milliseconds to build even on the meta device, and a
    # layer holds a dozen tensors: 5,000 empty tensors asking for 5,000 of either took 10-30 s
    # to be refused (a 2 MB file asking for 20,000 layers: 94 s and 1 GB).
    pad = {f"pad.{i}": torch.zeros(0) for i in range(5000)}
    padded = {
        "layers": (lambda c: c["dynamics"].update(layers=5000), r"asks for 600\d\d tensors, the file holds only 50\d\d"),
        "stages": (lambda c: c["tokenizer"].update(channels=[4] * 5000, res_blocks=[0] * 5000), r"stride of 2\*\*4999 exceeds"),
    }
    for name, (change, message) in padded.items():
        path = _resave(tmp_path, f"padded-{name}.safetensors", config=change, tensors=lambda t: {**t, **pad})
        start = time.perf_counter()
        with pytest.raises(CheckpointError, match=message):
            worldsim.load(path, device="cpu")
        assert time.perf_counter() - start < 5, name


def test_a_tokenizer_asking_for_absurd_levels_is_refused(tmp_path) -> None:
    """No tensor holds a tokenizer's FSQ levels, so a tokenizer file asking for 10**8 of them
    loaded, and `worldsim train dynamics` on it built a 100 GB embedding (sum(levels) rows);
    2**32 codes would wrap in the int32 code cache."""
    from safetensors import safe_open

    p = get_preset("tiny")
    save_model(tmp_path / "tok.safetensors", ModelConfig(tokenizer=p.tokenizer), Tokenizer(p.tokenizer))
    with safe_open(str(tmp_path / "tok.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for levels, message in (([10**8, 5, 5], "more than 65536 levels a channel"), ([2**16, 2**15, 2], "2\\*\\*31 codes in all")):
        config = {**json.loads(meta["config"]), "tokenizer": {**p.tokenizer.to_dict(), "levels": levels}}
        save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={**meta, "config": json.dumps(config)})
        with pytest.raises(CheckpointError, match=message):
            load_model(tmp_path / "bad.safetensors")


def test_metadata_json_nested_too_deep_or_with_huge_numbers_is_a_checkpoint_error(tmp_path) -> None:
    """Python's JSON reader raises RecursionError for arrays nested 10**5 deep and ValueError
    for a 5,000-digit number, not JSONDecodeError: the first escaped load_model, load_state
    and worldsim.load as a RecursionError naming no file."""
    from safetensors import safe_open

    with safe_open(_resave(tmp_path, "good.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    deep, digits = "[" * 100_000 + "]" * 100_000, "9" * 5000
    for key, text in (("config", deep), ("config", digits), ("info", deep), ("info", digits)):
        save_file(tensors, str(tmp_path / "m.safetensors"), metadata={**meta, key: text})
        with pytest.raises(CheckpointError, match=f"m.safetensors: malformed {'model config' if key == 'config' else key}"):
            worldsim.load(tmp_path / "m.safetensors", device="cpu")
    for text in (deep, digits):
        save_file({"x": torch.zeros(1)}, str(tmp_path / "s.safetensors"),
                  metadata={"format": "worldsim-train-state", "version": "1", "state": text})  # fmt: skip
        with pytest.raises(CheckpointError, match="malformed training state"):
            load_state(tmp_path / "s.safetensors")


def test_a_config_field_this_worldsim_does_not_know_is_refused_by_name(tmp_path) -> None:
    """A field from a newer WorldSim, or a typo in an edited file, was dropped without a word
    at the top level and in the tokenizer config, so the model built could differ from the one
    saved; in the dynamics config it was a bare ``__init__() got an unexpected keyword``."""
    cases = {
        "top": (lambda c: c.update(sampling_mode="ranked"), "unknown field 'sampling_mode' in the model config"),
        "tokenizer": (lambda c: c["tokenizer"].update(norm="group", skip=True), "unknown fields 'norm', 'skip' in the tokenizer config"),
        "dynamics": (lambda c: c["dynamics"].update(widht=512), "unknown field 'widht' in the dynamics config"),
        "not an object": (lambda c: c.update(tokenizer=[32, 64]), "tokenizer config must be a JSON object"),
    }
    for name, (change, message) in cases.items():
        path = _resave(tmp_path, f"{name}.safetensors", config=change)
        with pytest.raises(CheckpointError, match=message):
            worldsim.load(path, device="cpu")
    older = _resave(tmp_path, "older.safetensors", config=lambda c: c["dynamics"].pop("stay_motion"))
    assert load_model(older).config.dynamics.stay_motion == ()  # a field an older file lacks takes its default


def test_weights_of_the_wrong_kind_or_with_nan_are_refused_by_name(tmp_path) -> None:
    def nan(t):
        t = {k: v.clone() for k, v in t.items()}
        t["dynamics.act_emb.weight"][0, 0] = float("nan")
        return t

    cases = {
        "nan": (nan, "dynamics.act_emb.weight holds NaN"),
        "int": (lambda t: {k: v.to(torch.int32) for k, v in t.items()}, "is torch.int32, the model needs torch.float32"),
        "extra": (lambda t: {**t, "dynamics.extra": torch.zeros(3)}, "not in the model dynamics.extra"),
        "missing": (lambda t: {k: v for k, v in t.items() if k != "dynamics.head.bias"}, "missing dynamics.head.bias"),
    }
    for name, (change, message) in cases.items():
        path = _resave(tmp_path, f"{name}.safetensors", tensors=change)
        with pytest.raises(CheckpointError, match=message):
            load_model(path)
    half = _resave(tmp_path, "half.safetensors", tensors=lambda t: {k: v.half() for k, v in t.items()})
    assert load_model(half).dynamics.head.weight.dtype == torch.float32  # another float precision loads as fp32
    with pytest.raises(CheckpointError, match="malformed info"):
        load_model(_resave(tmp_path, "info.safetensors", info="[1]"))


def test_a_leftover_under_this_process_id_that_this_process_did_not_make_is_removed(tmp_path) -> None:
    """A container OOM-killed mid-save restarts as PID 1 again: its leftover carries the new
    process's own id, so the sweep took it for a live write and kept it for good."""
    import os
    import time

    from worldsim.atomic import atomic_write_text, temp_prefix

    out = tmp_path / "restarted.json"
    earlier_self = tmp_path / (temp_prefix(tmp_path / "never-written-here.json").replace("never-written-here.json", out.name) + "abcd1234.tmp")
    earlier_self.write_text("half")
    old = time.time() - 600
    os.utime(earlier_self, (old, old))
    atomic_write_text(out, "whole")
    assert out.read_text() == "whole" and not earlier_self.exists()
    atomic_write_text(out, "again")  # now this process has named temps of it: its own are writes in progress
    live = tmp_path / (temp_prefix(out) + "efgh5678.tmp")
    live.write_text("being written")
    os.utime(live, (old, old))
    atomic_write_text(out, "third")
    assert live.exists()


def test_a_write_to_a_symbolic_link_writes_its_target_and_keeps_the_link(tmp_path) -> None:
    """Videos written aside and renamed replaced a linked --out (`replay --out latest.mp4`,
    a link to this run's file) with a plain file, and the file it named kept its old video."""
    from worldsim.atomic import atomic_write_text

    target = tmp_path / "runs" / "video.txt"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "latest.txt"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_a_long_file_name_is_written_and_its_killed_writes_swept(tmp_path) -> None:
    """Temporary names that also carry the process and host ran past the file system's 255
    bytes for names of about 200 characters, which were written before."""
    import os
    import time

    from worldsim.atomic import atomic_write_text, temp_prefix

    out = tmp_path / ("x" * 235 + ".json")
    atomic_write_text(out, "whole")
    assert out.read_text() == "whole"
    left = tmp_path / (temp_prefix(out).replace(f".{os.getpid()}@", ".999999999@") + "abcd1234.tmp")
    left.write_text("half")
    old = time.time() - 600
    os.utime(left, (old, old))
    atomic_write_text(out, "again")
    assert out.read_text() == "again" and sorted(p.name for p in tmp_path.iterdir()) == [out.name]
