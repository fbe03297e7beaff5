"""The reference env side of an evaluation: which seeds, which policy, which probe scripts,
and trajectories recorded from any registered Gymnasium pixel env.

**Seeds.** Training data comes from ``worldsim record`` runs whose reset seeds are small
(``--seed S`` gives vector env ``i`` the seed ``S + i``, and the recipe uses ``S < 10^5``)
or hashes in ``[2^24, 2^31)`` (single-env runs, ``agents.rollout.EPISODE_SEEDS``). The
evaluation draws its reset seeds from
``[HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + 10^5)`` and the inverse-dynamics model its
training data from ``[IDM_SEED_BASE, ...)``, so no evaluated world was seen in training,
and the IDM never trains on an evaluated world either.

**Policy.** Actions come from the explorer for BlockWorld (its held walks and turns are
what the model was trained on) and from a uniform random policy for any other env. The
explorer lives in ``agents/`` and is imported only when BlockWorld is evaluated, so this
core module stays env-agnostic.

**Probes** are per-env action scripts for object permanence, kept as data in
:data:`PROBES`: an env that is not in the table gets the permanence section skipped with
that reason.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from worldsim.errors import WorldSimError
from worldsim.spaces import ActionSpec, native_action

HELDOUT_SEED_BASE = 1_000_000
"""First reset seed of the evaluation's held-out worlds."""
STABILITY_SEED_BASE = HELDOUT_SEED_BASE + 50_000
"""Reset seeds of the long stability rollout (inside the held-out range, apart from episodes)."""
IDM_SEED_BASE = 2_000_000
"""First reset seed of the inverse-dynamics model's training data."""

POLICIES: dict[str, str] = {"worldsim/BlockWorld-v0": "explorer"}
"""Env id -> the agent of ``agents.rollout.make_agent`` that drives it; others get random."""


@dataclass(frozen=True)
class Probe:
    """Action scripts that test object permanence in one env."""

    turn: tuple[int, ...]
    """The action that turns in place."""
    full_turn_steps: int
    """Steps of ``turn`` that make a full circle."""
    forward: tuple[int, ...]
    back: tuple[int, ...]
    walk_steps: int
    """Steps walked away before walking back the same number."""


PROBES: dict[str, Probe] = {
    # BlockWorld turns 5 degrees per step (72 steps a circle) and walks 0.216 block per step.
    "worldsim/BlockWorld-v0": Probe(
        turn=(0, 0, 0, 1, 0, 0, 0, 0), full_turn_steps=72,
        forward=(1, 0, 0, 0, 0, 0, 0, 0), back=(2, 0, 0, 0, 0, 0, 0, 0), walk_steps=20,
    ),
}  # fmt: skip


class Policy(Protocol):
    """What chooses actions in the reference env (the agents in ``agents/`` fit)."""

    def reset(self, obs: np.ndarray, info: dict[str, Any]) -> None: ...
    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray: ...


class UniformPolicy:
    """Every action component uniform and independent (for envs WorldSim knows nothing of)."""

    def __init__(self, spec: ActionSpec, rng: np.random.Generator) -> None:
        self._nvec = np.asarray(spec.nvec, dtype=np.int64)
        self.rng = rng

    def reset(self, obs: np.ndarray, info: dict[str, Any]) -> None:
        """The policy keeps no state."""

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        return self.rng.integers(0, self._nvec)


def make_policy(env_id: str, spec: ActionSpec, rng: np.random.Generator) -> tuple[Policy, str]:
    """The policy for ``env_id`` and its name (see :data:`POLICIES`)."""
    name = POLICIES.get(env_id)
    if name is None:
        return UniformPolicy(spec, rng), "random"
    make_agent = importlib.import_module("agents.rollout").make_agent
    return make_agent(name, env_id, spec, rng), name


@dataclass
class Trajectory:
    """One stretch of an episode in the reference env."""

    frames: np.ndarray
    """uint8 [T+1, H, W, 3]."""
    actions: np.ndarray
    """int64 [T, C]: actions[i] led from frames[i] to frames[i+1]."""
    rewards: np.ndarray
    """float32 [T]."""
    terminated: np.ndarray
    """bool [T]."""
    resets: np.ndarray
    """bool [T]: the episode ended before frames[i+1], which is the first frame of a new one."""
    seed: int


