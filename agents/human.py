"""`worldsim play`: the human at the keyboard, in a pygame window, at a fixed tick rate.

The game advances at a fixed rate of steps per second (default 20, one BlockWorld tick),
whatever the render rate; the window redraws in between. When generating a frame takes
longer than a tick, the game cannot keep its rate, and the overlay says so in red rather
than slowing down quietly. The same loop runs headless under ``SDL_VIDEODRIVER=dummy`` with
a scripted action file, which is how the tests and the README pictures drive it.

Scripted action files are JSON lines. Each line is one of:

- an action: a list of ints for a ``MultiDiscrete`` space (``[1, 0, 0, 2, 0, 0, 0, 0]``)
  or an int for a ``Discrete`` one;
- ``{"action": [...], "repeat": N}``: that action for N ticks;
- ``{"command": "reset"}`` or ``{"command": "screenshot"}``: what R and F2 do.

Blank lines and lines starting with ``#`` are skipped. The run ends when the file does.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.keymap import COMPONENTS, DEFAULT_KEYMAP, NVEC, Keymap, check_keymap, compose_action
from agents.overlay import Overlay, OverlayState
from agents.worlds import World, make_world
from envs.window import check_display
from worldsim.atomic import atomic_write
from worldsim.cli import DEVICE_HELP
from worldsim.errors import WorldSimError
from worldsim.spaces import ActionSpec

MIN_TICK_RATE, MAX_TICK_RATE = 10.0, 20.0
"""Playable tick rates: below 10 steps/s the game feels broken, above 20 it outruns BlockWorld's clock."""
WINDOW_TARGET_PX = 512
"""Default pane size: the scale is picked so a frame's larger side fills about this many pixels
(by its height alone, a 256x64 frame would open a window 2,048 px wide)."""
RENDER_FPS = 60.0
"""Redraw rate between ticks (mouse, pause screen, help), independent of the tick rate."""
SLOW_FRACTION = 0.9
"""The game counts as slowed when it reaches less than this share of the tick rate."""
HELP_SECONDS = 6.0
"""How long the controls stay on screen at start (F1 shows them again)."""
DRAWN_SEEDS = (2**24, 2**31 - 2**20)
"""Without ``--seed``, the first episode's seed is drawn from this range: above the seeds the
eval holds out (``worldsim.reference``), so a recorded game never plays an eval world, and
below 2^31 (any seed an env takes) with room for a million more episodes."""


@dataclass(frozen=True)
class PlayConfig:
    """Options of ``worldsim play``."""

    world: str = "dream"
    """``dream``, ``engine`` or ``side-by-side``."""
    checkpoint: str | None = None
    """Dream checkpoint (``None``: the shipped default model)."""
    backend: str = "torch"
    """Dream runtime backend: ``torch`` or ``onnx``."""
    scale: int | None = None
    """Integer upscale factor of the frames (``None``: a frame's larger side fills about 512 px)."""
    record: str | None = None
    """Write the session to this recording file (the first pane's frames, the human's actions)."""
    seed: int | None = None
    """World seed of the first episode (later episodes use seed + 1, + 2, ...; ``None``: drawn and printed)."""
    tick_rate: float = 20.0
    """Game steps per second, 10 to 20."""
    max_steps: int | None = None
    """Stop after this many steps."""
    screenshot: str | None = None
    """Save the window to this PNG file when the session ends."""
    actions: str | None = None
    """Scripted action file (JSON lines) to play instead of the keyboard."""
    width: int | None = None
    """Frame width (``None``: the dream model's training frames; 64 for the engine alone)."""
    height: int | None = None
    """Frame height (``None``: the dream model's training frames; 64 for the engine alone)."""
    chunks: int | None = None
    """Dream chunks per frame (``None``: the model's default)."""
    temperature: float | None = None
    """Dream sampling temperature (``None``: the model's default)."""
    guidance: float | None = None
    """Dream action guidance scale (``None``: the model's default; 1 = none)."""
    ranked_moves: bool | None = None
    """Decide for each dream frame at once which cells change (``None``: the model's default, off)."""
    device: str | None = None
    """The dream's torch device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ... (``None``: ``auto``, CUDA if present)."""
    screenshot_dir: str = "."
    """Where F2 saves screenshots."""


@dataclass
class PlayResult:
    """What a session did, returned by :func:`play` for scripts and tests."""

    steps: int
    episodes: int
    generation_fps: float
    """Frames generated per second of generation time (all panes of one tick count once)."""
    fell_behind: bool
    """True if generation was ever slower than the tick rate."""
    mean_psnr: float | None
    screenshots: list[str]


