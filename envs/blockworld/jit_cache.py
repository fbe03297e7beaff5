"""Whether numba may keep BlockWorld's compiled kernels on disk.

numba writes a ``cache=True`` kernel beside its source (``__pycache__``) or, where that
folder is read-only, under ``NUMBA_CACHE_DIR`` or the user's cache folder. An install that is
read-only for a user whose home is read-only too (a container's non-root user, a shared
system install) leaves numba nowhere to write, and then ``cache=True`` raises at import.
There the kernels compile in memory in each process instead, as on a first run.
"""

import warnings

from numba import njit


def _probe() -> int:
    return 0


def _cache_folder_found() -> bool:
    # numba looks for a cache folder when a function is decorated, not when it compiles, and
    # it looks by source folder, so this probe beside the kernels answers for all of them.
    try:
        njit(cache=True)(_probe)
    except RuntimeError as e:
        if "no locator available" not in str(e):
            raise
        warnings.warn(
            "numba found no writable folder to cache BlockWorld's kernels in (the install and "
            "the home folder are read-only), so they compile anew in each process (about a "
            "minute); set NUMBA_CACHE_DIR to a writable folder to keep them",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


CACHE = _cache_folder_found()
"""The ``cache=`` of every BlockWorld kernel."""
