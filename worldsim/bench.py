"""``worldsim bench train`` and ``worldsim bench dream``: throughput, FLOPs and share of peak.

Both measure the machine's matmul peak in the same run (a large fp32 and a bf16 matmul), so
every share-of-peak figure is a ratio taken under the same load. FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` on the real forward (and backward) passes, not
estimated. ``bench dream`` runs random weights unless given a checkpoint: speed does not
depend on what the weights say.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from worldsim.atomic import atomic_write_text
from worldsim.checkpoint import ModelConfig, save_model
from worldsim.cli import DEVICE_HELP, precision_choice
from worldsim.cpus import set_threads
from worldsim.errors import WorldSimError
from worldsim.presets import PRESETS, dynamics_config, get_preset
from worldsim.runtime import DEFAULT_CHUNKS, WorldModel, load
from worldsim.spaces import ActionSpec
from worldsim.tokenizer import Tokenizer
from worldsim.torch_backend import TorchBackend, default_precision, pick_device
from worldsim.transformer import Dynamics

BLOCKWORLD_ACTIONS = ActionSpec("MultiDiscrete", (3, 3, 2, 3, 3, 2, 2, 10))
"""BlockWorld's action space: the default for random-weight benchmarks."""
ONNX_CACHE_ENV = "WORLDSIM_ONNX_CACHE"
"""Where ``load(..., backend="onnx")`` caches exports (``export.cache``, which the core never imports)."""


@contextlib.contextmanager
def onnx_cache_in(folder: str | None) -> Iterator[None]:
    """Point the ONNX export cache at ``folder`` for the block (None: leave it alone): where a
    benchmark's random model goes, so that its export goes with it.

    The random model is saved afresh on every run, and two saves of the same weights are not
    byte-identical (safetensors orders the header's metadata as it likes), so its export
    would never be found again: in the user's cache each run would leave another copy
    (about 22 MB for ``small``) behind."""
    if folder is None:
        yield
        return
    old = os.environ.get(ONNX_CACHE_ENV)
    os.environ[ONNX_CACHE_ENV] = folder
    try:
        yield
    finally:
        if old is None:
            del os.environ[ONNX_CACHE_ENV]
        else:
            os.environ[ONNX_CACHE_ENV] = old


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, seconds: float = 1.0) -> float:
    """FLOP/s of repeated ``n x n`` matmuls for about ``seconds``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    if device.type == "cuda":  # the warm-up's kernel must not run on the clock
        torch.cuda.synchronize(device)
    reps, t0 = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # this device's, not the current one's (--device cuda:1)
        dt = time.perf_counter() - t0
        if dt > seconds:
            return 2 * n**3 * reps / dt


def _peaks(device: torch.device) -> dict[str, float]:
    big = 4096 if device.type == "cuda" else 1024
    # bf16 on a CPU without native support is ~50x slower: a smaller matrix keeps this short.
    small = big if default_precision(device) == "bf16" else 256
    return {
        "fp32": matmul_peak(device, torch.float32, big),
        "bf16": matmul_peak(device, torch.bfloat16, small),
    }


def _random_model(
    preset: str, spec: ActionSpec, context: int | None, device: torch.device, precision: str, cast_weights: bool = True
) -> TorchBackend:
    p = get_preset(preset)
    torch.manual_seed(0)
    tok = Tokenizer(p.tokenizer).to(device)
    dyn = Dynamics(dynamics_config(p, p.tokenizer.levels, spec, context)).to(device)
    cfg = ModelConfig(tokenizer=p.tokenizer, dynamics=dyn.cfg, preset=preset)
    return TorchBackend(tok, dyn, cfg, device, precision, cast_weights)


def _params(m: torch.nn.Module) -> int:
    return sum(x.numel() for x in m.parameters())


def _common(p: argparse.ArgumentParser, size_help: str = "frame size (default 64 64)") -> None:
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help=size_help)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--precision",
        type=precision_choice,
        default=None,
        metavar="{auto,fp32,bf16}",
        help="auto (the default): the device's fastest accurate one",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads of torch and of ONNX Runtime (default: their own)"
    )
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")


def _check_common(a: argparse.Namespace) -> None:
    """One-line errors for the shared flags, before any model is built."""
    if a.threads is not None and a.threads < 1:
        raise WorldSimError(f"--threads must be at least 1, got {a.threads}")
    if a.size is not None and min(a.size) < 1:
        raise WorldSimError(f"--size must be positive, got {a.size[0]} {a.size[1]}")


def model_frame_shape(checkpoint: str | None, backend: str = "torch", device: str = "auto") -> tuple[int, int]:
    """(H, W) of the frames ``checkpoint`` (a file or an ONNX export folder) was trained on."""
    h, w = load(checkpoint, backend=backend, device=device).config.frame_shape
    return int(h), int(w)


def _finish(
    rows: list[dict[str, Any]], peaks: dict[str, float], path: str | None, extra: dict[str, Any]
) -> None:
    if path:
        # Its folder is made (atomic_write makes it), as every command's --out is: a missing one
        # failed the run at its end. Whole or not at all: a kill mid-write kept half a JSON file.
        atomic_write_text(path, json.dumps({"peaks_flops": peaks, "rows": rows, **extra}, indent=2))


def dream_parser() -> argparse.ArgumentParser:
    """The options of ``worldsim bench dream``'s runtime part (:func:`run_dream`)."""
    ap = argparse.ArgumentParser(
        prog="worldsim bench dream", description="Generation frames/s at B=1 and B=64, K=1, 2 and the default K."
    )
    ap.add_argument(
        "--preset",
        default="small",
        choices=sorted(PRESETS),
        help="random-weight model size (default small)",
    )
    ap.add_argument(
        "--checkpoint", default=None, help="time this checkpoint instead of a random preset"
    )
    ap.add_argument(
        "--backend",
        nargs="+",
        default=["torch"],
        help="runtime backends, timed side by side in one run: torch, onnx or both (default torch)",
    )
    ap.add_argument(
        "--batch", type=int, nargs="+", default=[1, 64], help="worlds per step (default 1 64)"
    )
    ap.add_argument(
        "--chunks",
        type=int,
        nargs="+",
        default=sorted({1, 2, DEFAULT_CHUNKS}),
        help="K values (default 1 and 2, and the default K)",
    )
    ap.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help="timed seconds per setting and backend (default 3)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternate the backends this many times per setting (default 3)",
    )
    _common(ap, "frame size (default: a --checkpoint's training frames, else 64 64)")
    return ap


