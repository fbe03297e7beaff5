"""The WorldSim rollout format: a plain msgpack stream of maps, written crash-safe.

A recording file is one header map followed by one map per record, written back to back
(see ``docs/recording.md`` for the full specification)::

    {"format": "worldsim-rollout", "version": 1, "env_id": ..., "env_kwargs": {...},
     "observation_shape": [H, W, 3], "action_space": {"type": ..., ...},
     "frame_codec": "png", "agent": ..., "created": ISO 8601, ...}
    {"kind": "reset", "episode": e, "seed": s or nil, "frame": <png>}
    {"kind": "step", "episode": e, "t": t, "action": a, "reward": r,
     "terminated": b, "truncated": b, "frame": <png>}

A large recording is a folder of such files (shards), each with its own copy of the header,
plus ``index.json`` (:mod:`worldsim.shard_index`).

Reading validates every map. A malformed file raises :class:`RecordingError` naming the
file, the record number (the header is record 0) and the byte offset. A file that merely
ends mid-record, as after a killed writer, yields every complete record and then warns
with :class:`RecordingTruncatedWarning`. The unpacker runs with hard size limits, so no
input can make the reader hang or allocate more than :data:`MAX_RECORD_BYTES`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from worldsim.errors import WorldSimError
from worldsim.png import PNG_SIGNATURE, PNGError, decode_png
from worldsim.png import encode_png as encode_png  # re-exported: part of this module's API
from worldsim.shard_index import FileIndex, IndexBuilder, shard_files
from worldsim.spaces import ActionSpec

FORMAT = "worldsim-rollout"
VERSION = 1
FRAME_CODEC = "png"
HEADER_KEYS = (
    "format", "version", "env_id", "env_kwargs", "observation_shape", "action_space",
    "frame_codec", "agent", "created",
)  # fmt: skip
MAX_RECORD_BYTES = 64 << 20
"""No record may exceed 64 MiB; a length field claiming more is corruption, not data."""
MAX_FRAME_SIDE = 8192
UNPACK_LIMITS: dict[str, Any] = {
    "raw": False,
    "strict_map_key": True,
    "max_buffer_size": MAX_RECORD_BYTES,
    "max_bin_len": MAX_RECORD_BYTES,
    "max_str_len": 1 << 20,
    "max_array_len": 1 << 16,
    "max_map_len": 1 << 12,
    "max_ext_len": 1 << 10,
}
"""Keyword arguments for ``msgpack.Unpacker`` that bound every allocation."""
UNPACKB_LIMITS = {k: v for k, v in UNPACK_LIMITS.items() if k != "max_buffer_size"}
"""The same limits for ``msgpack.unpackb`` (which reads one buffer already in memory)."""


class RecordingError(WorldSimError):
    """A recording that is corrupt, foreign or inconsistent; the message names file and record."""


class RecordingTruncatedWarning(UserWarning):
    """A recording ends inside a record (a killed writer): the complete records were read."""


def _where(file: str | Path, number: int | None, offset: int | None = None) -> str:
    at = f", byte {offset}" if offset is not None else ""
    return f"{file}: record {'?' if number is None else number}{at}"


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate_header(obj: Any, file: str | Path = "<recording>") -> dict[str, Any]:
    """Check a header map; returns it unchanged.

    Raises:
        RecordingError: if it is not a version-1 WorldSim rollout header.
    """
    where = _where(file, 0, 0)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise RecordingError(f"{where}: not a WorldSim recording (no {FORMAT!r} header)")
    if obj.get("version") != VERSION:
        raise RecordingError(
            f"{where}: unsupported version {obj.get('version')!r}, this reads {VERSION}"
        )
    missing = [k for k in HEADER_KEYS if k not in obj]
    if missing:
        raise RecordingError(f"{where}: header lacks {missing}")
    shape = obj["observation_shape"]
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(_is_int(s) for s in shape)
        or shape[2] != 3
        or not (0 < shape[0] <= MAX_FRAME_SIDE and 0 < shape[1] <= MAX_FRAME_SIDE)
    ):
        raise RecordingError(f"{where}: observation_shape must be [H, W, 3], got {shape!r}")
    try:
        ActionSpec.from_dict(obj["action_space"])
    except WorldSimError as e:
        raise RecordingError(f"{where}: {e}") from None
    if obj["frame_codec"] != FRAME_CODEC:
        raise RecordingError(
            f"{where}: frame_codec must be {FRAME_CODEC!r}, got {obj['frame_codec']!r}"
        )
    for key, typ in (("env_id", str), ("env_kwargs", dict), ("agent", str), ("created", str)):
        if not isinstance(obj[key], typ):
            raise RecordingError(
                f"{where}: {key} must be {typ.__name__}, got {type(obj[key]).__name__}"
            )
    return obj


@dataclass
class Record:
    """One reset or step record, validated, with its frame still PNG-encoded."""

    kind: str
    """``"reset"`` or ``"step"``."""
    episode: int
    t: int
    """0 for a reset record; the step number (1, 2, ...) for a step record."""
    frame: bytes = field(repr=False)
    """PNG bytes of the observation (after the action, for a step)."""
    action: np.ndarray | None = None
    """int64 [num_components] for a step record; None for a reset."""
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys beyond the required ones, such as ``"info"``."""
    file: str = ""
    number: int | None = None
    """Position in its file (the header is record 0); None when read by offset alone."""
    offset: int = 0
    """Byte offset of the record in its file."""
    end: int = 0
    """Byte offset just past the record (0 when unknown)."""
    frame_shape: tuple[int, int] | None = None
    """(height, width) its file's header promises; :meth:`image` holds the PNG to it."""

    def image(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The frame as uint8 [H, W, 3].

        Args:
            shape: the (height, width) the PNG must have; default: the one its file's header
                promises (``frame_shape``). A PNG of another size is refused before it is
                inflated.

        Raises:
            RecordingError: if the PNG is corrupt or not that size.
        """
        try:
            return decode_png(self.frame, shape or self.frame_shape)
        except PNGError as e:
            raise RecordingError(
                f"{_where(self.file, self.number, self.offset)}: frame: {e}"
            ) from None


_RESET_KEYS = ("kind", "episode", "seed", "frame")
_STEP_KEYS = ("kind", "episode", "t", "action", "reward", "terminated", "truncated", "frame")


def parse_record(
    obj: Any, spec: ActionSpec, file: str | Path = "", number: int | None = None, offset: int = 0
) -> Record:
    """Validate one record map (not its PNG, which is checked when decoded).

    Args:
        obj: the unpacked map.
        spec: the recording's action space.
        file, number, offset: where the map came from, for error messages.

    Raises:
        RecordingError: naming the file, record number and offset.
    """
    where = _where(file, number, offset)

    def bad(msg: str) -> RecordingError:
        return RecordingError(f"{where}: {msg}")

    if not isinstance(obj, dict):
        raise bad(f"expected a map, got {type(obj).__name__}")
    kind = obj.get("kind")
    keys = {"reset": _RESET_KEYS, "step": _STEP_KEYS}.get(kind) if isinstance(kind, str) else None
    if keys is None:
        raise bad(f"kind must be 'reset' or 'step', got {kind!r}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise bad(f"{kind} record lacks {missing}")
    episode, frame = obj["episode"], obj["frame"]
    # Below 2**63 (msgpack holds up to 2**64 - 1): the index and the dataset keep them as int64.
    if not _is_int(episode) or not 0 <= episode < 2**63:
        raise bad(f"episode must be a non-negative int below 2**63, got {episode!r}")
    if not isinstance(frame, bytes) or not frame.startswith(PNG_SIGNATURE):
        raise bad("frame must be PNG bytes")
    extra = {k: v for k, v in obj.items() if k not in keys}
    base = dict(
        episode=episode, frame=frame, extra=extra, file=str(file), number=number, offset=offset
    )
    if kind == "reset":
        seed = obj["seed"]
        if seed is not None and not _is_int(seed):
            raise bad(f"seed must be an int or nil, got {seed!r}")
        return Record("reset", t=0, seed=seed, **base)
    t, action, reward = obj["t"], obj["action"], obj["reward"]
    if not _is_int(t) or not 1 <= t < 2**63:
        raise bad(f"t must be an int >= 1 and below 2**63, got {t!r}")
    values = action if isinstance(action, list) else [action]
    # Plain-Python checks: this runs for every frame a training batch reads.
    if (
        len(values) != len(spec.nvec)
        or not all(_is_int(a) and 0 <= a < n for a, n in zip(values, spec.nvec))
        or (spec.kind == "Discrete") != _is_int(action)
    ):
        raise bad(f"action {action!r} does not fit {spec.kind}{list(spec.nvec)}")
    arr = np.array(values, dtype=np.int64)
    if (
        isinstance(reward, bool)
        or not isinstance(reward, (int, float))
        or not math.isfinite(reward)
    ):
        raise bad(f"reward must be a finite number, got {reward!r}")
    for key in ("terminated", "truncated"):
        if not isinstance(obj[key], bool):
            raise bad(f"{key} must be a bool, got {obj[key]!r}")
    return Record(
        "step", t=t, action=arr, reward=float(reward),
        terminated=obj["terminated"], truncated=obj["truncated"], **base,
    )  # fmt: skip


def _iter_maps(path: Path) -> Iterator[tuple[int, int, int, Any]]:
    """(number, offset, end, object) per complete msgpack object; warns on a cut-off tail."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(f, read_size=1 << 16, **UNPACK_LIMITS)
        number, offset = 0, 0
        while True:
            try:
                obj = next(unpacker)
            except StopIteration:
                break
            except msgpack.BufferFull:
                raise RecordingError(
                    f"{_where(path, number, offset)}: record larger than {MAX_RECORD_BYTES} bytes"
                ) from None
            except Exception as e:  # msgpack raises ValueError, FormatError, StackError, ...
                raise RecordingError(
                    f"{_where(path, number, offset)}: not msgpack: {e!r}"
                ) from None
            end = unpacker.tell()
            yield number, offset, end, obj
            number += 1
            offset = end
    if offset < size:
        warnings.warn(
            f"{path}: truncated at byte {offset} of {size}: record {number} is incomplete; "
            + (f"records 0-{number - 1} were read (record 0 is the header)" if number else "no record was read"),
            RecordingTruncatedWarning,
            stacklevel=3,
        )


def iter_file(path: str | Path) -> Iterator[tuple[dict[str, Any], Record | None]]:
    """Lazily read one file: yields ``(header, None)`` first, then ``(header, record)``."""
    path = Path(path)
    maps = _iter_maps(path)
    first = next(maps, None)
    if first is None:
        raise RecordingError(f"{_where(path, 0, 0)}: empty or cut off inside the header")
    header = validate_header(first[3], path)
    spec = ActionSpec.from_dict(header["action_space"])
    hw = (int(header["observation_shape"][0]), int(header["observation_shape"][1]))
    yield header, None
    for number, offset, end, obj in maps:
        rec = parse_record(obj, spec, path, number, offset)
        rec.end, rec.frame_shape = end, hw
        yield header, rec


def cut_in_header(path: Path) -> bool:
    """True when a file ends before its first map (the header) is complete."""
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(f, read_size=1 << 12, **UNPACK_LIMITS)
        try:
            next(unpacker)
        except StopIteration:
            return True
        except Exception:  # corrupt rather than cut: reading the file reports it
            return False
    return False


def read_header(path: str | Path) -> dict[str, Any]:
    """The header of a file, or of the first shard of a folder, without reading records."""
    files = recording_files(path)
    return next(iter_file(files[0]))[0]


def recording_files(path: str | Path) -> list[Path]:
    """A file itself, or a folder's shards in order.

    Raises:
        RecordingError: if the path does not exist or the folder holds no shards.
    """
    path = Path(path)
    if path.is_dir():
        files = shard_files(path)
        # A writer stopped between creating a shard and writing its header leaves it empty;
        # a full disk or an interrupted copy can leave part of the header. Neither holds a
        # record, and neither may make the rest of the folder unreadable.
        cut = [p for p in files if cut_in_header(p)]
        if cut:
            names = [p.name for p in cut]
            warnings.warn(f"{path}: skipping {len(cut)} shard(s) that end before their header is complete, so hold no record: "
                          f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''}",
                          RecordingTruncatedWarning, stacklevel=3)  # fmt: skip
            files = [p for p in files if p not in cut]
        if not files:
            raise RecordingError(f"{path}: folder holds no *.msgpack shards")
        return files
    if not path.is_file():
        raise RecordingError(f"{path}: no such recording file or folder")
    return [path]


