"""`worldsim bench dream-env`: dream steps/s through the Gymnasium API, single and vector.

The runtime's own benchmark (:func:`worldsim.bench.dream_main`) measures ``WorldModel.step``
alone. This benchmark measures what an RL user gets: ``env.step`` of ``worldsim/Dream-v0`` (validation, copies,
the TimeLimit wrapper) and the native vector env at N = 16 and N = 64. Each Gymnasium
figure is printed beside the bare runtime's rate at the same batch size, measured in the
same run, so the ratio shows the API's overhead even on a noisy shared machine.

Without a trained checkpoint, ``--preset`` benchmarks a randomly initialised model of that
size: generation costs the same whatever the weights.

``worldsim bench dream`` (:func:`bench_dream_main`) runs both: the runtime's table, then
this one, so one command reports generation frames/s and the env's steps/s.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from worldsim.atomic import atomic_write_text
from worldsim.cli import DEVICE_HELP, precision_choice
from worldsim.errors import WorldSimError

TARGET_SINGLE = 30.0
"""Issue 5's target: single-env steps/s at 64x64 on the project's 2-core CPU."""
TARGET_VECTOR_64 = 500.0
"""Issue 5's target: total steps/s of the vector env with N = 64."""
RANDOM_DONE_LOGIT = -20.0
"""Episode-end logit of ``--preset`` models: they never end an episode (see random_checkpoint)."""
BLOCKWORLD_ID = "worldsim/BlockWorld-v0"
BLOCKWORLD_NVEC = (3, 3, 2, 3, 3, 2, 2, 10)


@dataclass
class Rate:
    """One measured configuration."""

    name: str
    batch: int
    gym_steps_per_s: float
    """Total env steps per second through the Gymnasium API (N steps per vector step)."""
    runtime_steps_per_s: float
    """Total steps per second of ``WorldModel.step`` alone, same batch, same run."""
    episode_ends: int
    """Episodes that ended during the timed Gymnasium steps; each restart costs an engine reset."""


def random_checkpoint(preset: str, folder: Path) -> Path:
    """A randomly initialised BlockWorld model of ``preset``, for speed measurements only."""
    import torch

    from worldsim.checkpoint import ModelConfig, save_model
    from worldsim.presets import dynamics_config, get_preset
    from worldsim.spaces import ActionSpec
    from worldsim.tokenizer import Tokenizer
    from worldsim.transformer import Dynamics

    torch.manual_seed(0)
    p = get_preset(preset)
    dyn = dynamics_config(p, p.tokenizer.levels, ActionSpec("MultiDiscrete", BLOCKWORLD_NVEC))
    cfg = ModelConfig(tokenizer=p.tokenizer, dynamics=dyn, env_id=BLOCKWORLD_ID, env_kwargs={}, preset=preset)
    dynamics = Dynamics(dyn)
    # A random done head predicts an episode end on about half the steps, and every end
    # restarts a world (an engine reset and a prompt), which would time restarts instead of
    # steps. A trained model predicts ends as rarely as they happen: make this one never.
    with torch.no_grad():
        dynamics.done_head.weight.zero_()
        dynamics.done_head.bias.fill_(RANDOM_DONE_LOGIT)
    path = folder / f"random-{preset}.safetensors"
    save_model(path, cfg, Tokenizer(p.tokenizer), dynamics)
    return path


def _time_steps(step, actions: np.ndarray, warmup: int) -> tuple[float, int]:
    """Seconds per call of ``step`` over ``actions`` after ``warmup`` untimed calls, and the
    number of episode ends among the timed calls (0 for the bare runtime)."""
    for a in actions[:warmup]:
        step(a)
    ends = 0
    t0 = time.perf_counter()
    for a in actions[warmup:]:
        out = step(a)
        if isinstance(out, tuple):
            ends += int(np.sum(np.asarray(out[2]) | np.asarray(out[3])))
    return (time.perf_counter() - t0) / max(1, len(actions) - warmup), ends


def measure(kwargs: dict, batch: int, steps: int, warmup: int, seed: int) -> Rate:
    """Gymnasium and bare-runtime steps/s for one batch size (1 = the single env)."""
    rng = np.random.default_rng(seed)
    if batch == 1:
        env = gym.make("worldsim/Dream-v0", **kwargs)  # with its TimeLimit, as an RL user makes it
        nvec = np.asarray(env.unwrapped.setup.action_spec.nvec)
        env.reset(seed=seed)
        actions = rng.integers(0, nvec, size=(steps + warmup, len(nvec)))

        def step(a: np.ndarray) -> tuple:
            out = env.step(a)
            if out[2] or out[3]:  # as an RL loop would: a new episode after each end
                env.reset()
            return out

        per_step, ends = _time_steps(step, actions, warmup)
        model = env.unwrapped.model
    else:
        env = gym.make_vec("worldsim/Dream-v0", num_envs=batch, vectorization_mode="vector_entry_point", **kwargs)
        nvec = np.asarray(env.unwrapped.setup.action_spec.nvec)
        env.reset(seed=seed)
        actions = rng.integers(0, nvec, size=(steps + warmup, batch, len(nvec)))
        per_step, ends = _time_steps(env.step, actions, warmup)
        model = env.unwrapped.model
    # The same model and batch, stepped directly: the rate without the Gymnasium layer.
    raw = actions if batch > 1 else actions[:, None]
    raw_per_step, _ = _time_steps(model.step, raw, warmup)
    env.close()
    name = "single env" if batch == 1 else f"vector env N={batch}"
    return Rate(name, batch, batch / per_step, batch / raw_per_step, ends)


