"""The native batched dream env: one batched model call, equal to single envs, autoreset."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import worldsim  # noqa: F401  (registers the ids)
from tests.envs.dream_checkpoint import SIDE, blockworld_checkpoint
from worldsim.errors import WorldSimError
from worldsim.registration import DREAM_ID


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    return str(blockworld_checkpoint(tmp_path_factory.mktemp("dream")))


def make_vec(checkpoint, n, **kwargs):
    return gym.make_vec(DREAM_ID, num_envs=n, vectorization_mode="vector_entry_point", checkpoint=checkpoint,
                        width=SIDE, height=SIDE, **kwargs)  # fmt: skip


def test_vector_env_equals_single_envs_at_temperature_zero(checkpoint):
    n, steps = 3, 8
    # fp32: in bf16 the matmuls round differently for a batch of 3 and a batch of 1.
    venv = make_vec(checkpoint, n, temperature=0.0, precision="fp32")
    venv.action_space.seed(0)
    actions = np.stack([venv.action_space.sample() for _ in range(steps)])  # (steps, n, 8)
    obs, _ = venv.reset(seed=10)
    vec_frames, vec_rewards = [obs], []
    for a in actions:
        obs, r, *_ = venv.step(a)
        vec_frames.append(obs)
        vec_rewards.append(r)
    vec_frames = np.stack(vec_frames, 1)  # (n, steps + 1, H, W, 3)
    single = gym.make(DREAM_ID, checkpoint=checkpoint, width=SIDE, height=SIDE, temperature=0.0, precision="fp32")
    for i in range(n):
        obs, _ = single.reset(seed=10 + i)
        frames, rewards = [obs], []
        for a in actions[:, i]:
            obs, r, *_ = single.step(a)
            frames.append(obs)
            rewards.append(r)
        frames = np.stack(frames)
        # The generated tokens are the same; the decoder's float output for a batch of 3 and
        # a batch of 1 can round a pixel to the neighbouring uint8 level (seen on about 1 pixel
        # in 500 frames), so allow exactly that and nothing more.
        diff = np.abs(frames.astype(np.int16) - vec_frames[i].astype(np.int16))
        assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3, f"world {i}: {np.mean(diff > 0):.2%} of pixels differ"
        np.testing.assert_allclose(rewards, np.asarray(vec_rewards)[:, i], rtol=1e-4, atol=1e-4)


def test_vector_env_equals_sync_vector_env_across_autoresets(checkpoint):
    """Each world draws its restarts' engine seeds as the single env it mirrors does, so
    Gymnasium's sync vector env of single envs gives the same frames after episode ends too."""
    kwargs = dict(num_envs=2, checkpoint=checkpoint, width=SIDE, height=SIDE, temperature=0.0, precision="fp32",
                  max_episode_steps=2)  # fmt: skip
    native = gym.make_vec(DREAM_ID, vectorization_mode="vector_entry_point", **kwargs)
    sync = gym.make_vec(DREAM_ID, vectorization_mode="sync", **kwargs)
    native.action_space.seed(0)
    actions = [native.action_space.sample() for _ in range(7)]  # two autoresets per world
    frames, infos = [], []
    for venv in (native, sync):
        obs, info = venv.reset(seed=4)
        steps = [venv.step(a) for a in actions]
        frames.append([obs] + [s[0] for s in steps])
        infos.append([info] + [s[4] for s in steps])
    for t, (a, b) in enumerate(zip(*frames)):
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))  # decoder rounding, as above
        assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3, f"step {t}: {np.mean(diff > 0):.2%} of pixels differ"
    # The same infos as the single envs', merged as Gymnasium merges them: reset's prompt
    # facts, each step's count, and a restart's prompt facts on the step after an end.
    for t, (a, b) in enumerate(zip(*infos)):
        assert sorted(a) == sorted(b), f"step {t}: {sorted(a)} against {sorted(b)}"
        for key in a:
            if key.startswith("_"):
                assert np.array_equal(a[key], b[key]), f"step {t}: {key}"
            else:
                mask = a[f"_{key}"]
                assert np.array_equal(np.asarray(a[key])[mask], np.asarray(b[key])[mask]), f"step {t}: {key}"


def test_one_batch_for_all_worlds_and_spaces(checkpoint):
    venv = make_vec(checkpoint, 4)
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    assert venv.single_observation_space.shape == (SIDE, SIDE, 3)
    obs, _ = venv.reset(seed=0)
    assert venv.unwrapped.model.batch_size == 4  # all worlds in one runtime batch
    assert obs in venv.observation_space
    obs, rewards, terminated, truncated, _ = venv.step(venv.action_space.sample())
    assert obs in venv.observation_space
    assert rewards.shape == terminated.shape == truncated.shape == (4,)
    assert terminated.dtype == truncated.dtype == bool


def test_autoreset_next_step(checkpoint):
    venv = make_vec(checkpoint, 2, max_episode_steps=3)
    venv.reset(seed=0)
    for _ in range(2):
        assert not venv.step(venv.action_space.sample())[3].any()
    obs3, _, _, truncated, _ = venv.step(venv.action_space.sample())
    assert truncated.all()
    # The next step restarts both worlds from fresh engine contexts: reward 0, not done.
    obs4, rewards, terminated, truncated, _ = venv.step(venv.action_space.sample())
    assert not terminated.any() and not truncated.any() and np.all(rewards == 0)
    assert not np.array_equal(obs4, obs3)
    # and the episode clock restarted: three more steps to the next truncation.
    assert [venv.step(venv.action_space.sample())[3].all() for _ in range(3)] == [False, False, True]


