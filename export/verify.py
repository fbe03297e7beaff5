"""Self-verification of an ONNX export: ONNX Runtime against torch on the same inputs.

Tracing records Python branches as they went for the example inputs, so an export is never
trusted on its own: every graph runs under ONNX Runtime (CPU) and under torch on the same
random inputs, at two frame sizes and aspect ratios, batch sizes 1 to 3, 0, 1 and 3 frames
to commit, an empty, a full and a partly invalid cache, and a frame index past the RoPE
period, and must agree within :class:`Tolerance`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.graphs import cache_feed, packed_logits
from export.ort_session import CPU_EP, Placement, open_session, require_onnxruntime
from worldsim.checkpoint import LoadedModel
from worldsim.errors import WorldSimError


@dataclass(frozen=True)
class Tolerance:
    """How close ONNX Runtime must come to torch (fp32 on the CPU, both) for an export to pass."""

    codes_agree: float = 0.999
    """Share of encoder codes that must be identical: a latent within float rounding of an
    FSQ level boundary may round the other way, nothing else may differ."""
    pixel_levels: int = 1
    """Decoded frames: largest allowed difference, in intensity levels of 255."""
    atol: float = 1e-4
    rtol: float = 1e-3
    """Float outputs (logits, reward, episode end, cache entries): every element within
    ``atol + rtol * max|torch output|``."""


@dataclass(frozen=True)
class Check:
    """One output of one graph compared on one set of inputs."""

    graph: str
    case: str
    output: str
    error: float
    """Codes: share that differ; frames: largest level difference; floats: largest absolute error."""
    limit: float

    @property
    def passed(self) -> bool:
        return self.error <= self.limit


class ExportVerificationError(WorldSimError):
    """ONNX Runtime and torch disagree beyond the tolerance: the export is not written."""


class ModelInputs:
    """Random but model-shaped inputs for tracing and verification."""

    def __init__(self, loaded: LoadedModel, seed: int = 0) -> None:
        self.cfg = loaded.config
        self.dyn = loaded.dynamics
        self.rng = np.random.default_rng(seed)
        self.stride = self.cfg.tokenizer.stride
        self.multiple = self.stride * self.cfg.dynamics.patch
        self.codebook = self.cfg.tokenizer.codebook_size

    def sizes(self) -> list[tuple[int, int]]:
        """The trained frame size, and a larger one of another aspect ratio."""
        H, W = self.cfg.frame_shape
        return [(H, W), (H + self.multiple, W + 2 * self.multiple)]

    def frames(self, B: int, H: int, W: int) -> torch.Tensor:
        return torch.from_numpy(self.rng.integers(0, 256, (B, H, W, 3), dtype=np.uint8))

    def codes(self, shape: tuple[int, ...], masked: float = 0.0) -> torch.Tensor:
        c = self.rng.integers(0, self.codebook, shape)
        if masked:
            p = self.cfg.dynamics.patch
            *lead, h, w = shape
            hide = self.rng.random((*lead, h // p, w // p)) < masked
            c = np.where(hide.repeat(p, -2).repeat(p, -1), -1, c)  # whole patches, as MaskGIT masks
        return torch.from_numpy(c.astype(np.int64))

    def actions(self, lead: tuple[int, ...], none: float = 0.2) -> torch.Tensor:
        nvec = self.cfg.dynamics.action_nvec
        a = np.stack([self.rng.integers(0, n, lead) for n in nvec], -1)
        a = np.where(self.rng.random(lead)[..., None] < none, -1, a)  # some "no action" rows
        return torch.from_numpy(a.astype(np.int64))

    def cache(self, B: int, frames: int, h: int, w: int, t0: int) -> torch.Tensor:
        """A cache of real keys and values: ``frames`` random frames appended by torch."""
        dyn = self.cfg.dynamics
        if frames == 0:
            return torch.zeros(dyn.layers, 2, B, dyn.heads, 0, dyn.width // dyn.heads)
        with torch.no_grad():
            return self.dyn.append(
                self.codes((B, frames, h, w)), self.actions((B, frames)), torch.tensor(t0), dyn.inference_corruption, None
            )


def _compare_float(graph: str, case: str, name: str, got: np.ndarray, ref: torch.Tensor, tol: Tolerance) -> Check:
    r = ref.float().numpy()
    if got.shape != r.shape:
        return Check(graph, case, f"{name} shape {list(got.shape)} vs {list(r.shape)}", float("inf"), 0.0)
    err = float(np.abs(got - r).max()) if r.size else 0.0
    scale = float(np.abs(r).max()) if r.size else 0.0
    return Check(graph, case, name, err, tol.atol + tol.rtol * scale)


def _verify_tokenizer(sessions: dict[str, Any], loaded: LoadedModel, inp: ModelInputs, tol: Tolerance) -> list[Check]:
    checks = []
    for B, (H, W) in zip((2, 1), inp.sizes()):
        case = f"B={B} {H}x{W}"
        frames = inp.frames(B, H, W)
        with torch.no_grad():
            ref_codes = loaded.tokenizer.encode(frames).numpy()
        got = sessions["encoder"].run(None, {"frames": frames.numpy()})[0]
        differ = float(np.mean(got != ref_codes)) if got.shape == ref_codes.shape else 1.0
        checks.append(Check("encoder", case, "codes", differ, 1.0 - tol.codes_agree))
        codes = inp.codes((B, H // inp.stride, W // inp.stride))
        with torch.no_grad():
            ref_frames = loaded.tokenizer.decode(codes).numpy().astype(np.int16)
        got = sessions["decoder"].run(None, {"codes": codes.numpy()})[0].astype(np.int16)
        worst = float(np.abs(got - ref_frames).max()) if got.shape == ref_frames.shape else float("inf")
        checks.append(Check("decoder", case, "frames", worst, float(tol.pixel_levels)))
    return checks


def _verify_dynamics(session: Any, loaded: LoadedModel, inp: ModelInputs, tol: Tolerance) -> list[Check]:
    dyn, cfg = loaded.dynamics, loaded.config.dynamics
    level = cfg.inference_corruption
    checks = []
    cases = [  # (name, B, context frames F, cached frames, frame size, t, invalidate some cache)
        ("one pass, full cache", 1, 0, min(3, max(1, cfg.context - 1)), inp.sizes()[0], cfg.time_period + 5, False),
        ("commit + pass, partly valid cache", 3, 1, 2, inp.sizes()[0], 7, True),
        ("prompt append, empty cache", 2, 3, 0, inp.sizes()[1], 3, False),
    ]
    for name, B, Fr, cached, (H, W), t, holes in cases:
        h, w = H // inp.stride, W // inp.stride
        cache = inp.cache(B, cached, h, w, t - Fr - cached)
        valid = torch.ones(B, cache.shape[4], dtype=torch.bool)
        if holes:
            valid[1, : cache.shape[4] // 2] = False  # world 1 was restarted: its older frames are gone
        ctx, ctx_act = inp.codes((B, Fr, h, w)), inp.actions((B, Fr))
        codes, acts = inp.codes((B, h, w), 0.5), inp.actions((B,))
        feed = {
            "context_codes": ctx.numpy(), "context_actions": ctx_act.numpy(), "codes": codes.numpy(),
            "actions": acts.numpy(), "t": np.array(t, dtype=np.int64), "valid": valid.numpy(), **cache_feed(cache.numpy()),
        }
        logits, reward, done, entries, *still = session.run(None, feed)
        tt = torch.tensor(t)
        with torch.no_grad():
            if Fr == 0:
                pred, ref_entries = dyn.predict(codes, acts, tt, cache, None if valid.all() else valid)
            elif Fr == 1:
                pred, ref_entries = dyn.predict(codes, acts, tt, cache, valid, ctx[:, 0], ctx_act[:, 0], level)
            else:  # a prompt: only the entries matter, the dummy target is never read
                pred, ref_entries = None, dyn.append(ctx, ctx_act, torch.tensor(t - Fr), level, None, None)
        case = f"{name}: B={B} F={Fr} S={cache.shape[4]} {H}x{W} t={t}"
        if pred is not None:
            checks.append(_compare_float("dynamics", case, "logits", logits, packed_logits(pred), tol))
            checks.append(_compare_float("dynamics", case, "reward", reward, pred.reward, tol))
            checks.append(_compare_float("dynamics", case, "done_logit", done, pred.done_logit, tol))
            if pred.still_logit is not None:
                checks.append(_compare_float("dynamics", case, "still_logit", still[0], pred.still_logit, tol))
        if ref_entries is not None:
            checks.append(_compare_float("dynamics", case, "entries", entries, ref_entries, tol))
    return checks


def verify_export(folder: Path, loaded: LoadedModel, tolerance: Tolerance, seed: int = 0) -> list[Check]:
    """Run every graph in ``folder`` under ONNX Runtime (CPU) and torch on the same inputs."""
    ort = require_onnxruntime()
    cpu = Placement([CPU_EP], "cpu", required=True)
    refiner = ("refiner",) if loaded.tokenizer.refiner is not None else ()
    sessions = {name: open_session(folder / f"{name}.onnx", cpu, ort) for name in ("encoder", "decoder", "dynamics", *refiner)}
    inp = ModelInputs(loaded, seed + 1)
    checks = _verify_tokenizer(sessions, loaded, inp, tolerance) + _verify_dynamics(sessions["dynamics"], loaded, inp, tolerance)
    return checks + (_verify_refiner(sessions["refiner"], loaded, inp, tolerance) if refiner else [])


def _verify_refiner(session: Any, loaded: LoadedModel, inp: ModelInputs, tol: Tolerance) -> list[Check]:
    """The refiner on random frames and codes that differ in about half the cells, at both sizes."""
    checks = []
    for B, (H, W) in zip((2, 1), inp.sizes()):
        h, w = H // inp.stride, W // inp.stride
        prev, frames = inp.frames(B, H, W), inp.frames(B, H, W)
        prev_codes = inp.codes((B, h, w))
        codes = torch.where(torch.from_numpy(inp.rng.random((B, h, w)) < 0.5), inp.codes((B, h, w)), prev_codes)
        with torch.no_grad():
            ref = loaded.tokenizer.refine(prev, frames, prev_codes, codes).numpy().astype(np.int16)
        feed = {"prev_frames": prev.numpy(), "frames": frames.numpy(), "prev_codes": prev_codes.numpy(), "codes": codes.numpy()}
        got = session.run(None, feed)[0].astype(np.int16)
        worst = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
        checks.append(Check("refiner", f"B={B} {H}x{W}", "frames", worst, float(tol.pixel_levels)))
    return checks