def parse_script(path: str | os.PathLike, spec: ActionSpec) -> list[str | tuple[np.ndarray, int]]:
    """Read and check a whole JSON-lines action file: commands (strings) and
    ``(action, repeat)`` pairs, repeats not yet expanded.

    Raises:
        WorldSimError: An unreadable file, a line that is not JSON, an unknown key or
            command, or an invalid action, with the file and line number.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise WorldSimError(f"cannot read action file {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise WorldSimError(f"cannot read action file {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    entries: list[str | tuple[np.ndarray, int]] = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{n}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise WorldSimError(f"{where}: not JSON ({e.msg})") from e
        except (ValueError, RecursionError) as e:  # a 5,000-digit number; arrays nested 10**5 deep
            raise WorldSimError(f"{where}: JSON that cannot be read ({type(e).__name__}: {str(e)[:80]})") from None
        repeat = 1
        if isinstance(item, dict):
            keys = {"command"} if "command" in item else {"action", "repeat"}
            unknown = sorted(set(item) - keys)
            if unknown:
                raise WorldSimError(f"{where}: unknown keys {unknown}; a line is {{\"action\": [...], \"repeat\": n}} "
                                    "or {\"command\": \"reset\" | \"screenshot\"}")  # fmt: skip
            if "command" in item:
                if item["command"] not in ("reset", "screenshot"):
                    raise WorldSimError(f"{where}: unknown command {item['command']!r}; expected reset or screenshot")
                entries.append(item["command"])
                continue
            if "action" not in item:
                raise WorldSimError(f"{where}: no \"action\"")
            repeat = item.get("repeat", 1)
            if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
                raise WorldSimError(f"{where}: repeat must be a positive integer, got {repeat!r}")
            item = item["action"]
        try:
            action = spec.as_array(item, ())
        except (ValueError, TypeError) as e:
            raise WorldSimError(f"{where}: {e}") from e
        entries.append((action, repeat))
    return entries


def expand_script(entries: list[str | tuple[np.ndarray, int]]) -> Iterator[np.ndarray | str]:
    """Commands and one action per tick, repeats expanded lazily (a repeat of millions costs nothing)."""
    for entry in entries:
        if isinstance(entry, str):
            yield entry
            continue
        action, repeat = entry
        for _ in range(repeat):
            yield action.copy()


def read_script(path: str | os.PathLike, spec: ActionSpec) -> Iterator[np.ndarray | str]:
    """Yield scripted actions (int64 vectors) and commands (strings) from a JSON-lines file,
    checked whole first (:func:`parse_script`)."""
    return expand_script(parse_script(path, spec))


class _Input:
    """Collects keyboard and mouse state between ticks (pygame events -> key names)."""

    def __init__(self, pygame: Any, keymap: Keymap):
        self.pg = pygame
        self.keymap = keymap
        self.pressed: set[str] = set()
        self.commands: list[str] = []
        self.dx = self.dy = 0.0
        self.any_key = False
        self.codes = {b.input: pygame.key.key_code(b.input) for b in keymap.bindings if not b.input.startswith("mouse")}
        self.command_codes = {pygame.key.key_code(k): cmd for k, cmd in keymap.commands.items()}
        self.names = {code: name for name, code in self.codes.items()}

    def poll(self) -> None:
        pg = self.pg
        for ev in pg.event.get():
            if ev.type == pg.QUIT:  # the window closed (or SIGTERM): ends the game, mouse captured or not
                self.commands.append("close")
            elif ev.type == pg.KEYDOWN:
                self.any_key = True
                if ev.key in self.command_codes:
                    self.commands.append(self.command_codes[ev.key])
                elif ev.key in self.names:
                    self.pressed.add(self.names[ev.key])
            elif ev.type == pg.MOUSEBUTTONDOWN and ev.button in (1, 3):
                self.pressed.add(f"mouse{ev.button}")
            elif ev.type == pg.MOUSEMOTION and pg.event.get_grab():
                self.dx += ev.rel[0]
                self.dy += ev.rel[1]

    def held(self) -> set[str]:
        keys = self.pg.key.get_pressed()
        held = {name for name, code in self.codes.items() if keys[code]}
        buttons = self.pg.mouse.get_pressed()
        held |= {f"mouse{i + 1}" for i in (0, 2) if buttons[i]}
        return held

    def take_action(self) -> np.ndarray:
        action = compose_action(self.keymap, self.held(), self.pressed, self.dx, self.dy)
        self.discard()
        return action

    def discard(self) -> None:
        """Forget the presses and mouse motion since the last tick: made during a pause, they
        would otherwise all act on the first tick after it (a block placed, a slot changed)."""
        self.pressed.clear()
        self.dx = self.dy = 0.0


class _Recorder:
    """Writes the session's first pane (the engine, side by side) with the actions played."""

    def __init__(self, path: str, world: World, shape: tuple[int, int, int], scripted: bool):
        from worldsim.recording import RecordingWriter

        Path(path).parent.mkdir(parents=True, exist_ok=True)  # as `worldsim record --out` and F2's folder
        self.writer = RecordingWriter(
            path,
            env_id=world.env_id,
            env_kwargs=world.env_kwargs,
            observation_shape=shape,
            action_space=world.action_space,
            agent="script" if scripted else "human",
            extra_header={"viewer_world": world.titles[0]},
        )
        self.episode, self.t = -1, 0

    def reset(self, seed: int | None, frame: np.ndarray) -> None:
        self.episode += 1
        self.t = 0
        self.writer.reset(self.episode, seed, frame)

    def step(self, action: np.ndarray, reward: float, terminated: bool, truncated: bool, frame: np.ndarray) -> None:
        self.t += 1
        self.writer.step(self.episode, self.t, action, reward, terminated, truncated, frame)

    def close(self) -> None:
        self.writer.close()