def test_reset_with_seed_list_and_frames(checkpoint):
    venv = make_vec(checkpoint, 2)
    a, _ = venv.reset(seed=[5, 6])
    b, _ = venv.reset(seed=5)
    np.testing.assert_array_equal(a, b)  # an int seed s seeds world i with s + i
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, SIDE, SIDE, 3), dtype=np.uint8)
    obs, _ = venv.reset(options={"frames": frames})
    np.testing.assert_array_equal(obs, frames[:, -1])
    with pytest.raises(ValueError, match="prompt frames must have shape \\[2, T, H, W, 3\\]"):
        venv.reset(options={"frames": frames[0]})
    with pytest.raises(WorldSimError, match="2 seeds for 3|3 seeds for 2"):
        venv.reset(seed=[1, 2, 3])
    c, _ = venv.reset(seed=[5, None])  # None: that world's seed is drawn, as Gymnasium's vector envs do
    np.testing.assert_array_equal(c[0], a[0])
    with pytest.raises(ValueError, match="prompt actions must have shape \\[2, 2, \\.\\.\\.\\] .* got \\[2, 8\\]"):
        venv.reset(options={"frames": frames, "actions": np.zeros((2, 8), np.int64)})
    with pytest.raises(WorldSimError, match="unknown reset options \\['frame'\\]"):
        venv.reset(options={"frame": frames})


def test_bad_actions(checkpoint):
    venv = make_vec(checkpoint, 2)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="actions must have shape \\(2, 8\\)"):
        venv.step(np.zeros((3, 8), np.int64))


def test_a_seed_of_the_wrong_type_is_one_error_naming_the_seed(tmp_path):
    """A string is not a list of seeds, and a float or a bool is not quietly another seed; numpy
    integers are seeds like Python's."""
    from tests.envs.test_dream import untrained_toy_model
    from tests.worldsim.toy_env import FULL_ID

    ckpt = untrained_toy_model(tmp_path / "toy.safetensors", FULL_ID, {"discrete": True}, (12, 16))
    venv = gym.make_vec(DREAM_ID, num_envs=2, vectorization_mode="vector_entry_point", checkpoint=ckpt, device="cpu")
    for bad in (1.5, "ab", [1.7, 2.2], [True, False], [0, "1"], [0, -1], -1, True):
        with pytest.raises(WorldSimError, match="reset seed must be a non-negative integer"):
            venv.reset(seed=bad)
    a, info = venv.reset(seed=np.int64(3))
    assert list(info["engine_seed"]) == [3, 4]
    b, _ = venv.reset(seed=np.array([3, 4]))
    np.testing.assert_array_equal(a, b)


def test_step_or_render_before_reset_is_gymnasiums_reset_needed(tmp_path):
    """``gymnasium.make_vec`` puts no order check around a native vector env, so the env's own
    error is what a training loop sees: Gymnasium's ``ResetNeeded``, as BlockWorld's vector env
    raises (and still a WorldSimError); likewise the single env without ``gymnasium.make``."""
    from envs.dream import DreamEnv
    from tests.envs.test_dream import untrained_toy_model
    from tests.worldsim.toy_env import FULL_ID

    ckpt = untrained_toy_model(tmp_path / "toy.safetensors", FULL_ID, {"discrete": True}, (12, 16))
    venv = gym.make_vec(DREAM_ID, num_envs=2, vectorization_mode="vector_entry_point", checkpoint=ckpt,
                        device="cpu", render_mode="rgb_array")  # fmt: skip
    env = DreamEnv(checkpoint=ckpt, device="cpu", render_mode="rgb_array")
    for e in (venv, env):
        for call in (lambda e=e: e.step(e.action_space.sample()), e.render):
            with pytest.raises(gym.error.ResetNeeded, match=r"call reset\(\) before"):
                call()
            with pytest.raises(WorldSimError):
                call()
    venv.close()
    env.close()


def test_a_predicted_episode_end_terminates_the_world_and_restarts_it_next_step(checkpoint):
    venv = make_vec(checkpoint, 2)
    venv.reset(seed=0)
    dyn = venv.unwrapped.model.backend.dynamics
    with torch.no_grad():  # the model predicts reward 0.75 and an episode end, whatever it sees
        dyn.reward_head.weight.zero_()
        dyn.reward_head.bias.fill_(0.75)
        dyn.done_head.weight.zero_()
        dyn.done_head.bias.fill_(50.0)
    _, rewards, terminated, truncated, _ = venv.step(venv.action_space.sample())
    assert rewards.tolist() == [0.75, 0.75] and terminated.all() and not truncated.any()
    # Autoreset on the next step: fresh engine prompts, reward 0, not ended; then it ends again.
    _, rewards, terminated, _, info = venv.step(venv.action_space.sample())
    assert rewards.tolist() == [0.0, 0.0] and not terminated.any() and info["_prompt"].all()
    assert venv.step(venv.action_space.sample())[2].all()
