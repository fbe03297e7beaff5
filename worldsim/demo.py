"""``worldsim demo`` (what ``make demo`` runs): the shipped model dreams BlockWorld.

It prompts the model with real frames of a held-out world, then rolls it out open loop
under the explorer's actions (the same actions drive the real env), and writes
``DIR/dream.gif`` (the context, then the dream) and ``DIR/side_by_side.gif``
(real | dream | difference x4). It prints the generation speed and the PSNR of the dream
against the real frames beside the copy-last-frame baseline on the same frames.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from worldsim.cli import DEVICE_HELP
from worldsim.eval_media import side_by_side, write_gif
from worldsim.metrics import psnr
from worldsim.reference import HELDOUT_SEED_BASE, ReferenceEnv, make_policy

DEMO_SEED_BASE = HELDOUT_SEED_BASE + 70_000
SHORT_HORIZON = 16


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worldsim demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for dream.gif and side_by_side.gif")
    p.add_argument("--checkpoint", default=None, help="dynamics checkpoint (default: the shipped model)")
    p.add_argument("--steps", type=int, default=200, help="open-loop steps to dream (default 200)")
    p.add_argument("--seed", type=int, default=0, help="which held-out world (and the explorer's choices; default 0)")
    p.add_argument("--scale", type=int, default=3, help="GIF upscaling factor (default 3)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return p


def main(argv: list[str]) -> int:
    a = build_parser().parse_args(argv)
    from worldsim.cpus import set_threads
    from worldsim.errors import WorldSimError
    from worldsim.runtime import load

    if a.steps < 1 or a.scale < 1:
        raise WorldSimError("--steps and --scale must be at least 1")
    if a.seed < 0:
        raise WorldSimError(f"--seed must be at least 0, got {a.seed}")
    set_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)  # an --out that cannot be a folder fails now, not after the dream
    model = load(a.checkpoint, device=a.device, seed=a.seed)
    env_id = model.config.env_id
    if env_id is None:
        raise WorldSimError("the checkpoint does not name the env it was trained on")
    ref = ReferenceEnv(env_id, dict(model.config.env_kwargs or {}))
    P = model.context_frames - 1
    policy, name = make_policy(env_id, ref.spec, np.random.default_rng([a.seed, 3]))
    tr = ref.rollout(DEMO_SEED_BASE + a.seed, P - 1 + a.steps, policy)
    ref.close()
    model.prompt(tr.frames[None, :P], tr.actions[None, : P - 1])
    dream = []
    t0 = time.perf_counter()
    for i in range(a.steps):
        dream.append(model.step(tr.actions[None, P - 1 + i]).frames[0])
    fps = a.steps / (time.perf_counter() - t0)
    dream = np.stack(dream)  # (steps, H, W, 3)
    real, last = tr.frames[P:], tr.frames[P - 1]
    p_dream, p_copy = psnr(dream, real), psnr(np.broadcast_to(last, real.shape), real)
    context = tr.frames[:P]
    big = np.concatenate([context, dream])
    k = min(SHORT_HORIZON, a.steps)
    resets = int(tr.resets[P - 1 :].sum())
    print(f"{env_id} seed {DEMO_SEED_BASE + a.seed}: {P} real context frames, then {a.steps} dreamed steps under {name} actions")
    print(f"speed: {fps:.1f} frames/s (one world, {model.backend.device}, chunks {model.chunks})")
    restarted = f" (the real episode restarted {resets}x)" if resets else ""
    print(f"PSNR vs real, steps 1-{k}: dream {p_dream[:k].mean():.2f} dB, copy-last {p_copy[:k].mean():.2f} dB"
          + (restarted if k == a.steps else ""))  # fmt: skip
    if a.steps > k:  # a short run's whole is its first steps: one line, not the same one twice
        print(f"PSNR vs real, steps 1-{a.steps}: dream {p_dream.mean():.2f} dB, copy-last {p_copy.mean():.2f} dB"
              + restarted)  # fmt: skip
    # The figures come first: a GIF the disk refuses (full) must not lose the dream's numbers.
    write_gif(out / "dream.gif", np.repeat(np.repeat(big, a.scale, axis=1), a.scale, axis=2))
    write_gif(out / "side_by_side.gif", side_by_side(np.concatenate([context, real]), big, scale=a.scale))
    print(f"wrote {out / 'dream.gif'} and {out / 'side_by_side.gif'} (left: real, middle: dream, right: |difference| x4)")
    return 0
