"""The envs' ``render_mode="human"`` window: one frame, upscaled crisply, at the env's fps.

pygame has one display per process, so every open :class:`FrameWindow` draws into the same
one: the display opens with the first window, takes the size of the window that drew last,
and quits only when the last window closes. Closing one env therefore leaves another env's
window working.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from worldsim.errors import WorldSimError

WINDOW_TARGET_PX = 512
"""The window is the frame scaled by the largest integer that keeps its longer side about
this many pixels."""


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
