"""The explorer: seeded, reactive, and producing data in which actions visibly matter."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from agents.coverage import Coverage
from agents.explorer import ATTACK, HOTBAR, JUMP, MOVE, PITCH, USE, YAW, Explorer
from envs.blockworld import ACTION_NAMES, ACTION_NVEC
from worldsim.spaces import ActionSpec


def _info(**kw):
    base = {
        "position": (0.0, 30.0, 0.0), "pitch": 0.0, "yaw": 0.0, "health": 20, "in_water": False,
        "target_block": None, "target_distance": None, "mined": None, "placed": None,
        "selected_slot": 0, "inventory": [(None, 0)] * 9,
    }  # fmt: skip
    base.update(kw)
    return base


def test_same_seed_same_actions_and_all_in_range():
    runs = []
    for _ in range(2):
        ex = Explorer(np.random.default_rng(7))
        acts = []
        for t in range(300):
            info = _info(
                position=(0.2 * t, 30.0, 0.0), target_block="stone" if t % 50 < 10 else None
            )
            acts.append(ex.act(None, info))
        runs.append(np.stack(acts))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert runs[0].shape == (300, 8)
    assert np.all(runs[0] >= 0) and np.all(runs[0] < np.asarray(ACTION_NVEC))


def test_blocked_walk_jumps_then_mines_or_turns():
    ex = Explorer(np.random.default_rng(0))
    ex.reset(None, _info())
    ex._start(_info(), "walk")
    ex.left = 1000
    acts = [ex.act(None, _info(target_block="dirt", target_distance=1.0)) for _ in range(40)]
    assert any(a[JUMP] for a in acts[:8])  # a hop within two stuck windows
    assert ex.behaviour in ("mine", "turn") or any(a[ATTACK] or a[YAW] for a in acts)


def test_lava_ahead_makes_it_back_off_and_turn():
    ex = Explorer(np.random.default_rng(1))
    ex.reset(None, _info())
    a = ex.act(None, _info(target_block="lava", target_distance=2.0))
    assert ex.behaviour == "flee" and a[YAW] != 0 and a[MOVE] == 2


def test_in_water_it_swims_forward_and_rises():
    ex = Explorer(np.random.default_rng(2))
    ex.reset(None, _info())
    acts = np.stack([ex.act(None, _info(in_water=True)) for _ in range(60)])
    assert ex.behaviour in ("swim", "turn", "look")
    assert (acts[:, MOVE] == 1).mean() > 0.5 and acts[:, JUMP].mean() > 0.3


def test_placing_selects_a_block_slot_and_aims_down():
    ex = Explorer(np.random.default_rng(3))
    inv = [(None, 0)] * 9
    inv[4] = ("dirt", 5)
    info = _info(inventory=inv, target_block="grass", target_distance=2.0)
    ex.reset(None, info)
    ex._start(info, "place")
    ex.left = 40  # long enough to aim (up to 14 steps) and then place
    acts = []
    pitch = 0.0
    for _ in range(20):
        a = ex.act(
            None, _info(inventory=inv, target_block="grass", target_distance=2.0, pitch=pitch)
        )
        pitch += {0: 0.0, 1: 5.0, 2: -5.0}[int(a[PITCH])]
        acts.append(a)
    acts = np.stack(acts)
    assert acts[0, HOTBAR] == 5  # slot index 4 is hotbar key 5
    assert pitch < -20 and acts[:, USE].any()
    assert not acts[(acts[:, PITCH] != 0), USE].any()  # it aims before it places


@pytest.fixture(scope="module")
def blockworld_run():
    import envs  # noqa: F401  (registers the ids)

    env = gym.make("worldsim/BlockWorld-v0")
    cov = Coverage.for_spec(ActionSpec.from_space(env.action_space), ACTION_NAMES)
    ex = Explorer(np.random.default_rng(0))
    obs, info = env.reset(seed=0)
    ex.reset(obs, info)
    start = np.asarray(info["position"])
    prev, frozen, longest, far = None, 0, 0, 0.0
    for _ in range(600):
        a = ex.act(obs, info)
        nxt, _, term, trunc, info = env.step(a)
        frozen = frozen + 1 if np.array_equal(nxt, obs) else 0
        longest = max(longest, frozen)
        obs = nxt
        cov.add(a, prev, info)
        prev = a
        far = max(far, float(np.linalg.norm(np.asarray(info["position"]) - start)))
        if term or trunc:
            break
    env.close()
    return cov, longest, far


def test_explorer_data_covers_every_movement_and_holds_turns(blockworld_run):
    cov, longest_frozen, far = blockworld_run
    doc = cov.to_json()
    comps = doc["components"]
    for name in ("move", "strafe", "yaw", "pitch"):
        assert min(comps[name]["share"]) > 0.01, name
    for name in ("jump", "attack"):
        assert comps[name]["share"][1] > 0.03, name
    assert 5 <= comps["yaw"]["mean_run_length"] <= 30  # a turn is held long enough to show
    assert doc["idle_share"] < 0.1
    assert longest_frozen < 60  # no long stretch in which nothing on screen changes
    assert far > 5.0
    assert doc["events"]["mined"]["count"] >= 1
