"""`worldsim record` and `worldsim replay` on an env WorldSim has never seen."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import imageio.v2 as iio
import numpy as np
import pytest

from agents.random_agent import RandomAgent
from agents.record import RecordConfig, build_parser, record
from tests.worldsim.toy_env import FULL_ID, ToyImageEnv
from worldsim.cli import main as cli
from worldsim.data import WindowDataset
from worldsim.recording import RecordingReader, RecordingTruncatedWarning
from worldsim.shard_index import load_index


def _episodes(path):
    eps: dict[int, list] = {}
    for rec in RecordingReader(path):
        eps.setdefault(rec.episode, []).append(rec)
    return eps


def test_recorded_file_replays_exactly_in_a_fresh_env(tmp_path):
    out = tmp_path / "toy.msgpack"
    assert (
        cli(
            [
                "record",
                "--env",
                FULL_ID,
                "--steps",
                "150",
                "--out",
                str(out),
                "--seed",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    eps = _episodes(out)
    assert sum(len(r) - 1 for r in eps.values()) == 150
    env = ToyImageEnv()
    for recs in eps.values():
        assert recs[0].kind == "reset" and recs[0].seed is not None
        obs, _ = env.reset(seed=recs[0].seed)
        np.testing.assert_array_equal(recs[0].image(), obs)
        for rec in recs[1:]:
            obs, reward, term, trunc, _ = env.step(rec.action)
            np.testing.assert_array_equal(rec.image(), obs)
            assert (rec.reward, rec.terminated, rec.truncated) == (reward, term, trunc)
    coverage = json.loads((tmp_path / "toy.coverage.json").read_text())
    assert coverage["steps"] == 150 and coverage["episodes"] == len(eps)
    assert sum(coverage["counts"]["a0"]) == 150


def test_vector_env_records_whole_episodes_in_shards(tmp_path):
    out = tmp_path / "vec"
    cfg = RecordConfig(
        env=FULL_ID, steps=300, out=str(out), num_envs=3, workers=1, shard_steps=64,
        env_kwargs={"discrete": True, "end_prob": 0.1},
    )  # fmt: skip
    result = record(cfg, progress_bar=False)
    assert result.steps == 300 and result.workers == 1
    assert len(load_index(out)) == len(list(out.glob("*.msgpack"))) >= 5
    eps = _episodes(out)
    for recs in eps.values():
        assert [r.t for r in recs] == list(range(len(recs)))
        assert recs[0].kind == "reset"
        ends = [r.terminated or r.truncated for r in recs[1:]]
        assert not any(ends[:-1])  # an episode ends only at its last step
    finished = [recs for recs in eps.values() if recs[-1].terminated or recs[-1].truncated]
    assert len(finished) >= 3
    ds = WindowDataset([out], 4)
    assert ds.action_spec.kind == "Discrete" and ds[0].actions.shape == (3, 1)


def test_parallel_workers_merge_index_and_coverage(tmp_path):
    out = tmp_path / "par"
    cfg = RecordConfig(env=FULL_ID, steps=400, out=str(out), num_envs=4, workers=2, shard_steps=100)
    result = record(cfg, progress_bar=False)
    assert result.workers == 2 and result.steps == 400
    index = load_index(out)
    assert sorted(index) == sorted(p.name for p in out.glob("*.msgpack"))
    assert {name[:9] for name in index} == {"shard-00-", "shard-01-"}
    eps = _episodes(out)
    assert sum(len(r) - 1 for r in eps.values()) == 400
    assert {e % 2 for e in eps} == {0, 1}  # both workers' episodes, numbered apart
    assert json.loads((out / "coverage.json").read_text())["steps"] == 400


def test_a_worker_hands_its_index_to_the_parent_in_about_8_bytes_a_record(tmp_path):
    """A worker's result crosses to the parent pickled, and the parent holds every worker's
    until the index is written: as JSON lists of Python ints that was 41 bytes a record (0.4 GB
    for a 10-million-step run), as the writer's arrays of offsets it is about 8."""
    import pickle
    import tracemalloc

    from agents.rollout import record_part

    cfg = RecordConfig(env=FULL_ID, steps=4000, out=str(tmp_path / "part"), num_envs=4, shard_steps=1000,
                       env_kwargs={"max_len": 10**6, "end_prob": 0.0})  # long episodes, as BlockWorld has
    (tmp_path / "part").mkdir()
    result = record_part(cfg, 0, 1, cfg.steps, lambda k: None)
    held = []
    for payload in (result, {**result, "files": []}):  # the index's share: with it less without it
        sent = pickle.dumps(payload)  # as the results queue sends it
        tracemalloc.start()
        try:
            got = pickle.loads(sent)
            held.append(tracemalloc.get_traced_memory()[0])
        finally:
            tracemalloc.stop()
    got = pickle.loads(pickle.dumps(result))
    per_record = (held[0] - held[1]) / got["records"]
    assert got["records"] >= 4000 and per_record < 16, f"{per_record:.1f} bytes a record"
    index = {f.file: f for f in got["files"]}
    assert sorted(index) == sorted(p.name for p in (tmp_path / "part").glob("*.msgpack"))
    assert sum(f.records for f in index.values()) == got["records"]


