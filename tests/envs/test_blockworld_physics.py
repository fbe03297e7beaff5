"""Physics, mining, placing and hazards on hand-built flat worlds."""

from __future__ import annotations

import numpy as np
import pytest

from envs.blockworld.blocks import AIR, STONE
from envs.blockworld.physics import JUMP_VELOCITY, MAX_HEALTH, WALK_SPEED
from tests.envs.blockworld_scenes import FLOOR_Y, act, block, flat_env, give, set_block


def _ticks_to_mine(name: str) -> int:
    env = flat_env()
    set_block(env, 0, FLOOR_Y - 1, 0, name)
    env.engine.place_player(0, 0.5, float(FLOOR_Y), 0.5, pitch=-85.0)
    for tick in range(1, 400):
        _, _, _, _, info = env.step(act(attack=1))
        if info["mined"] is not None:
            assert info["mined"] == name
            return tick
    raise AssertionError(f"{name} never broke")


def test_cannot_walk_through_stone():
    env = flat_env()
    for y in (FLOOR_Y, FLOOR_Y + 1):
        set_block(env, 0, y, 3, "stone")
    for _ in range(60):
        _, _, _, _, info = env.step(act(move=1))
    x, y, z = info["position"]
    assert z == pytest.approx(3 - 0.3, abs=1e-3)  # flush against the wall's face
    assert x == pytest.approx(0.5) and y == pytest.approx(FLOOR_Y, abs=1e-3)


def test_walk_speed_and_turn_rate_match_the_documented_timing():
    env = flat_env()
    for _ in range(20):
        _, _, _, _, info = env.step(act(move=1))
    assert info["position"][2] - 0.5 == pytest.approx(20 * WALK_SPEED, rel=1e-6)
    _, _, _, _, info = env.step(act(yaw=2))
    assert info["yaw"] == pytest.approx(5.0)
    _, _, _, _, info = env.step(act(pitch=1))
    assert info["pitch"] == pytest.approx(5.0)


def test_jump_rises_a_bit_over_one_block_and_lands():
    env = flat_env()
    heights = [env.step(act(jump=1 if i == 0 else 0))[4]["position"][1] for i in range(20)]
    peak = max(heights) - FLOOR_Y
    assert 1.1 < peak < 1.4
    assert heights[-1] == pytest.approx(FLOOR_Y, abs=1e-3)
    assert JUMP_VELOCITY > 0


def test_falls_when_the_block_underneath_is_mined():
    env = flat_env()
    for y in range(FLOOR_Y - 5, FLOOR_Y - 1):  # a 4-block shaft under the player
        set_block(env, 0, y, 0, "air")
    env.engine.place_player(0, 0.5, float(FLOOR_Y), 0.5, pitch=-85.0)
    mined_at = None
    for tick in range(80):
        _, _, _, _, info = env.step(act(attack=1 if mined_at is None else 0))
        if info["mined"] == "stone":
            mined_at = tick
    assert mined_at is not None
    assert info["position"][1] == pytest.approx(FLOOR_Y - 5, abs=1e-3)
    assert info["inventory"][0] == ("stone", 1)
    assert "collect_stone" in info["achievements"]


def test_mining_stone_takes_longer_than_dirt():
    dirt = _ticks_to_mine("dirt")
    stone = _ticks_to_mine("stone")
    assert stone > dirt > 1


def test_bedrock_never_breaks():
    env = flat_env()
    set_block(env, 0, FLOOR_Y - 1, 0, "bedrock")
    env.engine.place_player(0, 0.5, float(FLOOR_Y), 0.5, pitch=-85.0)
    for _ in range(300):
        _, _, _, _, info = env.step(act(attack=1))
        assert info["mined"] is None
    assert block(env, 0, FLOOR_Y - 1, 0) == "bedrock"


def test_placed_block_appears_in_the_next_frame():
    env = flat_env(width=48, height=48)
    give(env, 0, "dirt", 3)
    env.engine.place_player(0, 0.5, float(FLOOR_Y), 0.5, pitch=-40.0)
    before, *_ = env.step(act())
    target = env.engine.info(0)["target_position"]
    after, reward, _, _, info = env.step(act(use=1))
    assert info["placed"] == "dirt"
    assert block(env, target[0], target[1] + 1, target[2]) == "dirt"
    assert info["inventory"][0] == ("dirt", 2)
    assert reward >= 1.0 and "place_block" in info["achievements"]
    centre = (slice(18, 30), slice(18, 30))
    diff = np.abs(after[centre].astype(int) - before[centre].astype(int)).mean()
    assert diff > 10, "the new block should be plainly visible under the crosshair"


def test_never_places_inside_the_player():
    env = flat_env()
    give(env, 0, "dirt", 3)
    env.engine.place_player(0, 0.5, float(FLOOR_Y), 0.5, pitch=-85.0)  # the cell above is ours
    for _ in range(10):
        _, _, _, _, info = env.step(act(use=1))
        assert info["placed"] is None
    assert block(env, 0, FLOOR_Y, 0) == "air"


def test_lava_hurts_and_kills():
    env = flat_env()
    set_block(env, 0, FLOOR_Y, 0, "lava")
    _, reward, terminated, _, info = env.step(act())
    assert info["health"] < MAX_HEALTH and not terminated
    assert reward == pytest.approx(-0.1 * (MAX_HEALTH - info["health"]))
    for _ in range(200):
        _, _, terminated, _, info = env.step(act())
        if terminated:
            break
    assert terminated and info["health"] == 0


