"""Contract tests of the single BlockWorld env: Gymnasium API, spaces, determinism."""

from __future__ import annotations

import json
import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import worldsim  # noqa: F401  (registers the ids)
from envs.blockworld import ACTION_NAMES, ACTION_NVEC, BlockWorldEnv, DiscreteActions
from worldsim.errors import WorldSimError

INFO_KEYS = {
    "inventory", "selected_slot", "achievements", "health", "position", "yaw", "pitch",
    "time_of_day", "target_block", "target_distance", "mined", "placed",
}  # fmt: skip


def _rollout(env: gym.Env, seed: int, steps: int) -> tuple[list[np.ndarray], list[float]]:
    rng = np.random.default_rng(123)
    obs, _ = env.reset(seed=seed)
    frames, rewards = [obs], []
    for _ in range(steps):
        action = (rng.random(len(ACTION_NVEC)) * np.array(ACTION_NVEC)).astype(np.int64)
        obs, reward, terminated, truncated, _ = env.step(action)
        frames.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            obs, _ = env.reset()
            frames.append(obs)
    return frames, rewards


def test_check_env_passes_without_warnings(monkeypatch):
    # check_env also tries the other render modes (human), so pygame needs a dummy display.
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    env = gym.make("worldsim/BlockWorld-v0", width=32, height=24, render_mode="rgb_array").unwrapped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=False)
    assert [str(w.message) for w in caught] == []


def test_make_by_id_with_size_and_spaces():
    env = gym.make("worldsim/BlockWorld-v0", width=48, height=32, render_mode="rgb_array")
    obs, info = env.reset(seed=3)
    assert env.observation_space == gym.spaces.Box(0, 255, (32, 48, 3), np.uint8)
    assert env.action_space == gym.spaces.MultiDiscrete(list(ACTION_NVEC))
    assert obs.shape == (32, 48, 3) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    assert np.array_equal(env.render(), obs)
    assert len(ACTION_NAMES) == len(ACTION_NVEC) == 8


def test_numpy_integer_sizes_are_sizes_and_other_sizes_say_what_came():
    """A size from numpy (``np.arange`` in a sweep) makes the env that size, as the dream env
    takes it; it was refused with "must be integers >= 8, got 24x16". Floats and bools are
    refused, named with their type."""
    from envs.blockworld import BlockWorldVectorEnv

    env = gym.make("worldsim/BlockWorld-v0", width=np.int64(24), height=np.int32(16))
    obs, _ = env.reset(seed=0)
    want, _ = gym.make("worldsim/BlockWorld-v0", width=24, height=16).reset(seed=0)
    assert obs.shape == (16, 24, 3) and env.observation_space.contains(obs)
    assert np.array_equal(obs, want)
    json.dumps(vars(env.unwrapped.engine.config))  # the config stays plain JSON values
    venv = BlockWorldVectorEnv(2, width=np.int64(24), height=np.int64(16), render_threads=1)
    assert venv.reset(seed=0)[0].shape == (2, 16, 24, 3)
    venv.close()
    for bad in ({"width": 24.0}, {"height": True}, {"width": 4}):
        with pytest.raises(ValueError, match=r"width and height must be integers >= 8, got width=\S+, height="):
            BlockWorldEnv(**{"width": 24, "height": 16, **bad})
    with pytest.raises(ValueError, match="got width=24.0,"):
        BlockWorldEnv(width=24.0, height=16)


def test_same_seed_and_actions_give_identical_frames():
    a, ra = _rollout(BlockWorldEnv(width=32, height=32), seed=7, steps=120)
    b, rb = _rollout(BlockWorldEnv(width=32, height=32), seed=7, steps=120)
    assert len(a) == len(b)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert ra == rb
    c, _ = _rollout(BlockWorldEnv(width=32, height=32), seed=8, steps=5)
    assert not np.array_equal(a[0], c[0])


def test_frames_change_every_step_of_turning():
    env = BlockWorldEnv(width=32, height=32)
    obs, _ = env.reset(seed=1)
    for _ in range(3):
        nxt, *_ = env.step(np.array([0, 0, 0, 2, 0, 0, 0, 0]))
        assert not np.array_equal(obs, nxt)
        obs = nxt


