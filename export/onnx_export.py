"""``worldsim export onnx``: a checkpoint -> three ONNX graphs and a manifest, verified.

The export traces the modules of :mod:`export.graphs` with the TorchScript-based exporter
(``torch.onnx.export(dynamo=False)``). Why not the dynamo exporter: on the tiny model it
took 104 s against 2 s here, and its graph failed at runtime on an empty context (F = 0),
the most common call. Tracing records Python branches as they went for the example, so the
export never trusts the trace: it runs every graph under ONNX Runtime and under torch on
the same random inputs, at several batch sizes, frame sizes, context lengths and cache
lengths, and fails unless all agree within :class:`Tolerance`. Nothing is written to the
output folder unless verification passed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from export.graphs import DecoderGraph, DynamicsStepGraph, EncoderGraph, GraphSpec, graph_specs
from export.manifest import FORMAT, MANIFEST, VERSION, sha256_file, write_manifest
from export.ort_session import CPU_EP, Placement, open_session, require_onnxruntime
from worldsim.checkpoint import LoadedModel, load_model
from worldsim.errors import WorldSimError
from worldsim.runtime import DEFAULT_CHECKPOINT

DEFAULT_OPSET = 17
"""LayerNormalization is one op from opset 17; ONNX Runtime has run 17 since 1.14."""
OPSETS = range(14, 21)
"""Scaled dot-product attention exports from 14; the TorchScript exporter stops at 20."""


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


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote."""

    folder: Path
    manifest: dict[str, Any]
    checks: list[Check]
    seconds: float


class ExportVerificationError(WorldSimError):
    """ONNX Runtime and torch disagree beyond the tolerance: the export is not written."""


def _export_graph(module: torch.nn.Module, args: tuple, spec: GraphSpec, path: Path, opset: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns at every shape it reads as a Python int; verification at other
        # shapes below is what proves those reads stay symbolic.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_axes=spec.dynamic_axes(),
            do_constant_folding=True,
        )
    _name_output_dims(path, spec)


def _name_output_dims(path: Path, spec: GraphSpec) -> None:
    """Write the spec's output shapes into the graph: the tracer names computed dimensions
    after the op that made them (``Gatherlogits_dim_3``) even where the size is fixed."""
    model = onnx.load(str(path))
    for value, want in zip(model.graph.output, spec.outputs):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(want.shape):
            continue
        for dim, size in zip(dims, want.shape):
            if isinstance(size, int):
                dim.dim_value = size
            else:
                dim.dim_param = size
    onnx.save(model, str(path))


class _Inputs:
    """Random but model-shaped inputs for tracing and verification."""

    def __init__(self, loaded: LoadedModel, seed: int = 0) -> None:
        self.cfg = loaded.config
        self.dyn = loaded.dynamics
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
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


def _example_args(inp: _Inputs) -> dict[str, tuple]:
    """One input set per graph, to trace (sizes that are not 0 or 1, so none look constant)."""
    H, W = inp.cfg.frame_shape
    h, w = H // inp.stride, W // inp.stride
    cache = inp.cache(2, 2, h, w, 0)
    valid = torch.ones(2, cache.shape[4], dtype=torch.bool)
    dyn_args = (inp.codes((2, 2, h, w)), inp.actions((2, 2)), inp.codes((2, h, w), 0.5), inp.actions((2,)), torch.tensor(4), cache, valid)
    return {"encoder": (inp.frames(2, H, W),), "decoder": (inp.codes((2, h, w)),), "dynamics": dyn_args}


def _compare_float(graph: str, case: str, name: str, got: np.ndarray, ref: torch.Tensor, tol: Tolerance) -> Check:
    r = ref.float().numpy()
    if got.shape != r.shape:
        return Check(graph, case, f"{name} shape {list(got.shape)} vs {list(r.shape)}", float("inf"), 0.0)
    err = float(np.abs(got - r).max()) if r.size else 0.0
    scale = float(np.abs(r).max()) if r.size else 0.0
    return Check(graph, case, name, err, tol.atol + tol.rtol * scale)