def dream_main(argv: list[str]) -> int:
    """Generation frames/s at B=1 and B=64, K=1, 2 and the default K (the runtime alone).

    ``worldsim bench dream`` runs this and then the dream env through Gymnasium
    (``envs.dream_bench.bench_dream_main``); this is the part that needs no env.
    """
    return run_dream(dream_parser().parse_args(argv))


def run_dream(a: argparse.Namespace) -> int:
    """:func:`dream_main` on parsed options (see :func:`dream_parser`)."""
    if a.rounds < 1:
        raise WorldSimError(f"--rounds must be at least 1, got {a.rounds}")
    _check_common(a)
    if min(a.batch) < 1 or min(a.chunks) < 1 or not a.seconds > 0:
        raise WorldSimError(f"--batch and --chunks must be at least 1 and --seconds positive, got {a.batch}, {a.chunks}, {a.seconds}")
    set_threads(a.threads)  # torch's and the ONNX backend's sessions': the same thread count
    dev = pick_device(a.device)
    precision = a.precision or default_precision(dev)
    peaks = _peaks(dev)
    rows = []
    if a.size is None:  # a checkpoint is timed at the size it was trained at, as the dream env's default
        a.size = model_frame_shape(a.checkpoint, a.backend[0], a.device) if a.checkpoint else (64, 64)
    H, W = a.size
    checkpoint, scratch = a.checkpoint, None
    if checkpoint is None and set(a.backend) != {"torch"}:
        # Every backend must time the same weights: save the random model once for all of them.
        scratch = tempfile.TemporaryDirectory()
        be = _random_model(a.preset, BLOCKWORLD_ACTIONS, None, dev, precision, cast_weights=False)  # saved in fp32
        checkpoint = str(Path(scratch.name) / f"{a.preset}-random.safetensors")
        save_model(checkpoint, replace(be.config, frame_shape=(H, W)), be.tokenizer, be.dynamics)

    def make(backend: str, K: int) -> WorldModel:
        if checkpoint:
            return load(
                checkpoint,
                backend=backend,
                device=a.device,
                precision=a.precision,
                chunks=K,
                seed=0,
            )
        return WorldModel(
            _random_model(a.preset, BLOCKWORLD_ACTIONS, None, dev, precision), chunks=K, seed=0
        )

    try:
        with onnx_cache_in(str(Path(scratch.name) / "onnx") if scratch else None):
            for K in a.chunks:
                models = {backend: make(backend, K) for backend in a.backend}
                for B in a.batch:
                    rows += _time_backends(models, B, H, W, a.seconds, a.rounds, peaks, precision)
    finally:
        if scratch is not None:
            # Left to its finalizer, it warned "Implicitly cleaning up" (a ResourceWarning) on
            # every run that timed ONNX on a random model.
            scratch.cleanup()
    for r in rows:
        if r["backend"] != a.backend[0]:
            print(f"{r['backend']} / {a.backend[0]}: {r['ratio']:.2f}x frames/s at B={r['batch']}, K={r['chunks']} "
                  f"(per-round ratios {', '.join(f'{x:.2f}' for x in r['round_ratios'])})")  # fmt: skip
    what = a.checkpoint or f"preset {a.preset} (random weights)"
    print(f"model: {what}; {H}x{W}; device {dev}, precision {precision}, threads {torch.get_num_threads()}; "
          f"matmul peak fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s")  # fmt: skip
    _finish(rows, peaks, a.json, {"model": what, "device": str(dev), "precision": precision})
    return 0


