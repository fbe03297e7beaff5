"""Driving an env (single or vector) with an agent and writing every step to a recording.

:func:`record_part` is one process's share of a ``worldsim record`` run. It works for any
registered Gymnasium env with uint8 [H, W, 3] observations and a ``Discrete`` or
``MultiDiscrete`` action space, and follows the vector env's autoreset mode exactly, so
that every reset and step record holds the frame the env really returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from agents.coverage import Coverage
from worldsim.errors import WorldSimError
from worldsim.recording import RecordingWriter
from worldsim.registration import BLOCKWORLD_ID, resolve_env_id
from worldsim.spaces import ActionSpec, native_action

AGENTS = ("random", "explorer")
PROGRESS_EVERY = 64
"""Steps between progress reports: often enough for a smooth bar, rare enough to be free."""
WARMUP_STEPS = 256
"""Steps excluded from the steady-state rate (at most a fifth of the run)."""


@dataclass
class RecordConfig:
    """What ``worldsim record`` records; one field per command-line option."""

    env: str
    """Gymnasium id; ``module:Id`` imports ``module`` first (for envs registered there)."""
    agent: str = "random"
    """``random`` (any env) or ``explorer`` (BlockWorld only)."""
    steps: int = 1000
    """Step records to write in total (reset records come on top)."""
    out: str = "rollouts"
    """A ``.msgpack`` file, or a folder of shards for anything else."""
    num_envs: int = 1
    """Envs stepped together, split across the worker processes."""
    workers: int = 1
    """Processes; each runs ``num_envs / workers`` envs and writes its own shards."""
    seed: int = 0
    width: int | None = None
    """Frame width, passed to the env as ``width`` (its default when None)."""
    height: int | None = None
    shard_steps: int = 4096
    """Records per shard file."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    """Creation time shared by every worker's header (so the episodes split as one run)."""

    def make_kwargs(self) -> dict[str, Any]:
        """The env's keyword arguments: ``env_kwargs`` with ``width`` and ``height`` added.

        Raises:
            WorldSimError: ``width`` or ``height`` is also in ``env_kwargs``, with another value
                (the flag silently won, so the recording was not the size the kwargs asked for).
        """
        kwargs = dict(self.env_kwargs)
        for key, value in (("width", self.width), ("height", self.height)):
            if value is None:
                continue
            if key in kwargs and kwargs[key] != value:
                raise WorldSimError(f"--{key} {value} and --env-kwargs {key} {kwargs[key]!r} disagree; give the frame {key} once")
            kwargs[key] = value
        return kwargs


def _stored_id(env_id: str) -> str:
    """The id a recording keeps: ``module:Id`` whole, so that whoever reads it (training, the
    eval, the dream env) imports the module that registers the env, as the recording did."""
    name = resolve_env_id(env_id)
    return env_id if ":" in env_id and not name.startswith("worldsim/") else name


def make_env(env_id: str, num_envs: int, kwargs: dict[str, Any]) -> gym.Env | gym.vector.VectorEnv:
    """One env, or a vector env of ``num_envs`` (the env's own vector class where it has one)."""
    name = resolve_env_id(env_id)
    try:
        spec = gym.spec(name)
        if num_envs == 1:
            return gym.make(name, **kwargs)
        mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
        return gym.make_vec(name, num_envs=num_envs, vectorization_mode=mode, **kwargs)
    except gym.error.Error as e:
        hint = ""
        if isinstance(e, gym.error.UnregisteredEnv) and f"worldsim/{env_id}" in gym.registry:
            hint = f"; did you mean --env worldsim/{env_id}?"
        elif isinstance(e, gym.error.UnregisteredEnv) and ":" not in env_id:
            hint = f"; if a module of yours registers it, name that module too: --env my_module:{env_id}"
        raise WorldSimError(f"cannot make env {name!r}: {str(e).rstrip('.')}{hint}") from None
    except TypeError as e:
        raise WorldSimError(f"env {name!r} does not accept {sorted(kwargs)}: {e}") from None


