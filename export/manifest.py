"""The manifest of an ONNX export: ``manifest.json`` beside the graphs.

It records what a reader needs to use the graphs without WorldSim's torch code:

* ``format`` (``"worldsim-onnx"``) and ``version``;
* ``opset``, and ``precision`` of the graphs (``"fp32"``);
* ``checkpoint``: the source checkpoint's file name, size and **sha256**, which is how the
  runtime knows an export belongs to a checkpoint;
* ``config``: the model config exactly as the checkpoint stores it;
* ``graphs``: per graph its file, the file's sha256, and its inputs and outputs (name,
  dtype, shape; a string in a shape is a dynamic axis);
* ``verification``: the tolerances the export was checked against and the errors measured;
* ``exported_with``: library versions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worldsim.atomic import atomic_write_text
from worldsim.checkpoint import (
    ModelConfig,
    sha256_file,  # noqa: F401  (re-exported: the export's own hash of files)
)
from worldsim.errors import WorldSimError

FORMAT = "worldsim-onnx"
VERSION = 1
MANIFEST = "manifest.json"
GRAPHS = ("encoder", "decoder", "dynamics")
OPTIONAL_GRAPHS = ("refiner",)
"""Graphs only some models have: the refiner, for a checkpoint with one (its config says)."""


class ManifestError(WorldSimError):
    """An export folder that is incomplete, damaged, or made from another checkpoint."""


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write ``folder/manifest.json`` whole or not at all: half a manifest is an export no reader takes."""
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def read_manifest(folder: str | Path, *, check_files: bool = True) -> dict[str, Any]:
    """Read and validate ``folder/manifest.json``.

    Args:
        folder: an export folder.
        check_files: also check every graph file against the sha256 the manifest records.

    Raises:
        ManifestError: missing or malformed manifest, a missing or altered graph file.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{folder}: not a WorldSim ONNX export (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # nested 10**5 deep: RecursionError; a huge number: ValueError
        raise ManifestError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a WorldSim ONNX manifest (format is not {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise ManifestError(
            f"{path}: manifest version {manifest.get('version')!r}, this WorldSim reads version {VERSION}; "
            "export again with `worldsim export onnx`"
        )
    try:
        config = ModelConfig.from_dict(manifest["config"])
        sha = manifest["checkpoint"]["sha256"]
        names = GRAPHS + (OPTIONAL_GRAPHS if config.tokenizer.refiner_channels else ())  # the refiner, its only one
        graphs = {name: manifest["graphs"][name] for name in names}
        files = {name: (g["file"], g["sha256"]) for name, g in graphs.items()}
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestError(f"{path}: manifest lacks a field the runtime needs or has a bad one ({e!r})") from None
    if not isinstance(sha, str) or len(sha) != 64:
        raise ManifestError(f"{path}: manifest has no valid checkpoint sha256")
    for name, (file, digest) in files.items():
        # A graph is a file in the folder itself: a path would read a file the export does not hold.
        if not isinstance(file, str) or not file or Path(file).name != file or file in (".", ".."):
            raise ManifestError(f"{path}: the {name} graph's file must be a file name inside the export folder, got {file!r}")
        graph = folder / file
        if not graph.is_file():
            raise ManifestError(f"{folder}: the {name} graph {file!r} is missing; export again with `worldsim export onnx`")
        if check_files and sha256_file(graph) != digest:
            raise ManifestError(f"{graph}: the file differs from the one the manifest describes (sha256 mismatch); export again")
    return manifest


def check_source(manifest: dict[str, Any], folder: str | Path, checkpoint: str | Path, checkpoint_sha: str) -> None:
    """Refuse an export made from a different checkpoint than ``checkpoint``.

    Raises:
        ManifestError: the manifest's checkpoint sha256 is not ``checkpoint_sha``.
    """
    recorded = manifest["checkpoint"]["sha256"]
    if recorded != checkpoint_sha:
        raise ManifestError(
            f"{folder} does not match {checkpoint}: it was exported from a checkpoint with sha256 "
            f"{recorded[:16]}..., this checkpoint's is {checkpoint_sha[:16]}...; export again with "
            f"`worldsim export onnx --checkpoint {checkpoint} --out {folder}`"
        )
