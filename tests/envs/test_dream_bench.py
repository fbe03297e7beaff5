"""Smoke runs of `worldsim bench dream-env` with tiny budgets."""

import re

import pytest

from envs.dream_bench import bench_dream_main, main
from worldsim.errors import WorldSimError

TINY = ["--preset", "tiny", "--width", "16", "--height", "16", "--threads", "1"]


def test_bench_reports_single_and_vector_rates(capsys):
    assert main([*TINY, "--steps", "3", "--warmup", "1", "--nums", "2"]) == 0
    out = capsys.readouterr().out
    single = re.search(r"single env\s+([\d.]+) steps/s through Gymnasium .*runtime alone\s+([\d.]+).*0 episode ends", out)
    vector = re.search(r"vector env N=2\s+([\d.]+) steps/s", out)
    assert single and vector, out
    assert float(single.group(1)) > 0 and float(vector.group(1)) > 0
    assert "target single env >= 30 steps/s" in out


def test_the_single_env_is_timed_with_the_wrappers_gym_make_gives_it(capsys, monkeypatch):
    """What an RL user gets, as the module says: the TimeLimit wrapper included, as in the vector env."""
    import gymnasium as gym

    made, real = [], gym.make
    monkeypatch.setattr(gym, "make", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    assert main([*TINY, "--steps", "2", "--warmup", "0", "--nums", ""]) == 0
    env, wrappers = made[0], []
    while isinstance(env, gym.Wrapper):
        wrappers.append(type(env).__name__)
        env = env.env
    assert "TimeLimit" in wrappers, wrappers


def test_rollout_reports_memory_and_frame_health(capsys):
    assert main([*TINY, "--rollout", "20"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"20 steps at [\d.]+ steps/s; RSS [\d.]+ MiB after warm-up", out), out
    assert "0 blank frames" in out


def test_bad_options():
    with pytest.raises(WorldSimError, match="not both"):
        main(["--preset", "tiny", "--checkpoint", "x.safetensors"])
    with pytest.raises(WorldSimError, match="comma-separated"):
        main([*TINY, "--nums", "a,b"])


def test_bench_dream_refuses_bad_env_options_before_timing_the_runtime(monkeypatch):
    """A typo in the env part's options is reported at once, naming the flag that was given,
    not after the runtime's part has run (a minute at the defaults)."""
    import worldsim.bench

    monkeypatch.setattr(worldsim.bench, "run_dream", lambda a: pytest.fail("the runtime's part ran first"))
    with pytest.raises(WorldSimError, match="--env-nums must be comma-separated integers, got '16,x'"):
        bench_dream_main(["--env-nums", "16,x"])
    with pytest.raises(WorldSimError, match="every --env-nums entry must be at least 1"):
        bench_dream_main(["--env-nums", "16,0"])
    with pytest.raises(WorldSimError, match="--env-steps must be at least 1, got 0"):
        bench_dream_main(["--env-steps", "0"])


def test_bench_dream_times_the_runtime_then_the_env_through_gymnasium(capsys, tmp_path):
    """`worldsim bench dream` reports generation frames/s and the dream env's steps/s in one run."""
    from worldsim.cli import main as cli

    out_json = tmp_path / "dream.json"
    args = ["bench", "dream", "--preset", "tiny", "--size", "16", "16", "--batch", "1", "--chunks", "1",
            "--seconds", "0.1", "--rounds", "1", "--device", "cpu", "--threads", "1", "--json", str(out_json),
            "--env-steps", "2", "--env-nums", "2"]  # fmt: skip
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert '"frames_per_s"' in out and out_json.is_file()  # the runtime's table
    assert "dream env benchmark: preset tiny (random weights), 16x16" in out  # the same preset, through Gymnasium
    assert re.search(r"single env\s+[\d.]+ steps/s through Gymnasium", out), out
    assert re.search(r"vector env N=2\s+[\d.]+ steps/s", out), out
    assert cli([*args, "--no-env"]) == 0
    assert "through Gymnasium" not in capsys.readouterr().out


def test_a_random_model_on_the_onnx_backend_leaves_the_onnx_cache_alone(capsys, tmp_path, monkeypatch):
    """The random checkpoint is saved afresh each run and never hashes the same, so its export
    must go with it, not into the user's cache as another copy every run."""
    pytest.importorskip("onnxruntime")
    cache = tmp_path / "onnx-cache"
    monkeypatch.setenv("WORLDSIM_ONNX_CACHE", str(cache))
    assert main([*TINY, "--backend", "onnx", "--steps", "2", "--warmup", "0", "--nums", "2"]) == 0
    assert "backend onnx" in capsys.readouterr().out
    assert not cache.exists() or not any(cache.iterdir())


def test_a_trained_model_is_timed_at_its_own_frame_size(capsys, tmp_path):
    from tests.envs.test_dream import untrained_toy_model
    from tests.worldsim.toy_env import FULL_ID

    ckpt = untrained_toy_model(tmp_path / "toy.safetensors", FULL_ID, {"discrete": True}, (12, 16))
    assert main(["--checkpoint", ckpt, "--threads", "1", "--steps", "2", "--warmup", "0", "--nums", "2"]) == 0
    assert "16x12" in capsys.readouterr().out


def test_bench_dream_times_a_checkpoint_at_its_own_frame_size_in_both_parts(capsys, tmp_path):
    from tests.envs.test_dream import untrained_toy_model
    from tests.worldsim.toy_env import FULL_ID
    from worldsim.cli import main as cli

    ckpt = untrained_toy_model(tmp_path / "toy.safetensors", FULL_ID, {"discrete": True}, (12, 16))
    assert cli(["bench", "dream", "--checkpoint", ckpt, "--threads", "1", "--batch", "1", "--chunks", "1",
                "--seconds", "0.2", "--rounds", "1", "--env-steps", "2", "--env-nums", "2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "12x16" in out  # the runtime's part: H x W
    assert "16x12" in out and "64x64" not in out  # the env's part: W x H


def test_bench_dream_env_writes_its_figures_to_json_in_a_new_folder(capsys, tmp_path):
    """As `bench train`, `bench dream` and `bench record` do: a row per configuration, the folder made."""
    import json

    out = tmp_path / "new folder" / "env.json"
    assert main([*TINY, "--steps", "2", "--warmup", "0", "--nums", "2", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [r["name"] for r in doc["rows"]] == ["single env", "vector env N=2"]
    assert all(r["gym_steps_per_s"] > 0 and r["runtime_steps_per_s"] > 0 for r in doc["rows"])
    assert doc["model"] == "preset tiny (random weights)" and (doc["width"], doc["height"]) == (16, 16)
    assert doc["targets"] == {"single env >= 30 steps/s": doc["rows"][0]["gym_steps_per_s"] >= 30}
    rollout = tmp_path / "rollout.json"
    assert main([*TINY, "--rollout", "5", "--json", str(rollout)]) == 0
    assert json.loads(rollout.read_text())["rollout"]["steps"] == 5


def test_bench_dream_env_json_is_strict_where_the_os_gives_no_rss(capsys, tmp_path, monkeypatch):
    """Without /proc the rollout's RSS is NaN, which json.dumps wrote as `NaN`: no JSON that
    a strict reader (jq, a browser) takes. It is null there."""
    import json

    import envs.dream_bench

    monkeypatch.setattr(envs.dream_bench, "rss_mb", lambda: float("nan"))
    out = tmp_path / "rollout.json"
    assert main([*TINY, "--rollout", "3", "--json", str(out)]) == 0
    assert "NaN" not in out.read_text()
    rollout = json.loads(out.read_text())["rollout"]
    assert rollout["rss_end_mb"] is None and rollout["rss_after_warmup_mb"] is None and rollout["steps"] == 3
