"""`worldsim play`: scripted action files, option errors, and headless runs of all three worlds."""

import dataclasses
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


def test_a_long_side_by_side_session_costs_as_much_per_step_late_as_early(headless):
    # The mean PSNR shown was np.mean over every step's PSNR so far, taken again at every
    # step: after an hour at 20 steps/s that alone took 4 ms of the 50 ms a tick has, after
    # four hours 12 ms, so a long session fell behind the tick rate.
    import time

    import pygame

    from agents.human import _Session
    from agents.keymap import DEFAULT_KEYMAP
    from agents.worlds import WorldStep

    frame = np.zeros((16, 16, 3), np.uint8)
    psnrs = np.random.default_rng(0).uniform(15, 40, 20_000)

    class Panes:  # the engine and the dream side by side, each step given its PSNR
        titles, backend, frame_shape = ("engine (real)", "dream (generated)"), "torch", (16, 16)
        steps = iter(psnrs.tolist())

        def step(self, action):
            return WorldStep([frame, frame], [0.0, 0.0], False, False, {}, next(self.steps))

    session = _Session(pygame, Panes(), PlayConfig(world="side-by-side", scale=1), DEFAULT_KEYMAP, iter(()))
    still = np.zeros(len(NVEC), np.int64)

    def fastest_block(blocks: int) -> float:
        times = []
        for _ in range(blocks):
            t0 = time.perf_counter()
            for _ in range(100):
                session._tick(still)
            times.append(time.perf_counter() - t0)
        return min(times)  # the least disturbed by other jobs on the machine

    for _ in range(10):
        session._tick(still)  # warm-up
    early = fastest_block(10)
    for _ in range(len(psnrs) - 10 - 2_000):
        session._tick(still)
    late = fastest_block(10)
    session.overlay.close()
    pygame.quit()
    assert late < 3 * early, f"100 steps took {early * 1e3:.1f} ms early, {late * 1e3:.1f} ms after 19,000"
    assert session.state.mean_psnr == pytest.approx(psnrs.mean(), rel=1e-9)


@pytest.mark.skipif(not Path("/dev/fd").is_dir(), reason="counts open file descriptors in /dev/fd")
def test_sessions_played_one_after_another_leave_no_file_open(tmp_path, headless):
    # The overlay's font was freed after pygame.quit(), which leaves its file open: every
    # session in a process (a notebook, a launcher, a test suite) lost a file descriptor.
    path = write_lines(tmp_path / "walk.jsonl", [json.dumps({"action": FORWARD, "repeat": 2})])
    config = PlayConfig(world="engine", actions=path, seed=0, width=16, height=16, scale=1)
    play(config)  # the first session loads what stays loaded
    before = len(list(Path("/dev/fd").iterdir()))
    for _ in range(3):
        play(config)
    assert len(list(Path("/dev/fd").iterdir())) == before


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1, 0", "a.jsonl:2: not JSON"),
        ("[1, 0, 0]", "a.jsonl:2: actions must have shape"),
        ("[3, 0, 0, 0, 0, 0, 0, 0]", "a.jsonl:2: actions out of range"),
        ('{"command": "fly"}', "a.jsonl:2: unknown command"),
        ('{"action": [0, 0, 0, 0, 0, 0, 0, 0], "repeat": 0}', "a.jsonl:2: repeat must be"),
        ('{"action": [1, 0, 0, 0, 0, 0, 0, 0], "repaet": 3}', "a.jsonl:2: unknown keys \\['repaet'\\]"),
        ('{"command": "reset", "action": [1, 0, 0, 0, 0, 0, 0, 0]}', "a.jsonl:2: unknown keys \\['action'\\]"),
        ('{"repeat": 3}', 'a.jsonl:2: no "action"'),
        ("[" * 100_000 + "]" * 100_000, "a.jsonl:2: JSON that cannot be read \\(RecursionError"),  # was a RecursionError
        ("9" * 5000, "a.jsonl:2: JSON that cannot be read \\(ValueError: Exceeds the limit"),  # was a ValueError
    ],
)
def test_script_errors_name_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "a.jsonl", [json.dumps(FORWARD), line])
    with pytest.raises(WorldSimError, match=message):
        list(read_script(path, SPEC))