class ReferenceEnv:
    """A Gymnasium pixel env driven by action arrays.

    Args:
        env_id: a registered id, or ``module:Id`` (the module is imported first).
        kwargs: keyword arguments for ``gymnasium.make``.
    """

    def __init__(self, env_id: str, kwargs: dict[str, Any]) -> None:
        from worldsim.registration import resolve_env_id

        try:
            self.env = gym.make(resolve_env_id(env_id), **kwargs)
        except gym.error.Error as e:
            raise WorldSimError(f"cannot make the reference env {env_id!r}: {e}") from None
        except TypeError as e:
            raise WorldSimError(f"env {env_id!r} does not accept {sorted(kwargs)}: {e}") from None
        space = self.env.observation_space
        if not (isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3 and space.shape[2] == 3):
            raise WorldSimError(f"{env_id}: observations must be uint8 images [H, W, 3], got {space}")
        self.env_id = env_id.split(":")[-1]
        self.spec = ActionSpec.from_space(self.env.action_space)
        self.shape: tuple[int, int] = tuple(space.shape[:2])

    def code_digest(self) -> str | None:
        """A hash of the env's code, so that a cache of what was learnt from it goes stale with it.

        The code is the ``.py`` files of the package that defines the env's class (all of them:
        its rendering or physics may live beside it, as BlockWorld's do), or that module's file
        alone when it is in no package (a user's ``my_envs.py``). None when the class has no
        source file to read.
        """
        module = sys.modules.get(type(self.env.unwrapped).__module__)
        file = getattr(module, "__file__", None)
        if not file:
            return None
        path = Path(file).resolve()
        files = sorted({path, *path.parent.glob("*.py")}) if getattr(module, "__package__", None) else [path]
        digest = hashlib.sha256()
        try:
            for f in files:
                digest.update(f"{f.name}\0{f.stat().st_size}\0".encode())
                digest.update(f.read_bytes())
        except OSError:
            return None
        return digest.hexdigest()[:16]

    def rollout(
        self, seed: int, steps: int, policy: Policy | None = None, script: np.ndarray | None = None, stop_at_end: bool = False
    ) -> Trajectory:
        """Reset with ``seed`` and take ``steps`` actions from ``policy`` or ``script`` [steps, C].

        An episode that ends is reset with the next seed and the rollout goes on (``resets``
        marks where), so the trajectory always has ``steps`` steps. With ``stop_at_end`` it
        stops instead at the step that ended the episode (its last frame the episode's
        last, ``resets[-1]`` True): a caller that wants ``steps`` inside one episode then
        learns at once that this one is too short, rather than after ``steps`` steps.
        """
        obs, info = self.env.reset(seed=seed)
        if policy is not None:
            policy.reset(obs, info)
        # Copies: an env may render every frame into the same buffer.
        frames, actions = [np.array(obs)], []
        rewards = np.zeros(steps, np.float32)
        terminated = np.zeros(steps, bool)
        resets = np.zeros(steps, bool)
        next_seed = seed + 1
        for i in range(steps):
            a = policy.act(obs, info) if script is None else script[i]
            a = self.spec.as_array(a, ())
            obs, r, term, trunc, info = self.env.step(native_action(self.env.action_space, a))
            rewards[i], terminated[i] = r, term
            if term or trunc:
                resets[i] = True
                if stop_at_end:
                    frames.append(np.array(obs))
                    actions.append(a)
                    rewards, terminated, resets = rewards[: i + 1], terminated[: i + 1], resets[: i + 1]
                    break
                obs, info = self.env.reset(seed=next_seed)
                next_seed += 1
                if policy is not None:
                    policy.reset(obs, info)
            frames.append(np.array(obs))
            actions.append(a)
        acts = np.stack(actions) if actions else np.zeros((0, self.spec.num_components), np.int64)
        return Trajectory(np.stack(frames), acts, rewards, terminated, resets, seed)

    def close(self) -> None:
        self.env.close()
