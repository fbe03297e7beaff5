"""A long dream rollout stays bounded in memory and keeps producing valid, changing frames."""

import os

import gymnasium as gym
import numpy as np
import pytest
import torch

import worldsim  # noqa: F401  (registers the ids)
from tests.envs.dream_checkpoint import SIDE, blockworld_checkpoint
from worldsim.registration import DREAM_ID

STEPS = 2000
WARMUP = 200
MAX_GROWTH_MB = 32.0
"""RSS may grow this much after warm-up (allocator noise); an unbounded cache grows steadily."""


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_long_rollout_is_bounded_and_valid(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ckpt = blockworld_checkpoint(tmp_path)
        env = gym.make(DREAM_ID, checkpoint=str(ckpt), width=SIDE, height=SIDE, chunks=1, max_episode_steps=-1)
        env.action_space.seed(0)
        obs, _ = env.reset(seed=0)
        model = env.unwrapped.model
        recent = []
        for step in range(1, STEPS + 1):
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            assert obs.dtype == np.uint8 and obs.shape == (SIDE, SIDE, 3)
            assert np.isfinite(reward)
            assert obs.std() > 0, f"blank frame at step {step}"
            recent.append(obs)
            if len(recent) == 100:
                # Over every 100 steps of random actions the picture must change.
                assert any(not np.array_equal(recent[0], f) for f in recent[1:]), f"frozen before step {step}"
                recent.clear()
            if step == WARMUP:
                base, cache_bytes = rss_mb(), model._cache.nbytes
        assert model._cache.nbytes == cache_bytes  # the sliding KV window never grows
        growth = rss_mb() - base
        assert growth < MAX_GROWTH_MB, f"RSS grew {growth:.1f} MB over {STEPS - WARMUP} steps"
    finally:
        torch.set_num_threads(threads)