@pytest.mark.parametrize(
    "action, expected",
    [
        ([0] * 7, "shape (8,)"),
        ([0, 0, 0, 3, 0, 0, 0, 0], "nvec=[3, 3, 2, 3, 3, 2, 2, 10]"),
        ([0, 0, 0, 0, 0, 0, 0, -1], "out of range"),
        ([0.5] * 8, "integers"),
    ],
)
def test_bad_actions_raise_value_error_naming_the_space(action, expected):
    env = BlockWorldEnv(width=16, height=16)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape(expected)):
        env.step(action)


def test_info_is_json_and_has_the_contract_keys():
    env = BlockWorldEnv(width=16, height=16)
    _, info = env.reset(seed=2)
    assert INFO_KEYS <= set(info)
    _, _, _, _, info = env.step(env.action_space.sample())
    assert INFO_KEYS <= set(info)
    json.dumps(info)
    assert len(info["inventory"]) == 9 and 0 <= info["time_of_day"] < 1
    assert info["health"] == 20 and len(info["position"]) == 3


def test_time_of_day_option_and_night_is_darker():
    env = BlockWorldEnv(width=32, height=32)
    day, info = env.reset(seed=4, options={"time_of_day": 0.25})
    assert info["time_of_day"] == pytest.approx(0.25)
    night, _ = env.reset(seed=4, options={"time_of_day": 0.75})
    assert night.mean() < 0.5 * day.mean()
    with pytest.raises(ValueError, match="time_of_day"):
        env.reset(seed=4, options={"time_of_day": 1.5})


def test_unknown_reset_options_are_refused_not_ignored():
    """A typo would leave the time of day random without a word."""
    env = BlockWorldEnv(width=16, height=16)
    with pytest.raises(ValueError, match=re.escape("unknown reset options ['time_of_dya']")):
        env.reset(seed=4, options={"time_of_dya": 0.25})
    assert env.reset(seed=4, options={"time_of_day": 0.25})[1]["time_of_day"] == pytest.approx(0.25)


def test_default_start_time_is_drawn_from_the_seed():
    env = BlockWorldEnv(width=16, height=16)
    times = {round(env.reset(seed=s)[1]["time_of_day"], 6) for s in range(6)}
    assert len(times) == 6
    assert env.reset(seed=3)[1]["time_of_day"] == env.reset(seed=3)[1]["time_of_day"]


def test_truncates_at_max_steps():
    env = BlockWorldEnv(width=16, height=16, max_steps=5)
    env.reset(seed=0)
    ends = [env.step(np.zeros(8, dtype=np.int64))[3] for _ in range(5)]
    assert ends == [False, False, False, False, True]


def test_discrete_actions_wrapper_walks_forward():
    env = DiscreteActions(BlockWorldEnv(width=16, height=16))
    assert isinstance(env.action_space, gym.spaces.Discrete) and env.action_space.n >= 10
    _, info = env.reset(seed=0)
    start = np.array(info["position"])
    for _ in range(10):
        _, _, _, _, info = env.step(1)  # forward
    assert np.linalg.norm(np.array(info["position"])[[0, 2]] - start[[0, 2]]) > 0.5
    with pytest.raises(ValueError, match="Discrete|int in"):
        env.step(99)


def test_each_discrete_action_sends_the_controls_its_documented_name_says():
    """The index -> name list of the DiscreteActions docstring, and each name's controls in
    the MultiDiscrete vocabulary (yaw 1 = left, pitch 1 = up, ...): an agent that picks 7 to
    turn left must turn left."""
    from envs.blockworld.wrappers import DISCRETE_ACTION_NAMES

    meaning = {
        "noop": {}, "forward": {"move": 1}, "forward_jump": {"move": 1, "jump": 1}, "back": {"move": 2},
        "left": {"strafe": 1}, "right": {"strafe": 2}, "jump": {"jump": 1}, "turn_left": {"yaw": 1},
        "turn_right": {"yaw": 2}, "look_up": {"pitch": 1}, "look_down": {"pitch": 2}, "attack": {"attack": 1},
        "use": {"use": 1}, "slot_1": {"hotbar": 1}, "slot_2": {"hotbar": 2}, "slot_3": {"hotbar": 3},
    }  # fmt: skip
    assert DISCRETE_ACTION_NAMES == tuple(meaning)  # the docstring's order: 0 noop ... 15 slot_3
    env = DiscreteActions(BlockWorldEnv(width=16, height=16))
    for i, name in enumerate(DISCRETE_ACTION_NAMES):
        want = np.array([meaning[name].get(c, 0) for c in ACTION_NAMES], dtype=np.int64)
        assert np.array_equal(env.action(i), want), name


