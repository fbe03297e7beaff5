"""`worldsim train tokenizer|dynamics`: smoke runs, metrics, exact resume after a kill, DDP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import worldsim
from worldsim.checkpoint import load_model
from worldsim.cli import main as cli
from worldsim.recording_writer import RecordingWriter
from worldsim.spaces import ActionSpec
from worldsim.train import state_path

ROOT = Path(__file__).resolve().parents[2]
FAST = [
    "--preset",
    "tiny",
    "--batch",
    "4",
    "--log-every",
    "1",
    "--val-batches",
    "1",
    "--device",
    "cpu",
]


def toy_recording(path: Path, episodes: int = 6, steps: int = 12, height: int = 16) -> Path:
    """A world that is not BlockWorld: a square moved left/right by a Discrete(3) action."""
    rng = np.random.default_rng(0)
    spec = ActionSpec("Discrete", (3,))
    with RecordingWriter(path, env_id="Toy-v0", env_kwargs={}, observation_shape=(height, 16, 3),
                         action_space=spec, agent="random", seed=0) as w:  # fmt: skip
        for ep in range(episodes):
            x, colour = int(rng.integers(0, 12)), rng.integers(60, 255, 3)

            def frame(x: int, colour: np.ndarray = colour) -> np.ndarray:
                f = np.full((height, 16, 3), 20, dtype=np.uint8)
                f[6:10, x : x + 4] = colour
                return f

            w.reset(ep, ep, frame(x))
            for t in range(1, steps + 1):
                a = int(rng.integers(0, 3))
                x = min(12, max(0, x + a - 1))
                w.step(ep, t, a, float(a == 2), t == steps, False, frame(x))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return toy_recording(tmp_path_factory.mktemp("data") / "toy.wsrec")


@pytest.fixture(scope="module")
def tokenizer(data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tok.safetensors"
    assert (
        cli(["train", "tokenizer", "--data", str(data), "--out", str(out), "--steps", "3", *FAST])
        == 0
    )
    return out


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out.parent / "metrics.jsonl").read_text().splitlines()]


def test_tokenizer_training_writes_checkpoint_metrics_and_validation(tokenizer: Path) -> None:
    loaded = load_model(tokenizer)
    assert (
        loaded.dynamics is None
        and loaded.config.frame_shape == (16, 16)
        and loaded.info["steps"] == 3
    )
    rows = metrics(tokenizer)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert all(r["kind"] == "tokenizer" and r["frames_per_s"] > 0 for r in rows if "loss" in r)
    assert any("val_loss" in r and r["val_psnr"] > 0 for r in rows)
    assert state_path(tokenizer).is_file()


def test_dynamics_training_gives_a_checkpoint_that_generates(
    data: Path, tokenizer: Path, tmp_path: Path
) -> None:
    out = tmp_path / "dyn.safetensors"
    args = [
        "train",
        "dynamics",
        "--data",
        str(data),
        "--tokenizer",
        str(tokenizer),
        "--out",
        str(out),
    ]
    assert cli([*args, "--steps", "2", "--context", "4", *FAST]) == 0
    rows = metrics(out)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2] and rows[-1]["val_loss"] > 0
    model = worldsim.load(out, device="cpu")
    assert model.config.env_id == "Toy-v0" and model.action_spec == ActionSpec("Discrete", (3,))
    model.prompt(np.zeros((1, 2, 16, 16, 3), dtype=np.uint8), np.array([[1]]))
    assert model.step(np.array([2])).frames.shape == (1, 16, 16, 3)


def test_a_second_phase_in_the_same_folder_keeps_the_first_phases_metrics(data: Path, tokenizer: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "dynamics.safetensors", tmp_path / "finetune.safetensors"
    args = ["train", "dynamics", "--data", str(data), "--tokenizer", str(tokenizer), "--steps", "2", "--context", "4", *FAST]
    assert cli([*args, "--out", str(first)]) == 0
    assert cli([*args, "--out", str(second), "--init", str(first), "--seed", "1", "--split-seed", "0", "--resume"]) == 0
    rows = metrics(first)  # one file for the folder
    for ckpt in (first, second):
        assert [r["step"] for r in rows if r["checkpoint"] == ckpt.name and "loss" in r] == [1, 2]
        assert [r["step"] for r in rows if r["checkpoint"] == ckpt.name and "val_loss" in r] == [2]
    assert load_model(second).info["init"] == str(first)


def test_encoded_codes_are_cached_and_reused_only_for_the_same_data_and_tokenizer(
    data: Path, tokenizer: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from worldsim.tokenizer import Tokenizer

    def train(name: str, *extra: str) -> None:
        args = ["train", "dynamics", "--data", str(data), "--tokenizer", str(tokenizer), "--out", str(tmp_path / name),
                "--steps", "1", "--context", "4", *FAST, *extra]  # fmt: skip
        assert cli(args) == 0

    encoded = []
    real_encode = Tokenizer.encode
    monkeypatch.setattr(
        Tokenizer,
        "encode",
        lambda self, frames: encoded.append(len(frames)) or real_encode(self, frames),
    )
    cache = tmp_path / "code-cache"
    train("a.safetensors")
    first = sum(encoded)
    assert (
        first > 0 and len(list(cache.glob("codes-*.safetensors"))) == 2
    )  # the train and the val split

    # A second start on the same data and tokenizer (a resume, or another run beside it)
    # loads the codes and encodes nothing.
    encoded.clear()
    train("a.safetensors", "--steps", "2", "--resume")
    assert encoded == []

    # Changed recordings are encoded again, into new cache files; so is a broken cache.
    os.utime(data, ns=(time.time_ns(), time.time_ns() + 10**9))
    train("b.safetensors")
    assert sum(encoded) == first and len(list(cache.glob("codes-*.safetensors"))) == 4
    for f in cache.glob("codes-*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    encoded.clear()
    train("c.safetensors")
    assert sum(encoded) == first and "unreadable code cache" in capsys.readouterr().err

    # --code-cache none writes nothing.
    train("d/d.safetensors", "--code-cache", "none")
    assert not (tmp_path / "d" / "code-cache").exists()

    # A cache folder that cannot be written costs the cache, not the run (it used to fail
    # after encoding everything).
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    train("e.safetensors", "--code-cache", str(blocker / "codes"))
    assert "could not write the code cache" in capsys.readouterr().err and (tmp_path / "e.safetensors").is_file()


def test_decoder_fine_tuning_keeps_the_codes_and_swaps_into_a_world_model(
    data: Path, tokenizer: Path, tmp_path: Path, capsys
) -> None:
    from worldsim.train import encoder_digest

    tuned = tmp_path / "tuned.safetensors"
    args = ["train", "tokenizer", "--data", str(data), "--out", str(tuned), "--steps", "3", "--lr", "1e-2", *FAST]
    assert cli([*args, "--init", str(tokenizer), "--decoder-only"]) == 0
    before, after = load_model(tokenizer), load_model(tuned)
    assert encoder_digest(after.tokenizer) == encoder_digest(before.tokenizer)
    assert after.info["decoder_only"] and after.info["init"] == str(tokenizer)
    dec_a, dec_b = before.tokenizer.decoder.state_dict(), after.tokenizer.decoder.state_dict()
    assert any(not np.array_equal(dec_a[k].numpy(), dec_b[k].numpy()) for k in dec_a), "the decoder did not train"

    world = tmp_path / "dyn.safetensors"
    assert cli(["train", "dynamics", "--data", str(data), "--tokenizer", str(tokenizer), "--out", str(world),
                "--steps", "1", "--context", "4", *FAST]) == 0  # fmt: skip
    swapped = tmp_path / "swapped.safetensors"
    assert cli(["train", "swap-decoder", "--checkpoint", str(world), "--tokenizer", str(tuned), "--out", str(swapped)]) == 0
    w0, w1 = load_model(world), load_model(swapped)
    for k, v in w0.dynamics.state_dict().items():
        assert np.array_equal(v.numpy(), w1.dynamics.state_dict()[k].numpy())
    for k, v in after.tokenizer.decoder.state_dict().items():
        assert np.array_equal(v.numpy(), w1.tokenizer.decoder.state_dict()[k].numpy())
    # Same codes for the same frames: the dynamics model still means what it learned.
    frames = np.random.default_rng(0).integers(0, 256, (2, 1, 16, 16, 3), dtype=np.uint8)
    m0, m1 = worldsim.load(world, device="cpu"), worldsim.load(swapped, device="cpu")
    assert np.array_equal(m0.encode(frames[:, 0]), m1.encode(frames[:, 0]))

    # A tokenizer with another encoder is refused, and so is --decoder-only without --init.
    other = tmp_path / "other.safetensors"
    assert cli([*args[:5], str(other), "--steps", "1", "--seed", "7", *FAST]) == 0
    assert cli(["train", "swap-decoder", "--checkpoint", str(world), "--tokenizer", str(other), "--out", str(tmp_path / "x")]) == 2
    assert cli([*args, "--decoder-only"]) == 2
    err = capsys.readouterr().err
    assert "encoder differs" in err and "--init" in err


def test_dynamics_fine_tuning_from_a_world_model_adds_heads_that_start_neutral(
    data: Path, tokenizer: Path, tmp_path: Path, capsys
) -> None:
    base = tmp_path / "base.safetensors"
    common = ["train", "dynamics", "--data", str(data), "--tokenizer", str(tokenizer), *FAST]
    assert cli([*common, "--out", str(base), "--steps", "2", "--context", "4", "--no-stay-gate"]) == 0
    tuned = tmp_path / "tuned.safetensors"
    # --lr 0: the weights the fine-tuning starts from are exactly what it saves
    assert cli([*common, "--out", str(tuned), "--steps", "1", "--init", str(base), "--stay-gate", "--still-head", "--lr", "0",
                "--rollout-share", "0.5"]) == 0  # fmt: skip
    b, t = load_model(base), load_model(tuned)
    assert not b.config.dynamics.stay_gate and t.config.dynamics.stay_gate and t.config.dynamics.still_head
    assert b.config.dynamics.rollout_share == 0 and t.config.dynamics.rollout_share == 0.5
    assert t.config.dynamics.context == 4
    assert t.info["init"] == str(base)
    for k, v in b.dynamics.state_dict().items():
        assert np.array_equal(v.numpy(), t.dynamics.state_dict()[k].numpy()), k
    assert not t.dynamics.stay_head.weight.any() and not t.dynamics.stay_head.bias.any()

    # A zero gate and a new still head (which says "not still") change nothing: the same frames, greedy.
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    acts = np.array([[1, 2], [0, 1]])
    outs = []
    for path in (base, tuned):
        m = worldsim.load(path, device="cpu", temperature=0)
        m.prompt(frames, acts)
        outs.append([m.step(np.array([2, 0])).frames for _ in range(3)])
    assert all(np.array_equal(x, y) for x, y in zip(*outs))

    # An init whose tokenizer encodes differently is refused: its codes would mean other things.
    other = tmp_path / "other-tok.safetensors"
    assert cli(["train", "tokenizer", "--data", str(data), "--out", str(other), "--steps", "1", "--seed", "7", *FAST]) == 0
    assert cli([*common[:4], "--tokenizer", str(other), *FAST, "--out", str(tmp_path / "x.safetensors"), "--steps", "1",
                "--init", str(base)]) == 2  # fmt: skip
    assert "encodes differently" in capsys.readouterr().err
    assert cli([*common, "--out", str(tmp_path / "y.safetensors"), "--steps", "1", "--init", str(base),
                "--rollout-share", "1.5"]) == 2  # fmt: skip
    assert "--rollout-share must be between 0 and 1" in capsys.readouterr().err
    assert cli([*common, "--out", str(tmp_path / "y.safetensors"), "--steps", "1", "--init", str(base),
                "--change-weight", "0"]) == 2  # fmt: skip
    assert "--change-weight must be above 0" in capsys.readouterr().err
    assert cli([*common, "--out", str(tmp_path / "w.safetensors"), "--steps", "1", "--init", str(base),
                "--change-weight", "3"]) == 0  # fmt: skip
    assert load_model(tmp_path / "w.safetensors").config.dynamics.change_weight == 3.0
    assert cli([*common, "--out", str(tmp_path / "y.safetensors"), "--steps", "1", "--init", str(base),
                "--rollout-passes", "0"]) == 2  # fmt: skip
    assert "--rollout-passes must be at least 1" in capsys.readouterr().err
    assert cli([*common, "--out", str(tmp_path / "p.safetensors"), "--steps", "1", "--init", str(base),
                "--rollout-share", "1", "--rollout-passes", "3"]) == 0  # fmt: skip
    assert (load_model(tmp_path / "p.safetensors").config.dynamics.rollout_passes, t.config.dynamics.rollout_passes) == (3, 2)
    # --stay-motion auto measures the table on the training windows and keeps what it measured
    capsys.readouterr()
    assert cli([*common, "--out", str(tmp_path / "m.safetensors"), "--steps", "1", "--init", str(base),
                "--stay-motion", "auto"]) == 0  # fmt: skip
    assert "stay motion (component, value, dx, dy) measured on the training data" in capsys.readouterr().out
    moved = load_model(tmp_path / "m.safetensors")
    assert isinstance(moved.config.dynamics.stay_motion, tuple) and moved.info["stay_motion_matches"]
    assert all(set(m) in ({"pairs"}, {"pairs", "none", "best", "dx", "dy"}) for m in moved.info["stay_motion_matches"].values())


def test_bad_arguments_are_one_line_errors(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.safetensors"
    assert (
        cli(["train", "tokenizer", "--data", str(tmp_path / "none"), "--out", str(out), *FAST]) == 2
    )
    assert (
        cli(["train", "tokenizer", "--data", str(data), "--out", str(out), "--steps", "0", *FAST])
        == 2
    )
    assert (
        cli(
            [
                "train",
                "dynamics",
                "--data",
                str(data),
                "--tokenizer",
                str(data),
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("error:") == 3 and "Traceback" not in err
    tok = ["train", "tokenizer", "--data", str(data), *FAST]
    for bad, message in ((["--lr", "-1"], "--lr must be a number >= 0"), (["--warmup", "-1"], "--warmup must be at least 0")):
        assert cli([*tok, "--out", str(out), *bad]) == 2
        assert message in capsys.readouterr().err


def test_frames_the_model_cannot_cut_evenly_are_one_line_errors_before_encoding(tmp_path: Path, capsys) -> None:
    """18x16 frames: the tiny tokenizer (stride 2) takes them, its dynamics (2x2-cell patches) does not."""
    odd = toy_recording(tmp_path / "odd.wsrec", episodes=2, height=18)
    tok = tmp_path / "tok.safetensors"
    assert cli(["train", "tokenizer", "--data", str(odd), "--out", str(tok), "--steps", "1", *FAST]) == 0
    capsys.readouterr()
    argv = ["train", "dynamics", "--data", str(odd), "--tokenizer", str(tok), "--out", str(tmp_path / "d.safetensors")]
    assert cli([*argv, "--steps", "1", "--code-cache", str(tmp_path / "codes"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "frames are 18x16" in err and "multiples of 4" in err and "Traceback" not in err
    assert not (tmp_path / "codes").exists()  # refused before encoding anything
    small = [a if a != "tiny" else "small" for a in FAST]
    assert cli(["train", "tokenizer", "--data", str(odd), "--out", str(tmp_path / "t4.safetensors"), "--steps", "1", *small]) == 2
    err = capsys.readouterr().err
    assert "frames are 18x16" in err and "multiples of 4" in err and "Traceback" not in err


def test_a_recording_declaring_absurdly_many_actions_is_refused_before_training(tmp_path: Path, capsys) -> None:
    """The world model embeds each action choice as a row: a recording made elsewhere that
    declared Discrete(10**8) made `worldsim train dynamics` try a 25.6 GB allocation. Just
    above the limit here, so that the test costs little should the check ever go."""
    from worldsim.checkpoint import ModelConfig, save_model
    from worldsim.presets import get_preset
    from worldsim.tokenizer import Tokenizer

    path = tmp_path / "many.msgpack"
    with RecordingWriter(path, env_id="Toy-v0", env_kwargs={}, observation_shape=(16, 16, 3),
                         action_space=ActionSpec("Discrete", (70_000,)), agent="random", seed=0) as w:  # fmt: skip
        for ep in range(2):
            w.reset(ep, ep, np.zeros((16, 16, 3), np.uint8))
            for t in range(1, 12):
                w.step(ep, t, t, 0.0, False, False, np.full((16, 16, 3), t, np.uint8))
    tok = tmp_path / "tok.safetensors"
    save_model(tok, ModelConfig(tokenizer=get_preset("tiny").tokenizer), Tokenizer(get_preset("tiny").tokenizer))
    argv = ["train", "dynamics", "--data", str(path), "--tokenizer", str(tok), "--out", str(tmp_path / "d.safetensors")]
    assert cli([*argv, "--steps", "1", "--code-cache", str(tmp_path / "codes"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "action space Discrete[70000] has 70000 choices in all; the world model embeds at most 65536" in err
    assert "Traceback" not in err and not (tmp_path / "codes").exists()  # refused before encoding anything


def test_an_existing_checkpoint_is_never_replaced_by_a_forgotten_resume(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "t.safetensors"
    args = ["train", "tokenizer", "--data", str(data), "--out", str(out), *FAST]
    assert cli([*args, "--steps", "4"]) == 0
    kept = out.read_bytes()
    capsys.readouterr()
    assert cli([*args, "--steps", "2"]) == 2  # neither --resume nor --overwrite
    assert "exists; pass --resume to continue its run, or --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == kept
    assert cli([*args, "--steps", "4", "--resume"]) == 0  # already finished: nothing to do
    assert "already at step 4 of 4" in capsys.readouterr().out
    assert out.read_bytes() == kept
    assert cli([*args, "--steps", "2", "--overwrite"]) == 0
    assert load_model(out).info["steps"] == 2
    with pytest.raises(SystemExit):  # one or the other
        cli([*args, "--steps", "2", "--overwrite", "--resume"])


def test_a_finished_run_resumed_writes_the_checkpoint_a_kill_left_behind(data: Path, tmp_path: Path) -> None:
    """The state is written first: a kill before the last checkpoint leaves it a save behind, or
    missing; resuming the finished run writes it from the state."""
    out = tmp_path / "t.safetensors"
    args = ["train", "tokenizer", "--data", str(data), "--out", str(out), "--ckpt-every", "2", *FAST]
    assert cli([*args, "--steps", "2"]) == 0
    behind = out.read_bytes()
    assert cli([*args, "--steps", "4", "--resume"]) == 0
    finished = _weights(out)
    out.write_bytes(behind)  # the step-4 checkpoint never made it to disk
    assert cli([*args, "--steps", "4", "--resume"]) == 0
    assert load_model(out).info["steps"] == 4
    again = _weights(out)
    assert all(np.array_equal(finished[k], again[k]) for k in finished)
    out.unlink()
    assert cli([*args, "--steps", "4", "--resume"]) == 0
    assert load_model(out).info["steps"] == 4


def _train(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "worldsim", "train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)  # fmt: skip


def _weights(path: Path) -> dict:
    with safe_open(str(path), framework="np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def test_resume_after_kill_continues_exactly(data: Path, tmp_path: Path) -> None:
    # Enough steps that the kill lands mid-run even on a fast CPU, where a tiny step takes ~1 ms.
    steps = 300
    args = ["tokenizer", "--data", str(data), "--steps", str(steps), "--ckpt-every", "3", *FAST]
    killed = tmp_path / "killed" / "t.safetensors"
    proc = _train([*args, "--out", str(killed)])
    deadline = time.time() + 120
    while not state_path(killed).is_file() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with safe_open(str(state_path(killed)), framework="np") as f:
        at = json.loads(f.metadata()["state"])["step"]
    assert at < steps, "the run finished before it could be killed; the test proves nothing"
    assert cli(["train", *args, "--out", str(killed), "--resume"]) == 0
    full = tmp_path / "full" / "t.safetensors"
    assert cli(["train", *args, "--out", str(full)]) == 0
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    logged = [r["step"] for r in metrics(killed) if "loss" in r]
    assert logged == list(range(1, steps + 1))  # no step lost or logged twice


def _killed_mid_save(how: str, data: Path, out: Path, steps: int) -> subprocess.CompletedProcess:
    """Run `worldsim train tokenizer` in a process that sends itself ``how`` halfway through
    writing its second training state (the first save's files are then in place)."""
    code = f"""
import os, signal, sys
import worldsim.checkpoint as ck
from worldsim.cli import main
real, saves = ck.save_file, []
def save_file(tensors, path, metadata=None):
    saves.append(path)
    if len(saves) == 3:  # state, checkpoint, then the next state
        open(path, "wb").write(b"half a state")
        os.kill(os.getpid(), signal.{how})
    real(tensors, path, metadata=metadata)
ck.save_file = save_file
sys.exit(main(sys.argv[1:]))
"""
    args = ["train", "tokenizer", "--data", str(data), "--out", str(out), "--steps", str(steps), "--ckpt-every", "1", *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_sigterm_mid_save_ends_training_as_ctrl_c_does(data: Path, tmp_path: Path) -> None:
    """SIGTERM (`kill`, `docker stop`, a scheduler's time limit) killed the run on the spot: the
    temporary file of the checkpoint being written stayed beside it for good, and nothing was said."""
    out = tmp_path / "t.safetensors"
    done = _killed_mid_save("SIGTERM", data, out, 4)
    assert done.returncode == 143 and done.stderr.rstrip().endswith("worldsim train tokenizer: terminated"), done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "t.safetensors", "t.state.safetensors"]
    assert load_model(out).info["steps"] == 1
    assert cli(["train", "tokenizer", "--data", str(data), "--out", str(out), "--steps", "2", "--resume", *FAST]) == 0


def test_temporary_files_of_saves_killed_mid_write_are_removed_by_the_next_save(data: Path, tmp_path: Path) -> None:
    """Every SIGKILL during a save (the out-of-memory killer, a power cut) left the state's
    temporary file beside it, tens of MB for a real model, and none was ever removed: a run
    killed and resumed again and again piled them up. The next save removes those of gone
    processes, and no other file."""
    out = tmp_path / "t.safetensors"
    done = _killed_mid_save("SIGKILL", data, out, 4)
    assert done.returncode == -9
    (left,) = tmp_path.glob(".t.state.safetensors.*.tmp")
    old = time.time() - 600
    os.utime(left, (old, old))  # what the next day's resume finds
    host = left.name.split("@")[1].rsplit(".", 2)[0]
    live = tmp_path / f".t.state.safetensors.{os.getppid()}@{host}.abcd1234.tmp"  # a write in progress elsewhere
    foreign = tmp_path / ".t.state.safetensors.99999999@another-host.abcd1234.tmp"
    users = tmp_path / ".t.state.safetensors.my-notes.tmp"
    for f in (live, foreign, users):
        f.write_bytes(b"keep")
        os.utime(f, (old, old))
    assert cli(["train", "tokenizer", "--data", str(data), "--out", str(out), "--steps", "2", "--resume", *FAST]) == 0
    assert not left.exists() and all(f.read_bytes() == b"keep" for f in (live, foreign, users))
    assert load_model(out).info["steps"] == 2


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun"
)
def test_a_second_run_into_the_same_checkpoint_is_refused_while_the_first_trains(data: Path, tmp_path: Path, capsys) -> None:
    """A `nohup ... --resume` started twice trained the same --out in two processes, each saving
    over the other's checkpoint and state. The lock goes with its holder, and its file with a
    run that ends."""
    fcntl = pytest.importorskip("fcntl")  # POSIX: elsewhere training takes no lock
    out = tmp_path / "t.safetensors"
    args = ["train", "tokenizer", "--data", str(data), "--out", str(out), "--steps", "1", *FAST]
    with open(tmp_path / ".t.safetensors.lock", "a+") as held:  # the other run
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        assert cli(args) == 2
        assert "is being trained by another run (process 4242)" in capsys.readouterr().err
        assert not out.exists() and not state_path(out).exists()
    assert cli(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "t.safetensors", "t.state.safetensors"]


