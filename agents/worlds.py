"""What the viewer drives: the engine, the dream, or both side by side, behind one interface.

Each world takes one action per tick and returns one frame per pane. The side-by-side world
feeds the same action to the real BlockWorld and to the dream and measures how far apart
their frames are (PSNR), which is the honest view of what the model gets right.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from worldsim.errors import WorldSimError
from worldsim.spaces import ActionSpec, native_action

PSNR_CAP_DB = 99.0
"""PSNR reported for identical frames (the formula gives infinity)."""
ENDLESS_STEPS = 2**31 - 1
"""BlockWorld's ``max_steps`` in the viewer: its default of 2,000 would move a human to a new
world after 100 s of play; this many steps take over three years at 20 steps/s."""


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 frames of one shape."""
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    if mse == 0.0:
        return PSNR_CAP_DB
    return float(min(PSNR_CAP_DB, 10.0 * np.log10(255.0**2 / mse)))


@dataclass
class LeadIn:
    """One step the first pane took between its reset frame and the frame ``reset`` returned."""

    action: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    frame: np.ndarray


@dataclass
class WorldStep:
    """What one tick produced."""

    frames: list[np.ndarray]
    """One uint8 ``[H, W, 3]`` frame per pane."""
    rewards: list[float]
    """The reward in each pane: the engine's real one, the dream's predicted one."""
    terminated: bool
    """True when any pane's episode terminated (death, or the model predicts an end)."""
    truncated: bool
    """True when any pane hit its step limit."""
    info: dict[str, Any] = field(default_factory=dict)
    psnr: float | None = None
    """Side by side only: PSNR of the dream frame against the engine frame, in dB."""
    first_ended: tuple[bool, bool] | None = None
    """The first pane's own (terminated, truncated), where they differ from the flags above
    (side by side: the engine's, without the dream's predicted end): what a recording of
    that pane holds."""

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


class World:
    """A set of panes stepped together by one action per tick.

    Attributes:
        titles: One title per pane, shown above it.
        backend: What generates the frames (``engine``, ``torch``, ``onnx``).
        action_space: The action space every pane shares.
    """

    titles: tuple[str, ...]
    backend: str
    action_space: gym.Space
    env_id: str
    env_kwargs: dict[str, Any]
    reset_frame: np.ndarray | None = None
    """After :meth:`reset`: the first pane's frame right after its env's reset, where it
    differs from the first frame returned (side by side: before the prompt's context steps)."""
    lead_in: tuple[LeadIn, ...] = ()
    """After :meth:`reset`: the steps from ``reset_frame`` to the first frame returned."""
    frame_shape: tuple[int, int]
    """(height, width) of every pane's frames."""
    device: str | None = None
    """Where the dream's model runs (``cpu``, ``cuda:0`` ...); None for the engine alone."""
    model_frame_shape: tuple[int, int] | None = None
    """(height, width) of the frames the dream's model was trained on; None for the engine alone."""

    def reset(self, seed: int | None) -> list[np.ndarray]:
        """Start a new episode in every pane and return their first frames."""
        raise WorldSimError(f"{type(self).__name__} cannot reset")

    def step(self, action: np.ndarray) -> WorldStep:
        """Advance every pane by one tick with the same action."""
        raise WorldSimError(f"{type(self).__name__} cannot step")

    def close(self) -> None:
        """Release the envs."""


class EnvWorld(World):
    """One Gymnasium env in one pane: the engine, or the dream on its own."""

    def __init__(self, env: gym.Env, title: str, backend: str, env_id: str, env_kwargs: dict[str, Any]):
        self.env = env
        self.titles = (title,)
        self.backend = backend
        self.action_space = env.action_space
        self.frame_shape = tuple(env.observation_space.shape[:2])
        self.env_id, self.env_kwargs = env_id, env_kwargs

    def reset(self, seed: int | None) -> list[np.ndarray]:
        obs, _ = self.env.reset(seed=seed)
        return [obs]

    def step(self, action: np.ndarray) -> WorldStep:
        obs, reward, terminated, truncated, info = self.env.step(native_action(self.action_space, action))
        return WorldStep([obs], [float(reward)], bool(terminated), bool(truncated), dict(info))

    def close(self) -> None:
        self.env.close()


