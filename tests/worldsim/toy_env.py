"""A tiny Gymnasium pixel env that WorldSim has never seen, for format and CLI tests.

A coloured square moves on a coloured background. Every frame encodes the episode's seed
and step number in its top-left pixels, so tests can tell exactly which frame they read.
Importing the module registers ``ToyImage-v0``, so ``gymnasium.make(
"tests.worldsim.toy_env:ToyImage-v0")`` works in any process.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

ENV_ID = "ToyImage-v0"
FULL_ID = f"tests.worldsim.toy_env:{ENV_ID}"


class ToyImageEnv(gym.Env):
    """A square that moves with the action; episodes end after ``max_len`` steps or at random.

    Arguments:
        width, height: frame size.
        discrete: ``Discrete(5)`` actions instead of ``MultiDiscrete([3, 3])``.
        max_len: truncation step limit.
        end_prob: chance per step that the episode terminates.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        width: int = 16,
        height: int = 12,
        discrete: bool = False,
        max_len: int = 30,
        end_prob: float = 0.05,
        render_mode: str | None = None,
    ) -> None:
        self.width, self.height, self.max_len, self.end_prob = width, height, max_len, end_prob
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0, 255, (height, width, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(5) if discrete else gym.spaces.MultiDiscrete([3, 3])
        self._pos = np.zeros(2, dtype=np.int64)
        self._t = 0
        self._seed = 0

    def _obs(self) -> np.ndarray:
        img = np.full((self.height, self.width, 3), (self._seed * 37) % 256, dtype=np.uint8)
        y, x = self._pos
        img[y : y + 3, x : x + 3] = (250, 40, 40)
        img[0, 0] = (self._t % 256, self._t // 256, self._seed % 256)
        return img

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._seed = int(self.np_random.integers(0, 256))
        self._pos = self.np_random.integers(0, (self.height - 3, self.width - 3))
        self._t = 0
        return self._obs(), {"pos": self._pos.copy(), "label": "start"}

    def step(self, action: Any):
        if isinstance(self.action_space, gym.spaces.Discrete):
            dy, dx = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)][int(action)]
        else:
            dy, dx = int(action[0]) - 1, int(action[1]) - 1
        self._pos = np.clip(self._pos + (dy, dx), 0, (self.height - 3, self.width - 3))
        self._t += 1
        terminated = bool(self.np_random.random() < self.end_prob)
        truncated = self._t >= self.max_len
        reward = float(dx == 1)
        return self._obs(), reward, terminated, truncated, {"pos": self._pos.copy(), "label": "go"}

    def render(self) -> np.ndarray:
        return self._obs()


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=ToyImageEnv)


def record_toy(
    path: Any,
    episodes: int,
    *,
    shard_records: int | None = None,
    discrete: bool = False,
    seed: int = 0,
    interleave: int = 1,
    **env_kwargs: Any,
) -> list[dict[str, list]]:
    """Record ``episodes`` toy episodes with random actions through ``RecordingWriter``.

    With ``interleave > 1`` that many episodes run side by side and their records
    alternate in the file, as a vector env's do.

    Returns:
        Per episode: ``frames``, ``actions``, ``rewards``, ``terminated`` as written.
    """
    from worldsim.recording import RecordingWriter

    rng = np.random.default_rng(seed)
    envs = [ToyImageEnv(discrete=discrete, **env_kwargs) for _ in range(interleave)]
    out: list[dict[str, list]] = []
    with RecordingWriter(
        path, env_id=ENV_ID, env_kwargs=dict(discrete=discrete, **env_kwargs),
        observation_shape=envs[0].observation_space.shape, action_space=envs[0].action_space,
        agent="random", seed=seed, shard_records=shard_records,
    ) as w:  # fmt: skip
        live: dict[int, tuple[ToyImageEnv, int]] = {}
        next_episode = 0
        while live or next_episode < episodes:
            for slot, env in enumerate(envs):
                if slot not in live:
                    if next_episode >= episodes:
                        continue
                    e = next_episode
                    next_episode += 1
                    obs, _ = env.reset(seed=seed * 1000 + e)
                    w.reset(e, seed * 1000 + e, obs)
                    out.append(dict(frames=[obs], actions=[], rewards=[], terminated=[]))
                    live[slot] = (env, e)
                    continue
                env, e = live[slot]
                action = int(rng.integers(5)) if discrete else rng.integers(0, 3, size=2)
                obs, r, term, trunc, info = env.step(action)
                t = len(out[e]["frames"])
                w.step(e, t, action, r, term, trunc, obs, info={"label": info["label"]})
                ep = out[e]
                ep["frames"].append(obs)
                ep["actions"].append(np.atleast_1d(np.asarray(action, dtype=np.int64)))
                ep["rewards"].append(r)
                ep["terminated"].append(term)
                if term or trunc:
                    del live[slot]
    return out
