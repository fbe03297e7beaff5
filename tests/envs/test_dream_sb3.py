"""Stable-Baselines3 uses the dream env unchanged: its env checker passes and PPO trains."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import worldsim  # noqa: F401  (registers the ids)
from tests.envs.dream_checkpoint import blockworld_checkpoint
from worldsim.registration import DREAM_ID

sb3 = pytest.importorskip("stable_baselines3")

# SB3's CnnPolicy (NatureCNN) needs frames of at least 36x36; 40 is a multiple of the patch.
CNN_SIDE = 40


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    ckpt = blockworld_checkpoint(tmp_path_factory.mktemp("dream"))
    env = gym.make(DREAM_ID, checkpoint=str(ckpt), width=CNN_SIDE, height=CNN_SIDE, max_episode_steps=32)
    yield env
    env.close()


def test_sb3_check_env(env):
    from stable_baselines3.common.env_checker import check_env

    check_env(env, warn=True)


def test_ppo_cnn_policy_learns_without_error(env):
    from stable_baselines3 import PPO

    model = PPO("CnnPolicy", env, n_steps=32, batch_size=16, n_epochs=1, seed=0, device="cpu", verbose=0)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=64)
    assert model.num_timesteps == 64
    # The update changed the policy: gradients flowed from the dream's frames and rewards.
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    assert env.action_space.contains(np.asarray(action))
