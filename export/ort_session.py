"""ONNX Runtime: importing it with a useful error, picking the execution provider, opening graphs.

ONNX Runtime ships as two wheels that install the same ``onnxruntime`` module:
``onnxruntime`` (CPU) and ``onnxruntime-gpu`` (CUDA and CPU). Installing both makes one
overwrite the other, so WorldSim's extras pick one: ``pip install 'worldsim[cpu]'`` or
``pip install 'worldsim[gpu]'``.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from worldsim.errors import WorldSimError

THREADS_ENV = "WORLDSIM_ORT_THREADS"
"""Intra-op threads of every session (unset: ONNX Runtime's default, one per physical core,
or one in a process that ``multiprocessing`` started: :func:`session_threads`). ``--threads N``
(eval, play, the benchmarks) sets it, so both backends run on N threads."""
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
INSTALL_HINT = (
    "pip install onnxruntime  (CPU machines; or pip install 'worldsim[cpu]'), "
    "or pip install onnxruntime-gpu  (NVIDIA GPUs; or pip install 'worldsim[gpu]'), never both"
)


def require_onnxruntime() -> ModuleType:
    """Import ``onnxruntime``, or raise a :class:`WorldSimError` that says how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise WorldSimError(f"the ONNX backend needs ONNX Runtime, which is not installed; run: {INSTALL_HINT}") from None
    return onnxruntime


@dataclass(frozen=True)
class Placement:
    """Where ONNX Runtime runs the graphs."""

    providers: list[Any]
    """The ``providers`` argument of ``InferenceSession``, best first."""
    device: str
    """``"cpu"`` or ``"cuda:N"``."""
    required: bool
    """The user asked for this device by name: falling back to another is an error."""


def choose_placement(device: str, ort: ModuleType) -> Placement:
    """``"auto"`` takes the CUDA provider when this ONNX Runtime has it, else the CPU.

    Raises:
        WorldSimError: an unknown device, or ``"cuda"`` without ``onnxruntime-gpu``.
    """
    available = ort.get_available_providers()
    if device == "auto":
        if CUDA_EP in available:
            return Placement([(CUDA_EP, {"device_id": 0}), CPU_EP], "cuda:0", required=False)
        return Placement([CPU_EP], "cpu", required=False)
    if device == "cpu":
        return Placement([CPU_EP], "cpu", required=True)
    if device == "cuda" or device.startswith("cuda:"):
        index = device.partition(":")[2] or "0"
        if not index.isdigit():
            raise WorldSimError(f"bad device {device!r}: expected 'cuda' or 'cuda:N'")
        if CUDA_EP not in available:
            raise WorldSimError(
                f"device {device!r} asked for, but this ONNX Runtime has no CUDA execution provider "
                f"(it has {', '.join(available)}); install the GPU build instead: "
                "pip uninstall onnxruntime && pip install onnxruntime-gpu"
            )
        return Placement([(CUDA_EP, {"device_id": int(index)}), CPU_EP], f"cuda:{index}", required=True)
    raise WorldSimError(f"bad device {device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


MAX_THREADS = 2**31 - 1
"""The most threads ``$WORLDSIM_ORT_THREADS`` may ask for: ONNX Runtime keeps them in an int32."""


def session_threads() -> int | None:
    """The intra-op threads of a new session: ``$WORLDSIM_ORT_THREADS``; else one in a process
    that ``multiprocessing`` started (an ``"async"`` vector env's or a ``worldsim record``
    worker, forked or spawned); else None, ONNX Runtime's default of one per physical core.

    N async dream workers at that default each ran every graph on all the cores, N times
    the cores in threads, which the torch backend's workers avoid the same way
    (:mod:`worldsim.torch_backend`).

    Raises:
        WorldSimError: ``$WORLDSIM_ORT_THREADS`` is not a number >= 1.
    """
    threads = os.environ.get(THREADS_ENV, "")
    if threads:
        # ASCII digits only: str.isdigit() passed "²", which int() refused with a bare ValueError;
        # and ONNX Runtime's field is an int32, which a larger number failed as a TypeError.
        if not (threads.isascii() and threads.isdigit()) or not 1 <= int(threads) <= MAX_THREADS:
            raise WorldSimError(f"{THREADS_ENV} must be a number of threads >= 1 (digits 0-9, at most {MAX_THREADS}), "
                                f"got {threads!r}")  # fmt: skip
        return int(threads)
    return 1 if multiprocessing.parent_process() is not None else None


def open_session(path: str | Path, placement: Placement, ort: ModuleType) -> Any:
    """An ``InferenceSession`` on ``path`` with full graph optimisation.

    Raises:
        WorldSimError: the file is not a loadable graph, or a named CUDA device could not be
            used (ONNX Runtime silently falls back to the CPU when the CUDA libraries are
            missing; a user who asked for CUDA must hear about it).
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: its shape-inference notes are not the user's concern
    # Between graph calls the runtime samples in numpy on the main thread; spinning worker
    # threads would take the cores it needs. Measured on the small model, 2 vCPUs: without
    # spinning 5.2-6.4 frames/s at B=1 and 9.1-10.4 at B=16, with it 2.5-2.6 and 5.9-6.7.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    threads = session_threads()
    if threads is not None:
        opts.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(str(path), opts, providers=placement.providers)
    except Exception as e:  # onnxruntime raises its own pybind exception types
        raise WorldSimError(f"{path}: ONNX Runtime cannot load this graph ({e})") from None
    used = sess.get_providers()[0]
    if placement.required and placement.device.startswith("cuda") and used != CUDA_EP:
        raise WorldSimError(
            f"{placement.device} asked for, but ONNX Runtime could not start its CUDA provider "
            "(are the CUDA and cuDNN libraries that onnxruntime-gpu needs installed?)"
        )
    return sess


def session_device(sess: Any) -> tuple[str, str]:
    """(``"cpu"`` or ``"cuda:N"``, the provider name) that a session actually runs on."""
    used = sess.get_providers()[0]
    if used == CUDA_EP:
        options = sess.get_provider_options().get(CUDA_EP, {})
        return f"cuda:{options.get('device_id', 0)}", used
    return "cpu", used
