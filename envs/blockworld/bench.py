"""``worldsim bench engine``: BlockWorld's speed, single env and vector env, measured together.

Reports steps per second of one ``BlockWorldEnv`` and of one ``BlockWorldVectorEnv`` with
many worlds, both with uniformly random actions and with resets included, plus the time
one reset (world generation) takes. All figures come from the same run, so the ratio is
meaningful even on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from worldsim.atomic import atomic_write_text
from worldsim.cpus import usable_cpus
from worldsim.errors import WorldSimError

TARGET_SINGLE = 2000.0
"""Issue 2's target for one env at 64x64 on the project's 2-CPU machine, resets amortised."""
TARGET_VECTOR = 4 * TARGET_SINGLE
"""Issue 2's target for the 64-world vector env: "at least 4x that", read as four times the
single-env target (8,000 steps/s), not four times whatever the single env measures. On 2
CPUs, threads give the vector env at most 2x its own per-world cost, and a faster single env
(the same renderer) would move a relative target away by exactly as much. The printed
"vector / single" ratio keeps the relative figure visible beside it."""
TARGET_RESET_S = 0.2


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none to give (Windows)."""
    getloadavg = getattr(os, "getloadavg", None)  # POSIX only
    try:
        return getloadavg()[0] if getloadavg is not None else None
    except OSError:  # "Load averages are unobtainable"
        return None


def load_text(load: float | None) -> str:
    """``load`` for a report line: one decimal, or ``n/a``."""
    return "n/a" if load is None else f"{load:.1f}"


@dataclass(frozen=True)
class EngineBench:
    """Results of one benchmark run."""

    single_steps_per_s: float
    vector_steps_per_s: float
    num_envs: int
    reset_seconds: float
    width: int
    height: int
    single_cpu_us: float
    """Process CPU time per step of the single env, in microseconds."""
    vector_cpu_us: float
    """Process CPU time (all threads) per world-step of the vector env, in microseconds."""
    load_average: float | None
    """1-minute load average when the run started: other work competing for the CPUs (None
    where the OS reports none)."""
    render_cpu_us: float
    """CPU time of rendering one frame (world view and HUD), in microseconds: the part of
    a single-env step that is not Python or game logic."""

    @property
    def ratio(self) -> float:
        return self.vector_steps_per_s / self.single_steps_per_s


def _random_actions(rng: np.random.Generator, n: int, batch: int) -> np.ndarray:
    from envs.blockworld.env import ACTION_NVEC

    # Drawn up front so the timing measures the env, not the sampler. (n, batch, 8)
    return (rng.random((n, batch, len(ACTION_NVEC))) * np.array(ACTION_NVEC)).astype(np.int64)


def run_bench(seconds: float, num_envs: int, width: int, height: int, seed: int = 0) -> EngineBench:
    """Time the single env, the vector env and resets for about ``seconds`` each."""
    from envs.blockworld.env import BlockWorldEnv
    from envs.blockworld.vector import BlockWorldVectorEnv

    load = load_average()
    rng = np.random.default_rng(seed)
    env = BlockWorldEnv(width=width, height=height)
    env.reset(seed=seed)
    env.step(np.zeros(8, dtype=np.int64))  # compile (or load from numba's cache) first

    resets = []
    deadline = time.perf_counter() + max(seconds / 4, 0.5)
    while time.perf_counter() < deadline or len(resets) < 3:
        t0 = time.perf_counter()
        env.reset()
        resets.append(time.perf_counter() - t0)

    actions = _random_actions(rng, 4096, 1)
    env.reset(seed=seed)
    steps = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    while True:
        for a in actions[:256, 0]:
            _, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                env.reset()
        steps += 256
        actions = np.roll(actions, 256, axis=0)
        if time.perf_counter() - t0 >= seconds:
            break
    single = steps / (time.perf_counter() - t0)
    single_cpu = (time.process_time() - c0) / steps * 1e6
    # The render alone, on the view the walk ended with: how much of a step it takes.
    c0 = time.thread_time()
    for _ in range(200):
        env.engine.render()
    render_cpu = (time.thread_time() - c0) / 200 * 1e6
    env.close()

    venv = BlockWorldVectorEnv(num_envs, width=width, height=height)
    venv.reset(seed=seed)
    batch_actions = _random_actions(rng, 64, num_envs)
    venv.step(batch_actions[0])
    batches = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        venv.step(batch_actions[batches % len(batch_actions)])
        batches += 1
    vector = batches * num_envs / (time.perf_counter() - t0)
    vector_cpu = (time.process_time() - c0) / (batches * num_envs) * 1e6
    venv.close()
    return EngineBench(
        single, vector, num_envs, float(np.median(resets)), width, height, single_cpu, vector_cpu, load, render_cpu
    )