def test_missing_script_is_a_clear_error(tmp_path):
    with pytest.raises(WorldSimError, match="cannot read action file"):
        list(read_script(tmp_path / "nope.jsonl", SPEC))
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe[1, 0]\n")
    with pytest.raises(WorldSimError, match="bin.jsonl: not UTF-8"):
        read_script(binary, SPEC)


def test_f2_twice_at_one_step_keeps_both_pictures(tmp_path, headless):
    path = write_lines(tmp_path / "two.jsonl", [json.dumps(FORWARD), json.dumps({"command": "screenshot"}),
                                                json.dumps({"command": "screenshot"}), json.dumps(FORWARD)])  # fmt: skip
    result = play(PlayConfig(world="engine", actions=path, seed=0, scale=1, screenshot_dir=str(tmp_path / "shots")))
    assert len(result.screenshots) == 2 and len(set(result.screenshots)) == 2
    assert all(Path(p).is_file() for p in result.screenshots)


def test_a_slow_first_step_is_warm_up_not_a_slow_game(tmp_path, headless, monkeypatch, capsys):
    # The first step compiles or warms up (numba, torch, CUDA); the game keeps its rate after it.
    import time

    from agents.worlds import EnvWorld

    real_step, calls = EnvWorld.step, []
    monkeypatch.setattr(EnvWorld, "step", lambda self, a: calls.append(time.sleep(0.3 if not calls else 0)) or real_step(self, a))
    path = write_lines(tmp_path / "a.jsonl", [json.dumps({"action": FORWARD, "repeat": 5})])
    result = play(PlayConfig(world="engine", actions=path, seed=0, scale=1))
    assert result.steps == 5 and not result.fell_behind
    assert "warning" not in capsys.readouterr().out
    # A game that stays slow is still called slow.
    monkeypatch.setattr(EnvWorld, "step", lambda self, a: time.sleep(0.1) or real_step(self, a))
    assert play(PlayConfig(world="engine", actions=path, seed=0, scale=1)).fell_behind
    assert "cannot keep the 20 steps/s tick rate" in capsys.readouterr().out


