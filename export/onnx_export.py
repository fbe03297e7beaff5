"""``worldsim export onnx``: a checkpoint -> three ONNX graphs and a manifest, verified.

The export traces the modules of :mod:`export.graphs` with the TorchScript-based exporter
(``torch.onnx.export(dynamo=False)``). Why not the dynamo exporter: on the tiny model it
took 104 s against 2 s here, and its graph failed at runtime on an empty context (F = 0),
the most common call. A trace is never trusted on its own: :mod:`export.verify` runs every
graph under ONNX Runtime and torch at several shapes, and nothing is written to the output
folder unless they agree within :class:`~export.verify.Tolerance`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch.onnx import symbolic_helper

from export.graphs import (
    DecoderGraph,
    DynamicsStepGraph,
    EncoderGraph,
    GraphSpec,
    RefinerGraph,
    graph_specs,
)
from export.manifest import (
    FORMAT,
    GRAPHS,
    MANIFEST,
    OPTIONAL_GRAPHS,
    VERSION,
    sha256_file,
    write_manifest,
)
from export.ort_session import require_onnxruntime
from export.verify import Check, ExportVerificationError, ModelInputs, Tolerance, verify_export
from worldsim.atomic import remove_stale_temps, temp_prefix
from worldsim.checkpoint import load_model
from worldsim.errors import WorldSimError
from worldsim.runtime import DEFAULT_CHECKPOINT

DEFAULT_OPSET = 17
"""LayerNormalization is one op from opset 17; ONNX Runtime has run 17 since 1.14."""
OPSETS = range(14, 21)
"""Scaled dot-product attention exports from 14; the TorchScript exporter stops at 20."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote."""

    folder: Path
    manifest: dict[str, Any]
    checks: list[Check]
    seconds: float


SDPA = "aten::scaled_dot_product_attention"


def _attention_symbolic(head_dim: int) -> Callable:
    """``scaled_dot_product_attention`` as plain ``softmax(q k^T / sqrt(head_dim) + bias) v``.

    The exporter's own decomposition scales q and k^T separately and adds a NaN guard for
    fully masked rows; the Mul between Transpose and MatMul keeps ONNX Runtime from fusing
    them into one transposed MatMul, and it cost ~25 % of a batched pass. No row of this
    model is ever fully masked (every token sees itself), and the mask's "no" is the most
    negative float rather than -inf, so the guard has nothing to guard. The head size comes
    from the model config: with dynamic axes the traced shapes do not carry it.
    """

    @symbolic_helper.parse_args("v", "v", "v", "v", "f", "b", "v", "b")
    def attention(g: Any, query: Any, key: Any, value: Any, mask: Any = None, dropout_p: float = 0.0,
                  is_causal: bool = False, scale: Any = None, enable_gqa: bool = False) -> Any:  # fmt: skip
        if is_causal or enable_gqa or dropout_p or not symbolic_helper._is_none(scale):
            raise WorldSimError("the ONNX export expects attention without is_causal, scale, dropout or GQA")
        scores = g.op("MatMul", query, g.op("Transpose", key, perm_i=[0, 1, 3, 2]))
        scores = g.op("Mul", scores, g.op("Constant", value_t=torch.tensor(1.0 / math.sqrt(head_dim))))
        if not symbolic_helper._is_none(mask):
            no = torch.tensor(torch.finfo(torch.float32).min)
            bias = g.op("Where", mask, g.op("Constant", value_t=torch.tensor(0.0)), g.op("Constant", value_t=no))
            scores = g.op("Add", scores, bias)
        return g.op("MatMul", g.op("Softmax", scores, axis_i=-1), value)

    return attention


def _export_graph(module: torch.nn.Module, args: tuple, spec: GraphSpec, path: Path, opset: int, head_dim: int) -> None:
    torch.onnx.register_custom_op_symbolic(SDPA, _attention_symbolic(head_dim), opset)
    try:
        _trace(module, args, spec, path, opset)
    finally:
        torch.onnx.unregister_custom_op_symbolic(SDPA, opset)
    _name_output_dims(path, spec)


