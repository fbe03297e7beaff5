"""Hand-built BlockWorld scenes for physics and mining tests."""

from __future__ import annotations

import numpy as np

from envs.blockworld.blocks import AIR, BLOCK_ID, STONE
from envs.blockworld.env import BlockWorldEnv

FLOOR_Y = 30
"""Top solid layer of the flat test world is y = FLOOR_Y - 1; players stand at y = FLOOR_Y."""


def flat_env(width: int = 32, height: int = 32, **kwargs) -> BlockWorldEnv:
    """A BlockWorld env whose world is replaced by flat stone up to y = FLOOR_Y - 1.

    The player stands at the centre of block (0, FLOOR_Y, 0), looking along +z, at noon.
    """
    env = BlockWorldEnv(width=width, height=height, **kwargs)
    env.reset(seed=0, options={"time_of_day": 0.25})
    regions = env.engine.regions
    regions.blocks[0][...] = AIR
    regions.blocks[0][:, :, :FLOOR_Y] = STONE
    regions.refresh(0)
    env.engine.place_player(0, 0.5, float(FLOOR_Y), 0.5)
    return env


def set_block(env: BlockWorldEnv, x: int, y: int, z: int, name: str) -> None:
    env.engine.regions.set_block(0, x, y, z, BLOCK_ID[name])


def block(env: BlockWorldEnv, x: int, y: int, z: int) -> str:
    from envs.blockworld.blocks import BLOCK_NAMES

    return BLOCK_NAMES[env.engine.regions.get_block(0, x, y, z)]


def give(env: BlockWorldEnv, slot: int, name: str, count: int) -> None:
    players = env.engine.players
    players["inv_id"][0, slot] = BLOCK_ID[name]
    players["inv_count"][0, slot] = count


def act(**parts: int) -> np.ndarray:
    """A MultiDiscrete action from named components (the rest 0)."""
    from envs.blockworld.env import ACTION_NAMES

    return np.array([parts.get(n, 0) for n in ACTION_NAMES], dtype=np.int64)
