"""Settings shared by the whole suite."""

import contextlib
import os
import signal
from collections.abc import Callable, Iterator

import pytest
import torch

# The suite never opens a window: Gymnasium's check_env tries every render mode, "human" too,
# and on a desktop that would flash windows, on a server fail. `make test` sets these as well;
# this covers a bare `pytest`. Tests of the no-display error unset them themselves.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread for the whole suite.

    The tests run tiny models, whose per-op cost is dominated by thread synchronisation: on
    a 2-core machine that is doing anything else, a second OpenMP thread mostly spins, and
    a tiny-model step took ~1 s on two threads against ~14 ms on one. One thread also makes
    float sums reproducible bit for bit, as the resume test needs: bf16 kernels sum in another
    order on two threads. It is set again for every test, because the CLI entry points that
    tests call in-process (``--threads``) change torch's process-wide setting.
    """
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)  # also for the module fixtures that the next test sets up


@pytest.fixture
def full_disk() -> Callable[[int], contextlib.AbstractContextManager]:
    """``with full_disk(n):`` makes this process's writes past ``n`` bytes of a file fail, as on
    a full disk (EFBIG, where a full disk gives ENOSPC), without root or a small file system."""
    resource = pytest.importorskip("resource")  # POSIX

    @contextlib.contextmanager
    def limit(nbytes: int) -> Iterator[None]:
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, previous)

    return limit