def _trace(module: torch.nn.Module, args: tuple, spec: GraphSpec, path: Path, opset: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns at every shape it reads as a Python int; verification at other
        # shapes (export.verify) is what proves those reads stay symbolic.
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


def _example_args(inp: ModelInputs) -> dict[str, tuple]:
    """One input set per graph, to trace (sizes that are not 0 or 1, so none look constant)."""
    H, W = inp.cfg.frame_shape
    h, w = H // inp.stride, W // inp.stride
    cache = inp.cache(2, 2, h, w, 0)
    valid = torch.ones(2, cache.shape[4], dtype=torch.bool)
    dyn_args = (inp.codes((2, 2, h, w)), inp.actions((2, 2)), inp.codes((2, h, w), 0.5), inp.actions((2,)), torch.tensor(4), valid)
    dyn_args += tuple(cache[i, j].clone() for i in range(cache.shape[0]) for j in (0, 1))  # per-layer keys, values
    refiner = (inp.frames(2, H, W), inp.frames(2, H, W), inp.codes((2, h, w)), inp.codes((2, h, w)))
    return {"encoder": (inp.frames(2, H, W),), "decoder": (inp.codes((2, h, w)),), "dynamics": dyn_args, "refiner": refiner}


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
    # Hashed before it is read and compared after: the manifest's sha256 must be that of the
    # weights in the graphs, also when a training run replaces the checkpoint meanwhile.
    digest = sha256_file(checkpoint)
    loaded = load_model(checkpoint, "cpu")
    if loaded.dynamics is None:
        raise WorldSimError(f"{checkpoint}: a tokenizer checkpoint; the ONNX export needs a dynamics checkpoint")
    specs = graph_specs(loaded.config)
    dyn = loaded.config.dynamics
    modules = {
        "encoder": EncoderGraph(loaded.tokenizer),
        "decoder": DecoderGraph(loaded.tokenizer),
        "dynamics": DynamicsStepGraph(loaded.dynamics),
        "refiner": RefinerGraph(loaded.tokenizer),
    }
    examples = _example_args(ModelInputs(loaded))
    for name, spec in specs.items():
        _export_graph(modules[name], examples[name], spec, folder / spec.file, opset, dyn.width // dyn.heads)
    checks = verify_export(folder, loaded, tolerance)
    failed = [c for c in checks if not c.passed]
    if failed:
        lines = "; ".join(f"{c.graph} {c.output} [{c.case}]: error {c.error:.3g} > limit {c.limit:.3g}" for c in failed)
        raise ExportVerificationError(f"ONNX Runtime and torch disagree on {checkpoint}: {lines}")
    if sha256_file(checkpoint) != digest:
        raise WorldSimError(f"{checkpoint} changed while it was exported (a training run saving it?); export again")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "opset": opset,
        "precision": "fp32",
        "checkpoint": {"file": checkpoint.name, "bytes": checkpoint.stat().st_size, "sha256": digest},
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
        out: the export folder; a symlink to a folder is followed. An existing export there
            is replaced; any other non-empty folder is refused.
        opset: ONNX opset, 14..20.
        tolerance: the self-verification's limits (default :class:`Tolerance`).

    Raises:
        ExportVerificationError: ONNX Runtime disagrees with torch; ``out`` is left untouched.
        WorldSimError: no such checkpoint, ONNX Runtime missing, ``out`` is another folder.
        OSError: the disk refused a write (full), naming ``out`` or its file; ``out`` is left untouched.
    """
    ckpt = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if ckpt.is_dir():
        raise WorldSimError(f"{ckpt}: a folder, not a checkpoint file (--checkpoint takes a .safetensors world model)")
    if not ckpt.is_file():
        missing = " (the shipped model is missing; `make model` trains it again from nothing)"
        raise WorldSimError(f"{ckpt}: no such checkpoint" + ("" if checkpoint else missing))
    # Resolved, so that an --out that is a symlink to a folder (on another disk, say) gets the
    # export in that folder: renaming into place would otherwise replace the link itself.
    out = Path(out).resolve()
    mounted = out.is_dir() and os.path.ismount(out)  # a container's volume, say: it cannot be renamed
    _check_replaceable(out, mounted)
    tmp = _private_folder(out, inside=mounted)
    try:
        result = write_export(ckpt, tmp, opset=opset, tolerance=tolerance)
        tmp.chmod(0o755)  # mkdtemp makes it private; an export is ordinary shared data
        if mounted:
            _move_files_into(tmp, out)
        elif out.exists():  # the old export moves aside until the new one is in place
            _replace_export(tmp, out)
        else:
            tmp.rename(out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        named = None if e.filename is None else Path(os.fsdecode(e.filename))
        if e.errno is not None and (named is None or named.is_relative_to(tmp)):
            # A graph the disk refused (full) named no file, or one in the temporary folder the
            # user never chose: say which file of --out it was.
            raise OSError(e.errno, e.strerror, str(out if named is None else out / named.relative_to(tmp))) from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, result.manifest, result.checks, result.seconds)


EXPORT_FILES = frozenset({MANIFEST, *(f"{g}.onnx" for g in (*GRAPHS, *OPTIONAL_GRAPHS))})
"""Everything an export folder holds; a folder holding anything else is never replaced."""


def _private_folder(out: Path, inside: bool = False) -> Path:
    """A new private folder to write the export into: next to ``out`` (its parents made), or
    ``inside`` it.

    Raises:
        WorldSimError: a parent of ``out`` is a file, or its folder cannot be made or written.
            The errors name ``out``'s folder, not the temporary one the user never chose.
    """
    for folder in (out.parent, *out.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise WorldSimError(f"{folder} is a file, so it cannot hold the folder {out}; choose another --out")
            break
    where = out if inside else out.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out, where)  # the folders of exports killed (SIGKILL) mid-way here
        return Path(tempfile.mkdtemp(prefix=temp_prefix(out), suffix=".tmp", dir=where))
    except OSError as e:
        raise WorldSimError(f"cannot write into {where} ({e.strerror or e}); choose another --out") from None


def _left_by_an_export(path: Path, out: Path) -> bool:
    """Whether ``path`` is a private folder :func:`_private_folder` made inside ``out``."""
    name = path.name
    return name.startswith(f".{out.name}.") and name.endswith(".tmp") and path.is_dir() and not path.is_symlink()


def _replace_export(tmp: Path, out: Path) -> None:
    """Put the new export ``tmp`` in place of the earlier one at ``out``.

    The earlier export is renamed aside first (a folder cannot be renamed over a non-empty
    one) and goes back if the new one cannot be put in place, or Ctrl-C comes in between:
    ``out`` is never left missing.

    Raises:
        WorldSimError: the earlier export could not be put back either; it names where it is.
    """
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    aside = old / "export"
    try:
        out.rename(aside)
        try:
            tmp.rename(out)
        except BaseException as e:
            try:
                aside.rename(out)
            except OSError as back:
                raise WorldSimError(
                    f"{out}: the new export could not be put in place ({getattr(e, 'strerror', None) or e!r}), nor the earlier one "
                    f"put back ({back.strerror or back}); the earlier export is in {aside}"
                ) from e
            raise
    except BaseException:
        with contextlib.suppress(OSError):
            old.rmdir()  # empty unless it still holds the earlier export, which must not go
        raise
    shutil.rmtree(old, ignore_errors=True)


def _move_files_into(tmp: Path, out: Path) -> None:
    """Move an export's files from ``tmp`` into the folder ``out``, over an earlier export's.

    For a mount point, which cannot be renamed aside as other folders are. The old manifest
    goes first and the new one comes last: a reader checks the graphs against the manifest's
    hashes, so a folder caught half-replaced is never taken for an export.
    """
    (out / MANIFEST).unlink(missing_ok=True)
    for name in sorted(EXPORT_FILES - {MANIFEST}):
        if (tmp / name).exists():
            (tmp / name).replace(out / name)
        else:  # a graph the earlier export's model had and this one has not (a refiner)
            (out / name).unlink(missing_ok=True)
    (tmp / MANIFEST).replace(out / MANIFEST)
    tmp.rmdir()


def _check_replaceable(out: Path, mounted: bool = False) -> None:
    """Refuse an ``out`` that exists and is not an empty folder or a WorldSim export made of
    nothing but its own files, and the current folder: a user's files are never removed.

    In a ``mounted`` folder, which an export is written inside, the private folder an export
    killed there left (``.NAME.*.tmp``) is not counted: it would refuse every later export.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise WorldSimError(f"{out} exists and is not a folder; choose another --out")
    if out.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
        raise WorldSimError(f"{out} is the current folder or holds it; choose another --out")
    names = {p.name for p in out.iterdir() if not (mounted and _left_by_an_export(p, out))}
    if not names:
        return
    other = sorted(names - EXPORT_FILES)
    try:
        is_export = json.loads((out / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        is_export = False
    if other or not is_export:
        what = f"it also holds {other[:3]}" if other and is_export else "it is not a WorldSim ONNX export"
        raise WorldSimError(f"{out} exists and {what}; an export replaces only an earlier export, so choose another --out")


def main(argv: list[str]) -> int:
    """``worldsim export onnx``."""
    ap = argparse.ArgumentParser(prog="worldsim export onnx", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="dynamics checkpoint (.safetensors); default: the shipped model")
    ap.add_argument("--out", required=True, help="folder to write the graphs and manifest.json into")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, 14..20 (default {DEFAULT_OPSET})")
    ap.add_argument("--parity", type=int, default=0, metavar="STEPS",
                    help="then roll out torch and ONNX Runtime side by side for STEPS open-loop steps and print how they agree (default 0: no rollout)")  # fmt: skip
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
