"""`worldsim train refiner` and the refiner at run time: it changes pixels, never codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import worldsim
from tests.worldsim.test_train import FAST, toy_recording
from worldsim.checkpoint import CheckpointError, ModelConfig, load_model, save_model
from worldsim.cli import main as cli
from worldsim.errors import SettingError
from worldsim.train import encoder_digest

TINY_REFINER = ["--chain", "2", "--channels", "4", "--blocks", "1", "--lr", "1e-2", "--warmup", "0"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(data, world model without a refiner, the same with one trained for 3 steps)."""
    d = tmp_path_factory.mktemp("refiner")
    data = toy_recording(d / "toy.wsrec")
    tok, world, refined = d / "tok.safetensors", d / "world.safetensors", d / "refined.safetensors"
    assert cli(["train", "tokenizer", "--data", str(data), "--out", str(tok), "--steps", "3", *FAST]) == 0
    assert cli(["train", "dynamics", "--data", str(data), "--tokenizer", str(tok), "--out", str(world),
                "--steps", "2", "--context", "4", *FAST]) == 0  # fmt: skip
    assert cli(["train", "refiner", "--checkpoint", str(world), "--data", str(data), "--out", str(refined),
                "--steps", "3", *TINY_REFINER, *FAST]) == 0  # fmt: skip
    return data, world, refined


def test_training_adds_a_refiner_and_leaves_every_other_weight_as_it_was(world) -> None:
    _, plain, refined = world
    a, b = load_model(plain), load_model(refined)
    assert a.tokenizer.refiner is None and b.tokenizer.refiner is not None
    assert (b.config.tokenizer.refiner_channels, b.config.tokenizer.refiner_blocks) == (4, 1)
    assert b.config.tokenizer.codes_config() == a.config.tokenizer
    for name, module in (("tokenizer", a.tokenizer), ("dynamics", a.dynamics)):
        other = getattr(b, name).state_dict()
        for k, v in module.state_dict().items():
            assert torch.equal(v, other[k]), f"{name}.{k} changed"
    assert any(w.abs().sum() > 0 for w in b.tokenizer.refiner.out.parameters()), "the refiner did not train"
    rows = [json.loads(x) for x in (refined.parent / "metrics.jsonl").read_text().splitlines()]
    mine = [r for r in rows if r.get("kind") == "refiner"]
    assert [r["step"] for r in mine if "loss" in r] == [1, 2, 3]
    assert all("decoded_psnr" in r for r in mine if "loss" in r)
    assert any(r.get("val_psnr", 0) > 0 and r.get("val_decoded_psnr", 0) > 0 for r in mine)
    assert b.info["refiner"]["chain"] == 2 and b.info["steps"] == 3


def test_the_runtime_refines_each_frame_with_the_frame_shown_before(world) -> None:
    _, plain, refined = world
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    acts = rng.integers(0, 3, (2, 2, 1))
    on, off = worldsim.load(refined, device="cpu", seed=3), worldsim.load(refined, device="cpu", seed=3, refine=False)
    assert on.refine and not off.refine and "refine=True" in repr(on)
    shown = prompt[:, -1]
    on.prompt(prompt, acts), off.prompt(prompt, acts)
    for step in range(3):
        prev_codes = on.last_codes
        a = rng.integers(0, 3, (2, 1))
        got, base = on.step(a).frames, off.step(a).frames
        codes = on.last_codes
        assert np.array_equal(codes, off.last_codes), "the refiner changed the codes"
        assert np.array_equal(base, off.decode(codes))
        want = on.backend.refine(shown, on.decode(codes), prev_codes, codes)
        assert np.array_equal(got, want), f"step {step}: not the refiner's output from the frame shown before"
        assert not np.array_equal(got, base)
        shown = got
    # A checkpoint without a refiner runs without one, and refusing to is an error naming the fix.
    assert not worldsim.load(plain, device="cpu").refine
    with pytest.raises(SettingError, match="worldsim train refiner"):
        worldsim.load(plain, device="cpu", refine=True)


