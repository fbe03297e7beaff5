"""Round trips of the rollout format: files, shards, index, crash safety, the PNG codec."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings

import gymnasium as gym
import msgpack
import numpy as np
import pytest
from PIL import Image

from tests.worldsim.toy_env import record_toy
from worldsim.png import PNGError, decode_png, encode_png
from worldsim.recording import (
    RecordingError,
    RecordingReader,
    RecordingTruncatedWarning,
    RecordingWriter,
    read_header,
)
from worldsim.shard_index import load_index


def _check_same(records, episodes):
    by_episode: dict[int, list] = {}
    for rec in records:
        by_episode.setdefault(rec.episode, []).append(rec)
    assert sorted(by_episode) == list(range(len(episodes)))
    for e, recs in by_episode.items():
        ep = episodes[e]
        assert [r.t for r in recs] == list(range(len(ep["frames"])))
        assert recs[0].kind == "reset" and all(r.kind == "step" for r in recs[1:])
        for r, frame in zip(recs, ep["frames"]):
            np.testing.assert_array_equal(r.image(), frame)
        np.testing.assert_array_equal(
            np.stack([r.action for r in recs[1:]]), np.stack(ep["actions"])
        )
        assert [r.reward for r in recs[1:]] == ep["rewards"]
        assert [r.terminated for r in recs[1:]] == ep["terminated"]


def test_file_round_trip_gives_back_equal_frames_actions_and_rewards(tmp_path):
    path = tmp_path / "run.msgpack"
    episodes = record_toy(path, 4, seed=3)
    reader = RecordingReader(path)
    assert reader.header["env_id"] == "ToyImage-v0"
    assert reader.observation_shape == (12, 16, 3)
    records = list(reader)
    _check_same(records, episodes)
    assert records[0].seed == 3000
    assert records[1].extra["info"] == {"label": "go"}


def test_discrete_actions_are_stored_as_plain_ints(tmp_path):
    path = tmp_path / "d.msgpack"
    episodes = record_toy(path, 2, discrete=True)
    raw = list(msgpack.Unpacker(open(path, "rb"), raw=False))
    assert raw[0]["action_space"] == {"type": "Discrete", "n": 5}
    assert all(isinstance(m["action"], int) for m in raw[1:] if m["kind"] == "step")
    _check_same(list(RecordingReader(path)), episodes)


def test_shard_folder_round_trip_with_interleaved_episodes(tmp_path):
    folder = tmp_path / "shards"
    episodes = record_toy(folder, 9, shard_records=10, interleave=3, seed=1)
    shards = sorted(p.name for p in folder.glob("*.msgpack"))
    total = sum(len(ep["frames"]) for ep in episodes)
    assert len(shards) == -(-total // 10)
    _check_same(list(RecordingReader(folder)), episodes)
    # Each shard reads alone: it repeats the header.
    for name in shards:
        assert read_header(folder / name)["env_id"] == "ToyImage-v0"
    index = load_index(folder)
    assert sorted(index) == shards
    assert sum(e.records for e in index.values()) == total


def test_a_long_sharded_run_rewrites_its_index_a_logarithmic_number_of_times(tmp_path, monkeypatch):
    """The index lists every record: rewritten after every shard, a long run would write
    O(shards^2) bytes of it. It is rewritten after shards 1, 2, 4, 8, ... and at close, so a
    killed run still has an index of at least half its finished shards, and a closed one of all."""
    import worldsim.recording_writer as writer_module

    folder = tmp_path / "shards"
    writes: list[int] = []
    real = writer_module.write_index
    monkeypatch.setattr(writer_module, "write_index", lambda d, h, files: writes.append(len(files)) or real(d, h, files))
    frame = np.zeros((4, 4, 3), np.uint8)
    with writer_module.RecordingWriter(folder, env_id="X-v0", env_kwargs={}, observation_shape=(4, 4, 3),
                                       action_space=gym.spaces.Discrete(2), agent="a", shard_records=1) as w:  # fmt: skip
        w.reset(0, 0, frame)
        for t in range(1, 100):
            w.step(0, t, 0, 0.0, False, False, frame)
            if t == 70:  # 70 shards finished: what a run killed now would leave
                assert len(load_index(folder)) == 64
    assert writes == [1, 2, 4, 8, 16, 32, 64, 100]
    assert len(load_index(folder)) == 100
    w.close()
    assert writes[-1] == 100 and len(writes) == 8  # closing twice writes nothing more


def test_an_empty_last_shard_is_skipped_with_a_warning(tmp_path):
    """A writer killed between creating a shard and writing its header leaves it empty; the
    records before it still read, through the reader and the training data alike."""
    from worldsim.data import WindowDataset

    folder = tmp_path / "shards"
    episodes = record_toy(folder, 3, shard_records=10, seed=1)
    (folder / "shard-99999.msgpack").touch()
    with pytest.warns(RecordingTruncatedWarning, match="skipping 1 shard"):
        _check_same(list(RecordingReader(folder)), episodes)
    with pytest.warns(RecordingTruncatedWarning, match="skipping 1 shard"):
        assert len(WindowDataset([folder], window=2)) > 0


def test_a_shard_cut_inside_its_header_is_skipped_with_a_warning(tmp_path):
    """A full disk or an interrupted copy can leave part of a shard's header: that shard holds
    no record, and the other shards still read, through the reader and the training data."""
    from worldsim.data import WindowDataset

    folder = tmp_path / "shards"
    episodes = record_toy(folder, 3, shard_records=10, seed=1)
    first = (folder / "shard-00000.msgpack").read_bytes()
    (folder / "shard-99999.msgpack").write_bytes(first[:40])
    with pytest.warns(RecordingTruncatedWarning, match="skipping 1 shard.*shard-99999"):
        _check_same(list(RecordingReader(folder)), episodes)
    with pytest.warns(RecordingTruncatedWarning, match="skipping 1 shard"):
        assert len(WindowDataset([folder], window=2)) > 0
    # A lone file cut inside its header has nothing to read: that stays an error.
    (tmp_path / "cut.msgpack").write_bytes(first[:40])
    with (
        pytest.warns(RecordingTruncatedWarning),
        pytest.raises(RecordingError, match="cut off inside the header"),
    ):
        RecordingReader(tmp_path / "cut.msgpack")


def test_every_shard_is_plain_msgpack_with_the_documented_keys(tmp_path):
    record_toy(tmp_path / "s", 3, shard_records=7)
    for shard in sorted((tmp_path / "s").glob("*.msgpack")):
        maps = list(msgpack.Unpacker(open(shard, "rb"), raw=False))
        header = maps[0]
        assert header["format"] == "worldsim-rollout" and header["version"] == 1
        for key in (
            "env_id",
            "env_kwargs",
            "observation_shape",
            "action_space",
            "frame_codec",
            "agent",
            "created",
        ):
            assert key in header
        for m in maps[1:]:
            assert m["kind"] in ("reset", "step")
            img = np.asarray(Image.open(io.BytesIO(m["frame"])))  # any PNG reader works
            assert img.shape == tuple(header["observation_shape"])
    doc = json.loads((tmp_path / "s" / "index.json").read_text())
    assert doc["format"] == "worldsim-rollout-index"


def _writer(path, **kw):
    kw.setdefault("action_space", gym.spaces.MultiDiscrete([3, 2]))
    return RecordingWriter(path, env_id="Toy", env_kwargs={}, observation_shape=(4, 4, 3), agent="test", **kw)


def test_writer_rejects_bad_actions_frames_and_existing_files(tmp_path):
    frame = np.zeros((4, 4, 3), np.uint8)
    with _writer(tmp_path / "a.msgpack") as w:
        w.reset(0, None, frame)
        with pytest.raises(RecordingError, match="out of range"):
            w.step(0, 1, [3, 0], 0.0, False, False, frame)
        with pytest.raises(RecordingError, match="shape"):
            w.step(0, 1, [0, 0, 0], 0.0, False, False, frame)
        with pytest.raises(RecordingError, match=r"uint8 \[4, 4, 3\]"):
            w.step(0, 1, [0, 0], 0.0, False, False, np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(RecordingError, match="already exists"):
        _writer(tmp_path / "a.msgpack")
    assert len(list(RecordingReader(tmp_path / "a.msgpack"))) == 1


@pytest.mark.parametrize(
    "space", [gym.spaces.Discrete(3, start=1), gym.spaces.MultiDiscrete([3, 2], start=[0, 1])], ids=["Discrete", "MultiDiscrete"]
)
def test_an_action_space_that_does_not_start_at_0_is_refused_before_a_file_is_made(tmp_path, space):
    """A recording stores actions as 0-based levels: an env whose actions start at 1 would
    be recorded (and dreamed) one level off, or refused mid-run for its top action."""
    from worldsim.errors import WorldSimError

    with pytest.raises(WorldSimError, match="start at 0"):
        _writer(tmp_path / "a.msgpack", action_space=space)
    assert not (tmp_path / "a.msgpack").exists()


def test_a_second_writer_to_the_same_path_is_refused_even_when_it_looked_first(
    tmp_path, monkeypatch
):
    """Two writers started at once (say, a sweep with one --out twice) must not both write one
    file: checking for the file and creating it are one step, so a writer that looked just
    before the other created the file is still refused, and the first one's file stays whole."""
    from pathlib import Path

    frame = np.zeros((4, 4, 3), np.uint8)
    with _writer(tmp_path / "a.msgpack") as first:
        first.reset(0, None, frame)
        with monkeypatch.context() as m:
            m.setattr(Path, "exists", lambda self: False)  # it looked before the file was made
            with pytest.raises(RecordingError, match="already exists"):
                _writer(tmp_path / "a.msgpack")
        first.step(0, 1, [1, 0], 1.0, False, False, frame)
    assert [(r.kind, r.reward) for r in RecordingReader(tmp_path / "a.msgpack")] == [
        ("reset", 0.0),
        ("step", 1.0),
    ]