class SideBySideWorld(World):
    """The real engine on the left and the dream on the right, driven by the same actions.

    On reset the engine runs the dream's prompt context itself (the same seed and the same
    context actions), and the dream is prompted with exactly those engine frames, so both
    panes start from one state and any later difference is the model's.
    """

    def __init__(self, engine: gym.Env, dream: gym.Env, backend: str, env_id: str, env_kwargs: dict[str, Any]):
        if ActionSpec.from_space(engine.action_space) != ActionSpec.from_space(dream.action_space):
            raise WorldSimError(
                f"the engine's action space {engine.action_space} differs from the dream's {dream.action_space}"
            )
        self.engine, self.dream = engine, dream
        self.titles = ("engine (real)", "dream (generated)")
        self.backend = backend
        self.action_space = engine.action_space
        self.frame_shape = tuple(dream.observation_space.shape[:2])
        self.env_id, self.env_kwargs = env_id, env_kwargs

    def reset(self, seed: int | None) -> list[np.ndarray]:
        """Reset the engine with ``seed``, stand still for the dream's context (the steps kept in
        ``lead_in``, so that a recording of the engine holds them), and prompt the dream with
        those frames."""
        context = self.dream.unwrapped.context_length
        obs, _ = self.engine.reset(seed=seed)
        frames, lead_in = [np.array(obs)], []  # copies: an env may render every frame into the same buffer
        still = np.zeros(ActionSpec.from_space(self.action_space).num_components, np.int64)
        for _ in range(context - 1):
            obs, reward, terminated, truncated, _ = self.engine.step(native_action(self.action_space, still))
            frames.append(np.array(obs))
            lead_in.append(LeadIn(still, float(reward), bool(terminated), bool(truncated), frames[-1]))
            if terminated or truncated:
                break
        self.reset_frame, self.lead_in = frames[0], tuple(lead_in)
        actions = np.zeros((len(frames) - 1, len(still)), np.int64)
        d_obs, _ = self.dream.reset(seed=seed, options={"frames": np.stack(frames), "actions": actions})
        return [frames[-1].copy(), d_obs]

    def step(self, action: np.ndarray) -> WorldStep:
        native = native_action(self.action_space, action)
        e_obs, e_rew, e_term, e_trunc, info = self.engine.step(native)
        d_obs, d_rew, d_term, d_trunc, _ = self.dream.step(native)
        return WorldStep(
            [e_obs, d_obs], [float(e_rew), float(d_rew)], bool(e_term or d_term), bool(e_trunc or d_trunc),
            dict(info), psnr(e_obs, d_obs), (bool(e_term), bool(e_trunc)),
        )

    def close(self) -> None:
        self.engine.close()
        self.dream.close()


def make_world(
    mode: str,
    *,
    checkpoint: str | None = None,
    backend: str = "torch",
    width: int | None = None,
    height: int | None = None,
    chunks: int | None = None,
    temperature: float | None = None,
    guidance: float | None = None,
    ranked_moves: bool | None = None,
    device: str | None = None,
) -> World:
    """Build the world the viewer shows.

    Args:
        mode: ``engine``, ``dream`` or ``side-by-side``.
        checkpoint: The dream's checkpoint (``None``: the shipped default model).
        backend: The dream's runtime backend, ``torch`` or ``onnx``.
        width: Frame width in pixels (``None``: the dream model's training frames; 64 for
            the engine alone).
        height: Frame height in pixels (``None``: as for ``width``).
        chunks: The dream's chunks per frame (``None``: the model's default).
        temperature: The dream's sampling temperature (``None``: the model's default).
        guidance: The dream's action guidance scale (``None``: the model's default).
        ranked_moves: Decide for each dream frame at once which cells change (``None``: off).
        device: The dream's torch device (``None``: ``auto``, CUDA if present).

    Raises:
        WorldSimError: An unknown mode, or a checkpoint that cannot be loaded.
    """
    import worldsim  # noqa: F401  (registers the env ids)
    from worldsim.registration import BLOCKWORLD_ID

    if mode == "engine":
        kwargs = {"width": 64 if width is None else width, "height": 64 if height is None else height,
                  "max_steps": ENDLESS_STEPS}  # fmt: skip
        env = gym.make(BLOCKWORLD_ID, **kwargs)
        return EnvWorld(env, "engine", "engine", BLOCKWORLD_ID, kwargs)
    if mode not in ("dream", "side-by-side"):
        raise WorldSimError(f"unknown world {mode!r}; expected dream, engine or side-by-side")
    from worldsim.registration import DREAM_ID

    kwargs = {
        "checkpoint": checkpoint,
        "backend": backend,
        "width": width,
        "height": height,
        "chunks": chunks,
        "temperature": temperature,
        "guidance": guidance,
        "ranked_moves": ranked_moves,
    }
    # The viewer restarts episodes itself, so no step limit: a human plays as long as they like.
    # The device is where this session runs, not part of the world: a recording's env_kwargs leave it out.
    dream = gym.make(DREAM_ID, max_episode_steps=-1, device="auto" if device is None else device, **kwargs)
    if mode == "dream":
        world: World = EnvWorld(dream, "dream", backend, DREAM_ID, kwargs)
        world.device, world.model_frame_shape = _model_facts(dream)
        return world
    from envs.dream import make_source_env

    source_id, source_kwargs = dream.unwrapped.source_env
    if source_id == BLOCKWORLD_ID:  # as the dream: no step limit, a human plays as long as they like
        source_kwargs = {**source_kwargs, "max_steps": ENDLESS_STEPS}
    engine = make_source_env(source_id, source_kwargs)
    world = SideBySideWorld(engine, dream, backend, source_id, source_kwargs)
    world.device, world.model_frame_shape = _model_facts(dream)
    return world


def _model_facts(dream: gym.Env) -> tuple[str, tuple[int, int]]:
    """Where the dream's model runs, and the (height, width) of the frames it was trained on."""
    model = dream.unwrapped.model
    h, w = model.config.frame_shape
    return model.backend.device, (int(h), int(w))
