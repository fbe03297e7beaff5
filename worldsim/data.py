"""Training windows: random access to T consecutive frames of one episode, across shards.

:class:`WindowDataset` indexes recordings once (from ``index.json`` where a shard folder
has one, else by scanning) and afterwards reads only the records a window needs, through
memory maps, by byte offset. Nothing but where each frame lies is held in memory, so a
dataset of millions of frames opens in moments and costs 28 bytes per frame.

Windows never cross an episode boundary, nor a gap in an episode's steps (a lost shard).
The train/validation split is by whole episodes, chosen by a hash of the episode's
identity and the seed, so it is deterministic and training never sees a validation
episode. Episodes are identified by their recording's header (``created``, ``env_id``,
``agent``) and episode number, so a folder read whole or shard by shard splits the same.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from worldsim.recording import (
    UNPACK_LIMITS,
    UNPACKB_LIMITS,
    Record,
    RecordingError,
    check_compatible,
    parse_record,
    read_header,
    recording_files,
    scan_file,
)
from worldsim.shard_index import INDEX_NAME, FileIndex, load_index
from worldsim.spaces import ActionSpec

_STALE = f"the file changed since it was indexed (in a shard folder, delete {INDEX_NAME} to rescan)"
"""What a record that no longer matches its index means, and the way out."""

MAX_OPEN_MAPS = 64
"""Files a dataset keeps memory-mapped at once; the one read longest ago is closed first.
Each map holds a file descriptor (Python's ``mmap`` keeps a duplicate of the file's), so a map
per shard kept for good ran out of them: at the usual limit of 1,024 (256 on macOS), a
recording of a few hundred shards read by a train and a validation split failed with
"Too many open files". Reopening a map costs microseconds against the milliseconds of a
frame's PNG."""

REWARD_LIMIT = 1e18
"""The largest reward magnitude training takes: the reward loss squares errors in float32,
whose range ends at 3.4e38, so a reward near 1.8e19 already makes it inf."""


def training_reward(rec: Any) -> float:
    """A step record's reward, refused when its size would overflow training's float32
    reward loss (a reward of 1e20 made it inf and the run trained on).

    Raises:
        RecordingError: naming the file and the record's byte offset.
    """
    if abs(rec.reward) > REWARD_LIMIT:
        raise RecordingError(
            f"{rec.file}: byte {rec.offset}: reward {rec.reward!r} is beyond the ±{REWARD_LIMIT:g} training takes "
            "(its float32 loss would overflow); scale the env's rewards down"
        )
    return rec.reward


@dataclass
class Window:
    """T consecutive frames of one episode and the steps between them.

    ``sample`` returns the same fields with a leading batch axis B.
    """

    frames: np.ndarray
    """uint8 [T, H, W, 3]."""
    actions: np.ndarray
    """int64 [T-1, C]: actions[i] led from frames[i] to frames[i+1]."""
    rewards: np.ndarray
    """float32 [T-1]: the reward of the step that produced frames[i+1]."""
    terminated: np.ndarray
    """bool [T-1]: whether the step that produced frames[i+1] ended the episode."""


@dataclass(frozen=True)
class EpisodeKey:
    """Identity of one recorded episode, independent of where its shards lie."""

    created: str
    env_id: str
    agent: str
    episode: int

    def score(self, seed: int) -> int:
        """A stable pseudo-random number per (episode, seed), for the split."""
        text = f"{seed}|{self.created}|{self.env_id}|{self.agent}|{self.episode}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _collect(paths: Sequence[str | Path]) -> list[tuple[Path, dict[str, Any], FileIndex]]:
    """(file, header, index entry) for every file of every path, scanning what no index covers."""
    out = []
    for path in paths:
        path = Path(path)
        files = recording_files(path)
        index = load_index(path) if path.is_dir() else {}
        for file in files:
            entry = index.get(file.name)
            if entry is not None and entry.size <= file.stat().st_size:
                out.append((file, read_header(file), entry))
            else:
                header, entry = scan_file(file, file.name)
                out.append((file, header, entry))
    return out