@pytest.mark.parametrize(
    ("step", "info", "message"),
    [
        ((0, 1, [0, 0], float("nan")), None, "record 2, byte .*reward must be a finite number, got nan"),
        ((0, 0, [0, 0], 0.0), None, "t must be an int >= 1 and below 2\\*\\*63, got 0"),
        ((-1, 1, [0, 0], 0.0), None, "episode must be a non-negative int"),
        ((0, 1, [0, 0], 0.0), {1: 2}, "map key"),
        ((0, 1, [0, 0], 0.0), 5, "info must be a map"),
        ((0, 1, [0, 0], 0.0), [("a", 1)], "info must be a map"),
        ((0, 1, [0, 0], 0.0), {"big": list(range(70_000))}, "exceeds max_array_len"),
    ],
)
def test_writer_refuses_what_a_reader_would_refuse_and_keeps_the_file_readable(tmp_path, step, info, message):
    frame = np.zeros((4, 4, 3), np.uint8)
    path = tmp_path / "a.msgpack"
    with _writer(path) as w:
        w.reset(0, None, frame)
        with pytest.raises(RecordingError, match=message + ".*so it was not written"):
            w.step(*step, False, False, frame, info)
        w.step(0, 1, [1, 0], 0.5, False, False, frame)
    assert [(r.kind, r.t) for r in RecordingReader(path)] == [("reset", 0), ("step", 1)]


