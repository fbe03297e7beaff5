"""Files written whole or not at all: a temporary file beside the target, then ``os.replace``.

A kill mid-write leaves the old file (or none), never half of the new one. Torch-free, so
the recording side can use it too.

The temporary file is ``.NAME.PID@HOST.RANDOM8.tmp`` (RANDOM8: ``tempfile``'s eight random
characters; a long NAME shortened; :func:`temp_prefix`). The ONNX export names its temporary
folders so too. A SIGKILL (or a power cut) during a write leaves it
behind, and each such kill of a checkpoint save left another one, tens of MB each; the next
write of the same name removes those whose process is gone (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

STALE_SECONDS = 60.0
"""A temporary file left unmodified this long, by a process of this host that is gone, is
stale. The age guards against a PID this host cannot see (a writer in another PID namespace
that shares the host name): it is removed only if it also stopped writing a minute ago."""


def _host() -> str:
    """This host's name for temporary names: kept whole in meaning, so two hosts whose names
    share a long prefix (a deployment's pods) never read as one."""
    name = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"
    if len(name) <= 32:
        return name
    return f"{name[:23]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _last_written(path: Path) -> float:
    """When ``path`` was last written: for a folder, the newest time of anything in it (a
    folder's own time changes only when an entry is added, removed or renamed, not while a
    file in it is written)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):  # removed meanwhile: its writer is still at work
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def _stem(path: Path) -> str:
    """``path``'s name as its temporary names carry it: whole, or for a long name its start and
    a hash of it, so that the temporary name stays within the file system's 255 bytes."""
    name = path.name
    if len(name.encode()) <= 150:
        return name
    return f"{name.encode()[:120].decode(errors='ignore')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


_ISSUED: set[str] = set()
"""The prefixes :func:`temp_prefix` gave out in this process: a temporary name that carries this
process's id under a prefix it never gave out was made by an earlier process of the same id,
such as a container's PID 1 before the container restarted."""


def temp_prefix(path: str | os.PathLike) -> str:
    """The name prefix of a temporary file or folder that stands in for ``path`` while it is
    written (``tempfile``'s ``prefix``; give it ``suffix=".tmp"``): it names this process and
    host, so that :func:`remove_stale_temps` can tell a killed write's leftover from a live one."""
    prefix = f".{_stem(Path(path))}.{os.getpid()}@{_host()}."
    _ISSUED.add(prefix)
    return prefix


def remove_stale_temps(path: str | os.PathLike, folder: str | os.PathLike | None = None) -> list[Path]:
    """Remove the temporary files (or folders) that writes of ``path`` killed mid-way left in
    ``folder`` (default: beside ``path``).

    Only names of :func:`temp_prefix`'s pattern for this very name are touched, and of those
    only ones made on this host by a process that no longer exists (under this process's own
    id, one that this process did not make: a container restarted as PID 1 finds its earlier
    self's) and left unmodified for :data:`STALE_SECONDS`: never a write still in progress. Returns what was removed; one
    that cannot be checked or removed is left as it is.
    """
    if os.name == "nt":  # os.kill(pid, 0) would end the process there, not test it
        return []
    path = Path(path)
    folder = path.parent if folder is None else Path(folder)
    # tempfile's 8 characters, then .tmp and the suffix kept (atomic_write's keep_suffix)
    ours = re.compile(re.escape(f".{_stem(path)}.") + r"(\d+)@(.+)\.[a-z0-9_]{8}\.tmp" + f"({re.escape(path.suffix)})?")
    host, now, removed = _host(), time.time(), []
    try:
        found = list(folder.glob(glob.escape(f".{_stem(path)}.") + "*.tmp*"))
    except OSError:  # a folder that cannot be listed: the write itself will say what is wrong
        return []
    for tmp in found:
        m = ours.fullmatch(tmp.name)
        if m is None or m[2] != host:
            continue
        pid = int(m[1])
        mine = pid == os.getpid() and f".{_stem(path)}.{pid}@{host}." in _ISSUED
        if mine or (pid != os.getpid() and _alive(pid)):  # a write in progress, here or in a live process
            continue
        try:
            if tmp.is_symlink() or now - _last_written(tmp) < STALE_SECONDS:
                continue
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        except OSError:
            continue
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or not a PID: not ours to judge
    return True


def new_file_mode() -> int:
    """The permissions ``open()`` gives a new file under the process's umask (0o644 under the
    usual 022). ``tempfile.mkstemp`` makes its files 0o600, private to their owner, which is
    right for a scratch file but not for a checkpoint others should be able to read."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def naming(path: str | os.PathLike, *stand_ins: str) -> Iterator[None]:
    """Make an ``OSError`` of the ``with`` body name ``path`` where it names no file, or only
    one of ``stand_ins`` (a temporary file the user never chose); a copy's error, which names
    its source then a stand-in, names its source then ``path``.

    A write the disk refuses (full: ``ENOSPC``) raises an error that names no file, and the
    CLI then said only "No space left on device", not which of a command's outputs it was.
    """
    try:
        yield
    except OSError as e:
        if e.errno is None:
            raise
        if e.filename2 is not None and os.fsdecode(e.filename2) in stand_ins:
            # shutil.copyfile's error on a full disk names the source first and the file it
            # wrote second: "...: 'model.safetensors' -> '.model.safetensors.123@host.tmp'".
            raise OSError(e.errno, e.strerror, e.filename, None, str(path)) from e
        if e.filename is not None and os.fsdecode(e.filename) not in stand_ins:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], keep_suffix: bool = False) -> None:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then rename it to ``path``.

    The folder is made if needed; the temporary file is removed if anything fails, and the
    ones earlier writes of ``path`` left when they were killed are removed first. With
    ``keep_suffix`` the temporary file ends in ``path``'s suffix too (``.tmp.mp4``), for
    writers that pick the format by it. A ``path`` that is a symbolic link gets its target
    written, and the link stays.

    Raises:
        OSError: the file system refused the write (a full disk: ``ENOSPC``), naming ``path``.
    """
    path = Path(path)
    if path.is_symlink():  # write through the link, as open() would, rather than replace it with a file
        path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    suffix = ".tmp" + (path.suffix if keep_suffix else "")
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        with naming(path, tmp):
            write(tmp)
            os.chmod(tmp, new_file_mode())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file whole or not at all."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_copy(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy ``src`` to ``dest`` whole or not at all."""
    atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))


