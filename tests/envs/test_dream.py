"""The dream env's Gymnasium contract: check_env, seeding, spaces, prompts, copies and errors."""

import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import worldsim  # noqa: F401  (registers the ids)
from envs.dream import DreamEnv
from tests.envs.dream_checkpoint import SIDE, blockworld_checkpoint, toy_checkpoint
from worldsim.errors import WorldSimError
from worldsim.registration import BLOCKWORLD_ID, DREAM_ID


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    return str(blockworld_checkpoint(tmp_path_factory.mktemp("dream")))


def make(checkpoint, **kwargs):
    kwargs.setdefault("width", SIDE)
    kwargs.setdefault("height", SIDE)
    return gym.make(DREAM_ID, checkpoint=checkpoint, **kwargs)


def rollout(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    frames, rewards = [obs], []
    for a in actions:
        obs, r, *_ = env.step(a)
        frames.append(obs)
        rewards.append(r)
    return np.stack(frames), np.asarray(rewards)


def test_check_env(checkpoint, monkeypatch):
    # check_env's render check also makes the env with render_mode="human": headless, that
    # is an error unless SDL is told to draw unseen (as the BlockWorld check_env test does).
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    check_env(make(checkpoint, render_mode="rgb_array").unwrapped, skip_render_check=False)


def test_spaces_come_from_the_checkpoint(checkpoint):
    env = make(checkpoint)
    engine = gym.make(BLOCKWORLD_ID, width=SIDE, height=SIDE)
    assert env.action_space == engine.action_space
    assert env.observation_space == gym.spaces.Box(0, 255, (SIDE, SIDE, 3), np.uint8)
    obs, _ = env.reset(seed=0)
    assert obs in env.observation_space
    for _ in range(3):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert obs in env.observation_space
        assert isinstance(reward, float) and isinstance(terminated, bool) and truncated is False


def test_reset_seed_prompts_with_the_engine(checkpoint):
    env = make(checkpoint)
    obs, info = env.reset(seed=7)
    engine = gym.make(BLOCKWORLD_ID, width=SIDE, height=SIDE)
    first, _ = engine.reset(seed=7)
    assert info["prompt"] == "engine" and info["engine_seed"] == 7
    assert info["context_actions"].shape == (info["context_frames"] - 1, 8)
    for a in info["context_actions"]:
        last, *_ = engine.step(a)
    # The dream's first frame is the real engine's frame after the recorded context actions.
    np.testing.assert_array_equal(obs, last if len(info["context_actions"]) else first)


def test_same_seed_same_dream_even_when_sampling(checkpoint):
    env = make(checkpoint, temperature=1.0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(6)]
    a, ra = rollout(env, 3, actions)
    b, rb = rollout(env, 3, actions)
    c, _ = rollout(env, 4, actions)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ra, rb)
    assert not np.array_equal(a, c)


def test_guidance_reaches_the_model_of_both_envs(checkpoint):
    """``guidance`` is the runtime's action guidance: None keeps the checkpoint's, and another
    scale dreams other frames under the same actions and seed."""
    # Sampled at temperature 1 with one seed: a change in the logits then changes some draws.
    # At temperature 0 the tiny test model's argmax can stay put under any scale, so whether
    # the frames differed hung on how its 40 training steps happened to go.
    env = make(checkpoint, temperature=1.0)
    assert env.unwrapped.model.guidance == 1.0  # the test checkpoint names none
    guided = make(checkpoint, temperature=1.0, guidance=3.0)
    assert guided.unwrapped.model.guidance == 3.0
    actions = [np.array([1, 0, 0, 1, 2, 0, 0, 0])] * 4
    assert not np.array_equal(rollout(env, 0, actions)[0], rollout(guided, 0, actions)[0])
    vec = gym.make_vec(DREAM_ID, num_envs=2, vectorization_mode="vector_entry_point", checkpoint=checkpoint, width=SIDE,
                       height=SIDE, guidance=3.0)  # fmt: skip
    assert vec.unwrapped.model.guidance == 3.0
    with pytest.raises(ValueError, match="guidance"):
        make(checkpoint, guidance=-1.0)


