"""`worldsim play`: scripted action files, option errors, and headless runs of all three worlds."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agents.human import PlayConfig, main, play, read_script
from agents.keymap import NVEC
from agents.overlay import GAP_PX, TITLE_PX
from agents.worlds import PSNR_CAP_DB, psnr
from worldsim.errors import WorldSimError
from worldsim.spaces import ActionSpec

SPEC = ActionSpec("MultiDiscrete", NVEC)
FORWARD = [1, 0, 0, 0, 0, 0, 0, 0]
TURN_RIGHT = [0, 0, 0, 2, 0, 0, 0, 0]


@pytest.fixture
def headless(monkeypatch):
    """No window and no sound: SDL's dummy drivers, as on CI."""
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_script_format(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", [
        "# walk, turn, look at the result",
        json.dumps(FORWARD),
        "",
        json.dumps({"action": TURN_RIGHT, "repeat": 3}),
        json.dumps({"command": "screenshot"}),
        json.dumps({"command": "reset"}),
    ])  # fmt: skip
    items = list(read_script(path, SPEC))
    assert [i if isinstance(i, str) else i.tolist() for i in items] == [
        FORWARD, TURN_RIGHT, TURN_RIGHT, TURN_RIGHT, "screenshot", "reset"
    ]
    discrete = write_lines(tmp_path / "d.jsonl", ["3", '{"action": 1, "repeat": 2}'])
    assert [int(a[0]) for a in read_script(discrete, ActionSpec("Discrete", (4,)))] == [3, 1, 1]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1, 0", "a.jsonl:2: not JSON"),
        ("[1, 0, 0]", "a.jsonl:2: actions must have shape"),
        ("[3, 0, 0, 0, 0, 0, 0, 0]", "a.jsonl:2: actions out of range"),
        ('{"command": "fly"}', "a.jsonl:2: unknown command"),
        ('{"action": [0, 0, 0, 0, 0, 0, 0, 0], "repeat": 0}', "a.jsonl:2: repeat must be"),
    ],
)
def test_script_errors_name_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "a.jsonl", [json.dumps(FORWARD), line])
    with pytest.raises(WorldSimError, match=message):
        list(read_script(path, SPEC))


def test_missing_script_is_a_clear_error(tmp_path):
    with pytest.raises(WorldSimError, match="cannot read action file"):
        list(read_script(tmp_path / "nope.jsonl", SPEC))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tick-rate", "30"], "tick-rate must be within 10-20"),
        (["--scale", "0"], "scale must be an integer from 1 to 32"),
        (["--max-steps", "0"], "max-steps must be at least 1"),
        (["--record", "pyproject.toml"], "--record pyproject.toml exists; choose another path"),
        (["--seed", "-1"], "--seed must be at least 0"),
    ],
)
def test_bad_options_fail_before_opening_a_window(argv, message):
    with pytest.raises(WorldSimError, match=message):
        main(["--world", "engine", *argv])


def test_cli_reports_bad_options_in_one_line(capsys):
    from worldsim.cli import main as cli

    assert cli(["play", "--world", "engine", "--tick-rate", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tick-rate" in err[0]


def test_psnr():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    assert psnr(a, b) == PSNR_CAP_DB
    b[0, 0, 0] = 255  # MSE = 255^2 / 192
    assert psnr(a, b) == pytest.approx(10 * np.log10(192), abs=1e-4)


def check_window(image: np.ndarray, panes: int, scale: int, side: int = 64) -> None:
    """The screenshot is the whole window: titles, the upscaled panes, the status panel."""
    h, w = image.shape[:2]
    assert w == panes * side * scale + (panes - 1) * GAP_PX
    assert TITLE_PX + side * scale + 60 <= h <= TITLE_PX + side * scale + 160


def script(tmp_path) -> str:
    return write_lines(tmp_path / "play.jsonl", [
        json.dumps({"action": FORWARD, "repeat": 4}),
        json.dumps({"action": TURN_RIGHT, "repeat": 3}),
        json.dumps({"command": "screenshot"}),
        json.dumps({"action": [0, 0, 0, 0, 0, 0, 0, 3], "repeat": 3}),
    ])  # fmt: skip


def test_engine_headless_screenshot_and_recording(tmp_path, headless):
    shot, rec = tmp_path / "end.png", tmp_path / "session.msgpack"
    result = play(PlayConfig(
        world="engine", actions=script(tmp_path), screenshot=str(shot), record=str(rec), seed=3,
        scale=4, screenshot_dir=str(tmp_path),
    ))  # fmt: skip
    assert result.steps == 10 and result.episodes == 1
    assert len(result.screenshots) == 2 and str(shot) in result.screenshots
    image = np.asarray(Image.open(shot))
    check_window(image, 1, 4)
    # The frame area is a picture of the world, not a blank window.
    assert image[TITLE_PX : TITLE_PX + 256].std() > 5

    from worldsim.recording import RecordingReader

    reader = RecordingReader(rec)
    assert reader.header["agent"] == "script" and reader.header["env_id"] == "worldsim/BlockWorld-v0"
    records = list(reader)
    assert [r.kind for r in records] == ["reset"] + ["step"] * 10
    assert records[0].seed == 3
    actions = [r.action.tolist() for r in records[1:]]
    assert actions == [FORWARD] * 4 + [TURN_RIGHT] * 3 + [[0, 0, 0, 0, 0, 0, 0, 3]] * 3


def test_screenshots_make_their_folder_and_a_failed_one_does_not_end_the_game(tmp_path, headless):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    result = play(PlayConfig(world="engine", actions=script(tmp_path), seed=3, scale=1,
                             screenshot_dir=str(blocked / "shots")))  # fmt: skip
    assert result.steps == 10 and result.screenshots == []  # F2 failed, the session went on
    result = play(PlayConfig(world="engine", actions=script(tmp_path), seed=3, scale=1,
                             screenshot_dir=str(tmp_path / "new" / "shots")))  # fmt: skip
    assert len(result.screenshots) == 1 and Path(result.screenshots[0]).is_file()
    with pytest.raises(WorldSimError, match="cannot save the screenshot"):
        play(PlayConfig(world="engine", actions=script(tmp_path), seed=3, scale=1, screenshot=str(blocked / "end.png"),
                        screenshot_dir=str(tmp_path)))  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tests.envs.dream_checkpoint import blockworld_checkpoint

    return str(blockworld_checkpoint(tmp_path_factory.mktemp("dream")))


@pytest.mark.parametrize(("world", "panes"), [("dream", 1), ("side-by-side", 2)])
def test_dream_worlds_headless_with_screenshot(tmp_path, headless, checkpoint, world, panes):
    from tests.envs.dream_checkpoint import SIDE

    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shot = tmp_path / f"{world}.png"
        result = play(PlayConfig(
            world=world, checkpoint=checkpoint, actions=script(tmp_path), screenshot=str(shot), seed=1,
            width=SIDE, height=SIDE, scale=8, max_steps=8, screenshot_dir=str(tmp_path),
        ))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert result.steps == 8
    image = np.asarray(Image.open(shot))
    check_window(image, panes, 8, SIDE)
    assert image[TITLE_PX : TITLE_PX + SIDE * 8].std() > 5
    if world == "side-by-side":
        # PSNR of the dream against the engine is measured on every step and is finite.
        assert result.mean_psnr is not None and 0 < result.mean_psnr <= PSNR_CAP_DB
    else:
        assert result.mean_psnr is None