class LockBusy(Exception):
    """Another process holds the lock; ``holder`` is the process id it wrote, or "unknown", and
    ``what`` the label it wrote after it ("" if none)."""

    def __init__(self, holder: str, what: str = "") -> None:
        super().__init__(holder)
        self.holder = holder
        self.what = what


@contextlib.contextmanager
def exclusive_lock(
    path: str | os.PathLike, note: Callable[[str], None], remove: bool = False, label: str = ""
) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (made if missing) for the ``with`` body.

    The operating system drops the lock when its process ends, however it ends, so a kill
    leaves none behind. The holder writes its process id into the file, and ``label`` (what it
    is, such as ``worldsim record``) on the next line, for the message of the one refused.
    With ``remove`` the file is deleted before the lock is released: a process that opened
    it just before then finds, once it holds the lock, that the path now names another file
    (or none) and starts over, so two processes never both hold it.

    Where there are no locks (Windows, with no ``fcntl``) the body runs unlocked; where the
    file system takes none (NFS without its lock daemon: "No locks available") ``note`` is
    told why and the body runs unlocked too.

    Raises:
        LockBusy: another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    path = Path(path)
    while True:
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                unlockable = None
            except BlockingIOError:
                f.seek(0)
                holder, _, what = f.read().strip().partition("\n")
                raise LockBusy(holder.strip() or "unknown", what.strip()) from None
            except OSError as e:
                unlockable = e.strerror or str(e)
            if unlockable is not None:
                note(unlockable)
                try:
                    yield
                finally:
                    if remove:  # as a locked run does: a file per run would be left beside each output
                        with contextlib.suppress(OSError):
                            path.unlink()
                return
            try:
                same = os.path.samestat(os.fstat(f.fileno()), os.stat(path))
            except FileNotFoundError:
                same = False
            if not same:  # removed (and maybe made again) by the holder we waited on: start over
                continue
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n{label}\n" if label else f"{os.getpid()}\n")
            f.flush()
            try:
                yield
            finally:
                if remove:
                    with contextlib.suppress(OSError):
                        path.unlink()
            return


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold a lock on a command's ``--out`` (a file or folder) while it writes there.

    Two runs into one ``--out`` (a sweep's commands given the same folder, or a run started
    again while the first still runs) both passed their checks, wrote into it at once and
    exited 0, leaving files of both. The lock file ``.NAME.lock`` beside ``out`` is removed
    when the run ends; a kill leaves a file but no lock (:func:`exclusive_lock`; on Windows,
    with no such locks, none is taken). Where that file cannot be made (``out``'s parent is
    read-only, as a home folder's often is for ``--out .``, or ``out`` is ``/``) or the file
    system takes no locks, a note says so and the command runs unlocked.

    Raises:
        WorldSimError: another process holds the lock.
    """
    from worldsim.errors import WorldSimError

    out = Path(out).resolve()  # "." has no name to put beside it; two spellings of one path share a lock

    def note(why: str) -> None:
        print(f"worldsim {command}: note: {why}, so nothing stops a second run writing {out}; start only one",
              file=sys.stderr)  # fmt: skip

    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if not out.name:
            note(f"{out} has no folder beside it for a lock file")
        else:
            lock = out.with_name(f".{out.name}.lock")
            try:
                stack.enter_context(exclusive_lock(
                    lock, lambda why: note(f"{out.parent} takes no file locks ({why})"), remove=True,
                    label=f"worldsim {command}",
                ))  # fmt: skip
            except LockBusy as e:
                what = f"`{e.what}`" if e.what else "WorldSim run"  # the other command, as its lock file says
                raise WorldSimError(f"{out} is being written by another {what} (process {e.holder}); let it "
                                    "finish or stop it, or choose another --out") from None  # fmt: skip
            except OSError as e:  # a read-only parent: the command itself writes only inside out
                note(f"cannot make the lock file {lock} ({e.strerror or e})")
        yield


LOCK_POLL_SECONDS = 1.0
"""How often :func:`turn_to_fill` checks whether the process it waits for is done."""

WAIT_REMINDER_SECONDS = 600.0
"""How often :func:`turn_to_fill` says again that it still waits (a log that said so once and
then nothing for an hour read as a hung run)."""


def turn_to_fill(entry: str | os.PathLike, wait: Callable[[str], None]) -> contextlib.AbstractContextManager:
    """The lock on filling the cache entry ``entry``, once no other process holds it.

    For caches that two processes would otherwise fill at once with the same minutes of work
    (the eval's IDM, training's encoded codes): hold it, look in the cache again (the process
    waited for has filled it), and fill it only if it is still empty. ``wait`` is told, with
    the holder's process id, when another process holds it, and again when another process
    takes it over or every :data:`WAIT_REMINDER_SECONDS` it goes on waiting: there is no time
    limit, since filling may take long, so a holder that hangs (stopped with Ctrl-Z, say) is
    waited for until it is stopped. A holder that dies takes the lock with it. Where the
    folder cannot be made or takes no locks, it returns at once, unlocked: the work is then
    done twice at worst, as it was.
    """
    entry = Path(entry)
    lock = entry.with_name(f".{entry.name}.lock")
    told: tuple[str, float] | None = None  # the holder last told of, and when
    while True:
        stack = contextlib.ExitStack()
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(exclusive_lock(lock, lambda why: None, remove=True))
        except LockBusy as e:
            now = time.monotonic()
            if told is None or told[0] != e.holder or now - told[1] >= WAIT_REMINDER_SECONDS:
                wait(e.holder)
                told = (e.holder, now)
            time.sleep(LOCK_POLL_SECONDS)
            continue
        except OSError:  # an unwritable cache: nothing to share (writing it says so)
            return contextlib.nullcontext()
        return stack
