"""The vector env: Gymnasium's vector API, autoreset, and equality with single envs."""

from __future__ import annotations

import queue

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import worldsim  # noqa: F401  (registers the ids)
from envs.blockworld import ACTION_NVEC, BlockWorldEnv, BlockWorldVectorEnv


def test_make_vec_uses_the_native_vector_env():
    venv = gym.make_vec("worldsim/BlockWorld-v0", num_envs=2, vectorization_mode="vector_entry_point", width=24, height=16)
    assert isinstance(venv.unwrapped, BlockWorldVectorEnv)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, info = venv.reset(seed=0)
    assert obs.shape == (2, 16, 24, 3) and obs.dtype == np.uint8
    assert info["health"].shape == (2,) and info["achievements"].shape[0] == 2
    venv.close()


def test_frames_equal_single_envs_with_same_seeds_and_actions():
    n, steps = 3, 40
    venv = BlockWorldVectorEnv(n, width=32, height=24, max_steps=15)
    singles = [BlockWorldEnv(width=32, height=24, max_steps=15) for _ in range(n)]
    rng = np.random.default_rng(0)
    obs, _ = venv.reset(seed=10)
    for i, env in enumerate(singles):
        single_obs, _ = env.reset(seed=10 + i)
        assert np.array_equal(obs[i], single_obs)
    done = [False] * n
    ends = 0
    for _ in range(steps):
        actions = (rng.random((n, len(ACTION_NVEC))) * np.array(ACTION_NVEC)).astype(np.int64)
        actions[:, 0] = 1  # walk, so that worlds drift apart and chunks stream
        obs, rewards, terminated, truncated, info = venv.step(actions)
        for i, env in enumerate(singles):
            if done[i]:  # NEXT_STEP autoreset: this step is the reset
                single_obs, single_info = env.reset()
                r, te, tr = 0.0, False, False
            else:
                single_obs, r, te, tr, single_info = env.step(actions[i])
            assert np.array_equal(obs[i], single_obs)
            assert (rewards[i], terminated[i], truncated[i]) == (r, te, tr)
            _assert_same_info(info, i, single_info)
            done[i] = te or tr
            ends += done[i]
    assert ends >= n, "every world should have crossed an episode end and autoreset"
    venv.close()


def _assert_same_info(info: dict, i: int, single: dict) -> None:
    """World ``i``'s row of the vector info says what the single env's info says."""
    for key in ("in_water", "on_ground", "target_block", "health", "selected_slot", "mined", "placed", "biome", "tick"):
        assert info[key][i] == single[key], key
    assert info["time_of_day"][i] == pytest.approx(single["time_of_day"])
    assert tuple(info["position"][i]) == single["position"]
    if single["target_block"] is None:
        assert np.isnan(info["target_distance"][i])
    else:
        assert info["target_distance"][i] == single["target_distance"]
        assert tuple(info["target_position"][i]) == single["target_position"]


def test_render_threads_give_the_same_frames():
    """One render thread or several: the same frames, and a bad count is a clear error."""
    frames = []
    for threads in (1, 2):
        venv = BlockWorldVectorEnv(3, width=24, height=16, render_threads=threads)
        obs, _ = venv.reset(seed=3)
        obs, *_ = venv.step(np.ones((3, len(ACTION_NVEC)), dtype=np.int64))
        frames.append(obs)
        venv.close()
    assert np.array_equal(frames[0], frames[1])
    with pytest.raises(ValueError, match="render_threads"):
        BlockWorldVectorEnv(2, render_threads=-1)


def test_vector_bad_actions_raise_value_error():
    venv = BlockWorldVectorEnv(2, width=16, height=16)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2, 8\)"):
        venv.step(np.zeros((3, 8), dtype=np.int64))
    venv.close()


def test_make_vec_takes_a_time_limit_and_refuses_a_step_before_reset():
    venv = gym.make_vec("worldsim/BlockWorld-v0", num_envs=2, vectorization_mode="vector_entry_point",
                        width=16, height=16, max_episode_steps=3)  # fmt: skip
    with pytest.raises(gym.error.ResetNeeded, match="call reset\\(\\) before step\\(\\)"):
        venv.step(np.zeros((2, 8), np.int64))
    venv.reset(seed=0)
    truncated = [bool(venv.step(np.zeros((2, 8), np.int64))[3].all()) for _ in range(3)]
    assert truncated == [False, False, True]
    with pytest.raises(ValueError, match="max_episode_steps must be >= 1"):
        BlockWorldVectorEnv(2, width=16, height=16, max_episode_steps=0)
    assert BlockWorldVectorEnv(1, width=16, height=16, max_steps=7, max_episode_steps=-1).max_steps == 7


