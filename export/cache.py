"""Finding the ONNX export of a checkpoint, or making it once.

``worldsim.load(path, backend="onnx")`` accepts either an export folder or a checkpoint. For
a checkpoint it looks, in order, for:

1. an export **beside** it: ``model.safetensors`` -> the folder ``model.onnx/`` next to it
   (what ``worldsim export onnx --checkpoint model.safetensors --out model.onnx`` writes).
   One made from another checkpoint is an error, never silently used;
2. an export in the **cache**, keyed by the checkpoint's sha256:
   ``$WORLDSIM_ONNX_CACHE/<sha256[:24]>/``, where ``WORLDSIM_ONNX_CACHE`` defaults to
   ``$XDG_CACHE_HOME/worldsim/onnx`` (``~/.cache/worldsim/onnx``);
3. otherwise it **exports once** into the cache (seconds for a small model) and uses that
   from then on. Editing the checkpoint changes its hash, so a stale export is never used.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.manifest import MANIFEST, ManifestError, check_source, read_manifest, sha256_file
from worldsim.atomic import remove_stale_temps, temp_prefix
from worldsim.errors import WorldSimError

CACHE_ENV = "WORLDSIM_ONNX_CACHE"
HASH_CHARS = 24
"""Hex digits of the sha256 in a cache folder's name (96 bits: collisions are not a concern)."""


def cache_root() -> Path:
    """``$WORLDSIM_ONNX_CACHE``, else ``$XDG_CACHE_HOME/worldsim/onnx``, else ``~/.cache/worldsim/onnx``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "worldsim" / "onnx"


def beside(checkpoint: str | Path) -> Path:
    """The export folder that belongs next to a checkpoint: ``x.safetensors`` -> ``x.onnx``."""
    return Path(checkpoint).with_suffix(".onnx")


@dataclass(frozen=True)
class ResolvedExport:
    """An export ready to run, and where it came from."""

    folder: Path
    manifest: dict[str, Any]
    source: str
    """``"folder"`` (given directly), ``"beside"``, ``"cache"`` or ``"exported"`` (just now)."""


def resolve_export(path: str | Path) -> ResolvedExport:
    """The export to run for ``path`` (an export folder or a checkpoint), exporting if needed.

    Raises:
        ManifestError: an export folder, or the one beside the checkpoint, is damaged or was
            made from another checkpoint.
        WorldSimError: no such file; the export failed.
    """
    path = Path(path)
    if path.is_dir():
        return ResolvedExport(path, read_manifest(path), "folder")
    if not path.is_file():
        raise WorldSimError(f"{path}: no such checkpoint or ONNX export folder")
    digest = sha256_file(path)
    side = beside(path)
    if (side / MANIFEST).is_file():
        manifest = read_manifest(side)
        check_source(manifest, side, path, digest)
        return ResolvedExport(side, manifest, "beside")
    folder = cache_root() / digest[:HASH_CHARS]
    if (folder / MANIFEST).is_file():
        try:
            manifest = read_manifest(folder)
            check_source(manifest, folder, path, digest)
            return ResolvedExport(folder, manifest, "cache")
        except ManifestError as e:
            # The cache is ours to repair: a damaged entry is exported again, not reported.
            print(f"worldsim: replacing a damaged cached ONNX export ({e})", file=sys.stderr)
            shutil.rmtree(folder, ignore_errors=True)
    elif folder.exists():  # an entry cut short before its manifest: damaged too
        print(f"worldsim: replacing a damaged cached ONNX export ({folder}: no {MANIFEST})", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
    _export_into_cache(path, folder)
    return ResolvedExport(folder, read_manifest(folder), "exported")


def _export_into_cache(checkpoint: Path, folder: Path) -> None:
    from export.onnx_export import write_export  # torch and the exporter load only when exporting

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder)  # exports into the cache killed (SIGKILL) mid-way
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(folder), suffix=".tmp", dir=folder.parent))
    except OSError as e:  # a read-only home, say: say which folder, and the ways around it
        raise WorldSimError(
            f"cannot write the ONNX cache {folder.parent} ({e.strerror or e}); set {CACHE_ENV} to a writable folder, "
            f"or export once with `worldsim export onnx --checkpoint {checkpoint} --out {beside(checkpoint)}`"
        ) from None
    print(f"worldsim: exporting {checkpoint} to ONNX once, cached in {folder}", file=sys.stderr)
    try:
        try:
            write_export(checkpoint, tmp)
        except OSError as e:  # a full disk: the bare error named neither the cache nor the ways around it
            raise WorldSimError(
                f"cannot write the ONNX cache {folder} ({e.strerror or e}); free space there, set {CACHE_ENV} to a "
                f"folder with room, or export once with `worldsim export onnx --checkpoint {checkpoint} --out "
                f"{beside(checkpoint)}`"
            ) from None
        tmp.chmod(0o755)
        try:
            tmp.rename(folder)
        except OSError:
            # Another process finished the same export first; its copy is as good as ours.
            if not (folder / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
