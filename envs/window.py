"""The envs' ``render_mode="human"`` window: one frame, upscaled crisply, at the env's fps.

pygame has one display per process, so every open :class:`FrameWindow` draws into the same
one: the display opens with the first window, takes the size of the window that drew last,
and quits only when the last window closes. Closing one env therefore leaves another env's
window working.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from worldsim.errors import WorldSimError

WINDOW_TARGET_PX = 512
"""The window is the frame scaled by the largest integer that keeps its longer side about
this many pixels."""


def check_display(pygame: Any, window: str, remedy: str, headless: str) -> None:
    """Open pygame's display, refusing a window that nobody can see.

    With no X11 or Wayland display (over SSH, in a container) SDL falls back to its
    ``offscreen`` driver, and the window would be drawn invisibly (an env's at its
    ``render_fps``, so slowly too). A headless run says so by setting ``SDL_VIDEODRIVER``
    itself, as the tests and ``make demo`` do.

    Args:
        pygame: The pygame module.
        window: What would open, for the message ("the game's window").
        remedy: What to do instead, for the message ("run `worldsim play` on a desktop").
        headless: What ``SDL_VIDEODRIVER=dummy`` then does, for the message ("run it headless").

    Raises:
        WorldSimError: SDL found no display and ``SDL_VIDEODRIVER`` is not set, or the
            driver that ``SDL_VIDEODRIVER`` names cannot start (``x11`` with no X server).
    """
    chosen = os.environ.get("SDL_VIDEODRIVER")
    reason = "no X11 or Wayland display was found"
    try:
        pygame.display.init()
        driver = pygame.display.get_driver()
    except pygame.error as e:  # an SDL built without the offscreen fallback finds no driver at all
        if chosen:
            raise WorldSimError(
                f"SDL_VIDEODRIVER={chosen} cannot open a window here ({e}); unset it to let SDL pick the "
                f"display, or set SDL_VIDEODRIVER=dummy to {headless}"
            ) from None
        driver, reason = None, f"SDL: {e}"  # SDL's own words: a display it found but could not open, say
    if chosen:
        return
    if driver in (None, "offscreen", "dummy"):
        pygame.display.quit()
        raise WorldSimError(f"no display to open {window} on ({reason}); {remedy}, or set SDL_VIDEODRIVER=dummy to {headless}")


class FrameWindow:
    """A pygame window that shows uint8 ``[H, W, 3]`` frames, nearest-neighbour upscaled.

    Args:
        title: Window caption.
        width: Frame width in pixels.
        height: Frame height in pixels.
    """

    _open: ClassVar[int] = 0
    """Windows open in this process; the display quits when this falls to zero."""

    def __init__(self, title: str, width: int, height: int):
        try:
            import pygame
        except ModuleNotFoundError as e:
            raise WorldSimError("render_mode='human' needs pygame; run `pip install pygame`") from e
        if not pygame.display.get_init():  # an open display was checked when it opened
            check_display(pygame, "the render_mode='human' window",
                          "use render_mode='rgb_array' (or None) on a machine without one", "draw it unseen")
        self.pg = pygame
        self.title = title
        scale = max(1, WINDOW_TARGET_PX // max(width, height))
        self.size = (width * scale, height * scale)
        self.clock = pygame.time.Clock()
        self._closed = False
        FrameWindow._open += 1
        self._surface()

    def _surface(self):
        """The display surface at this window's size, (re)opened when needed."""
        pg = self.pg
        screen = pg.display.get_surface() if pg.display.get_init() else None
        if screen is None or screen.get_size() != self.size:
            pg.display.init()  # not pygame.init(): no audio device is needed or wanted
            screen = pg.display.set_mode(self.size)
        if pg.display.get_caption()[0] != self.title:
            pg.display.set_caption(self.title)
        return screen

    def show(self, frame: np.ndarray, fps: float) -> None:
        """Draw one frame and wait so that frames come at ``fps`` at most."""
        if self._closed:
            raise WorldSimError("this window was closed")
        pg = self.pg
        screen = self._surface()
        pg.event.pump()  # keeps the window responsive to the OS
        # surfarray is indexed [x, y]; frames are [y, x].
        surf = pg.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))
        screen.blit(pg.transform.scale(surf, self.size), (0, 0))
        pg.display.flip()
        self.clock.tick(fps)

    def close(self) -> None:
        """Close the window; the display itself quits with the last open window. Idempotent."""
        if self._closed:
            return
        self._closed = True
        FrameWindow._open -= 1
        if FrameWindow._open == 0 and self.pg.display.get_init():
            self.pg.display.quit()
