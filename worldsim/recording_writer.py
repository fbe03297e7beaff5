"""Writing recordings: one file, or a folder of shards with an index, flushed record by record.

Each record is packed into one buffer and handed to the OS with a single unbuffered
``write``. A process killed at any moment therefore leaves every earlier record whole on
disk (the OS keeps written pages even when the process dies), and at most the record in
flight is cut short, which readers report as a truncated tail. A write the disk refuses
(full) raises an ``OSError`` naming the file, which is first cut back to its last whole
record; so is a file whose write Ctrl-C or SIGTERM interrupts. ``index.json`` is replaced
atomically after the 1st, 2nd, 4th, 8th, ... finished shard and at ``close``, so a killed
run keeps a valid index of at least half its finished shards; readers scan any shard the
index does not cover.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import gymnasium as gym
import msgpack
import numpy as np

from worldsim.png import PNG_SIGNATURE, encode_png, png_size
from worldsim.recording import (
    FORMAT,
    FRAME_CODEC,
    MAX_RECORD_BYTES,
    UNPACKB_LIMITS,
    VERSION,
    RecordingError,
    parse_record,
    validate_header,
)
from worldsim.shard_index import SHARD_SUFFIX, FileIndex, IndexBuilder, write_index
from worldsim.spaces import ActionSpec


def _plain(obj: Any) -> Any:
    """msgpack ``default`` hook: numpy scalars and small arrays become plain values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"cannot store a {type(obj).__name__} in a recording")


def pack_readable(obj: Any, what: str) -> bytes:
    """``obj`` packed as the writer packs it, if a reader will accept it.

    Every record is checked against the reader's limits before it is written; the header must
    be too (a long list or a big map in ``env_kwargs``, say), or a whole run would be recorded
    that no reader opens.

    Raises:
        RecordingError: naming ``what``, if ``obj`` cannot be packed or a reader would refuse it.
    """
    try:
        buf = msgpack.packb(obj, default=_plain, use_bin_type=True)
    except (TypeError, ValueError) as e:
        raise RecordingError(f"{what} cannot be stored as msgpack: {e}") from None
    try:
        if len(buf) > MAX_RECORD_BYTES:
            raise ValueError(f"{len(buf):,} bytes, over {MAX_RECORD_BYTES:,}")
        msgpack.unpackb(buf, **UNPACKB_LIMITS)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise RecordingError(f"a reader would refuse {what} ({e}), so nothing was written") from None
    return buf