@pytest.mark.parametrize(
    "env_kwargs", [{"layout": list(range(70_000))}, {"note": "x" * (2 << 20)}, {str(i): i for i in range(5000)}]
)
def test_writer_refuses_a_header_a_reader_would_refuse_before_writing_anything(tmp_path, env_kwargs):
    """The header goes through the reader's size limits as every record does: a long list in
    env_kwargs must fail at once, not after a whole run that no reader can open."""
    with pytest.raises(RecordingError, match="a reader would refuse .*this header"):
        RecordingWriter(
            tmp_path / "a.msgpack", env_id="Toy", env_kwargs=env_kwargs, observation_shape=(4, 4, 3),
            action_space=gym.spaces.Discrete(3), agent="test",
        )  # fmt: skip
    assert not (tmp_path / "a.msgpack").exists()


def test_a_killed_writer_loses_nothing_it_wrote(tmp_path):
    path = tmp_path / "killed.msgpack"
    code = f"""
import os, signal, numpy as np, gymnasium as gym
from worldsim.recording import RecordingWriter
w = RecordingWriter({str(path)!r}, env_id="Toy", env_kwargs={{}}, observation_shape=(4, 4, 3),
                    action_space=gym.spaces.Discrete(2), agent="test")
w.reset(0, 1, np.zeros((4, 4, 3), np.uint8))
for t in range(1, 6):
    w.step(0, t, t % 2, 1.0, False, False, np.full((4, 4, 3), t, np.uint8))
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # complete records only: no truncation warning
        records = list(RecordingReader(path))
    assert [r.t for r in records] == [0, 1, 2, 3, 4, 5]
    assert records[-1].image()[0, 0, 0] == 5


def test_a_write_interrupted_by_ctrl_c_leaves_every_earlier_record_and_no_cut_one(tmp_path):
    """On a pipe or a network file system one record can take several writes: Ctrl-C between
    two of them must not leave the record's first part at the end of the file."""
    path = tmp_path / "a.msgpack"
    frame = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(KeyboardInterrupt), _writer(path) as w:
        w.reset(0, None, frame)
        w.step(0, 1, [1, 0], 1.0, False, False, frame)
        write = w._file.write
        calls = []

        def short_then_interrupted(view):
            calls.append(len(view))
            if len(calls) > 1:
                raise KeyboardInterrupt
            return write(view[: len(view) // 2])

        w._file.write = short_then_interrupted
        w.step(0, 2, [0, 1], 2.0, False, False, frame)
    assert len(calls) == 2  # half of the record was on disk when the interrupt came
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncation warning
        records = list(RecordingReader(path))
    assert [(r.kind, r.t, r.reward) for r in records] == [("reset", 0, 0.0), ("step", 1, 1.0)]


def test_foreign_files_raise_recording_error_naming_the_file(tmp_path):
    text = tmp_path / "notes.msgpack"
    text.write_text("hello, this is not msgpack at all" * 3)
    with pytest.raises(RecordingError, match="notes.msgpack"):
        list(RecordingReader(text))
    other = tmp_path / "other.msgpack"
    other.write_bytes(msgpack.packb({"format": "something-else"}))
    with pytest.raises(RecordingError, match="not a WorldSim recording"):
        RecordingReader(other)
    with pytest.raises(RecordingError, match="no such"):
        RecordingReader(tmp_path / "missing")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(RecordingError, match="no \\*.msgpack shards"):
        RecordingReader(tmp_path / "empty_dir")


def test_truncated_shard_yields_complete_records_and_warns_with_offset(tmp_path):
    path = tmp_path / "t.msgpack"
    record_toy(path, 1, seed=2)
    data = path.read_bytes()
    cut = tmp_path / "cut.msgpack"
    cut.write_bytes(data[:-3])
    with pytest.warns(RecordingTruncatedWarning, match=r"cut\.msgpack: truncated at byte \d+"):
        records = list(RecordingReader(cut))
    assert len(records) == len(list(RecordingReader(path))) - 1


def test_a_frame_of_another_size_than_the_header_says_is_refused_when_read(tmp_path):
    """A record whose PNG disagrees with observation_shape (written by another tool: the
    writer refuses it) is an error naming the record, not a frame of another size."""
    path = tmp_path / "a.msgpack"
    with _writer(path) as w:
        w.reset(0, None, np.zeros((4, 4, 3), np.uint8))
    header = path.read_bytes()
    rec = {"kind": "step", "episode": 0, "t": 1, "action": [0, 0], "reward": 0.0, "terminated": False,
           "truncated": False, "frame": encode_png(np.zeros((8, 8, 3), np.uint8))}  # fmt: skip
    path.write_bytes(header + msgpack.packb(rec))
    records = list(RecordingReader(path))
    assert records[0].image().shape == (4, 4, 3)
    with pytest.raises(RecordingError, match=r"record 2, byte \d+: frame: .*expected 4x4"):
        records[1].image()


@pytest.mark.parametrize("sub_filter", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 64), (48, 80)])
def test_png_codec_is_lossless_and_readable_by_pillow(shape, sub_filter):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    data = encode_png(frame, sub_filter=sub_filter)
    np.testing.assert_array_equal(decode_png(data, shape), frame)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), frame)


