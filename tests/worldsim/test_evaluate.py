"""``worldsim eval`` end to end on tiny models trained here, on BlockWorld and on an env
WorldSim has never seen (with a ``Discrete`` action space)."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import worldsim  # noqa: F401  (registers the ids)
from tests.worldsim.toy_env import FULL_ID
from worldsim import evaluate
from worldsim.checkpoint import ModelConfig, load_model, save_model, weights_digest
from worldsim.cli import main as cli
from worldsim.errors import WorldSimError
from worldsim.metrics import detect_collapse, psnr
from worldsim.presets import dynamics_config, get_preset
from worldsim.recipe import RECIPES, RecipeRun, checkpoint_steps
from worldsim.reference import HELDOUT_SEED_BASE, ReferenceEnv, Trajectory, make_policy
from worldsim.runtime import DEFAULT_CHECKPOINT, load
from worldsim.tokenizer import Tokenizer
from worldsim.train import encoder_digest
from worldsim.transformer import Dynamics

BLOCKWORLD = "worldsim/BlockWorld-v0"
BW_KWARGS = {"width": 16, "height": 16}
TOY_KWARGS = {"discrete": True, "width": 16, "height": 12}
CONTEXT = 3
HORIZON = 4
SMALL = ["--episodes", "2", "--horizon", str(HORIZON), "--context", str(CONTEXT), "--stability-steps", "30",
         "--probe-worlds", "1", "--idm-data-steps", "200", "--idm-train-steps", "20", "--threads", "1"]  # fmt: skip


def _train_tiny(trajs: list[Trajectory], spec, env_id: str, kwargs: dict, path: Path) -> None:
    """A tiny tokenizer and dynamics model, trained for a few hundred steps on ``trajs``."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    preset = get_preset("tiny")
    frames = torch.from_numpy(np.concatenate([t.frames for t in trajs]))
    tok = Tokenizer(preset.tokenizer)
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    for _ in range(100):
        out = tok(frames[torch.randint(0, len(frames), (16,))])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    tok.eval()
    dcfg = dynamics_config(preset, preset.tokenizer.levels, spec)
    dyn = Dynamics(dcfg)
    opt = torch.optim.Adam(dyn.parameters(), lr=2e-3)
    with torch.no_grad():
        codes = [tok.encode(torch.from_numpy(t.frames)) for t in trajs]  # each (T+1, h, w)
    T = dcfg.context
    for _ in range(50):
        i = int(rng.integers(len(trajs)))
        s = rng.integers(0, len(trajs[i].actions) - T + 2, size=8)
        tr = trajs[i]
        out = dyn(
            torch.stack([codes[i][j : j + T] for j in s]),
            torch.from_numpy(np.stack([tr.actions[j : j + T - 1] for j in s])),
            torch.from_numpy(np.stack([tr.rewards[j : j + T - 1] for j in s])),
            torch.from_numpy(np.stack([tr.terminated[j : j + T - 1] for j in s])),
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    shape = tuple(trajs[0].frames.shape[1:3])
    save_model(path, ModelConfig(preset.tokenizer, dcfg, shape, env_id, kwargs, "tiny"), tok, dyn.eval())


@pytest.fixture(scope="session")
def smoke_recipe(tmp_path_factory: pytest.TempPathFactory) -> RecipeRun:
    """The smoke recipe run from nothing: explorer data, tokenizer, dynamics (BlockWorld 16x16)."""
    run = RecipeRun("blockworld-16-smoke", tmp_path_factory.mktemp("recipe") / "run", threads=1, log=lambda s: None)
    run.run()
    return run


@pytest.fixture(scope="session")
def tiny_blockworld(smoke_recipe: RecipeRun) -> Path:
    return smoke_recipe.model_path


@pytest.fixture(scope="session")
def tiny_toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "toy-tiny.safetensors"
    ref = ReferenceEnv(FULL_ID, TOY_KWARGS)
    rng = np.random.default_rng(0)
    trajs = [ref.rollout(seed, 60, make_policy(FULL_ID, ref.spec, rng)[0]) for seed in range(6)]
    _train_tiny(trajs, ref.spec, "ToyImage-v0", TOY_KWARGS, path)
    return path


DOCS = Path(__file__).resolve().parents[2] / "docs" / "eval.md"


def _documented_keys() -> tuple[set[str], set[str]]:
    """The keys of docs/eval.md's "metrics.json, key by key" table: all, and those not marked *only*."""
    text = DOCS.read_text().split("### `metrics.json`, key by key")[1].split("\n### ")[0]
    every, always = set(), set()
    for row in text.splitlines():
        if not row.startswith("| `"):
            continue
        cells = row.split(" | ")
        for key in cells[0].strip("| ").replace("`", "").split(", "):
            for k in [key.replace("<probe>", p) for p in ("turn", "walk")] if "<probe>" in key else [key]:
                every.add(k)
                if not cells[1].startswith("*only*"):
                    always.add(k)
    return every, always


def _keys(m: dict, parent: str = "") -> set[str]:
    """Dotted paths of ``m``'s leaves, the parts that vary named as docs/eval.md names them."""
    out: set[str] = set()
    for k, v in m.items():
        last = parent.rsplit(".", 1)[-1]
        name = {"horizons": "<h>", "components": "<component>", "targets": "<target>"}.get(last, k)
        if last == "train_accuracy":
            name = "acc<i>"
        if parent == "open_loop" and k.startswith("mean_1_"):
            name = "mean_1_<k>"
        path = f"{parent}.{name}" if parent else name
        if isinstance(v, dict) and path != "env_kwargs":
            out |= _keys(v, path)
        else:
            out.add(path)
    return out


def _assert_schema_documented(m: dict) -> None:
    every, always = _documented_keys()
    keys = _keys(m)
    assert keys <= every, f"metrics.json keys missing from docs/eval.md: {sorted(keys - every)}"
    assert always <= keys, f"keys docs/eval.md promises that metrics.json lacks: {sorted(always - keys)}"


def test_eval_blockworld_end_to_end(tiny_blockworld: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "eval"
    rc = cli(["eval", "--checkpoint", str(tiny_blockworld), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), *SMALL])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "teacher-forced next frame" in printed and "copy-last" in printed
    m = json.loads((out / "metrics.json").read_text())
    _assert_schema_documented(m)
    for name in ("metrics.json", "psnr_vs_horizon.png", "ssim_vs_horizon.png", "stability.png", "side_by_side.gif",
                 "stability.mp4", "permanence_turn.gif", "permanence_walk.gif"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name

    # held-out seeds, and the copy-last baseline really is the last real frame repeated
    assert m["seeds"]["episodes"] == [HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + 1]
    ref = ReferenceEnv(BLOCKWORLD, BW_KWARGS)
    rng = np.random.default_rng([0, 0])
    tr = ref.rollout(HELDOUT_SEED_BASE, CONTEXT - 1 + HORIZON, make_policy(BLOCKWORLD, ref.spec, rng)[0])
    tr2 = ref.rollout(HELDOUT_SEED_BASE + 1, CONTEXT - 1 + HORIZON, make_policy(BLOCKWORLD, ref.spec, np.random.default_rng([0, 1]))[0])
    want = np.mean([psnr(t.frames[CONTEXT - 1], t.frames[CONTEXT - 1 + HORIZON]) for t in (tr, tr2)])
    assert m["open_loop"]["horizons"][str(HORIZON)]["copy_last_psnr"] == pytest.approx(want, abs=1e-6)
    # teacher-forced, each real frame's copy-last is the real frame just before it
    want = np.mean([psnr(t.frames[CONTEXT - 1 : -1], t.frames[CONTEXT:]) for t in (tr, tr2)])
    assert m["teacher_forced"]["copy_last_psnr"] == pytest.approx(want, abs=1e-6)

    # the tokenizer learned something in 100 steps; its figure is the measured one, not a constant
    assert 12 < m["tokenizer"]["psnr"] < 60
    assert set(m["open_loop"]["horizons"]) == {"1", "4"}
    assert len(m["open_loop"]["per_step"]["psnr"]) == HORIZON
    comps = m["controllability"]["components"]
    assert list(comps) == ["move", "strafe", "jump", "yaw", "pitch", "attack", "use", "hotbar"]
    assert 0 <= comps["yaw"]["f1_real"] <= 1 and 0 <= comps["yaw"]["f1_dream"] <= 1
    turn = m["permanence"]["turn"]
    assert turn["steps"] == 72 and turn["half_step"] == 36 and turn["worlds"] == 1
    # a full turn comes back to (nearly) the same real view; half-way it does not
    assert turn["real_final_vs_start_psnr"] > turn["half_copy_last_psnr"]
    # turning left slides the real picture to the right; the dream's speed is measured against it
    assert turn["real_shift_per_step"] > 0.2 and "turn_rate" in turn and "turn_rate" not in m["permanence"]["walk"]
    assert "teacher_forced_turn_rate" in turn
    assert m["stability"]["frames"] == 30 and isinstance(m["stability"]["collapsed"], bool)
    assert all(m["stability"][k] is None or m["stability"][k] >= 0 for k in ("motion_ratio", "late_motion_ratio"))
    assert m["speed"]["fps_single"] > 0 and m["speed"]["batch"] == 2
    assert "precision" in m["reward"]["teacher_forced"] and "recall" in m["termination"]["open_loop"]
    bc = m["teacher_forced"]["by_change"]
    assert bc["moving"]["frames"] + bc["still"]["frames"] == m["teacher_forced"]["frames"]
    assert "moving frames" in printed

    # the second run finds the inverse-dynamics model in the cache
    assert m["controllability"]["idm"]["cached"] is False
    rc = cli(["eval", "--checkpoint", str(tiny_blockworld), "--out", str(tmp_path / "again"), "--no-videos",
              "--cache-dir", str(tmp_path / "cache"), *SMALL])  # fmt: skip
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    _assert_schema_documented(again)  # a cached IDM: no training facts
    assert again["controllability"]["idm"]["cached"] is True
    assert again["open_loop"] == m["open_loop"]  # greedy decoding: the same seeds give the same dream
    assert not (tmp_path / "again" / "side_by_side.gif").exists()

    # the judge does not depend on the seed of the run that trained it: --seed 1 into an
    # empty cache trains the very same IDM, so cached figures never depend on run order
    # (ranked moves change the dream, not the judge)
    rc = cli(["eval", "--checkpoint", str(tiny_blockworld), "--out", str(tmp_path / "seed1"), "--no-videos", "--seed", "1",
              "--cache-dir", str(tmp_path / "cache1"), "--ranked-moves", *SMALL])  # fmt: skip
    assert rc == 0
    other = json.loads((tmp_path / "seed1" / "metrics.json").read_text())
    assert (m["settings"]["ranked_moves"], other["settings"]["ranked_moves"]) == (False, True)
    assert other["controllability"]["idm"]["cached"] is False
    first, second = (Path(r["controllability"]["idm"]["cache"]) for r in (m, other))
    assert first.name == second.name
    with safe_open(str(first), framework="pt") as f, safe_open(str(second), framework="pt") as g:
        assert sorted(f.keys()) == sorted(g.keys())
        assert all(torch.equal(f.get_tensor(k), g.get_tensor(k)) for k in f.keys())  # noqa: SIM118


def test_eval_generic_env_discrete_actions(tiny_toy: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    rc = cli(["eval", "--checkpoint", str(tiny_toy), "--env", FULL_ID, "--out", str(out),
              "--cache-dir", str(tmp_path / "cache"), *SMALL])  # fmt: skip
    assert rc == 0
    text = (out / "metrics.json").read_text()
    m = json.loads(text, parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}, which strict JSON parsers refuse"))
    _assert_schema_documented(m)
    assert m["env_kwargs"] == TOY_KWARGS and m["frame_shape"] == [12, 16] and m["policy"] == "random"
    assert "no object-permanence probe" in m["permanence"]["skipped"]
    assert list(m["controllability"]["components"]) == ["a0"]

    # the same folder again without videos: the earlier run's videos (and an earlier
    # several-seed run's seeds.json) are not left beside the new figures; other files stay
    assert (out / "side_by_side.gif").exists() and (out / "stability.mp4").exists()
    (out / "seeds.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    rc = cli(["eval", "--checkpoint", str(tiny_toy), "--env", FULL_ID, "--out", str(out), "--no-videos",
              "--cache-dir", str(tmp_path / "cache"), *SMALL])  # fmt: skip
    assert rc == 0
    left = sorted(p.name for p in out.iterdir())
    assert left == ["metrics.json", "notes.txt", "psnr_vs_horizon.png", "ssim_vs_horizon.png", "stability.png"]


def test_eval_user_errors(tiny_toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # the toy model's actions do not fit BlockWorld
    rc = cli(["eval", "--checkpoint", str(tiny_toy), "--env", BLOCKWORLD, "--env-kwargs", json.dumps(BW_KWARGS),
              "--out", str(tmp_path / "x"), *SMALL])  # fmt: skip
    assert rc == 2 and "the checkpoint was trained on" in capsys.readouterr().err
    rc = cli(["eval", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "y")])
    assert rc == 2 and "no such file" in capsys.readouterr().err
    rc = cli(["eval", "--checkpoint", str(tiny_toy), "--env", FULL_ID, "--horizon", "0", "--out", str(tmp_path / "z")])
    assert rc == 2 and "--horizon must be at least 1" in capsys.readouterr().err


def _content(path: Path) -> tuple[dict[str, str], dict[str, bytes]]:
    """A safetensors file's metadata and tensor bytes (its header's key order may vary)."""
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {}), {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}


def test_recipe_skips_finished_stages_and_redoes_an_interrupted_part(smoke_recipe: RecipeRun, tmp_path: Path, monkeypatch) -> None:
    r = smoke_recipe.recipe
    assert checkpoint_steps(smoke_recipe.tokenizer_path) == r.tokenizer_steps
    assert checkpoint_steps(smoke_recipe.decoder_path) == r.decoder_steps
    assert checkpoint_steps(smoke_recipe.dynamics_path) == r.dynamics_steps
    assert checkpoint_steps(smoke_recipe.root / "final.safetensors") == r.final_steps
    assert checkpoint_steps(smoke_recipe.model_path) == r.polish_steps
    stages = [json.loads(line)["stage"] for line in (smoke_recipe.root / "recipe_log.jsonl").read_text().splitlines()]
    assert stages == ["data part 0", "data part 1", "tokenizer", "decoder", "dynamics", "finetune", "finetune 2", "final",
                      "polish", "refiner", "model"]  # fmt: skip

    # the shipped model is the dynamics with the fine-tuned decoder, on the codes of the first tokenizer
    model, tok, dec = (load_model(p) for p in (smoke_recipe.model_path, smoke_recipe.tokenizer_path, smoke_recipe.decoder_path))
    assert encoder_digest(model.tokenizer) == encoder_digest(tok.tokenizer) == encoder_digest(dec.tokenizer)
    assert weights_digest({"": model.tokenizer.decoder}) == weights_digest({"": dec.tokenizer.decoder})
    assert weights_digest({"": model.tokenizer.decoder}) != weights_digest({"": tok.tokenizer.decoder})
    assert model.dynamics is not None and model.info["decoder"]["steps"] == r.decoder_steps
    assert model.dynamics.cfg.rollout_share == 0.5  # the recipe's dynamics flags reach the dynamics stage
    # ... and the refiner trained on that decoder's frames, with the recipe's flags
    refiner = load_model(smoke_recipe.refiner_path)
    assert refiner.dynamics is None and refiner.info["refiner"]["from"] == str(smoke_recipe.decoder_path)
    assert weights_digest({"": model.tokenizer}) == weights_digest({"": refiner.tokenizer})
    assert model.config.tokenizer.refiner_channels == 4 and model.info["refiner"]["steps"] == r.refiner_steps
    # ... whose weights each later phase started from and moved on, on the same split (so the same cached codes),
    # and the final phase on all parts (so codes of its own)
    first, second = load_model(smoke_recipe.dynamics_path), load_model(smoke_recipe.finetune_path)
    third = load_model(smoke_recipe.root / "finetune-2.safetensors")
    assert second.info["init"] == str(smoke_recipe.dynamics_path)
    assert third.info["init"] == str(smoke_recipe.finetune_path)
    final = load_model(smoke_recipe.root / "final.safetensors")
    assert final.info["init"] == str(smoke_recipe.root / "finetune-2.safetensors")
    # the polish phase trains on from the final one, with its own flags
    assert smoke_recipe.world_model_path == smoke_recipe.root / "polish.safetensors"
    assert model.info["init"] == str(smoke_recipe.root / "final.safetensors")
    assert (model.dynamics.cfg.rollout_passes, final.dynamics.cfg.rollout_passes) == (3, 2)
    digests = {weights_digest({"": m.dynamics}) for m in (first, second, third, final, model)}
    assert len(digests) == 5
    assert len(list((smoke_recipe.root / "code-cache").iterdir())) == 4  # train and val codes of the base parts, then of all
    model_content = _content(smoke_recipe.model_path)

    # an interrupted recording (its folder but no marker) is recorded again; finished stages are not redone;
    # a lost model file is assembled again, to the same weights and metadata
    (smoke_recipe.root / "data" / "part-001.done.json").unlink()
    smoke_recipe.model_path.unlink()
    logs: list[str] = []
    again = RecipeRun(smoke_recipe.name, smoke_recipe.root, threads=1, log=logs.append)
    again.run()
    assert any("data part 1/2 complete, skipped" in s for s in logs)
    assert any("recording data part 2/2" in s for s in logs)
    assert any("tokenizer complete (100 steps), skipped" in s for s in logs)
    assert any("decoder complete (30 steps), skipped" in s for s in logs)
    assert any("dynamics complete (40 steps), skipped" in s for s in logs)
    assert any("finetune complete (20 steps), skipped" in s for s in logs)
    assert any("finetune 2 complete (20 steps), skipped" in s for s in logs)
    assert any("final complete (10 steps), skipped" in s for s in logs)
    assert any("polish complete (6 steps), skipped" in s for s in logs)
    assert any("refiner complete (4 steps), skipped" in s for s in logs)
    assert not any("model complete, skipped" in s for s in logs)
    assert _content(smoke_recipe.model_path) == model_content
    # a model assembled from another phase is not this recipe's model, though its steps match
    monkeypatch.setitem(RECIPES, "one-fewer", dataclasses.replace(r, polish_steps=0))  # the model would be the final phase
    assert again._model_is_current() and not RecipeRun("one-fewer", smoke_recipe.root)._model_is_current()
    # the model samples with the recipe's guidance; the phase it came from has none
    assert (model.config.guidance, model.config.guided_actions) == (r.guidance, r.guided_actions) == (1.5, (3,))
    assert load_model(smoke_recipe.world_model_path).config.guidance == 1.0
    done = json.loads((smoke_recipe.root / "data" / "part-001.done.json").read_text())
    assert done == {"steps": r.part_steps, "seed": 1000, "num_envs": r.num_envs, "workers": r.record_workers}

    # a folder pinned to another recipe is refused; a test recipe cannot be installed as the default
    pinned = tmp_path / "other"
    pinned.mkdir()
    (pinned / "recipe.json").write_text(json.dumps({"name": "blockworld-64", "recipe": {}}))
    with pytest.raises(WorldSimError, match="another recipe"):
        RecipeRun(smoke_recipe.name, pinned, log=logs.append).run()
    with pytest.raises(WorldSimError, match="cannot be installed"):
        again.install()
    # a pin written before a recipe field existed is the same recipe while the field keeps its default
    monkeypatch.setitem(RECIPES, "one-phase", dataclasses.replace(r, finetune_steps=0, finetune_train_args=(), finetune_phases=1))
    older = tmp_path / "older"
    RecipeRun("one-phase", older)._pin()
    pin = json.loads((older / "recipe.json").read_text())
    del pin["recipe"]["finetune_steps"], pin["recipe"]["finetune_train_args"], pin["recipe"]["finetune_phases"]
    (older / "recipe.json").write_text(json.dumps(pin))
    RecipeRun("one-phase", older)._pin()
    pin["recipe"]["dynamics_steps"] += 1
    (older / "recipe.json").write_text(json.dumps(pin))
    with pytest.raises(WorldSimError, match=f"has changed since \\(dynamics_steps pinned {r.dynamics_steps + 1}, now {r.dynamics_steps}\\)"):
        RecipeRun("one-phase", older)._pin()
    (older / "recipe.json").write_text("{not json")
    with pytest.raises(WorldSimError, match="recipe.json: unreadable"):
        RecipeRun("one-phase", older)._pin()
    # a folder pinned before the recipe had its polish phase holds every earlier stage's work, and goes on to it
    ext = tmp_path / "extended"
    RecipeRun(smoke_recipe.name, ext)._pin()
    pin = json.loads((ext / "recipe.json").read_text())
    del pin["recipe"]["polish_steps"], pin["recipe"]["polish_train_args"]
    (ext / "recipe.json").write_text(json.dumps(pin))
    RecipeRun(smoke_recipe.name, ext)._pin()
    assert json.loads((ext / "recipe.json").read_text())["recipe"]["polish_steps"] == r.polish_steps
    assert cli(["train", "recipe", "no-such-recipe", "--dir", str(tmp_path / "x")]) == 2


def test_recipe_guidance_change_reassembles_only_the_model(smoke_recipe: RecipeRun, tmp_path: Path, monkeypatch) -> None:
    """Guidance shapes the model stage alone: a folder trained with another guidance is still
    this recipe's work, and only ``model.safetensors`` is written again, with the same weights."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(smoke_recipe.root, root)
    before = load_model(root / "model.safetensors")
    monkeypatch.setitem(RECIPES, smoke_recipe.name, dataclasses.replace(smoke_recipe.recipe, guidance=1.25, guided_actions=None))
    logs: list[str] = []
    RecipeRun(smoke_recipe.name, root, threads=1, log=logs.append).run()
    assert any("final complete" in s for s in logs) and not any("model complete, skipped" in s for s in logs)
    after = load_model(root / "model.safetensors")
    assert (after.config.guidance, after.config.guided_actions) == (1.25, None)
    assert weights_digest({"t": after.tokenizer, "d": after.dynamics}) == weights_digest({"t": before.tokenizer, "d": before.dynamics})
    assert json.loads((root / "recipe.json").read_text())["recipe"]["guidance"] == 1.25


def test_set_guidance_stores_the_scale_and_components_and_refuses_bad_ones(tiny_blockworld: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "g.safetensors"
    assert cli(["train", "set-guidance", "--checkpoint", str(tiny_blockworld), "--guidance", "1.4", "--actions", "yaw,pitch", "--out", str(out)]) == 0
    m = load(out, device="cpu")
    assert (m.guidance, m.guided_actions) == (1.4, (3, 4))  # by the env's action names
    assert (load(out, device="cpu", guidance=1.0, guided_actions=[0]).guidance, load(out, device="cpu", guided_actions=[0]).guided_actions) == (1.0, (0,))
    assert cli(["train", "set-guidance", "--checkpoint", str(out), "--guidance", "1", "--out", str(out)]) == 0
    assert (load_model(out).config.guidance, load_model(out).config.guided_actions) == (1.0, None)  # all components
    for bad, said in ((["--actions", "fly"], "not one of the model's 8 action components"), (["--actions", "8"], "not one of"),
                      (["--actions", "3,3"], "distinct"), (["--guidance", "-1"], "finite scale")):  # fmt: skip
        argv = ["train", "set-guidance", "--checkpoint", str(tiny_blockworld), "--guidance", "1.2", "--out", str(out), *bad]
        assert cli(argv) != 0
        assert said in capsys.readouterr().err
    with pytest.raises(ValueError, match="guided_actions"):
        load(tiny_blockworld, device="cpu", guided_actions=[9])
    with pytest.raises(ValueError, match="guided_actions"):
        load(tiny_blockworld, device="cpu", guided_actions=["yaw"])
    # a bad sampling setting is one line from the CLI, not a traceback
    assert cli(["eval", "--checkpoint", str(tiny_blockworld), "--guidance", "-1", "--out", str(tmp_path / "e")]) == 2
    assert "worldsim eval: error: guidance must be a finite scale >= 0" in capsys.readouterr().err


def test_a_checkpoint_without_guidance_fields_loads_unguided() -> None:
    cfg = ModelConfig(tokenizer=get_preset("tiny").tokenizer)
    d = cfg.to_dict()
    del d["guidance"], d["guided_actions"]  # a checkpoint written before guidance existed
    assert ModelConfig.from_dict(d) == cfg and cfg.guidance == 1.0 and cfg.guided_actions is None
    assert ModelConfig.from_dict(dataclasses.replace(cfg, guidance=1.3, guided_actions=(3,)).to_dict()).guided_actions == (3,)


SHIPPED = pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="no model shipped (make model installs one)")




def _shipped_rollout(steps: int = 100) -> tuple[np.ndarray, np.ndarray, int]:
    """The shipped model, prompted on the first held-out world, dreaming ``steps`` explorer steps."""
    model = load(seed=0)  # the default sampling, reproducibly
    env_id, kwargs = model.config.env_id, dict(model.config.env_kwargs or {})
    ref = ReferenceEnv(env_id, kwargs)
    P = model.context_frames - 1
    tr = ref.rollout(HELDOUT_SEED_BASE, P - 1 + steps, make_policy(env_id, ref.spec, np.random.default_rng(0))[0])
    assert not tr.resets.any()
    model.prompt(tr.frames[None, :P], tr.actions[None, : P - 1])
    dream = np.stack([model.step(tr.actions[None, P - 1 + i]).frames[0] for i in range(steps)])
    return dream, tr.frames, P


@SHIPPED
def test_shipped_model_loads_and_plays_100_steps() -> None:
    dream, real, _ = _shipped_rollout()
    assert dream.dtype == np.uint8 and dream.shape == (100, *real.shape[1:])
    assert np.ptp(dream, axis=(1, 2, 3)).min() > 0, "a dreamed frame is one flat colour"


@SHIPPED
def test_shipped_model_stays_sharp_over_100_steps() -> None:
    dream, real, P = _shipped_rollout()
    assert not detect_collapse(dream, real[P:]).collapsed


@SHIPPED
@pytest.mark.xfail(
    strict=True,
    reason="an issue target the shipped model misses: on the first held-out world its horizon-4 frame scores 14.99 dB "
    "against copy-last's 15.77, and over the eval's 64 held-out episodes 24.42 against 29.32 (README model card). "
    "Strict: a model that meets it fails this mark, and the mark goes.",
)
def test_shipped_model_beats_copy_last_at_horizon_4() -> None:
    """A better frame than copy-last at horizon 4 on a fixed held-out world (the issue's test)."""
    dream, real, P = _shipped_rollout()
    h = 4
    assert psnr(dream[h - 1], real[P - 1 + h]) > psnr(real[P - 1], real[P - 1 + h])


@SHIPPED
def test_action_guidance_makes_the_shipped_dream_turn_further() -> None:
    """On a textured world turning in place, one step at a time from the real frames, the
    shipped model's picture slides further with guidance on its yaw than without."""
    from worldsim.metrics import horizontal_shift
    from worldsim.reference import PROBES, STABILITY_SEED_BASE

    model = load(seed=0)
    assert (model.guidance, model.guided_actions) == (1.0, (3,))  # off by default, yaw named
    ref = ReferenceEnv(model.config.env_id, dict(model.config.env_kwargs or {}))
    P, n = model.context_frames, 8
    acts = np.concatenate([np.zeros((P - 1, 8), np.int64), np.tile(PROBES[ref.env_id].turn, (n, 1))])
    fr = ref.rollout(STABILITY_SEED_BASE + 900, len(acts), script=acts).frames[None]  # a tuning world with trees
    real = horizontal_shift(fr[:, P - 1 : -1], fr[:, P:]).mean()
    slid = {}
    for g in (1.0, 1.3):
        m = load(seed=0, guidance=g)
        one = []
        for i in range(n):
            m.prompt(fr[:, i : i + P], acts[None, i : i + P - 1])
            one.append(m.step(acts[None, P - 1 + i]).frames)
        slid[g] = horizontal_shift(fr[:, P - 1 : -1], np.stack(one, 1)).mean() / real
    assert real > 2 and slid[1.3] > slid[1.0] + 0.2, (real, slid)


def test_demo_writes_gifs_and_prints_psnr(tiny_blockworld: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    assert cli(["demo", "--checkpoint", str(tiny_blockworld), "--steps", "12", "--scale", "2", "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "frames/s" in printed and "copy-last" in printed
    assert printed.count("PSNR vs real, steps 1-12:") == 1  # 12 steps are within the short horizon: one line
    from PIL import Image

    with Image.open(out / "side_by_side.gif") as im:
        # the model's context - 1 real frames, then the dream (GIF merges identical neighbours)
        assert 1 < im.n_frames <= 7 + 12
        assert im.size == (2 * (3 * 16 + 2), 2 * 16)
    assert (out / "dream.gif").stat().st_size > 0


def test_demo_onto_a_full_disk_still_prints_its_figures(
    tiny_blockworld: Path, tmp_path: Path, capsys: pytest.CaptureFixture, full_disk
) -> None:
    """The GIFs were written before the figures were printed: a full disk lost the numbers of
    the dream it had just made."""
    out = tmp_path / "demo"
    with full_disk(1000):
        rc = cli(["demo", "--checkpoint", str(tiny_blockworld), "--steps", "12", "--threads", "1", "--out", str(out)])
    assert rc == 2
    captured = capsys.readouterr()
    assert "worldsim demo: error: File too large" in captured.err and "dream.gif" in captured.err
    assert "frames/s" in captured.out and "PSNR vs real, steps 1-12: dream" in captured.out
    assert "wrote" not in captured.out


def test_idm_augmentation_changes_looks_not_motion() -> None:
    """Both frames of a pair get the same colour change and shift, so the motion between them survives."""
    from worldsim.idm import augment

    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.integers(0, 256, (8, 24, 24, 3), dtype=np.uint8))
    b = torch.roll(a, 3, dims=2)  # the view moved 3 pixels right
    x, y = augment(a, b, torch.Generator().manual_seed(1))
    inner = (slice(None), slice(6, 18), slice(9, 15))  # away from borders, shift padding and wrap-around
    assert torch.equal(torch.roll(x, 3, dims=2)[inner], y[inner])
    assert not torch.equal(x, a)  # the looks did change


def test_teacher_forced_figures_split_frames_that_changed_from_frames_that_did_not() -> None:
    from worldsim.evaluate import _by_change

    rng = np.random.default_rng(0)
    last = rng.integers(0, 256, (2, 4, 8, 8, 3), dtype=np.uint8)
    real = last.copy()
    real[0, :3] = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)  # three frames moved, five stayed
    dream = real.copy()
    dream[1, 0, 0, 0] ^= 1  # one still frame not kept exactly
    bc = _by_change(dream, real, last)
    assert bc["still_share"] == 5 / 8 and bc["moving"]["frames"] == 3 and bc["still"]["frames"] == 5
    assert bc["still"]["exact"] == 4 / 5
    assert bc["moving"]["psnr"] == 60.0  # the dream is the real frame where it moved
    assert bc["moving"]["copy_last_psnr"] == pytest.approx(np.mean(psnr(last[0, :3], real[0, :3])))


def test_recipe_stage_failures_and_interruptions_say_which_and_how_to_resume(monkeypatch, tmp_path: Path, capsys) -> None:
    """Ctrl-C in a stage ended the recipe with exit 2 and "error: `worldsim record --env` was
    interrupted", as if it had failed: scripts and schedulers tell an interrupt (130) from a failure."""
    import agents.record
    from worldsim.cli import Terminated
    from worldsim.cli import main as cli

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the first data part records

    monkeypatch.setattr(agents.record, "record", interrupted)
    argv = ["train", "recipe", "blockworld-16-smoke", "--dir", str(tmp_path / "run"), "--device", "cpu"]
    assert cli(argv) == 130
    err = capsys.readouterr().err
    assert err.splitlines() == ["worldsim record: interrupted",
                                "worldsim train recipe: interrupted; run the same command again to resume"]  # fmt: skip

    def terminated(*a: object, **k: object) -> None:
        raise Terminated  # what SIGTERM raises under the worldsim command

    monkeypatch.setattr(agents.record, "record", terminated)
    assert cli(argv) == 143
    assert capsys.readouterr().err.splitlines()[-1] == "worldsim train recipe: terminated; run the same command again to resume"

    def failed(*a: object, **k: object) -> None:
        raise WorldSimError("no space left")

    monkeypatch.setattr(agents.record, "record", failed)
    assert cli(argv) == 2
    assert "`worldsim record` failed (exit 2); fix the cause and run the recipe again" in capsys.readouterr().err


def test_recipe_final_and_polish_phases_alone_train_on_all_parts_with_their_own_batch_and_flags(monkeypatch, tmp_path: Path) -> None:
    from worldsim import recipe

    calls: list[list[str]] = []
    monkeypatch.setattr(recipe, "_cli", calls.append)
    r = dataclasses.replace(RECIPES["blockworld-16-smoke"], data_parts=3, base_parts=2, finetune_phases=1,
                            final_train_args=("--lr", "7e-4", "--warmup", "3"))  # fmt: skip
    monkeypatch.setitem(RECIPES, "three-parts", r)
    run = RecipeRun("three-parts", tmp_path / "run")
    for stage, path, steps, phase in run._training_stages():
        run._train(stage, path, steps, phase)

    def flag(argv: list[str], name: str) -> str:
        return argv[len(argv) - 1 - argv[::-1].index(name) + 1]  # the last one wins

    def data(argv: list[str]) -> list[str]:
        return [Path(a).name for a in argv[argv.index("--data") + 1 : argv.index("--out")]]

    base = ["part-000", "part-001"]
    assert [(Path(flag(a, "--out")).name, data(a), flag(a, "--batch")) for a in calls] == [
        ("tokenizer.safetensors", base, "16"), ("decoder.safetensors", base, "16"), ("dynamics.safetensors", base, "4"),
        ("finetune.safetensors", base, "4"), ("final.safetensors", [*base, "part-002"], "6"),
        ("polish.safetensors", [*base, "part-002"], "4")]  # fmt: skip
    final, polish = calls[-2], calls[-1]
    assert [a[0] for a in calls] == ["train"] * 6
    assert Path(flag(final, "--init")).name == "finetune.safetensors" and flag(final, "--seed") == "2"
    assert flag(final, "--lr") == "7e-4" and flag(final, "--warmup") == "3" and flag(calls[-3], "--lr") == "1e-3"
    assert Path(flag(polish, "--init")).name == "final.safetensors" and flag(polish, "--rollout-passes") == "3"
    assert "--rollout-passes" not in final
    # every part is recorded with the recipe's worker split, which decides the agents' random streams
    (run.root / "data").mkdir(parents=True)
    run._record(2)
    assert flag(calls[-1], "--workers") == "2" and flag(calls[-1], "--seed") == "2000"
    with pytest.raises(WorldSimError, match="record_workers must be between 1 and num_envs"):
        dataclasses.replace(r, record_workers=3)
    with pytest.raises(WorldSimError, match="base_parts must be between 1 and data_parts"):
        dataclasses.replace(r, base_parts=4)
    with pytest.raises(WorldSimError, match="final_batch"):
        dataclasses.replace(r, final_batch=0)


def test_eval_over_several_seeds_reports_each_and_the_spread(tiny_toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "seeds"
    out.mkdir()
    for name in ("metrics.json", "side_by_side.gif"):  # an earlier single-seed run into the same folder
        (out / name).write_text("earlier")
    rc = cli(["eval", "--checkpoint", str(tiny_toy), "--env", FULL_ID, "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
              "--no-videos", "--temperature", "1", "--seed", "3", "7", *SMALL])  # fmt: skip
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["seed-3", "seed-7", "seeds.json"]
    runs = {s: json.loads((out / f"seed-{s}" / "metrics.json").read_text()) for s in (3, 7)}
    spread = json.loads((out / "seeds.json").read_text())
    assert spread["seeds"] == [3, 7]
    tf = spread["figures"]["teacher_forced_psnr"]
    assert tf["values"] == [runs[3]["teacher_forced"]["psnr"], runs[7]["teacher_forced"]["psnr"]]
    assert tf["min"] <= tf["mean"] <= tf["max"] and abs(tf["mean"] - sum(tf["values"]) / 2) < 1e-9
    collapsed = spread["figures"]["stability_collapsed"]
    assert collapsed["true"] == sum(r["stability"]["collapsed"] for r in runs.values())
    printed = capsys.readouterr().out
    assert "# seed 3" in printed and "# over seeds 3, 7" in printed and "teacher_forced_psnr" in printed
    assert cli(["eval", "--checkpoint", str(tiny_toy), "--env", FULL_ID, "--out", str(tmp_path / "x"), "--seed", "1", "1"]) == 2


def test_teacher_forced_turn_reads_the_real_slide_for_the_real_next_frame_and_none_for_the_last() -> None:
    """Each step is generated from exactly the P real frames before it: a model that returns
    the real next frame slides as far as the real view, one that repeats its last context
    frame not at all."""
    from types import SimpleNamespace

    from worldsim.eval_probes import PROBE_SEED_BASE, _teacher_forced_turn
    from worldsim.metrics import horizontal_shift
    from worldsim.reference import PROBES

    P, n = 3, 12
    ref = ReferenceEnv(BLOCKWORLD, {"width": 64, "height": 64})
    script = np.tile(np.asarray(PROBES[BLOCKWORLD].turn, np.int64), (n, 1))
    full = np.concatenate([np.zeros((P - 1, 8), np.int64), script])
    frames = np.stack([ref.rollout(PROBE_SEED_BASE + k, len(full), script=full).frames for k in (1, 2)])

    class Stub:
        def __init__(self, oracle: bool) -> None:
            self.oracle, self.i = oracle, 0

        def prompt(self, context: np.ndarray, actions: np.ndarray) -> None:
            np.testing.assert_array_equal(context, frames[:, self.i : self.i + P])  # never the frame to predict
            np.testing.assert_array_equal(actions[0], full[self.i : self.i + P - 1])
            self.context = context

        def step(self, action: np.ndarray) -> SimpleNamespace:
            np.testing.assert_array_equal(action[0], full[P - 1 + self.i])
            out = frames[:, P + self.i] if self.oracle else self.context[:, -1]
            self.i += 1
            return SimpleNamespace(frames=out)

    real = float(horizontal_shift(frames[:, P - 1 : -1], frames[:, P:]).mean())
    assert real > 1  # the real view does turn
    def ev(oracle: bool) -> SimpleNamespace:  # the stubs draw nothing: their section seed does not matter
        return SimpleNamespace(P=P, model=Stub(oracle), reseed=lambda section: None)

    assert _teacher_forced_turn(ev(True), frames, script) == pytest.approx(real)
    assert _teacher_forced_turn(ev(False), frames, script) == pytest.approx(0.0, abs=0.02)


def test_idm_data_stores_each_frame_once_and_skips_pairs_across_a_reset() -> None:
    from worldsim.idm import IDMData

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)  # 4 steps
    b = rng.integers(0, 256, (4, 4, 4, 3), dtype=np.uint8)  # 3 steps, an episode ended after the first
    acts_a, acts_b = np.arange(4)[:, None], 10 + np.arange(3)[:, None]
    data = IDMData.from_trajectories([(a, acts_a, np.ones(4, bool)), (b, acts_b, np.array([False, True, True]))])
    assert len(data) == 6 and len(data.frames) == 9  # 6 pairs from 9 frames, not 12
    prev, nxt = data.pairs(np.arange(6))
    want_prev = np.concatenate([a[:-1], b[1:-1]])
    want_next = np.concatenate([a[1:], b[2:]])
    np.testing.assert_array_equal(prev, want_prev)
    np.testing.assert_array_equal(nxt, want_next)
    np.testing.assert_array_equal(data.actions[:, 0], [0, 1, 2, 3, 11, 12])
    prev, nxt = data.pairs(np.array([5, 0]))  # any order, as training draws them
    np.testing.assert_array_equal(prev, want_prev[[5, 0]])
    np.testing.assert_array_equal(nxt, want_next[[5, 0]])


@pytest.mark.parametrize("steps", [1, 9, 10, 11])
def test_idm_trains_for_any_small_number_of_steps(steps: int) -> None:
    """``--idm-train-steps 10`` once divided by zero in the learning-rate schedule."""
    from worldsim.idm import IDMConfig, IDMData, train_idm

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
    data = IDMData.from_trajectories([(frames, rng.integers(0, 3, (8, 1)), np.ones(8, bool))])
    config = IDMConfig(channels=(8,), hidden=16, train_steps=steps, batch=4)
    model, _ = train_idm(data, (3,), config, log=lambda _: None)
    assert model is not None


def test_a_cached_idm_with_nan_weights_is_trained_again_not_trusted(tmp_path) -> None:
    """A damaged cache entry is retrained, as load_idm promises; one with NaN weights loaded and
    read every pair as action 0, so the controllability figures were silently wrong."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from worldsim.idm import IDMConfig, IDMData, load_or_train

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
    data = IDMData.from_trajectories([(frames, rng.integers(0, 3, (8, 1)), np.ones(8, bool))])
    config = IDMConfig(channels=(8,), hidden=16, train_steps=2, batch=4)
    _, info = load_or_train("k", lambda: data, (3,), (16, 16), config, tmp_path, log=lambda _: None)
    with safe_open(info["cache"], framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(info["cache"])
    tensors = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, info["cache"], metadata=meta)
    model, again = load_or_train("k", lambda: data, (3,), (16, 16), config, tmp_path, log=lambda _: None)
    assert again["cached"] is False
    assert all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


@pytest.mark.filterwarnings("ignore:.*share an object:UserWarning")  # Gymnasium's checker sees the reuse this test is about
def test_reference_trajectories_keep_every_frame_of_an_env_that_reuses_its_buffer() -> None:
    import gymnasium as gym

    from tests.worldsim.toy_env import ToyImageEnv
    from worldsim.reference import ReferenceEnv, make_policy

    class OneBuffer(ToyImageEnv):
        """Renders every frame into the same array, as some fast envs do."""

        def _obs(self) -> np.ndarray:
            self.buffer = getattr(self, "buffer", np.zeros((self.height, self.width, 3), np.uint8))
            self.buffer[...] = super()._obs()
            return self.buffer

    if "OneBufferToy-v0" not in gym.registry:
        gym.register(id="OneBufferToy-v0", entry_point=OneBuffer)
    trajectories = []
    for env_id in ("OneBufferToy-v0", "tests.worldsim.toy_env:ToyImage-v0"):
        ref = ReferenceEnv(env_id, {"end_prob": 0.0})
        policy, _ = make_policy(env_id, ref.spec, np.random.default_rng(0))
        trajectories.append(ref.rollout(3, 8, policy).frames)
    np.testing.assert_array_equal(*trajectories)


def test_an_unwritable_idm_cache_keeps_the_trained_idm_and_says_so(tmp_path: Path) -> None:
    """Saving the trained IDM into a cache that cannot be written (a read-only home, say) used
    to raise after the minutes of training, and the eval failed."""
    from worldsim.idm import IDMConfig, IDMData, load_or_train

    rng = np.random.default_rng(0)
    data = IDMData.from_trajectories([(rng.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, (8, 1)), np.ones(8, bool))])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    said: list[str] = []
    model, info = load_or_train("k", lambda: data, (3,), (16, 16), IDMConfig(channels=(8,), hidden=16, train_steps=2, batch=4),
                                blocker / "idm", log=said.append)  # fmt: skip
    assert model is not None and info["cached"] is False and info["cache"] is None
    assert any("could not cache the inverse-dynamics model" in s for s in said)


def test_an_idm_cache_on_a_full_disk_keeps_the_trained_idm_and_says_so(tmp_path: Path, full_disk) -> None:
    """A full disk while caching the IDM raised safetensors' own error, which the fall-back for an
    unwritable cache did not catch: the eval failed after its minutes of work."""
    from worldsim.idm import IDMConfig, IDMData, load_or_train

    rng = np.random.default_rng(0)
    data = IDMData.from_trajectories([(rng.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, (8, 1)), np.ones(8, bool))])
    said: list[str] = []
    with full_disk(256):
        model, info = load_or_train("k", lambda: data, (3,), (16, 16), IDMConfig(channels=(8,), hidden=16, train_steps=2, batch=4),
                                    tmp_path, log=said.append)  # fmt: skip
    assert model is not None and info["cached"] is False and info["cache"] is None
    assert any("could not cache the inverse-dynamics model" in s and "File too large" in s for s in said)
    assert [p.name for p in tmp_path.iterdir()] == []  # neither a partial cache entry nor a temporary file


def test_a_second_eval_into_the_same_out_is_refused_while_the_first_runs(tmp_path: Path, capsys) -> None:
    """Two evals into one --out (a sweep given the same folder) both exited 0: each cleared the
    other's files, and the folder held one run's metrics.json beside the other's videos."""
    fcntl = pytest.importorskip("fcntl")  # POSIX: elsewhere no lock is taken
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text('{"the first run": 1}')
    (out / "side_by_side.gif").write_bytes(b"GIF89a")
    args = ["eval", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(out)]
    # The first eval, running; or a `worldsim record` into the same folder, which the message
    # names as the holder (it said "another `worldsim eval`" whatever held it); or a holder that
    # wrote no label.
    for written, holder in (("4242\nworldsim eval\n", "another `worldsim eval`"),
                            ("4242\nworldsim record\n", "another `worldsim record`"), ("4242\n", "another WorldSim run")):  # fmt: skip
        with open(tmp_path / ".eval.lock", "a+") as held:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.truncate(0)
            held.write(written)
            held.flush()
            for more in ([], ["--seed", "0", "1"]):
                assert cli([*args, *more]) == 2
                err = capsys.readouterr().err
                assert f"eval is being written by {holder} (process 4242)" in err and "Traceback" not in err
                assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "side_by_side.gif"]
                assert (out / "metrics.json").read_text() == '{"the first run": 1}'
    assert cli(args) == 2  # the lock went with its holder: now the checkpoint is what is wrong
    assert "missing.safetensors" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]


def test_an_eval_waits_for_another_training_the_same_idm_and_loads_it_instead_of_training_too(tmp_path: Path, monkeypatch) -> None:
    """Evals started together (a sweep over checkpoints) each trained the same IDM at once:
    minutes of the same work on the same cores for one cache file. One that finds another
    training it now waits for that one's cache entry."""
    import threading
    import time

    fcntl = pytest.importorskip("fcntl")  # POSIX: elsewhere no lock is taken
    import worldsim.atomic
    import worldsim.idm as idm

    monkeypatch.setattr(worldsim.atomic, "LOCK_POLL_SECONDS", 0.05, raising=False)
    rng = np.random.default_rng(0)
    data = idm.IDMData.from_trajectories([(rng.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, (8, 1)), np.ones(8, bool))])
    config = idm.IDMConfig(channels=(8,), hidden=16, train_steps=2, batch=4)
    other, _ = idm.train_idm(data, (3,), config, log=lambda _: None)  # what the other eval trains
    collected: list[int] = []

    def collect() -> idm.IDMData:
        collected.append(1)
        return data

    said: list[str] = []
    got: list[tuple] = []
    path = tmp_path / "idm-k.safetensors"
    with open(tmp_path / ".idm-k.safetensors.lock", "a+") as held:  # the other eval, training
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        waiter = threading.Thread(target=lambda: got.append(idm.load_or_train("k", collect, (3,), (16, 16), config, tmp_path, log=said.append)))
        waiter.start()
        deadline = time.monotonic() + 30  # a busy machine may take a while to start the thread
        while not said and waiter.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        waiter.join(0.2)
        assert waiter.is_alive() and not collected  # waiting, not training
        assert said == ["waiting for process 4242, which is training the same inverse-dynamics model (idm-k.safetensors)"]
        idm.save_idm(path, other, {})
    waiter.join(10)
    model, info = got[0]
    assert info == {"cache": str(path), "cached": True} and not collected
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_a_long_wait_for_a_cache_entry_says_so_again_and_names_each_new_holder(tmp_path: Path, monkeypatch) -> None:
    """A wait has no time limit (filling may take long), and it was said once: a log then
    showed nothing for as long as the holder took, or hung. It is now said again every
    WAIT_REMINDER_SECONDS, and whenever another process takes the entry over."""
    import threading
    import time

    fcntl = pytest.importorskip("fcntl")  # POSIX: elsewhere no lock is taken
    import worldsim.atomic

    monkeypatch.setattr(worldsim.atomic, "LOCK_POLL_SECONDS", 0.01)
    monkeypatch.setattr(worldsim.atomic, "WAIT_REMINDER_SECONDS", 0.2)
    said: list[str] = []
    done = threading.Event()

    def wait_for_turn() -> None:
        with worldsim.atomic.turn_to_fill(tmp_path / "entry", said.append):
            done.set()

    def until(what) -> None:
        deadline = time.monotonic() + 30
        while not what() and time.monotonic() < deadline:
            time.sleep(0.01)

    with open(tmp_path / ".entry.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        waiter = threading.Thread(target=wait_for_turn)
        waiter.start()
        until(lambda: len(said) >= 2)
        assert said[:2] == ["4242", "4242"]  # said again while it still waits
        held.truncate(0)
        held.write("4343\n")  # another process took it over
        held.flush()
        until(lambda: "4343" in said)
        assert "4343" in said and not done.is_set()
    waiter.join(30)
    assert done.is_set()


def test_held_out_episodes_shorter_than_the_horizon_are_refused_after_their_own_length() -> None:
    """With --horizon far beyond the env's episodes, every one of the 50 tries used to run the
    whole horizon through resets (50 x 100,002 steps for --horizon 100000 on 40-step
    episodes, minutes before the error); each now stops where its episode ends."""
    from worldsim.evaluate import _held_out

    ref = ReferenceEnv(FULL_ID, {"max_len": 10, "end_prob": 0.0})
    calls = [0]
    step = ref.env.step

    def counted(action):
        calls[0] += 1
        return step(action)

    ref.env.step = counted
    with pytest.raises(WorldSimError, match="fewer than 2 of 50 held-out episodes last 2000 steps.*at most 9 fit"):
        _held_out(ref, FULL_ID, 2, 2000, 0)
    assert calls[0] == 50 * 10
    # episodes that fit are unchanged: the same frames as a rollout that would not stop
    trajs, _ = _held_out(ref, FULL_ID, 2, 9, 0)
    full = ref.rollout(HELDOUT_SEED_BASE, 9, make_policy(FULL_ID, ref.spec, np.random.default_rng([0, 0]))[0])
    np.testing.assert_array_equal(trajs[0].frames, full.frames)
    assert len(trajs[0].actions) == 9


@pytest.mark.parametrize("threshold", ["0", "-1", "nan", "inf"])
def test_a_reward_threshold_that_counts_every_step_or_none_is_refused(threshold: str, tmp_path: Path, capsys) -> None:
    """``--reward-threshold 0`` made every step a reward event (|r| >= 0), so an env that never
    rewards read precision and recall 1.00; NaN made none. Refused before the model loads."""
    rc = cli(["eval", "--checkpoint", str(tmp_path / "never-read.safetensors"), "--reward-threshold", threshold,
              "--out", str(tmp_path / "x")])  # fmt: skip
    assert rc == 2 and "--reward-threshold must be a number above 0" in capsys.readouterr().err
    from worldsim.evaluate import EvalConfig, Evaluation

    with pytest.raises(WorldSimError, match="--reward-threshold"):
        Evaluation(EvalConfig(checkpoint=str(tmp_path / "never-read.safetensors"), reward_threshold=float(threshold)))
    with pytest.raises(WorldSimError, match="--horizon must be at least 1"):  # the Python API checks what the CLI does
        Evaluation(EvalConfig(checkpoint=str(tmp_path / "never-read.safetensors"), horizon=0))


def test_the_stability_rollout_is_prompted_from_one_episode(tmp_path: Path) -> None:
    """In an env whose episodes end early, the stability world's episode used to end inside
    the prompt (here after 4 of its 7 frames), so the model was prompted with frames of two
    worlds; the rollout now starts from the first seed whose episode outlasts the prompt."""
    from types import SimpleNamespace

    from worldsim.eval_probes import stability
    from worldsim.reference import STABILITY_SEED_BASE

    class Model:
        def prompt(self, frames: np.ndarray, actions: np.ndarray) -> None:
            self.prompted = frames

        def step(self, actions: np.ndarray) -> SimpleNamespace:
            return SimpleNamespace(frames=self.prompted[:, -1])

    ref = ReferenceEnv(FULL_ID, {"discrete": True, "end_prob": 0.2})
    P = 7
    ev = SimpleNamespace(P=P, cfg=SimpleNamespace(stability_steps=3, videos=False), model=Model(), ref=ref,
                         env_id=FULL_ID, out=tmp_path, reseed=lambda section: None)  # fmt: skip
    assert ref.rollout(STABILITY_SEED_BASE, P - 1, make_policy(FULL_ID, ref.spec, np.random.default_rng([0, 5]))[0]).resets.any()
    result = stability(ev, policy_seed=0)
    prompt = ev.model.prompted[0]
    # the toy env writes the step number into pixel (0, 0) and the episode's seed colour into (0, 0, 2)
    np.testing.assert_array_equal(prompt[:, 0, 0, 0], np.arange(P))
    assert len(set(prompt[:, 0, 0, 2])) == 1
    assert result.metrics["seed"] > STABILITY_SEED_BASE


def test_recipe_refuses_a_device_or_thread_count_this_machine_lacks_before_recording(monkeypatch, tmp_path: Path, capsys) -> None:
    """`--device cuda` on a machine without that GPU failed only at the first training stage,
    after every data part was recorded; `--threads 0` was a traceback."""
    from worldsim import recipe

    def recorded(argv: list[str]) -> None:
        raise AssertionError(f"work started: {argv[:2]}")

    monkeypatch.setattr(recipe, "_cli", recorded)
    missing = f"cuda:{torch.cuda.device_count()}"  # one GPU more than torch sees
    assert cli(["train", "recipe", "blockworld-16-smoke", "--dir", str(tmp_path / "r"), "--device", missing]) == 2
    assert f"device '{missing}'" in capsys.readouterr().err
    assert cli(["train", "recipe", "blockworld-16-smoke", "--dir", str(tmp_path / "r"), "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing pinned or recorded


def test_recipe_refuses_a_folder_another_run_is_working_in(monkeypatch, tmp_path: Path) -> None:
    """The command started again while a background run still worked in the folder: both
    recorded and trained the same stages at once, and one stage's files came from one run and
    the next's from the other (a later stage then refused its --init's tokenizer)."""
    fcntl = pytest.importorskip("fcntl")  # POSIX: elsewhere the recipe takes no lock
    from worldsim import recipe

    def recorded(argv: list[str]) -> None:
        raise AssertionError(f"work started: {argv[:2]}")

    monkeypatch.setattr(recipe, "_cli", recorded)
    root = tmp_path / "r"
    root.mkdir()
    with open(root / "recipe.lock", "a+") as held:  # the other run
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        with pytest.raises(WorldSimError, match=r"in use by another `worldsim train recipe` \(process 4242\)"):
            RecipeRun("blockworld-16-smoke", root, log=lambda s: None).run()
    assert not (root / "recipe.json").exists()
    with pytest.raises(AssertionError, match="work started"):  # the lock is gone with its holder
        RecipeRun("blockworld-16-smoke", root, log=lambda s: None).run()


def test_an_eval_refused_early_leaves_the_earlier_evals_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run refused in seconds (here a --horizon the toy's 30-step episodes cannot hold) used
    to delete the earlier eval's metrics.json and videos in --out before it found out."""
    from tests.envs.test_dream import untrained_toy_model

    ckpt = untrained_toy_model(tmp_path / "toy.safetensors", FULL_ID, {"discrete": True}, (12, 16))
    out = tmp_path / "eval"
    out.mkdir()
    for name in ("metrics.json", "stability.mp4"):
        (out / name).write_text("an earlier eval's")
    rc = cli(["eval", "--checkpoint", ckpt, "--env", FULL_ID, "--env-kwargs", '{"discrete": true}', "--out", str(out),
              "--horizon", "5000", "--threads", "1"])  # fmt: skip
    assert rc == 2 and "held-out episodes last 5002 steps" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in out.iterdir()} == {"metrics.json": "an earlier eval's", "stability.mp4": "an earlier eval's"}


def test_recipe_runs_on_a_file_system_that_takes_no_locks(monkeypatch, tmp_path: Path) -> None:
    """NFS without its lock daemon refuses every lock ("No locks available"): the recipe, which ran
    there before it took a lock, failed at once with that OSError; it now says so and goes on."""
    import errno
    import os

    fcntl = pytest.importorskip("fcntl")
    from worldsim import recipe

    def no_locks(f: object, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    def recorded(argv: list[str]) -> None:
        raise AssertionError(f"work started: {argv[:2]}")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.setattr(recipe, "_cli", recorded)
    said: list[str] = []
    with pytest.raises(AssertionError, match="work started"):
        RecipeRun("blockworld-16-smoke", tmp_path / "r", log=said.append).run()
    assert any("takes no file locks (No locks available)" in s for s in said)


def test_eval_summary_names_the_open_loop_span_as_the_progress_line_does() -> None:
    """The table printed at the end says ``open loop 1-8``, as the progress line before it,
    not the metrics key's ``1_8``; and ``worldsim eval --help`` gives the budget's defaults,
    which a newcomer needs to scale an eval down."""
    pr = {"precision": None, "recall": None, "actual": 0}
    m = {
        "tokenizer": {"psnr": 30.0, "ssim": 0.9},
        "teacher_forced": {"psnr": 25.0, "copy_last_psnr": 30.0, "gain_db": -5.0},
        "open_loop": {"mean_1_8": {"psnr": 20.0, "copy_last_psnr": 22.0, "gain_db": -2.0}, "horizons": {}},
        "controllability": {"components": {}},
        "permanence": {"skipped": "no probe"},
        "stability": {"frames": 100, "collapsed": False, "flagged_fraction": 0.0},
        "reward": {"teacher_forced": pr}, "termination": {"teacher_forced": pr},
        "speed": {"fps_single": 50.0, "fps_batched": 200.0, "batch": 4},
    }
    line = next(s for s in evaluate.summary(m).splitlines() if s.startswith("open loop"))
    assert line.split()[:3] == ["open", "loop", "1-8"], line
    helps = {a.option_strings[0]: a.help % {"default": a.default} for a in evaluate.build_parser()._actions}
    for option, default in (("--episodes", 64), ("--horizon", 32), ("--stability-steps", 2000), ("--probe-worlds", 16),
                            ("--idm-data-steps", 32000), ("--idm-train-steps", 6000)):
        assert f"default {default})" in helps[option], (option, helps[option])


def test_an_edited_env_gets_a_new_idm_cache_key_and_an_unedited_one_keeps_its_own(tmp_path, monkeypatch) -> None:
    """The IDM cache was keyed on the env id and kwargs alone, so after a researcher changed
    their env's rendering under the same id, every later eval judged the dream with an IDM
    trained on the old frames, without a word."""
    from worldsim.idm import IDMConfig, cache_key

    module = tmp_path / "my_edited_env.py"
    source = '''
import gymnasium as gym
from tests.worldsim.toy_env import ToyImageEnv

class Edited(ToyImageEnv):
    SHADE = {shade}

if "Edited-v0" not in gym.registry:
    gym.register(id="Edited-v0", entry_point=Edited)
'''
    module.write_text(source.format(shade=1))
    monkeypatch.syspath_prepend(str(tmp_path))

    def key() -> str:
        ref = ReferenceEnv("my_edited_env:Edited-v0", {})
        return cache_key(ref.env_id, {}, ref.shape, "random", IDMConfig(), ref.code_digest())

    first = key()
    assert key() == first  # the same code: the same cached IDM
    module.write_text(source.format(shade=2))
    assert key() != first
    blockworld = ReferenceEnv(BLOCKWORLD, {}).code_digest()
    assert blockworld is not None and blockworld == ReferenceEnv(BLOCKWORLD, {"hud": False}).code_digest()


def test_a_video_interrupted_while_encoding_leaves_the_earlier_one(tmp_path: Path, monkeypatch) -> None:
    """`worldsim demo` and `eval` interrupted while encoding a GIF or MP4 left a cut-short video
    in place of the one an earlier run had written there."""
    from worldsim import eval_media

    frames = np.zeros((6, 8, 8, 3), np.uint8)
    frames[:, :, :4] = 200
    gif, mp4 = tmp_path / "dream.gif", tmp_path / "stability.mp4"
    eval_media.write_gif(gif, frames)
    eval_media.write_mp4(mp4, frames)
    whole = gif.read_bytes(), mp4.read_bytes()
    real_get_writer = eval_media.imageio.get_writer

    def get_writer(*a, **k):
        w, appended = real_get_writer(*a, **k), []
        append = w.append_data

        def append_data(f):
            appended.append(f)
            if len(appended) == 3:
                raise KeyboardInterrupt  # Ctrl-C at the third frame
            append(f)

        w.append_data = append_data
        return w

    real_write_bytes = Path.write_bytes

    def write_bytes(self, data):
        real_write_bytes(self, data[: len(data) // 2])  # the GIF half written
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_media.imageio, "get_writer", get_writer)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    for write, path in ((eval_media.write_gif, gif), (eval_media.write_mp4, mp4)):
        with pytest.raises(KeyboardInterrupt):
            write(path, 255 - frames)
    assert (gif.read_bytes(), mp4.read_bytes()) == whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dream.gif", "stability.mp4"]


def test_a_sections_figures_do_not_move_with_another_sections_budget(tiny_blockworld: Path, tmp_path: Path) -> None:
    """The sections drew from one sampling stream, so a longer stability rollout moved the
    permanence probes (the full circle from 7.88 to 7.82 dB here) and more episodes moved the
    long rollout: a cheaper eval was no preview of a default one's probes."""

    def metrics(name: str, *changes: str) -> dict:
        out = tmp_path / name
        args = [*SMALL]
        for flag, value in zip(changes[::2], changes[1::2], strict=True):
            args[args.index(flag) + 1] = value
        assert cli(["eval", "--checkpoint", str(tiny_blockworld), "--out", str(out), "--no-videos",
                    "--cache-dir", str(tmp_path / "cache"), *args]) == 0  # fmt: skip
        return json.loads((out / "metrics.json").read_text())

    base = metrics("base")
    longer = metrics("longer", "--stability-steps", "40")
    more = metrics("more", "--episodes", "3")
    assert longer["permanence"] == base["permanence"] == more["permanence"]
    assert more["stability"] == base["stability"]
    assert longer["open_loop"] == base["open_loop"] and longer["stability"] != base["stability"]


def test_an_eval_video_ffmpeg_could_not_finish_is_an_error_not_a_broken_file(tmp_path: Path, full_disk) -> None:
    """The eval's stability MP4 on a full disk: ffmpeg's failure went unseen, and a video no
    player opens was renamed into place."""
    from worldsim.errors import WorldSimError
    from worldsim.eval_media import write_mp4

    frames = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    with full_disk(2000), pytest.raises(WorldSimError, match="stability.mp4: ffmpeg did not finish the video"):
        write_mp4(tmp_path / "stability.mp4", frames)
    assert list(tmp_path.iterdir()) == []
    write_mp4(tmp_path / "stability.mp4", frames)  # and with room, the same frames make a video
    import imageio.v2 as imageio

    assert len(imageio.mimread(tmp_path / "stability.mp4")) == 20


def test_an_eval_gif_on_a_full_disk_fails_once_naming_it(tmp_path: Path) -> None:
    """The demo's and the eval's GIFs on a full disk: the error named no file, and imageio's
    writer, deleted, encoded again and printed tracebacks after it."""
    resource = pytest.importorskip("resource")
    code = ("import numpy as np, sys; from pathlib import Path; from worldsim.eval_media import write_gif\n"
            "frames = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)\n"
            f"try: write_gif(Path({str(tmp_path / 'dream.gif')!r}), frames)\n"
            "except OSError as e: print('refused', e.filename)\n")  # fmt: skip

    def full_disk() -> None:  # in the child only: writes past 2,000 bytes fail (EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, preexec_fn=full_disk, timeout=120)
    assert done.stdout.strip() == f"refused {tmp_path / 'dream.gif'}"
    assert done.stderr == "" and list(tmp_path.iterdir()) == []


def test_an_eval_whose_metrics_json_the_full_disk_refuses_still_gives_its_figures(
    tiny_toy: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A disk that filled during the eval's minutes refused metrics.json at the very end, and
    every figure measured was lost with it."""
    import errno

    real = evaluate.atomic_write_text

    def write(path, text):
        if Path(path).name == "metrics.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, text)

    monkeypatch.setattr(evaluate, "atomic_write_text", write)
    out = tmp_path / "eval"
    rc = cli(["eval", "--checkpoint", str(tiny_toy), "--env", FULL_ID, "--out", str(out), "--no-videos",
              "--cache-dir", str(tmp_path / "cache"), *SMALL])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and f"error: No space left on device: '{out / 'metrics.json'}'" in err
    shown = err[err.index("its figures follow:\n") + len("its figures follow:\n"):]
    m = json.loads(shown[: shown.index("\n}\n") + 2])
    assert m["env_kwargs"] == TOY_KWARGS and "open_loop" in m and not (out / "metrics.json").exists()