def test_vector_reset_refuses_a_reset_mask_instead_of_resetting_every_world():
    """Gymnasium's ``reset_mask`` resets only the chosen worlds of a vector env; the native
    env has no partial reset (it autoresets NEXT_STEP), so it must not reset them all."""
    venv = BlockWorldVectorEnv(2, width=16, height=16, render_mode="rgb_array", render_threads=1)
    venv.reset(seed=0)
    before, *_ = venv.step(np.ones((2, len(ACTION_NVEC)), dtype=np.int64))
    with pytest.raises(ValueError, match="unknown reset options \\['reset_mask'\\].*no partial reset"):
        venv.reset(options={"reset_mask": np.array([True, False])})
    assert np.array_equal(np.stack(venv.render()), before)  # nothing was reset
    venv.close()


def test_numpy_seeds_are_seeds_and_a_bad_seed_resets_no_world():
    """``reset(seed=np.int64(3))`` (a seed drawn with numpy) seeds the worlds as 3 does, as the
    dream's vector env takes it, and a float, a bool or a string is one error naming the seed,
    raised before any world is reset."""
    venv = BlockWorldVectorEnv(2, width=16, height=16, render_mode="rgb_array", render_threads=1)
    want, _ = venv.reset(seed=3)
    for seed in (np.int64(3), np.array(3), np.array([3, 4]), [np.int32(3), 4]):
        obs, _ = venv.reset(seed=seed)
        assert np.array_equal(obs, want), seed
    before, *_ = venv.step(np.ones((2, len(ACTION_NVEC)), dtype=np.int64))
    for bad in (1.5, "ab", [0, 1.5], [True, False], [0, -1], -1, True, np.array(1.5)):
        with pytest.raises(ValueError, match="reset seed must be a non-negative integer"):
            venv.reset(seed=bad)
    with pytest.raises(ValueError, match="reset got 3 seeds for 2 envs"):
        venv.reset(seed=[0, 1, 2])
    assert np.array_equal(np.stack(venv.render()), before)  # no world was reset
    venv.close()


def test_vector_render_is_a_tuple_of_frames_that_record_video_takes(monkeypatch, tmp_path):
    """``VectorEnv.render`` returns a tuple of frames; Gymnasium's vector ``RecordVideo``
    asserts a ``Sequence``, which an (N, H, W, 3) array is not."""
    import sys
    import types

    from gymnasium.wrappers.vector import RecordVideo

    if "moviepy" not in sys.modules:
        monkeypatch.setitem(sys.modules, "moviepy", types.ModuleType("moviepy"))  # no video is written
    venv = BlockWorldVectorEnv(2, width=16, height=16, render_mode="rgb_array", render_threads=1)
    obs, _ = venv.reset(seed=0)
    frames = venv.render()
    assert isinstance(frames, tuple) and len(frames) == 2
    assert all(np.array_equal(f, o) for f, o in zip(frames, obs))
    recorder = RecordVideo(venv, str(tmp_path / "videos"), episode_trigger=lambda _: True)
    recorder.reset(seed=0)
    recorder.step(np.zeros((2, len(ACTION_NVEC)), dtype=np.int64))
    assert len(recorder.recorded_frames) == 2 and recorder.recorded_frames[0].shape == (16, 32, 3)
    recorder.recorded_frames, recorder.recording = [], False  # nothing to save (moviepy may be a stub)
    venv.close()


def _fall_to_death(mode: str, **kwargs) -> list[tuple[int, bool, bool]]:
    """(step, terminated, truncated) of every episode end of one world dropped from 30 blocks up."""
    venv = gym.make_vec("worldsim/BlockWorld-v0", num_envs=1, vectorization_mode=mode, width=16, height=16, **kwargs)
    venv.reset(seed=0)
    engine = venv.unwrapped.engine if mode == "vector_entry_point" else venv.unwrapped.envs[0].unwrapped.engine
    x, y, z = engine.players["pos"][0]
    engine.place_player(0, float(x), float(y) + 30.0, float(z))
    ends = []
    for t in range(1, 61):
        _, _, terminated, truncated, _ = venv.step(np.zeros((1, len(ACTION_NVEC)), dtype=np.int64))
        if terminated[0] or truncated[0]:
            ends.append((t, bool(terminated[0]), bool(truncated[0])))
            break
    venv.close()
    return ends