def indexed_steps(folder: str | Path, episode: int, t: int, length: int) -> tuple[list[Record], int]:
    """The last ``length`` records of ``episode`` in a shard folder up to step ``t``, read by offset.

    The folder's ``index.json`` says where they lie (shards it does not cover are scanned), so
    only these records are read: a dream reset from step ``t`` of a late episode used to parse
    every record before it, 200,000 of them for a prompt of 16 frames. The records are
    consecutive steps ending at ``t``; a gap in the episode's steps (a lost shard) ends them.

    Returns:
        The records in step order (empty when the episode has no step ``t``), and the
        episode's last step among the shards read (all of them when step ``t`` is missing;
        -1 when the episode is not there).

    Raises:
        RecordingError: if a shard is corrupt, or no longer matches the index.
    """
    files = recording_files(folder)
    index = load_index(Path(folder))
    first_header = read_header(files[0])
    spec = ActionSpec.from_dict(first_header["action_space"])
    lo = max(0, t - length + 1)
    where: dict[int, tuple[int, int]] = {}  # step -> (file number, byte offset)
    last = -1
    for fid, file in enumerate(files):
        if len(where) == t - lo + 1:
            # Every step the prompt needs is found: an episode's later shards hold only later
            # steps, so scanning the shards an index lacks (all of them after a killed
            # multi-worker run) would only cost time, 0.3 s for 40,000 records.
            break
        entry = index.get(file.name)
        if entry is None or entry.size > file.stat().st_size:  # not indexed (yet): scanned, as _collect does
            entry = scan_file(file, file.name)[1]
        for seg in entry.segments:
            if seg.episode != episode:
                continue
            last = max(last, seg.next_t - 1)
            for step in range(max(lo, seg.first_t), min(t + 1, seg.next_t)):
                where.setdefault(step, (fid, seg.offsets[step - seg.first_t]))
    steps = []
    for step in range(t, lo - 1, -1):
        if step not in where:
            break
        steps.append(step)
    records = []
    headers: dict[int, dict[str, Any]] = {}  # of the few shards read, not of all
    for step in reversed(steps):
        fid, off = where[step]
        file = files[fid]
        header = headers.get(fid) or headers.setdefault(fid, read_header(file))
        check_compatible(first_header, header, file)
        with open(file, "rb") as f:
            f.seek(off)
            try:
                obj = next(msgpack.Unpacker(f, read_size=1 << 14, **UNPACK_LIMITS))
            except Exception as e:  # cut short, or not msgpack there: the shard changed under the index
                raise RecordingError(f"{file}: record at byte {off}: not msgpack: {e!r}; {_STALE}?") from None
        rec = parse_record(obj, spec, file, None, off)
        if (rec.episode, rec.t) != (episode, step):
            raise RecordingError(
                f"{file}: byte {off}: expected episode {episode} step {step}, found episode {rec.episode} "
                f"step {rec.t}: {_STALE}"
            )
        rec.frame_shape = tuple(header["observation_shape"][:2])
        records.append(rec)
    return records, last