def test_uneven_workers_give_every_env_its_own_reset_seed(tmp_path):
    """Five envs over two workers (three and two) start with seeds 7..11, as one worker's would,
    not twice with the same seed; three over two (two, and one env alone) with 7..9."""
    for n, seeds in ((5, [7, 8, 9, 10, 11]), (3, [7, 8, 9])):
        out = tmp_path / f"uneven-{n}"
        record(RecordConfig(env=FULL_ID, steps=10 * n, out=str(out), num_envs=n, workers=2, shard_steps=100, seed=7),
               progress_bar=False)  # fmt: skip
        first = sorted((r.episode, r.seed) for r in RecordingReader(out) if r.kind == "reset")[:n]
        assert sorted(s for _, s in first) == seeds


def test_uneven_workers_give_every_env_the_same_share_of_steps(tmp_path):
    """Three endless envs over two workers (two, and one alone) record 200 steps each, as one
    worker would, not 150, 150 and 300."""
    out = tmp_path / "shares"
    cfg = RecordConfig(
        env=FULL_ID, steps=600, out=str(out), num_envs=3, workers=2, shard_steps=1000,
        env_kwargs={"end_prob": 0.0, "max_len": 10_000},
    )  # fmt: skip
    assert record(cfg, progress_bar=False).steps == 600
    steps = [len(recs) - 1 for _, recs in sorted(_episodes(out).items())]
    assert steps == [200, 200, 200]


def test_single_env_episodes_never_reset_into_the_evaluations_held_out_worlds(tmp_path):
    """Episode seeds of a single-env run are hashes, but never the eval's or the IDM's: episode
    16,745 of --seed 0 used to reset with seed 1,008,584, a held-out world."""
    from agents.rollout import episode_seed
    from worldsim.reference import HELDOUT_SEED_BASE, IDM_SEED_BASE

    seeds = np.array([episode_seed(0, e) for e in range(20_000)])
    reserved = (seeds >= HELDOUT_SEED_BASE) & (seeds < IDM_SEED_BASE + 10**6)
    assert not reserved.any() and seeds.max() < 2**31
    out = tmp_path / "short.msgpack"
    record(RecordConfig(env=FULL_ID, steps=12, out=str(out), env_kwargs={"max_len": 3}), progress_bar=False)
    resets = [r.seed for r in RecordingReader(out) if r.kind == "reset"]
    assert len(resets) >= 4 and resets == [episode_seed(0, e) for e in range(len(resets))]