def main(argv: list[str]) -> int:
    """Entry point of ``worldsim bench engine``."""
    parser = argparse.ArgumentParser(prog="worldsim bench engine", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="time budget per measurement (default 5)")
    parser.add_argument("--num-envs", type=int, default=64, help="worlds in the vector env (default 64)")
    parser.add_argument("--width", type=int, default=64, help="frame width (default 64)")
    parser.add_argument("--height", type=int, default=64, help="frame height (default 64)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.num_envs < 1:
        raise WorldSimError("--seconds must be positive and --num-envs at least 1")
    r = run_bench(args.seconds, args.num_envs, args.width, args.height)
    print(
        f"BlockWorld engine, {r.width}x{r.height}, random actions, resets included "
        f"({usable_cpus()} CPUs to use, load average {load_text(r.load_average)} at start)"
    )
    print(f"  {'':<28} {'steps/s':>10} {'CPU us/step':>12}")
    print(f"  {'single env':<28} {r.single_steps_per_s:>10,.0f} {r.single_cpu_us:>12,.0f}")
    vec = f"vector env ({r.num_envs} worlds)"
    print(f"  {vec:<28} {r.vector_steps_per_s:>10,.0f} {r.vector_cpu_us:>12,.0f}")
    print(f"  {'vector / single':<28} {r.ratio:>10.2f}x")
    print(f"  {'render only (one frame)':<28} {'':>10} {r.render_cpu_us:>12,.0f}")
    print(f"  {'reset (new world)':<28} {r.reset_seconds:>10.3f} s")
    targets = {}
    if (r.width, r.height, r.num_envs) == (64, 64, 64):
        for what, ok, figure in (
            (f"single env >= {TARGET_SINGLE:,.0f} steps/s", r.single_steps_per_s >= TARGET_SINGLE, f"{r.single_steps_per_s:,.0f}"),
            (f"vector env >= {TARGET_VECTOR:,.0f} steps/s (4 x the single-env target)", r.vector_steps_per_s >= TARGET_VECTOR,
             f"{r.vector_steps_per_s:,.0f}"),
            (f"reset < {TARGET_RESET_S} s", r.reset_seconds < TARGET_RESET_S, f"{r.reset_seconds:.3f} s"),
        ):  # fmt: skip
            print(f"target {what}: {'met' if ok else 'NOT met'} ({figure})")
            targets[what] = ok
    if args.json:
        write_json(args.json, r, targets)
    return 0


def write_json(path: str, r: EngineBench, targets: dict[str, bool]) -> None:
    """The printed figures as JSON, shaped as the other benches' ``--json``: a row per
    measured configuration, then the run's setting; ``targets`` is empty where none is judged.

    Its folder is made, and it is written whole or not at all (:mod:`worldsim.atomic`).
    """
    rows = [
        {"env": "single", "num_envs": 1, "steps_per_s": round(r.single_steps_per_s, 1), "cpu_us_per_step": round(r.single_cpu_us, 1)},
        {"env": "vector", "num_envs": r.num_envs, "steps_per_s": round(r.vector_steps_per_s, 1),
         "cpu_us_per_step": round(r.vector_cpu_us, 1), "ratio": round(r.ratio, 3)},
    ]  # fmt: skip
    doc = {"rows": rows, "reset_seconds": round(r.reset_seconds, 4), "render_cpu_us": round(r.render_cpu_us, 1),
           "width": r.width, "height": r.height, "cpus": usable_cpus(), "load_average": r.load_average, "targets": targets}  # fmt: skip
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