def play(config: PlayConfig, keymap: Keymap = DEFAULT_KEYMAP) -> PlayResult:
    """Run one viewer session until Esc, the window closing, ``max_steps`` or the script's end.

    Raises:
        WorldSimError: Bad options, a bad action file or a checkpoint that cannot be loaded.
    """
    check_keymap(keymap)
    if not MIN_TICK_RATE <= config.tick_rate <= MAX_TICK_RATE:
        raise WorldSimError(f"--tick-rate must be within {MIN_TICK_RATE:g}-{MAX_TICK_RATE:g} steps/s, got {config.tick_rate:g}")
    if config.scale is not None and not 1 <= config.scale <= 32:
        raise WorldSimError(f"--scale must be an integer from 1 to 32, got {config.scale}")
    try:
        import pygame
    except ModuleNotFoundError as e:
        raise WorldSimError("the viewer needs pygame; run `pip install pygame`") from e
    # Before the model loads: a missing display is the first thing to know.
    check_display(pygame, "the game's window", "run `worldsim play` on a desktop", "run it headless with --actions FILE")

    world = make_world(
        config.world,
        checkpoint=config.checkpoint,
        backend=config.backend,
        width=config.width,
        height=config.height,
        chunks=config.chunks,
        temperature=config.temperature,
        guidance=config.guidance,
        ranked_moves=config.ranked_moves,
        device=config.device,
    )
    if world.model_frame_shape is not None and world.frame_shape != world.model_frame_shape:
        # The dream runs at any multiple of its patch, but a size it never saw looks worse: say so, as eval does.
        (h0, w0), (h, w) = world.model_frame_shape, world.frame_shape
        print(f"note: the dream's model was trained on {w0}x{h0} frames (width x height); at {w}x{h} it dreams "
              "at a size it never saw, so expect a worse picture", flush=True)
    try:
        spec = ActionSpec.from_space(world.action_space)
        # Read the whole script first: a bad line is an error before the window opens.
        script = read_script(config.actions, spec) if config.actions else None
        if script is None and spec.nvec != NVEC:
            raise WorldSimError(
                f"the keyboard controls drive BlockWorld's MultiDiscrete{list(NVEC)}, but this world's "
                f"action space is {spec.kind}{list(spec.nvec)}; play it with --actions FILE"
            )
        return _Session(pygame, world, config, keymap, script).run()
    finally:
        world.close()


def slow_hint(world: World) -> str:
    """What to try when the dream cannot keep the tick rate, or "" when there is no simple cure.

    A torch dream on the CPU with several threads is the common case: when other programs
    share the cores, OpenMP's threads spin against each other and a step can take 10-60
    times as long (docs/dream.md, "Threads"); one thread is then much faster.
    """
    if world.backend != "torch" or world.device != "cpu":
        return ""
    import torch

    threads = torch.get_num_threads()
    if threads == 1:
        return ""
    return (f" (the dream runs on the CPU with {threads} torch threads; when other programs share the CPU, "
            "--threads 1 is often much faster)")