def test_a_seed_that_opens_envs_in_the_held_out_worlds_is_warned_about(tmp_path, capsys):
    """``--seed 1000000 --num-envs 2`` recorded the eval's first two held-out worlds without
    a word, so a model trained on it would be measured on worlds it had seen."""
    base = ["record", "--env", FULL_ID, "--steps", "4", "--num-envs", "2", "--workers", "1", "--quiet",
            "--env-kwargs", '{"max_len": 3}']  # fmt: skip
    assert cli([*base, "--seed", "999999", "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "warning: --seed 999999 opens 2 env(s) with reset seeds 999999..1000000, inside [1000000, 1100000)" in err
    assert cli([*base, "--seed", "999998", "--out", str(tmp_path / "b")]) == 0
    assert "held" not in capsys.readouterr().err  # seeds 999998 and 999999: no held-out world
    assert cli(["record", "--env", FULL_ID, "--steps", "4", "--seed", "1000000", "--quiet", "--out", str(tmp_path / "c.msgpack")]) == 0
    assert "held" not in capsys.readouterr().err  # a lone env's seeds are hashes above the range


def test_record_refuses_to_overwrite_and_reports_user_errors_in_one_line(tmp_path, capsys):
    out = tmp_path / "x.msgpack"
    base = ["record", "--env", FULL_ID, "--steps", "5", "--out", str(out), "--quiet"]
    assert cli(base) == 0
    capsys.readouterr()
    assert cli(base) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert cli([*base, "--overwrite"]) == 0
    capsys.readouterr()
    kept = out.read_bytes()
    assert cli([*base[:-1], "--agent", "explorer", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "explorer drives worldsim/BlockWorld-v0 only" in err and "Traceback" not in err
    assert out.read_bytes() == kept  # a run that cannot start leaves the recording it would replace
    for seed in ("-1", str(2**64)):  # seeds numpy or the recording cannot take
        assert cli([*base, "--seed", seed, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "--seed must be between 0 and" in err and "Traceback" not in err
        assert out.read_bytes() == kept
    assert (
        cli(["record", "--env", "CartPole-v1", "--steps", "5", "--out", str(tmp_path / "c")]) == 2
    )
    assert "observations must be uint8 images" in capsys.readouterr().err
    # a path the file system refuses: one line naming it, no traceback
    assert cli([*base[:5], "--out", str(out / "inside.msgpack"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("worldsim record: error: ") and str(out) in err and "Traceback" not in err


def test_overwrite_replaces_a_recording_but_never_deletes_a_foreign_msgpack_file(tmp_path, capsys):
    out = tmp_path / "runs"
    base = ["record", "--env", FULL_ID, "--steps", "5", "--out", str(out), "--quiet", "--shard-steps", "4"]
    assert cli(base) == 0
    assert cli([*base, "--overwrite"]) == 0  # a recording is replaced
    capsys.readouterr()
    mine = out / "notes.msgpack"  # not a recording: a reader would fail on it as a shard
    mine.write_bytes(b"\x81\xa1a\x01")
    for args in (base, [*base, "--overwrite"]):
        assert cli(args) == 2
        err = capsys.readouterr().err
        assert "notes.msgpack, not a WorldSim recording" in err and "Traceback" not in err
        assert mine.read_bytes() == b"\x81\xa1a\x01"
    assert len(list(RecordingReader(out / "shard-00000.msgpack"))) > 0  # nor the recording
    single = tmp_path / "notes.msgpack"  # nor when --out names the file itself
    single.write_bytes(b"\x81\xa1a\x01")
    assert cli(["record", "--env", FULL_ID, "--steps", "5", "--out", str(single), "--quiet", "--overwrite"]) == 2
    assert "not a WorldSim recording" in capsys.readouterr().err
    assert single.read_bytes() == b"\x81\xa1a\x01"


def test_a_second_run_into_the_same_out_is_refused_while_the_first_records(tmp_path, capsys):
    """Two runs into one --out (a sweep started with the same folder) both exited 0, each
    claiming its steps, and left shards of both runs (or --overwrite deleted the running one's
    shards under it). The run that finds --out locked touches nothing there."""
    fcntl = pytest.importorskip("fcntl")  # POSIX: elsewhere recording takes no lock
    out = tmp_path / "runs"
    base = ["record", "--env", FULL_ID, "--steps", "5", "--out", str(out), "--quiet", "--shard-steps", "4"]
    assert cli(base) == 0
    kept = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    with open(tmp_path / ".runs.lock", "a+") as held:  # the other run
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\nworldsim record\n")  # as output_lock writes it
        held.flush()
        for args in ([*base, "--overwrite"], [*base[:6], str(tmp_path / "." / "runs"), *base[7:], "--overwrite"],
                     [*base[:6], str(out), *base[7:], "--overwrite", "--num-envs", "2", "--workers", "2"]):  # fmt: skip
            assert cli(args) == 2
            err = capsys.readouterr().err
            assert "runs is being written by another `worldsim record` (process 4242)" in err and "Traceback" not in err
            assert {p.name: p.read_bytes() for p in out.iterdir()} == kept
    assert cli([*base, "--overwrite"]) == 0  # the lock went with its holder, and its file with the run that ends
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_a_run_whose_lock_file_cannot_be_made_records_unlocked_with_a_note(tmp_path, capsys, monkeypatch):
    """`--out .` puts the lock file in the parent folder, which is often not writable (a home
    folder's parent, a container's /): the run failed there with "Permission denied" on a file
    it was never asked to write. It now says that it runs unlocked, and records."""
    pytest.importorskip("fcntl")
    import contextlib

    import worldsim.atomic

    real = worldsim.atomic.exclusive_lock

    def read_only_parent(path, note, remove=False, label=""):
        if path.name == ".here.lock":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, note, remove, label)

    monkeypatch.setattr(worldsim.atomic, "exclusive_lock", read_only_parent)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert cli(["record", "--env", FULL_ID, "--steps", "5", "--out", ".", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"worldsim record: note: cannot make the lock file {tmp_path / '.here.lock'} (Permission denied)" in err
    assert "nothing stops a second run writing" in err
    assert len(WindowDataset([here], 2)) > 0 and sorted(p.name for p in tmp_path.iterdir()) == ["here"]
    with worldsim.atomic.output_lock("/", "eval"):  # a root has no folder beside it: it ran into a ValueError
        assert "/ has no folder beside it for a lock file" in capsys.readouterr().err
    with contextlib.suppress(FileNotFoundError), worldsim.atomic.output_lock(tmp_path / "x", "eval"):
        raise FileNotFoundError("from the body")  # an OSError of the command's own is not a lock note
    assert "note" not in capsys.readouterr().err


def test_a_run_on_a_file_system_without_locks_says_so_and_leaves_no_lock_file(tmp_path, capsys, monkeypatch):
    """NFS without its lock daemon refuses locks ("No locks available"): the run records with a
    note, and removes its lock file as a locked run does, where it used to leave one beside
    every --out it wrote."""
    import errno

    fcntl = pytest.importorskip("fcntl")

    def no_locks(f, how):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "runs"
    assert cli(["record", "--env", FULL_ID, "--steps", "5", "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"note: {tmp_path} takes no file locks (No locks available), so nothing stops a second run" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_overwrite_removes_the_old_runs_coverage_before_recording(tmp_path, capsys, monkeypatch):
    """A run that replaces run.msgpack and then stops short must not leave run.coverage.json
    describing the recording it replaced."""
    import agents.record
    from worldsim.errors import WorldSimError

    out = tmp_path / "run.msgpack"
    base = ["record", "--env", FULL_ID, "--steps", "5", "--out", str(out), "--quiet"]
    assert cli(base) == 0
    coverage = tmp_path / "run.coverage.json"
    assert coverage.is_file()

    def stopped(*args, **kwargs):
        raise WorldSimError("stopped")

    monkeypatch.setattr(agents.record, "record_part", stopped)
    assert cli([*base, "--overwrite"]) == 2
    assert not coverage.exists()


def test_env_kwargs_no_reader_accepts_fail_before_the_old_recording_is_replaced(tmp_path, capsys):
    """--env-kwargs go into every header: a map a reader refuses (over 4,096 keys) must fail
    before recording, and before --overwrite removes the recording it would replace."""
    if "KwargsToy-v0" not in gym.registry:
        gym.register("KwargsToy-v0", entry_point=lambda layout=None, **kw: ToyImageEnv(**kw))
    out = tmp_path / "x.msgpack"
    base = ["record", "--env", "KwargsToy-v0", "--steps", "5", "--out", str(out), "--quiet"]
    assert cli(base) == 0
    kept = out.read_bytes()
    capsys.readouterr()
    layout = json.dumps({"layout": {f"k{i}": i for i in range(5000)}})
    assert cli([*base, "--overwrite", "--env-kwargs", layout]) == 2
    err = capsys.readouterr().err
    assert "a reader would refuse --env-kwargs" in err and "max_map_len" in err and "Traceback" not in err
    assert out.read_bytes() == kept


def test_random_agent_is_uniform_and_seeded():
    space = gym.spaces.MultiDiscrete([3, 2, 10])
    a = RandomAgent(space, np.random.default_rng(1))
    acts = np.stack([a.act(None, {}) for _ in range(3000)])
    b = RandomAgent(space, np.random.default_rng(1))
    assert np.array_equal(acts[:10], np.stack([b.act(None, {}) for _ in range(10)]))
    for c, n in enumerate(space.nvec):
        share = np.bincount(acts[:, c], minlength=n) / len(acts)
        assert np.allclose(share, 1 / n, atol=0.04)


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_replay_writes_a_video_of_every_frame(tmp_path, suffix, capsys):
    rec = tmp_path / "toy.msgpack"
    assert cli(["record", "--env", FULL_ID, "--steps", "40", "--out", str(rec), "--quiet"]) == 0
    frames = sum(1 for _ in RecordingReader(rec))
    video = tmp_path / f"toy{suffix}"
    assert cli(["replay", str(rec), "--out", str(video), "--overlay", "--scale", "4"]) == 0
    got = iio.mimread(video)
    assert len(got) == frames
    assert got[0].shape[:2] == (12 * 4 + 24, 16 * 4)  # frame scaled 4x, two overlay lines
    assert cli(["replay", str(rec), "--out", str(tmp_path / "x.avi")]) == 2
    assert "must end in .mp4 or .gif" in capsys.readouterr().err


def test_replaying_one_episode_reads_only_its_records(tmp_path, monkeypatch):
    """`worldsim replay --episode E` read every record of the recording to skip the other
    episodes' (195,410 reads to write 20 frames of a late episode of a 200,000-record folder)."""
    from tests.worldsim.toy_env import record_toy
    from worldsim.video import replay

    folder = tmp_path / "shards"
    episodes = record_toy(folder, 14, shard_records=16, interleave=3, seed=5, max_len=25)
    reads = []
    real = WindowDataset.record
    monkeypatch.setattr(WindowDataset, "record", lambda self, r: reads.append(r) or real(self, r))
    for e, most in ((13, None), (12, 3)):
        reads.clear()
        video = tmp_path / f"ep{e}.gif"
        n = replay(folder, video, episode=e, scale=1, max_frames=most)
        want = len(episodes[e]["frames"]) if most is None else most
        assert n == len(reads) == want
        got = np.stack(iio.mimread(video))[..., :3]
        np.testing.assert_array_equal(got, np.stack(episodes[e]["frames"][:want]))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_recording_onto_a_full_disk_fails_naming_the_file_and_keeps_every_whole_record(tmp_path, workers, full_disk, capsys):
    """A full disk said only "File too large" (or "No space left on device"), with no file
    named; with --workers 2 it was a worker's traceback; and the cut record stayed at the end
    of the file, for every reader to warn about."""
    out = tmp_path / ("rec.msgpack" if workers == 1 else "rec")
    args = ["record", "--env", FULL_ID, "--steps", "2000", "--out", str(out), "--quiet", "--num-envs", str(workers),
            "--workers", str(workers)]  # fmt: skip
    with full_disk(20_000):
        assert cli(args) == 2
    err = capsys.readouterr().err
    assert "File too large: '" in err and str(out) in err and "Traceback" not in err
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cut back to its last whole record: nothing for a reader to warn about
        kept = list(RecordingReader(out))
    assert len(kept) > 50
    files = [out] if workers == 1 else sorted(out.glob("*.msgpack"))
    assert all(f.stat().st_size < 20_000 for f in files)


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_a_replay_onto_a_full_disk_fails_naming_the_video_and_keeps_the_earlier_one(tmp_path, suffix, full_disk, capsys, monkeypatch):
    """imageio never reads ffmpeg's exit status: an ffmpeg that could not write (a full disk) left
    a cut-short MP4 no player opens, which replaced the earlier video, and replay said it wrote
    every frame and exited 0. A GIF's error named no file, and imageio's writer, deleted, tried
    again and printed tracebacks after it."""
    import gc
    import sys

    unraisable: list = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    rec = tmp_path / "toy.msgpack"
    assert cli(["record", "--env", FULL_ID, "--steps", "40", "--out", str(rec), "--quiet"]) == 0
    video = tmp_path / f"toy{suffix}"
    assert cli(["replay", str(rec), "--out", str(video)]) == 0
    earlier = video.read_bytes()
    capsys.readouterr()
    with full_disk(2000):
        assert cli(["replay", str(rec), "--out", str(video)]) == 2
    err = capsys.readouterr().err
    assert str(video) in err and "wrote" not in err
    assert video.read_bytes() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["toy.msgpack", "toy.coverage.json", video.name])
    gc.collect()
    assert unraisable == []


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_an_interrupted_replay_leaves_the_earlier_video_and_no_partial_one(tmp_path, suffix, monkeypatch, capsys):
    """Ctrl-C during a replay left a cut-short video at --out (with ffmpeg stopped by the same
    Ctrl-C, an MP4 no player opens), in place of the whole one an earlier run had written."""
    import worldsim.video

    rec = tmp_path / "toy.msgpack"
    assert cli(["record", "--env", FULL_ID, "--steps", "20", "--out", str(rec), "--quiet"]) == 0
    video = tmp_path / f"toy{suffix}"
    assert cli(["replay", str(rec), "--out", str(video), "--overlay"]) == 0
    whole = video.read_bytes()
    real, shown = worldsim.video.overlay, []

    def overlay(*a, **k):
        shown.append(1)
        if len(shown) == 5:
            raise KeyboardInterrupt  # Ctrl-C at the fifth frame
        return real(*a, **k)

    monkeypatch.setattr(worldsim.video, "overlay", overlay)
    assert cli(["replay", str(rec), "--out", str(video), "--overlay", "--scale", "2"]) == 130
    assert "worldsim replay: interrupted" in capsys.readouterr().err
    assert video.read_bytes() == whole and len(iio.mimread(video)) == sum(1 for _ in RecordingReader(rec))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["toy.coverage.json", rec.name, video.name])


@pytest.mark.parametrize("mode", ["NextStep", "SameStep", "Disabled"])
def test_every_vector_autoreset_mode_records_the_frames_the_env_returned(tmp_path, mode):
    from gymnasium.vector import AutoresetMode

    from agents.rollout import _Rollout
    from worldsim.registration import resolve_env_id

    env = gym.make_vec(
        resolve_env_id(FULL_ID), num_envs=3, vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode(mode)}, end_prob=0.15,
    )  # fmt: skip
    out = tmp_path / "modes"
    cfg = RecordConfig(env=FULL_ID, steps=200, out=str(out), num_envs=3, shard_steps=1000)
    result = _Rollout(env, 3, cfg, 0, 1).run(200, lambda k: None)
    env.close()
    assert result["steps"] == 200
    eps = _episodes(out)
    assert sum(r[-1].terminated or r[-1].truncated for r in eps.values()) >= 5
    for recs in eps.values():
        assert [r.t for r in recs] == list(range(len(recs)))
        # The toy env writes its step counter into pixel (0, 0): a reset frame in place of
        # an episode's final frame would show 0 here.
        assert [int(r.image()[0, 0, 0]) for r in recs] == [r.t for r in recs]


def test_bench_record_reports_rates_sizes_and_codecs(tmp_path, capsys):
    out = tmp_path / "new folder" / "bench.json"  # made, as every --out's folder is
    argv = ["bench", "record", "--env", FULL_ID, "--agent", "random", "--steps", "60",
            "--num-envs", "2", "--size", "16", "--window", "4", "--batch", "2",
            "--read-seconds", "0.2", "--json", str(out)]  # fmt: skip
    assert cli(argv) == 0
    text = capsys.readouterr().out
    assert "steps/s wall clock" in text and "bytes/frame" in text and "1M steps at" in text
    figures = json.loads(out.read_text())
    assert figures["1 process, 1 env"]["steps_per_s"] > 0
    assert figures["window_reading"]["frames_per_s"] > 0
    assert set(figures["cpu_ms_per_step"]) == {"env_ms", "agent_ms", "writer_ms"}
    assert len(figures["codecs"]) == 3


def test_coverage_reports_how_much_each_action_changes_the_frame(tmp_path):
    out = tmp_path / "cov.msgpack"
    kwargs = {"end_prob": 0.0, "discrete": True}
    cfg = RecordConfig(env=FULL_ID, steps=400, out=str(out), env_kwargs=kwargs)
    cov = record(cfg, progress_bar=False).coverage.to_json()
    # Toy env, Discrete(5): action 0 stays put (only the step counter pixel changes), 1-4 move.
    change = cov["components"]["a0"]["mean_frame_change"]
    assert cov["idle_frame_change"] == change[0]
    assert min(change[1:]) > 2 * change[0]


def _children(pid: int) -> list[int]:
    import os

    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out

def _wait_for_group_end(pgid: int, seconds: float, failure: str) -> None:
    """Wait until no process of group ``pgid`` is left (the workers share their parent's
    group); kill the group and fail with ``failure`` if some outlive ``seconds``."""
    import os
    import signal
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)
    pytest.fail(failure)



def test_workers_whose_parent_dies_while_they_start_do_not_record(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "orphaned"
    proc = subprocess.Popen(
        [sys.executable, "-m", "worldsim", "record", "--env", "worldsim/BlockWorld-v0", "--steps", "200000",
         "--num-envs", "2", "--workers", "2", "--out", str(out), "--quiet", "--width", "16", "--height", "16"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the recording ended before its workers started"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    _wait_for_group_end(proc.pid, 60, "workers orphaned while starting went on recording")


def test_vector_only_env_arguments_pass_the_check_before_recording(tmp_path):
    out = tmp_path / "v"
    assert cli(["record", "--env", "worldsim/BlockWorld-v0", "--steps", "8", "--num-envs", "2", "--workers", "1",
                "--width", "16", "--height", "16", "--env-kwargs", '{"render_threads": 1}', "--out", str(out),
                "--quiet"]) == 0  # fmt: skip


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_killing_a_parallel_recording_stops_its_workers_and_keeps_what_they_wrote(tmp_path, how):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "worldsim", "record", "--env", "worldsim/BlockWorld-v0", "--agent", "explorer",
         "--steps", "200000", "--num-envs", "2", "--workers", "2", "--shard-steps", "50", "--out", str(out),
         "--quiet", "--width", "16", "--height", "16"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while len(list(out.glob("shard-01-*.msgpack"))) < 2 and time.monotonic() < deadline:  # both workers write
        time.sleep(0.2)
    assert proc.poll() is None, "the recording ended before it could be killed"
    proc.send_signal(getattr(signal, how))
    proc.wait(timeout=30)
    _wait_for_group_end(proc.pid, 30, f"the workers outlived their parent's {how}")
    assert sum(1 for r in RecordingReader(out) if r.kind == "step") >= 100  # both workers' shards read back


def test_workers_stop_when_their_parent_is_killed_even_where_a_dead_parents_pid_stays(tmp_path):
    """On Windows ``os.getppid()`` keeps returning a dead parent's id. The script below gives
    the spawned workers that behaviour (they run its top level too), and its parent is killed."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = tmp_path / "windows_ppid.py"
    script.write_text(
        "import os, sys\n"
        "_parent = os.getppid()\n"
        "os.getppid = lambda: _parent  # as on Windows: the id outlives the parent\n"
        "from worldsim.cli import main\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "orphans"
    root = Path(__file__).parents[2]
    proc = subprocess.Popen(
        [sys.executable, str(script), "record", "--env", FULL_ID, "--steps", "100000000", "--num-envs", "2",
         "--workers", "2", "--shard-steps", "50", "--out", str(out), "--quiet"],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while len(list(out.glob("shard-01-*.msgpack"))) < 2 and time.monotonic() < deadline:  # both workers write
        time.sleep(0.1)
    assert proc.poll() is None, "the recording ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    _wait_for_group_end(proc.pid, 30, "the workers went on recording after their parent was killed")


def test_a_worker_killed_mid_run_fails_the_run_at_once(tmp_path):
    """A worker killed (say, by the out-of-memory killer) while the others record must stop the
    run with an error then, not after the others have spent hours on their shares."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "one_dead"
    proc = subprocess.Popen(
        [sys.executable, "-m", "worldsim", "record", "--env", FULL_ID, "--steps", "100000000", "--num-envs", "2",
         "--workers", "2", "--shard-steps", "50", "--out", str(out), "--quiet"],
        cwd=Path(__file__).parents[2], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(list(out.glob("shard-01-*.msgpack"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()
        workers = [pid for pid in _children(proc.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2
        os.kill(workers[-1], signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2 and "died without a result" in err and "Traceback" not in err
    # what was written reads: at least worker 1's first shard, closed before its second opened
    # (the other worker may be a shard behind, so more is not certain). A shard killed before
    # its header was whole is skipped with a warning, as documented; the kill's timing decides.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordingTruncatedWarning)
        assert sum(1 for r in RecordingReader(out) if r.kind == "step") >= 50


def test_the_worldsim_script_finds_an_env_module_in_the_current_folder(tmp_path):
    """`--env my_envs:Id` imports ./my_envs.py, as `python -m worldsim` would."""
    import subprocess
    import sys
    from pathlib import Path

    import tests.worldsim.toy_env as toy

    (tmp_path / "my_envs.py").write_text(Path(toy.__file__).read_text().replace('"ToyImage', '"MyToy'))
    script = Path(sys.executable).parent / "worldsim"
    done = subprocess.run([str(script), "record", "--env", "my_envs:MyToy-v0", "--steps", "5", "--out", "x.msgpack",
                           "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    reader = RecordingReader(tmp_path / "x.msgpack")
    assert sum(1 for r in reader if r.kind == "step") == 5
    assert reader.header["env_id"] == "my_envs:MyToy-v0"  # so training, eval and the dream env find it too


def test_the_reference_env_imports_a_module_id_from_the_current_folder(tmp_path, monkeypatch):
    """What `worldsim eval` and the dream env make from a checkpoint's `module:Id`."""
    import sys
    from pathlib import Path

    import tests.worldsim.toy_env as toy
    from worldsim.reference import ReferenceEnv

    (tmp_path / "their_envs.py").write_text(Path(toy.__file__).read_text().replace('"ToyImage', '"TheirToy'))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    ref = ReferenceEnv("their_envs:TheirToy-v0", {})
    script = np.zeros((3, ref.spec.num_components), np.int64)
    assert ref.env_id == "TheirToy-v0" and ref.rollout(0, 3, script=script).frames.shape[0] == 4


class IntKeyInfoEnv(ToyImageEnv):
    """The toy env whose info also has a key no recording can hold (an int) and a nested dict."""

    def step(self, action):
        obs, reward, term, trunc, info = super().step(action)
        return obs, reward, term, trunc, {**info, 7: "seven", "nested": {"a": 1}}


if "IntKeyInfo-v0" not in gym.registry:
    gym.register(id="IntKeyInfo-v0", entry_point=IntKeyInfoEnv)


@pytest.mark.parametrize("num_envs", [1, 2])
def test_info_keys_no_recording_can_hold_are_left_out(tmp_path, num_envs):
    out = tmp_path / ("one.msgpack" if num_envs == 1 else "vec")
    argv = ["record", "--env", "tests.agents.test_record:IntKeyInfo-v0", "--steps", "20", "--out", str(out),
            "--num-envs", str(num_envs), "--workers", "1", "--quiet"]  # fmt: skip
    assert cli(argv) == 0
    steps = [r for r in RecordingReader(out) if r.kind == "step"]
    assert len(steps) == 20 and all(r.extra["info"]["label"] == "go" for r in steps)


class Int32ActionsEnv(ToyImageEnv):
    """The toy env with a ``MultiDiscrete(dtype=int32)`` space that it checks every action against."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.action_space = gym.spaces.MultiDiscrete([3, 3], dtype=np.int32)

    def step(self, action):
        assert self.action_space.contains(action), f"{action!r} is not in {self.action_space}"
        return super().step(action)


if "Int32Actions-v0" not in gym.registry:
    gym.register(id="Int32Actions-v0", entry_point=Int32ActionsEnv)


def test_actions_reach_the_env_in_its_spaces_own_dtype(tmp_path):
    """Recording (single and vector env), the eval's reference env and the dream's engine
    prompt all step an env that asserts ``action_space.contains``."""
    from envs.dream import engine_context
    from worldsim.reference import ReferenceEnv, make_policy

    env_id = "tests.agents.test_record:Int32Actions-v0"
    for num_envs, out in ((1, tmp_path / "one.msgpack"), (2, tmp_path / "vec")):
        argv = ["record", "--env", env_id, "--steps", "20", "--out", str(out), "--num-envs", str(num_envs),
                "--workers", "1", "--quiet"]  # fmt: skip
        assert cli(argv) == 0
        assert sum(r.kind == "step" for r in RecordingReader(out)) == 20
    ref = ReferenceEnv(env_id, {})
    policy, _ = make_policy(ref.env_id, ref.spec, np.random.default_rng(0))
    assert ref.rollout(0, 10, policy).actions.shape == (10, 2)
    frames, _ = engine_context(gym.make("Int32Actions-v0"), 0, 4)
    assert len(frames) >= 2


def test_bench_record_steps_an_env_in_its_spaces_own_dtype(tmp_path, capsys):
    """The bench's split of a step's time steps the env itself: with the action the env's
    space takes, not the agent's int64 vector."""
    argv = ["bench", "record", "--env", "tests.agents.test_record:Int32Actions-v0", "--agent", "random",
            "--steps", "30", "--num-envs", "1", "--size", "16", "--window", "2", "--batch", "1",
            "--read-seconds", "0.1"]  # fmt: skip
    assert cli(argv) == 0
    assert "CPU time per step in one process" in capsys.readouterr().out


class NamedActionsEnv(ToyImageEnv):
    """The toy env naming its action components, as the eval and the replay overlay read them."""

    action_names = ("dy", "dx")


if "NamedActions-v0" not in gym.registry:
    gym.register(id="NamedActions-v0", entry_point=NamedActionsEnv)


@pytest.mark.parametrize("num_envs", [1, 2])
def test_an_envs_action_names_reach_the_header_and_coverage_from_a_vector_env_too(tmp_path, num_envs):
    out = tmp_path / "named"
    cfg = RecordConfig(env="tests.agents.test_record:NamedActions-v0", steps=10, out=str(out), num_envs=num_envs)
    record(cfg, progress_bar=False)
    assert RecordingReader(out).header["action_names"] == ["dy", "dx"]
    assert list(json.loads((out / "coverage.json").read_text())["components"]) == ["dy", "dx"]


class FixedSizeEnv(gym.Env):
    """An 8x8 env that takes no size argument and checks its ``Discrete`` actions."""

    metadata = {"render_modes": [], "render_fps": 20}
    observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros((8, 8, 3), np.uint8), {}

    def step(self, action):
        assert self.action_space.contains(action), f"{action!r} is not in {self.action_space}"
        return np.full((8, 8, 3), 50 * action, np.uint8), 0.0, False, False, {}


if "FixedSize-v0" not in gym.registry:
    gym.register(id="FixedSize-v0", entry_point=FixedSizeEnv)


def test_bench_record_runs_an_env_of_its_own_frame_size(tmp_path, capsys):
    """Without --size the bench passes no size to the env, and its time split steps it with
    an int, as a ``Discrete`` env takes."""
    out = tmp_path / "bench.json"
    argv = ["bench", "record", "--env", "tests.agents.test_record:FixedSize-v0", "--agent", "random",
            "--steps", "30", "--num-envs", "1", "--window", "2", "--batch", "1", "--read-seconds", "0.1",
            "--json", str(out)]  # fmt: skip
    assert cli(argv) == 0
    assert json.loads(out.read_text())["frame_shape"] == [8, 8, 3]


def test_bench_record_runs_where_the_os_reports_no_load_average(tmp_path, capsys, monkeypatch):
    monkeypatch.delattr("os.getloadavg")  # Windows has none
    out = tmp_path / "bench.json"
    argv = ["bench", "record", "--env", FULL_ID, "--agent", "random", "--steps", "20", "--num-envs", "1",
            "--size", "16", "--window", "2", "--batch", "1", "--read-seconds", "0.1", "--json", str(out)]  # fmt: skip
    assert cli(argv) == 0
    assert "load average n/a before the run" in capsys.readouterr().out
    assert json.loads(out.read_text())["load_average_after"] is None


def test_an_unregistered_id_says_how_to_name_the_module_that_registers_it(tmp_path, capsys):
    assert cli(["record", "--env", "NotRegistered-v0", "--steps", "5", "--out", str(tmp_path / "x.msgpack")]) == 2
    assert "--env my_module:NotRegistered-v0" in capsys.readouterr().err
    assert cli(["record", "--env", "BlockWorld-v0", "--steps", "5", "--out", str(tmp_path / "x.msgpack")]) == 2
    assert "did you mean --env worldsim/BlockWorld-v0?" in capsys.readouterr().err


def test_record_help_explains_every_option_and_names_the_default_agent(capsys):
    """`worldsim record --help` is where a newcomer learns that the default agent is random
    and that the explorer is the one that makes BlockWorld training data."""
    with pytest.raises(SystemExit):
        cli(["record", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for action in build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help text"
    assert "explorer (a scripted BlockWorld player" in text and "(default: random)" in text


def test_bench_record_takes_size_as_h_w_like_the_other_benches(tmp_path, capsys):
    """`--size H W`, as bench train and bench dream take it; one number is still a square."""
    out = tmp_path / "bench.json"
    argv = ["bench", "record", "--env", FULL_ID, "--agent", "random", "--steps", "20", "--num-envs", "1",
            "--window", "2", "--batch", "1", "--read-seconds", "0.1", "--json", str(out)]  # fmt: skip
    assert cli([*argv, "--size", "16", "24"]) == 0
    assert json.loads(out.read_text())["frame_shape"] == [16, 24, 3]
    assert cli([*argv, "--size", "20"]) == 0
    figures = json.loads(out.read_text())
    assert figures["frame_shape"] == [20, 20, 3] and figures["size"] == 20
    assert cli([*argv, "--size", "8", "8", "8"]) == 2
    assert "--size takes H W or one number" in capsys.readouterr().err


def test_a_frame_size_given_twice_must_agree(tmp_path, capsys):
    """`--width` silently won over a `width` in `--env-kwargs`, so the recording was not the
    size the kwargs asked for; now two different values are refused, naming both, before
    anything is written, and the same value given twice is fine."""
    out = tmp_path / "toy.msgpack"
    argv = ["record", "--env", FULL_ID, "--steps", "5", "--out", str(out), "--quiet"]
    assert cli([*argv, "--width", "16", "--env-kwargs", '{"width": 24}']) == 2
    err = capsys.readouterr().err
    assert "--width 16 and --env-kwargs width 24 disagree" in err, err
    assert not out.exists()
    assert cli([*argv, "--height", "12", "--env-kwargs", '{"height": 8, "width": 24}']) == 2
    assert "--height 12 and --env-kwargs height 8 disagree" in capsys.readouterr().err
    assert cli([*argv, "--width", "24", "--height", "12", "--env-kwargs", '{"width": 24}']) == 0
    assert next(iter(RecordingReader(out))).image().shape == (12, 24, 3)
