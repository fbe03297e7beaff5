"""``worldsim train tokenizer`` and ``worldsim train dynamics``: one generic loop, two tasks.

The loop is the same for both models (each model computes its own loss):

* every random draw of step ``s`` (which windows, which patches are masked, how the context
  is corrupted) comes from generators seeded with ``(seed, rank, s)``, so ``--resume``
  continues exactly where a killed run stopped, knowing only the step counter;
* the training state (``<out>.state.safetensors``: weights, optimizer moments, step and
  the run's settings) and then the checkpoint (``--out``) are written atomically every
  ``--ckpt-every`` steps; ``--resume`` takes the weights from the state, so a kill between
  the two writes (the state a save ahead of the checkpoint) still resumes exactly, and a
  finished run resumed writes a checkpoint the kill left behind;
* ``metrics.jsonl`` beside the checkpoint gets one JSON object per logged step, and the
  held-out validation loss every ``--val-every`` steps; each names its checkpoint
  (``"checkpoint": <out file name>``), so runs that write into one folder (a recipe's
  stages) share the file, and a restart only drops its own lines past its checkpoint;
* under ``torchrun --nproc_per_node=N -m worldsim train ...`` it runs DDP (gloo on CPU,
  nccl on GPU); rank 0 alone writes files.

The dynamics task encodes every frame of the data once with the frozen tokenizer at start,
then trains on code windows: the tokenizer's encoder never runs inside the training loop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from worldsim.atomic import LockBusy, atomic_write_text, exclusive_lock, naming
from worldsim.checkpoint import (
    MAX_ACTION_CHOICES,
    MAX_REFINER_BLOCKS,
    MAX_REFINER_CHANNELS,
    ModelConfig,
    checkpoint_steps,
    load_model,
    load_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_model,
    save_state,
    sha256_file,
    weights_digest,
)
from worldsim.cli import DEVICE_HELP
from worldsim.cpus import set_threads
from worldsim.errors import WorldSimError
from worldsim.presets import PRESETS, dynamics_config, get_preset
from worldsim.progress import progress
from worldsim.tokenizer import psnr
from worldsim.torch_backend import default_precision, pick_device
from worldsim.train_data import CodeWindows, open_split
from worldsim.transformer import NO_ACTION


@dataclass
class LoopConfig:
    """What every training run shares (the CLI flags of both commands)."""

    out: Path
    steps: int
    batch: int
    lr: float
    warmup: int
    seed: int
    resume: bool
    overwrite: bool
    device: str
    precision: str
    log_every: int
    ckpt_every: int
    val_every: int
    val_batches: int
    kind: str = "tokenizer"


def _common_args(p: argparse.ArgumentParser, batch: int) -> None:
    p.add_argument("--data", nargs="+", required=True, help="recording files and/or shard folders")
    p.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    sizes = "; ".join(f"{k}: {v.summary}" for k, v in PRESETS.items())
    p.add_argument(
        "--preset",
        default="small",
        choices=sorted(PRESETS),
        help=f"model size (default small). {sizes}",
    )
    p.add_argument(
        "--steps", type=int, default=10_000, help="optimizer steps in total (default 10000)"
    )
    p.add_argument(
        "--batch", type=int, default=batch, help=f"windows per step and process (default {batch})"
    )
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps (default 200)")
    p.add_argument(
        "--seed", type=int, default=0, help="seeds data order, masking and init (default 0)"
    )
    p.add_argument(
        "--split-seed", type=int, default=None, metavar="S",
        help="chooses the held-out validation episodes (default: --seed); a second training phase "
             "with a new --seed keeps its first phase's split with this",
    )  # fmt: skip
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--resume", action="store_true", help="continue from --out and its .state file if present"
    )
    start.add_argument(
        "--overwrite", action="store_true",
        help="train a new model in place of an existing --out (without it, or --resume, an existing --out is refused)",
    )  # fmt: skip
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="autocast dtype; auto (the default) = bf16 where it is native (CUDA, CPUs with AVX512-BF16 or AMX), else fp32",
    )
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads of each process (default: torch's)")  # fmt: skip
    p.add_argument(
        "--log-every", type=int, default=10, help="steps between metrics.jsonl lines (default 10)"
    )
    p.add_argument(
        "--ckpt-every", type=int, default=500, help="steps between checkpoints (default 500)"
    )
    p.add_argument(
        "--val-every", type=int, default=500, help="steps between validation losses (default 500)"
    )
    p.add_argument(
        "--val-batches", type=int, default=4, help="held-out batches per validation (default 4)"
    )


def _loop_config(a: argparse.Namespace, kind: str) -> LoopConfig:
    for name in ("steps", "batch", "log_every", "ckpt_every", "val_every", "val_batches"):
        if getattr(a, name) < 1:
            raise WorldSimError(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}"
            )
    if not a.lr >= 0 or not math.isfinite(a.lr):  # 0 is allowed: a run that only evaluates and saves
        raise WorldSimError(f"--lr must be a number >= 0, got {a.lr}")
    if a.warmup < 0:
        raise WorldSimError(f"--warmup must be at least 0, got {a.warmup}")
    if a.threads is not None and a.threads < 1:
        raise WorldSimError(f"--threads must be at least 1, got {a.threads}")
    for name in ("seed", "split_seed"):
        if getattr(a, name) is not None and getattr(a, name) < 0:
            raise WorldSimError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(a, name)}")
    if Path(a.out).exists() and not a.resume and not a.overwrite:
        raise WorldSimError(f"{a.out} exists; pass --resume to continue its run, or --overwrite to train a new "
                            "model in its place")  # fmt: skip
    if state_path(Path(a.out)).is_file() and not a.resume and not a.overwrite:  # a run killed before its first checkpoint
        raise WorldSimError(f"{state_path(Path(a.out))} exists, the training state of an earlier run; pass --resume to "
                            "continue it, or --overwrite to train a new model")  # fmt: skip
    # Every other field is the flag of the same name.
    same = {f.name: getattr(a, f.name) for f in fields(LoopConfig) if f.name not in ("out", "kind")}
    return LoopConfig(out=Path(a.out), kind=kind, **same)


def state_path(out: Path) -> Path:
    """Where the training state of checkpoint ``out`` lives."""
    return out.with_name(out.name.removesuffix(".safetensors") + ".state.safetensors")


class _Dist:
    """Rank and world size; DDP is on when torchrun set WORLD_SIZE > 1."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = device
        if self.world > 1:
            if device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world

    def close(self, finished: bool = False) -> None:
        """Leave the process group. After a finished run every rank first waits for the others
        (a barrier), so none tears down its connections while a peer is still using them: a
        rank that did so once aborted its peer at exit ("terminate called without an active
        exception", a CI run of the two-process test). After a failure there is no barrier,
        since the peer may never reach it."""
        if self.world > 1:
            if finished:
                dist.barrier()
            dist.destroy_process_group()


