"""The random agent: every action component uniform and independent, every step.

It is the baseline the recorder uses for envs WorldSim knows nothing about. Its data is
the least realistic (a turn rarely lasts two steps), so for BlockWorld prefer the
explorer, whose held actions show what a turn or a walk looks like.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from worldsim.spaces import ActionSpec


class RandomAgent:
    """Uniform over a ``Discrete`` or ``MultiDiscrete`` action space.

    Args:
        action_space: the env's action space (or its ActionSpec).
        rng: where every draw comes from, so a seeded run repeats exactly.
    """

    name = "random"

    def __init__(self, action_space: gym.Space | ActionSpec, rng: np.random.Generator) -> None:
        self.spec = (
            action_space
            if isinstance(action_space, ActionSpec)
            else ActionSpec.from_space(action_space)
        )
        self.rng = rng
        self._nvec = np.asarray(self.spec.nvec, dtype=np.int64)

    def reset(self, obs: np.ndarray, info: dict[str, Any]) -> None:
        """Start of an episode; the random agent keeps no state."""

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        """One action as int64 [num_components] (a ``Discrete`` action has one component)."""
        return self.rng.integers(0, self._nvec)
