"""Driving an env (single or vector) with an agent and writing every step to a recording.

:func:`record_part` is one process's share of a ``worldsim record`` run. It works for any
registered Gymnasium env with uint8 [H, W, 3] observations and a ``Discrete`` or
``MultiDiscrete`` action space, and follows the vector env's autoreset mode exactly, so
that every reset and step record holds the frame the env really returned.
"""

from __future__ import annotations

import importlib
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
from worldsim.registration import BLOCKWORLD_ID
from worldsim.spaces import ActionSpec

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
        kwargs = dict(self.env_kwargs)
        if self.width is not None:
            kwargs["width"] = self.width
        if self.height is not None:
            kwargs["height"] = self.height
        return kwargs


def env_name(env_id: str) -> str:
    """The registered id, importing the module of a ``module:Id`` first."""
    if ":" in env_id:
        module, env_id = env_id.split(":", 1)
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise WorldSimError(f"cannot import {module!r} for env {env_id!r}: {e}") from None
    if env_id.startswith("worldsim/"):
        importlib.import_module("envs")  # registers WorldSim's ids
    return env_id


def make_env(env_id: str, num_envs: int, kwargs: dict[str, Any]) -> gym.Env | gym.vector.VectorEnv:
    """One env, or a vector env of ``num_envs`` (the env's own vector class where it has one)."""
    name = env_name(env_id)
    try:
        spec = gym.spec(name)
        if num_envs == 1:
            return gym.make(name, **kwargs)
        mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
        return gym.make_vec(name, num_envs=num_envs, vectorization_mode=mode, **kwargs)
    except gym.error.Error as e:
        raise WorldSimError(f"cannot make env {name!r}: {e}") from None
    except TypeError as e:
        raise WorldSimError(f"env {name!r} does not accept {sorted(kwargs)}: {e}") from None


def make_agent(name: str, env_id: str, spec: ActionSpec, rng: np.random.Generator) -> Any:
    """An agent by name, for one env of ``env_id``."""
    if name == "random":
        from agents.random_agent import RandomAgent

        return RandomAgent(spec, rng)
    if name == "explorer":
        if env_name(env_id) != BLOCKWORLD_ID:
            raise WorldSimError(
                f"the explorer drives {BLOCKWORLD_ID} only, not {env_id!r}; use --agent random"
            )
        from agents.explorer import Explorer

        return Explorer(rng)
    raise WorldSimError(f"unknown agent {name!r}; choose from {', '.join(AGENTS)}")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def small_info(info: dict[str, Any]) -> dict[str, Any]:
    """The part of an info dict worth storing per step: scalars, strings and short vectors.

    Lists like an inventory or achievement names are left out: they would cost more bytes
    than the frame, and they follow from the actions anyway.
    """
    out = {}
    for key, value in info.items():
        value = _plain(value)
        if value is None or isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif isinstance(value, (tuple, list, np.ndarray)) and len(value) <= 4:
            items = [_plain(v) for v in value]
            if all(isinstance(v, (int, float)) for v in items):
                out[key] = items
    return out


