"""Gymnasium registration by string entry points: the core never imports ``envs``."""

import gymnasium as gym

BLOCKWORLD_ID = "worldsim/BlockWorld-v0"
DREAM_ID = "worldsim/Dream-v0"
DREAM_MAX_EPISODE_STEPS = 1000
"""The dream's default episode length: 50 s of play at 20 ticks/s."""


def register_envs() -> None:
    """Register WorldSim's env ids. Idempotent, so every import path may call it."""
    if BLOCKWORLD_ID not in gym.registry:
        gym.register(
            id=BLOCKWORLD_ID,
            entry_point="envs.blockworld.env:BlockWorldEnv",
            vector_entry_point="envs.blockworld.vector:BlockWorldVectorEnv",
            max_episode_steps=None,
        )
    if DREAM_ID not in gym.registry:
        gym.register(
            id=DREAM_ID,
            entry_point="envs.dream:DreamEnv",
            vector_entry_point="envs.dream_vector:DreamVectorEnv",
            max_episode_steps=DREAM_MAX_EPISODE_STEPS,
        )
