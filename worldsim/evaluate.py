"""``worldsim eval``: how faithful a world model is to the env it learned, in numbers.

The same action sequences run in the reference env (any registered Gymnasium pixel env)
and in the dream: the same real context, then the dream on its own (open loop). Every
PSNR stands beside the *copy-last-frame* baseline on the same frames, the dream that just
repeats its last real frame. Small per-step motion makes that baseline strong, so the gain
over it, not the absolute figure, shows that the model simulates the world.

Sections of ``DIR/metrics.json`` (docs/eval.md explains each figure):

* ``tokenizer``: reconstruction PSNR/SSIM of held-out frames;
* ``teacher_forced``: real context, one generated step, at every step of each episode;
* ``open_loop``: PSNR/SSIM at horizons 1, 4, 8, 16, 32 and per step (``psnr_vs_horizon.png``);
* ``controllability``: per-component F1 of an inverse-dynamics model (:mod:`worldsim.idm`)
  on dream frame pairs beside real pairs under the same actions;
* ``permanence``: turn a full circle in place, walk away and back (envs with a probe in
  :data:`worldsim.reference.PROBES`; skipped with the reason elsewhere);
* ``stability``: a long open-loop rollout judged by :func:`worldsim.metrics.detect_collapse`
  (``stability.png``);
* ``reward`` and ``termination``: precision and recall of the predicted events;
* ``speed``: generated frames/s, single world and batched.

The seeds are held out from training (:mod:`worldsim.reference`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.atomic import atomic_write_text, output_lock
from worldsim.cli import DEVICE_HELP, json_object, precision_choice
from worldsim.cpus import set_threads
from worldsim.errors import WorldSimError
from worldsim.eval_probes import action_names, permanence, stability
from worldsim.idm import IDMConfig, IDMData, cache_key, load_or_train
from worldsim.metrics import macro_f1, precision_recall, psnr, ssim
from worldsim.reference import (
    HELDOUT_SEED_BASE,
    IDM_SEED_BASE,
    ReferenceEnv,
    Trajectory,
    make_policy,
)

HORIZONS = (1, 4, 8, 16, 32)
MEAN_HORIZON = 16
"""Open-loop PSNR is summarised as the mean over horizons 1..16, as the targets state it."""
IDM_EPISODE_STEPS = 500
"""Steps per world of the IDM's training data: many short worlds beat one long one."""
OUTPUTS = ("metrics.json", "seeds.json", "psnr_vs_horizon.png", "ssim_vs_horizon.png", "stability.png",
           "side_by_side.gif", "stability.mp4", "permanence_turn.gif", "permanence_walk.gif")  # fmt: skip
"""Every file an eval writes into its folder (some only with videos, a probe or several seeds)."""


def clear_outputs(folder: Path) -> None:
    """Remove an earlier eval's files from ``folder`` (:data:`OUTPUTS`; nothing else).

    A run writes only some of them (no videos with ``--no-videos``, no probe GIFs for an env
    without a probe), so without this a folder used again kept the earlier run's videos
    beside this run's figures, as if they showed this model."""
    for name in OUTPUTS:
        (folder / name).unlink(missing_ok=True)


@dataclass
class EvalConfig:
    """What ``worldsim eval`` measures and how much; one field per command-line option."""

    checkpoint: str | None = None
    """Dynamics checkpoint; None = the shipped default."""
    out: str = "eval"
    """Folder for metrics.json, plots and videos."""
    env: str | None = None
    """Reference env id; None = the env named in the checkpoint."""
    env_kwargs: dict[str, Any] | None = None
    """None = the checkpoint's kwargs when ``env`` is its env, else {}."""
    episodes: int = 64
    """Held-out episodes, run as one batch. 64, not fewer: over 16 episodes the then shipped
    model's tokenizer PSNR (its earlier decoder) read 32.15-32.52 dB with three seeds and over 64 read
    30.98-31.33, and the copy-last baseline of the open loop swung from 26.5 to 35.5 dB
    with the seed (25.6-29.8 over 64)."""
    horizon: int = 32
    """Open-loop steps per episode."""
    context: int | None = None
    """Real prompt frames; None = as many as the model's context holds (context - 1)."""
    stability_steps: int = 2000
    probe_worlds: int = 16
    """Held-out worlds each object-permanence probe runs in (one batch). 16, not fewer: with
    4 worlds a preview model's half-way turn beat copy-last with one of three sampling
    seeds and lost with the others; with 16 it lost with all three (by 0.36-0.58 dB, 64
    episodes)."""
    idm: IDMConfig = field(default_factory=IDMConfig)
    chunks: int | None = None
    temperature: float | None = None
    backend: str = "torch"
    device: str = "auto"
    precision: str | None = None
    """``fp32`` or ``bf16`` (None: the backend's default for the device, see ``worldsim.load``)."""
    seed: int = 0
    reward_threshold: float = 0.5
    """|reward| at or above this counts as a reward event."""
    cache_dir: str | None = None
    videos: bool = True
    keep_pixels: bool | None = None
    """Keep unchanged cells' pixels (None: the runtime's default, ``DEFAULT_KEEP_PIXELS``)."""
    refine: bool | None = None
    """Use the checkpoint's refiner (None: when it has one, as ``worldsim.load``)."""
    unfreeze: int | None = None
    """Still steps before a world is sampled without the stay gate (None: ``DEFAULT_UNFREEZE``)."""
    guidance: float | None = None
    """Action guidance scale (None: the checkpoint's, ``worldsim.load``)."""
    ranked_moves: bool | None = None
    """Decide for each frame at once which cells change (None: the runtime's default)."""


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if np.size(x) else float("nan")


