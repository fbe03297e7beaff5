"""The viewer's window: crisp upscaled panes, their titles, a status panel and the help.

Frames are upscaled by an integer factor with nearest-neighbour sampling
(``pygame.transform.scale``), so every generated pixel stays a sharp square: blurring
would hide exactly the artefacts a viewer wants to judge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

TITLE_PX = 22
"""Height of the title row above the panes."""
STATUS_LINES = 6
"""At most: world, episode, generation, reward, PSNR/pause, warning or message."""
GAP_PX = 8
"""Space between two panes."""
FONT_PX = 20
"""Text size in a window at least ``FONT_FULL_WIDTH_PX`` wide; narrower windows get smaller text."""
FONT_FULL_WIDTH_PX = 480
LINE_GAP_PX = 1
TEXT = (235, 235, 235)
WARN = (255, 80, 60)
BACKGROUND = (24, 24, 28)


@dataclass
class OverlayState:
    """Everything the status panel shows, updated by the viewer each tick."""

    world: str
    backend: str
    tick_rate: float
    step: int = 0
    episode: int = 0
    episode_step: int = 0
    gen_fps: float = 0.0
    """Frames generated per second of generation time, over the last ~2 s of ticks."""
    rewards: list[float] = field(default_factory=list)
    slot: int = 1
    psnr: float | None = None
    mean_psnr: float | None = None
    game_rate: float | None = None
    """Steps per second the game actually reached over the last ~2 s (None until measured)."""
    behind: bool = False
    """Generation, or the whole loop, is slower than the tick rate right now."""
    ever_behind: bool = False
    paused: bool = False
    message: str = ""
    show_help: bool = False


class Overlay:
    """Lays out and draws the panes, titles, status panel and help text.

    Args:
        pygame: The pygame module (imported lazily by the caller).
        titles: One title per pane.
        frame_size: ``(width, height)`` of one frame in pixels.
        scale: Integer upscale factor.
        help_lines: The controls, one per line.
    """

    def __init__(self, pygame: Any, titles: tuple[str, ...], frame_size: tuple[int, int], scale: int, help_lines: list[str]):
        self.pg = pygame
        self.titles = titles
        self.pane = (frame_size[0] * scale, frame_size[1] * scale)
        n = len(titles)
        width = n * self.pane[0] + (n - 1) * GAP_PX
        # Shrink the text with the window so the status lines still fit a small --scale.
        self.font_px = max(12, min(FONT_PX, FONT_PX * width // FONT_FULL_WIDTH_PX))
        self.line_px = self.font_px - 2 + LINE_GAP_PX
        panel = STATUS_LINES * self.line_px + 6
        self.window_size = (width, TITLE_PX + self.pane[1] + panel)
        pygame.font.init()
        self.font = pygame.font.Font(None, self.font_px)
        self.help_lines = help_lines

    def _text(self, screen: Any, text: str, pos: tuple[int, int], color: tuple[int, int, int] = TEXT) -> None:
        screen.blit(self.font.render(text, True, color), pos)

    def status_lines(self, s: OverlayState) -> list[tuple[str, tuple[int, int, int]]]:
        """The panel's lines with their colours; the warning line is red."""
        rewards = " / ".join(f"{r:+.2f}" for r in s.rewards) or "-"
        reward_label = "reward (real / predicted)" if len(self.titles) == 2 else (
            "reward" if s.world == "engine" else "predicted reward"
        )
        lines = [
            (f"{s.world} | backend {s.backend} | hotbar slot {s.slot}", TEXT),
            (f"episode {s.episode}, step {s.episode_step} (total {s.step})", TEXT),
            (f"generation {s.gen_fps:.1f} fps | tick {s.tick_rate:g}/s", TEXT),
            (f"{reward_label} {rewards}", TEXT),
        ]
        extra = ""
        if s.psnr is not None:
            extra = f"PSNR vs engine {s.psnr:.1f} dB (mean {s.mean_psnr:.1f})"
        if s.paused:
            extra += ("  " if extra else "") + "PAUSED (P)"
        if extra:
            lines.append((extra, TEXT))
        if s.behind:
            rate = s.gen_fps if s.game_rate is None else min(s.gen_fps, s.game_rate)
            lines.append((f"SLOW: {rate:.1f} < {s.tick_rate:g} steps/s, game slowed", WARN))
        elif s.message:
            lines.append((s.message, TEXT))
        return lines

    def draw(self, screen: Any, frames: list[np.ndarray], state: OverlayState) -> None:
        """Draw one whole window: titles, panes, status panel and (if shown) the help."""
        pg = self.pg
        screen.fill(BACKGROUND)
        for i, (title, frame) in enumerate(zip(self.titles, frames)):
            x = i * (self.pane[0] + GAP_PX)
            self._text(screen, title, (x + 4, 4))
            # surfarray is indexed [x, y], frames are [y, x]: hence the transpose.
            surf = pg.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))
            screen.blit(pg.transform.scale(surf, self.pane), (x, TITLE_PX))
        y = TITLE_PX + self.pane[1] + 3
        for text, color in self.status_lines(state):
            self._text(screen, text, (4, y), color)
            y += self.line_px
        if state.show_help:
            self._draw_help(screen)

    def close(self) -> None:
        """Let go of the font; call it before ``pygame.quit()``. pygame closes a font's file
        only while its font module is up, so a font freed after the quit kept the file open:
        one file descriptor lost for every viewer session in the process."""
        self.font = None

    def _draw_help(self, screen: Any) -> None:
        pg = self.pg
        lines = ["controls (F1 toggles)", *self.help_lines]
        h = len(lines) * self.line_px + 8
        w = min(self.window_size[0] - 16, max(self.font.size(line)[0] for line in lines) + 12)  # the widest line
        box = pg.Surface((w, h), pg.SRCALPHA)
        box.fill((0, 0, 0, 170))
        screen.blit(box, (8, TITLE_PX + 8))
        for j, line in enumerate(lines):
            self._text(screen, line, (14, TITLE_PX + 12 + j * self.line_px))
