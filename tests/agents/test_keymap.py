"""The viewer's keymap: each control the issue names sets the action it should."""

import numpy as np
import pytest

from agents.keymap import (
    COMPONENTS,
    DEFAULT_KEYMAP,
    NVEC,
    Binding,
    Keymap,
    check_keymap,
    compose_action,
)


def act(held=(), pressed=(), dx=0.0, dy=0.0) -> dict[str, int]:
    a = compose_action(DEFAULT_KEYMAP, held, pressed, dx, dy)
    assert a.shape == (len(COMPONENTS),) and a.dtype == np.int64
    return {name: int(v) for name, v in zip(COMPONENTS, a) if v}


def test_keymap_matches_blockworld_action_space():
    from envs.blockworld import ACTION_NAMES, ACTION_NVEC

    assert COMPONENTS == tuple(ACTION_NAMES)
    assert NVEC == tuple(ACTION_NVEC)
    check_keymap(DEFAULT_KEYMAP)


@pytest.mark.parametrize(
    ("held", "expected"),
    [
        ((), {}),
        (("w",), {"move": 1}),
        (("s",), {"move": 2}),
        (("a",), {"strafe": 1}),
        (("d",), {"strafe": 2}),
        (("space",), {"jump": 1}),
        (("left",), {"yaw": 1}),
        (("right",), {"yaw": 2}),
        (("up",), {"pitch": 1}),
        (("down",), {"pitch": 2}),
        (("f",), {"attack": 1}),
        (("mouse1",), {"attack": 1}),
        (("w", "d", "space", "mouse1"), {"move": 1, "strafe": 2, "jump": 1, "attack": 1}),
    ],
)
def test_held_keys_set_their_components(held, expected):
    assert act(held=held) == expected


def test_place_and_hotbar_act_once_per_press():
    assert act(pressed=("e",)) == {"use": 1}
    assert act(pressed=("mouse3",)) == {"use": 1}
    # Holding E after the press does not place a block every tick.
    assert act(held=("e",)) == {}
    for slot in range(1, 10):
        assert act(pressed=(str(slot),)) == {"hotbar": slot}


def test_tap_shorter_than_a_tick_still_moves():
    # Pressed and released between two ticks: not held any more, but it was pressed.
    assert act(held=(), pressed=("w",)) == {"move": 1}


def test_mouse_looks_beyond_dead_zone_and_arrows_win():
    assert act(dx=-10) == {"yaw": 1}
    assert act(dx=10, dy=-10) == {"yaw": 2, "pitch": 1}
    assert act(dx=1, dy=1) == {}  # hand tremor inside the dead zone does not turn the view
    assert act(held=("left",), dx=10) == {"yaw": 1}


def test_help_lists_every_control_the_issue_names():
    text = "\n".join(DEFAULT_KEYMAP.help_lines())
    for expected in ("W: forward", "A: strafe left", "space: jump", "left click/F: mine",
                     "right click/E: place", "1-9: hotbar slot", "escape: quit", "P: pause",
                     "R: reset", "F2: screenshot", "mouse: look"):  # fmt: skip
        assert expected in text


def test_bad_binding_is_rejected():
    with pytest.raises(ValueError, match="unknown component"):
        check_keymap(Keymap((Binding("x", "fly", 1),)))
    with pytest.raises(ValueError, match="expected 1..2"):
        check_keymap(Keymap((Binding("x", "move", 3),)))
    with pytest.raises(ValueError, match="both an action and a viewer command"):
        check_keymap(Keymap((Binding("r", "move", 1),), commands={"r": "reset"}))