def test_fall_damage_from_ten_blocks():
    env = flat_env()
    env.engine.place_player(0, 0.5, FLOOR_Y + 10.0, 0.5)
    for _ in range(60):
        _, _, _, _, info = env.step(act())
    assert info["on_ground"]
    assert info["health"] == MAX_HEALTH - 7  # 1 per block beyond 3


def test_water_slows_sinking_and_jump_swims_up():
    env = flat_env()
    for x in range(-3, 4):
        for z in range(-3, 4):
            for y in range(FLOOR_Y, FLOOR_Y + 6):
                set_block(env, x, y, z, "water")
    env.engine.place_player(0, 0.5, FLOOR_Y + 3.0, 0.5)
    ys = [env.step(act())[4]["position"][1] for _ in range(5)]
    assert ys[-1] < FLOOR_Y + 3.0 and ys[0] - ys[-1] < 0.5  # sinks, slowly
    up = [env.step(act(jump=1))[4] for _ in range(10)]
    assert up[-1]["position"][1] > ys[-1]
    assert "swim" in up[-1]["achievements"] and up[-1]["in_water"]


def test_hotbar_selection_shows_in_info_and_hud():
    env = flat_env()
    give(env, 0, "dirt", 5)
    give(env, 4, "stone", 64)
    first, *_ = env.step(act(hotbar=1))
    obs, _, _, _, info = env.step(act(hotbar=5))
    assert info["selected_slot"] == 4
    hud_rows = slice(first.shape[0] - 8, first.shape[0])
    assert not np.array_equal(first[hud_rows], obs[hud_rows])


def test_edits_persist_after_walking_away():
    env = flat_env()
    set_block(env, 5, FLOOR_Y - 1, 5, "air")
    env.engine.place_player(0, 2000.5, 60.0, 0.5)  # far away: the flat chunks unload
    assert block(env, 2000, 0, 0) == "bedrock"  # generated terrain: the flat world had stone
    env.engine.place_player(0, 0.5, float(FLOOR_Y), 0.5)
    assert block(env, 0, 0, 0) == "stone"  # the hand-built chunks came back, not regenerated
    assert block(env, 5, FLOOR_Y - 1, 5) == "air"
    assert block(env, 6, FLOOR_Y - 1, 5) == "stone"


def test_lava_is_not_water_in_info():
    env = flat_env()
    for x in range(-2, 3):
        for z in range(-2, 3):
            set_block(env, x, FLOOR_Y - 1, z, "lava")
    env.engine.place_player(0, 0.5, FLOOR_Y - 1.0, 0.5)
    info = env.step(act())[4]
    assert info["health"] < MAX_HEALTH and info["in_water"] is False


def test_a_full_hotbar_leaves_the_block_instead_of_destroying_its_drop():
    env = flat_env()
    for slot in range(9):
        give(env, slot, "stone", 64)
    set_block(env, 0, FLOOR_Y + 1, 2, "wood")
    for _ in range(40):
        _, reward, _, _, info = env.step(act(attack=1))
        assert info["mined"] is None and reward == 0.0
    assert block(env, 0, FLOOR_Y + 1, 2) == "wood" and info["target_block"] == "wood"
    give(env, 8, "stone", 0)  # room again: the next hit breaks it
    _, reward, _, _, info = env.step(act(attack=1))
    assert info["mined"] == "wood" and "collect_wood" in info["achievements"] and reward == 1.0


def test_blocks_below_can_be_targeted_from_the_top_of_the_world():
    env = flat_env()
    for x in range(-3, 4):
        for z in range(-3, 6):
            set_block(env, x, 63, z, "stone")  # a platform on the top layer
    env.engine.place_player(0, 0.5, 64.0, 0.5, pitch=-30.0)
    info = env.step(act())[4]
    assert info["target_block"] == "stone" and info["target_distance"] < 4.5


def test_a_short_view_distance_never_reaches_round_to_the_far_side_of_the_world():
    """The loaded square wraps: the crosshair must not reach a block 128 blocks away."""
    env = flat_env(view_distance=1.0)
    env.engine.place_player(0, 40.5, float(FLOOR_Y), 0.5, yaw=90.0)  # walking towards +x
    regions = env.engine.regions  # the square loaded around x = 40.5 (x in [-32, 96)), made flat again
    regions.blocks[0][...] = AIR
    regions.blocks[0][:, :, :FLOOR_Y] = STONE
    regions.refresh(0)
    for y in (FLOOR_Y, FLOOR_Y + 1, FLOOR_Y + 2):
        set_block(env, -32, y, 0, "wood")  # on the far edge of the loaded square
    for _ in range(300):
        info = env.step(act(move=1))[4]
        assert info["target_block"] != "wood", info["position"]


def test_an_achievement_pays_its_reward_once_per_episode():
    """Crafter-style: +1 the first time dirt is collected; the second block of dirt pays 0."""
    env = flat_env()
    for y in (FLOOR_Y - 1, FLOOR_Y - 2):  # two dirt blocks, one under the other, under the player
        set_block(env, 0, y, 0, "dirt")
    env.engine.place_player(0, 0.5, float(FLOOR_Y), 0.5, pitch=-85.0)
    paid = []
    for _ in range(200):
        _, reward, _, _, info = env.step(act(attack=1))
        if info["mined"] == "dirt":
            paid.append(reward)
        if len(paid) == 2:
            break
    assert paid == [1.0, 0.0]
    assert info["inventory"][0] == ("dirt", 2) and info["achievements"].count("collect_dirt") == 1