class WindowDataset:
    """Windows of ``window`` consecutive frames inside one episode, read on demand.

    Args:
        paths: recording files and/or shard folders.
        window: frames per window (T); at least 1.
        split: ``"train"``, ``"val"`` or None for every episode.
        val_fraction: share of episodes held out for ``"val"`` (at least one when there
            are two or more episodes and the fraction is positive).
        seed: chooses which episodes are held out.

    Raises:
        RecordingError: if a file is corrupt or the recordings disagree on frame size or
            action space.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        window: int,
        *,
        split: str | None = None,
        val_fraction: float = 0.05,
        seed: int = 0,
    ) -> None:
        if isinstance(paths, (str, Path)):
            paths = [paths]
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if split not in (None, "train", "val"):
            raise ValueError(f"split must be 'train', 'val' or None, got {split!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if not paths:
            raise RecordingError("no recordings given")
        self.window = window
        collected = _collect(paths)
        self.header = collected[0][1]
        for file, header, _ in collected[1:]:
            check_compatible(self.header, header, file)
        self.action_spec = ActionSpec.from_dict(self.header["action_space"])
        self.observation_shape: tuple[int, int, int] = tuple(self.header["observation_shape"])  # type: ignore[assignment]
        self._files = [str(f) for f, _, _ in collected]
        self._maps: OrderedDict[int, mmap.mmap] = OrderedDict()  # at most MAX_OPEN_MAPS, least recently read first
        self._maps_lock = threading.Lock()  # threads reading at once: one must not close the map another reads
        self._pid = os.getpid()

        # Every record's end is the next record's start in the same file (all records hold
        # a frame, so all are indexed), or the valid size for the last one.
        sorted_offs: list[np.ndarray] = []
        sorted_ends: list[np.ndarray] = []
        pieces: dict[EpisodeKey, list[tuple[int, int, np.ndarray]]] = {}
        for fid, (_, header, entry) in enumerate(collected):
            segs = [np.frombuffer(s.offsets, dtype=np.int64) for s in entry.segments]  # views, no copies
            offs = np.sort(np.concatenate(segs)) if segs else np.zeros(0, np.int64)
            sorted_offs.append(offs)
            sorted_ends.append(np.append(offs[1:], np.int64(entry.size)))
            for s, seg in zip(entry.segments, segs):
                key = EpisodeKey(header["created"], header["env_id"], header["agent"], s.episode)
                pieces.setdefault(key, []).append((s.first_t, fid, seg))

        keys = sorted(pieces, key=lambda k: (k.score(seed), k.created, k.episode))
        n_val = (
            max(1, round(val_fraction * len(keys))) if len(keys) >= 2 and val_fraction > 0 else 0
        )
        chosen = {None: keys, "val": keys[:n_val], "train": keys[n_val:]}[split]
        self.episodes: list[EpisodeKey] = sorted(chosen, key=lambda k: (k.created, k.episode))
        """The episodes in this split."""

        # Built from numpy pieces, one per segment: per-record Python lists of ints cost about
        # 150 bytes a frame while opening (1.5 GB for 10 million frames), for 28 kept.
        off_parts: list[np.ndarray] = []
        end_parts: list[np.ndarray] = []
        seg_fid: list[int] = []
        seg_t: list[int] = []  # step number of each segment's first record
        seg_len: list[int] = []
        run_start: list[int] = []  # first record of each contiguous run of steps
        run_len: list[int] = []
        total = 0
        episode_first: list[int] = []  # first record of each episode: they lie one after another
        for key in self.episodes:
            episode_first.append(total)
            prev_next_t = None
            for first_t, fid, offsets in sorted(pieces[key], key=lambda p: p[:2]):
                n = len(offsets)
                if first_t != prev_next_t:  # a new run unless it continues the previous one
                    run_start.append(total)
                    run_len.append(0)
                off_parts.append(offsets)
                end_parts.append(sorted_ends[fid][np.searchsorted(sorted_offs[fid], offsets)])
                seg_fid.append(fid)
                seg_t.append(first_t)
                seg_len.append(n)
                run_len[-1] += n
                total += n
                prev_next_t = first_t + n
        del sorted_offs, sorted_ends, pieces
        self._episode_first = np.asarray(episode_first + [total], dtype=np.int64)
        lens = np.asarray(seg_len, dtype=np.int64)
        self._rec_file = np.repeat(np.asarray(seg_fid, dtype=np.int32), lens)
        self._rec_off = np.concatenate(off_parts) if off_parts else np.zeros(0, np.int64)
        self._rec_end = np.concatenate(end_parts) if end_parts else np.zeros(0, np.int64)
        del off_parts, end_parts
        # Record i of a segment that starts at record s with step t0 is step t0 + (i - s).
        seg_first = np.cumsum(lens) - lens
        self._rec_t = np.repeat(np.asarray(seg_t, dtype=np.int64) - seg_first, lens) + np.arange(total, dtype=np.int64)
        starts = np.asarray(run_start, dtype=np.int64)
        lengths = np.asarray(run_len, dtype=np.int64)
        keep = lengths >= window
        self._run_start = starts[keep]
        self._cum = np.cumsum(lengths[keep] - window + 1)  # window starts up to each run

    @property
    def num_frames(self) -> int:
        """Frames (records) in this split."""
        return len(self._rec_off)

    def fingerprint(self) -> str:
        """A hex digest that changes when the frames this dataset yields could change.

        It covers each file's resolved path, size and modification time, and the exact
        records of this split in order (file and offset). A cache keyed by it is reused only
        for the same recordings, split and seed.
        """
        h = hashlib.sha256()
        for f in self._files:
            st = os.stat(f)
            h.update(f"{Path(f).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        h.update(self._rec_file.tobytes())
        h.update(self._rec_off.tobytes())
        return h.hexdigest()

    def __len__(self) -> int:
        return int(self._cum[-1]) if len(self._cum) else 0

    def _read(self, fid: int, off: int, end: int) -> bytes:
        """Bytes ``off:end`` of file ``fid``, from its memory map (opened if needed)."""
        if self._pid != os.getpid():  # a forked DataLoader worker: open its own maps
            self._maps, self._maps_lock, self._pid = OrderedDict(), threading.Lock(), os.getpid()
        # Under the lock, since a map is closed when it falls out of the LRU: a thread that
        # read a map another had just closed got "mmap closed or invalid" (or a KeyError from
        # the LRU's order), reported as a file changed since it was indexed.
        with self._maps_lock:
            m = self._maps.get(fid)
            if m is not None:
                self._maps.move_to_end(fid)
            else:
                while len(self._maps) >= MAX_OPEN_MAPS:
                    self._maps.popitem(last=False)[1].close()  # no view of it is left: records are read as copies
                with open(self._files[fid], "rb") as f:
                    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                self._maps[fid] = m
            return m[off:end]

    def episode_records(self, k: int) -> range:
        """The record numbers of ``self.episodes[k]``'s frames, in step order (for
        :meth:`record`): a reader of one episode need not read the others' records."""
        return range(int(self._episode_first[k]), int(self._episode_first[k + 1]))

    def record_range(self, i: int) -> tuple[int, int]:
        """The global record numbers [first, last) that window ``i`` reads."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"window {i} out of range for {n} windows")
        run = int(np.searchsorted(self._cum, i, side="right"))
        first = int(self._run_start[run]) + i - (int(self._cum[run - 1]) if run else 0)
        return first, first + self.window

    def record(self, r: int) -> Record:
        """Record ``r`` of this split, counting frames in episode order then step order.

        Raises:
            RecordingError: if the file no longer matches its index, or is corrupt there.
        """
        fid, off, end = int(self._rec_file[r]), int(self._rec_off[r]), int(self._rec_end[r])
        file = self._files[fid]
        try:
            obj = msgpack.unpackb(self._read(fid, off, end), **UNPACKB_LIMITS)
        except OSError as e:  # gone, unreadable, or no file descriptor left: not a changed file
            raise RecordingError(f"{file}: cannot read it: {e.strerror or e}") from None
        except Exception as e:  # any unpack failure means the file changed under the index
            raise RecordingError(f"{file}: record at byte {off}: not msgpack: {e!r}; {_STALE}?") from None
        rec = parse_record(obj, self.action_spec, file, None, off)
        if rec.t != self._rec_t[r]:
            raise RecordingError(
                f"{file}: byte {off}: expected step {self._rec_t[r]}, found {rec.t}: {_STALE}"
            )
        rec.end = end
        return rec

    def __getitem__(self, i: int) -> Window:
        first, last = self.record_range(i)
        t_len = last - first
        h, w, _ = self.observation_shape
        frames = np.empty((t_len, h, w, 3), dtype=np.uint8)
        actions = np.zeros((t_len - 1, self.action_spec.num_components), dtype=np.int64)
        rewards = np.zeros(t_len - 1, dtype=np.float32)
        terminated = np.zeros(t_len - 1, dtype=bool)
        for j, r in enumerate(range(first, last)):
            rec = self.record(r)
            frames[j] = rec.image((h, w))
            if j:
                if rec.kind != "step":
                    raise RecordingError(
                        f"{rec.file}: byte {rec.offset}: a reset record inside an episode"
                    )
                actions[j - 1] = rec.action
                rewards[j - 1] = training_reward(rec)
                terminated[j - 1] = rec.terminated
        return Window(frames, actions, rewards, terminated)

    def sample(self, rng: np.random.Generator, batch: int) -> Window:
        """``batch`` windows drawn uniformly over all window starts, stacked on axis 0.

        Raises:
            RecordingError: if the split holds no window of this length.
        """
        if len(self) == 0:
            raise RecordingError(f"no episode in this split has {self.window} frames")
        items = [self[int(i)] for i in rng.integers(0, len(self), size=batch)]
        return Window(
            frames=np.stack([w.frames for w in items]),  # [B, T, H, W, 3]
            actions=np.stack([w.actions for w in items]),  # [B, T-1, C]
            rewards=np.stack([w.rewards for w in items]),  # [B, T-1]
            terminated=np.stack([w.terminated for w in items]),  # [B, T-1]
        )

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps cannot cross processes; each process reopens its own.
        state = dict(self.__dict__)
        state["_maps"] = OrderedDict()
        del state["_maps_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._maps_lock = threading.Lock()