def test_ranked_moves_reach_the_model_of_both_envs(checkpoint):
    """``ranked_moves`` is off unless asked for; on, the same actions and seed dream other frames."""
    env = make(checkpoint, temperature=1.0)
    assert env.unwrapped.model.ranked_moves is False
    ranked = make(checkpoint, temperature=1.0, ranked_moves=True)
    assert ranked.unwrapped.model.ranked_moves is True
    actions = [np.array([1, 0, 0, 1, 2, 0, 0, 0])] * 4
    assert not np.array_equal(rollout(env, 0, actions)[0], rollout(ranked, 0, actions)[0])
    vec = gym.make_vec(DREAM_ID, num_envs=2, vectorization_mode="vector_entry_point", checkpoint=checkpoint, width=SIDE,
                       height=SIDE, ranked_moves=True)  # fmt: skip
    assert vec.unwrapped.model.ranked_moves is True


def test_reset_from_frames(checkpoint):
    env = make(checkpoint)
    frames = np.random.default_rng(0).integers(0, 256, (3, SIDE, SIDE, 3), dtype=np.uint8)
    actions = np.zeros((2, 8), np.int64)
    obs, info = env.reset(options={"frames": frames, "actions": actions})
    np.testing.assert_array_equal(obs, frames[-1])
    assert info["prompt"] == "frames" and info["context_frames"] == 3
    obs, info = env.reset(options={"frames": frames[0]})  # one picture is a prompt too
    np.testing.assert_array_equal(obs, frames[0])
    assert env.step(env.action_space.sample())[0].shape == (SIDE, SIDE, 3)


def test_reset_from_a_recording(checkpoint, tmp_path):
    """Two episodes written step by step side by side, as a vector env records them."""
    from worldsim.recording_writer import RecordingWriter

    engines = [gym.make(BLOCKWORLD_ID, width=SIDE, height=SIDE) for _ in range(2)]
    path = tmp_path / "rec.msgpack"
    frames: list[list[np.ndarray]] = [[], []]
    with RecordingWriter(path, env_id=BLOCKWORLD_ID, env_kwargs={}, observation_shape=(SIDE, SIDE, 3),
                         action_space=engines[0].action_space, agent="random") as w:  # fmt: skip
        for ep, engine in enumerate(engines):
            engine.action_space.seed(ep)
            obs, _ = engine.reset(seed=ep)
            w.reset(ep, ep, obs)
            frames[ep].append(obs)
        for t in range(1, 8):
            for ep, engine in enumerate(engines):
                a = engine.action_space.sample()
                obs, r, term, trunc, _ = engine.step(a)
                w.step(ep, t, a, r, term, trunc, obs)
                frames[ep].append(obs)
    env = make(checkpoint)
    for ep in (0, 1):
        obs, info = env.reset(options={"recording": str(path), "episode": ep, "t": 5})
        np.testing.assert_array_equal(obs, frames[ep][5])
        assert info["prompt"] == "recording" and info["context_frames"] == env.unwrapped.context_length
    with pytest.raises(WorldSimError, match="episode 1 has no step t=9"):
        env.reset(options={"recording": str(path), "episode": 1, "t": 9})
    with pytest.raises(WorldSimError, match="episode 4 has no step"):
        env.reset(options={"recording": str(path), "episode": 4, "t": 0})