class Task(ABC):
    """One model to train: it draws batches, computes its loss, and saves itself."""

    module: nn.Module
    kind: str

    @abstractmethod
    def batch(self, rng: np.random.Generator, n: int, split: str) -> dict[str, torch.Tensor]:
        """``n`` examples of ``split`` (``"train"`` or ``"val"``), every draw from ``rng``."""

    @abstractmethod
    def loss(
        self, module: nn.Module, batch: dict[str, torch.Tensor], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of ``batch`` through ``module`` (the DDP wrapper or the bare module)."""

    @abstractmethod
    def counts(self, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
        """(frames, tokens) one batch trains on, for the throughput figures."""

    @abstractmethod
    def save(self, path: Path, info: dict[str, Any]) -> None:
        """Write the checkpoint atomically."""


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "auto":
        precision = default_precision(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _lr(cfg: LoopConfig, step: int) -> float:
    # Warm-up then cosine decay to 10%. A function of the step alone, so resume is exact.
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def resume_state(cfg: LoopConfig, settings: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The training state ``--resume`` continues from (None: a fresh run), checked before any
    data is read or encoded: a checkpoint without its state, a state of another kind of run,
    or other ``settings`` (what must not change between a run and its resume: data, model,
    batch, learning rate, seeds, ...) are errors naming the problem."""
    spath = state_path(cfg.out)
    if not cfg.resume:
        return None
    if cfg.out.is_file() and not spath.is_file():
        raise WorldSimError(f"{cfg.out} has no training state ({spath.name}) to resume from; pass --overwrite to train "
                            "a new model in its place")  # fmt: skip
    if not spath.is_file():
        return None
    tensors, st = load_state(spath)
    if st.get("kind") != cfg.kind:
        raise WorldSimError(f"{spath}: training state of a {st.get('kind')} run, not of a {cfg.kind} run")
    _check_same_run(spath, st.get("settings"), _as_read_back(settings))
    return tensors, st


def _as_read_back(settings: dict[str, Any] | None) -> dict[str, Any]:
    return json.loads(json.dumps(settings or {}))  # tuples become lists, as the state holds them


def run(task: Task, cfg: LoopConfig, dd: _Dist, settings: dict[str, Any] | None = None,
        resumed: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The training loop; returns the last logged metrics.

    ``settings`` go into every training state saved; ``resumed`` is what
    :func:`resume_state` returned for this run.
    """
    module = task.module.to(dd.device)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    step = 0
    spath = state_path(cfg.out)
    settings = _as_read_back(settings)
    if resumed is not None:
        tensors, st = resumed
        step = int(st["step"])
        weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        if weights:  # the weights of the state's own step: the checkpoint may be a save ahead
            module.load_state_dict({k: v.to(dd.device) for k, v in weights.items()})
        else:  # a state written before states held the weights
            if not cfg.out.is_file():
                raise WorldSimError(f"{spath} needs its checkpoint {cfg.out}, which is missing; pass --overwrite to start again")
            loaded = load_model(cfg.out, dd.device)
            if loaded.info.get("steps") != step:
                raise WorldSimError(f"{cfg.out} is at step {loaded.info.get('steps')} but {spath} at step {step} "
                                    "(the run was killed between the two writes); start again without --resume")  # fmt: skip
            src = loaded.tokenizer if task.kind == "tokenizer" else loaded.dynamics
            module.load_state_dict(src.state_dict())
        optimizer_from_tensors(opt, tensors, st["opt"])
        if step >= cfg.steps:  # a finished run resumed: nothing to train
            if dd.main and checkpoint_steps(cfg.out) != step:
                # killed between the state and the checkpoint of the last save: write the
                # checkpoint from the state's weights, which the module now holds
                task.save(cfg.out, {"steps": step, "loss": None, "val_loss": None})
            return {"step": step, "already_finished": True}
    metrics_path = cfg.out.parent / "metrics.jsonl"
    if dd.main:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        if resumed is None:
            # A new run: the state of the run it replaces must go now, or a --resume after a kill
            # before this run's first checkpoint would continue that other run.
            spath.unlink(missing_ok=True)
        _trim_metrics(metrics_path, task.kind, cfg.out.name, step)
    model = module
    if dd.world > 1:
        ids = [dd.device.index] if dd.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(module, device_ids=ids)
    val_rng = np.random.default_rng([cfg.seed, 10_007])
    held_out = getattr(task, "val_set", None) is not None
    if dd.main and not held_out:  # validating on training windows would pass them off as held-out figures
        print("worldsim train: no held-out episodes in --data (too few episodes, or all shorter than a window); "
              "validation is skipped and val_loss stays null", file=sys.stderr)  # fmt: skip
    val = [task.batch(val_rng, cfg.batch, "val") for _ in range(cfg.val_batches)] if dd.main and held_out else []
    bar = progress(cfg.steps, f"train {task.kind}", unit="step", initial=step, disable=not dd.main, dynamic_ncols=True)
    last: dict[str, Any] = {}
    saved = step if resumed is not None else None  # the step of the last checkpoint written
    t_log, frames, tokens = time.perf_counter(), 0, 0
    try:  # an error mid-run ends the bar first, so its message starts a line of its own
        while step < cfg.steps:
            module.train()
            rng = np.random.default_rng([cfg.seed, dd.rank, step])
            gen = torch.Generator(device=dd.device).manual_seed(
                hash((cfg.seed, dd.rank, step)) & 0x7FFF_FFFF
            )
            batch = task.batch(rng, cfg.batch, "train")
            for g in opt.param_groups:
                g["lr"] = _lr(cfg, step)
            with _autocast(dd.device, cfg.precision):
                loss, logs = task.loss(model, batch, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            # A diverged step (a learning rate too high, say) makes every weight NaN: stop before the
            # optimizer takes it, so the last checkpoint stays one that loads. Every rank agrees.
            if dd.mean(float(not (torch.isfinite(loss.detach()) & torch.isfinite(norm)))) > 0:
                _diverged(cfg, step, float(loss.detach()), float(norm), saved)
            opt.step()
            step += 1
            f, k = task.counts(batch)
            frames, tokens = frames + f * dd.world, tokens + k * dd.world
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                dt = time.perf_counter() - t_log
                last = {"kind": task.kind, "checkpoint": cfg.out.name, "step": step, "loss": dd.mean(float(loss.detach())), "lr": _lr(cfg, step - 1),
                        **{k2: round(v, 5) for k2, v in logs.items()},
                        "frames_per_s": round(frames / dt, 2), "tokens_per_s": round(tokens / dt, 1)}  # fmt: skip
                t_log, frames, tokens = time.perf_counter(), 0, 0
                bar.set_postfix(loss=f"{last['loss']:.4f}", fps=f"{last['frames_per_s']:.1f}")
                if dd.main:
                    _append(metrics_path, last)
            if dd.main and (step % cfg.val_every == 0 or step == cfg.steps):
                v, val_logs = _validate(task, module, val, cfg)
                row = {"kind": task.kind, "checkpoint": cfg.out.name, "step": step, "val_loss": v}
                if task.kind in ("tokenizer", "refiner") and v is not None:
                    row["val_psnr"] = round(psnr(v), 3)  # the loss is pixel MSE on the [-1, 1] scale
                if "decoded_mse" in val_logs:  # the refiner's: the plain decoder on the same held-out frames
                    row["val_decoded_psnr"] = round(psnr(val_logs["decoded_mse"]), 3)
                last.update(row)
                _append(metrics_path, row)
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                if dd.main:
                    # The state goes first and holds the weights too: a kill between the two writes
                    # leaves a state at least as new as the checkpoint, never a checkpoint without
                    # one, and resume takes the state's own weights.
                    tensors, struct = optimizer_to_tensors(opt)
                    tensors.update({f"model.{k}": v for k, v in module.state_dict().items()})
                    save_state(spath, tensors, {"kind": task.kind, "step": step, "opt": struct, "settings": settings})
                    task.save(
                        cfg.out,
                        {"steps": step, "loss": last.get("loss"), "val_loss": last.get("val_loss")},
                    )
                saved = step
                if dd.world > 1:
                    dist.barrier()
    finally:
        bar.close()
    return last


def _diverged(cfg: LoopConfig, step: int, loss: float, norm: float, saved: int | None) -> None:
    """Stop a run whose loss or gradient is no longer finite, naming the step and what stands."""
    kept = (f"{cfg.out} stays at step {saved}, as its last checkpoint left it" if saved is not None
            else f"nothing was saved to {cfg.out}")  # fmt: skip
    raise WorldSimError(
        f"training diverged at step {step + 1}: loss {loss}, gradient norm {norm} (learning rate {_lr(cfg, step):.3g}); "
        f"{kept}; train again with a lower --lr or a longer --warmup (--overwrite)"
    )


def _check_same_run(spath: Path, before: dict[str, Any] | None, now: dict[str, Any]) -> None:
    """Refuse to resume a run with other settings than it was started with (a state written
    before states kept them is not checked, nor a setting a state written before it was kept)."""
    if before is None:
        return
    changed = [k for k in sorted(set(before) | set(now)) if k in before and before.get(k) != now.get(k)]
    if changed:
        said = "; ".join(f"{k} was {before.get(k)!r}, now {now.get(k)!r}" for k in changed[:4])
        more = f" (and {len(changed) - 4} more)" if len(changed) > 4 else ""
        raise WorldSimError(f"{spath}: --resume with other settings than the run's: {said}{more}; resume with the "
                            "run's flags, or pass --overwrite to train a new model")  # fmt: skip


@torch.no_grad()
def _validate(task: Task, module: nn.Module, batches: list, cfg: LoopConfig) -> tuple[float | None, dict[str, float]]:
    """The mean held-out loss, and the mean of each figure the task logs with it."""
    if not batches:
        return None, {}
    module.eval()
    losses, logs = [], []
    for i, b in enumerate(batches):
        gen = torch.Generator(device=next(module.parameters()).device).manual_seed(i)
        with _autocast(next(module.parameters()).device, cfg.precision):
            loss, log = task.loss(module, b, gen)
        losses.append(float(loss))
        logs.append(log)
    return float(np.mean(losses)), {k: float(np.mean([x[k] for x in logs])) for k in logs[0]}


def _append(path: Path, row: dict[str, Any]) -> None:
    with naming(path), open(path, "a") as f:  # a full disk: say it was the log (a restart drops a cut line)
        f.write(json.dumps(row) + "\n")


def _trim_metrics(path: Path, kind: str, checkpoint: str, step: int) -> None:
    """On (re)start, drop this run's lines past the checkpointed step: they will be redone.

    A line is this run's when it has this kind and names this checkpoint (lines written
    before rows named their checkpoint count as this run's when the kind matches), so
    another run's lines in the same folder are kept.
    """
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a kill
        mine = row.get("kind") == kind and row.get("checkpoint", checkpoint) == checkpoint
        if not mine or row.get("step", 0) <= step:
            keep.append(line)
    atomic_write_text(path, "".join(x + "\n" for x in keep))  # a kill here must not lose the whole log


class TokenizerTask(Task):
    kind = "tokenizer"

    def __init__(self, data: list[str], preset: str, seed: int, init: str | None = None, decoder_only: bool = False,
                 split_seed: int | None = None) -> None:  # fmt: skip
        from worldsim.tokenizer import Tokenizer

        split = seed if split_seed is None else split_seed
        self.train_set = open_split(data, 1, "train", split)
        self.val_set = open_split(data, 1, "val", split, required=False)
        self.preset = preset
        self.decoder_only = decoder_only
        self.info: dict[str, Any] = {}
        torch.manual_seed(seed)
        if init is None:
            if decoder_only:
                raise WorldSimError("--decoder-only fine-tunes an existing tokenizer: give it with --init CKPT")
            tok_config = get_preset(preset).tokenizer
            self.module = Tokenizer(tok_config)
        else:
            # The tokenizer of a tokenizer or a dynamics checkpoint; its config wins over --preset.
            start = load_model(init)
            # A refiner corrects this decoder's frames; training the tokenizer changes them, so it is left out.
            tok_config, self.module = start.config.tokenizer.codes_config(), start.tokenizer
            self.module.refiner = None
            self.preset = start.config.preset or preset
            self.info = {"init": str(init), "encoder_sha256": encoder_digest(self.module)}
        if decoder_only:
            for q in [*self.module.encoder.parameters(), *self.module.fsq.parameters()]:
                q.requires_grad_(False)
            self.info["decoder_only"] = True
        h, w = self.train_set.observation_shape[:2]
        _check_frame_size(h, w, self.module.config.stride, f"the tokenizer (stride {self.module.config.stride})")
        self.config = ModelConfig(tokenizer=tok_config, frame_shape=(h, w), preset=self.preset, **_env(self.train_set))

    def batch(self, rng: np.random.Generator, n: int, split: str) -> dict[str, torch.Tensor]:
        ds = self.train_set if split == "train" or self.val_set is None else self.val_set
        return {"frames": torch.from_numpy(ds.sample(rng, n).frames[:, 0])}

    def loss(self, module, batch, gen):
        out = module(batch["frames"].to(next(self.module.parameters()).device), train_encoder=not self.decoder_only)
        return out.loss, out.logs

    def counts(self, batch):
        f = batch["frames"]
        s = self.module.config.stride
        return f.shape[0], f.shape[0] * (f.shape[1] // s) * (f.shape[2] // s)

    def save(self, path: Path, info: dict[str, Any]) -> None:
        save_model(path, self.config, self.module, None, {**self.info, **info})


class DynamicsTask(Task):
    kind = "dynamics"

    def __init__(
        self, data: list[str], tokenizer: str, preset: str, context: int | None, seed: int, device: torch.device,
        code_cache: Path | None = None, init: str | None = None, stay_gate: bool | None = None,
        still_head: bool | None = None, rollout_share: float | None = None, split_seed: int | None = None,
        change_weight: float | None = None, stay_motion: str | None = None, rollout_passes: int | None = None,
    ) -> None:  # fmt: skip
        from worldsim.transformer import Dynamics

        tok = load_model(tokenizer, device)
        start = None
        if init is not None:
            # Fine-tuning: the architecture is the init's; --context and --stay-gate may change.
            start = load_model(init, device)
            if start.dynamics is None:
                raise WorldSimError(f"--init {init}: it holds no dynamics model (give a world model checkpoint)")
            if start.config.tokenizer.codes_config() != tok.config.tokenizer.codes_config() or encoder_digest(start.tokenizer) != encoder_digest(tok.tokenizer):
                raise WorldSimError(f"--init {init}: its tokenizer encodes differently from --tokenizer {tokenizer}, "
                                    "so its dynamics learned other codes; give the tokenizer it was trained with")  # fmt: skip
            preset = start.config.preset or preset
        p = get_preset(preset)
        ctx = (start.config.dynamics.context if start is not None else p.context) if context is None else context
        # Windows of context + 1 frames: the extra first frame gives the action that led to
        # the window's first frame, which a sliding-window rollout has too.
        split = seed if split_seed is None else split_seed
        windows = open_split(data, ctx + 1, "train", split)
        nvec = windows.action_spec.nvec
        if sum(nvec) > MAX_ACTION_CHOICES:  # one embedding row each: Discrete(10**8) was a 25.6 GB allocation
            raise WorldSimError(f"the recordings' action space {windows.action_spec.kind}{list(nvec)} has {sum(nvec)} "
                                f"choices in all; the world model embeds at most {MAX_ACTION_CHOICES}")  # fmt: skip
        # Checked before the data is encoded, which may take long: the model cuts each frame's
        # code grid into patch x patch tokens.
        patch = start.config.dynamics.patch if start is not None else p.patch
        h, w = windows.observation_shape[:2]
        stride = tok.config.tokenizer.stride
        _check_frame_size(h, w, stride * patch, f"the world model (tokenizer stride {stride} x patch {patch})")
        _note_tokenizer_fit(tokenizer, tok.config, _env(windows)["env_id"], (h, w))
        self.train_set = CodeWindows(windows, tok.tokenizer, device, code_cache)
        val = open_split(data, ctx + 1, "val", split, required=False)
        self.val_set = None if val is None else CodeWindows(val, tok.tokenizer, device, code_cache)
        spec = self.train_set.action_spec
        if rollout_share is not None and not 0.0 <= rollout_share <= 1.0:
            raise WorldSimError(f"--rollout-share must be between 0 and 1, got {rollout_share}")
        overrides = {} if rollout_share is None else {"rollout_share": float(rollout_share)}  # else the init's, or 0
        if rollout_passes is not None:
            if rollout_passes < 1:
                raise WorldSimError(f"--rollout-passes must be at least 1, got {rollout_passes}")
            overrides["rollout_passes"] = int(rollout_passes)  # else the init's, or 2
        if change_weight is not None:
            if not change_weight > 0:
                raise WorldSimError(f"--change-weight must be above 0, got {change_weight}")
            overrides["change_weight"] = float(change_weight)  # else the init's, or 1
        self.info: dict[str, Any] = {}
        if stay_motion not in (None, "auto", "off"):
            raise WorldSimError(f"--stay-motion must be 'auto' or 'off', got {stay_motion!r}")
        if stay_motion == "off":
            overrides["stay_motion"] = ()
        elif stay_motion == "auto":  # measured on the training windows (worldsim.motion)
            from worldsim.motion import ESTIMATE_WINDOWS, estimate_motion

            b = self.train_set.sample(np.random.default_rng(0), ESTIMATE_WINDOWS)  # the same draw on every start
            est = estimate_motion(b["codes"], b["actions"], spec.nvec)
            overrides["stay_motion"] = est.table
            self.info["stay_motion_matches"] = est.matches
            print(f"stay motion (component, value, dx, dy) measured on the training data: {list(est.table) or 'none'}")
            for key, m in est.matches.items():  # what each value's row was decided on
                if "best" not in m:
                    print(f"  {key}: {m['pairs']} pairs, too few to measure")
                    continue
                print(f"  {key}: {m['pairs']} pairs, cells equal unshifted {m['none']:.3f}, "
                      f"best shift ({m['dx']}, {m['dy']}) {m['best']:.3f}")
        torch.manual_seed(seed)
        if start is None:
            dcfg = dynamics_config(p, tok.config.tokenizer.levels, spec, context, stay_gate, still_head)
            self.module = Dynamics(replace(dcfg, **overrides))
        else:
            dcfg = start.config.dynamics
            if spec.nvec != dcfg.action_nvec:
                raise WorldSimError(f"--init {init}: it was trained on actions {dcfg.action_nvec}, the data has {spec.nvec}")
            gate = dcfg.stay_gate if stay_gate is None else bool(stay_gate)
            still = dcfg.still_head if still_head is None else bool(still_head)
            self.module = Dynamics(replace(dcfg, context=ctx, stay_gate=gate, still_head=still, **overrides))
            missing, unexpected = self.module.load_state_dict(start.dynamics.state_dict(), strict=False)
            if any(not k.startswith(("stay_head.", "still_head.")) for k in [*missing, *unexpected]):
                raise WorldSimError(f"--init {init}: its weights do not fit this model ({missing or unexpected})")
            self.info["init"] = str(init)
        h, w = self.train_set.frame_shape
        self.config = ModelConfig(
            tokenizer=tok.config.tokenizer,
            dynamics=self.module.cfg,
            frame_shape=(h, w),
            preset=preset,
            **_env(self.train_set.windows),
        )
        self.tokenizer = tok.tokenizer

    def batch(self, rng: np.random.Generator, n: int, split: str) -> dict[str, torch.Tensor]:
        ds = self.train_set if split == "train" or self.val_set is None else self.val_set
        b = ds.sample(rng, n)
        first = b["actions"][:, 0].clone()
        # A quarter of the windows start as if at an episode start: no action led to them.
        first[torch.from_numpy(rng.random(n) < 0.25)] = NO_ACTION
        return {"codes": b["codes"][:, 1:], "actions": b["actions"][:, 1:], "first": first,
                "rewards": b["rewards"][:, 1:], "terminated": b["terminated"][:, 1:]}  # fmt: skip

    def loss(self, module, batch, gen):
        dev = next(self.module.parameters()).device
        b = {k: v.to(dev) for k, v in batch.items()}
        out = module(
            b["codes"],
            b["actions"],
            b["rewards"],
            b["terminated"],
            generator=gen,
            first_action=b["first"],
        )
        return out.loss, out.logs

    def counts(self, batch):
        B, T, h, w = batch["codes"].shape
        p = self.module.cfg.patch
        return B * T, B * (2 * T - 1) * (h // p) * (w // p)

    def save(self, path: Path, info: dict[str, Any]) -> None:
        save_model(path, self.config, self.tokenizer, self.module, {**self.info, **info})


class RefinerTask(Task):
    """The refiner of a checkpoint's tokenizer (:class:`worldsim.tokenizer.Refiner`), trained on
    chains of ``chain`` steps of real frames: each step decodes the real frame's codes and
    refines them with the previous step's output (the first step's previous frame is the real
    one, or for a random half of the windows the decoded one), as the runtime feeds the
    refiner its own frames. The loss is the pixel MSE of every step. The output the next step
    sees is rounded to uint8 as the runtime's is (the gradient passes straight through the
    rounding). The tokenizer's encoder and decoder stay frozen, so every code and every plain
    decoded frame stays the same."""

    kind = "refiner"

    def __init__(self, data: list[str], checkpoint: str, chain: int, channels: int, blocks: int, seed: int,
                 device: torch.device, split_seed: int | None = None) -> None:  # fmt: skip
        from dataclasses import replace as _replace

        from worldsim.tokenizer import Refiner

        if chain < 1:
            raise WorldSimError(f"--chain must be at least 1, got {chain}")
        for name, v, most in (("--channels", channels, MAX_REFINER_CHANNELS), ("--blocks", blocks, MAX_REFINER_BLOCKS)):
            if not 1 <= v <= most:
                raise WorldSimError(f"{name} must be from 1 to {most}, got {v}")
        start = load_model(checkpoint, device)
        if start.tokenizer.refiner is not None:
            print(f"{checkpoint}: its refiner is replaced by the one trained now")
        split = seed if split_seed is None else split_seed
        self.train_set = open_split(data, chain + 1, "train", split)
        self.val_set = open_split(data, chain + 1, "val", split, required=False)
        h, w = self.train_set.observation_shape[:2]
        if (h, w) != tuple(start.config.frame_shape):
            raise WorldSimError(f"the recordings' frames are {h}x{w}, {checkpoint} was trained on "
                                f"{start.config.frame_shape[0]}x{start.config.frame_shape[1]}")  # fmt: skip
        self.chain = chain
        self.tokenizer, self.dynamics = start.tokenizer, start.dynamics
        for q in self.tokenizer.parameters():
            q.requires_grad_(False)
        torch.manual_seed(seed)
        self.module = Refiner(channels, blocks, start.config.tokenizer.stride)
        self.tokenizer.refiner = self.module  # saved with the tokenizer
        tok = _replace(start.config.tokenizer, refiner_channels=channels, refiner_blocks=blocks)
        self.config = _replace(start.config, tokenizer=tok)
        # info's steps and losses become the refiner's (--resume reads them); the model's own stay beside them
        own = (start.info["refiner"].get("model", {}) if isinstance(start.info.get("refiner"), dict)  # a refiner trained again
               else {k: start.info[k] for k in ("steps", "loss", "val_loss") if k in start.info})
        self.info = {**start.info, "refiner": {"from": str(checkpoint), "sha256": sha256_file(checkpoint), "chain": chain,
                                               "model": own}}  # fmt: skip

    def batch(self, rng: np.random.Generator, n: int, split: str) -> dict[str, torch.Tensor]:
        ds = self.train_set if split == "train" or self.val_set is None else self.val_set
        frames = torch.from_numpy(ds.sample(rng, n).frames)
        return {"frames": frames, "real_start": torch.from_numpy(rng.random(n) < 0.5)}

    def loss(self, module, batch, gen):
        from worldsim.tokenizer import float_to_frames, frames_to_float

        dev = next(self.module.parameters()).device
        f = batch["frames"].to(dev)  # (B, T, H, W, 3)
        B, T = f.shape[:2]
        self.tokenizer.eval()
        with torch.no_grad():
            codes = self.tokenizer.encode(f.flatten(0, 1))
            decoded = self.tokenizer.decode(codes).view(f.shape)
            codes = codes.view(B, T, *codes.shape[1:])
        real = batch["real_start"].to(dev)[:, None, None, None]
        prev = frames_to_float(torch.where(real, f[:, 0], decoded[:, 0]))
        losses, plain = [], []
        for k in range(1, T):
            target = frames_to_float(f[:, k])
            y = module(prev, frames_to_float(decoded[:, k]), codes[:, k] != codes[:, k - 1]).float()
            losses.append(torch.mean((y - target) ** 2))
            plain.append(float(torch.mean((frames_to_float(decoded[:, k]) - target) ** 2)))
            shown = frames_to_float(float_to_frames(y.detach()))
            prev = y + (shown - y).detach()  # what the runtime shows next: rounded, gradient straight through
        loss = torch.stack(losses).mean()
        mse, plain_mse = float(loss.detach()), float(np.mean(plain))
        return loss, {"psnr": psnr(mse), "decoded_psnr": psnr(plain_mse), "decoded_mse": plain_mse,
                      "last_step_psnr": psnr(float(losses[-1].detach()))}

    def counts(self, batch):
        f = batch["frames"]
        s = self.tokenizer.config.stride
        n = f.shape[0] * (f.shape[1] - 1)
        return n, n * (f.shape[2] // s) * (f.shape[3] // s)

    def save(self, path: Path, info: dict[str, Any]) -> None:
        save_model(path, self.config, self.tokenizer, self.dynamics, {**self.info, **info})


def _check_frame_size(h: int, w: int, multiple: int, what: str) -> None:
    """Refuse frames the model cannot cut evenly, naming the size that would fit."""
    if h % multiple or w % multiple:
        raise WorldSimError(
            f"the recordings' frames are {h}x{w}, but {what} needs a height and width that are multiples of "
            f"{multiple}; record at a size that is (for example {h - h % multiple or multiple}x{w - w % multiple or multiple})"
        )


def _note_tokenizer_fit(path: str, config: ModelConfig, env_id: str | None, shape: tuple[int, int]) -> None:
    """Say so when the frozen tokenizer learned other frames than the data's: it still encodes
    them (it is convolutional), but a tokenizer of another env or size was most often passed
    by mistake, and a poor fit only shows much later, as a blurry world model."""
    other = []
    if config.env_id is not None and env_id is not None and config.env_id != env_id:
        other.append(f"env {config.env_id}, not {env_id}")
    if tuple(config.frame_shape) != tuple(shape):
        other.append(f"{config.frame_shape[0]}x{config.frame_shape[1]} frames, not {shape[0]}x{shape[1]}")
    if other:
        print(f"worldsim train: note: --tokenizer {path} was trained on {' and '.join(other)} as in --data; "
              "it encodes them anyway, but a tokenizer trained on this data fits them better", file=sys.stderr)  # fmt: skip


def _env(ds: Any) -> dict[str, Any]:
    header = getattr(ds, "header", {}) or {}
    return {"env_id": header.get("env_id"), "env_kwargs": header.get("env_kwargs")}


def _setup(a: argparse.Namespace) -> tuple[torch.device, _Dist]:
    set_threads(a.threads)
    dev = pick_device(a.device)
    return dev, _Dist(dev)


def _run_settings(a: argparse.Namespace, names: tuple[str, ...], processes: int) -> dict[str, Any]:
    """The flags a ``--resume`` must repeat: the data and ``--init`` (by name), batch, learning rate, warm-up,
    seeds and the task's own ``names``, and the number of DDP ``processes``. Steps, checkpoint
    and log intervals, device, precision and threads may change between sessions."""
    shared = ("batch", "lr", "warmup", "seed", "split_seed")
    # --init by name too: it gives a fine-tune its architecture and defaults, so a resume that
    # drops or changes it would train another model on the state's weights. The processes too:
    # each draws its own --batch windows (seeded by its rank), so their number is the batch.
    init = None if a.init is None else Path(a.init).name
    return {"data": [Path(d).name for d in a.data], "init": init, "processes": processes,
            **{k: getattr(a, k) for k in (*shared, *names)}}  # fmt: skip


@contextlib.contextmanager
def _out_lock(out: Path, dd: _Dist) -> Iterator[None]:
    """Hold a lock on checkpoint ``out`` while this run trains it (the main process holds it).

    Two runs into one ``--out`` (a ``nohup ... --resume`` started twice) each saved over the
    other's checkpoint and training state, so the file held whichever saved last, at a step
    and from a data position neither run had. The lock file ``.NAME.lock`` beside ``out`` is
    removed when the run ends; a kill leaves a file but no lock
    (:func:`worldsim.atomic.exclusive_lock`; on Windows, with no such locks, none is taken).
    Under DDP every rank learns whether the main one got it, so all stop together.

    Raises:
        WorldSimError: another run holds the lock.
    """

    def note(why: str) -> None:
        print(f"worldsim train: note: {out.parent} takes no file locks ({why}), so nothing stops a second run "
              f"training {out.name}; start only one", file=sys.stderr)  # fmt: skip

    with contextlib.ExitStack() as stack:
        holder = None
        if dd.main:
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                stack.enter_context(exclusive_lock(out.with_name(f".{out.name}.lock"), note, remove=True))
            except LockBusy as e:
                holder = e.holder
        if dd.mean(0.0 if holder is not None else 1.0) < 1.0:  # one all-reduce under DDP
            who = f"process {holder}" if holder is not None else "see the first rank's error"
            raise WorldSimError(f"{out} is being trained by another run ({who}); let it finish or stop it, "
                                "then run this again with --resume")  # fmt: skip
        yield


def _train_locked(cfg: LoopConfig, dd: _Dist, settings: dict[str, Any], make_task: Any) -> dict[str, Any] | None:
    """Train ``make_task()`` into ``cfg.out`` under its lock, resuming when asked, then leave the
    process group. Returns the last logged metrics on the main process of a run that trained,
    and None elsewhere or (after saying so) for a finished run resumed."""
    finished = False
    try:
        with _out_lock(cfg.out, dd):
            resumed = resume_state(cfg, settings)
            last = run(make_task(), cfg, dd, settings, resumed)
        finished = True
    finally:
        dd.close(finished)
    if dd.main and last.get("already_finished"):
        print(_finished_note(cfg, last))
        return None
    return last if dd.main else None


def _finished_note(cfg: LoopConfig, last: dict[str, Any]) -> str:
    return (f"{cfg.kind} checkpoint: {cfg.out} is already at step {last['step']} of {cfg.steps}; nothing to do "
            "(a larger --steps trains on)")  # fmt: skip


def tokenizer_main(argv: list[str]) -> int:
    """``worldsim train tokenizer``: fit the frame autoencoder on recordings."""
    p = argparse.ArgumentParser(prog="worldsim train tokenizer", description=tokenizer_main.__doc__)
    _common_args(p, batch=32)
    p.add_argument("--init", default=None, metavar="CKPT",
                   help="start from the tokenizer in this checkpoint (tokenizer or dynamics) instead of random weights")  # fmt: skip
    p.add_argument("--decoder-only", action="store_true",
                   help="train only the decoder (needs --init): every code stays the same, so a dynamics model "
                        "trained on them keeps working; `worldsim train swap-decoder` puts the result into it")  # fmt: skip
    a = p.parse_args(argv)
    cfg = _loop_config(a, "tokenizer")
    _, dd = _setup(a)
    settings = _run_settings(a, ("preset", "decoder_only"), dd.world)
    last = _train_locked(cfg, dd, settings, lambda: TokenizerTask(a.data, a.preset, a.seed, a.init, a.decoder_only, a.split_seed))
    if last is not None:
        print(f"tokenizer checkpoint: {cfg.out} (step {last.get('step')}, loss {last.get('loss')}, "
              f"val_loss {last.get('val_loss')}, held-out PSNR {last.get('val_psnr')} dB)")  # fmt: skip
    return 0


def dynamics_main(argv: list[str]) -> int:
    """``worldsim train dynamics``: fit the world model's transformer on tokenized recordings."""
    p = argparse.ArgumentParser(prog="worldsim train dynamics", description=dynamics_main.__doc__)
    _common_args(p, batch=8)
    p.add_argument(
        "--tokenizer", required=True, help="tokenizer checkpoint from `worldsim train tokenizer`"
    )
    p.add_argument(
        "--context", type=int, default=None, help="frames per window (default: the preset's)"
    )
    p.add_argument("--code-cache", default=None, metavar="DIR",
                   help="keep the encoded training codes here between runs, so --resume skips encoding "
                        "(default: code-cache/ beside --out; 'none' to encode every time)")  # fmt: skip
    p.add_argument("--init", default=None, metavar="CKPT",
                   help="start from this world model's dynamics weights (fine-tuning); its architecture wins over "
                        "--preset, and --tokenizer must be the one it was trained with")  # fmt: skip
    p.add_argument("--stay-gate", action=argparse.BooleanOptionalAction, default=None,
                   help="give the model the stay gate, a head that biases each cell towards its previous code "
                        "(default: on with --init if the init has one, else the presets' default)")  # fmt: skip
    p.add_argument("--still-head", action=argparse.BooleanOptionalAction, default=None,
                   help="give the model the still head, which predicts that a frame equals the previous one "
                        "(default: as --stay-gate)")  # fmt: skip
    p.add_argument("--rollout-share", type=float, default=None, metavar="P",
                   help="share of training windows whose context is the model's own sampled predictions, so it "
                        "learns to recover from its own errors (default: the init's, else 0)")  # fmt: skip
    p.add_argument("--rollout-passes", type=int, default=None, metavar="N",
                   help="prediction passes that build a rolled-out context: the context carries up to N steps of "
                        "the model's own errors, at one no-gradient forward pass each (default: the init's, else 2)")  # fmt: skip
    p.add_argument("--change-weight", type=float, default=None, metavar="W",
                   help="loss weight of the cells whose code changed from the previous frame, against 1 for the "
                        "cells that kept theirs (default: the init's, else 1)")  # fmt: skip
    p.add_argument("--stay-motion", choices=("auto", "off"), default=None,
                   help="auto: measure how each action shifts the picture, in whole cells, on the training data, "
                        "and move the stay gate's reference with it (worldsim.motion); off: the unshifted previous "
                        "frame (default: the init's, else off)")  # fmt: skip
    a = p.parse_args(argv)
    cfg = _loop_config(a, "dynamics")
    cache = (
        cfg.out.parent / "code-cache"
        if a.code_cache is None
        else None
        if a.code_cache == "none"
        else Path(a.code_cache)
    )
    dev, dd = _setup(a)
    settings = _run_settings(a, ("preset", "context", "stay_gate", "still_head", "rollout_share", "rollout_passes",
                                 "change_weight", "stay_motion"), dd.world)  # fmt: skip
    if Path(a.tokenizer).is_file():  # a missing one is the task's error to name
        settings["tokenizer_sha256"] = sha256_file(a.tokenizer)
    last = _train_locked(cfg, dd, settings, lambda: DynamicsTask(
        a.data, a.tokenizer, a.preset, a.context, a.seed, dd.device, cache, a.init, a.stay_gate, a.still_head,
        a.rollout_share, a.split_seed, a.change_weight, a.stay_motion, a.rollout_passes))  # fmt: skip
    if last is not None:
        print(f"dynamics checkpoint: {cfg.out} (step {last.get('step')}, loss {last.get('loss')}, "
              f"val_loss {last.get('val_loss')})")  # fmt: skip
    return 0


