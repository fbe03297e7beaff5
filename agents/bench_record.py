"""``worldsim bench record``: recording throughput and bytes per frame, measured in one run.

Figures, all from the same run on the same machine:

1. End to end, one process, one env: explorer + BlockWorld + PNG + msgpack + write.
2. End to end with ``--num-envs`` K envs (vector envs across worker processes).
3. How fast :class:`~worldsim.data.WindowDataset` serves training batches from run 2.
4. The split of one process's time: env step, agent, and writer (PNG + msgpack + write).
   The writer alone sets the ceiling the format puts on throughput.
5. Bytes per frame and encode time for this module's PNG (filter None, the default, and
   Sub) against Pillow's encoder, on the same frames.
6. The time a 1M-step dataset takes at the measured parallel rate.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agents.record import SEED_MAX, RecordConfig, record
from agents.rollout import make_agent, make_env, small_info
from envs.blockworld.bench import load_average, load_text
from worldsim.atomic import atomic_write_text
from worldsim.cpus import usable_cpus
from worldsim.data import WindowDataset
from worldsim.errors import WorldSimError
from worldsim.png import encode_png
from worldsim.recording import RecordingWriter
from worldsim.registration import BLOCKWORLD_ID
from worldsim.spaces import ActionSpec, native_action


def _split(env_id: str, agent: str, steps: int, size: tuple[int, int] | None, seed: int) -> dict[str, Any]:
    """Time env, agent and writer separately in one process (CPU seconds per step); ``size`` is (H, W)."""
    env = make_env(env_id, 1, {} if size is None else {"width": size[1], "height": size[0]})
    spec = ActionSpec.from_space(env.action_space)
    agent_ = make_agent(agent, env_id, spec, np.random.default_rng(seed))
    obs, info = env.reset(seed=seed)
    agent_.reset(obs, info)
    frames, actions, infos = [], [], []
    t_env = t_agent = 0.0
    for _ in range(steps):
        t0 = time.process_time()
        action = agent_.act(obs, info)
        t1 = time.process_time()
        obs, _, term, trunc, info = env.step(native_action(env.action_space, action))
        t2 = time.process_time()
        t_agent += t1 - t0
        t_env += t2 - t1
        frames.append(obs)
        actions.append(action)
        infos.append(small_info(info))
        if term or trunc:
            obs, info = env.reset()
            agent_.reset(obs, info)
    env.close()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.process_time()
        with RecordingWriter(
            Path(tmp) / "w", env_id=env_id, env_kwargs={}, observation_shape=frames[0].shape,
            action_space=spec, agent=agent, shard_records=4096,
        ) as w:  # fmt: skip
            for t, (f, a, i) in enumerate(zip(frames, actions, infos)):
                w.step(0, t + 1, a, 0.0, False, False, f, i)
        t_write = time.process_time() - t0
    return {
        "env_ms": 1e3 * t_env / steps,
        "agent_ms": 1e3 * t_agent / steps,
        "writer_ms": 1e3 * t_write / steps,
        "frames": frames,
    }


def _codecs(frames: list[np.ndarray]) -> dict[str, tuple[float, float]]:
    """name -> (mean bytes per frame, mean encode microseconds), same frames for all."""
    from PIL import Image

    def pillow(f: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    coders = {
        "worldsim png, filter None (default)": encode_png,
        "worldsim png, filter Sub": lambda f: encode_png(f, sub_filter=True),
        "Pillow png, compress_level=1": pillow,
    }
    out = {}
    for name, fn in coders.items():
        t0 = time.process_time()
        size = sum(len(fn(f)) for f in frames)
        out[name] = (size / len(frames), 1e6 * (time.process_time() - t0) / len(frames))
    return out


def _read_rate(path: Path, window: int, batch: int, seconds: float = 3.0) -> dict[str, float]:
    """Batches per second that :class:`WindowDataset` serves from a recording (one process)."""
    ds = WindowDataset([path], window)
    rng = np.random.default_rng(0)
    ds.sample(rng, batch)  # open the memory maps outside the timing
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ds.sample(rng, batch)
        n += 1
    rate = n / (time.perf_counter() - t0)
    return {"batches_per_s": rate, "frames_per_s": rate * batch * window}


def _check(args: argparse.Namespace) -> None:
    """One-line errors for bad options before anything is printed or measured.

    Without it ``--window 0`` or ``--batch 0`` ended a finished measurement in a traceback,
    ``--workers 0`` was taken for the default where ``worldsim record`` refuses it, and
    ``--num-envs 0`` was refused after the first figure, naming flags this command lacks.
    """
    if args.workers is not None and args.workers < 1:
        raise WorldSimError(f"--workers must be at least 1, got {args.workers}")
    for name in ("steps", "num_envs", "window", "batch"):
        if getattr(args, name) < 1:
            raise WorldSimError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.size is not None and len(args.size) > 2:
        raise WorldSimError(f"--size takes H W or one number, got {len(args.size)} numbers")
    if not args.read_seconds > 0:
        raise WorldSimError(f"--read-seconds must be positive, got {args.read_seconds}")
    if not 0 <= args.seed <= SEED_MAX - args.num_envs:
        raise WorldSimError(f"--seed must be between 0 and {SEED_MAX - args.num_envs}, got {args.seed}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="worldsim bench record", description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default=BLOCKWORLD_ID, help=f"Gymnasium id (default {BLOCKWORLD_ID})")
    p.add_argument("--agent", default="explorer", choices=("random", "explorer"), help="who acts (default explorer)")
    p.add_argument("--steps", type=int, default=2000, help="steps per end-to-end measurement (default 2000)")
    p.add_argument("--num-envs", type=int, default=8, help="envs for the parallel measurement (default 8)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: min(num-envs, the CPUs this process may use))")
    p.add_argument(
        "--size", type=int, nargs="+", default=None, metavar="SIZE",
        help="frame size passed to the env: H W as bench train and bench dream take it, or one number "
        "for a square (default: the env's own; 64 64 for BlockWorld)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the envs' resets and the agents' draws (default 0)")
    p.add_argument("--window", type=int, default=16, help="frames per window for the read rate (default 16)")
    p.add_argument("--batch", type=int, default=32, help="windows per batch for the read rate (default 32)")
    p.add_argument("--read-seconds", type=float, default=3.0, help="seconds to time reading (default 3)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    _check(args)
    # (H, W); the figures keep one number as it was given, as they always have
    size = None if args.size is None else (args.size[0], args.size[-1])
    shown = None if args.size is None else args.size[0] if len(args.size) == 1 else args.size
    workers = args.workers or min(args.num_envs, usable_cpus())
    results: dict[str, Any] = {"cpu_cores": usable_cpus(), "size": shown, "agent": args.agent}
    # Other processes share these cores; the load average says how much of them we had.
    print(f"{usable_cpus()} CPU cores to use, load average {load_text(load_average())} before the run")

    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "1 process, 1 env": (1, 1),
            f"{workers} processes, {args.num_envs} envs": (args.num_envs, workers),
        }
        for label, (num_envs, procs) in runs.items():
            cfg = RecordConfig(
                env=args.env, agent=args.agent, steps=args.steps, out=str(Path(tmp) / label.replace(" ", "_")),
                num_envs=num_envs, workers=procs, seed=args.seed,
                width=None if size is None else size[1], height=None if size is None else size[0],
            )  # fmt: skip
            r = record(cfg, progress_bar=False)
            results[label] = {
                "steps_per_s": r.steps_per_second,
                "steady_steps_per_s": r.steady_steps_per_second,
                "bytes_per_frame": r.bytes_per_frame,
            }
            print(
                f"{label:>22}: {r.steps_per_second:6.0f} steps/s wall clock, "
                f"{r.steady_steps_per_second:6.0f} after start-up, {r.bytes_per_frame:5.0f} bytes/frame"
            )
        reading = _read_rate(Path(cfg.out), args.window, args.batch, args.read_seconds)
        results["window_reading"] = reading
        print(
            f"\nWindowDataset on that recording: {reading['batches_per_s']:.1f} batches/s of "
            f"{args.batch} windows x {args.window} frames = {reading['frames_per_s']:.0f} frames/s, one core"
        )

    split = _split(args.env, args.agent, min(args.steps, 1000), size, args.seed)
    total = split["env_ms"] + split["agent_ms"] + split["writer_ms"]
    print(f"\nCPU time per step in one process ({total:.2f} ms):")
    for key in ("env_ms", "agent_ms", "writer_ms"):
        print(f"  {key[:-3]:>6}: {split[key]:6.3f} ms  ({100 * split[key] / total:4.1f}%)")
    print(f"  the writer alone sustains {1e3 / split['writer_ms']:.0f} steps/s per core")
    results["cpu_ms_per_step"] = {k: split[k] for k in ("env_ms", "agent_ms", "writer_ms")}
    results["frame_shape"] = list(split["frames"][0].shape)

    print("\nPNG codecs on the same frames:")
    codecs = _codecs(split["frames"])
    for name, (size, us) in codecs.items():
        print(f"  {name:<38} {size:7.0f} bytes/frame  {us:6.0f} us/frame")
    results["codecs"] = {k: {"bytes_per_frame": v[0], "encode_us": v[1]} for k, v in codecs.items()}

    parallel = results[list(runs)[1]]["steady_steps_per_s"]
    minutes = 1e6 / parallel / 60
    print(f"\n1M steps at {parallel:.0f} steps/s: {minutes:.1f} minutes")
    results["minutes_per_million_steps"] = minutes
    results["load_average_after"] = load_average()  # null where the OS reports none
    print(f"load average {load_text(results['load_average_after'])} after the run")
    if args.json:  # its folder is made, as every command's --out is (a missing one failed the run here)
        atomic_write_text(args.json, json.dumps(results, indent=1) + "\n")
    return 0