def now_iso() -> str:
    """The current UTC time in ISO 8601, as the header's ``created`` holds it.

    To the microsecond: with the env id, the agent and the episode index it is an episode's
    identity when recordings are combined (:class:`worldsim.data.WindowDataset`), so two
    runs of the same env and agent started within one second must not share it."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class RecordingWriter:
    """Writes a recording file, or a folder of shards plus ``index.json``.

    Use it as a context manager; ``close`` finishes the last shard and the index::

        with RecordingWriter("run.msgpack", env_id="CartPole-v1", env_kwargs={},
                             observation_shape=(64, 64, 3), action_space=env.action_space,
                             agent="random") as w:
            w.reset(episode=0, seed=0, frame=obs)
            w.step(episode=0, t=1, action=a, reward=r, terminated=False,
                   truncated=False, frame=obs2)

    Args:
        path: the file to write, or the folder for shards when ``shard_records`` is set.
        env_id: Gymnasium id of the env recorded.
        env_kwargs: keyword arguments the env was made with (msgpack-serialisable).
        observation_shape: ``(H, W, 3)`` of every frame.
        action_space: a Gymnasium ``Discrete``/``MultiDiscrete``, an ActionSpec or its dict.
        agent: name of what chose the actions.
        seed: base seed of the run, stored in the header (optional).
        shard_records: records per shard; None writes the single file ``path``.
        shard_prefix: shard file names are ``{shard_prefix}{number:05d}.msgpack``.
        write_index: keep ``index.json`` up to date (off for parallel workers whose parent
            merges their :attr:`file_indexes`).
        overwrite: replace files of the same names instead of refusing.
        created: ISO 8601 creation time for the header; now by default.
        extra_header: more header keys (must not shadow the required ones).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        env_id: str,
        env_kwargs: dict[str, Any],
        observation_shape: tuple[int, ...],
        action_space: gym.Space | ActionSpec | dict[str, Any],
        agent: str,
        seed: int | None = None,
        shard_records: int | None = None,
        shard_prefix: str = "shard-",
        write_index: bool = True,
        overwrite: bool = False,
        created: str | None = None,
        extra_header: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(action_space, ActionSpec):
            self.action_spec = action_space
        elif isinstance(action_space, dict):
            self.action_spec = ActionSpec.from_dict(action_space)
        else:
            self.action_spec = ActionSpec.from_space(action_space)
        header: dict[str, Any] = dict(extra_header or {})
        header.update(
            format=FORMAT,
            version=VERSION,
            env_id=str(env_id),
            env_kwargs=dict(env_kwargs),
            observation_shape=[int(s) for s in observation_shape],
            action_space=self.action_spec.to_dict(),
            frame_codec=FRAME_CODEC,
            agent=str(agent),
            created=created or now_iso(),
            seed=seed,
        )
        self._packer = msgpack.Packer(default=_plain, use_bin_type=True)
        self._header_bytes = pack_readable(header, f"{path}: this header")
        self.header = validate_header(header, path)
        self._hw = tuple(self.header["observation_shape"][:2])
        if shard_records is not None and shard_records < 1:
            raise RecordingError(f"shard_records must be >= 1, got {shard_records}")
        self.path = Path(path)
        self.shard_records = shard_records
        self.shard_prefix = shard_prefix
        self.write_index = write_index and shard_records is not None
        self.overwrite = overwrite
        self.file_indexes: list[FileIndex] = []
        """Index entries of the finished files (all of them after :meth:`close`)."""
        self._indexed = 0  # finished files that index.json lists
        self.records_written = 0
        self.steps_written = 0
        self.frame_bytes = 0
        """Total PNG bytes of all frames written (for bytes-per-frame figures)."""
        self.bytes_written = 0
        self._file: Any = None
        self._builder: IndexBuilder | None = None
        self._pos = 0
        self._shard_number = 0
        if shard_records is not None:
            self.path.mkdir(parents=True, exist_ok=True)
        self._open_next()

    # -- files --------------------------------------------------------------------------

    def _open_next(self) -> None:
        if self.shard_records is None:
            target, name = self.path, str(self.path)
        else:
            name = f"{self.shard_prefix}{self._shard_number:05d}{SHARD_SUFFIX}"
            target = self.path / name
            self._shard_number += 1
        # "x" checks and creates in one step: of two writers racing for one path, one gets a
        # RecordingError instead of both writing into the same file.
        try:
            # Unbuffered: a write the disk refuses is then never retried from a buffer at close,
            # which made the close fail again and could add the cut record's rest later.
            self._file = open(target, "wb" if self.overwrite else "xb", buffering=0)  # noqa: SIM115  (closed in _finish_file)
        except FileExistsError:
            raise RecordingError(f"{target}: already exists; choose another path or overwrite") from None
        self._builder = IndexBuilder(name)
        self._pos = 0
        self._write(self._header_bytes)

    def _write(self, buf: bytes) -> None:
        # One write per record, straight to the OS: a killed process loses at most this record.
        view = memoryview(buf)
        try:
            while view:
                view = view[self._file.write(view):]  # a short write (the disk filling up) goes on
        except OSError as e:
            name = self._file.name
            self._stop_at_last_record()
            # The OS's error names no file: say which, so that "No space left on device" can be acted on.
            raise OSError(e.errno, e.strerror, e.filename or name) from e
        except KeyboardInterrupt:
            # Ctrl-C (or SIGTERM, raised as one by the CLI) between two writes of a short-write
            # loop (a pipe, a network file system) would leave part of this record at the end.
            self._stop_at_last_record()
            raise
        self._pos += len(buf)
        self.bytes_written += len(buf)

    def _stop_at_last_record(self) -> None:
        """After a write the disk refused (full: ENOSPC) or an interrupt cut short, cut the
        file back to its last whole record and finish it, so that it reads back whole, with
        every record written before, and no later record can follow a half one. Best effort:
        the disk may be in trouble."""
        regular = stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)  # never unlink a device or a pipe
        with contextlib.suppress(OSError):
            self._file.truncate(self._pos)
        with contextlib.suppress(OSError):
            self._file.close()
        if self._pos == 0 and regular:  # not even its header: a file that holds nothing goes
            with contextlib.suppress(OSError):
                Path(self._file.name).unlink()
        else:
            assert self._builder is not None
            self.file_indexes.append(self._builder.build())
        self._file = None

    def _finish_file(self, last: bool = False) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            assert self._builder is not None
            self.file_indexes.append(self._builder.build())
        n = len(self.file_indexes)
        # The index lists every record, so rewriting it after every shard costs O(shards^2)
        # over a run (1M steps in 4096-record shards: 245 rewrites, up to 8 MB each, about
        # 1 GB in all). At powers of two the total is linear, and a killed run's index still
        # covers at least half its finished shards.
        if self.write_index and n != self._indexed and (last or n & (n - 1) == 0):
            write_index(self.path, self.header, self.file_indexes)
            self._indexed = n

    # -- records ------------------------------------------------------------------------

    def _frame_bytes(self, frame: np.ndarray | bytes) -> bytes:
        if isinstance(frame, bytes):
            if not frame.startswith(PNG_SIGNATURE) or png_size(frame) != self._hw:
                raise RecordingError(f"frame bytes must be a {self._hw} PNG")
            return frame
        frame = np.asarray(frame)
        if frame.shape != tuple(self.header["observation_shape"]) or frame.dtype != np.uint8:
            raise RecordingError(
                f"frame must be uint8 {self.header['observation_shape']}, got {frame.dtype} {frame.shape}"
            )
        return encode_png(frame)

    def _record(
        self, episode: int, t: int, rec: dict[str, Any], info: dict[str, Any] | None
    ) -> None:
        if self._file is None:
            raise RecordingError(f"{self.path}: writer is closed")
        if (
            self.shard_records is not None
            and self._builder is not None
            and self._builder.records >= self.shard_records
        ):
            self._finish_file()
            self._open_next()
        if info is not None:
            if not isinstance(info, Mapping):
                raise RecordingError(
                    f"info must be a map with str keys, as the format promises readers; got "
                    f"{type(info).__name__}, so it was not written"
                )
            rec["info"] = dict(info)
        try:
            buf = self._packer.pack(rec)
        except (TypeError, ValueError) as e:
            raise RecordingError(f"record cannot be stored as msgpack: {e}") from None
        self._check_readable(buf)
        start = self._pos
        self._write(buf)
        assert self._builder is not None
        self._builder.add(episode, t, start, self._pos)
        self.records_written += 1
        self.frame_bytes += len(rec["frame"])

    def _check_readable(self, buf: bytes) -> None:
        """Refuse, before a byte of it is written, a record that the reader would reject (a NaN
        reward, t = 0, an info map too large or keyed by non-strings, ...): one bad record
        would make everything after it in the file unreadable."""
        assert self._builder is not None and self._file is not None
        number = self._builder.records + 1  # numbered as a reader numbers them: the header is record 0
        where = f"{self._file.name}: record {number}"
        if len(buf) > MAX_RECORD_BYTES:
            raise RecordingError(f"{where} would be {len(buf):,} bytes, over the {MAX_RECORD_BYTES:,} a reader accepts; not written")
        try:
            parse_record(msgpack.unpackb(buf, **UNPACKB_LIMITS), self.action_spec, self._file.name, number, self._pos)
        except RecordingError as e:
            raise RecordingError(f"{e}; a reader would refuse it, so it was not written") from None
        except (ValueError, TypeError, msgpack.UnpackException) as e:  # over a reader's size limits
            raise RecordingError(f"{where}: a reader would refuse it ({e}), so it was not written") from None

    def reset(
        self,
        episode: int,
        seed: int | None,
        frame: np.ndarray | bytes,
        info: dict[str, Any] | None = None,
    ) -> None:
        """Write the first frame of ``episode`` (observation after ``env.reset``)."""
        rec = {"kind": "reset", "episode": int(episode), "seed": None if seed is None else int(seed),
               "frame": self._frame_bytes(frame)}  # fmt: skip
        self._record(int(episode), 0, rec, info)

    def step(
        self,
        episode: int,
        t: int,
        action: Any,
        reward: float,
        terminated: bool,
        truncated: bool,
        frame: np.ndarray | bytes,
        info: dict[str, Any] | None = None,
    ) -> None:
        """Write step ``t`` (1, 2, ...) of ``episode``: the action and the frame after it.

        Raises:
            RecordingError: if the action does not fit the action space, or the frame has
                the wrong shape.
        """
        try:
            arr = self.action_spec.as_array(action, ())
        except ValueError as e:
            raise RecordingError(f"episode {episode} step {t}: {e}") from None
        stored: int | list[int] = (
            int(arr[0]) if self.action_spec.kind == "Discrete" else arr.tolist()
        )
        rec = {
            "kind": "step", "episode": int(episode), "t": int(t), "action": stored,
            "reward": float(reward), "terminated": bool(terminated), "truncated": bool(truncated),
            "frame": self._frame_bytes(frame),
        }  # fmt: skip
        self._record(int(episode), int(t), rec, info)
        self.steps_written += 1

    def close(self) -> None:
        """Finish the current file and, for shards, the index. Safe to call twice."""
        self._finish_file(last=True)

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        # Ending on an error (a full disk, say): that error is the one to report, not a second
        # one from writing the index on the same disk. Readers scan shards the index lacks.
        with contextlib.suppress(OSError):
            self.close()
