"""``DiscreteActions``: a short list of useful BlockWorld actions as one ``Discrete`` space."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from envs.blockworld.env import ACTION_NAMES, ACTION_NVEC


def _action(**parts: int) -> tuple[int, ...]:
    unknown = set(parts) - set(ACTION_NAMES)
    if unknown:
        raise ValueError(f"unknown action components {sorted(unknown)}; expected {ACTION_NAMES}")
    return tuple(parts.get(name, 0) for name in ACTION_NAMES)


DISCRETE_ACTIONS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("noop", _action()),
    ("forward", _action(move=1)),
    ("forward_jump", _action(move=1, jump=1)),
    ("back", _action(move=2)),
    ("left", _action(strafe=1)),
    ("right", _action(strafe=2)),
    ("jump", _action(jump=1)),
    ("turn_left", _action(yaw=1)),
    ("turn_right", _action(yaw=2)),
    ("look_up", _action(pitch=1)),
    ("look_down", _action(pitch=2)),
    ("attack", _action(attack=1)),
    ("use", _action(use=1)),
    ("slot_1", _action(hotbar=1)),
    ("slot_2", _action(hotbar=2)),
    ("slot_3", _action(hotbar=3)),
)
"""(name, MultiDiscrete action) pairs; the index in this tuple is the Discrete action."""
DISCRETE_ACTION_NAMES: tuple[str, ...] = tuple(name for name, _ in DISCRETE_ACTIONS)


class DiscreteActions(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """Expose BlockWorld's ``MultiDiscrete`` controls as ``Discrete(len(DISCRETE_ACTIONS))``.

    Actions (index: name): 0 noop, 1 forward, 2 forward_jump, 3 back, 4 left, 5 right,
    6 jump, 7 turn_left, 8 turn_right, 9 look_up, 10 look_down, 11 attack, 12 use,
    13-15 select hotbar slot 1-3.

    Args:
        env: A BlockWorld env (or any env with the same ``MultiDiscrete`` action space).
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)  # so the wrapped env's spec can be made again
        gym.ActionWrapper.__init__(self, env)
        if not isinstance(env.action_space, gym.spaces.MultiDiscrete) or tuple(env.action_space.nvec) != ACTION_NVEC:
            raise ValueError(f"DiscreteActions wraps a MultiDiscrete{list(ACTION_NVEC)} env, got {env.action_space}")
        self._table = np.array([a for _, a in DISCRETE_ACTIONS], dtype=np.int64)
        self.action_space = gym.spaces.Discrete(len(DISCRETE_ACTIONS))

    def action(self, action) -> np.ndarray:
        a = np.asarray(action)
        if a.shape != () or not np.issubdtype(a.dtype, np.integer) or not 0 <= int(a) < len(self._table):
            raise ValueError(f"action must be an int in [0, {len(self._table)}), got {action!r}")
        return self._table[int(a)].copy()
