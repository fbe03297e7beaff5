"""``worldsim export onnx``: the files it writes, its self-verification and its errors."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import export.onnx_export as onnx_export
from export.manifest import ManifestError, read_manifest, sha256_file
from export.ort_session import CPU_EP, Placement, open_session, require_onnxruntime
from worldsim import cli
from worldsim.atomic import temp_prefix
from worldsim.checkpoint import ModelConfig, load_model
from worldsim.errors import WorldSimError
from worldsim.runtime import load

PLAIN_EXPORT = {"manifest.json", "encoder.onnx", "decoder.onnx", "dynamics.onnx"}
"""The files of an export of a model without a refiner."""


def test_export_writes_three_verified_graphs_and_a_manifest_that_describes_them(tiny_checkpoint: Path, tiny_export: Path) -> None:
    manifest = read_manifest(tiny_export)  # validates the graph files' hashes too
    assert sorted(p.name for p in tiny_export.iterdir()) == ["decoder.onnx", "dynamics.onnx", "encoder.onnx", "manifest.json"]
    assert manifest["checkpoint"]["sha256"] == sha256_file(tiny_checkpoint)
    assert ModelConfig.from_dict(manifest["config"]) == load_model(tiny_checkpoint).config
    assert manifest["opset"] == onnx_export.DEFAULT_OPSET
    checks = manifest["verification"]["checks"]
    assert {c["graph"] for c in checks} == {"encoder", "decoder", "dynamics"}
    assert all(c["error"] <= c["limit"] for c in checks)
    # The manifest's tensor names and shapes are the graphs' own.
    ort = require_onnxruntime()
    cpu = Placement([CPU_EP], "cpu", required=True)
    for name, g in manifest["graphs"].items():
        sess = open_session(tiny_export / g["file"], cpu, ort)
        for spec, real in zip(g["inputs"] + g["outputs"], sess.get_inputs() + sess.get_outputs()):
            assert (spec["name"], spec["shape"]) == (real.name, list(real.shape)), name


def test_graphs_run_at_other_batch_sizes_and_frame_sizes(tiny_export: Path) -> None:
    model = load(tiny_export, backend="onnx", precision="fp32")
    frames = np.random.default_rng(0).integers(0, 256, (3, 1, 24, 32, 3), dtype=np.uint8)
    model.prompt(frames, None)
    out = model.step(np.zeros((3, 3), dtype=np.int64))
    assert out.frames.shape == (3, 24, 32, 3) and out.frames.dtype == np.uint8


def test_cli_exports_and_prints_the_verification(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli-export"
    assert cli.main(["export", "onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--opset", "18"]) == 0
    printed = capsys.readouterr().out
    assert "dynamics.onnx" in printed and "verified against torch" in printed
    assert read_manifest(out)["opset"] == 18


@pytest.mark.parametrize("output", ["logits", "reward", "done_logit", "entries"])
def test_a_graph_that_disagrees_with_torch_fails_loudly_and_writes_nothing(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch, output: str
) -> None:
    """Each output of the dynamics graph is checked: one off by 0.01 stops the export."""
    class Skewed(onnx_export.DynamicsStepGraph):
        def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            outs = list(super().forward(*args))
            i = ["logits", "reward", "done_logit", "entries"].index(output)
            outs[i] = outs[i] + 0.01
            return tuple(outs)

    monkeypatch.setattr(onnx_export, "DynamicsStepGraph", Skewed)
    out = tmp_path / "bad-export"
    with pytest.raises(onnx_export.ExportVerificationError, match=f"dynamics {output}"):
        onnx_export.export_onnx(tiny_checkpoint, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind either


def test_export_refuses_a_folder_that_is_not_an_export_and_bad_opsets(tiny_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(WorldSimError, match="not a WorldSim ONNX export"):
        onnx_export.export_onnx(tiny_checkpoint, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(WorldSimError, match="opset must be in 14..20"):
        onnx_export.export_onnx(tiny_checkpoint, tmp_path / "out", opset=12)


def test_export_of_a_missing_shipped_model_says_how_to_get_it_back(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(onnx_export, "DEFAULT_CHECKPOINT", tmp_path / "blockworld-64.safetensors")
    with pytest.raises(WorldSimError, match="the shipped model is missing; `make model` trains it again"):
        onnx_export.export_onnx(None, tmp_path / "out")
    with pytest.raises(WorldSimError, match="mine.safetensors: no such checkpoint$"):
        onnx_export.export_onnx(tmp_path / "mine.safetensors", tmp_path / "out")


def test_export_replaces_only_an_earlier_export(tiny_checkpoint: Path, tiny_export: Path, tmp_path: Path, monkeypatch) -> None:
    """A folder that holds a manifest.json of its own, or an export with the user's files
    beside it, or the current folder, is never removed."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "manifest.json").write_text('{"name": "app"}')
    (project / "src" / "code.py").write_text("keep me")
    with pytest.raises(WorldSimError, match="not a WorldSim ONNX export"):
        onnx_export.export_onnx(tiny_checkpoint, project)
    assert (project / "src" / "code.py").read_text() == "keep me"
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_export, mixed)
    (mixed / "notes.txt").write_text("keep me")
    with pytest.raises(WorldSimError, match="also holds \\['notes.txt'\\]"):
        onnx_export.export_onnx(tiny_checkpoint, mixed)
    assert (mixed / "notes.txt").read_text() == "keep me"
    again = tmp_path / "again"
    shutil.copytree(tiny_export, again)
    monkeypatch.chdir(again)
    with pytest.raises(WorldSimError, match="current folder"):
        onnx_export.export_onnx(tiny_checkpoint, ".")
    monkeypatch.chdir(tmp_path)
    result = onnx_export.export_onnx(tiny_checkpoint, "again")  # an earlier export is replaced
    assert sorted(p.name for p in again.iterdir()) == sorted(PLAIN_EXPORT)
    assert result.manifest["checkpoint"]["sha256"] == read_manifest(again)["checkpoint"]["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "mixed", "project"]  # nothing left aside


def test_an_out_that_links_to_a_folder_gets_the_export_in_that_folder(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Renaming the export into place replaced the link itself with a new folder: the export
    was not where the link pointed (another disk, say), and the user's link was gone."""
    target = tmp_path / "big-disk" / "exports"
    target.mkdir(parents=True)
    link = tmp_path / "model.onnx"
    link.symlink_to(target, target_is_directory=True)
    for _ in range(2):  # a first export, then one that replaces it
        onnx_export.export_onnx(tiny_checkpoint, link)
        assert link.is_symlink() and link.resolve() == target.resolve()
        assert sorted(p.name for p in target.iterdir()) == sorted(PLAIN_EXPORT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big-disk", "model.onnx"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["exports"]  # nothing left aside


def test_an_out_that_is_a_mount_point_gets_the_export_and_stays_the_same_folder(tiny_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    """A container's volume (``docker run -v ./onnx:/out ... --out /out``) is a mount point, which
    cannot be renamed: every export into one failed with "Device or resource busy" and left a
    ``.out.*.old`` folder beside it. Mounting needs privileges a test lacks, so the mount point
    is a folder that ``os.path.ismount`` reports and that refuses to be renamed, as Linux does."""
    volume = (tmp_path / "volume").resolve()
    volume.mkdir()
    inode = volume.stat().st_ino
    real_ismount, real_rename = os.path.ismount, Path.rename

    def rename(self: Path, target: str | Path) -> Path:
        if self.resolve() == volume:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(self), str(target))
        return real_rename(self, target)

    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p).resolve() == volume or real_ismount(p))
    monkeypatch.setattr(Path, "rename", rename)
    for _ in range(2):  # into the empty volume, then over that export
        result = onnx_export.export_onnx(tiny_checkpoint, volume)
        assert sorted(p.name for p in volume.iterdir()) == sorted(PLAIN_EXPORT)
        assert volume.stat().st_ino == inode
        assert read_manifest(volume)["checkpoint"]["sha256"] == result.manifest["checkpoint"]["sha256"]
    assert [p.name for p in tmp_path.iterdir()] == ["volume"]  # nothing left aside


@pytest.mark.parametrize("room", [1_000, 100_000])  # the first file, or a graph part-way
def test_an_export_onto_a_full_disk_fails_naming_out_and_keeps_the_earlier_export(
    tiny_export: Path, tiny_checkpoint: Path, tmp_path: Path, full_disk, capsys, room: int
) -> None:
    """A full disk said only "worldsim export onnx: error: File too large" (or "No space left
    on device"), naming no file: the graphs are written in a temporary folder."""
    out = tmp_path / "onnx"
    shutil.copytree(tiny_export, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with full_disk(room):
        assert cli.main(["export", "onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"File too large: '{out.resolve()}" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]


@pytest.mark.parametrize("failure", [OSError(errno.EIO, "Input/output error"), KeyboardInterrupt()], ids=["OSError", "Ctrl-C"])
def test_an_export_that_cannot_be_put_in_place_puts_the_earlier_export_back(
    tiny_export: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch, failure: BaseException
) -> None:
    """The earlier export is renamed aside before the new one is renamed in: when that second
    rename failed, --out was left missing, not untouched as promised."""
    out = tmp_path / "onnx"
    shutil.copytree(tiny_export, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rename = os.rename

    def new_one_refused(src, dst):
        if Path(src).name.endswith(".tmp") and Path(dst) == out.resolve():
            raise failure
        rename(src, dst)

    monkeypatch.setattr(os, "rename", new_one_refused)
    with pytest.raises(type(failure)) as e:
        onnx_export.export_onnx(tiny_checkpoint, out)
    if isinstance(failure, OSError):
        assert e.value.filename == str(out.resolve())  # --out, not the temporary folder
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]  # nothing left aside


def test_an_export_killed_inside_a_mount_point_does_not_block_the_next(tiny_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    """An export into a mount point is written in a private folder inside it; a kill (the
    container stopped) left that folder there, and every later export was refused, the volume
    "also holding" it. A folder of the user's is still never replaced."""
    volume = (tmp_path / "volume").resolve()
    volume.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p).resolve() == volume or real_ismount(p))
    onnx_export.export_onnx(tiny_checkpoint, volume)
    killed = volume / ".volume.k1ll3d.tmp"  # what SIGKILL during write_export leaves
    killed.mkdir()
    (killed / "dynamics_step.onnx").write_bytes(b"half a graph")
    result = onnx_export.export_onnx(tiny_checkpoint, volume)
    assert read_manifest(volume)["checkpoint"]["sha256"] == result.manifest["checkpoint"]["sha256"]
    assert sorted(p.name for p in volume.iterdir()) == sorted({*PLAIN_EXPORT, killed.name})
    (volume / "notes").mkdir()
    with pytest.raises(WorldSimError, match="also holds"):
        onnx_export.export_onnx(tiny_checkpoint, volume)


def test_the_folders_of_exports_killed_mid_way_are_removed_by_the_next_export(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """An export SIGKILLed (the out-of-memory killer, a power cut) while writing left its
    private folder of half-written graphs beside --out, and every such kill left another."""
    import re
    import subprocess
    import time

    out = tmp_path / "export"
    code = (f"import os, signal; from pathlib import Path; import export.onnx_export as e\n"
            f"tmp = e._private_folder(Path({str(out)!r})); (tmp / 'decoder.onnx').write_bytes(b'half a graph')\n"
            f"os.kill(os.getpid(), signal.SIGKILL)\n")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2], timeout=120).returncode == -9
    (left,) = tmp_path.glob(".export.*.tmp")
    old = time.time() - 600
    # A folder's own time moves only when an entry is added or removed, not while a file in it
    # is written: the sweep goes by the newest time inside. A graph still being written is kept.
    busy = tmp_path / re.sub(r"\.\d+@", ".999999999@", left.name, count=1)  # a gone PID's, but written just now
    busy.mkdir()
    (busy / "dynamics.onnx").write_bytes(b"being written")
    for folder in (left, busy):
        os.utime(folder, (old, old))
    os.utime(left / "decoder.onnx", (old, old))  # found by the next export, a while later
    mine = tmp_path / re.sub(r"\.\d+@", f".{os.getpid()}@", left.name, count=1)  # a live export's, of this process
    assert mine.name.startswith(temp_prefix(out))  # which this process named
    mine.mkdir()
    os.utime(mine, (old, old))
    onnx_export.export_onnx(tiny_checkpoint, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["export", mine.name, busy.name])


def test_an_out_below_a_file_is_one_error_naming_that_file(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    """It was the file system's bare "File exists: 'notes.txt'", about a file the user knows exists."""
    tmp_path = tmp_path.resolve()  # the error names resolved paths
    (tmp_path / "notes.txt").write_text("keep me")
    out = tmp_path / "notes.txt" / "export"
    assert cli.main(["export", "onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'notes.txt'} is a file" in err and str(out) in err and "--out" in err
    assert (tmp_path / "notes.txt").read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_manifest_errors_name_the_problem(tiny_export: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_export, broken)
    with open(broken / "dynamics.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="sha256 mismatch"):
        load(broken, backend="onnx")
    (broken / "decoder.onnx").unlink()
    with pytest.raises(ManifestError, match="decoder graph"):
        load(broken, backend="onnx")
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(ManifestError, match="version 99"):
        load(broken, backend="onnx")


def test_a_manifest_naming_a_graph_outside_its_folder_is_refused_as_such(tmp_path: Path) -> None:
    """A downloaded export names its graphs; a path there (``../x.onnx``, an absolute one) was
    refused as "missing" though the file existed, and a number was a TypeError."""
    import hashlib

    from worldsim.presets import get_preset

    outside, folder = tmp_path / "elsewhere.onnx", tmp_path / "export"
    folder.mkdir()
    outside.write_bytes(b"graph")
    for name in ("encoder", "decoder", "dynamics"):
        (folder / f"{name}.onnx").write_bytes(b"graph")
    digest = hashlib.sha256(b"graph").hexdigest()
    config = ModelConfig(tokenizer=get_preset("tiny").tokenizer).to_dict()
    for bad in ("../elsewhere.onnx", str(outside), 5, ".."):
        graphs = {name: {"file": f"{name}.onnx", "sha256": digest} for name in ("encoder", "decoder", "dynamics")}
        graphs["encoder"]["file"] = bad
        manifest = {"format": "worldsim-onnx", "version": 1, "config": config, "checkpoint": {"sha256": "0" * 64},
                    "graphs": graphs}  # fmt: skip
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ManifestError, match=r"encoder graph's file must be a file name inside the export folder, got"):
            load(folder, backend="onnx")


def test_a_manifest_nested_too_deep_is_a_manifest_error(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)  # was a RecursionError
    with pytest.raises(ManifestError, match="unreadable manifest"):
        load(tmp_path, backend="onnx")


def test_missing_onnxruntime_says_how_to_install_it(tiny_export: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an absent package looks like to import
    with pytest.raises(WorldSimError, match="pip install onnxruntime"):
        load(tiny_export, backend="onnx")
    assert cli.main(["export", "onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "pip install onnxruntime" in err and "onnxruntime-gpu" in err and "Traceback" not in err


def test_a_checkpoint_replaced_during_its_export_is_an_error_not_a_mislabelled_export(tiny_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    """The manifest's sha256 is what ties an export to its checkpoint. It was hashed after the
    export, so a training run replacing the checkpoint meanwhile gave graphs of the old
    weights a manifest naming the new file, which the runtime then used for it."""
    ckpt = tmp_path / "m.safetensors"
    shutil.copyfile(tiny_checkpoint, ckpt)
    loaded = load_model(tiny_checkpoint)
    with torch.no_grad():
        loaded.dynamics.head.bias.add_(1.0)
    from worldsim.checkpoint import save_model

    newer = tmp_path / "newer.safetensors"
    save_model(newer, loaded.config, loaded.tokenizer, loaded.dynamics)
    verify = onnx_export.verify_export

    def replaced_meanwhile(*args, **kwargs):
        shutil.copyfile(newer, ckpt)  # the next save of a training run lands now
        return verify(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "verify_export", replaced_meanwhile)
    out = tmp_path / "m.onnx"
    with pytest.raises(WorldSimError, match="changed while it was exported"):
        onnx_export.export_onnx(ckpt, out)
    assert not out.exists()
