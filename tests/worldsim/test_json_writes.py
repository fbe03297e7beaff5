"""The small JSON files commands write (coverage, the ONNX manifest, bench figures, the recipe's
markers) are written whole or not at all: a crash mid-write leaves the earlier file, never half
of the new one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def cut_off(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """``cut_off(name)``: from then on a ``Path.write_text`` of ``name`` (or of a temporary
    file standing in for it, which carries the name) writes half its text and then dies, as a
    process killed mid-write does."""
    real = Path.write_text

    def arm(name: str) -> None:
        def write_text(self: Path, data: str, *args, **kwargs) -> int:
            if name not in self.name:
                return real(self, data, *args, **kwargs)
            real(self, data[: len(data) // 2], *args, **kwargs)
            raise KeyboardInterrupt  # the kill

        monkeypatch.setattr(Path, "write_text", write_text)

    return arm


def _coverage(path: Path) -> None:
    from agents.coverage import Coverage
    from worldsim.spaces import ActionSpec

    Coverage.for_spec(ActionSpec("MultiDiscrete", (3, 2))).write(path)


def _manifest(path: Path) -> None:
    from export.manifest import write_manifest

    write_manifest(path.parent, {"format": "worldsim-onnx", "version": 1, "graphs": {"x": "y" * 200}})


def _bench(path: Path) -> None:
    from worldsim.bench import _finish

    _finish([{"frames_per_s": 1.0}] * 20, {"fp32": 1.0, "bf16": 2.0}, str(path), {"device": "cpu"})


@pytest.mark.parametrize(
    ("name", "write"), [("x.coverage.json", _coverage), ("manifest.json", _manifest), ("bench.json", _bench)]
)
def test_a_json_file_cut_off_mid_write_keeps_the_earlier_one_whole(tmp_path, cut_off, name, write) -> None:
    path = tmp_path / name
    path.write_text('{"earlier": "run"}\n')
    cut_off(name)
    with pytest.raises(KeyboardInterrupt):
        write(path)
    assert json.loads(path.read_text()) == {"earlier": "run"}
    assert [p.name for p in tmp_path.iterdir()] == [name]  # and no temporary file is left beside it


def test_a_recipe_data_part_killed_while_marked_done_is_not_taken_for_done(tmp_path, cut_off, monkeypatch) -> None:
    """Half a ``.done.json`` marker is a marker: the next run would skip a part it cannot read."""
    import worldsim.recipe
    from worldsim.recipe import RecipeRun

    monkeypatch.setattr(worldsim.recipe, "_cli", lambda argv: None)  # the recording itself is not the point
    run = RecipeRun("blockworld-16-smoke", tmp_path, log=lambda s: None)
    run.part_dir(0).parent.mkdir(parents=True)
    cut_off("part-000.done.json")
    with pytest.raises(KeyboardInterrupt):
        run._record(0)
    assert list(run.part_dir(0).parent.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "write"), [("x.coverage.json", _coverage), ("manifest.json", _manifest), ("bench.json", _bench)]
)
def test_a_json_file_on_a_full_disk_fails_naming_it_and_keeps_the_earlier_one(tmp_path, full_disk, name, write) -> None:
    """A write the disk refused named no file (``worldsim bench: error: No space left on
    device``), so a command that writes several could not say which one failed."""
    path = tmp_path / name
    path.write_text('{"earlier": "run"}\n')
    with full_disk(10), pytest.raises(OSError) as e:
        write(path)
    assert e.value.filename == str(path)
    assert json.loads(path.read_text()) == {"earlier": "run"}
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_recipe_log_line_on_a_full_disk_fails_naming_the_log(tmp_path, full_disk) -> None:
    """The line appended to recipe_log.jsonl after each stage named no file when the disk was
    full: "worldsim train recipe: error: No space left on device" left the user to guess which."""
    from worldsim.recipe import RecipeRun

    run = RecipeRun("blockworld-16-smoke", tmp_path, log=lambda s: None)
    log = tmp_path / "recipe_log.jsonl"
    log.write_text('{"stage": "data"}\n')
    with full_disk(log.stat().st_size + 10), pytest.raises(OSError) as e:
        run._stage("tokenizer", lambda: None)
    assert e.value.filename == str(log)


def test_a_copy_on_a_full_disk_names_its_destination_not_a_temporary_file(tmp_path, full_disk) -> None:
    """shutil's copy names its source and the file it writes: the temporary file beside the
    destination, which the user never chose, so the recipe's copy of its model said
    "File too large: 'world_model.safetensors' -> '.model.safetensors.123@host.tmp'"."""
    from worldsim.atomic import atomic_copy

    src, dest = tmp_path / "src.bin", tmp_path / "out" / "dest.bin"
    src.write_bytes(b"x" * 50_000)
    with full_disk(10_000), pytest.raises(OSError) as e:
        atomic_copy(src, dest)
    assert (e.value.filename, e.value.filename2) == (str(src), str(dest))
    assert f"'{src}' -> '{dest}'" in str(e.value)
    assert list(dest.parent.iterdir()) == []