def _clean(x: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN and infinities to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _compare(dream: np.ndarray, real: np.ndarray, last: np.ndarray) -> dict[str, float]:
    p, c = psnr(dream, real), psnr(last, real)
    return {"psnr": _mean(p), "ssim": _mean(ssim(dream, real)), "copy_last_psnr": _mean(c),
            "copy_last_ssim": _mean(ssim(last, real)), "gain_db": _mean(p) - _mean(c), "frames": int(p.size)}  # fmt: skip


def _by_change(dream: np.ndarray, real: np.ndarray, last: np.ndarray) -> dict[str, Any]:
    """PSNR apart for frames that changed from ``last`` and frames that did not.

    A frame identical to the one before scores the PSNR cap (60 dB) for copy-last, so a
    mean over all frames mostly counts how many such frames there are; the moving frames
    show whether the dream predicts motion better than repeating the last frame."""
    still = np.all(real == last, axis=(-3, -2, -1))
    p, c = psnr(dream, real), psnr(last, real)
    return {"still_share": _mean(still),
            "moving": {"psnr": _mean(p[~still]), "copy_last_psnr": _mean(c[~still]), "frames": int((~still).sum())},
            "still": {"psnr": _mean(p[still]), "exact": _mean(np.all(dream == real, axis=(-3, -2, -1))[still]),
                      "frames": int(still.sum())}}  # fmt: skip


def _events(pred_r: np.ndarray, real_r: np.ndarray, pred_d: np.ndarray, real_d: np.ndarray, thr: float) -> dict[str, Any]:
    rew = precision_recall(np.abs(real_r) >= thr, np.abs(pred_r) >= thr)
    term = precision_recall(real_d, pred_d)
    return {"reward": {**asdict(rew), "mae": _mean(np.abs(pred_r - real_r)), "threshold": thr}, "termination": asdict(term)}


def _held_out(ref: ReferenceEnv, env_id: str, n: int, steps: int, seed: int) -> tuple[list[Trajectory], str]:
    """``n`` trajectories of ``steps`` steps that stay inside one episode."""
    out: list[Trajectory] = []
    name = "random"
    longest = 0
    for k in range(max(50, 4 * n)):
        policy, name = make_policy(env_id, ref.spec, np.random.default_rng([seed, k]))
        # stops where the episode ends: an env whose episodes are far shorter than a large
        # --horizon is told so after a few episode lengths, not after 50 full horizons
        traj = ref.rollout(HELDOUT_SEED_BASE + k, steps, policy, stop_at_end=True)
        if not traj.resets.any():
            out.append(traj)
        else:
            longest = max(longest, len(traj.actions) - 1)
        if len(out) == n:
            return out, name
    raise WorldSimError(
        f"{env_id}: fewer than {n} of {max(50, 4 * n)} held-out episodes last {steps} steps (context - 1 + horizon) "
        f"without ending; in the others at most {longest} fit; lower --context or --horizon"
    )


def _check(config: EvalConfig) -> None:
    """Refuse budgets and thresholds that would fail late or measure nothing, before the model loads."""
    sizes = {"episodes": config.episodes, "horizon": config.horizon, "stability_steps": config.stability_steps,
             "probe_worlds": config.probe_worlds, "idm_data_steps": config.idm.data_steps, "idm_train_steps": config.idm.train_steps}  # fmt: skip
    for name, value in sizes.items():
        if value < 1:
            raise WorldSimError(f"--{name.replace('_', '-')} must be at least 1")
    # |reward| >= 0 holds for every step, so 0 would make every step a reward event (precision
    # and recall 1 on an env that never rewards); NaN would make none
    if not (math.isfinite(config.reward_threshold) and config.reward_threshold > 0):
        raise WorldSimError(f"--reward-threshold must be a number above 0, got {config.reward_threshold}")


SECTIONS = ("teacher_forced", "open_loop", "stability", "turn", "walk", "turn_rate")
"""The eval's sampling sections, each of which starts its draws afresh (:func:`section_seed`)."""


def section_seed(seed: int, section: str) -> int:
    """The sampling seed of one section of the eval of ``--seed seed``.

    Each section restarts the dream's random draws from its own seed, so its figures depend
    on ``--seed`` and its own budget alone: when the sections shared one stream, the long
    rollout's figures moved with ``--episodes`` and the probes' with ``--stability-steps``,
    so a cheaper eval was no preview of a default one's probes. Teacher-forced, the first
    section, keeps ``seed`` itself.
    """
    if section == SECTIONS[0]:
        return seed
    state = np.random.SeedSequence([seed, SECTIONS.index(section)]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))  # below 2**63: any generator takes it