def refiner_main(argv: list[str]) -> int:
    """``worldsim train refiner``: give a world model a refiner, which sharpens each decoded frame
    with the frame shown before it (``worldsim.tokenizer.Refiner``; docs/model.md, "Refiner").

    The checkpoint's tokenizer and dynamics are frozen and copied into ``--out`` unchanged, with
    the trained refiner added; a refiner the checkpoint already had is replaced. The runtime uses
    a checkpoint's refiner by default (``worldsim.load(refine=False)`` turns it off).
    """
    p = argparse.ArgumentParser(prog="worldsim train refiner", description=refiner_main.__doc__)
    _common_args(p, batch=12)
    p.add_argument("--checkpoint", required=True, help="the world model (or tokenizer) checkpoint to add the refiner to")
    p.add_argument("--chain", type=int, default=4,
                   help="steps per training chain, each refining the previous step's output (default 4)")  # fmt: skip
    p.add_argument("--channels", type=int, default=24, help="the refiner's feature channels (default 24)")
    p.add_argument("--blocks", type=int, default=3, help="the refiner's residual blocks (default 3)")
    a = p.parse_args(argv)
    if Path(a.out).resolve() == Path(a.checkpoint).resolve():
        # the checkpoint is hashed into the run's settings: one trained in place could never be resumed
        raise WorldSimError(f"--out {a.out} is --checkpoint: write the model with a refiner to a file of its own")
    a.init = None  # _run_settings names --init; the checkpoint is recorded by its hash below
    cfg = _loop_config(a, "refiner")
    _, dd = _setup(a)
    settings = _run_settings(a, ("chain", "channels", "blocks"), dd.world)
    if Path(a.checkpoint).is_file():  # a missing one is the task's error to name
        settings["checkpoint_sha256"] = sha256_file(a.checkpoint)
    last = _train_locked(cfg, dd, settings, lambda: RefinerTask(
        a.data, a.checkpoint, a.chain, a.channels, a.blocks, a.seed, dd.device, a.split_seed))  # fmt: skip
    if last is not None:
        print(f"checkpoint with a refiner: {cfg.out} (step {last.get('step')}, held-out PSNR {last.get('val_psnr')} dB over "
              f"{a.chain}-step chains, the plain decoder {last.get('val_decoded_psnr')} dB on the same frames)")  # fmt: skip
    return 0