def unbatch_info(info: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Split a vector env's info (dict of arrays with ``_key`` masks) into n per-env dicts."""
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in info.items():
        if key.startswith("_"):
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


def episode_seed(seed: int, episode: int) -> int:
    """The reset seed of one episode of a single-env run: distinct, and derived from the run's."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0] >> 1)


def record_part(
    cfg: RecordConfig, part: int, parts: int, steps: int, progress: Callable[[int], None]
) -> dict[str, Any]:
    """Record ``steps`` steps as worker ``part`` of ``parts``; returns plain-data results.

    Episode numbers are ``part, part + parts, ...``, so they are unique across workers.
    """
    n = cfg.num_envs // parts + (part < cfg.num_envs % parts)
    env = make_env(cfg.env, n, cfg.make_kwargs())
    try:
        return _run(env, n, cfg, part, parts, steps, progress)
    finally:
        env.close()


def _run(
    env: Any,
    n: int,
    cfg: RecordConfig,
    part: int,
    parts: int,
    steps: int,
    progress: Callable[[int], None],
) -> dict[str, Any]:
    vector = isinstance(env, gym.vector.VectorEnv)
    obs_space = env.single_observation_space if vector else env.observation_space
    act_space = env.single_action_space if vector else env.action_space
    shape = getattr(obs_space, "shape", None)
    if not (
        isinstance(obs_space, gym.spaces.Box)
        and obs_space.dtype == np.uint8
        and shape
        and len(shape) == 3
        and shape[2] == 3
    ):
        raise WorldSimError(
            f"{cfg.env}: observations must be uint8 images [H, W, 3], got {obs_space}"
        )
    spec = ActionSpec.from_space(act_space)
    mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP) if vector else None
    names = getattr(env.unwrapped if not vector else env, "action_names", None)
    if names is None and env_name(cfg.env) == BLOCKWORLD_ID:
        from envs.blockworld import ACTION_NAMES as names  # noqa: N811
    coverage = Coverage.for_spec(spec, tuple(names) if names else None)
    agents = [
        make_agent(cfg.agent, cfg.env, spec, np.random.default_rng([cfg.seed, part, i]))
        for i in range(n)
    ]

    single_file = str(cfg.out).endswith(".msgpack")
    writer = RecordingWriter(
        cfg.out, env_id=env_name(cfg.env), env_kwargs=cfg.make_kwargs(), observation_shape=shape,
        action_space=spec, agent=cfg.agent, seed=cfg.seed, created=cfg.created,
        shard_records=None if single_file else cfg.shard_steps,
        shard_prefix=f"shard-{part:02d}-" if parts > 1 else "shard-", write_index=parts == 1,
        extra_header={"action_names": list(coverage.names)} if names else None,
    )  # fmt: skip
    episode = np.zeros(n, dtype=np.int64)
    t = np.zeros(n, dtype=np.int64)
    last_action: list[np.ndarray | None] = [None] * n
    next_episode = part

    def start(i: int, frame: np.ndarray, info: dict[str, Any], seed: int | None) -> None:
        nonlocal next_episode
        episode[i], t[i], last_action[i] = next_episode, 0, None
        next_episode += parts
        coverage.episodes += 1
        writer.reset(int(episode[i]), seed, frame, small_info(info))
        agents[i].reset(frame, info)

    start_time = time.perf_counter()
    # Steady-state timing starts after the first steps: env start-up and JIT loading are
    # paid once per process, not per step.
    warmup = min(WARMUP_STEPS, steps // 5)
    warm_at: tuple[int, float] | None = None
    with writer:
        if vector:
            seeds = [cfg.seed + part * n + i for i in range(n)]
            obs, info = env.reset(seed=seeds)
            infos = unbatch_info(info, n)
            for i in range(n):
                start(i, obs[i], infos[i], seeds[i])
        else:
            seed = episode_seed(cfg.seed, next_episode)
            o, inf = env.reset(seed=seed)
            obs, infos = o[None], [inf]
            start(0, obs[0], infos[0], seed)
        pending = np.zeros(n, dtype=bool)  # NEXT_STEP: this env's next obs is a reset
        done_steps = reported = 0
        while done_steps < steps:
            actions = np.stack([agents[i].act(obs[i], infos[i]) for i in range(n)])  # [n, C]
            if vector:
                step_actions = actions[:, 0] if spec.kind == "Discrete" else actions
                obs, rew, term, trunc, info = env.step(step_actions)
                infos = unbatch_info(info, n)
            else:
                a = int(actions[0, 0]) if spec.kind == "Discrete" else actions[0]
                o, r, te, tr, inf = env.step(a)
                obs, rew, term, trunc, infos = o[None], [r], [te], [tr], [inf]
            reset_mask = np.zeros(n, dtype=bool)
            for i in range(n):
                if done_steps == steps:  # a vector step may hold more records than are left
                    break
                if pending[i]:
                    pending[i] = False
                    start(i, obs[i], infos[i], None)
                    continue
                done = bool(term[i]) or bool(trunc[i])
                frame, finfo = obs[i], infos[i]
                if done and mode == AutoresetMode.SAME_STEP:
                    frame, finfo = info["final_obs"][i], info["final_info"][i]
                t[i] += 1
                writer.step(
                    int(episode[i]),
                    int(t[i]),
                    actions[i],
                    float(rew[i]),
                    bool(term[i]),
                    bool(trunc[i]),
                    frame,
                    small_info(finfo),
                )
                coverage.add(actions[i], last_action[i], finfo)
                last_action[i] = actions[i]
                done_steps += 1
                if done:
                    if not vector or mode == AutoresetMode.DISABLED:
                        reset_mask[i] = True
                    elif mode == AutoresetMode.SAME_STEP:
                        start(i, obs[i], infos[i], None)
                    else:
                        pending[i] = True
            if reset_mask.any():
                if vector:
                    obs, info = env.reset(options={"reset_mask": reset_mask})
                    infos = unbatch_info(info, n)
                    for i in np.flatnonzero(reset_mask):
                        start(int(i), obs[i], infos[i], None)
                else:
                    seed = episode_seed(cfg.seed, next_episode)
                    o, inf = env.reset(seed=seed)
                    obs, infos = o[None], [inf]
                    start(0, obs[0], infos[0], seed)
            if done_steps - reported >= PROGRESS_EVERY:
                progress(done_steps - reported)
                reported = done_steps
                if warm_at is None and done_steps >= warmup:
                    warm_at = (done_steps, time.perf_counter())
        progress(done_steps - reported)
    end_time = time.perf_counter()
    warm_steps, warm_time = warm_at or (0, start_time)
    return {
        "steps": writer.steps_written,
        "records": writer.records_written,
        "frame_bytes": writer.frame_bytes,
        "bytes": writer.bytes_written,
        "seconds": end_time - start_time,
        "steady_steps": writer.steps_written - warm_steps,
        "steady_seconds": end_time - warm_time,
        "files": [f.to_json() for f in writer.file_indexes],
        "header": writer.header,
        "coverage": coverage.__dict__,
    }


def output_path(out: str | Path) -> Path:
    """Where coverage JSON goes beside a recording: inside a folder, or ``X.coverage.json``."""
    out = Path(out)
    return out.with_suffix(".coverage.json") if out.suffix == ".msgpack" else out / "coverage.json"