def test_two_process_gloo_ddp_smoke_run(data: Path, tokenizer: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ddp.safetensors"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "worldsim", "train", "dynamics", "--data", str(data),
           "--tokenizer", str(tokenizer), "--out", str(out), "--steps", "2", "--context", "4", *FAST]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert load_model(out).info["steps"] == 2
    rows = [r for r in metrics(out) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]  # rank 0 alone writes
    # Each process draws its own --batch windows: one process would resume another run (it was
    # accepted, with half the batch and rank 1's data stream gone).
    kept = out.read_bytes()
    capsys.readouterr()
    assert cli([*cmd[5:], "--steps", "3", "--resume"]) == 2
    assert "processes was 2, now 1" in capsys.readouterr().err and out.read_bytes() == kept


def test_resume_is_exact_when_the_checkpoint_is_a_save_ahead_of_the_state(data: Path, tmp_path: Path) -> None:
    # A kill between the two writes leaves the checkpoint at step 6 and the state at step 3.
    args = ["tokenizer", "--data", str(data), "--ckpt-every", "3", *FAST]
    out = tmp_path / "run" / "t.safetensors"
    assert cli(["train", *args, "--steps", "3", "--out", str(out)]) == 0
    kept = state_path(out).read_bytes()
    assert cli(["train", *args, "--steps", "6", "--out", str(out), "--resume"]) == 0
    state_path(out).write_bytes(kept)  # the step-6 state never made it to disk
    assert cli(["train", *args, "--steps", "12", "--out", str(out), "--resume"]) == 0
    full = tmp_path / "full" / "t.safetensors"
    assert cli(["train", *args, "--steps", "12", "--out", str(full)]) == 0
    a, b = _weights(full), _weights(out)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_settings_and_a_checkpoint_without_its_state(data: Path, tokenizer: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "d.safetensors"
    args = ["train", "dynamics", "--data", str(data), "--tokenizer", str(tokenizer), "--out", str(out), *FAST]
    assert cli([*args, "--steps", "2", "--rollout-share", "0.5"]) == 0
    kept = out.read_bytes()
    capsys.readouterr()
    assert cli([*args, "--steps", "4", "--resume"]) == 2  # --rollout-share forgotten
    assert "rollout_share was 0.5, now None" in capsys.readouterr().err
    other = tmp_path / "other-tok.safetensors"
    other.write_bytes(tokenizer.read_bytes() + b"")  # the same bytes: still the same run
    assert cli([*args[:5], str(other), *args[6:], "--steps", "3", "--rollout-share", "0.5", "--resume"]) == 0
    assert cli([*args, "--steps", "5", "--rollout-share", "0.5", "--lr", "1e-3", "--resume"]) == 2
    assert "lr was 0.0003, now 0.001" in capsys.readouterr().err
    state_path(out).unlink()
    kept = out.read_bytes()
    assert cli([*args, "--steps", "5", "--rollout-share", "0.5", "--resume"]) == 2
    assert "has no training state" in capsys.readouterr().err and out.read_bytes() == kept


def test_without_held_out_episodes_no_validation_is_claimed(tmp_path: Path, capsys) -> None:
    one = toy_recording(tmp_path / "one.wsrec", episodes=1)
    out = tmp_path / "t.safetensors"
    assert cli(["train", "tokenizer", "--data", str(one), "--out", str(out), "--steps", "2", *FAST]) == 0
    captured = capsys.readouterr()
    assert "no held-out episodes" in captured.err and "held-out PSNR None dB" in captured.out
    assert all(r.get("val_loss") is None for r in metrics(out))


def test_a_kill_while_trimming_metrics_leaves_the_log_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a resume the log is rewritten without the lines past the checkpoint; it used to be
    rewritten in place, so a kill during that write lost the whole run's history."""
    from worldsim.train import _trim_metrics

    log = tmp_path / "metrics.jsonl"
    lines = "".join(json.dumps({"kind": "dynamics", "checkpoint": "m.safetensors", "step": s}) + "\n" for s in (10, 20, 30))
    log.write_text(lines)

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # the process dies before the new log is in place

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _trim_metrics(log, "dynamics", "m.safetensors", 20)
    assert log.read_text() == lines and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    monkeypatch.undo()
    _trim_metrics(log, "dynamics", "m.safetensors", 20)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [10, 20]


def test_a_diverged_run_stops_with_one_error_and_keeps_its_last_good_checkpoint(data: Path, tmp_path: Path, capsys) -> None:
    """A learning rate far too high made the loss NaN; the run trained on, wrote NaN weights over
    its last checkpoint (which then would not load) and NaN into metrics.jsonl, and exited 0."""
    out = tmp_path / "t.safetensors"
    args = ["train", "tokenizer", "--data", str(data), "--out", str(out), "--steps", "6", "--ckpt-every", "1", *FAST]
    assert cli([*args, "--lr", "1e30", "--warmup", "0"]) == 2
    err = capsys.readouterr().err
    assert "training diverged at step 2" in err and "stays at step 1" in err and "lower --lr" in err
    assert load_model(out).info["steps"] == 1  # loads: no NaN weights were written
    assert "NaN" not in (tmp_path / "metrics.jsonl").read_text()


def test_an_overwrite_killed_before_its_first_checkpoint_is_not_resumed_as_the_old_run(
    data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--overwrite` left the replaced run's state in place, so a kill before the new run's first
    checkpoint and a `--resume` continued the old run, under the new run's metrics."""
    import worldsim.train as train

    out = tmp_path / "t.safetensors"
    args = ["train", "tokenizer", "--data", str(data), "--out", str(out), "--ckpt-every", "3", *FAST]
    assert cli([*args, "--steps", "3"]) == 0

    def killed(*a: object, **k: object) -> None:
        raise KeyboardInterrupt  # the kill lands as the new run's first save begins

    with monkeypatch.context() as m:
        m.setattr(train, "save_state", killed)
        assert cli([*args, "--steps", "6", "--overwrite"]) == 130
    capsys.readouterr()
    assert cli([*args, "--steps", "6", "--resume"]) == 2
    assert "has no training state" in capsys.readouterr().err
    assert cli([*args, "--steps", "3", "--overwrite"]) == 0
    out.unlink()  # a state without its checkpoint is not trained over without a word either
    assert cli([*args, "--steps", "3"]) == 2
    assert "t.state.safetensors exists" in capsys.readouterr().err


def test_resume_refuses_a_dropped_or_added_init(data: Path, tokenizer: Path, tmp_path: Path, capsys) -> None:
    """--init gives a fine-tune its architecture and defaults (its rollout share, say): a resume
    without it trained the state's weights on as another model, and one that added it to a run
    started without it recorded an init the weights never came from."""
    base = tmp_path / "base.safetensors"
    dyn = ["train", "dynamics", "--data", str(data), "--tokenizer", str(tokenizer), "--context", "4", *FAST]
    assert cli([*dyn, "--out", str(base), "--steps", "1", "--rollout-share", "0.5"]) == 0
    ft = tmp_path / "ft.safetensors"
    assert cli([*dyn, "--out", str(ft), "--steps", "1", "--init", str(base)]) == 0
    kept = ft.read_bytes()
    capsys.readouterr()
    assert cli([*dyn, "--out", str(ft), "--steps", "2", "--resume"]) == 2
    assert "init was 'base.safetensors', now None" in capsys.readouterr().err and ft.read_bytes() == kept
    assert cli([*dyn, "--out", str(ft), "--steps", "2", "--resume", "--init", str(base)]) == 0
    assert load_model(ft).info["init"] == str(base)
    tok = tmp_path / "tok.safetensors"
    args = ["train", "tokenizer", "--data", str(data), "--out", str(tok), *FAST]
    assert cli([*args, "--steps", "1"]) == 0
    capsys.readouterr()
    assert cli([*args, "--steps", "2", "--resume", "--init", str(tokenizer)]) == 2
    assert "init was None, now 'tok.safetensors'" in capsys.readouterr().err


def test_a_tokenizer_of_other_frames_than_the_data_is_named(data: Path, tokenizer: Path, tmp_path: Path, capsys) -> None:
    """A tokenizer trained on 16x16 frames was taken for 32x16 recordings without a word."""
    tall = toy_recording(tmp_path / "tall.wsrec", height=32)
    args = ["train", "dynamics", "--tokenizer", str(tokenizer), "--context", "4", "--steps", "1", *FAST]
    assert cli([*args, "--data", str(tall), "--out", str(tmp_path / "tall.safetensors")]) == 0
    assert f"--tokenizer {tokenizer} was trained on 16x16 frames, not 32x16" in capsys.readouterr().err
    assert cli([*args, "--data", str(data), "--out", str(tmp_path / "same.safetensors")]) == 0
    assert "was trained on" not in capsys.readouterr().err


def test_too_little_data_names_the_flag_that_matters(tokenizer: Path, tmp_path: Path, capsys) -> None:
    """The tokenizer's error told its user to "shorten --context", a flag it does not have."""
    spec = ActionSpec("Discrete", (3,))
    empty = tmp_path / "empty.wsrec"
    with RecordingWriter(empty, env_id="Toy-v0", env_kwargs={}, observation_shape=(16, 16, 3), action_space=spec,
                         agent="random", seed=0):  # fmt: skip
        pass
    assert cli(["train", "tokenizer", "--data", str(empty), "--out", str(tmp_path / "t.safetensors"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "holds a frame" in err and "--context" not in err
    short = toy_recording(tmp_path / "short.wsrec", episodes=3, steps=2)
    assert cli(["train", "dynamics", "--data", str(short), "--tokenizer", str(tokenizer), "--context", "4",
                "--out", str(tmp_path / "d.safetensors"), *FAST]) == 2  # fmt: skip
    assert "has 5 frames (--context 4, plus the frame before them)" in capsys.readouterr().err


def test_threads_sets_the_training_processes_threads(data: Path, tmp_path: Path, capsys) -> None:
    """`train tokenizer --threads N`, as bench train and train recipe take it (it was a usage error)."""
    before = torch.get_num_threads()
    try:
        out = tmp_path / "t.safetensors"
        assert cli(["train", "tokenizer", "--data", str(data), "--out", str(out), "--steps", "1", "--threads", "1", *FAST]) == 0
        assert torch.get_num_threads() == 1 and out.is_file()
        assert cli(["train", "dynamics", "--data", str(data), "--tokenizer", str(out), "--out", str(tmp_path / "d"),
                    "--threads", "0", *FAST]) == 2  # fmt: skip
        assert "--threads must be at least 1, got 0" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_a_run_waits_for_another_encoding_the_same_codes_and_reads_them_instead(tmp_path: Path, monkeypatch) -> None:
    """Runs started together on the same recordings and tokenizer (a sweep whose --out share
    code-cache/) each encoded every frame at once for one cache file. One that finds another
    encoding now waits for it and reads the cache."""
    import threading

    fcntl = pytest.importorskip("fcntl")  # POSIX: elsewhere no lock is taken
    import worldsim.atomic
    from worldsim.data import WindowDataset
    from worldsim.presets import get_preset
    from worldsim.tokenizer import Tokenizer
    from worldsim.train_data import CodeWindows

    monkeypatch.setattr(worldsim.atomic, "LOCK_POLL_SECONDS", 0.05, raising=False)
    torch.manual_seed(0)
    tok = Tokenizer(get_preset("tiny").tokenizer).eval()
    windows = WindowDataset([toy_recording(tmp_path / "toy.msgpack")], 4)
    first = CodeWindows(windows, tok, torch.device("cpu"), tmp_path / "first")  # what the other run writes
    assert first.cache_file is not None
    encoded: list[int] = []
    encode = tok.encode
    monkeypatch.setattr(tok, "encode", lambda frames: encoded.append(len(frames)) or encode(frames))
    later = tmp_path / "later"
    later.mkdir()
    got: list[CodeWindows] = []
    with open(later / f".{first.cache_file.name}.lock", "a+") as held:  # the other run, encoding
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        waiter = threading.Thread(target=lambda: got.append(CodeWindows(windows, tok, torch.device("cpu"), later)))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and not encoded  # waiting, not encoding
        shutil.copy(first.cache_file, later / first.cache_file.name)
    waiter.join(10)
    assert got and not encoded
    assert np.array_equal(got[0].codes, first.codes) and np.array_equal(got[0].actions, first.actions)


@pytest.mark.parametrize("full", ["state", "log"])
def test_a_save_onto_a_full_disk_stops_naming_the_file_and_resumes_once_there_is_room(
    data: Path, tmp_path: Path, full_disk, capsys, full: str
) -> None:
    """A full disk ended training with safetensors' traceback (the state) or with "No space
    left on device" and no file named (metrics.jsonl); the checkpoint before it must stay, and
    --resume must carry on from it."""
    out = tmp_path / "tok.safetensors"
    args = ["train", "tokenizer", "--data", str(data), "--out", str(out), "--ckpt-every", "1", *FAST]
    assert cli([*args, "--steps", "2"]) == 0
    log = out.parent / "metrics.jsonl"
    room = 100_000 if full == "state" else log.stat().st_size + 20  # the state is ~800 kB, a log line ~300 B
    capsys.readouterr()
    with full_disk(room):
        assert cli([*args, "--steps", "4", "--resume"]) == 2
    err = capsys.readouterr().err
    named = state_path(out) if full == "state" else log
    assert f"error: File too large: '{named}'" in err and "Traceback" not in err
    assert load_model(out).info["steps"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", out.name, state_path(out).name]
    assert cli([*args, "--steps", "4", "--resume"]) == 0
    assert load_model(out).info["steps"] == 4
    assert [r["step"] for r in metrics(out) if "loss" in r] == [1, 2, 3, 4]


def test_a_code_cache_the_full_disk_refuses_is_skipped_and_the_run_goes_on(
    data: Path, tokenizer: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """safetensors raises its own SafetensorError for a write the disk refused, which the code
    cache's fall-back (go on without the file) did not catch: the run died with a traceback."""
    from safetensors import SafetensorError

    import worldsim.checkpoint

    real = worldsim.checkpoint.save_file

    def save_file(tensors, path, metadata=None):
        if ".codes-" in Path(path).name:  # the cache's temporary file: the disk is full
            Path(path).write_bytes(b"half")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(worldsim.checkpoint, "save_file", save_file)
    cache, out = tmp_path / "codes", tmp_path / "dyn.safetensors"
    assert cli(["train", "dynamics", "--data", str(data), "--tokenizer", str(tokenizer), "--out", str(out), "--steps", "1",
                "--context", "4", "--code-cache", str(cache), *FAST]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "could not write the code cache" in err and "(No space left on device)" in err and "Traceback" not in err
    assert load_model(out).info["steps"] == 1
    assert [p for p in cache.iterdir() if not p.name.endswith(".lock")] == []