def _verify_tokenizer(sessions: dict[str, Any], loaded: LoadedModel, inp: _Inputs, tol: Tolerance) -> list[Check]:
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


def _verify_dynamics(session: Any, loaded: LoadedModel, inp: _Inputs, tol: Tolerance) -> list[Check]:
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
            "actions": acts.numpy(), "t": np.array(t, dtype=np.int64), "cache": cache.numpy(), "valid": valid.numpy(),
        }
        logits, reward, done, entries = session.run(None, feed)
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
            checks.append(_compare_float("dynamics", case, "logits", logits, pred.logits, tol))
            checks.append(_compare_float("dynamics", case, "reward", reward, pred.reward, tol))
            checks.append(_compare_float("dynamics", case, "done_logit", done, pred.done_logit, tol))
        if ref_entries is not None:
            checks.append(_compare_float("dynamics", case, "entries", entries, ref_entries, tol))
    return checks


def verify_export(folder: Path, loaded: LoadedModel, tolerance: Tolerance, seed: int = 0) -> list[Check]:
    """Run every graph in ``folder`` under ONNX Runtime (CPU) and torch on the same inputs."""
    ort = require_onnxruntime()
    cpu = Placement([CPU_EP], "cpu", required=True)
    sessions = {name: open_session(folder / f"{name}.onnx", cpu, ort) for name in ("encoder", "decoder", "dynamics")}
    inp = _Inputs(loaded, seed + 1)
    return _verify_tokenizer(sessions, loaded, inp, tolerance) + _verify_dynamics(sessions["dynamics"], loaded, inp, tolerance)


def write_export(checkpoint: Path, folder: Path, *, opset: int = DEFAULT_OPSET, tolerance: Tolerance | None = None) -> ExportResult:
    """Export, verify and write the manifest into ``folder`` (which exists and is empty).

    Raises:
        ExportVerificationError: a graph disagrees with torch beyond ``tolerance``.
        WorldSimError: a bad checkpoint, a tokenizer-only checkpoint, an unsupported opset.
    """
    start = time.perf_counter()
    tolerance = tolerance or Tolerance()
    if opset not in OPSETS:
        raise WorldSimError(f"opset must be in {OPSETS.start}..{OPSETS.stop - 1}, got {opset}")
    ort = require_onnxruntime()  # verification needs it: fail before minutes of work
    loaded = load_model(checkpoint, "cpu")
    if loaded.dynamics is None:
        raise WorldSimError(f"{checkpoint}: a tokenizer checkpoint; the ONNX export needs a dynamics checkpoint")
    specs = graph_specs(loaded.config)
    modules = {
        "encoder": EncoderGraph(loaded.tokenizer),
        "decoder": DecoderGraph(loaded.tokenizer),
        "dynamics": DynamicsStepGraph(loaded.dynamics),
    }
    examples = _example_args(_Inputs(loaded))
    for name, spec in specs.items():
        _export_graph(modules[name], examples[name], spec, folder / spec.file, opset)
    checks = verify_export(folder, loaded, tolerance)
    failed = [c for c in checks if not c.passed]
    if failed:
        lines = "; ".join(f"{c.graph} {c.output} [{c.case}]: error {c.error:.3g} > limit {c.limit:.3g}" for c in failed)
        raise ExportVerificationError(f"ONNX Runtime and torch disagree on {checkpoint}: {lines}")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "opset": opset,
        "precision": "fp32",
        "checkpoint": {"file": checkpoint.name, "bytes": checkpoint.stat().st_size, "sha256": sha256_file(checkpoint)},
        "config": loaded.config.to_dict(),
        "graphs": {name: {**spec.to_dict(), "sha256": sha256_file(folder / spec.file)} for name, spec in specs.items()},
        "verification": {"tolerance": asdict(tolerance), "checks": [asdict(c) for c in checks]},
        "exported_with": {"torch": torch.__version__, "onnxruntime": ort.__version__},
    }
    write_manifest(folder, manifest)
    return ExportResult(folder, manifest, checks, time.perf_counter() - start)


