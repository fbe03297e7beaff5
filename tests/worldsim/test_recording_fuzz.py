"""Bad input: every truncation, random byte flips, wrong types and oversized fields.

The promise under test: a damaged recording yields its complete records or raises
RecordingError (naming file and record); it never raises anything else, never hangs and
never allocates without bound.
"""

from __future__ import annotations

import math
import struct
import warnings

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tests.worldsim.toy_env import record_toy
from worldsim.data import WindowDataset
from worldsim.png import encode_png
from worldsim.recording import RecordingError, RecordingReader, RecordingTruncatedWarning

FUZZ = settings(
    max_examples=80,
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small valid recording: (bytes, [(end offset, record)] for every record)."""
    path = tmp_path_factory.mktemp("fuzz") / "small.msgpack"
    record_toy(path, 2, width=4, height=4, max_len=3, end_prob=0.0, seed=7)
    records = list(RecordingReader(path))
    return path.read_bytes(), records


def _read_all(path):
    """Read every record and decode every frame, as a training job would."""
    out = []
    for rec in RecordingReader(path):
        rec.image((4, 4))
        out.append(rec)
    return out


def test_truncation_at_every_offset_yields_exactly_the_complete_records(small, tmp_path):
    data, records = small
    header_end = records[0].offset
    ends = {r.end for r in records} | {header_end}
    path = tmp_path / "cut.msgpack"
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        if cut < header_end:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RecordingTruncatedWarning)
                with pytest.raises(RecordingError, match=r"cut\.msgpack: record 0"):
                    _read_all(path)
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = _read_all(path)
        want = [r for r in records if r.end <= cut]
        assert [(r.episode, r.t, r.frame) for r in got] == [(r.episode, r.t, r.frame) for r in want]
        truncated = [w for w in caught if issubclass(w.category, RecordingTruncatedWarning)]
        if cut in ends:
            assert not truncated, cut
        else:
            assert len(truncated) == 1 and f"byte {max(e for e in ends if e <= cut)}" in str(
                truncated[0].message
            )


@FUZZ
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=6)
)
def test_random_byte_flips_never_raise_anything_but_recording_error(small, tmp_path, flips):
    data = bytearray(small[0])
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    path = tmp_path / "flipped.msgpack"
    path.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordingTruncatedWarning)
        try:
            _read_all(path)
        except RecordingError as e:
            assert "flipped.msgpack" in str(e)


@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzzds") / "s"
    record_toy(folder, 3, width=4, height=4, max_len=6, end_prob=0.0, shard_records=8, seed=1)
    return folder


@FUZZ
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4)
)
@pytest.mark.filterwarnings("ignore::worldsim.recording.RecordingTruncatedWarning")  # a flip may cut a header: skipped
def test_window_dataset_on_flipped_shards_raises_only_recording_error(
    shard_folder, tmp_path, flips
):
    folder = tmp_path / "copy"
    folder.mkdir(exist_ok=True)
    for p in shard_folder.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    shard = folder / "shard-00001.msgpack"
    data = bytearray(shard.read_bytes())
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    shard.write_bytes(bytes(data))
    try:
        ds = WindowDataset([folder], 3)
        for i in range(len(ds)):
            ds[i]
    except RecordingError:
        pass


def _valid(key, value):
    """Whether `value` is acceptable for a step-record `key` (so the fuzz must skip it)."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    return {
        "episode": is_int and 0 <= value < 2**63,  # int64, as the index and the dataset hold them
        "t": is_int and 1 <= value < 2**63,
        "action": isinstance(value, list)
        and len(value) == 2
        and all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a < 3 for a in value),
        "reward": not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value),
        "terminated": isinstance(value, bool),
        "truncated": isinstance(value, bool),
        "kind": value == "step",
    }[key]


_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.lists(st.integers(-5, 5), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(-100, 100), max_size=2),
)