def encoder_digest(tokenizer: torch.nn.Module) -> str:
    """sha256 of a tokenizer's encoder and quantiser weights: equal digests give equal codes."""
    return weights_digest({"encoder.": tokenizer.encoder, "fsq.": tokenizer.fsq})


def swap_decoder_main(argv: list[str]) -> int:
    """``worldsim train swap-decoder``: give a world model the decoder of a fine-tuned tokenizer
    (and its refiner, when it has one: ``worldsim train refiner --checkpoint TOKENIZER``).

    The tokenizer must have the same config, encoder and quantiser weights as the world
    model's own (``worldsim train tokenizer --init WORLD_MODEL --decoder-only`` makes one), so
    every code means what the dynamics learned it to mean; only the pixels it decodes to
    change. Anything else is refused.
    """
    p = argparse.ArgumentParser(prog="worldsim train swap-decoder", description=swap_decoder_main.__doc__)
    p.add_argument("--checkpoint", required=True, help="the world model (a dynamics checkpoint)")
    p.add_argument("--tokenizer", required=True, help="the fine-tuned tokenizer whose decoder to take")
    p.add_argument("--out", required=True, help="the new world model checkpoint to write")
    a = p.parse_args(argv)
    world, tok = load_model(a.checkpoint), load_model(a.tokenizer)
    if world.dynamics is None:
        raise WorldSimError(f"{a.checkpoint} holds no dynamics model: give the world model checkpoint")
    if tok.config.tokenizer.codes_config() != world.config.tokenizer.codes_config():
        raise WorldSimError(f"{a.tokenizer}: its tokenizer config differs from the world model's")
    if encoder_digest(tok.tokenizer) != encoder_digest(world.tokenizer):
        raise WorldSimError(
            f"{a.tokenizer}: its encoder differs from the world model's, so its codes would mean other things; "
            "fine-tune one with `worldsim train tokenizer --init WORLD_MODEL --decoder-only`"
        )
    world.tokenizer.decoder.load_state_dict(tok.tokenizer.decoder.state_dict())
    if world.tokenizer.refiner is not None and tok.tokenizer.refiner is None:
        # The refiner learned to correct the old decoder's frames, not this one's.
        print(f"{a.checkpoint}: its refiner was trained on the old decoder's frames and is left out; "
              "train one for the new decoder with `worldsim train refiner`")  # fmt: skip
    world.tokenizer.refiner = tok.tokenizer.refiner  # the tokenizer's own, trained on its decoder, or none
    config = replace(world.config, tokenizer=tok.config.tokenizer)  # the codes config is the same: only the refiner's fields
    info = {k: v for k, v in world.info.items() if k != "refiner"}
    if tok.tokenizer.refiner is None:
        decoder = {k: tok.info[k] for k in ("steps", "val_loss") if k in tok.info}
    else:
        # A refiner run's steps and losses are the refiner's. One run on a tokenizer keeps the
        # tokenizer's beside them; one run on a world model carries that model's decoder record.
        decoder = tok.info.get("decoder") or (tok.info["refiner"].get("model", {}) if tok.dynamics is None else {})
        info["refiner"] = {**tok.info["refiner"], **{k: tok.info[k] for k in ("steps", "val_loss") if k in tok.info}}
    save_model(a.out, config, world.tokenizer, world.dynamics, {**info, "decoder": {"from": str(a.tokenizer), **decoder}})
    print(f"world model with the decoder of {a.tokenizer}: {a.out}")
    return 0


