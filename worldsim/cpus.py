"""How many CPUs this process may run on, for the defaults that size thread and worker pools."""

from __future__ import annotations

import os


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