def test_a_refiner_starts_as_the_plain_decoder() -> None:
    from worldsim.tokenizer import Tokenizer, TokenizerConfig

    tok = Tokenizer(TokenizerConfig(channels=(4, 8), levels=(3, 3), res_blocks=(0, 0), refiner_channels=4, refiner_blocks=1))
    frames = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8))
    codes = tok.encode(frames)
    decoded = tok.decode(codes)
    assert torch.equal(tok.refine(frames, decoded, codes, codes), decoded)


def test_swapping_the_decoder_drops_the_refiner_it_was_trained_on(world, tmp_path: Path, capsys) -> None:
    data, _, refined = world
    tuned = tmp_path / "tuned.safetensors"
    assert cli(["train", "tokenizer", "--data", str(data), "--out", str(tuned), "--steps", "1", "--init", str(refined),
                "--decoder-only", *FAST]) == 0  # fmt: skip
    assert load_model(tuned).tokenizer.refiner is None
    out = tmp_path / "swapped.safetensors"
    assert cli(["train", "swap-decoder", "--checkpoint", str(refined), "--tokenizer", str(tuned), "--out", str(out)]) == 0
    assert "refiner was trained on the old decoder" in capsys.readouterr().out
    swapped = load_model(out)
    assert swapped.tokenizer.refiner is None and encoder_digest(swapped.tokenizer) == encoder_digest(load_model(refined).tokenizer)


def test_resume_continues_a_refiner_run_and_other_settings_are_refused(world, tmp_path: Path, capsys) -> None:
    data, plain, _ = world
    out = tmp_path / "r.safetensors"
    args = ["train", "refiner", "--checkpoint", str(plain), "--data", str(data), "--out", str(out), *TINY_REFINER, *FAST]
    assert cli([*args, "--steps", "2"]) == 0
    assert cli([*args, "--steps", "4", "--resume"]) == 0
    assert load_model(out).info["steps"] == 4
    bad = [a if a != "4" or i != args.index("--channels") + 1 else "6" for i, a in enumerate(args)]
    assert cli([*bad, "--steps", "5", "--resume"]) == 2
    assert "channels" in capsys.readouterr().err


def test_bad_refiner_arguments_and_configs_are_named(world, tmp_path: Path, capsys) -> None:
    data, plain, _ = world
    base = ["train", "refiner", "--checkpoint", str(plain), "--data", str(data), "--steps", "1", *FAST]
    for flag, value in (("--chain", "0"), ("--channels", "0"), ("--blocks", "100")):
        assert cli([*base, "--out", str(tmp_path / f"{flag[2:]}.safetensors"), flag, value]) == 2
        assert flag in capsys.readouterr().err
    # in place, the run could never resume (its settings hold the checkpoint's hash): refused before anything is written
    before = plain.read_bytes()
    assert cli([*base, "--out", str(plain), "--overwrite"]) == 2
    assert "--out" in capsys.readouterr().err and plain.read_bytes() == before
    loaded = load_model(plain)
    # without a refiner the config is the one an older WorldSim wrote, so it can read the file
    assert "refiner_channels" not in loaded.config.to_dict()["tokenizer"]
    d = loaded.config.to_dict()
    d["tokenizer"].update(refiner_channels=4, refiner_blocks=0)
    with pytest.raises(ValueError, match="refiner_blocks"):
        ModelConfig.from_dict(d)
    # A file whose config names a refiner its tensors lack is refused on load.
    cfg = ModelConfig.from_dict({**loaded.config.to_dict(), "tokenizer": {**d["tokenizer"], "refiner_blocks": 1}})
    path = tmp_path / "lying.safetensors"
    save_model(path, cfg, loaded.tokenizer, loaded.dynamics)
    with pytest.raises(CheckpointError, match="refiner"):
        load_model(path)