def set_guidance_main(argv: list[str]) -> int:
    """``worldsim train set-guidance``: store the action guidance a world model samples with.

    ``worldsim.load`` samples a model with the guidance its checkpoint names unless told
    otherwise (``worldsim.runtime.WorldModel``, ``guidance``). The right scale depends on the
    trained weights (docs/model.md, "Action guidance"), so it travels with them, and a model
    trained on with ``--init`` starts without any. The weights are copied unchanged.
    """
    p = argparse.ArgumentParser(prog="worldsim train set-guidance", description=set_guidance_main.__doc__)
    p.add_argument("--checkpoint", required=True, help="the world model (a dynamics checkpoint)")
    p.add_argument("--guidance", type=float, required=True, help="the scale: 1 = none, above 1 strengthens the guided actions")
    p.add_argument("--actions", default=None,
                   help="comma-separated action components to guide, by index or by the env's action names (default: all)")
    p.add_argument("--out", required=True, help="the checkpoint to write (may be --checkpoint itself)")
    a = p.parse_args(argv)
    if not math.isfinite(a.guidance) or a.guidance < 0:
        raise WorldSimError(f"--guidance must be a finite scale >= 0 (1 = none), got {a.guidance}")
    world = load_model(a.checkpoint)
    if world.dynamics is None:
        raise WorldSimError(f"{a.checkpoint} holds no dynamics model: give the world model checkpoint")
    C = world.config.action_spec.num_components
    guided = None
    if a.actions is not None:
        names: list[str] = []
        wanted = [s.strip() for s in a.actions.split(",") if s.strip()]
        if any(not s.isdigit() for s in wanted):
            if world.config.env_id is None:
                raise WorldSimError(f"{a.checkpoint} does not name its env, so give --actions as component indices")
            from worldsim.eval_probes import action_names
            from worldsim.reference import ReferenceEnv

            names = action_names(ReferenceEnv(world.config.env_id, dict(world.config.env_kwargs or {})))
        idx = []
        for s in wanted:
            i = int(s) if s.isdigit() else names.index(s) if s in names else -1
            if not 0 <= i < C:
                raise WorldSimError(f"--actions: {s!r} is not one of the model's {C} action components ({', '.join(names) or f'0..{C - 1}'})")
            idx.append(i)
        if not idx or len(set(idx)) != len(idx):
            raise WorldSimError(f"--actions must name distinct action components, got {a.actions!r}")
        guided = tuple(idx)
    config = replace(world.config, guidance=float(a.guidance), guided_actions=guided)
    save_model(a.out, config, world.tokenizer, world.dynamics, world.info)
    which = "all action components" if guided is None else f"action components {list(guided)}"
    print(f"{a.out}: samples with guidance {a.guidance:g} on {which}")
    return 0
