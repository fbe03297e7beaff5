"""BlockWorld: a seeded, endless, Minecraft-like voxel world as Gymnasium envs.

``BlockWorldEnv`` is one world (``worldsim/BlockWorld-v0``), ``BlockWorldVectorEnv`` steps
and renders N worlds in one call, and ``DiscreteActions`` maps a short ``Discrete`` list of
useful moves onto the ``MultiDiscrete`` controls. The engine underneath (world generation,
player physics, raycast rendering) is numba code with no torch dependency.
"""

from envs.blockworld.achievements import ACHIEVEMENT_NAMES
from envs.blockworld.blocks import BLOCK_NAMES
from envs.blockworld.env import ACTION_NAMES, ACTION_NVEC, BlockWorldEnv
from envs.blockworld.vector import BlockWorldVectorEnv
from envs.blockworld.wrappers import DISCRETE_ACTION_NAMES, DiscreteActions

__all__ = [
    "ACHIEVEMENT_NAMES",
    "ACTION_NAMES",
    "ACTION_NVEC",
    "BLOCK_NAMES",
    "DISCRETE_ACTION_NAMES",
    "BlockWorldEnv",
    "BlockWorldVectorEnv",
    "DiscreteActions",
]
