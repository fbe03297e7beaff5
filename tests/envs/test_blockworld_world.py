"""World generation and rendering: biomes, features, chunk seams, frame sizes and HUD."""

from __future__ import annotations

import numpy as np
import pytest

from envs.blockworld import BlockWorldEnv
from envs.blockworld.blocks import BLOCK_ID
from envs.blockworld.region import REGION, Regions
from envs.blockworld.worldgen import BIOME_NAMES, CHUNK, WORLD_HEIGHT, column, generate_chunk


def test_every_biome_appears_near_the_origin():
    found = {BIOME_NAMES[column(3, x, z)[1]] for x in range(-512, 512, 16) for z in range(-512, 512, 16)}
    assert found == set(BIOME_NAMES)


def test_loaded_region_has_terrain_features():
    regions = Regions(1)
    regions.reset_world(0, seed=11, x=0.0, z=0.0)
    counts = np.bincount(regions.blocks[0].ravel(), minlength=len(BLOCK_ID))
    for name in ("bedrock", "stone", "dirt", "wood", "leaves", "coal_ore", "iron_ore", "diamond_ore", "lava", "water"):
        assert counts[BLOCK_ID[name]] > 0, f"no {name} in a 128x128 region"
    assert (regions.blocks[0][:, :, 0] == BLOCK_ID["bedrock"]).all()


def test_chunks_are_deterministic_and_independent_of_load_order():
    a = np.zeros((REGION, REGION, WORLD_HEIGHT), dtype=np.uint8)
    b = np.zeros_like(a)
    for cx, cz in [(0, 0), (1, 0), (0, 1)]:
        generate_chunk(5, cx, cz, a)
    for cx, cz in [(0, 1), (1, 0), (0, 0)]:
        generate_chunk(5, cx, cz, b)
    assert np.array_equal(a, b)
    c = np.zeros_like(a)
    generate_chunk(6, 0, 0, c)
    assert not np.array_equal(a[:CHUNK, :CHUNK], c[:CHUNK, :CHUNK])


def test_tree_canopies_cross_chunk_borders_seamlessly():
    # Every leaf hangs within two blocks (sideways) of a trunk, and some of those trunks
    # stand in the neighbouring chunk: canopies are generated across chunk borders.
    regions = Regions(1)
    regions.reset_world(0, seed=2, x=0.0, z=0.0)
    lo, hi = -56, 56  # world coordinates well inside the loaded square
    idx = np.arange(lo - 2, hi + 2) % REGION
    world = regions.blocks[0][np.ix_(idx, idx)]  # (hi - lo + 4, same, H), world-ordered
    wood = world == BLOCK_ID["wood"]
    leaves = world[2:-2, 2:-2] == BLOCK_ID["leaves"]
    near = np.zeros_like(leaves)
    across = np.zeros_like(leaves)
    n = hi - lo
    chunk_of = (np.arange(lo, hi) // CHUNK)[:, None]
    for dx in range(-2, 3):
        for dz in range(-2, 3):
            for dy in range(0, 4):  # the trunk reaches up to the canopy's lower layers
                trunk = np.zeros_like(leaves)
                trunk[:, :, dy:] = wood[2 + dx : 2 + dx + n, 2 + dz : 2 + dz + n, : WORLD_HEIGHT - dy]
                near |= trunk
                other = (chunk_of != (np.arange(lo, hi)[:, None] + dx) // CHUNK) | (
                    chunk_of.T != (np.arange(lo, hi)[None, :] + dz) // CHUNK
                )
                across |= trunk & other[:, :, None]
    assert leaves.sum() > 100
    assert not (leaves & ~near).any(), "leaves without a trunk: a canopy was cut or misplaced"
    assert (leaves & across).sum() > 0, "no canopy crosses a chunk border"


@pytest.mark.parametrize("size", [(64, 64), (160, 96), (40, 72)])
def test_any_frame_size_renders(size):
    width, height = size
    env = BlockWorldEnv(width=width, height=height)
    obs, _ = env.reset(seed=1, options={"time_of_day": 0.25})
    assert obs.shape == (height, width, 3)
    # Sky at the top, ground at the bottom, and more than a flat fill in between.
    assert obs[: height // 8, :, 2].mean() > obs[: height // 8, :, 0].mean()
    assert len(np.unique(obs.reshape(-1, 3), axis=0)) > 50


def test_crosshair_marks_the_centre():
    env = BlockWorldEnv(width=64, height=64, hud=False)
    plain, _ = env.reset(seed=2)
    env_hud = BlockWorldEnv(width=64, height=64)
    with_hud, _ = env_hud.reset(seed=2)
    diff = np.any(plain != with_hud, axis=2)
    assert diff[32, 32] and diff[32, 30] and diff[30, 32]
    assert diff[58:].any()  # hotbar along the bottom
    assert not diff[5:25, 5:25].any()


def _rebuilt_frame(env) -> np.ndarray:
    """The frame drawn after every acceleration structure is recomputed from the blocks."""
    env.engine.regions.refresh(0)
    return env.engine.render()[0].copy()


def test_block_floating_above_flat_ground_shows_in_the_frame():
    # Flat ground's column peaks sit at the floor, so a ray above them leaps whole tiles:
    # a block put above them must raise the peaks, or the renderer skips right past it.
    from tests.envs.blockworld_scenes import FLOOR_Y, flat_env, set_block

    env = flat_env(width=48, height=48)
    env.engine.place_player(0, 0.5, float(FLOOR_Y), 0.5, pitch=25.0)
    before = env.engine.render()[0].copy()
    set_block(env, 0, FLOOR_Y + 6, 8, "stone")
    set_block(env, 3, FLOOR_Y + 1, 12, "dirt")
    after = env.engine.render()[0].copy()
    assert np.any(after != before, axis=2).sum() > 20, "the floating blocks should be plainly visible"
    assert np.array_equal(after, _rebuilt_frame(env))


def test_block_placed_by_the_player_matches_a_full_rebuild():
    from tests.envs.blockworld_scenes import FLOOR_Y, act, flat_env, give

    env = flat_env(width=48, height=48)
    give(env, 0, "dirt", 3)
    env.engine.place_player(0, 0.5, float(FLOOR_Y), 0.5, pitch=-40.0)
    env.step(act())
    after, *_ = env.step(act(use=1))
    assert env.engine.info(0)["placed"] == "dirt"
    peaks = env.engine.regions.peaks[0]
    assert peaks.max() == FLOOR_Y + 1, "placing on the floor raises the column peaks"
    assert np.array_equal(after, _rebuilt_frame(env))