class Evaluation:
    """One ``worldsim eval`` run (see the module docstring). Call :meth:`run`."""

    def reseed(self, section: str) -> None:
        """Start ``section``'s sampling draws from :func:`section_seed`."""
        self.model.reseed(section_seed(self.cfg.seed, section))

    def __init__(self, config: EvalConfig, log: Any = print) -> None:
        from worldsim.runtime import load

        _check(config)
        self.cfg, self.log = config, log
        self.model = load(config.checkpoint, backend=config.backend, device=config.device, precision=config.precision, chunks=config.chunks,
                          temperature=config.temperature, seed=config.seed, keep_pixels=config.keep_pixels,
                          unfreeze=config.unfreeze, guidance=config.guidance, ranked_moves=config.ranked_moves,
                          refine=config.refine)  # fmt: skip
        mc = self.model.config
        self.env_id = config.env or mc.env_id
        if self.env_id is None:
            raise WorldSimError("the checkpoint does not name the env it was trained on; pass --env")
        if config.env_kwargs is not None:
            kwargs = dict(config.env_kwargs)
        else:
            same = mc.env_id in (self.env_id, self.env_id.split(":")[-1])
            kwargs = dict(mc.env_kwargs or {}) if same else {}
        self.env_kwargs = kwargs
        self.ref = ReferenceEnv(self.env_id, kwargs)
        if self.ref.spec != self.model.action_spec:
            raise WorldSimError(f"{self.env_id} has actions {self.ref.spec}, the checkpoint was trained on {self.model.action_spec}")
        H, W = self.ref.shape
        if (H, W) != tuple(mc.frame_shape):
            self.log(f"eval: note: the model was trained on {mc.frame_shape[0]}x{mc.frame_shape[1]} frames; "
                     f"{self.env_id} renders {H}x{W}, so this measures it at a size it never saw")  # fmt: skip
        if H % self.model.frame_multiple or W % self.model.frame_multiple:
            raise WorldSimError(f"{self.env_id} renders {H}x{W}; this model needs multiples of {self.model.frame_multiple} "
                                "(pass --env-kwargs with the frame size)")  # fmt: skip
        most = self.model.context_frames - 1
        if config.context is not None and not 1 <= config.context <= most:
            raise WorldSimError(f"--context must be 1-{most} for this model (its context is {most + 1} frames), got {config.context}")
        self.P = config.context or most
        """Real prompt frames."""
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)

    def _reconstruct(self, frames: np.ndarray) -> np.ndarray:
        out = [self.model.decode(self.model.encode(frames[i : i + 64])) for i in range(0, len(frames), 64)]
        return np.concatenate(out)

    def run(self) -> dict[str, Any]:
        """Run every section, write the files, and return the metrics."""
        cfg, P, Hz = self.cfg, self.P, self.cfg.horizon
        start = time.perf_counter()
        self.log(f"eval: {self.env_id} {self.ref.shape[0]}x{self.ref.shape[1]}, {cfg.episodes} held-out episodes, "
                 f"context {P}, horizon {Hz}")  # fmt: skip
        trajs, policy = _held_out(self.ref, self.ref.env_id, cfg.episodes, P - 1 + Hz, cfg.seed)
        frames = np.stack([t.frames for t in trajs])  # (B, P + Hz, H, W, 3)
        actions = np.stack([t.actions for t in trajs])  # (B, P - 1 + Hz, C)
        rewards = np.stack([t.rewards for t in trajs])
        terms = np.stack([t.terminated for t in trajs])
        B = len(trajs)
        m: dict[str, Any] = {
            "checkpoint": str(cfg.checkpoint or "default"), "env_id": self.env_id, "env_kwargs": self.env_kwargs,
            "frame_shape": list(self.ref.shape), "model_frame_shape": list(self.model.config.frame_shape), "policy": policy,
            "settings": {"episodes": B, "horizon": Hz, "context": P, "chunks": self.model.chunks, "keep_pixels": self.model.keep_pixels, "refine": self.model.refine, "unfreeze": self.model.unfreeze, "ranked_moves": self.model.ranked_moves,
                         "guidance": self.model.guidance,
                         "temperature": self.model.temperature, "backend": cfg.backend, "device": self.model.backend.device,
                         "precision": self.model.backend.precision},
            "seeds": {"episodes": [t.seed for t in trajs], "idm_from": IDM_SEED_BASE},
        }  # fmt: skip

        flat = frames.reshape(-1, *frames.shape[2:])
        rec = self._reconstruct(flat)
        m["tokenizer"] = {"psnr": _mean(psnr(rec, flat)), "ssim": _mean(ssim(rec, flat)), "frames": len(flat)}
        self.log(f"tokenizer: {m['tokenizer']['psnr']:.2f} dB")

        # teacher forced: real frames t-P..t-1, the action t-1, one generated frame t
        tf_pred, tf_r, tf_d = [], [], []
        self.reseed("teacher_forced")
        for t in range(P, P + Hz):
            self.model.prompt(frames[:, t - P : t], actions[:, t - P : t - 1])
            res = self.model.step(actions[:, t - 1])
            tf_pred.append(res.frames)
            tf_r.append(res.reward)
            tf_d.append(res.done)
        tf = np.stack(tf_pred, axis=1)  # (B, Hz, H, W, 3)
        m["teacher_forced"] = _compare(tf, frames[:, P:], frames[:, P - 1 : -1])
        m["teacher_forced"]["by_change"] = _by_change(tf, frames[:, P:], frames[:, P - 1 : -1])
        tf_events = _events(np.stack(tf_r, 1), rewards[:, P - 1 :], np.stack(tf_d, 1), terms[:, P - 1 :], cfg.reward_threshold)
        self.log(f"teacher-forced: {m['teacher_forced']['psnr']:.2f} dB (copy-last {m['teacher_forced']['copy_last_psnr']:.2f})")

        # open loop: the same prompt frames 0..P-1, then Hz generated steps
        self.reseed("open_loop")
        self.model.prompt(frames[:, :P], actions[:, : P - 1])
        dream, ol_r, ol_d = [], [], []
        t0 = time.perf_counter()
        for h in range(Hz):
            res = self.model.step(actions[:, P - 1 + h])
            dream.append(res.frames)
            ol_r.append(res.reward)
            ol_d.append(res.done)
        batched_fps = B * Hz / (time.perf_counter() - t0)
        dream = np.stack(dream, axis=1)  # (B, Hz, H, W, 3)
        real = frames[:, P:]
        last = np.broadcast_to(frames[:, P - 1 : P], real.shape)
        p_d, p_c = psnr(dream, real), psnr(last, real)  # (B, Hz)
        s_d, s_c = ssim(dream, real), ssim(last, real)
        per_h = {str(h): {"psnr": _mean(p_d[:, h - 1]), "ssim": _mean(s_d[:, h - 1]), "copy_last_psnr": _mean(p_c[:, h - 1]),
                          "copy_last_ssim": _mean(s_c[:, h - 1]), "gain_db": _mean(p_d[:, h - 1] - p_c[:, h - 1])}
                 for h in HORIZONS if h <= Hz}  # fmt: skip
        k = min(MEAN_HORIZON, Hz)
        m["open_loop"] = {
            "horizons": per_h,
            f"mean_1_{k}": {"psnr": _mean(p_d[:, :k]), "copy_last_psnr": _mean(p_c[:, :k]), "gain_db": _mean(p_d[:, :k] - p_c[:, :k])},
            "per_step": {"psnr": p_d.mean(0), "copy_last_psnr": p_c.mean(0), "ssim": s_d.mean(0), "copy_last_ssim": s_c.mean(0)},
        }
        self.log(f"open loop 1-{k}: {m['open_loop'][f'mean_1_{k}']['psnr']:.2f} dB (copy-last {m['open_loop'][f'mean_1_{k}']['copy_last_psnr']:.2f})")
        ol_events = _events(np.stack(ol_r, 1), rewards[:, P - 1 :], np.stack(ol_d, 1), terms[:, P - 1 :], cfg.reward_threshold)
        m["reward"] = {"teacher_forced": tf_events["reward"], "open_loop": ol_events["reward"]}
        m["termination"] = {"teacher_forced": tf_events["termination"], "open_loop": ol_events["termination"]}

        from worldsim.eval_media import plot_horizon, side_by_side, write_gif

        # Only now, before this run's first file: a run refused early (a --horizon its episodes
        # cannot hold, say) leaves an earlier eval's files as they were.
        clear_outputs(self.out)
        hs = np.arange(1, Hz + 1)
        plot_horizon(self.out / "psnr_vs_horizon.png", hs, {"dream": p_d.mean(0), "copy last frame": p_c.mean(0)},
                     "PSNR (dB)", f"{self.env_id}: open-loop PSNR, {B} held-out episodes")  # fmt: skip
        plot_horizon(self.out / "ssim_vs_horizon.png", hs, {"dream": s_d.mean(0), "copy last frame": s_c.mean(0)},
                     "SSIM", f"{self.env_id}: open-loop SSIM")  # fmt: skip
        if cfg.videos:
            rows = [side_by_side(np.concatenate([frames[i, :P], real[i]]), np.concatenate([frames[i, :P], dream[i]]))
                    for i in range(min(B, 4))]  # fmt: skip
            write_gif(self.out / "side_by_side.gif", np.concatenate(rows, axis=1))

        stab = stability(self, policy_seed=cfg.seed)
        m["stability"], m["speed"] = stab.metrics, {"fps_single": stab.fps, "fps_batched": batched_fps, "batch": B}
        self.log(f"stability: {cfg.stability_steps} steps, collapsed={stab.metrics['collapsed']}, {stab.fps:.1f} frames/s")

        m["controllability"] = self._controllability(frames, actions, dream, stab, policy)
        m["permanence"] = permanence(self)
        m["targets"] = _targets(m, k)
        m["seconds"] = time.perf_counter() - start
        m = _clean(m)
        text = json.dumps(m, indent=2) + "\n"
        try:
            atomic_write_text(self.out / "metrics.json", text)
        except OSError as e:
            # Minutes of measuring must not go with the file (a disk that filled meanwhile): the
            # log gets them whole, as metrics.json would have held them.
            self.log(f"could not write {self.out / 'metrics.json'} ({e.strerror or e}); its figures follow:\n{text.rstrip()}")
            raise
        return m

    def _controllability(self, frames: np.ndarray, actions: np.ndarray, dream: np.ndarray, stab: Any, policy: str) -> dict[str, Any]:
        cfg, P = self.cfg, self.P
        shape = self.ref.shape
        nvec = tuple(self.ref.spec.nvec)

        def collect() -> IDMData:
            trajs = []
            per = min(IDM_EPISODE_STEPS, cfg.idm.data_steps)
            for k in range(math.ceil(cfg.idm.data_steps / per)):
                # not the eval's --seed: the cached judge is one per env and config, so it must not
                # depend on which seed happened to train it first
                pol, _ = make_policy(self.ref.env_id, self.ref.spec, np.random.default_rng([7, k]))
                tr = self.ref.rollout(IDM_SEED_BASE + k, per, pol)
                trajs.append((tr.frames, tr.actions, ~tr.resets))
            return IDMData.from_trajectories(trajs)

        key = cache_key(self.ref.env_id, self.env_kwargs, shape, policy, cfg.idm, self.ref.code_digest())
        cache = Path(cfg.cache_dir) if cfg.cache_dir else None
        idm, info = load_or_train(key, collect, nvec, shape, cfg.idm, cache, log=self.log)
        # pairs under the same actions: real frame i -> i+1, dream frame i -> i+1 (dream 0 = the last real frame)
        real_prev = frames[:, P - 1 : -1].reshape(-1, *shape, 3)
        real_next = frames[:, P:].reshape(-1, *shape, 3)
        dream_prev = np.concatenate([frames[:, P - 1 : P], dream[:, :-1]], axis=1).reshape(-1, *shape, 3)
        dream_next = dream.reshape(-1, *shape, 3)
        acts = actions[:, P - 1 :].reshape(-1, actions.shape[-1])
        real_prev = np.concatenate([real_prev, stab.real_prev])
        real_next = np.concatenate([real_next, stab.real_next])
        real_acts = np.concatenate([acts, stab.real_actions])
        dream_prev = np.concatenate([dream_prev, stab.dream_prev])
        dream_next = np.concatenate([dream_next, stab.dream_next])
        dream_acts = np.concatenate([acts, stab.dream_actions])
        pr, pd = idm.predict(real_prev, real_next), idm.predict(dream_prev, dream_next)
        comps = {}
        for i, name in enumerate(action_names(self.ref)):
            if len(np.unique(real_acts[:, i])) < 2:  # never varied: F1 would be a trivial 1
                comps[name] = {"f1_real": None, "f1_dream": None, "ratio": None, "note": "the policy never varied it"}
                continue
            fr, fd = macro_f1(real_acts[:, i], pr[:, i], nvec[i]), macro_f1(dream_acts[:, i], pd[:, i], nvec[i])
            comps[name] = {"f1_real": fr, "f1_dream": fd, "ratio": fd / fr if fr > 0 else float("nan"),
                           "classes_seen": int(len(np.unique(real_acts[:, i])))}  # fmt: skip
        return {"components": comps, "real_pairs": len(real_prev), "dream_pairs": len(dream_prev), "idm": info}