def test_a_huge_repeat_costs_nothing_until_played(tmp_path, headless):
    path = write_lines(tmp_path / "long.jsonl", [json.dumps({"action": FORWARD, "repeat": 10**12})])
    first = next(read_script(path, SPEC))
    assert first.tolist() == FORWARD
    assert play(PlayConfig(world="engine", actions=path, seed=0, scale=1, max_steps=3)).steps == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tick-rate", "30"], "tick-rate must be within 10-20"),
        (["--scale", "0"], "scale must be an integer from 1 to 32"),
        (["--max-steps", "0"], "max-steps must be at least 1"),
        (["--record", "pyproject.toml"], "--record pyproject.toml exists; choose another path"),
        (["--seed", "-1"], "--seed must be at least 0"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--backend", "onnx", "--guidance", "1.3"], "--backend, --guidance set the dream's model, but --world engine"),
        (["--device", "cpu"], "--device set the dream's model, but --world engine"),
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


def test_play_without_a_display_is_an_error_not_an_invisible_game(monkeypatch):
    # No X11 or Wayland and no SDL_VIDEODRIVER: SDL would pick its offscreen driver and the
    # game would run, unseen, until killed (`make play` over SSH).
    for name in ("SDL_VIDEODRIVER", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(WorldSimError, match="no display to open the game's window on"):
        play(PlayConfig(world="engine", max_steps=1))


def test_an_unavailable_sdl_videodriver_is_a_one_line_error(monkeypatch):
    # SDL_VIDEODRIVER=x11 over SSH without X forwarding: a clear error, not pygame's traceback.
    monkeypatch.setenv("SDL_VIDEODRIVER", "no-such-driver")
    with pytest.raises(WorldSimError, match="SDL_VIDEODRIVER=no-such-driver cannot open a window here"):
        play(PlayConfig(world="engine", max_steps=1))


def test_psnr():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    assert psnr(a, b) == PSNR_CAP_DB
    b[0, 0, 0] = 255  # MSE = 255^2 / 192
    assert psnr(a, b) == pytest.approx(10 * np.log10(192), abs=1e-4)


def test_the_engine_world_has_no_step_limit():
    # BlockWorld's default max_steps (2,000) would move a human to a new world after 100 s.
    from agents.worlds import make_world

    world = make_world("engine", width=16, height=16)
    try:
        world.reset(0)
        still = np.zeros(len(NVEC), np.int64)
        assert not any(world.step(still).done for _ in range(2001))
        assert world.env_kwargs["max_steps"] > 10**9  # and a recording re-creates it so
    finally:
        world.close()


def play_keyboard(monkeypatch, batches, ticks, **config):
    """Play the engine from the keyboard: ``batches[i]`` are the pygame events of the i-th poll,
    Esc comes once ``ticks`` steps are played. Returns the actions played, as lists."""
    import pygame

    from agents.worlds import EnvWorld

    played, polls = [], iter(batches)
    real_step = EnvWorld.step
    monkeypatch.setattr(EnvWorld, "step", lambda self, a: played.append(a.tolist()) or real_step(self, a))
    escape = pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE)
    monkeypatch.setattr(pygame.event, "get", lambda: next(polls, [escape] if len(played) >= ticks else []))
    play(PlayConfig(world="engine", seed=0, scale=1, **config))
    return played


def key(name, down=True):
    import pygame

    code = getattr(pygame, f"K_{name if len(name) == 1 else name.upper()}")
    return pygame.event.Event(pygame.KEYDOWN if down else pygame.KEYUP, key=code)


def click(button):
    import pygame

    return [pygame.event.Event(t, button=button, pos=(1, 1)) for t in (pygame.MOUSEBUTTONDOWN, pygame.MOUSEBUTTONUP)]


def test_taps_and_clicks_during_a_pause_do_not_act_after_it(monkeypatch, headless):
    # P, then (paused) a tap of W, E (place), 3 (hotbar) and a left click (mine), then P again:
    # none of them may act on the first tick after the pause.
    paused = [key("w"), key("w", False), key("e"), key("e", False), key("3"), key("3", False), *click(1)]
    played = play_keyboard(monkeypatch, [[key("p")], paused, [], [key("p")]], ticks=2)
    assert played == [[0] * len(NVEC)] * 2


def test_esc_frees_a_captured_mouse_before_it_quits(monkeypatch, headless):
    import pygame

    grab = {"on": False}  # SDL's dummy driver never grabs: stand in for a desktop's window
    monkeypatch.setattr(pygame.event, "set_grab", lambda on: grab.update(on=bool(on)))
    monkeypatch.setattr(pygame.event, "get_grab", lambda: grab["on"])
    # M captures the mouse; the first Esc frees it and the game goes on; the next one quits.
    played = play_keyboard(monkeypatch, [[key("m")], [], [key("escape")]], ticks=5)
    assert len(played) >= 5 and grab["on"] is False
    # Closing the window ends the game at once, mouse captured or not.
    grab["on"] = False
    played = play_keyboard(monkeypatch, [[key("m")], [pygame.event.Event(pygame.QUIT)]], ticks=50)
    assert len(played) <= 2


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


def test_without_seed_a_recording_in_a_new_folder_names_the_seed_that_makes_its_world(tmp_path, headless, capsys):
    import gymnasium as gym

    from agents.human import DRAWN_SEEDS
    from worldsim.recording import RecordingReader
    from worldsim.reference import IDM_SEED_BASE

    rec = tmp_path / "new" / "folder" / "s.msgpack"  # made, as `worldsim record --out` makes it
    path = write_lines(tmp_path / "a.jsonl", [json.dumps(FORWARD), json.dumps({"command": "reset"}), json.dumps(FORWARD)])
    play(PlayConfig(world="engine", actions=path, width=16, height=16, scale=1, record=str(rec)))
    resets = [r for r in RecordingReader(rec) if r.kind == "reset"]
    assert len(resets) == 2
    seed = resets[0].seed
    assert isinstance(seed, int) and resets[1].seed == seed + 1  # R: the next seed
    # drawn above every seed the eval holds out, so a recorded game never plays an eval world
    assert DRAWN_SEEDS[0] <= seed < DRAWN_SEEDS[1] and DRAWN_SEEDS[0] >= IDM_SEED_BASE + 10**6
    assert f"world seed {seed}" in capsys.readouterr().out
    env = gym.make("worldsim/BlockWorld-v0", width=16, height=16)
    for r in resets:
        np.testing.assert_array_equal(env.reset(seed=r.seed)[0], r.image())


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


def test_a_screenshot_onto_a_full_disk_leaves_no_cut_short_png(tmp_path, headless, full_disk):
    """A save the disk refused left a cut-short PNG: for F2 a broken file among the shots, for
    --screenshot one in place of the earlier session's picture."""
    shot, shots = tmp_path / "end.png", tmp_path / "shots"
    shots.mkdir()
    play(PlayConfig(world="engine", actions=script(tmp_path), seed=3, scale=1, screenshot=str(shot), screenshot_dir=str(shots)))
    earlier = shot.read_bytes()
    for p in shots.iterdir():
        p.unlink()
    with full_disk(2000), pytest.raises(WorldSimError, match=f"cannot save the screenshot {shot}"):
        play(PlayConfig(world="engine", actions=script(tmp_path), seed=3, scale=1, screenshot=str(shot),
                        screenshot_dir=str(shots)))  # fmt: skip
    assert shot.read_bytes() == earlier and list(shots.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["end.png", "play.jsonl", "shots"]


def test_play_record_onto_a_full_disk_fails_naming_the_file_and_keeps_what_was_played(tmp_path, headless, full_disk):
    """The recording's error named no file, and the session's end retried the cut record and
    failed a second time before closing the window; the cut record stayed at the file's end."""
    import warnings

    from worldsim.recording import RecordingReader

    rec = tmp_path / "session.msgpack"
    with full_disk(12_000), pytest.raises(OSError) as e:
        play(PlayConfig(world="engine", actions=script(tmp_path), record=str(rec), seed=3))
    assert e.value.filename == str(rec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = list(RecordingReader(rec))
    assert kept[0].kind == "reset" and 0 < len(kept) < 11 and rec.stat().st_size < 12_000


@pytest.mark.parametrize(("width", "height", "size"), [(64, 64, (512, 512)), (256, 64, (512, 128)), (63, 17, (504, 136))])
def test_the_default_scale_fits_a_frames_larger_side(tmp_path, headless, width, height, size):
    shot = tmp_path / "w.png"
    path = write_lines(tmp_path / "a.jsonl", [json.dumps(FORWARD)])
    play(PlayConfig(world="engine", actions=path, seed=0, width=width, height=height, screenshot=str(shot)))
    w, h = Image.open(shot).size
    assert w == size[0] and TITLE_PX + size[1] < h < TITLE_PX + size[1] + 160


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


def test_the_dream_runs_on_the_device_asked_for(tmp_path, headless, checkpoint):
    """`worldsim play --device` reaches the dream, as every entry point's does (a machine with a
    GPU can still play on the CPU); a device this machine lacks is refused, naming it."""
    from tests.envs.dream_checkpoint import SIDE

    torch = pytest.importorskip("torch")
    config = PlayConfig(world="dream", checkpoint=checkpoint, actions=script(tmp_path), seed=1, width=SIDE, height=SIDE,
                        scale=1, max_steps=2, device="cpu")  # fmt: skip
    assert play(config).steps == 2
    if not torch.cuda.is_available():
        with pytest.raises(WorldSimError, match="device 'cuda'"):
            play(dataclasses.replace(config, device="cuda"))


def test_a_dream_played_at_a_size_its_model_never_saw_says_so(tmp_path, headless, checkpoint, capsys):
    """--width/--height other than the model's training frames make a worse picture; the player
    is told why, as `worldsim eval` tells its user, and nothing is said at the model's own size."""
    from tests.envs.dream_checkpoint import SIDE

    config = PlayConfig(world="dream", checkpoint=checkpoint, actions=script(tmp_path), seed=1, scale=1, max_steps=1,
                        device="cpu", screenshot_dir=str(tmp_path))  # fmt: skip
    play(config)
    assert "never saw" not in capsys.readouterr().out
    play(dataclasses.replace(config, width=2 * SIDE, height=SIDE))
    out = capsys.readouterr().out
    assert f"trained on {SIDE}x{SIDE} frames (width x height); at {2 * SIDE}x{SIDE} it dreams at a size it never saw" in out


def test_a_slow_dream_on_several_cpu_threads_says_to_try_one(tmp_path, headless, checkpoint, monkeypatch, capsys):
    """On a shared CPU torch's threads spin against each other and the dream crawls; the slow
    warning says what helps (--threads 1) instead of only that the game is slow."""
    import time

    from agents.worlds import EnvWorld
    from tests.envs.dream_checkpoint import SIDE

    torch = pytest.importorskip("torch")
    real_step = EnvWorld.step
    monkeypatch.setattr(EnvWorld, "step", lambda self, a: time.sleep(0.1) or real_step(self, a))
    config = PlayConfig(world="dream", checkpoint=checkpoint, actions=script(tmp_path), seed=1, width=SIDE, height=SIDE,
                        scale=1, max_steps=4, device="cpu", screenshot_dir=str(tmp_path))  # fmt: skip
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert play(config).fell_behind
        assert "--threads 1 is often much faster" in capsys.readouterr().out
        torch.set_num_threads(1)
        assert play(config).fell_behind
        printed = capsys.readouterr().out
        assert "cannot keep the 20 steps/s tick rate" in printed and "--threads 1" not in printed
    finally:
        torch.set_num_threads(threads)


def test_a_side_by_side_recording_replays_in_the_engine_from_its_seed(tmp_path, headless, checkpoint):
    """The recording starts at the engine's reset frame and holds the dream's prompt steps, so
    the engine reset with the recorded seed and given the recorded actions makes every frame."""
    import gymnasium as gym
    import torch

    from tests.envs.dream_checkpoint import SIDE
    from worldsim.recording import RecordingReader

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rec = tmp_path / "sbs.msgpack"
        play(PlayConfig(world="side-by-side", checkpoint=checkpoint, actions=script(tmp_path), seed=1, width=SIDE,
                        height=SIDE, scale=1, max_steps=6, record=str(rec)))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    reader = RecordingReader(rec)
    assert reader.header["env_kwargs"]["max_steps"] > 10**9  # no step limit: the session lasts as long as the human
    records = list(reader)
    assert records[0].kind == "reset" and records[0].seed == 1 and len(records) > 7  # the prompt's steps, then 6
    env = gym.make("worldsim/BlockWorld-v0", width=SIDE, height=SIDE)
    obs, _ = env.reset(seed=1)
    np.testing.assert_array_equal(records[0].image(), obs)
    for r in records[1:]:
        obs, reward, terminated, truncated, _ = env.step(r.action)
        np.testing.assert_array_equal(r.image(), obs)
        assert (r.reward, r.terminated, r.truncated) == (reward, terminated, truncated)


def test_no_display_error_keeps_sdls_own_reason(monkeypatch) -> None:
    """When SDL could not start any video driver, the error said "no X11 or Wayland display
    was found" even when SDL had found one and named why it could not open it."""
    import types

    from envs.window import check_display
    from worldsim.errors import WorldSimError

    class SDLError(Exception):
        pass

    def init() -> None:
        raise SDLError("wayland: could not connect to wayland-0: permission denied")

    fake = types.SimpleNamespace(error=SDLError, display=types.SimpleNamespace(init=init, quit=lambda: None))
    monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    with pytest.raises(WorldSimError, match="SDL: wayland: could not connect to wayland-0: permission denied"):
        check_display(fake, "the game's window", "run it on a desktop", "run it headless")


def test_a_session_that_cannot_start_closes_the_window_it_opened(tmp_path, headless):
    # A --record path it cannot write (a folder under a file) failed after the window opened;
    # the window, and the font's file, stayed open in the process (a notebook, a launcher).
    import pygame

    (tmp_path / "a file").write_text("")
    path = write_lines(tmp_path / "walk.jsonl", [json.dumps({"action": FORWARD, "repeat": 2})])
    config = PlayConfig(world="engine", actions=path, seed=0, width=16, height=16, scale=1,
                        record=str(tmp_path / "a file" / "game.msgpack"))  # fmt: skip
    with pytest.raises(OSError):
        play(config)
    assert not pygame.display.get_init() and not pygame.font.get_init()