def test_a_prompt_from_a_shard_folder_reads_only_its_records(tmp_path, monkeypatch):
    """A reset from step t of a late episode used to parse every record of the folder before
    it (200,000 of them for a 16-frame prompt 390 episodes in); the index takes it straight to
    the prompt's records, which are those a lone file of the same run gives."""
    import worldsim.data
    import worldsim.recording
    from envs.dream import prompt_from_recording
    from tests.worldsim.toy_env import record_toy

    folder, single = tmp_path / "shards", tmp_path / "one.msgpack"
    episodes = record_toy(folder, 14, shard_records=16, interleave=3, seed=5, max_len=25)
    record_toy(single, 14, interleave=3, seed=5, max_len=25)  # the same run as one file
    parsed = []
    for module in (worldsim.data, worldsim.recording):
        real = module.parse_record
        monkeypatch.setattr(module, "parse_record", lambda *a, real=real, **k: parsed.append(1) or real(*a, **k))
    for e, t, length in ((13, 9, 4), (13, 9, 30), (12, 0, 4), (0, 3, 8)):
        t = min(t, len(episodes[e]["frames"]) - 1)
        parsed.clear()
        frames, actions, _ = prompt_from_recording(str(folder), e, t, length)
        first = max(0, t - length + 1)
        assert len(parsed) == t - first + 1  # the prompt's records, no others
        np.testing.assert_array_equal(frames, np.stack(episodes[e]["frames"][first : t + 1]))
        assert len(actions) == t - first
        if t > first:
            np.testing.assert_array_equal(actions, np.stack(episodes[e]["actions"][first:t]))
        for got, want in zip(prompt_from_recording(str(single), e, t, length), (frames, actions)):
            np.testing.assert_array_equal(got, want)
    last = len(episodes[13]["frames"]) - 1
    with pytest.raises(WorldSimError, match=f"episode 13 has no step t={last + 1} \\(its last step is {last}\\)"):
        prompt_from_recording(str(folder), 13, last + 1, 4)
    with pytest.raises(WorldSimError, match="episode 14 has no step t=0 \\(it is not in the file\\)"):
        prompt_from_recording(str(folder), 14, 0, 4)


def test_a_prompt_from_a_folder_without_an_index_scans_only_the_shards_up_to_its_step(tmp_path, monkeypatch):
    """A folder a killed multi-worker run left has no index.json: a reset from an early step
    scanned every shard, 150 times the old read up to step t (0.3 s for 40,000 records)."""
    import worldsim.data
    from envs.dream import prompt_from_recording
    from tests.worldsim.toy_env import record_toy

    folder, single = tmp_path / "shards", tmp_path / "one.msgpack"
    episodes = record_toy(folder, 14, shard_records=16, interleave=3, seed=5, max_len=25)
    record_toy(single, 14, interleave=3, seed=5, max_len=25)
    (folder / "index.json").unlink()
    scanned = []
    real = worldsim.data.scan_file
    monkeypatch.setattr(worldsim.data, "scan_file", lambda f, *a: scanned.append(f.name) or real(f, *a))
    frames, actions, _ = prompt_from_recording(str(folder), 1, 2, 4)
    np.testing.assert_array_equal(frames, np.stack(episodes[1]["frames"][:3]))
    for got, want in zip(prompt_from_recording(str(single), 1, 2, 4), (frames, actions)):
        np.testing.assert_array_equal(got, want)
    assert scanned == ["shard-00000.msgpack"] and len(list(folder.iterdir())) > 5
    last = len(episodes[13]["frames"]) - 1
    with pytest.raises(WorldSimError, match=f"episode 13 has no step t={last + 1} \\(its last step is {last}\\)"):
        prompt_from_recording(str(folder), 13, last + 1, 4)


