"""The viewer's controls as data: which key or mouse button sets which action component.

BlockWorld's action is a ``MultiDiscrete`` of eight components (move, strafe, jump, yaw,
pitch, attack, use, hotbar). The keymap is a table of :class:`Binding` rows, each naming a
pygame key by its name (``pygame.key.key_code`` understands these), the component it sets
and the value. Viewer commands (quit, pause, reset, screenshot) are a second table. Nothing
here imports pygame, so the tables can be read, printed and tested without a display.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

COMPONENTS: tuple[str, ...] = ("move", "strafe", "jump", "yaw", "pitch", "attack", "use", "hotbar")
"""The action components the keymap drives, in BlockWorld's order."""
NVEC: tuple[int, ...] = (3, 3, 2, 3, 3, 2, 2, 10)
"""Choices per component: the ``MultiDiscrete`` the keymap produces actions for."""


@dataclass(frozen=True)
class Binding:
    """One input that sets one action component while it is held (or once, when pressed)."""

    input: str
    """A pygame key name (``"w"``, ``"space"``, ``"left"``) or ``"mouse1"``/``"mouse3"``."""
    component: str
    """The action component it sets, one of :data:`COMPONENTS`."""
    value: int
    """The value it sets the component to."""
    hold: bool = True
    """True: active every tick while held. False: active for the one tick after the press."""
    label: str = ""
    """What the control does, for the on-screen help."""


@dataclass(frozen=True)
class Keymap:
    """The full table of action bindings and viewer commands."""

    bindings: tuple[Binding, ...]
    commands: dict[str, str] = field(default_factory=dict)
    """pygame key name -> viewer command (``quit``, ``pause``, ``reset``, ``screenshot``, ``help``)."""
    mouse_look_pixels: int = 2
    """Mouse movement, in pixels per tick, below which the view does not turn (a dead zone)."""

    def help_lines(self) -> list[str]:
        """The controls as short lines for the screen and the console."""
        by_label: dict[str, list[str]] = {}
        for b in self.bindings:
            if b.label:
                by_label.setdefault(b.label, []).append(_display(b.input))
        lines = []
        for label, keys in by_label.items():
            digits = [k for k in keys if k.isdigit()]
            if len(digits) > 2:  # 1/2/3/.../9 reads better as a range
                keys = [f"{digits[0]}-{digits[-1]}"] + [k for k in keys if not k.isdigit()]
            lines.append(f"{'/'.join(keys)}: {label}")
        lines.append("mouse: look (M captures the mouse; M or Esc frees it)")
        lines += [f"{_display(k)}: {cmd}" for k, cmd in self.commands.items()]
        return lines


def _display(name: str) -> str:
    if name in ("mouse1", "mouse3"):
        return {"mouse1": "left click", "mouse3": "right click"}[name]
    is_fkey = name[0] == "f" and name[1:].isdigit()
    return name.upper() if len(name) == 1 or is_fkey else name


def _hotbar() -> tuple[Binding, ...]:
    return tuple(
        Binding(str(i), "hotbar", i, hold=False, label="hotbar slot") for i in range(1, 10)
    )


DEFAULT_KEYMAP = Keymap(
    bindings=(
        Binding("w", "move", 1, label="forward"),
        Binding("s", "move", 2, label="back"),
        Binding("a", "strafe", 1, label="strafe left"),
        Binding("d", "strafe", 2, label="strafe right"),
        Binding("space", "jump", 1, label="jump"),
        Binding("left", "yaw", 1, label="look left/right"),
        Binding("right", "yaw", 2, label="look left/right"),
        Binding("up", "pitch", 1, label="look up/down"),
        Binding("down", "pitch", 2, label="look up/down"),
        Binding("mouse1", "attack", 1, label="mine"),
        Binding("f", "attack", 1, label="mine"),
        Binding("mouse3", "use", 1, hold=False, label="place"),
        Binding("e", "use", 1, hold=False, label="place"),
        *_hotbar(),
    ),
    commands={
        "escape": "quit",  # with the mouse captured, Esc frees it first (agents/human.py)
        "p": "pause",
        "r": "reset",
        "f2": "screenshot",
        "f1": "help",
        "m": "capture mouse",
    },
)
"""WASD, space, arrows or mouse to look, left click/F mine, right click/E place, 1-9 hotbar."""


def check_keymap(keymap: Keymap) -> None:
    """Raise ``ValueError`` for an unknown component, an out-of-range value, or a key that is
    both an action binding and a viewer command (the command would swallow it)."""
    both = {b.input for b in keymap.bindings} & set(keymap.commands)
    if both:
        raise ValueError(f"keys {sorted(both)} are bound to both an action and a viewer command")
    for b in keymap.bindings:
        if b.component not in COMPONENTS:
            raise ValueError(f"binding {b.input!r} names unknown component {b.component!r}; expected one of {COMPONENTS}")
        n = NVEC[COMPONENTS.index(b.component)]
        if not 0 < b.value < n:
            raise ValueError(f"binding {b.input!r} sets {b.component}={b.value}, expected 1..{n - 1}")


def compose_action(
    keymap: Keymap, held: Iterable[str], pressed: Iterable[str], mouse_dx: float = 0.0, mouse_dy: float = 0.0
) -> np.ndarray:
    """The action for one tick, from the inputs held now and those pressed since the last tick.

    Args:
        keymap: The bindings.
        held: Names of the keys/buttons down at this tick.
        pressed: Names of the keys/buttons pressed (down events) since the previous tick, so
            a tap shorter than a tick still counts.
        mouse_dx: Mouse movement since the last tick, in pixels (right is positive).
        mouse_dy: Mouse movement since the last tick, in pixels (down is positive).

    Returns:
        int64 ``[8]``, the MultiDiscrete action. Where two inputs set one component, the
        later binding in the table wins; the mouse only turns when no arrow key does.
    """
    held, pressed = set(held), set(pressed)
    action = np.zeros(len(COMPONENTS), dtype=np.int64)
    for b in keymap.bindings:
        active = (b.input in held or b.input in pressed) if b.hold else b.input in pressed
        if active:
            action[COMPONENTS.index(b.component)] = b.value
    dead = keymap.mouse_look_pixels
    yaw, pitch = COMPONENTS.index("yaw"), COMPONENTS.index("pitch")
    if action[yaw] == 0 and abs(mouse_dx) > dead:
        action[yaw] = 1 if mouse_dx < 0 else 2
    if action[pitch] == 0 and abs(mouse_dy) > dead:
        action[pitch] = 1 if mouse_dy < 0 else 2
    return action