@dataclass
class RolloutReport:
    """A long single-env rollout: memory and frame health."""

    steps: int
    rss_after_warmup_mb: float
    rss_end_mb: float
    blank_frames: int
    """Frames of a single colour."""
    frozen_windows: int
    """Windows of 100 steps in which the picture never changed."""
    steps_per_s: float


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux /proc; NaN elsewhere)."""
    import os

    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def rollout(kwargs: dict, steps: int, seed: int, warmup: int = 200) -> RolloutReport:
    """Step one dream env ``steps`` times with random actions, never resetting."""
    env = gym.make("worldsim/Dream-v0", max_episode_steps=-1, **kwargs)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    blank = frozen = 0
    window: list[np.ndarray] = []
    base = rss_mb()
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        obs = env.step(env.action_space.sample())[0]
        blank += int(obs.reshape(-1, 3).std(axis=0).max() == 0)
        window.append(obs)
        if len(window) == 100:
            frozen += int(all(np.array_equal(window[0], f) for f in window[1:]))
            window.clear()
        if step == min(warmup, steps):
            base = rss_mb()
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return RolloutReport(steps, base, rss_mb(), blank, frozen, rate)


def parse_nums(text: str, flag: str) -> list[int]:
    """Vector sizes from a comma-separated ``flag`` value; a bad one raises :class:`WorldSimError` naming ``flag``."""
    try:
        nums = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise WorldSimError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if any(n < 1 for n in nums):
        raise WorldSimError(f"every {flag} entry must be at least 1, got {text!r}")
    return nums


def main(argv: list[str]) -> int:
    """Entry point of ``worldsim bench dream-env``."""
    p = argparse.ArgumentParser(prog="worldsim bench dream-env", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="dream checkpoint (default: the shipped model)")
    p.add_argument("--preset", help="benchmark a randomly initialised model of this preset instead")
    p.add_argument("--backend", default="torch", choices=("torch", "onnx"), help="runtime backend (default torch)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--width", type=int, help="frame width (default: the model's training frames)")
    p.add_argument("--height", type=int, help="frame height (default: the model's training frames)")
    p.add_argument("--chunks", type=int, help="chunks per frame (default: the model's)")
    p.add_argument("--precision", type=precision_choice, metavar="{auto,fp32,bf16}",
                   help="auto (the default): the device's fastest accurate one")
    p.add_argument("--nums", default="16,64", help="vector sizes, comma-separated (default 16,64)")
    p.add_argument("--steps", type=int, default=60, help="timed steps per configuration (default 60)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--threads", type=int, help="CPU threads of torch and of ONNX Runtime (default: their own)")
    p.add_argument("--rollout", type=int, metavar="N",
                   help="instead: one env for N steps, reporting memory growth and blank/frozen frames")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = p.parse_args(argv)
    if a.checkpoint and a.preset:
        raise WorldSimError("give --checkpoint or --preset, not both")
    nums = parse_nums(a.nums, "--nums")
    if a.steps < 1 or a.warmup < 0 or (a.rollout is not None and a.rollout < 1):
        raise WorldSimError("--steps and --rollout must be at least 1, --warmup at least 0")
    if a.threads is not None and a.threads < 1:
        raise WorldSimError(f"--threads must be at least 1, got {a.threads}")
    import torch

    import worldsim  # noqa: F401  (registers the ids)
    from worldsim.cpus import set_threads

    set_threads(a.threads)  # torch's and the ONNX backend's, as bench dream's --threads
    from worldsim.bench import onnx_cache_in

    with tempfile.TemporaryDirectory() as tmp, onnx_cache_in(str(Path(tmp) / "onnx") if a.preset else None):
        checkpoint = str(random_checkpoint(a.preset, Path(tmp))) if a.preset else a.checkpoint
        if a.width is None or a.height is None:  # the size the model was trained at, as the dream env's default
            from worldsim.bench import model_frame_shape

            h, w = model_frame_shape(checkpoint, a.backend, a.device)  # an export folder too
            a.width, a.height = w if a.width is None else a.width, h if a.height is None else a.height
        kwargs = dict(checkpoint=checkpoint, backend=a.backend, device=a.device, width=a.width, height=a.height,
                      chunks=a.chunks, precision=a.precision)  # fmt: skip
        what = f"preset {a.preset} (random weights)" if a.preset else (a.checkpoint or "the shipped model")
        if a.rollout:
            r = rollout(kwargs, a.rollout, seed=0)
            print(f"dream rollout: {what}, {a.width}x{a.height}, {r.steps} steps at {r.steps_per_s:.1f} steps/s; "
                  f"RSS {r.rss_after_warmup_mb:.1f} MiB after warm-up, {r.rss_end_mb:.1f} MiB at the end "
                  f"({r.rss_end_mb - r.rss_after_warmup_mb:+.1f}); {r.blank_frames} blank frames, "
                  f"{r.frozen_windows} frozen 100-step windows")  # fmt: skip
            if a.json:
                _write_json(a.json, {"rollout": asdict(r), "model": what, "width": a.width, "height": a.height, "backend": a.backend})
            return 0
        print(f"dream env benchmark: {what}, {a.width}x{a.height}, backend {a.backend}, "
              f"torch threads {torch.get_num_threads()}, {a.steps} timed steps each")  # fmt: skip
        rates = []
        for batch in [1, *nums]:
            r = measure(kwargs, batch, a.steps, a.warmup, seed=0)
            rates.append(r)
            print(f"  {r.name:<16} {r.gym_steps_per_s:9.1f} steps/s through Gymnasium   "
                  f"(runtime alone {r.runtime_steps_per_s:9.1f}; Gymnasium keeps "
                  f"{r.gym_steps_per_s / r.runtime_steps_per_s:.0%}; {r.episode_ends} episode ends)",
                  flush=True)  # fmt: skip
    single = rates[0].gym_steps_per_s
    targets = {f"single env >= {TARGET_SINGLE:g} steps/s": single >= TARGET_SINGLE}
    print(f"target single env >= {TARGET_SINGLE:g} steps/s: {'met' if single >= TARGET_SINGLE else 'NOT met'} ({single:.1f})")
    for r in rates[1:]:
        if r.batch == 64:
            ok = r.gym_steps_per_s >= TARGET_VECTOR_64
            targets[f"vector N=64 >= {TARGET_VECTOR_64:g} steps/s"] = ok
            print(f"target vector N=64 >= {TARGET_VECTOR_64:g} steps/s: {'met' if ok else 'NOT met'} ({r.gym_steps_per_s:.1f})")
    if a.json:
        _write_json(a.json, {"rows": [asdict(r) for r in rates], "model": what, "width": a.width, "height": a.height,
                             "backend": a.backend, "threads": torch.get_num_threads(), "targets": targets})  # fmt: skip
    return 0


def _write_json(path: str, doc: dict) -> None:
    """``--json``: the printed figures, shaped as the other benches' (a row per configuration,
    then the run's setting). Its folder is made; it is written whole or not at all. Strict
    JSON: a figure this OS cannot give (RSS without /proc) is ``null``, not ``NaN``."""

    def strict(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strict(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [strict(v) for v in x]
        return None if isinstance(x, float) and not math.isfinite(x) else x

    atomic_write_text(path, json.dumps(strict(doc), indent=2, allow_nan=False) + "\n")


def bench_dream_main(argv: list[str]) -> int:
    """Entry point of ``worldsim bench dream``: the runtime's generation benchmark
    (:func:`worldsim.bench.run_dream`: frames/s at each batch and K, FLOPs per frame, share
    of the matmul peak), then the dream env through Gymnasium (:func:`main`: single env and
    the vector env at N = 16 and N = 64, with the targets), unless ``--no-env``.

    The env part times the shipped model (or ``--checkpoint``) at ``--size``, by default the
    model's training frames; a ``--preset``
    given explicitly makes it time a random model of that preset as well.
    """
    from worldsim.bench import dream_parser, run_dream

    ap = dream_parser()
    ap.description = (
        "Generation frames/s at B=1 and B=64, K=1, 2 and the default K (random `small` weights unless --checkpoint), "
        "then worldsim/Dream-v0 steps/s through Gymnasium: single env, N=16 and N=64 (the shipped model unless "
        "--checkpoint, or an explicit --preset)."
    )
    g = ap.add_argument_group("the dream env through Gymnasium")
    g.add_argument("--env", action=argparse.BooleanOptionalAction, default=True,
                   help="then time worldsim/Dream-v0, single and vectorised (default on)")
    g.add_argument("--env-steps", type=int, default=60, help="timed env steps per configuration (default 60)")
    g.add_argument("--env-nums", default="16,64", help="vector env sizes, comma-separated (default 16,64)")
    a = ap.parse_args(argv)
    if a.env:  # refused now, not after the runtime's part has run for a minute
        parse_nums(a.env_nums, "--env-nums")
        if a.env_steps < 1:
            raise WorldSimError(f"--env-steps must be at least 1, got {a.env_steps}")
    rc = run_dream(a)
    if rc or not a.env:
        return rc
    H, W = a.size  # run_dream resolved a size left out to the model's
    env_argv = ["--steps", str(a.env_steps), "--nums", a.env_nums, "--width", str(W), "--height", str(H),
                "--device", a.device, "--backend", a.backend[0]]  # fmt: skip
    if a.checkpoint:
        env_argv += ["--checkpoint", a.checkpoint]
    elif any(x == "--preset" or x.startswith("--preset=") for x in argv):
        env_argv += ["--preset", a.preset]
    if a.threads:
        env_argv += ["--threads", str(a.threads)]
    if a.precision:
        env_argv += ["--precision", a.precision]
    print(flush=True)
    return main(env_argv)
