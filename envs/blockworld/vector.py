"""``BlockWorldVectorEnv``: N BlockWorld worlds stepped and rendered in one call."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.blockworld.achievements import ACHIEVEMENT_NAMES
from envs.blockworld.blocks import AIR, BLOCK_NAMES
from envs.blockworld.engine import Engine, EngineConfig, check_reset_options, draw_start
from envs.blockworld.env import ACTION_SPEC, DEFAULT_MAX_STEPS, TICKS_PER_SECOND
from envs.blockworld.worldgen import BIOME_NAMES
from envs.vector_seeds import reseed, world_seeds
from worldsim.errors import SettingError

_NAMES = np.array(list(BLOCK_NAMES) , dtype=object)
_NAMES[AIR] = None  # "nothing mined/placed/targeted" reads as None, as in the single env
_BIOMES = np.array(list(BIOME_NAMES), dtype=object)


class BlockWorldVectorEnv(VectorEnv):
    """``num_envs`` independent BlockWorld worlds behind Gymnasium's ``VectorEnv`` API.

    Every world runs the same step function as :class:`BlockWorldEnv` (one engine with a
    batch of worlds), and all frames come from one parallel render call. With the same
    seeds and actions its frames equal those of ``num_envs`` single envs byte for byte:
    ``reset(seed=s)`` seeds world ``i`` with ``s + i``, as Gymnasium's vector envs do.

    Autoreset is ``NEXT_STEP``: the step after a world terminates or truncates resets it
    (ignoring its action) and returns its first observation, with reward 0.

    ``info`` holds arrays with one row per world: ``health``, ``position`` (N, 3),
    ``yaw``, ``pitch``, ``time_of_day``, ``tick``, ``selected_slot``, ``on_ground`` and
    ``in_water`` (bool), ``achievements`` (bool (N, 13), columns in
    ``ACHIEVEMENT_NAMES`` order), ``inventory_items`` (object (N, 9): names or None),
    ``inventory_counts`` (N, 9), ``target_position`` (int (N, 3)) and
    ``target_distance`` (float; NaN where nothing is targeted), and object arrays
    ``mined``, ``placed``, ``target_block`` (block names or None) and ``biome``.

    Args:
        num_envs: Number of worlds.
        width, height, render_mode, max_steps, day_length, view_distance, hud: As for
            :class:`BlockWorldEnv`; ``render()`` returns a tuple of the N (H, W, 3) frames.
        render_threads: Threads that render (and step) the batch; 0 (the default) uses
            ``min(usable CPUs, num_envs)`` (:func:`worldsim.cpus.usable_cpus`). Pass 1 when several processes record at
            once, so that they do not oversubscribe the CPUs.
        max_episode_steps: What ``gymnasium.make``'s time limit is for the single env, so
            that ``gymnasium.make_vec(..., max_episode_steps=n)`` works: a world truncates
            at the smaller of this and ``max_steps``, and, as ``gymnasium.make``'s
            ``TimeLimit`` does, reports truncated at step n even when it also terminates
            there. None or -1: ``max_steps`` alone.
    """

    metadata = {
        "render_modes": ["rgb_array"],
        "render_fps": TICKS_PER_SECOND,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int,
        width: int = 64,
        height: int = 64,
        render_mode: str | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        day_length: int = 2400,
        view_distance: float = 32.0,
        hud: bool = True,
        render_threads: int = 0,
        max_episode_steps: int | None = None,
    ) -> None:
        if num_envs < 1:
            raise SettingError(f"num_envs must be >= 1, got {num_envs}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise SettingError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        if not isinstance(render_threads, int) or render_threads < 0:
            raise SettingError(f"render_threads must be an int >= 0 (0: one per CPU), got {render_threads!r}")
        if max_steps < 1:
            raise SettingError(f"max_steps must be >= 1, got {max_steps}")
        if max_episode_steps is not None and max_episode_steps != -1 and max_episode_steps < 1:
            raise SettingError(f"max_episode_steps must be >= 1, or None or -1 for no limit, got {max_episode_steps}")
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.max_episode_steps = None if max_episode_steps in (None, -1) else int(max_episode_steps)
        self.max_steps = int(max_steps) if self.max_episode_steps is None else min(int(max_steps), self.max_episode_steps)
        self.engine = Engine(num_envs, EngineConfig(width, height, day_length, view_distance, hud, render_threads))
        self.single_observation_space = gym.spaces.Box(0, 255, (height, width, 3), np.uint8)
        self.single_action_space = ACTION_SPEC.to_space()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._rngs: list[np.random.Generator | None] = [None] * num_envs
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._needs_reset = np.zeros(num_envs, dtype=np.bool_)
        self._reset_done = False

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        check_reset_options(options)  # before any world's generator is reseeded
        reseed(self._rngs, world_seeds(seed, self.num_envs))
        for w in range(self.num_envs):
            self._reset_world(w, options)
        self._needs_reset[:] = False
        self._reset_done = True
        frames = self.engine.render()
        return frames.copy(), self._info()

    def _reset_world(self, w: int, options: dict[str, Any] | None) -> None:
        rng = self._rngs[w]
        assert rng is not None
        world_seed, tod = draw_start(rng, options)
        self.engine.reset_world(w, world_seed, tod)
        self._steps[w] = 0

    def step(self, actions):
        if not self._reset_done:
            raise gym.error.ResetNeeded("call reset() before step(): there are no worlds yet")
        acts = ACTION_SPEC.as_array(actions, (self.num_envs,))  # (N, 8)
        self.engine.step(acts)
        self._steps += 1
        players = self.engine.players
        rewards = players["reward"].astype(np.float64)
        terminated = players["dead"].astype(np.bool_)
        truncated = (self._steps >= self.max_steps) & ~terminated
        if self.max_episode_steps is not None:  # the TimeLimit's flag: set even on a terminating step
            truncated |= self._steps >= self.max_episode_steps
        for w in np.flatnonzero(self._needs_reset):
            self._reset_world(int(w), None)
            rewards[w] = 0.0
            terminated[w] = False
            truncated[w] = False
        self._needs_reset = terminated | truncated
        frames = self.engine.render()
        return frames.copy(), rewards, terminated, truncated, self._info()

    def render(self) -> tuple[np.ndarray, ...] | None:
        if self.render_mode == "rgb_array":
            # A tuple of frames, as VectorEnv.render promises: Gymnasium's vector RecordVideo
            # asserts a Sequence, which an (N, H, W, 3) array is not.
            return tuple(self.engine.frames.copy())
        return None

    def close_extras(self, **kwargs: Any) -> None:
        engine = getattr(self, "engine", None)  # None when __init__ failed (gymnasium < 1.3 closes in __del__)
        if engine is not None:
            engine.close()

    def _info(self) -> dict[str, Any]:
        p = self.engine.players
        counts = p["inv_count"].copy()
        items = _NAMES[p["inv_id"]]
        items[counts == 0] = None
        has_target = p["target_block"] != AIR
        info: dict[str, Any] = {
            "health": p["health"].copy(),
            "position": p["pos"].copy(),
            "yaw": p["yaw"].copy(),
            "pitch": p["pitch"].copy(),
            "time_of_day": (p["time0"] + p["tick"] / p["day_length"]) % 1.0,
            "tick": p["tick"].copy(),
            "selected_slot": p["selected"].copy(),
            "on_ground": p["on_ground"].astype(np.bool_),
            "in_water": np.array([bool(f) and self.engine.in_water(w) for w, f in enumerate(p["in_fluid"])], np.bool_),
            "biome": _BIOMES[p["biome"]],
            "target_position": p["target_pos"].astype(np.int64),
            "target_distance": np.where(has_target, p["target_dist"], np.nan),
            "achievements": p["achieved"].astype(np.bool_),
            "inventory_items": items,
            "inventory_counts": counts,
            "mined": _NAMES[p["mined_block"]],
            "placed": _NAMES[p["placed"]],
            "target_block": _NAMES[p["target_block"]],
        }
        mask = np.ones(self.num_envs, dtype=np.bool_)
        for key in list(info):
            info["_" + key] = mask
        return info


__all__ = ["BlockWorldVectorEnv", "ACHIEVEMENT_NAMES"]
