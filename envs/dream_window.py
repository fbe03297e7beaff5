"""The dream env's ``render_mode="human"`` window: one frame, upscaled crisply, at the env's fps."""

from __future__ import annotations

import numpy as np

from worldsim.errors import WorldSimError

WINDOW_TARGET_PX = 512
"""The window is the frame scaled by the largest integer that keeps it about this tall."""


class FrameWindow:
    """A pygame window that shows uint8 ``[H, W, 3]`` frames, nearest-neighbour upscaled.

    Args:
        title: Window caption.
        width: Frame width in pixels.
        height: Frame height in pixels.
    """

    def __init__(self, title: str, width: int, height: int):
        try:
            import pygame
        except ModuleNotFoundError as e:
            raise WorldSimError("render_mode='human' needs pygame; run `pip install pygame`") from e
        self.pg = pygame
        scale = max(1, WINDOW_TARGET_PX // height)
        self.size = (width * scale, height * scale)
        pygame.display.init()  # not pygame.init(): no audio device is needed or wanted
        pygame.display.set_caption(title)
        self.screen = pygame.display.set_mode(self.size)
        self.clock = pygame.time.Clock()

    def show(self, frame: np.ndarray, fps: float) -> None:
        """Draw one frame and wait so that frames come at ``fps`` at most."""
        pg = self.pg
        pg.event.pump()  # keeps the window responsive to the OS
        # surfarray is indexed [x, y]; frames are [y, x].
        surf = pg.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))
        self.screen.blit(pg.transform.scale(surf, self.size), (0, 0))
        pg.display.flip()
        self.clock.tick(fps)

    def close(self) -> None:
        """Close the window."""
        self.pg.display.quit()