@FUZZ
@given(
    key=st.sampled_from(["episode", "t", "action", "reward", "terminated", "truncated", "kind"]),
    value=_ANY,
    drop=st.booleans(),
)
@example(key="t", value=2**64 - 3, drop=False)  # read, then an OverflowError in WindowDataset
@example(key="episode", value=2**63, drop=False)
@example(key="action", value=[0, 3], drop=False)  # one past the last level of MultiDiscrete([3, 3])
@example(key="action", value=[-1, 0], drop=False)
def test_wrong_types_in_a_step_record_raise_recording_error(small, tmp_path, key, value, drop):
    assume(drop or not _valid(key, value))
    data, records = small
    step = msgpack.unpackb(data[records[1].offset : records[1].end], raw=False)
    if drop:
        del step[key]
    else:
        step[key] = value
    path = tmp_path / "typed.msgpack"
    path.write_bytes(data[: records[1].offset] + msgpack.packb(step, use_bin_type=True))
    with pytest.raises(RecordingError, match=r"typed\.msgpack: record 2"):
        _read_all(path)


@FUZZ
@given(
    key=st.sampled_from(
        [
            "format",
            "version",
            "env_id",
            "env_kwargs",
            "observation_shape",
            "action_space",
            "frame_codec",
            "agent",
            "created",
        ]
    ),  # fmt: skip
    value=_ANY,
)
@example(key="observation_shape", value=[1, 1, 3])  # well typed, wrong size: found by this test once
@example(key="action_space", value={"type": "MultiDiscrete", "nvec": [2**64 - 1, 3]})  # an action >= 2**63 overflowed int64
@example(key="observation_shape", value=[4, 4, 4])  # the frames' size, but 4 channels: frames are RGB
def test_wrong_types_in_the_header_raise_recording_error(small, tmp_path, key, value):
    data, records = small
    header = msgpack.unpackb(data[: records[0].offset], raw=False)
    assume(header[key] != value)
    assume(not (key == "env_kwargs" and isinstance(value, dict)))
    assume(not (key in ("env_id", "agent", "created") and isinstance(value, str)))
    header[key] = value
    path = tmp_path / "header.msgpack"
    path.write_bytes(msgpack.packb(header, use_bin_type=True) + data[records[0].offset :])
    well_typed_shape = (key == "observation_shape" and isinstance(value, list) and len(value) == 3 and value[2] == 3
                        and all(type(v) is int and v > 0 for v in value))  # fmt: skip
    if well_typed_shape:
        # Not a wrong type but a wrong size: the header is valid, and the first frame read at the
        # size it promises is the error.
        with pytest.raises(RecordingError, match=r"header\.msgpack: record 1, byte \d+: frame"):
            for rec in RecordingReader(path):
                rec.image(tuple(value[:2]))
        return
    with pytest.raises(RecordingError, match=r"header\.msgpack: record 0"):
        _read_all(path)


def test_oversized_fields_fail_fast_without_allocating(small, tmp_path):
    data, records = small
    head = data[: records[0].offset]
    path = tmp_path / "big.msgpack"
    cases = {
        "array of 4 billion": b"\xdd\xff\xff\xff\xf0" + b"\x00" * 64,
        "deep nesting": b"\x91" * 100_000,
        "2 MiB string": msgpack.packb({"kind": "step", "note": "x" * (2 << 20)}),
    }
    for tail in cases.values():
        path.write_bytes(head + tail)
        with pytest.raises(RecordingError, match="record 1"), warnings.catch_warnings():
            warnings.simplefilter("error", RecordingTruncatedWarning)  # an error, not a cut
            _read_all(path)
    # A binary length claiming 4 GB, followed by more data than any record may hold.
    path.write_bytes(head + b"\xc6\xff\xff\xff\xf0" + bytes((64 << 20) + 1024))
    with pytest.raises(RecordingError, match="larger than"):
        _read_all(path)
    # A PNG whose header claims 60000x60000 pixels: rejected before inflating.
    png = bytearray(encode_png(np.zeros((4, 4, 3), np.uint8)))
    png[16:24] = struct.pack(">II", 60000, 60000)
    step = msgpack.unpackb(data[records[1].offset : records[1].end], raw=False)
    step["frame"] = bytes(png)
    path.write_bytes(head + msgpack.packb(step, use_bin_type=True))
    with pytest.raises(RecordingError, match="60000x60000"):
        _read_all(path)