def test_png_decoder_reads_other_writers_pngs_and_checks_size():
    frame = np.random.default_rng(1).integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=9)  # adaptive filters
    np.testing.assert_array_equal(decode_png(buf.getvalue()), frame)
    with pytest.raises(PNGError, match="expected 10x11"):
        decode_png(buf.getvalue(), (10, 11))


def test_a_writer_holds_its_index_in_8_bytes_a_record(tmp_path):
    """The writer keeps every record's offset for the index. As Python ints in lists they
    cost 42-60 bytes a record, so recording 10 million steps held 0.4-0.6 GB for offsets
    alone; packed as int64 they cost 8 (10 with the arrays' growth)."""
    import tracemalloc

    frame = encode_png(np.zeros((2, 2, 3), np.uint8))
    kw = dict(env_id="X-v0", env_kwargs={}, observation_shape=(2, 2, 3), action_space=gym.spaces.Discrete(2), agent="a")
    for path, shard_records in ((tmp_path / "one.msgpack", None), (tmp_path / "shards", 1000)):
        with RecordingWriter(path, shard_records=shard_records, **kw) as w:
            def write(first: int, last: int) -> None:
                for t in range(first, last):  # four episodes, interleaved as a vector env writes them
                    for e in range(4):
                        w.reset(e, None, frame) if t == 0 else w.step(e, t, 1, 0.0, False, False, frame)

            write(0, 500)
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                write(500, 3000)  # 10,000 more records
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
        assert grown / 10_000 < 16, f"{path.name}: {grown / 10_000:.1f} bytes a record"
    assert [len(s.offsets) for s in load_index(tmp_path / "shards")["shard-00011.msgpack"].segments] == [250] * 4


