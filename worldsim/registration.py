"""Gymnasium registration by string entry points: the core never imports ``envs``."""

import gymnasium as gym

BLOCKWORLD_ID = "worldsim/BlockWorld-v0"


def register_envs() -> None:
    """Register WorldSim's env ids. Idempotent, so every import path may call it."""
    if BLOCKWORLD_ID not in gym.registry:
        gym.register(
            id=BLOCKWORLD_ID,
            entry_point="envs.blockworld.env:BlockWorldEnv",
            vector_entry_point="envs.blockworld.vector:BlockWorldVectorEnv",
            max_episode_steps=None,
        )