class _Session:
    """The viewer's loop: input, fixed-rate ticks, recording, redraw."""

    def __init__(self, pygame: Any, world: World, config: PlayConfig, keymap: Keymap, script: Iterator | None):
        self.pg, self.world, self.cfg, self.script = pygame, world, config, script
        self.keymap = keymap
        pygame.display.init()  # not pygame.init(): the viewer needs no audio device
        try:
            self._open(pygame, world, config, keymap, script)
        except BaseException:
            # A session that cannot start (a --record path it cannot write) closes the window
            # it opened and lets go of the font, as run() does at its end.
            if hasattr(self, "overlay"):
                self.overlay.close()
            pygame.quit()
            raise

    def _open(self, pygame: Any, world: World, config: PlayConfig, keymap: Keymap, script: Iterator | None) -> None:
        height, width = world.frame_shape
        scale = config.scale or max(1, WINDOW_TARGET_PX // max(height, width))
        self.overlay = Overlay(pygame, world.titles, (width, height), scale, keymap.help_lines())
        pygame.display.set_caption(f"WorldSim: {config.world}")
        self.screen = pygame.display.set_mode(self.overlay.window_size)
        self.input = _Input(pygame, keymap)
        self.state = OverlayState(world=config.world, backend=world.backend, tick_rate=config.tick_rate)
        self.gen_times: deque[float] = deque(maxlen=2 * int(config.tick_rate))
        self.tick_times: deque[float] = deque(maxlen=2 * int(config.tick_rate))
        # A running sum, not a list averaged again every step: that cost grew with the
        # session (4 ms a step after an hour at 20 steps/s, 12 ms after four).
        self.psnr_sum, self.psnr_steps = 0.0, 0
        self.screenshots: list[str] = []
        # Without --seed a seed is drawn, so that every episode's world can be made again (a
        # recording names it, the console prints it); the env would otherwise record none.
        self.episode_seed = int(np.random.default_rng().integers(*DRAWN_SEEDS)) if config.seed is None else config.seed
        self.episodes = 0
        self.recorder = None
        if config.record:
            self.recorder = _Recorder(config.record, world, (height, width, 3), script is not None)

    def _reset(self) -> None:
        self.frames = self.world.reset(self.episode_seed)
        if self.recorder:  # the first pane's episode from its reset frame: side by side, the prompt's steps first
            first = self.world.reset_frame
            self.recorder.reset(self.episode_seed, self.frames[0] if first is None else first)
            for s in self.world.lead_in:
                self.recorder.step(s.action, s.reward, s.terminated, s.truncated, s.frame)
        self.episode_seed += 1
        self.episodes += 1
        self.state.episode = self.episodes
        self.state.slot = 1
        self.state.episode_step = 0

    def _tick(self, action: np.ndarray) -> bool:
        t0 = time.perf_counter()
        out = self.world.step(action)
        took = time.perf_counter() - t0
        if self.state.step > 0:
            # The session's first step warms up (numba's kernels, torch's or CUDA's first call) and
            # can take many ticks: counted, it would call every start slow.
            self.gen_times.append(took)
        self.frames = out.frames
        if self.recorder:
            terminated, truncated = out.first_ended or (out.terminated, out.truncated)
            self.recorder.step(action, out.rewards[0], terminated, truncated, out.frames[0])
        st = self.state
        st.step += 1
        st.episode_step += 1
        st.rewards = out.rewards
        hotbar = int(action[COMPONENTS.index("hotbar")]) if len(action) == len(COMPONENTS) else 0
        st.slot = hotbar or st.slot
        if out.psnr is not None:
            self.psnr_sum += out.psnr
            self.psnr_steps += 1
            st.psnr, st.mean_psnr = out.psnr, self.psnr_sum / self.psnr_steps
        times = self.gen_times or (took,)
        st.gen_fps = len(times) / max(sum(times), 1e-9)
        self.tick_times.append(time.perf_counter())
        if len(self.tick_times) == self.tick_times.maxlen:
            # The rate the player gets: generation plus drawing, over the last ~2 s of ticks.
            st.game_rate = (len(self.tick_times) - 1) / max(self.tick_times[-1] - self.tick_times[0], 1e-9)
        slow_game = st.game_rate is not None and st.game_rate < SLOW_FRACTION * self.cfg.tick_rate
        st.behind = (bool(self.gen_times) and st.gen_fps < self.cfg.tick_rate) or slow_game
        st.ever_behind |= st.behind
        return out.done

    def _screenshot(self, path: str | None = None, *, in_game: bool = True) -> None:
        """Save the window as a PNG, making its folder. A save that fails shows in the overlay
        and the game goes on; at the session's end (``in_game=False``) it is an error."""
        if path is None:  # F2: a new file each time, even twice at one step
            stem = Path(self.cfg.screenshot_dir) / f"worldsim-{self.cfg.world}-{self.state.step:06d}"
            path, k = f"{stem}.png", 1
            while Path(path).exists():
                path, k = f"{stem}-{k}.png", k + 1
        try:
            # Whole or not at all: a save the disk refused (full) left a cut-short PNG at the
            # path, over the screenshot an earlier session saved there.
            atomic_write(path, lambda tmp: self.pg.image.save(self.screen, tmp), keep_suffix=True)
        except (OSError, self.pg.error) as e:
            if not in_game:
                raise WorldSimError(f"cannot save the screenshot {path}: {e}") from None
            self.state.message = f"screenshot not saved: {e}"
            return
        self.screenshots.append(path)
        self.state.message = f"saved {path}"

    def _next_action(self) -> np.ndarray | None:
        """The action for this tick, after running any scripted commands; None ends a script."""
        if self.script is None:
            return self.input.take_action()
        for item in self.script:
            if isinstance(item, str):
                self._command(item)
                continue
            return item
        return None

    def _command(self, cmd: str) -> None:
        if cmd == "quit" and self.pg.event.get_grab():
            # Esc is how a player gets a captured mouse back: it frees it, and quits only once it is free.
            self._capture_mouse(False)
            self.state.message = "mouse freed (Esc again quits)"
        elif cmd in ("quit", "close"):
            self.running = False
        elif cmd == "pause":
            self.state.paused = not self.state.paused
        elif cmd == "reset":
            self._reset()
        elif cmd == "screenshot":
            self._draw()
            self._screenshot()
        elif cmd == "help":
            self.help_pinned = not self.show_help()
            self.help_until = 0.0
        elif cmd == "capture mouse":
            self._capture_mouse(not self.pg.event.get_grab())

    def _capture_mouse(self, grab: bool) -> None:
        self.pg.event.set_grab(grab)
        self.pg.mouse.set_visible(not grab)

    def show_help(self) -> bool:
        return self.help_pinned or time.perf_counter() < self.help_until

    def _draw(self) -> None:
        self.state.show_help = self.show_help()
        self.overlay.draw(self.screen, self.frames, self.state)
        self.pg.display.flip()

    def run(self) -> PlayResult:
        cfg = self.cfg
        print("WorldSim play controls:\n  " + "\n  ".join(self.keymap.help_lines()), flush=True)
        print(f"world seed {self.episode_seed} (--seed {self.episode_seed} plays this world again; R and episode ends "
              "go on to the next seed)", flush=True)
        self._reset()
        self.running = True
        self.help_pinned = False
        self.help_until = time.perf_counter() + (0.0 if self.script else HELP_SECONDS)
        interval = 1.0 / cfg.tick_rate
        next_tick = time.perf_counter()
        next_draw = 0.0
        warned = False
        try:
            while self.running:
                self.input.poll()
                for cmd in self.input.commands:
                    self._command(cmd)
                self.input.commands.clear()
                if self.input.any_key:
                    self.help_until = 0.0  # the start-up help goes at the first key press
                if cfg.max_steps is not None and self.state.step >= cfg.max_steps:
                    break
                now = time.perf_counter()
                if self.running and not self.state.paused and now >= next_tick:
                    action = self._next_action()
                    if action is None:
                        break
                    if self._tick(action):
                        self.state.message = f"episode {self.episodes} ended after {self.state.episode_step} steps"
                        self._reset()
                    next_tick += interval
                    # Behind schedule: run on from now instead of bursting to catch up, and say so.
                    next_tick = max(next_tick, time.perf_counter())
                    if self.state.behind and not warned:
                        print(f"warning: generation {self.state.gen_fps:.1f} frames/s cannot keep the "
                              f"{cfg.tick_rate:g} steps/s tick rate; the game runs slower than real time"
                              f"{slow_hint(self.world)}", flush=True)
                        warned = True
                    next_draw = 0.0
                elif self.state.paused:
                    next_tick = now + interval
                    self.tick_times.clear()  # a pause is not slowness
                    self.input.discard()  # keys still held after it act; taps and clicks during it do not
                if time.perf_counter() >= next_draw:
                    self._draw()
                    next_draw = time.perf_counter() + 1.0 / RENDER_FPS
                wait = min(next_tick, next_draw) - time.perf_counter()
                if wait > 0:
                    time.sleep(min(wait, 0.005))
            self._draw()
            if cfg.screenshot:
                self._screenshot(cfg.screenshot, in_game=False)
        finally:
            if self.recorder:
                self.recorder.close()
            self.overlay.close()  # before the quit, or the font's file stays open
            self.pg.quit()
        gen = self.state.gen_fps
        mean_psnr = self.psnr_sum / self.psnr_steps if self.psnr_steps else None
        print(f"played {self.state.step} steps in {self.episodes} episode(s); generation {gen:.1f} frames/s"
              + (f"; mean PSNR {mean_psnr:.2f} dB" if mean_psnr is not None else ""), flush=True)
        return PlayResult(self.state.step, self.episodes, gen, self.state.ever_behind, mean_psnr, self.screenshots)


def main(argv: list[str]) -> int:
    """Entry point of ``worldsim play``."""
    p = argparse.ArgumentParser(prog="worldsim play", description="Play the dream, the engine, or both side by side.")
    p.add_argument("--world", choices=("dream", "engine", "side-by-side"), default="dream", help="what to play (default: dream)")
    p.add_argument("--checkpoint", help="dream checkpoint (.safetensors); default: the shipped BlockWorld model")
    p.add_argument("--backend", choices=("torch", "onnx"), help="dream runtime backend (default: torch)")
    p.add_argument("--scale", type=int, help="integer upscale of the frames (default: a frame's larger side fills about 512 px)")
    p.add_argument("--record", metavar="PATH", help="write the session as a recording (frames and your actions)")
    p.add_argument("--seed", type=int, help="world seed of the first episode (default: drawn at random and printed)")
    p.add_argument("--tick-rate", type=float, default=20.0, help="game steps per second, 10-20 (default 20)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps")
    p.add_argument("--screenshot", metavar="PATH", help="save the window to this PNG when the session ends")
    p.add_argument("--actions", metavar="FILE", help="play a scripted action file (JSON lines) instead of the keyboard")
    p.add_argument("--width", type=int, help="frame width (default: the dream model's training frames; 64 for the engine)")
    p.add_argument("--height", type=int, help="frame height (default: the dream model's training frames; 64 for the engine)")
    p.add_argument("--chunks", type=int, help="dream chunks per frame (default: the model's)")
    p.add_argument("--temperature", type=float, help="dream sampling temperature (default: the model's)")
    p.add_argument("--guidance", type=float, help="dream action guidance scale, 1 = none (default: the model's)")
    p.add_argument("--ranked-moves", action=argparse.BooleanOptionalAction, default=None,
                   help="decide for each dream frame at once which cells change: the most likely ones, as many as expected (default: off)")
    p.add_argument("--device", help=f"the dream's {DEVICE_HELP}")
    p.add_argument("--screenshot-dir", default=".", help="where F2 saves screenshots (default: .)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the dream, in torch or ONNX Runtime (default: their own)")
    a = p.parse_args(argv)
    if a.max_steps is not None and a.max_steps < 1:
        raise WorldSimError(f"--max-steps must be at least 1, got {a.max_steps}")
    if a.seed is not None and a.seed < 0:
        raise WorldSimError(f"--seed must be at least 0, got {a.seed}")
    dream_only = [f"--{k.replace('_', '-')}" for k in ("checkpoint", "backend", "chunks", "temperature", "guidance", "ranked_moves",
                                                    "device")
                  if getattr(a, k) is not None]  # fmt: skip
    if a.world == "engine" and dream_only:  # the engine has no model: these would be ignored without a word
        raise WorldSimError(f"{', '.join(dream_only)} set the dream's model, but --world engine plays BlockWorld "
                            "alone; use --world dream or side-by-side")  # fmt: skip
    a.backend = a.backend or "torch"
    from worldsim.cpus import set_threads

    set_threads(a.threads)
    if a.record and Path(a.record).exists():  # before the window opens: a session is never lost to it
        raise WorldSimError(f"--record {a.record} exists; choose another path (a session never replaces a recording)")
    config = PlayConfig(**{k: v for k, v in vars(a).items() if k != "threads"})
    play(config)
    return 0