def _prime(model: WorldModel, B: int, H: int, W: int):
    """Prompt ``model`` with B random worlds and a full window; returns an action sampler."""
    spec = model.action_spec
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (B, 4, H, W, 3), dtype=np.uint8)
    acts = lambda n: rng.integers(0, spec.nvec, (B, n, len(spec.nvec)))  # noqa: E731
    model.prompt(frames, acts(3))
    model.step(acts(1)[:, 0])
    # Time the steady state of a long rollout: a full window. What the cache holds does not
    # change the cost, so mark it all valid rather than step 20+ times.
    model._valid[:] = True
    return acts


def _time_backends(
    models: dict[str, WorldModel],
    B: int,
    H: int,
    W: int,
    seconds: float,
    rounds: int,
    peaks: dict[str, float],
    precision: str,
) -> list[dict[str, Any]]:
    """Frames/s of each backend at batch B, timed in ``rounds`` alternating rounds.

    On a shared machine the load changes from second to second. Alternating the backends
    in short rounds and taking the median of the per-round ratios against the first backend
    compares them under the same conditions; one long run each would compare two moments.
    """
    acts = {name: _prime(m, B, H, W) for name, m in models.items()}
    flops: dict[str, float | None] = {}
    for name, m in models.items():
        flops[name] = None
        if getattr(m.backend, "name", "") == "torch":
            with FlopCounterMode(display=False) as fc:
                m.step(acts[name](1)[:, 0])
            flops[name] = fc.get_total_flops() / B
    fps: dict[str, list[float]] = {name: [] for name in models}
    steps = {name: 0 for name in models}
    total = {name: 0.0 for name in models}
    for _ in range(rounds):
        for name, m in models.items():
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / rounds or n < 2:
                m.step(acts[name](1)[:, 0])
                n += 1
            dt = time.perf_counter() - t0
            fps[name].append(B * n / dt)
            steps[name] += n
            total[name] += dt
    first = next(iter(models))
    rows = []
    for name, m in models.items():
        rate = B * steps[name] / total[name]
        row = {"backend": name, "device": m.backend.device, "precision": m.backend.precision, "batch": B, "chunks": m.chunks,
               "frames_per_s": round(rate, 2), "ms_per_step": round(1e3 * total[name] / steps[name], 2),
               "gflop_per_frame": None if flops[name] is None else round(flops[name] / 1e9, 4)}  # fmt: skip
        if flops[name] is not None:
            row["share_of_peak"] = round(flops[name] * rate / peaks[precision], 4)
        if name != first:
            ratios = [x / y for x, y in zip(fps[name], fps[first])]
            row["round_ratios"] = [round(x, 3) for x in ratios]
            row["ratio"] = round(float(np.median(ratios)), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _train_step(
    kind: str,
    backend: TorchBackend,
    B: int,
    T: int,
    H: int,
    W: int,
    opt: torch.optim.Optimizer,
    dev: torch.device,
    precision: str,
):
    rng = torch.Generator().manual_seed(0)
    if kind == "tokenizer":
        frames = torch.randint(0, 256, (B, H, W, 3), dtype=torch.uint8, generator=rng).to(dev)

        def step() -> None:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = backend.tokenizer(frames).loss
            opt.zero_grad()
            loss.backward()
            opt.step()

        s = backend.tokenizer.config.stride
        return step, B, B * (H // s) * (W // s)
    cfg = backend.dynamics.cfg
    s = backend.config.tokenizer.stride
    h, w = H // s, W // s
    codes = torch.randint(0, int(np.prod(cfg.levels)), (B, T, h, w), generator=rng).to(dev)
    acts = torch.zeros(B, T - 1, len(cfg.action_nvec), dtype=torch.long, device=dev)
    rew, term = (
        torch.zeros(B, T - 1, device=dev),
        torch.zeros(B, T - 1, dtype=torch.bool, device=dev),
    )

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = backend.dynamics(codes, acts, rew, term).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    n_tok = (h // cfg.patch) * (w // cfg.patch)
    return step, B * T, B * (2 * T - 1) * n_tok


def train_main(argv: list[str]) -> int:
    """``worldsim bench train``: training frames/s and tokens/s per preset and model, share of peak."""
    ap = argparse.ArgumentParser(prog="worldsim bench train", description=train_main.__doc__)
    ap.add_argument(
        "--presets", nargs="+", default=["tiny", "small", "base"], help="presets to time (default tiny small base)"
    )
    ap.add_argument(
        "--batch",
        type=int,
        default=8,
        help="windows (dynamics) or frames x4 (tokenizer) per step (default 8)",
    )
    ap.add_argument("--steps", type=int, default=3, help="timed steps per setting (default 3)")
    _common(ap)
    a = ap.parse_args(argv)
    _check_common(a)
    if a.steps < 1 or a.batch < 1:
        raise WorldSimError(f"--steps and --batch must be at least 1, got {a.steps} and {a.batch}")
    set_threads(a.threads)
    dev = pick_device(a.device)
    precision = a.precision or default_precision(dev)
    peaks = _peaks(dev)
    H, W = a.size or (64, 64)
    rows = []
    for name in a.presets:
        if name not in PRESETS:
            raise WorldSimError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        be = _random_model(name, BLOCKWORLD_ACTIONS, None, dev, precision, cast_weights=False)
        for kind, module in (("tokenizer", be.tokenizer), ("dynamics", be.dynamics)):
            module.train()
            opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
            B = a.batch * 4 if kind == "tokenizer" else a.batch
            step, frames, tokens = _train_step(
                kind, be, B, be.dynamics.cfg.context, H, W, opt, dev, precision
            )
            step()  # warm-up (allocations, first-call dispatch)
            with FlopCounterMode(display=False) as fc:
                step()
            flops = fc.get_total_flops()
            if dev.type == "cuda":  # the counted step's kernels must not run on the clock
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            dt = (time.perf_counter() - t0) / a.steps
            row = {"preset": name, "model": kind, "params_m": round(_params(module) / 1e6, 3), "batch": B,
                   "frames_per_s": round(frames / dt, 2), "tokens_per_s": round(tokens / dt, 1),
                   "gflop_per_step": round(flops / 1e9, 2), "share_of_peak": round(flops / dt / peaks[precision], 4)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"{H}x{W}; device {dev}, precision {precision}, threads {torch.get_num_threads()}; "
          f"matmul peak fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s")  # fmt: skip
    _finish(rows, peaks, a.json, {"device": str(dev), "precision": precision})
    return 0