@pytest.mark.parametrize("value", [2.5, 2.0, "2", True], ids=["float", "whole float", "numeric string", "bool"])
@pytest.mark.parametrize("field", ["episode", "first_t", "bytes", "records"])
def test_an_index_with_a_count_that_is_not_an_int_is_refused_with_the_way_out(tmp_path, field, value):
    """The writer writes every count of index.json as a JSON integer; a float or a string
    there is an index no writer wrote, and is refused as its bad offsets are, not rounded."""
    from worldsim.errors import WorldSimError

    folder = tmp_path / "s"
    record_toy(folder, 2, shard_records=10, seed=2)
    assert load_index(folder)  # the writer's own index loads
    index = folder / "index.json"
    doc = json.loads(index.read_text())
    entry = doc["shards"][0]
    (entry["segments"][0] if field in ("episode", "first_t") else entry)[field] = value
    index.write_text(json.dumps(doc))
    with pytest.raises(WorldSimError, match=f"{index}: bad shard entry.*not an int.*delete it to have the shards scanned"):
        load_index(folder)


def test_index_json_is_written_shard_by_shard_with_the_bytes_of_one_json_dump(tmp_path):
    """Built as one document, an index's lists of Python ints peaked at 65-87 bytes a record
    while it was written (0.7-0.9 GB for 10 million records, at the end of a run that held 10
    a record); written shard by shard, the bytes are those of that one document."""
    import tracemalloc
    from array import array

    from worldsim.shard_index import FileIndex, Segment, write_index

    files = [
        FileIndex(f"shard-{k:05d}.msgpack", 10**9 + k, 1000,
                  [Segment(e, 7, array("q", range(10**8 + e, 10**8 + 4 * 250 + e, 4))) for e in range(4)])
        for k in range(100)
    ]  # fmt: skip
    header = {"format": "worldsim-rollout", "env_id": "X-v0", "env_kwargs": {"a": [1, 2.5, None]}}
    tracemalloc.start()
    try:
        write_index(tmp_path, header, files[::-1])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / 100_000 < 16, f"{peak / 100_000:.1f} bytes a record"
    doc = {"format": "worldsim-rollout-index", "version": 1, "header": header, "shards": [f.to_json() for f in files]}
    assert (tmp_path / "index.json").read_text() == json.dumps(doc, separators=(",", ":"))
    assert load_index(tmp_path) == {f.file: f for f in files}