def make_agent(name: str, env_id: str, spec: ActionSpec, rng: np.random.Generator) -> Any:
    """An agent by name, for one env of ``env_id``."""
    if name == "random":
        from agents.random_agent import RandomAgent

        return RandomAgent(spec, rng)
    if name == "explorer":
        if resolve_env_id(env_id) != BLOCKWORLD_ID:
            raise WorldSimError(
                f"the explorer drives {BLOCKWORLD_ID} only, not {env_id!r}; use --agent random"
            )
        from agents.explorer import Explorer

        return Explorer(rng)
    raise WorldSimError(f"unknown agent {name!r}; choose from {', '.join(AGENTS)}")


_SCALARS = (bool, int, float, str)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def small_info(info: dict[str, Any]) -> dict[str, Any]:
    """The part of an info dict worth storing per step: scalars, strings and short vectors.

    Lists like an inventory or achievement names are left out: they would cost more bytes
    than the frame, and they follow from the actions anyway.
    """
    out = {}
    for key, value in info.items():
        if not isinstance(key, str):  # a recording's maps have string keys only
            continue
        kind = type(value)
        if value is None or kind in _SCALARS:
            out[key] = value
        elif isinstance(value, np.generic):
            out[key] = value.item()
        elif kind is np.ndarray:
            if value.ndim == 1 and value.size <= 4 and value.dtype.kind in "biuf":
                out[key] = value.tolist()
        elif kind in (tuple, list) and 0 < len(value) <= 4:
            items = [_plain(v) for v in value]
            if all(isinstance(v, (int, float)) for v in items):
                out[key] = items
    return out