def test_a_recording_of_another_frame_size_is_refused_by_name(checkpoint, tmp_path):
    """Single and vector env alike: a WorldSimError naming the file and both sizes, as every
    other recording prompt error is, not a ValueError about prompt frames."""
    from worldsim.recording_writer import RecordingWriter

    engine = gym.make(BLOCKWORLD_ID, width=SIDE, height=SIDE)
    path = tmp_path / "rec.msgpack"
    with RecordingWriter(path, env_id=BLOCKWORLD_ID, env_kwargs={}, observation_shape=(SIDE, SIDE, 3),
                         action_space=engine.action_space, agent="random") as w:  # fmt: skip
        w.reset(0, 0, engine.reset(seed=0)[0])
        for t in range(1, 4):
            a = engine.action_space.sample()
            obs, r, term, trunc, _ = engine.step(a)
            w.step(0, t, a, r, term, trunc, obs)
    big = 2 * SIDE
    envs = [make(checkpoint, width=big, height=big),
            gym.make_vec(DREAM_ID, num_envs=2, vectorization_mode="vector_entry_point", checkpoint=checkpoint,
                         width=big, height=big)]  # fmt: skip
    for env in envs:
        with pytest.raises(WorldSimError, match=f"rec.msgpack: its frames are {SIDE}x{SIDE} .* dream runs at {big}x{big}"):
            env.reset(options={"recording": str(path), "t": 3})


def test_returned_arrays_are_never_reused(checkpoint):
    env = make(checkpoint, render_mode="rgb_array")
    obs0, _ = env.reset(seed=0)
    keep = obs0.copy()
    obs1, *_ = env.step(env.action_space.sample())
    obs2, *_ = env.step(env.action_space.sample())
    np.testing.assert_array_equal(obs0, keep)
    assert not np.shares_memory(obs1, obs2)
    frame = env.render()
    np.testing.assert_array_equal(frame, obs2)
    obs2[:] = 0  # a caller scribbling on its copy does not reach the env
    assert env.render().any()


def test_truncates_at_max_episode_steps(checkpoint):
    env = make(checkpoint, max_episode_steps=3)
    env.reset(seed=0)
    truncated = [env.step(env.action_space.sample())[3] for _ in range(3)]
    assert truncated == [False, False, True]


def _set_heads(env, reward: float, done: float) -> None:
    """Make the model predict ``reward`` and an episode end (``done`` > 0) or not, whatever it sees."""
    dyn = env.unwrapped.model.backend.dynamics
    with torch.no_grad():
        for head, bias in ((dyn.reward_head, reward), (dyn.done_head, done)):
            head.weight.zero_()
            head.bias.fill_(bias)


def test_step_returns_the_models_predicted_reward_and_episode_end(checkpoint):
    env = make(checkpoint)
    env.reset(seed=0)
    _set_heads(env, reward=0.75, done=-50.0)
    _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert (reward, terminated, truncated) == (0.75, False, False)
    _set_heads(env, reward=-0.5, done=50.0)
    _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert (reward, terminated, truncated) == (-0.5, True, False)


def test_human_render_mode_opens_a_window(checkpoint, monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    env = make(checkpoint, render_mode="human")
    env.reset(seed=0)
    assert env.render() is None
    env.step(env.action_space.sample())
    env.close()


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ([1, 0, 0], "actions must have shape \\(8,\\)"),
        ([3, 0, 0, 0, 0, 0, 0, 0], "out of range"),
        ([0.5, 0, 0, 0, 0, 0, 0, 0], "must be integers"),
    ],
)
def test_bad_actions_say_what_was_expected(checkpoint, action, message):
    env = make(checkpoint)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


def test_bad_prompts_and_options(checkpoint):
    env = make(checkpoint)
    good = np.zeros((2, SIDE, SIDE, 3), np.uint8)
    with pytest.raises(ValueError, match="must be uint8"):
        env.reset(options={"frames": good.astype(np.float32)})
    with pytest.raises(ValueError, match=f"shape \\[T, {SIDE}, {SIDE}, 3\\]"):
        env.reset(options={"frames": np.zeros((2, 8, 8, 3), np.uint8)})
    with pytest.raises(ValueError, match="actions must have shape \\(1, 8\\)"):
        env.reset(options={"frames": good, "actions": np.zeros((2, 8), np.int64)})
    with pytest.raises(WorldSimError, match="unknown reset options"):
        env.reset(options={"frame": good})
    # options that would otherwise be ignored without a word
    with pytest.raises(WorldSimError, match="'actions' goes with 'frames'"):
        env.reset(options={"actions": np.zeros((1, 8), np.int64)})
    with pytest.raises(WorldSimError, match="\\['episode', 't'\\] go with 'recording'"):
        env.reset(options={"episode": 1, "t": 3})
    with pytest.raises(WorldSimError, match="two prompts"):
        env.reset(options={"frames": good, "recording": "x.msgpack"})
    with pytest.raises(WorldSimError, match="multiples of 4"):
        make(checkpoint, width=18)
    with pytest.raises(WorldSimError, match="render_mode"):
        DreamEnv(checkpoint=checkpoint, width=SIDE, height=SIDE, render_mode="ansi")


