"""The native batched dream env: N worlds, one batched model call per step.

``gymnasium.make_vec("worldsim/Dream-v0", num_envs=N, vectorization_mode="vector_entry_point")``
builds this class. It does not wrap N single envs: all N worlds live in one runtime batch,
so a step is one forward pass over N frames, which is what makes thousands of steps per
second possible on a CPU.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.dream import (
    RENDER_FPS,
    ResetNeeded,
    check_prompt,
    check_reset_options,
    engine_context,
    load_setup,
    make_source_env,
    recording_prompt,
)
from envs.vector_seeds import reseed, world_seeds
from worldsim.errors import WorldSimError


class DreamVectorEnv(VectorEnv):
    """``num_envs`` dream worlds stepped together; see :class:`envs.dream.DreamEnv`.

    Autoreset is ``NEXT_STEP``, Gymnasium's default: the step after an episode ends
    ignores that world's action, restarts it from a fresh engine context and returns its
    first frame with reward 0.

    ``reset(seed=s)`` starts world ``i`` as ``DreamEnv.reset(seed=s + i)`` would, and each
    world draws the engine seeds of its later resets and autoresets from its own generator,
    as that single env draws them from its ``np_random``. So at ``temperature=0`` and
    ``precision="fp32"`` a vector env and single envs with those seeds give the same frames,
    across episode ends too (as ``gymnasium.make_vec(..., vectorization_mode="sync")``
    would). In bf16 the matmuls round differently for different batch sizes, so now and
    then a token comes out otherwise and the worlds part ways.
    A list of seeds sets each world's seed. ``options={"frames": uint8[N,T,H,W,3],
    "actions": [N,T-1,...]}`` or ``{"recording": PATH, "episode": e, "t": t}`` (every
    world starts there) prompt from frames instead.

    Args:
        num_envs: Number of worlds N.
        checkpoint, backend, chunks, temperature, width, height, context, device, precision, guidance, ranked_moves: as for
            :class:`~envs.dream.DreamEnv`.
        render_mode: ``rgb_array`` (the N frames as a tuple) or None.
        max_episode_steps: Truncate each world's episode after this many steps (None or -1:
            never, as ``max_episode_steps=-1`` is for ``gymnasium.make``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": RENDER_FPS, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        checkpoint: str | None = None,
        backend: str = "torch",
        chunks: int | None = None,
        temperature: float | None = None,
        width: int | None = None,
        height: int | None = None,
        context: int | None = None,
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
        device: str = "auto",
        precision: str | None = None,
        guidance: float | None = None,
        ranked_moves: bool | None = None,
    ):
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise WorldSimError(f"num_envs must be a positive integer, got {num_envs!r}")
        if render_mode not in (None, "rgb_array"):
            raise WorldSimError(f"the vector dream env renders 'rgb_array' or None, got {render_mode!r}")
        if max_episode_steps == -1:
            max_episode_steps = None
        if max_episode_steps is not None and (
            not isinstance(max_episode_steps, (int, np.integer)) or isinstance(max_episode_steps, bool) or max_episode_steps < 1
        ):
            raise WorldSimError(f"max_episode_steps must be positive, or None or -1 for no limit, got {max_episode_steps}")
        self.setup = load_setup(checkpoint, backend, chunks, temperature, width, height, context, device, precision, guidance,
                                ranked_moves)
        self.model = self.setup.model
        self.num_envs = int(num_envs)
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        self.single_action_space = self.setup.action_spec.to_space()
        self.single_observation_space = self.setup.observation_space
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.context_length = self.setup.context
        self._engine: gym.Env | None = None
        self._frames: np.ndarray | None = None
        self._steps = np.zeros(self.num_envs, dtype=np.int64)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._rngs: list[np.random.Generator | None] = [None] * self.num_envs
        """World i's generator: the ``np_random`` of the single env it mirrors."""

    def _engine_env(self) -> gym.Env:
        if self._engine is None:
            if self.setup.source_env is None:
                raise WorldSimError(
                    "this checkpoint does not name the env it was trained on; reset with "
                    "options={'frames': ...} or {'recording': ...} instead of seeds"
                )
            self._engine = make_source_env(*self.setup.source_env)
        return self._engine

    def _engine_prompts(self, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Engine contexts for ``seeds``, stacked: frames ``[n, T, H, W, 3]``, actions ``[n, T-1, C]``."""
        contexts = [engine_context(self._engine_env(), s, self.context_length) for s in seeds]
        shape = self.single_observation_space.shape
        if contexts[0][0].shape[1:] != shape:
            raise WorldSimError(
                f"{self.setup.source_env[0]} renders {list(contexts[0][0].shape[1:])} frames "
                f"but the dream runs at {list(shape)}"
            )
        t = min(f.shape[0] for f, _ in contexts)
        # An episode that ended inside the context is shorter; keep every world's last t frames.
        frames = np.stack([f[-t:] for f, _ in contexts])
        actions = np.stack([a[a.shape[0] - (t - 1) :] for _, a in contexts])
        return frames, actions

    def _draw(self, w: int) -> int:
        rng = self._rngs[w]
        assert rng is not None
        return int(rng.integers(2**31 - 1))

    def _restart_seed(self, w: int) -> int:
        """World ``w``'s engine seed for a reset without a seed, drawn as the single env
        draws it, followed by the draw that env makes for its sampler."""
        engine_seed = self._draw(w)
        self._draw(w)
        return engine_seed

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        seeds = world_seeds(seed, self.num_envs)
        super().reset(seed=seeds[0])
        options = options or {}
        check_reset_options(options)
        reseed(self._rngs, seeds)
        n, shape, spec = self.num_envs, self.single_observation_space.shape, self.setup.action_spec
        if "frames" in options:
            frames = np.asarray(options["frames"])
            if frames.ndim != 5 or frames.shape[0] != n:
                raise ValueError(f"prompt frames must have shape [{n}, T, H, W, 3], got {list(frames.shape)}")
            acts = options.get("actions")
            if acts is not None:
                acts = np.asarray(acts)
                if acts.shape[:2] != (n, frames.shape[1] - 1):
                    raise ValueError(f"prompt actions must have shape [{n}, {frames.shape[1] - 1}, ...] for "
                                     f"{n} worlds of {frames.shape[1]} frames, got {list(acts.shape)}")  # fmt: skip
            pairs = [check_prompt(frames[i], None if acts is None else acts[i], spec, shape) for i in range(n)]
            frames = np.stack([f for f, _ in pairs])
            actions = np.stack([a for _, a in pairs])
        elif "recording" in options:
            f, a = recording_prompt(options, self.context_length, spec, shape)
            frames, actions = np.repeat(f[None], n, axis=0), np.repeat(a[None], n, axis=0)
        else:
            engine_seeds = [self._draw(w) if s is None else s for w, s in enumerate(seeds)]
            frames, actions = self._engine_prompts(engine_seeds)
        kind = "frames" if "frames" in options else "recording" if "recording" in options else "engine"
        info = self._prompt_info(np.arange(n), kind, actions, None if kind != "engine" else engine_seeds)
        for w in range(n):
            self._draw(w)  # the single env's draw for its sampler, to keep the streams in step
        self.model.reseed(int(self.np_random.integers(2**31 - 1)))
        self.model.prompt(frames, actions)
        self._frames = frames[:, -1].copy()
        self._steps[:] = 0
        self._autoreset[:] = False
        return self._frames.copy(), info

    def _prompt_info(self, worlds: np.ndarray, kind: str, actions: np.ndarray, engine_seeds: list[int] | None) -> dict[str, Any]:
        """The single env's reset info for ``worlds``, as Gymnasium's vector envs merge infos:
        one array per key over all N worlds, and a ``_key`` mask of the worlds that have it."""
        n = self.num_envs
        mask = np.zeros(n, dtype=bool)
        mask[worlds] = True
        prompt = np.full(n, None, dtype=object)
        prompt[worlds] = kind
        context_frames = np.zeros(n, dtype=np.int64)
        context_frames[worlds] = actions.shape[1] + 1
        context_actions = np.zeros((n, *actions.shape[1:]), dtype=actions.dtype)
        context_actions[worlds] = actions
        info = {"prompt": prompt, "_prompt": mask, "context_frames": context_frames, "_context_frames": mask.copy(),
                "context_actions": context_actions, "_context_actions": mask.copy()}  # fmt: skip
        if engine_seeds is not None:
            seeds = np.zeros(n, dtype=np.int64)
            seeds[worlds] = engine_seeds
            info.update(engine_seed=seeds, _engine_seed=mask.copy())
        return info

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._frames is None:
            raise ResetNeeded("call reset() before step()")
        acts = self.setup.action_spec.as_array(actions, (self.num_envs,))
        out = self.model.step(acts)  # all N worlds in one batched call
        frames = np.array(out.frames, dtype=np.uint8, copy=True)
        rewards = np.asarray(out.reward, dtype=np.float64).copy()
        terminated = np.asarray(out.done, dtype=bool).copy()
        self._steps += 1
        truncated = np.zeros(self.num_envs, dtype=bool)
        if self.max_episode_steps is not None:
            truncated = self._steps >= self.max_episode_steps
        restart = np.flatnonzero(self._autoreset)
        info: dict[str, Any] = {"step": self._steps.copy(), "_step": ~self._autoreset}
        if restart.size:
            seeds = [self._restart_seed(int(w)) for w in restart]
            ctx_frames, ctx_actions = self._engine_prompts(seeds)
            info.update(self._prompt_info(restart, "engine", ctx_actions, seeds))
            info["step"][restart] = 0
            if restart.size == self.num_envs:  # no world stepped: Gymnasium would have no "step" key
                del info["step"], info["_step"]
            # Only these worlds restart; the others keep their KV cache.
            self.model.prompt(ctx_frames, ctx_actions, worlds=restart)
            frames[restart] = ctx_frames[:, -1]
            rewards[restart] = 0.0
            terminated[restart] = False
            truncated[restart] = False
            self._steps[restart] = 0
        self._autoreset = terminated | truncated
        self._frames = frames
        return frames.copy(), rewards, terminated, truncated, info

    def render(self) -> tuple[np.ndarray, ...] | None:
        if self.render_mode is None:
            return None
        if self._frames is None:
            raise ResetNeeded("call reset() before render()")
        return tuple(f.copy() for f in self._frames)

    def close_extras(self, **kwargs: Any) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
