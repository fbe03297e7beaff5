"""How many CPUs this process may run on, for the defaults that size thread and worker pools,
and the threads a command's ``--threads`` gives its backends."""

from __future__ import annotations

import os

from worldsim.errors import WorldSimError


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity set where the OS has one, else all.

    ``os.cpu_count()`` counts the machine's CPUs. Under ``taskset``, a container's
    ``--cpuset-cpus`` or a job scheduler's CPU binding the process may use only some of
    them, and a pool sized to the machine runs several threads per CPU, each slower than
    one alone.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


ORT_THREADS_ENV = "WORLDSIM_ORT_THREADS"
"""What the ONNX backend's sessions read for their threads (``export.ort_session.THREADS_ENV``;
the core names it itself, as it imports nothing from ``export/``)."""


def set_threads(threads: int | None) -> None:
    """Set the CPU threads of torch and of the ONNX Runtime sessions made from now on (None: leave both).

    ``--threads`` set only torch's in eval, play and bench dream-env, so their ``--backend onnx``
    ran on every core, where ``worldsim bench dream --threads`` set both.
    """
    if threads is None:
        return
    if threads < 1:
        raise WorldSimError(f"--threads must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
    os.environ[ORT_THREADS_ENV] = str(threads)