def test_step_before_reset_is_an_error(checkpoint):
    env = make(checkpoint).unwrapped
    with pytest.raises(WorldSimError, match="reset"):
        env.step(env.action_space.sample())


def test_a_non_blockworld_model_never_imports_blockworld(tmp_path):
    """A checkpoint of another env (Discrete actions) uses that env for its prompts."""
    ckpt = toy_checkpoint(tmp_path)
    code = f"""
import sys, gymnasium as gym, numpy as np, torch, worldsim
import tests.worldsim.toy_env  # registers ToyImage-v0, as a third-party env's package would
torch.set_num_threads(1)
env = gym.make("{DREAM_ID}", checkpoint="{ckpt}", width=16, height=16)
assert env.action_space == gym.spaces.Discrete(5), env.action_space
obs, info = env.reset(seed=0)
assert info["context_actions"].shape[1] == 1
obs, r, term, trunc, _ = env.step(3)
assert obs.shape == (16, 16, 3)
assert not any(m.startswith("envs.blockworld") for m in sys.modules), "imported BlockWorld"
print("ok")
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_onnx_backend_dreams_the_same_frames(checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("WORLDSIM_ONNX_CACHE", str(tmp_path / "onnx"))
    onnx, ref = make(checkpoint, backend="onnx"), make(checkpoint, backend="torch", precision="fp32")
    onnx.action_space.seed(0)
    actions = [onnx.action_space.sample() for _ in range(6)]
    a, ra = rollout(onnx, 2, actions)
    b, rb = rollout(ref, 2, actions)
    assert np.abs(a.astype(np.int16) - b.astype(np.int16)).max() <= 1
    np.testing.assert_allclose(ra, rb, atol=1e-3)


def untrained_toy_model(path, env_id: str, env_kwargs: dict, frame_shape: tuple[int, int]) -> str:
    """A tiny world model of random weights (Discrete(5) actions) that names ``env_id`` as its env."""
    import torch

    from worldsim.checkpoint import ModelConfig, save_model
    from worldsim.presets import dynamics_config, get_preset
    from worldsim.spaces import ActionSpec
    from worldsim.tokenizer import Tokenizer
    from worldsim.transformer import Dynamics

    torch.manual_seed(0)
    preset = get_preset("tiny")
    dyn = Dynamics(dynamics_config(preset, preset.tokenizer.levels, ActionSpec("Discrete", (5,)), 4))
    config = ModelConfig(tokenizer=preset.tokenizer, dynamics=dyn.cfg, frame_shape=frame_shape, env_id=env_id,
                         env_kwargs=env_kwargs)  # fmt: skip
    save_model(path, config, Tokenizer(preset.tokenizer), dyn)
    return str(path)


def test_the_default_frame_size_is_the_checkpoints(tmp_path):
    """A model of a 12x16 env dreams 12x16 frames without width and height: from its env,
    from its own recording, as a vector env and in the viewer."""
    from agents.worlds import make_world
    from tests.worldsim.toy_env import FULL_ID, record_toy

    ckpt = untrained_toy_model(tmp_path / "toy.safetensors", FULL_ID, {"discrete": True}, (12, 16))
    record_toy(tmp_path / "toy.msgpack", 1, discrete=True, end_prob=0.0)

    env = gym.make(DREAM_ID, checkpoint=ckpt)
    assert env.observation_space == gym.spaces.Box(0, 255, (12, 16, 3), np.uint8)
    assert env.reset(seed=0)[0].shape == (12, 16, 3)
    assert env.reset(options={"recording": str(tmp_path / "toy.msgpack"), "t": 3})[0].shape == (12, 16, 3)
    assert env.step(2)[0].shape == (12, 16, 3)
    vec = gym.make_vec(DREAM_ID, num_envs=2, vectorization_mode="vector_entry_point", checkpoint=ckpt)
    assert vec.reset(seed=0)[0].shape == (2, 12, 16, 3)
    world = make_world("dream", checkpoint=ckpt)
    assert world.frame_shape == (12, 16) and world.reset(0)[0].shape == (12, 16, 3)
    world.close()


def test_bad_sizes_contexts_and_step_limits_are_errors_naming_them(tmp_path):
    """True is not a size or a context of 1; a context beyond the model's own would step the
    engine for frames the model never sees; a step limit must be a whole number."""
    from tests.worldsim.toy_env import FULL_ID

    ckpt = untrained_toy_model(tmp_path / "toy.safetensors", FULL_ID, {"discrete": True}, (12, 16))
    for kwargs, message in (({"width": True}, "width must be a positive integer, got True"),
                            ({"context": True}, "context must be a positive integer, got True"),
                            ({"context": 2.0}, "context must be a positive integer"),
                            ({"context": 5}, "context must be at most 4 frames, the most this model sees; got 5")):  # fmt: skip
        with pytest.raises(WorldSimError, match=message):
            DreamEnv(checkpoint=ckpt, device="cpu", **kwargs)
    assert DreamEnv(checkpoint=ckpt, device="cpu", context=4).context_length == 4
    for steps in ("10", 2.5, True):
        with pytest.raises(WorldSimError, match="max_episode_steps must be positive"):
            gym.make_vec(DREAM_ID, num_envs=1, vectorization_mode="vector_entry_point", checkpoint=ckpt,
                         max_episode_steps=steps)  # fmt: skip


def test_a_recording_of_huge_frames_is_refused_from_its_header_before_any_frame_is_decoded(tmp_path):
    """A 1 MB file can hold frames of 4096x4096 zeros (50 MB each once decoded), up to
    8192x8192 (200 MB); every frame of the prompt used to be decoded before its size was
    refused: 1.5 GB and 15 s for a 1.5 MB file at 8192. Now the header is enough."""
    import struct
    import time
    import tracemalloc
    import zlib

    import msgpack

    from tests.worldsim.toy_env import FULL_ID
    from worldsim.png import PNG_SIGNATURE, _chunk

    side = 4096
    deflate = zlib.compressobj(9)
    row = bytes(side * 3 + 1)  # a filter byte and a row of black pixels
    idat = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    png = (PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
           + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))  # fmt: skip
    header = {"format": "worldsim-rollout", "version": 1, "env_id": FULL_ID, "env_kwargs": {},
              "observation_shape": [side, side, 3], "action_space": {"type": "Discrete", "n": 5},
              "frame_codec": "png", "agent": "random", "created": "2026-01-01T00:00:00Z"}  # fmt: skip
    path = tmp_path / "huge.msgpack"
    records = [header, {"kind": "reset", "episode": 0, "seed": 0, "frame": png}]
    records += [{"kind": "step", "episode": 0, "t": t, "action": 0, "reward": 0.0, "terminated": False,
                 "truncated": False, "frame": png} for t in range(1, 4)]  # fmt: skip
    path.write_bytes(b"".join(msgpack.packb(r) for r in records))

    ckpt = untrained_toy_model(tmp_path / "toy.safetensors", FULL_ID, {"discrete": True}, (12, 16))
    env = DreamEnv(checkpoint=ckpt, device="cpu")
    venv = gym.make_vec(DREAM_ID, num_envs=2, vectorization_mode="vector_entry_point", checkpoint=ckpt, device="cpu")
    for e in (env, venv):
        tracemalloc.start()
        start = time.perf_counter()
        try:
            with pytest.raises(WorldSimError, match=f"huge.msgpack: its frames are {side}x{side} .* dream runs at 12x16"):
                e.reset(options={"recording": str(path), "t": 3})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 20e6 and time.perf_counter() - start < 2, (peak, time.perf_counter() - start)


def test_reset_options_that_are_not_a_dict_are_refused_by_name(tmp_path):
    from tests.worldsim.toy_env import FULL_ID

    ckpt = untrained_toy_model(tmp_path / "toy.safetensors", FULL_ID, {"discrete": True}, (12, 16))
    env = DreamEnv(checkpoint=ckpt, device="cpu")
    venv = gym.make_vec(DREAM_ID, num_envs=2, vectorization_mode="vector_entry_point", checkpoint=ckpt, device="cpu")
    for e in (env, venv):
        with pytest.raises(WorldSimError, match="reset options must be a dict .* got 'frames'"):
            e.reset(options="frames")  # was "unknown reset options ['a', 'e', 'f', 'm', 'r', 's']"


def test_a_fixed_size_env_asked_for_another_size_is_a_clear_error(tmp_path):
    from tests.worldsim.toy_env import ToyImageEnv

    class FixedSize(ToyImageEnv):
        def __init__(self, render_mode=None):
            super().__init__(discrete=True, render_mode=render_mode)

    if "FixedSizeToy-v0" not in gym.registry:
        gym.register(id="FixedSizeToy-v0", entry_point=FixedSize)
    ckpt = untrained_toy_model(tmp_path / "fixed.safetensors", "FixedSizeToy-v0", {}, (12, 16))
    assert gym.make(DREAM_ID, checkpoint=ckpt).reset(seed=0)[0].shape == (12, 16, 3)
    env = gym.make(DREAM_ID, checkpoint=ckpt, width=16, height=16)
    with pytest.raises(WorldSimError, match=r"takes no width or height.*16x16.*leave the dream's width and height"):
        env.reset(seed=0)

    class Buggy(ToyImageEnv):  # a TypeError of the env's own is not blamed on the size
        def __init__(self, width=16, height=12, render_mode=None):
            super().__init__(discrete=True, render_mode=render_mode, width=None + width, height=height)

    if "BuggyToy-v0" not in gym.registry:
        gym.register(id="BuggyToy-v0", entry_point=Buggy)
    from envs.dream import make_source_env

    with pytest.raises(TypeError, match="unsupported operand"):
        make_source_env("BuggyToy-v0", {"width": 16, "height": 12})

    class OwnBug(ToyImageEnv):  # takes the size; fails on a bad keyword of its own
        def __init__(self, width=16, height=12, render_mode=None):
            np.zeros(3, dtyp=np.uint8)

    class NoInit(gym.Env):  # takes nothing at all
        pass

    for name, entry in (("OwnBugToy-v0", OwnBug), ("NoInitToy-v0", NoInit)):
        if name not in gym.registry:
            gym.register(id=name, entry_point=entry)
    with pytest.raises(TypeError, match="dtyp"):
        make_source_env("OwnBugToy-v0", {"width": 16, "height": 12})
    with pytest.raises(WorldSimError, match="takes no width or height"):
        make_source_env("NoInitToy-v0", {"width": 16, "height": 12})


def test_the_engine_prompt_keeps_every_frame_of_an_env_that_reuses_its_buffer():
    from envs.dream import engine_context
    from tests.worldsim.toy_env import ToyImageEnv

    class OneBuffer(ToyImageEnv):
        def _obs(self):
            self.buffer = getattr(self, "buffer", np.zeros((self.height, self.width, 3), np.uint8))
            self.buffer[...] = super()._obs()
            return self.buffer

    frames, _ = engine_context(OneBuffer(end_prob=0.0), 0, 4)
    want, _ = engine_context(ToyImageEnv(end_prob=0.0), 0, 4)
    np.testing.assert_array_equal(frames, want)