def export_onnx(
    checkpoint: str | Path | None, out: str | Path, *, opset: int = DEFAULT_OPSET, tolerance: Tolerance | None = None
) -> ExportResult:
    """Export a dynamics checkpoint to ``out``: ``encoder.onnx``, ``decoder.onnx``,
    ``dynamics.onnx`` and ``manifest.json``.

    Args:
        checkpoint: a dynamics checkpoint; None = the shipped default model.
        out: the export folder. An existing export there is replaced; any other non-empty
            folder is refused.
        opset: ONNX opset, 14..20.
        tolerance: the self-verification's limits (default :class:`Tolerance`).

    Raises:
        ExportVerificationError: ONNX Runtime disagrees with torch; ``out`` is left untouched.
        WorldSimError: no such checkpoint, ONNX Runtime missing, ``out`` is another folder.
    """
    ckpt = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if not ckpt.is_file():
        raise WorldSimError(f"{ckpt}: no such checkpoint" + ("" if checkpoint else " (no default model is shipped yet)"))
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise WorldSimError(f"{out} exists and is not a WorldSim ONNX export; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        result = write_export(ckpt, tmp, opset=opset, tolerance=tolerance)
        tmp.chmod(0o755)  # mkdtemp makes it private; an export is ordinary shared data
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, result.manifest, result.checks, result.seconds)


def main(argv: list[str]) -> int:
    """``worldsim export onnx``."""
    ap = argparse.ArgumentParser(prog="worldsim export onnx", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="dynamics checkpoint (.safetensors); default: the shipped model")
    ap.add_argument("--out", required=True, help="folder to write the graphs and manifest.json into")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, 14..20 (default {DEFAULT_OPSET})")
    ap.add_argument("--parity", type=int, default=0, metavar="STEPS",
                    help="then roll out torch and ONNX Runtime side by side for STEPS open-loop steps and print how they agree")  # fmt: skip
    args = ap.parse_args(argv)
    if args.parity < 0:
        raise WorldSimError(f"--parity takes a number of steps >= 0, got {args.parity}")
    result = export_onnx(args.checkpoint, args.out, opset=args.opset)
    tol = result.manifest["verification"]["tolerance"]
    print(f"exported {result.manifest['checkpoint']['file']} to {result.folder} in {result.seconds:.1f} s (opset {args.opset})")
    for g in result.manifest["graphs"].values():
        size = (result.folder / g["file"]).stat().st_size
        print(f"  {g['file']:<14} {size / 1e6:7.2f} MB  inputs: {', '.join(t['name'] for t in g['inputs'])}")
    print(
        f"verified against torch: codes >= {tol['codes_agree']:.1%} identical, frames within {tol['pixel_levels']} level, "
        f"floats within {tol['atol']:g} + {tol['rtol']:g} x max|torch|"
    )
    for c in result.checks:
        print(f"  ok  {c.graph:<8} {c.output:<10} error {c.error:<10.3g} limit {c.limit:<10.3g} {c.case}")
    if args.parity:
        from export.parity import measure_parity

        p = measure_parity(args.checkpoint or DEFAULT_CHECKPOINT, result.folder, steps=args.parity)
        print(
            f"parity over {p.steps} open-loop steps, {p.batch} worlds, fp32 on the CPU: greedy {p.pixels_within_1:.2%} of pixels "
            f"within 1 level, {p.greedy_tokens_equal:.2%} of tokens identical; sampled (temperature 1, same seed) "
            f"{p.sampled_tokens_equal:.2%} of tokens identical"
        )
    return 0
