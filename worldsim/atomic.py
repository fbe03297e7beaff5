"""Files written whole or not at all: a temporary file beside the target, then ``os.replace``.

A kill mid-write leaves the old file (or none), never half of the new one. Torch-free, so
the recording side can use it too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def new_file_mode() -> int:
    """The permissions ``open()`` gives a new file under the process's umask (0o644 under the
    usual 022). ``tempfile.mkstemp`` makes its files 0o600, private to their owner, which is
    right for a scratch file but not for a checkpoint others should be able to read."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then rename it to ``path``.

    The folder is made if needed; the temporary file is removed if anything fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
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