def unbatch_info(info: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Split a vector env's info (dict of arrays with ``_key`` masks) into n per-env dicts."""
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in info.items():
        if not isinstance(key, str) or key.startswith("_"):  # masks, and keys no recording could hold
            continue
        mask = info.get(f"_{key}")
        if isinstance(value, dict):
            parts = unbatch_info(value, n)
            for i in range(n):
                if mask is None or mask[i]:
                    out[i][key] = parts[i]
            continue
        for i in range(n):
            if mask is None or mask[i]:
                out[i][key] = value[i]
    return out


EPISODE_SEEDS = (2**24, 2**31)
"""Range of a single-env run's episode seeds: above every seed WorldSim's evaluation keeps
for itself (held-out worlds from 10^6, the IDM's from 2 * 10^6, :mod:`worldsim.reference`),
so that no recorded episode resets into an evaluated world, and below 2^31, a seed any env
takes."""


def episode_seed(seed: int, episode: int) -> int:
    """The reset seed of one episode of a single-env run, a hash of the run's seed and the
    episode in :data:`EPISODE_SEEDS` (two episodes share one only by chance, 1 in 2 * 10^9)."""
    low, high = EPISODE_SEEDS
    digest = int(np.random.SeedSequence([seed, episode]).generate_state(1, np.uint64)[0])
    return low + digest % (high - low)


def record_part(
    cfg: RecordConfig, part: int, parts: int, steps: int, progress: Callable[[int], None]
) -> dict[str, Any]:
    """Record ``steps`` steps as worker ``part`` of ``parts``; returns its counts, header,
    index entries (:class:`~worldsim.shard_index.FileIndex`) and coverage, all picklable.

    Episode numbers are ``part, part + parts, ...``, so they are unique across workers.
    """
    n = cfg.num_envs // parts + (part < cfg.num_envs % parts)
    env = make_env(cfg.env, n, cfg.make_kwargs())
    try:
        return _Rollout(env, n, cfg, part, parts).run(steps, progress)
    finally:
        env.close()


def image_shape(space: gym.Space, env_id: str) -> tuple[int, int, int]:
    """The [H, W, 3] of an image observation space; anything else is a :class:`WorldSimError`."""
    shape = getattr(space, "shape", None)
    if not (
        isinstance(space, gym.spaces.Box)
        and space.dtype == np.uint8
        and shape is not None
        and len(shape) == 3
        and shape[2] == 3
    ):
        raise WorldSimError(f"{env_id}: observations must be uint8 images [H, W, 3], got {space}")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def _action_names(env: Any, vector: bool) -> Any:
    """The env's ``action_names``: a vector env's own, else its first sub-env's (Gymnasium's
    sync and async vector envs do not pass their envs' attributes on), or None."""
    names = getattr(env if vector else env.unwrapped, "action_names", None)
    if names is None and vector and hasattr(env, "get_attr"):
        try:
            names = env.get_attr("action_names")[0]
        except AttributeError:
            return None
    return names


class _Rollout:
    """One process's envs, agents and writer, and the bookkeeping of their episodes."""

    def __init__(self, env: Any, n: int, cfg: RecordConfig, part: int, parts: int) -> None:
        self.env, self.n, self.cfg, self.part, self.parts = env, n, cfg, part, parts
        self.vector = isinstance(env, gym.vector.VectorEnv)
        obs_space = env.single_observation_space if self.vector else env.observation_space
        shape = image_shape(obs_space, cfg.env)
        self.spec = ActionSpec.from_space(
            env.single_action_space if self.vector else env.action_space
        )
        self.mode = (
            env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP) if self.vector else None
        )
        names = _action_names(env, self.vector)
        if names is None and resolve_env_id(cfg.env) == BLOCKWORLD_ID:
            from envs.blockworld import ACTION_NAMES as names  # noqa: N811
        self.coverage = Coverage.for_spec(self.spec, tuple(names) if names else None)
        self.agents = [
            make_agent(cfg.agent, cfg.env, self.spec, np.random.default_rng([cfg.seed, part, i]))
            for i in range(n)
        ]
        self.writer = RecordingWriter(
            cfg.out, env_id=_stored_id(cfg.env), env_kwargs=cfg.make_kwargs(), observation_shape=shape,
            action_space=self.spec, agent=cfg.agent, seed=cfg.seed, created=cfg.created,
            shard_records=None if str(cfg.out).endswith(".msgpack") else cfg.shard_steps,
            shard_prefix=f"shard-{part:02d}-" if parts > 1 else "shard-", write_index=parts == 1,
            extra_header={"action_names": list(self.coverage.names)} if names else None,
        )  # fmt: skip
        self.episode = np.zeros(n, dtype=np.int64)
        self.t = np.zeros(n, dtype=np.int64)
        self.last_action: list[np.ndarray | None] = [None] * n
        self.next_episode = part
        self.pending = np.zeros(n, dtype=bool)  # NEXT_STEP autoreset: next obs is a reset

    def start(self, i: int, frame: np.ndarray, info: dict[str, Any], seed: int | None) -> None:
        """Begin a new episode in env ``i`` with its first frame."""
        self.episode[i], self.t[i], self.last_action[i] = self.next_episode, 0, None
        self.next_episode += self.parts
        self.coverage.episodes += 1
        self.writer.reset(int(self.episode[i]), seed, frame, small_info(info))
        self.agents[i].reset(frame, info)

    def reset(self, mask: np.ndarray | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Reset every env (or those in ``mask``) and start their episodes."""
        # Env j of a vector run (this worker's first env is env ``first``) starts with seed
        # + j, whatever the split: workers may hold one env more or less than each other.
        k, extra = divmod(self.cfg.num_envs, self.parts)
        first = self.part * k + min(self.part, extra)
        if not self.vector:
            opening = self.cfg.num_envs > 1 and self.next_episode == self.part  # a worker left one env
            seed = self.cfg.seed + first if opening else episode_seed(self.cfg.seed, self.next_episode)
            o, inf = self.env.reset(seed=seed)
            self.start(0, o, inf, seed)
            return o[None], [inf]
        if mask is None:
            seeds = [self.cfg.seed + first + i for i in range(self.n)]
            obs, info = self.env.reset(seed=seeds)
        else:
            seeds = [None] * self.n
            obs, info = self.env.reset(options={"reset_mask": mask})
        infos = unbatch_info(info, self.n)
        for i in range(self.n) if mask is None else np.flatnonzero(mask):
            self.start(int(i), obs[i], infos[i], seeds[i])
        return obs, infos

    def step(
        self, obs: np.ndarray, infos: list[dict[str, Any]], budget: int
    ) -> tuple[Any, Any, int]:
        """Step every env once and write at most ``budget`` step records.

        Returns:
            The next observations [n, H, W, 3], their infos, and the step records written.
        """
        actions = np.stack([self.agents[i].act(obs[i], infos[i]) for i in range(self.n)])  # [n, C]
        prev_obs = np.array(obs)  # a copy: some envs render into the same buffer every step
        info: dict[str, Any] = {}
        if self.vector:
            obs, rew, term, trunc, info = self.env.step(native_action(self.env.single_action_space, actions))
            infos = unbatch_info(info, self.n)
        else:
            o, r, te, tr, inf = self.env.step(native_action(self.env.action_space, actions[0]))
            obs, rew, term, trunc, infos = o[None], [r], [te], [tr], [inf]
        written = 0
        reset_mask = np.zeros(self.n, dtype=bool)
        for i in range(self.n):
            if written == budget:  # a vector step may hold more records than are left
                break
            if self.pending[i]:  # NEXT_STEP: the env ignored the action and reset itself
                self.pending[i] = False
                self.start(i, obs[i], infos[i], None)
                continue
            done = bool(term[i]) or bool(trunc[i])
            frame, final_info = obs[i], infos[i]
            if done and self.mode == AutoresetMode.SAME_STEP:
                # The env already reset: its final frame and info are kept aside (the info
                # batched like any vector info).
                frame = info["final_obs"][i]
                final_info = unbatch_info(info["final_info"], self.n)[i]
            self.t[i] += 1
            self.writer.step(
                int(self.episode[i]), int(self.t[i]), actions[i], float(rew[i]), bool(term[i]),
                bool(trunc[i]), frame, small_info(final_info),
            )  # fmt: skip
            before = prev_obs[i]  # [H, W, 3]
            change = float(np.abs(frame.astype(np.int16) - before).mean())
            self.coverage.add(actions[i], self.last_action[i], final_info, change)
            self.last_action[i] = actions[i]
            written += 1
            if not done:
                continue
            if not self.vector or self.mode == AutoresetMode.DISABLED:
                reset_mask[i] = True
            elif self.mode == AutoresetMode.SAME_STEP:
                self.start(i, obs[i], infos[i], None)
            else:
                self.pending[i] = True
        if reset_mask.any():
            obs, infos = self.reset(reset_mask)
        return obs, infos, written

    def run(self, steps: int, progress: Callable[[int], None]) -> dict[str, Any]:
        """Write ``steps`` step records; returns counts, timings, index entries and coverage."""
        start_time = time.perf_counter()
        # Steady-state timing starts after the first steps: env start-up and JIT loading
        # are paid once per process, not per step.
        warmup = min(WARMUP_STEPS, steps // 5)
        warm_at: tuple[int, float] | None = None
        done = reported = 0
        with self.writer:
            obs, infos = self.reset()
            while done < steps:
                obs, infos, k = self.step(obs, infos, steps - done)
                done += k
                if done - reported >= PROGRESS_EVERY:
                    progress(done - reported)
                    reported = done
                    if warm_at is None and done >= warmup:
                        warm_at = (done, time.perf_counter())
            progress(done - reported)
        end_time = time.perf_counter()
        warm_steps, warm_time = warm_at or (0, start_time)
        w = self.writer
        return {
            "steps": w.steps_written,
            "records": w.records_written,
            "frame_bytes": w.frame_bytes,
            "bytes": w.bytes_written,
            "seconds": end_time - start_time,
            "steady_steps": w.steps_written - warm_steps,
            "steady_seconds": end_time - warm_time,
            # FileIndex objects, not their JSON: they cross to the parent pickled, where arrays
            # of offsets take 8 bytes a record and lists of Python ints took 41.
            "files": list(w.file_indexes),
            "header": w.header,
            "coverage": self.coverage.__dict__,
        }


def output_path(out: str | Path) -> Path:
    """Where coverage JSON goes beside a recording: inside a folder, or ``X.coverage.json``."""
    out = Path(out)
    return out.with_suffix(".coverage.json") if out.suffix == ".msgpack" else out / "coverage.json"