def _targets(m: dict[str, Any], k: int) -> dict[str, Any]:
    """The issue's targets for the shipped model, checked against these figures."""
    tf, ol = m["teacher_forced"], m["open_loop"][f"mean_1_{k}"]
    t: dict[str, Any] = {
        "tokenizer_psnr_ge_32": m["tokenizer"]["psnr"] >= 32,
        "teacher_forced_psnr_ge_26": tf["psnr"] >= 26,
        "teacher_forced_gain_ge_3db": tf["gain_db"] >= 3,
        f"open_loop_mean_1_{k}_gain_ge_2db": ol["gain_db"] >= 2,
        "no_collapse": not m["stability"]["collapsed"],
        "fps_single_ge_30": m["speed"]["fps_single"] >= 30,
    }
    comps = m["controllability"]["components"]
    for name in ("move", "yaw", "pitch", "attack"):
        if name in comps:
            r = comps[name]["ratio"]
            t[f"idm_{name}_ratio_ge_0.8"] = None if r is None or not math.isfinite(r) else bool(r >= 0.8)
    perm = m["permanence"]
    if "final_vs_start_psnr" in perm.get("turn", {}):
        t["full_turn_psnr_ge_20"] = perm["turn"]["final_vs_start_psnr"] >= 20
        t["half_turn_beats_copy_last"] = perm["turn"]["half_psnr"] > perm["turn"]["half_copy_last_psnr"]
    return t


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worldsim eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="dynamics checkpoint (default: the shipped model)")
    p.add_argument("--env", default=None, help="reference Gymnasium id (default: the checkpoint's env)")
    p.add_argument("--env-kwargs", type=json_object, default=None, help="JSON object of env kwargs (default: the checkpoint's)")
    p.add_argument("--episodes", type=int, default=EvalConfig.episodes,
                   help="held-out episodes (one batch; with 16 the tokenizer and copy-last figures swing by a dB or more; default %(default)s)")
    p.add_argument("--horizon", type=int, default=32, help="open-loop steps per episode (default %(default)s)")
    p.add_argument("--context", type=int, default=None, help="real prompt frames (default: the model's context - 1)")
    p.add_argument("--stability-steps", type=int, default=2000, help="length of the long open-loop rollout (default %(default)s)")
    p.add_argument("--probe-worlds", type=int, default=EvalConfig.probe_worlds, help="worlds per object-permanence probe (one batch; default %(default)s)")
    p.add_argument("--idm-data-steps", type=int, default=IDMConfig.data_steps, help="reference steps to train the IDM on (default %(default)s)")
    p.add_argument("--idm-train-steps", type=int, default=IDMConfig.train_steps, help="IDM optimizer steps (default %(default)s)")
    p.add_argument("--chunks", type=int, default=None, help="passes per frame (default: the runtime's)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the runtime's)")
    p.add_argument("--backend", default="torch", help="runtime backend: torch or onnx (default %(default)s)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", type=precision_choice, default=None, metavar="{auto,fp32,bf16}", help="auto (the default): the device's fastest accurate one (bf16 on CUDA and on CPUs with native bf16)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of torch and of ONNX Runtime (default: their own; 1 is fastest for tiny models on a busy machine)")
    p.add_argument("--seed", type=int, nargs="+", default=[0], metavar="SEED",
                   help="seeds the policies and the sampling; several: one eval each in OUT/seed-S, "
                        "and OUT/seeds.json with each figure's mean, min and max over them (default 0)")  # fmt: skip
    p.add_argument("--reward-threshold", type=float, default=0.5, help="|reward| that counts as a reward event (default %(default)s)")
    p.add_argument("--cache-dir", default=None, help="IDM cache (default: $WORLDSIM_CACHE/idm or ~/.cache/worldsim/idm)")
    p.add_argument("--no-videos", action="store_true", help="skip the GIF and MP4 files")
    p.add_argument("--keep-pixels", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the previous frame's pixels where a cell's code did not change (default: the runtime's, off)")
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                   help="pass decoded frames through the checkpoint's refiner (default: on when it has one)")
    p.add_argument("--unfreeze", type=int, default=None,
                   help="still steps before a world is sampled without the stay gate, at temperature 1.0, until it moves; 0 = never (default: the runtime's)")
    p.add_argument("--guidance", type=float, default=None,
                   help="action guidance scale: each pass also runs with the guided action components at 0 and samples from that + g * (action - that); 1 = off (default: the checkpoint's)")
    p.add_argument("--ranked-moves", action=argparse.BooleanOptionalAction, default=None,
                   help="decide for each frame at once which cells leave their previous code: the most likely ones, as many as expected (default: the runtime's, off)")
    p.add_argument("--out", required=True, help="folder for metrics.json, plots and videos")
    return p


def main(argv: list[str]) -> int:
    a = build_parser().parse_args(argv)
    kwargs = a.env_kwargs
    if len(set(a.seed)) != len(a.seed):
        raise WorldSimError(f"--seed values must differ, got {a.seed}")
    if min(a.seed) < 0:
        raise WorldSimError(f"--seed values must be at least 0, got {a.seed}")
    set_threads(a.threads)
    # One eval at a time into an --out: two at once each cleared the other's files and left one
    # run's metrics.json beside the other's videos.
    with output_lock(a.out, "eval"):
        several = len(a.seed) > 1
        runs: dict[int, dict[str, Any]] = {}
        for seed in a.seed:
            out = Path(a.out) / f"seed-{seed}" if several else Path(a.out)
            cfg = EvalConfig(
                checkpoint=a.checkpoint, out=str(out), env=a.env, env_kwargs=kwargs, episodes=a.episodes, horizon=a.horizon,
                context=a.context, stability_steps=a.stability_steps, probe_worlds=a.probe_worlds, chunks=a.chunks,
                temperature=a.temperature, idm=IDMConfig(data_steps=a.idm_data_steps, train_steps=a.idm_train_steps),
                backend=a.backend, device=a.device, precision=a.precision, seed=seed, reward_threshold=a.reward_threshold,
                cache_dir=a.cache_dir, videos=not a.no_videos, keep_pixels=a.keep_pixels, unfreeze=a.unfreeze,
                guidance=a.guidance, ranked_moves=a.ranked_moves, refine=a.refine,
            )  # fmt: skip
            runs[seed] = Evaluation(cfg, log=lambda s: print(s, file=sys.stderr)).run()
            if several:
                print(f"# seed {seed}")
            print(summary(runs[seed]))
            print(f"wrote {out / 'metrics.json'}")
        if several:
            spread = across_seeds(runs)
            clear_outputs(Path(a.out))  # this run writes only seeds.json here; an earlier single-seed run's files would read as its own
            path = Path(a.out) / "seeds.json"
            atomic_write_text(path, json.dumps(spread, indent=2) + "\n")
            print(f"# over seeds {', '.join(map(str, a.seed))}")
            print(spread_table(spread))
            print(f"wrote {path}")
    return 0


def headline_figures(m: dict[str, Any]) -> dict[str, float | bool | None]:
    """The figures of one eval that :func:`across_seeds` compares: flat ``name -> value``."""
    key = next(k for k in m["open_loop"] if k.startswith("mean_1_"))
    out: dict[str, float | bool | None] = {
        "tokenizer_psnr": m["tokenizer"]["psnr"],
        "teacher_forced_psnr": m["teacher_forced"]["psnr"],
        "teacher_forced_copy_last_psnr": m["teacher_forced"]["copy_last_psnr"],
        f"open_loop_{key}_psnr": m["open_loop"][key]["psnr"],
        f"open_loop_{key}_copy_last_psnr": m["open_loop"][key]["copy_last_psnr"],
        f"open_loop_{key}_gain_db": m["open_loop"][key]["gain_db"],
    }
    for name, c in m["controllability"]["components"].items():
        out[f"idm_{name}_ratio"] = c["ratio"]
    for probe, v in m["permanence"].items():
        if isinstance(v, dict) and "skipped" not in v:
            out[f"{probe}_final_vs_start_psnr"] = v["final_vs_start_psnr"]
            out[f"{probe}_half_psnr"] = v["half_psnr"]
            out[f"{probe}_half_copy_last_psnr"] = v["half_copy_last_psnr"]
            if "turn_rate" in v:
                out[f"{probe}_rate"] = v["turn_rate"]
                out[f"{probe}_rate_teacher_forced"] = v.get("teacher_forced_turn_rate")
    out["stability_flagged_fraction"] = m["stability"]["flagged_fraction"]
    out["stability_collapsed"] = m["stability"]["collapsed"]
    out["stability_late_motion_ratio"] = m["stability"].get("late_motion_ratio")
    for name, ok in m.get("targets", {}).items():
        out[f"target_{name}"] = ok
    return out


def across_seeds(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Each headline figure over several seeds' evals: the values per seed, and for numbers
    their mean, min and max, for yes/no figures (targets, collapse) how many seeds said yes.

    One eval is one batch of episodes and probe worlds, so a figure within a few tenths of
    a dB of its target can flip with the seed; the spread says how far to trust it.
    """
    per_seed = {seed: headline_figures(m) for seed, m in runs.items()}
    names = list(dict.fromkeys(n for figs in per_seed.values() for n in figs))
    figures: dict[str, Any] = {}
    for name in names:
        values = [figs.get(name) for figs in per_seed.values()]
        entry: dict[str, Any] = {"values": values}
        known = [v for v in values if v is not None]
        if known and all(isinstance(v, bool) for v in known):  # a yes/no figure; None where a seed could not judge it
            entry["true"] = sum(known)
            if len(known) < len(values):
                entry["unknown"] = len(values) - len(known)
        else:
            nums = [float(v) for v in values if v is not None and not isinstance(v, bool)]
            if nums:
                entry.update(mean=float(np.mean(nums)), min=min(nums), max=max(nums))
        figures[name] = entry
    return {"seeds": list(runs), "figures": figures}


def spread_table(spread: dict[str, Any]) -> str:
    """:func:`across_seeds` as text: one line a figure."""
    n = len(spread["seeds"])
    lines = []
    for name, e in spread["figures"].items():
        if "true" in e:
            unknown = f", n/a in {e['unknown']}" if e.get("unknown") else ""
            lines.append(f"{name:<44} yes in {e['true']} of {n}{unknown}")
        elif "mean" in e:
            vals = ", ".join("n/a" if v is None else f"{v:.3f}" for v in e["values"])
            lines.append(f"{name:<44} mean {e['mean']:8.3f}  min {e['min']:8.3f}  max {e['max']:8.3f}  ({vals})")
    return "\n".join(lines)


def summary(m: dict[str, Any]) -> str:
    """The headline figures of a metrics dict as a short table."""

    def f(x: Any, fmt: str = ".2f") -> str:
        return "n/a" if x is None else format(x, fmt)

    tf = m["teacher_forced"]
    key = next(k for k in m["open_loop"] if k.startswith("mean_1_"))
    ol = m["open_loop"][key]
    lines = [
        f"tokenizer reconstruction   PSNR {f(m['tokenizer']['psnr'])} dB  SSIM {f(m['tokenizer']['ssim'], '.3f')}",
        f"teacher-forced next frame  PSNR {f(tf['psnr'])} dB  (copy-last {f(tf['copy_last_psnr'])}, gain {f(tf['gain_db'])})",
    ]
    if "by_change" in tf:
        bc = tf["by_change"]
        pct = lambda x: None if x is None else 100 * x  # noqa: E731
        moving = None if bc["still_share"] is None else 1 - bc["still_share"]
        lines.append(f"  moving frames ({f(pct(moving), '.0f')}%)       PSNR {f(bc['moving']['psnr'])} dB  "
                     f"(copy-last {f(bc['moving']['copy_last_psnr'])}); still frames {f(bc['still']['psnr'])} dB, "
                     f"{f(pct(bc['still']['exact']), '.0f')}% exact")  # fmt: skip
    lines += [
        f"open loop {key[5:].replace('_', '-'):<6}           PSNR {f(ol['psnr'])} dB  (copy-last {f(ol['copy_last_psnr'])}, gain {f(ol['gain_db'])})",
    ]
    for h, v in m["open_loop"]["horizons"].items():
        lines.append(f"  horizon {h:>3}              PSNR {f(v['psnr'])} dB  (copy-last {f(v['copy_last_psnr'])})  SSIM {f(v['ssim'], '.3f')}")
    for name, c in m["controllability"]["components"].items():
        lines.append(f"IDM F1 {name:<10}          real {f(c['f1_real'], '.3f')}  dream {f(c['f1_dream'], '.3f')}  ratio {f(c['ratio'])}")
    perm = m["permanence"]
    if "skipped" in perm:
        lines.append(f"object permanence          skipped: {perm['skipped']}")
    else:
        for probe, v in perm.items():
            if "skipped" in v:
                lines.append(f"permanence {probe:<5}           skipped: {v['skipped']}")
                continue
            rate = (f"; turns at {f(v['turn_rate'])} of the real speed "
                    f"({f(v.get('teacher_forced_turn_rate'))} one step at a time from real frames)") if "turn_rate" in v else ""  # fmt: skip
            lines.append(f"permanence {probe:<5}           final vs start {f(v['final_vs_start_psnr'])} dB; half-way "
                         f"{f(v['half_psnr'])} dB vs copy-last {f(v['half_copy_last_psnr'])}{rate}")  # fmt: skip
    s = m["stability"]
    lines.append(f"stability {s['frames']} steps      collapsed: {s['collapsed']}  flagged {f(100 * s['flagged_fraction'], '.1f')}%  "
                 f"motion vs real {f(s.get('motion_ratio'))}, second half {f(s.get('late_motion_ratio'))}")  # fmt: skip
    for kind in ("reward", "termination"):
        v = m[kind]["teacher_forced"]
        lines.append(f"{kind:<12} (teacher-forced) precision {f(v['precision'])} recall {f(v['recall'])} ({v['actual']} real events)")
    sp = m["speed"]
    lines.append(f"speed                      {f(sp['fps_single'], '.1f')} frames/s single, {f(sp['fps_batched'], '.1f')} batched x{sp['batch']}")
    return "\n".join(lines)
