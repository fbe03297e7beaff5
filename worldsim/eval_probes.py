"""The long and scripted parts of ``worldsim eval``: the stability rollout and the object
permanence probes.

**Stability.** One world, prompted from a held-out explorer (or random) trajectory, runs
open loop for ``stability_steps`` steps under the actions the policy took in the reference
env. :func:`worldsim.metrics.detect_collapse` judges every frame against the band of the
real frames and against the real motion at the same step. The same loop times generation
of a single world, which is the frames/s a player sees.

**Object permanence** (envs with a :class:`~worldsim.reference.Probe`): from a real context
of standing still,

* *turn*: turn a full circle in place. The final dream frame is compared with the frame
  before the turn (what a world that remembered would show); half-way round, the dream is
  compared with the real view, beside the copy-last baseline (the pre-turn view), so a
  dream that did not really turn is caught. ``turn_rate`` is how fast the dream's picture
  slides sideways over the whole turn against the real one's
  (:func:`~worldsim.metrics.horizontal_shift` per step, averaged over steps and worlds):
  1 turns with the world, 0.5 at half its speed. ``teacher_forced_turn_rate`` is the same
  with every step generated from the real frames before it, so a model that turns too
  little in one step can be told from one that slows down on its own frames;
* *walk*: walk away for ``walk_steps`` steps and back as many; the final dream frame is
  compared with the frame before the walk, and the farthest point as above.

Each probe runs in ``probe_worlds`` held-out worlds at once (16 by default).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from worldsim.errors import WorldSimError
from worldsim.metrics import (
    Band,
    detect_collapse,
    frame_stats,
    horizontal_shift,
    motion_ratio,
    psnr,
)
from worldsim.reference import (
    HELDOUT_SEED_BASE,
    PROBES,
    STABILITY_SEED_BASE,
    ReferenceEnv,
    make_policy,
)

if TYPE_CHECKING:
    from worldsim.evaluate import Evaluation

PROBE_SEED_BASE = HELDOUT_SEED_BASE + 90_000


def action_names(ref: ReferenceEnv) -> list[str]:
    """Names of the action components: the env's ``action_names``, or its module's
    ``ACTION_NAMES``, else ``a0, a1, ...``."""
    env = ref.env.unwrapped
    names = getattr(env, "action_names", None)
    if names is None:
        names = getattr(sys.modules.get(type(env).__module__), "ACTION_NAMES", None)
    n = ref.spec.num_components
    if names is None or len(names) != n:
        names = [f"a{i}" for i in range(n)]
    return list(names)


@dataclass
class StabilityResult:
    """The stability section, its speed, and its frame pairs for the IDM."""

    metrics: dict[str, Any]
    fps: float
    real_prev: np.ndarray
    real_next: np.ndarray
    real_actions: np.ndarray
    dream_prev: np.ndarray
    dream_next: np.ndarray
    dream_actions: np.ndarray


def stability(ev: Evaluation, policy_seed: int) -> StabilityResult:
    """The long open-loop rollout of one world (see the module docstring)."""
    P, S, model = ev.P, ev.cfg.stability_steps, ev.model
    seed = _stability_seed(ev, policy_seed)
    policy, _ = make_policy(ev.ref.env_id, ev.ref.spec, np.random.default_rng([policy_seed, 5]))
    tr = ev.ref.rollout(seed, P - 1 + S, policy)
    ev.reseed("stability")
    model.prompt(tr.frames[None, :P], tr.actions[None, : P - 1])
    dream = []
    t0 = time.perf_counter()
    for i in range(S):
        dream.append(model.step(tr.actions[None, P - 1 + i]).frames[0])
    fps = S / (time.perf_counter() - t0)
    dream = np.stack(dream)  # (S, H, W, 3)
    real = tr.frames[P:]
    band = Band.from_frames(tr.frames)
    report = detect_collapse(dream, real, band=band)
    real_stats = frame_stats(real)
    moves = ~tr.resets[P - 1 :]  # a real reset jumps to another world: not motion
    late = moves & (np.arange(S) >= S // 2)
    metrics = {**report.summary(), "steps": S, "seed": seed, "real_resets": int(tr.resets[P - 1 :].sum()),
               "mean_psnr_vs_real": float(np.mean(psnr(dream, real))),
               "copy_last_mean_psnr_vs_real": float(np.mean(psnr(np.broadcast_to(tr.frames[P - 1], real.shape), real))),
               "motion_ratio": motion_ratio(report.stats, real_stats, moves),
               "late_motion_ratio": motion_ratio(report.stats, real_stats, late)}  # fmt: skip
    from worldsim.eval_media import plot_stability, side_by_side, write_mp4

    plot_stability(ev.out / "stability.png", report, real_stats,
                   f"{ev.env_id}: {S}-step open-loop rollout, collapse statistics")  # fmt: skip
    if ev.cfg.videos:
        write_mp4(ev.out / "stability.mp4", side_by_side(real, dream))
    acts = tr.actions[P - 1 :]
    ok = ~tr.resets[P - 1 :]  # a real step that reset the episode shows no action's effect
    prev_dream = np.concatenate([tr.frames[P - 1 : P], dream[:-1]])
    return StabilityResult(
        metrics=metrics, fps=fps,
        real_prev=tr.frames[P - 1 : -1][ok], real_next=real[ok], real_actions=acts[ok],
        dream_prev=prev_dream[ok], dream_next=dream[ok], dream_actions=acts[ok],  # the same pairs as the real ones
    )  # fmt: skip


def _stability_seed(ev: Evaluation, policy_seed: int, tries: int = 50) -> int:
    """The first reset seed from :data:`STABILITY_SEED_BASE` whose episode outlasts the ``P``
    prompt frames under the policy's actions.

    The real rollout restarts when its episode ends; one that ended inside the prompt gave
    the model a context that jumps from one world to the next, and every figure of the
    rollout was measured from it."""
    steps = ev.P - 1
    for k in range(tries):
        policy, _ = make_policy(ev.ref.env_id, ev.ref.spec, np.random.default_rng([policy_seed, 5]))
        if not ev.ref.rollout(STABILITY_SEED_BASE + k, steps, policy, stop_at_end=True).resets.any():
            return STABILITY_SEED_BASE + k
    raise WorldSimError(f"{ev.env_id}: no episode of {tries} lasted the {steps} steps of the stability rollout's prompt; lower --context")


def _probe(ev: Evaluation, script: np.ndarray, half: int, name: str, shifts: bool = False) -> tuple[dict[str, Any] | None, np.ndarray | None]:
    """Run ``script`` (after ``P - 1`` still steps) in ``probe_worlds`` worlds; compare frames
    (and, with ``shifts``, how far the picture slides sideways per step). Returns the
    figures (None when every world ended its episode) and the real frames ``[B, P + n, ...]``."""
    P, model, ref = ev.P, ev.model, ev.ref
    still = np.zeros((P - 1, ref.spec.num_components), np.int64)
    full = np.concatenate([still, script])
    trajs = []
    want = ev.cfg.probe_worlds
    for k in range(4 * want):
        tr = ref.rollout(PROBE_SEED_BASE + k, len(full), script=full)
        if not tr.resets.any():
            trajs.append(tr)
        if len(trajs) == want:
            break
    if not trajs:
        return None, None
    frames = np.stack([t.frames for t in trajs])  # (B, P + n, H, W, 3)
    ev.reseed(name)
    model.prompt(frames[:, :P], np.broadcast_to(still, (len(trajs), *still.shape)))
    dream = np.stack([model.step(np.broadcast_to(a, (len(trajs), len(a)))).frames for a in script], axis=1)  # (B, n, H, W, 3)
    start, real = frames[:, P - 1], frames[:, P:]
    if ev.cfg.videos:
        from worldsim.eval_media import side_by_side, write_gif

        write_gif(ev.out / f"permanence_{name}.gif", side_by_side(np.concatenate([frames[0, :P], real[0]]),
                                                                  np.concatenate([frames[0, :P], dream[0]])))  # fmt: skip
    out: dict[str, Any] = {}
    if shifts:
        real_shift = float(horizontal_shift(frames[:, P - 1 : -1], real, _reach(frames)).mean())
        dream_shift = float(horizontal_shift(np.concatenate([start[:, None], dream[:, :-1]], 1), dream, _reach(frames)).mean())
        out = {"real_shift_per_step": real_shift, "dream_shift_per_step": dream_shift, "turn_rate": _rate(dream_shift, real_shift)}
    return {
        **out,
        "worlds": len(trajs),
        "steps": len(script),
        "final_vs_start_psnr": float(psnr(dream[:, -1], start).mean()),
        "final_vs_real_final_psnr": float(psnr(dream[:, -1], real[:, -1]).mean()),
        "real_final_vs_start_psnr": float(psnr(real[:, -1], start).mean()),
        "half_step": half,
        "half_psnr": float(psnr(dream[:, half - 1], real[:, half - 1]).mean()),
        "half_copy_last_psnr": float(psnr(start, real[:, half - 1]).mean()),
    }, frames


def _reach(frames: np.ndarray) -> int:
    """The largest sideways shift measured, in pixels: 8 covers BlockWorld's 2-4 a step at 64x64."""
    return max(1, min(8, frames.shape[-2] // 4))


def _rate(dream_shift: float, real_shift: float) -> float | None:
    """The dream's slide per step over the real one's; None when the real view barely slid."""
    return dream_shift / real_shift if abs(real_shift) > 0.05 else None


def _teacher_forced_turn(ev: Evaluation, frames: np.ndarray, script: np.ndarray) -> float:
    """The turn probe one step at a time: before each step the model is prompted afresh with
    the ``P`` real frames up to it, so every generated frame continues a real, turning view.
    Returns the dream's mean sideways slide per step, in pixels (the real one's is
    ``real_shift_per_step``).

    It tells apart a model that turns too little in a single step from one that turns well
    from real context but slows down as its own frames become the context."""
    P, model = ev.P, ev.model
    B = len(frames)
    ev.reseed("turn_rate")
    acts = np.concatenate([np.zeros((P - 1, script.shape[1]), np.int64), script])
    dream = np.stack([_one_step(model, frames[:, i : i + P], np.broadcast_to(acts[i : i + P - 1], (B, P - 1, acts.shape[1])),
                                np.broadcast_to(acts[P - 1 + i], (B, acts.shape[1])))
                      for i in range(len(script))], axis=1)  # fmt: skip
    return float(horizontal_shift(frames[:, P - 1 : -1], dream, _reach(frames)).mean())


def _one_step(model: Any, context: np.ndarray, context_actions: np.ndarray, action: np.ndarray) -> np.ndarray:
    model.prompt(context, context_actions)
    return model.step(action).frames


def permanence(ev: Evaluation) -> dict[str, Any]:
    """Both probes, or ``{"skipped": reason}`` for an env without a probe script."""
    probe = PROBES.get(ev.ref.env_id)  # the registered id, without a module: prefix
    if probe is None:
        return {"skipped": f"no object-permanence probe for {ev.env_id}: it needs a known turn-in-place action "
                           "and its steps per circle (worldsim/reference.py, PROBES)"}  # fmt: skip
    if len(probe.turn) != ev.ref.spec.num_components:
        return {"skipped": f"the probe for {ev.env_id} does not fit its action space {ev.ref.spec}"}
    n, w = probe.full_turn_steps, probe.walk_steps
    turn = np.tile(np.asarray(probe.turn, np.int64), (n, 1))
    walk = np.concatenate([np.tile(np.asarray(probe.forward, np.int64), (w, 1)), np.tile(np.asarray(probe.back, np.int64), (w, 1))])
    out: dict[str, Any] = {}
    turn_frames = None
    for name, script, half in (("turn", turn, n // 2), ("walk", walk, w)):
        r, frames = _probe(ev, script, half, name, shifts=name == "turn")
        out[name] = r if r is not None else {"skipped": "every probe world ended its episode during the script"}
        if name == "turn" and r is not None:
            turn_frames = frames
    if turn_frames is not None:
        t = out["turn"]
        t["teacher_forced_turn_rate"] = _rate(_teacher_forced_turn(ev, turn_frames, turn), t["real_shift_per_step"])
    return out