def test_time_limit_on_a_terminating_step_says_truncated_as_gymnasium_time_limit_does():
    """A death on the time limit's last step: the sync vector env's TimeLimit reports both
    flags, and the native env given the same ``max_episode_steps`` must too."""
    (death, terminated, _), = _fall_to_death("vector_entry_point", render_threads=1)
    assert terminated
    sync = _fall_to_death("sync", max_episode_steps=death)
    assert sync == [(death, True, True)]
    assert _fall_to_death("vector_entry_point", render_threads=1, max_episode_steps=death) == sync
    # the env's own max_steps is no TimeLimit: there termination alone is reported, as in the single env
    assert _fall_to_death("vector_entry_point", render_threads=1, max_steps=death) == [(death, True, False)]


def test_a_vector_env_whose_construction_failed_closes_quietly():
    """Gymnasium before 1.3 closes a vector env in ``__del__``, also one whose ``__init__`` raised."""
    env = BlockWorldVectorEnv.__new__(BlockWorldVectorEnv)
    env.close()


def test_default_render_threads_follow_the_cpus_the_process_may_use(monkeypatch) -> None:
    """Under ``taskset`` or a container's cpuset, the default pool was sized to the machine's
    CPU count, so a process bound to one CPU of 64 rendered with 4 threads on it."""
    import os

    from worldsim.cpus import usable_cpus

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
        assert usable_cpus() == 1
        env = BlockWorldVectorEnv(4, width=32, height=32)
        assert env.engine._pool is None  # one CPU: the batch renders on the calling thread
        env.close()
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    assert usable_cpus() == 64


def test_a_world_that_died_restarts_on_the_next_step_and_the_other_goes_on():
    """NEXT_STEP autoreset after a termination: the dead world's next step is a fresh
    episode (full health, reward 0, not ended); the other world keeps its clock."""
    from envs.blockworld.physics import MAX_HEALTH

    venv = BlockWorldVectorEnv(2, width=16, height=16)
    venv.reset(seed=0)
    x, y, z = venv.engine.players["pos"][0]
    venv.engine.place_player(0, float(x), float(y) + 30.0, float(z))
    still = np.zeros((2, len(ACTION_NVEC)), dtype=np.int64)
    steps = 0
    while steps < 60:
        _, _, terminated, truncated, info = venv.step(still)
        steps += 1
        if terminated[0]:
            break
    assert terminated.tolist() == [True, False] and info["health"][0] == 0 and not truncated.any()
    _, rewards, terminated, truncated, info = venv.step(still)
    assert rewards[0] == 0.0 and not terminated.any() and not truncated.any()
    assert info["health"][0] == MAX_HEALTH and info["tick"].tolist() == [0, steps + 1]
    venv.close()


def _step_in_child(venv, actions, results) -> None:
    obs, *_ = venv.step(actions)
    venv.close()
    results.put(obs)


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(), reason="no fork here")
def test_a_vector_env_stepped_in_a_forked_child_renders_instead_of_hanging():
    """A vector env made and rendered in a parent, then stepped in a forked child (a DataLoader
    or Pool worker handed it), waited forever on render threads that exist only in the parent."""
    import multiprocessing

    venv = BlockWorldVectorEnv(4, width=16, height=16, render_threads=2)
    venv.reset(seed=3)
    actions = np.zeros((4, len(ACTION_NVEC)), np.int64)
    actions[:, 3] = 1  # turn, so that the step's frames differ from the reset's
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_step_in_child, args=(venv, actions, results), daemon=True)
    child.start()
    try:
        stepped = results.get(timeout=30)
    except queue.Empty:
        pytest.fail("the forked child's step hung in render")
    finally:
        child.kill()
    expected, *_ = venv.step(actions)  # the parent's own step from the same state
    assert np.array_equal(stepped, expected)
    venv.close()
