"""The index of a folder of recording shards: where each episode's frames lie, by byte offset.

A shard folder holds ``index.json`` beside its shards. For each shard it lists the valid
byte length, the number of records, and *segments*: runs of consecutive records of one
episode, each with the byte offset of every record, in step order. Every record (reset or
step) carries exactly one frame, so the offsets are also the frames' addresses, and a
training window is a slice of one segment. An episode that continues in the next shard
(shards are cut by record count, not at episode ends) has one segment in each.

The index is an optimisation, never the truth: a shard missing from it, or whose size no
longer matches, is scanned instead (see :func:`worldsim.recording.scan_file`).
"""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.atomic import atomic_write
from worldsim.errors import WorldSimError

INDEX_NAME = "index.json"
INDEX_FORMAT = "worldsim-rollout-index"
INDEX_VERSION = 1
SHARD_SUFFIX = ".msgpack"


@dataclass
class Segment:
    """Consecutive records of one episode inside one file."""

    episode: int
    first_t: int
    """Step number of the first record (0 for a reset record)."""
    offsets: array[int] = field(default_factory=lambda: array("q"))
    """Byte offset of each record, the record for step ``first_t + i`` at position i.

    An ``array("q")``, 8 bytes per record: a list of Python ints cost 36-60, so a writer
    or an index of 10 million records held 0.4-0.6 GB of offsets alone."""

    @property
    def next_t(self) -> int:
        return self.first_t + len(self.offsets)


@dataclass
class FileIndex:
    """Where the records of one recording file lie."""

    file: str
    """File name, relative to the shard folder (or an absolute path for a lone file)."""
    size: int
    """Bytes up to the end of the last complete record."""
    records: int
    segments: list[Segment]

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "bytes": self.size,
            "records": self.records,
            "segments": [
                {"episode": s.episode, "first_t": s.first_t, "offsets": s.offsets.tolist()}
                for s in self.segments
            ],
        }

    @classmethod
    def from_json(cls, d: Any) -> FileIndex:
        try:
            segs = [
                Segment(_count(s["episode"]), _count(s["first_t"]), _offsets(s["offsets"]))
                for s in d["segments"]
            ]
            return cls(str(d["file"]), _count(d["bytes"]), _count(d["records"]), segs)
        except (KeyError, TypeError, ValueError) as e:
            raise WorldSimError(f"bad shard entry in {INDEX_NAME}: {e!r}") from None


def _count(x: Any) -> int:
    """A byte offset, count or step number of the index: an int in [0, 2**63), as numpy holds
    them (a larger one was an OverflowError deep in the dataset, naming no file).

    Only a JSON integer, as the writer writes them and as offsets must be: ``int()`` read a
    first_t of 2.9 as step 2 and "3" as 3, an index that no writer wrote taken as valid."""
    if not isinstance(x, int) or isinstance(x, bool):
        raise TypeError(f"{x!r} is not an int, so not a byte offset, count or step number")
    if not 0 <= x < 2**63:
        raise ValueError(f"{x!r} is not a byte offset, count or step number")
    return x


def _offsets(xs: Any) -> array[int]:
    """A segment's byte offsets as ``array("q")``, each an int in [0, 2**63), checked in C
    rather than one Python call per record."""
    if not isinstance(xs, list):
        raise TypeError(f"offsets must be a list, got {type(xs).__name__}")
    try:
        a = array("q", xs)
    except OverflowError:
        raise ValueError("an offset is not below 2**63") from None
    if len(a) and np.frombuffer(a, dtype=np.int64).min() < 0:
        raise ValueError("an offset is negative")
    return a


class IndexBuilder:
    """Collects the offsets of records as they are written or scanned, file by file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.records = 0
        self.size = 0
        self._segments: list[Segment] = []
        self._open: dict[int, Segment] = {}

    def add(self, episode: int, t: int, offset: int, end: int) -> None:
        """Note a record of ``episode`` at step ``t`` that spans bytes [offset, end)."""
        seg = self._open.get(episode)
        if seg is None or seg.next_t != t:
            # A gap in t (or a new episode) starts a new segment: windows never span a gap.
            seg = Segment(episode, t)
            self._segments.append(seg)
            self._open[episode] = seg
        seg.offsets.append(offset)
        self.records += 1
        self.size = end

    def build(self) -> FileIndex:
        return FileIndex(self.file, self.size, self.records, list(self._segments))


def write_index(folder: Path, header: dict[str, Any], files: list[FileIndex]) -> Path:
    """Write ``index.json`` atomically (temp file + rename), so readers never see half of it.

    Written shard by shard, the same bytes as ``json.dumps`` of the whole document: built
    whole, the document's lists of Python ints peaked at 65-87 bytes a record, 0.7-0.9 GB for
    10 million records, in a writer that otherwise holds 10.

    Returns:
        The index file's path.
    """
    path = Path(folder) / INDEX_NAME

    def dump(obj: Any) -> str:
        return json.dumps(obj, separators=(",", ":"))

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f'{{"format":{dump(INDEX_FORMAT)},"version":{dump(INDEX_VERSION)},"header":{dump(header)},"shards":[')
            for i, entry in enumerate(sorted(files, key=lambda e: e.file)):
                f.write(("," if i else "") + dump(entry.to_json()))
            f.write("]}")

    atomic_write(path, write)
    return path


def load_index(folder: Path) -> dict[str, FileIndex]:
    """Read a folder's ``index.json``: file name -> entry. Empty when there is none.

    Raises:
        WorldSimError: if the index exists but is not a WorldSim index.
    """
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        return {}
    # The index is only an optimisation, so every complaint says how to do without it.
    fix = "; delete it to have the shards scanned instead"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested 10**5 deep
        raise WorldSimError(f"{path}: not a readable JSON index: {e}{fix}") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise WorldSimError(f"{path}: not a {INDEX_FORMAT} file{fix}")
    if doc.get("version") != INDEX_VERSION:
        raise WorldSimError(f"{path}: unsupported index version {doc.get('version')!r}{fix}")
    shards = doc.get("shards")
    if not isinstance(shards, list):
        raise WorldSimError(f"{path}: 'shards' must be a list{fix}")
    try:
        entries = [FileIndex.from_json(s) for s in shards]
    except WorldSimError as e:
        raise WorldSimError(f"{path}: {e}{fix}") from None
    return {e.file: e for e in entries}


def shard_files(folder: Path) -> list[Path]:
    """The shard files of a folder, in name order."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix == SHARD_SUFFIX and p.is_file())