def test_step_before_reset_and_non_numeric_actions_say_what_is_wrong():
    env = BlockWorldEnv(width=16, height=16)
    with pytest.raises(gym.error.ResetNeeded, match="call reset\\(\\) before step\\(\\)"):
        env.step(np.zeros(8, dtype=np.int64))
    env.reset(seed=0)
    for bad in (np.array([0] * 7 + ["a"], dtype=object), np.zeros(8, dtype=complex), [0.0] * 7 + [float("nan")]):
        with pytest.raises(ValueError, match="actions must be integers"):
            env.step(bad)


def test_discrete_actions_can_be_made_again_from_its_spec():
    env = DiscreteActions(gym.make("worldsim/BlockWorld-v0", width=16, height=16))
    again = gym.make(env.spec)
    assert isinstance(again, DiscreteActions) and again.action_space == env.action_space
    check_env(again.unwrapped)


def test_human_render_opens_a_window(monkeypatch):
    pytest.importorskip("pygame")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    env = BlockWorldEnv(width=16, height=16, render_mode="human")
    env.reset(seed=0)
    env.step(np.zeros(8, dtype=np.int64))
    assert env._window is not None
    env.close()


def test_human_render_without_a_display_is_an_error_not_an_invisible_window(monkeypatch):
    """On a server (no X11 or Wayland) SDL would fall back to its offscreen driver: the env
    would draw a window nobody sees, at 20 frames/s, so an RL run crawls unseen. It says so."""
    pygame = pytest.importorskip("pygame")
    for name in ("SDL_VIDEODRIVER", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    env = BlockWorldEnv(width=16, height=16, render_mode="human")
    with pytest.raises(WorldSimError, match="no display to open the render_mode='human' window on.*rgb_array"):
        env.reset(seed=0)
    assert not pygame.display.get_init()
    env.close()
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # asked for explicitly, an unseen window is fine
    env = BlockWorldEnv(width=16, height=16, render_mode="human")
    env.reset(seed=0)
    env.close()


def test_closing_one_human_env_leaves_another_one_showing(monkeypatch):
    """pygame has one display per process: it must outlive any window but the last."""
    pygame = pytest.importorskip("pygame")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    a, b = (BlockWorldEnv(width=16, height=16, render_mode="human") for _ in range(2))
    a.reset(seed=0)
    b.reset(seed=1)
    b.close()
    a.step(np.zeros(8, dtype=np.int64))
    assert pygame.display.get_init()
    a.close()
    assert not pygame.display.get_init()
    check_env(gym.make("worldsim/BlockWorld-v0", width=16, height=16, render_mode="human").unwrapped)  # makes and closes a second one


@pytest.mark.parametrize("side", [16, 32])
def test_small_frames_show_the_health_bar_whole_and_every_selected_slot(side):
    env = BlockWorldEnv(width=side, height=side)
    env.reset(seed=0, options={"time_of_day": 0.25})
    players = env.engine.players
    reds = []
    for health in (20, 14, 6, 0):
        players["health"][0] = health
        frame = env.engine.render()[0]
        reds.append(int(np.all(frame == (220, 36, 36), axis=-1).sum()))
    assert reds[0] > reds[1] > reds[2] > reds[3] == 0  # every level its own length, none off-screen
    if side >= 19:  # a hotbar fits: each selected slot's white frame is on screen
        whites = []
        for slot in range(9):
            players["selected"][0] = slot
            whites.append(int(np.all(env.engine.render()[0][-side // 4 :] == 255, axis=-1).sum()))
        assert min(whites) > 0
