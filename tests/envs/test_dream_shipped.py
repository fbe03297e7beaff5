"""End-to-end checks of the product as a user gets it: the shipped model, no checkpoint given.

The other dream tests train a tiny model in the test run, so they can check every contract
quickly at 16x16. These run the default ``worldsim/Dream-v0``, its vector env and the
viewer on ``worldsim/assets/blockworld-64.safetensors`` at 64x64, as ``make demo`` and
``make play`` do. Quality figures are the eval's business (tests/worldsim/test_evaluate.py);
here the checks are what any user would notice at once: it loads, starts in the world the
engine made for the seed, moves when the player moves, and keeps frames valid.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import worldsim  # noqa: F401  (registers the ids)
from worldsim.registration import BLOCKWORLD_ID, DREAM_ID
from worldsim.runtime import DEFAULT_CHECKPOINT

pytestmark = pytest.mark.skipif(
    not DEFAULT_CHECKPOINT.is_file(), reason="no model shipped (make model installs one)"
)

TURN_RIGHT = [0, 0, 0, 2, 0, 0, 0, 0]
SEED = 1_000_003
"""A held-out world seed (the shipped model never trained on seeds >= 1,000,000)."""


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_default_dream_env_passes_check_env_and_starts_where_the_engine_does() -> None:
    env = gym.make(DREAM_ID)
    assert env.observation_space.shape == (64, 64, 3)
    assert env.action_space == gym.make(BLOCKWORLD_ID).action_space
    check_env(env.unwrapped, skip_render_check=True)

    obs, info = env.reset(seed=SEED)
    assert info["prompt"] == "engine" and info["engine_seed"] == SEED
    # The prompt is the engine's own opening for that seed: the same world, pixel for pixel.
    engine = gym.make(BLOCKWORLD_ID)
    real, _ = engine.reset(seed=SEED)
    for a in info["context_actions"]:
        real, *_ = engine.step(a)
    np.testing.assert_array_equal(obs, real)

    frames = [obs]
    for _ in range(12):
        obs, reward, terminated, truncated, _ = env.step(np.array(TURN_RIGHT))
        assert obs.dtype == np.uint8 and obs.shape == (64, 64, 3)
        assert np.isfinite(reward) and isinstance(terminated, bool) and not truncated
        frames.append(obs)
    frames = np.stack(frames).astype(np.int16)
    assert frames.reshape(len(frames), -1).std(axis=1).min() > 2, (
        "a dreamed frame is one flat colour"
    )
    # Turning right for 12 steps (90 degrees) moves the picture: the dream is not frozen.
    assert np.abs(frames[-1] - frames[0]).mean() > 5
    env.close()


def test_default_vector_env_dreams_different_worlds_in_one_batch() -> None:
    envs = gym.make_vec(DREAM_ID, num_envs=3, vectorization_mode="vector_entry_point")
    obs, info = envs.reset(seed=[SEED, SEED + 1, SEED + 2])
    assert obs.shape == (3, 64, 64, 3) and obs.dtype == np.uint8
    assert not np.array_equal(obs[0], obs[1]) and not np.array_equal(obs[1], obs[2])
    for _ in range(4):
        obs, reward, terminated, truncated, _ = envs.step(np.array([TURN_RIGHT] * 3))
        assert obs.shape == (3, 64, 64, 3) and reward.shape == (3,) and np.isfinite(reward).all()
        assert obs.reshape(3, -1).std(axis=1).min() > 2
    envs.close()


def test_play_side_by_side_on_the_shipped_model(tmp_path, monkeypatch) -> None:
    from PIL import Image

    from agents.human import PlayConfig, play
    from agents.worlds import PSNR_CAP_DB

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    script = tmp_path / "play.jsonl"
    script.write_text(json.dumps({"action": TURN_RIGHT, "repeat": 6}) + "\n")
    shot, rec = tmp_path / "end.png", tmp_path / "session.msgpack"
    result = play(PlayConfig(world="side-by-side", actions=str(script), screenshot=str(shot), record=str(rec),
                             seed=SEED, scale=2, max_steps=6, screenshot_dir=str(tmp_path)))  # fmt: skip
    assert result.steps == 6
    # The live PSNR of the dream against the engine was measured on every step.
    assert result.mean_psnr is not None and 0 < result.mean_psnr < PSNR_CAP_DB
    assert np.asarray(Image.open(shot)).std() > 5

    from worldsim.recording import RecordingReader

    records = list(RecordingReader(rec))
    lead_in = len(records) - 1 - 6  # the engine's still steps that made the dream's prompt, then the 6 played
    assert lead_in >= 1 and [r.kind for r in records] == ["reset"] + ["step"] * (lead_in + 6)
    assert all(r.action.tolist() == [0] * 8 for r in records[1 : 1 + lead_in])
    assert all(r.action.tolist() == TURN_RIGHT for r in records[1 + lead_in :])


def test_async_vector_env_with_fork_does_not_hang() -> None:
    """``make_vec(..., vectorization_mode="async")`` forks on Linux after building one env in
    the parent on two torch threads; the workers used to wait forever on the parent's
    OpenMP threads. Run in its own process group, so that a hang is killed whole."""
    code = f"""
import gymnasium as gym, torch, worldsim
torch.set_num_threads(2)  # a parallel region in the parent before the fork
venv = gym.make_vec("{DREAM_ID}", num_envs=2, vectorization_mode="async", vector_kwargs={{"context": "fork"}},
                    max_episode_steps=2)
venv.reset(seed=0)
for _ in range(3):
    venv.step(venv.action_space.sample())
venv.close()
print("ok")
"""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the async vector env's forked workers hung")
    assert proc.returncode == 0 and out.strip().endswith("ok"), err[-2000:]