_COMPAT_KEYS = ("format", "version", "observation_shape", "action_space", "frame_codec")


def check_compatible(a: dict[str, Any], b: dict[str, Any], where: str | Path) -> None:
    """Raise :class:`RecordingError` unless two headers describe the same frames and actions."""
    for key in _COMPAT_KEYS:
        if a[key] != b[key]:
            raise RecordingError(f"{where}: header {key} {b[key]!r} differs from {a[key]!r}")


class RecordingReader:
    """Reads a recording file or shard folder lazily, record by record.

    Example::

        reader = RecordingReader("rollouts/")
        for rec in reader:
            frame = rec.image()  # uint8 [H, W, 3]

    Attributes:
        header: the header map (of the first shard).
        files: the files read, in order.
        action_spec: the action space as an :class:`~worldsim.spaces.ActionSpec`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.files = recording_files(path)
        self.header = read_header(self.files[0])
        self.action_spec = ActionSpec.from_dict(self.header["action_space"])

    @property
    def observation_shape(self) -> tuple[int, int, int]:
        return tuple(self.header["observation_shape"])  # type: ignore[return-value]

    def __iter__(self) -> Iterator[Record]:
        for file in self.files:
            for header, rec in iter_file(file):
                if rec is None:
                    check_compatible(self.header, header, file)
                    continue
                yield rec


def scan_file(path: str | Path, name: str | None = None) -> tuple[dict[str, Any], FileIndex]:
    """Read a whole file once and index where every record lies (for files without an index).

    Returns:
        The file's header and its :class:`~worldsim.shard_index.FileIndex`, listed under
        ``name`` (default: the path).
    """
    path = Path(path)
    builder = IndexBuilder(name or str(path))
    records = iter_file(path)
    header = next(records)[0]
    for _, rec in records:
        assert rec is not None
        builder.add(rec.episode, rec.t, rec.offset, rec.end)
    return header, builder.build()


def __getattr__(name: str) -> Any:
    # The writer lives in its own module (it imports this one); re-export it lazily.
    if name == "RecordingWriter":
        from worldsim.recording_writer import RecordingWriter

        return RecordingWriter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
