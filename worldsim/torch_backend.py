"""The torch backend of the runtime: the protocol of :mod:`worldsim.runtime` on torch modules."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
from pathlib import Path

import numpy as np
import torch

from worldsim.checkpoint import CheckpointError, LoadedModel, ModelConfig, load_model
from worldsim.errors import WorldSimError
from worldsim.sampling import PassOutput
from worldsim.tokenizer import Tokenizer
from worldsim.transformer import Dynamics


def _one_thread_after_fork() -> None:
    # GNU OpenMP's thread pool does not survive a fork: a forked child whose first torch op
    # opens a parallel region waits forever for threads that exist only in the parent.
    # gymnasium.make_vec(..., vectorization_mode="async") forks (Linux's default) right after
    # building one env in the parent, and its workers hung while building the model. With one
    # thread every op runs inline, as in torch's own DataLoader workers.
    torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere children are spawned, not forked
    os.register_at_fork(after_in_child=_one_thread_after_fork)
if multiprocessing.parent_process() is not None and "OMP_NUM_THREADS" not in os.environ:
    # A spawned worker (macOS's and Windows' default start method) gets one thread too, as a
    # forked one does: N async env or record workers at torch's default each would run N x
    # cores threads on the machine's cores. OMP_NUM_THREADS, when set, is the user's choice.
    torch.set_num_threads(1)


def pick_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; anything else is checked and returned."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise WorldSimError(f"bad device {device!r}: {e}") from None
    if dev.type not in ("cpu", "cuda"):  # what the models and the ONNX path are built and tested for
        raise WorldSimError(f"device {device!r}: WorldSim runs on cpu or cuda (auto picks), not {dev.type}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WorldSimError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise WorldSimError(f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""x86 CPU flags (Linux ``/proc/cpuinfo`` names) whose instructions compute bf16 products natively."""


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), read from ``cpuinfo``.

    False where the file cannot be read (macOS, Windows): fp32 is then the safe default.
    """
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(f in flags for f in NATIVE_BF16_CPU_FLAGS)


def default_precision(device: torch.device) -> str:
    """bf16 where matmuls are natively fast in it (CUDA, CPUs with AVX512-BF16 or AMX), else fp32.

    Measured on a 2-vCPU AMD EPYC with AVX512-BF16, two threads: a 1024x1024 matmul runs at
    about 950 GFLOP/s in bf16 against 215 in fp32 (`worldsim bench train` prints both peaks).
    On a CPU without native bf16 (AVX2 only) a bf16 matmul is emulated and runs ~50x slower
    than fp32. Accuracy in bf16 is checked on the shipped model by the eval (docs/model.md).
    """
    if device.type == "cuda":
        return "bf16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def cast_matmul_weights(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Store the weights and biases of ``module``'s ``Linear`` and ``Conv2d`` layers in ``dtype``,
    in place and without gradients: what autocast to ``dtype`` computes with them anyway."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
                m.weight.data = m.weight.data.to(dtype)
                m.weight.requires_grad_(False)
                if m.bias is not None:
                    m.bias.data = m.bias.data.to(dtype)
                    m.bias.requires_grad_(False)


class TorchBackend:
    """Runs a :class:`Tokenizer` and a :class:`Dynamics` under ``torch.inference_mode``.

    Args:
        tokenizer, dynamics: the modules, already on ``device``.
        config: their :class:`ModelConfig`.
        device: where they run.
        precision: ``"fp32"`` or ``"bf16"`` (autocast for matmuls; the cache is kept in it).
        cast_weights: in bf16, store the weights of the linear and convolution layers in
            bf16 once, here. Autocast would otherwise cast every weight again in every call,
            since its cast cache lives only as long as one ``autocast`` block. That matters
            where a pass is bound by reading the weights: one world of ``small`` ran 149
            against 138 frames/s (in-process A/B, median of 4 rounds; no difference at 64
            worlds). The result is bit-identical (the same rounding, done once); layer norms
            and embeddings keep fp32 as under autocast. False leaves the modules trainable
            and savable in fp32 (the benchmarks that train or save them).
    """

    name = "torch"

    def __init__(
        self, tokenizer: Tokenizer, dynamics: Dynamics, config: ModelConfig, device: torch.device, precision: str,
        cast_weights: bool = True,
    ) -> None:
        self.tokenizer = tokenizer.eval()
        self.dynamics = dynamics.eval()
        self.config = config
        self.device = str(device)
        self.precision = precision
        self._dev = device
        self._dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self._scratch = (-1, 0)  # (cache length, scratch slots) of the last empty_cache
        if cast_weights and self._dtype != torch.float32:
            cast_matmul_weights(self.tokenizer, self._dtype)
            cast_matmul_weights(self.dynamics, self._dtype)

    @classmethod
    def from_checkpoint(cls, path: str, *, device: str = "auto", precision: str | None = None) -> TorchBackend:
        dev = pick_device(device)
        loaded: LoadedModel = load_model(path, dev)
        if loaded.dynamics is None:
            raise CheckpointError(f"{path}: a tokenizer checkpoint; generating needs a dynamics checkpoint")
        return cls(loaded.tokenizer, loaded.dynamics, loaded.config, dev, precision or default_precision(dev))

    def _ctx(self) -> contextlib.AbstractContextManager:
        if self._dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self._dev.type, dtype=self._dtype)

    def _t(self, a: np.ndarray | None) -> torch.Tensor | None:
        if a is None:
            return None
        a = np.ascontiguousarray(a)
        if not a.flags.writeable:
            # torch shares a CPU array's memory and warns that a read-only one (a memmap opened
            # 'r', np.frombuffer, a loaded .npy) is "undefined behavior", once per process:
            # under -W error that warning made the prompt itself raise. A copy is never read-only.
            a = a.copy()
        return torch.as_tensor(a, device=self._dev)

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        with self._ctx():
            return self.tokenizer.encode(self._t(frames)).cpu().numpy()

    @torch.inference_mode()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        with self._ctx():
            return self.tokenizer.decode(self._t(codes)).cpu().numpy()

    @torch.inference_mode()
    def refine(self, prev_frames: np.ndarray, frames: np.ndarray, prev_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
        with self._ctx():
            out = self.tokenizer.refine(self._t(prev_frames), self._t(frames), self._t(prev_codes), self._t(codes))
        return out.cpu().numpy()

    def empty_cache(self, batch: int, tokens: int, scratch: int = 0) -> torch.Tensor:
        """Zeros ``[L, 2, B, heads, tokens + scratch, head_dim]``: predict writes each pass's
        keys and values into the scratch slots, where appending them to the cache would
        copy all of it in every layer (about 7 % of a 64-world step)."""
        c = self.config.dynamics
        self._scratch = (tokens + scratch, scratch)
        shape = (c.layers, 2, batch, c.heads, tokens + scratch, c.width // c.heads)
        return torch.zeros(shape, dtype=self._dtype, device=self._dev)

    @torch.inference_mode()
    def append(self, codes: np.ndarray, actions: np.ndarray, t0: int, cache: torch.Tensor | None, valid: np.ndarray | None) -> torch.Tensor:
        t0_ = torch.tensor(t0, device=self._dev)
        with self._ctx():
            new = self.dynamics.append(self._t(codes), self._t(actions), t0_, self.config.dynamics.inference_corruption, cache, self._t(valid))
        return new.to(self._dtype)

    @torch.inference_mode()
    def predict(
        self,
        codes: np.ndarray,
        actions: np.ndarray,
        t: int,
        cache: torch.Tensor | None,
        valid: np.ndarray | None,
        commit: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[PassOutput, torch.Tensor | None]:
        cc, ca = (None, None) if commit is None else (self._t(commit[0]), self._t(commit[1]))
        # A cache from empty_cache(..., scratch) has its scratch slots at the end.
        length, scratch = self._scratch
        free = scratch if cache is not None and cache.shape[4] == length else 0
        with self._ctx():
            p, entries = self.dynamics.predict(
                self._t(codes), self._t(actions), torch.tensor(t, device=self._dev), cache, self._t(valid),
                cc, ca, self.config.dynamics.inference_corruption, free,
            )
        out = PassOutput(
            logits=p.logits.float().cpu().numpy(),
            reward=p.reward.float().cpu().numpy(),
            done_logit=p.done_logit.float().cpu().numpy(),
            stay=None if p.stay is None else p.stay.float().cpu().numpy(),
            still_logit=None if p.still_logit is None else p.still_logit.float().cpu().numpy(),
        )
        return out, None if entries is None else entries.to(self._dtype)
