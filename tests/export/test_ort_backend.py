"""The ONNX Runtime backend against the torch backend, the export cache and the env path."""

from __future__ import annotations

import gc
import json
import os
import shutil
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import export.cache as cache_mod
import worldsim  # noqa: F401  (registers the dream env)
from export.manifest import ManifestError
from export.ort_session import CUDA_EP, require_onnxruntime
from export.parity import measure_parity, rollout
from tests.export.conftest import SPEC, toy_rollouts, train_tiny
from worldsim.checkpoint import load_model, save_model
from worldsim.errors import WorldSimError
from worldsim.runtime import load

STEPS = 50


def test_rollouts_of_both_backends_agree_greedy_and_sampled(tiny_export: Path, tiny_checkpoint: Path) -> None:
    onnx = load(tiny_export, backend="onnx", precision="fp32")
    assert (onnx.backend.device, onnx.backend.provider) in {("cpu", "CPUExecutionProvider")} | (
        {("cuda:0", CUDA_EP)} if CUDA_EP in require_onnxruntime().get_available_providers() else set()
    )
    prompt = toy_rollouts(2, 4, seed=101)
    frames, _ = rollout(onnx, *prompt, steps=5, seed=0)
    assert frames.std() > 5, "the rollout is flat: comparing it would prove nothing"
    p = measure_parity(tiny_checkpoint, tiny_export, steps=STEPS, prompt=prompt)
    assert p.pixels_within_1 >= 0.99, f"only {p.pixels_within_1:.2%} of pixels within 1 level over {STEPS} steps"
    assert p.sampled_tokens_equal >= 0.99, f"only {p.sampled_tokens_equal:.2%} of sampled tokens agree"


def test_both_backends_predict_the_same_rewards_and_episode_ends(tiny_export: Path, tiny_checkpoint: Path) -> None:
    """The parity figures compare frames and tokens; the step's reward and episode end are
    what an RL agent reads, so they must agree too."""
    frames, actions = toy_rollouts(2, 4, seed=101)
    nvec = np.asarray(SPEC.nvec)
    steps = np.random.default_rng(0).integers(0, nvec, (6, 2, len(nvec)))
    results = []
    for path, backend in ((tiny_checkpoint, "torch"), (tiny_export, "onnx")):
        m = load(path, backend=backend, device="cpu", precision="fp32", temperature=0.0)
        m.prompt(frames, actions)
        results.append([m.step(a) for a in steps])
    for t, (a, b) in enumerate(zip(*results)):
        np.testing.assert_allclose(b.reward, a.reward, atol=1e-4, err_msg=f"step {t}")
        assert np.array_equal(b.done, a.done), f"step {t}"


def test_a_model_with_a_stay_gate_and_a_still_head_exports_and_both_backends_agree(tmp_path: Path) -> None:
    from export.onnx_export import export_onnx

    ckpt = train_tiny(tmp_path / "gated.safetensors", stay_gate=True, still_head=True)
    dyn = load(ckpt).backend.dynamics
    assert dyn.stay_head.bias.abs().max() > 0 and dyn.still_head.weight.abs().max() > 0  # both trained
    folder = export_onnx(ckpt, tmp_path / "gated-export").folder
    assert [o["name"] for o in json.loads((folder / "manifest.json").read_text())["graphs"]["dynamics"]["outputs"]][-1] == "still_logit"
    prompt = toy_rollouts(2, 4, seed=101)
    p = measure_parity(ckpt, folder, steps=20, prompt=prompt)
    assert p.pixels_within_1 >= 0.99 and p.sampled_tokens_equal >= 0.99, p
    # A still head that always fires: asked to, both backends keep the prompt's last frame exactly.
    loaded = load_model(ckpt)
    with torch.no_grad():
        loaded.dynamics.still_head.bias.fill_(100.0)
    still = tmp_path / "still.safetensors"
    save_model(still, loaded.config, loaded.tokenizer, loaded.dynamics)
    still_export = export_onnx(still, tmp_path / "still-export").folder
    for m in (load(still, seed=0, still=True), load(still_export, backend="onnx", seed=0, still=True)):
        m.prompt(*prompt)
        for _ in range(3):
            assert np.array_equal(m.step(np.ones((2, 3), np.int64)).frames, prompt[0][:, -1])
    off = load(still, seed=0)  # the runtime ignores the still head unless asked (worldsim.runtime.DEFAULT_STILL)
    off.prompt(*prompt)
    assert not np.array_equal(off.step(np.ones((2, 3), np.int64)).frames, prompt[0][:, -1])


def test_a_model_with_a_refiner_exports_it_and_both_backends_agree(tmp_path: Path) -> None:
    from dataclasses import replace

    from export.onnx_export import export_onnx
    from worldsim.tokenizer import Refiner

    loaded = load_model(train_tiny(tmp_path / "plain.safetensors"))
    torch.manual_seed(0)
    loaded.tokenizer.refiner = Refiner(4, 1, loaded.config.tokenizer.stride)
    with torch.no_grad():  # a refiner that does something: its output layer starts at zero
        loaded.tokenizer.refiner.out.weight.normal_(0, 0.05)
    ckpt = tmp_path / "refined.safetensors"
    cfg = replace(loaded.config, tokenizer=replace(loaded.config.tokenizer, refiner_channels=4, refiner_blocks=1))
    save_model(ckpt, cfg, loaded.tokenizer, loaded.dynamics)
    folder = export_onnx(ckpt, tmp_path / "refined-export").folder
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "refiner" in manifest["graphs"] and (folder / "refiner.onnx").is_file()
    assert any(c["graph"] == "refiner" and c["error"] <= c["limit"] for c in manifest["verification"]["checks"])
    prompt = toy_rollouts(2, 4, seed=101)
    assert load(folder, backend="onnx").refine
    p = measure_parity(ckpt, folder, steps=20, prompt=prompt)
    assert p.pixels_within_1 >= 0.99 and p.sampled_tokens_equal >= 0.99, p
    off = load(ckpt, seed=0, temperature=0.0, refine=False)
    on = load(ckpt, seed=0, temperature=0.0)
    for m in (on, off):
        m.prompt(*prompt)
    a = np.ones((2, 3), np.int64)
    assert not np.array_equal(on.step(a).frames, off.step(a).frames), "the refiner changed nothing"
    # A manifest that lost the refiner graph of a refined model is refused, naming it.
    del manifest["graphs"]["refiner"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="refiner"):
        load(folder, backend="onnx")


def test_action_guidance_gives_the_same_dream_on_both_backends(tiny_export: Path, tiny_checkpoint: Path) -> None:
    """Guidance lives in the runtime, above the backend: its second pass must see the same
    cache on ONNX Runtime as on torch, or the two dreams part."""
    prompt = toy_rollouts(2, 4, seed=101)
    runs = {}
    for backend, path in (("torch", tiny_checkpoint), ("onnx", tiny_export)):
        m = load(path, backend=backend, device="cpu", precision="fp32", temperature=0.0, guidance=2.0)
        runs[backend] = rollout(m, *prompt, steps=10, seed=0)[1]
    plain = rollout(load(tiny_checkpoint, device="cpu", precision="fp32", temperature=0.0), *prompt, steps=10, seed=0)[1]
    assert np.mean(runs["torch"] == runs["onnx"]) >= 0.99
    assert np.mean(runs["torch"] != plain) > 0.01, "guidance changed nothing: the comparison proves nothing"


def test_another_seed_samples_other_tokens(tiny_checkpoint: Path) -> None:
    prompt = toy_rollouts(2, 4, seed=101)
    codes = [rollout(load(tiny_checkpoint, temperature=1.0, seed=s), *prompt, steps=10, seed=0)[1] for s in (7, 7, 8)]
    assert np.array_equal(codes[0], codes[1])
    assert (codes[0] == codes[2]).mean() < 0.9


def test_a_checkpoint_is_exported_once_into_the_cache_and_then_reused(tiny_checkpoint: Path, tmp_path: Path, private_cache: Path, monkeypatch) -> None:
    ckpt = tmp_path / "model.safetensors"  # a folder with no export beside it
    shutil.copy(tiny_checkpoint, ckpt)
    first = cache_mod.resolve_export(ckpt)
    assert first.source == "exported" and first.folder.parent == private_cache
    stamp = (first.folder / "dynamics.onnx").stat().st_mtime_ns

    import export.onnx_export

    def no_export(*args, **kwargs):
        raise AssertionError("exported again instead of reusing the cache")

    monkeypatch.setattr(export.onnx_export, "write_export", no_export)
    model = load(ckpt, backend="onnx")
    assert model.backend.folder == first.folder
    assert (first.folder / "dynamics.onnx").stat().st_mtime_ns == stamp
    assert cache_mod.resolve_export(ckpt).source == "cache"


def test_a_damaged_cache_entry_is_exported_again(tiny_checkpoint: Path, tmp_path: Path, private_cache: Path) -> None:
    ckpt = tmp_path / "model.safetensors"
    shutil.copy(tiny_checkpoint, ckpt)
    folder = cache_mod.resolve_export(ckpt).folder
    (folder / "manifest.json").unlink()  # an entry cut short before its manifest was written
    again = cache_mod.resolve_export(ckpt)
    assert again.source == "exported" and again.folder == folder and (folder / "manifest.json").is_file()
    (folder / "dynamics.onnx").write_bytes(b"not a graph")  # an altered graph
    assert cache_mod.resolve_export(ckpt).source == "exported"


def test_an_export_beside_the_checkpoint_is_used_and_must_match_it(tiny_export: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.safetensors"
    shutil.copy(tiny_checkpoint, ckpt)
    shutil.copytree(tiny_export, tmp_path / "model.onnx")
    assert cache_mod.resolve_export(ckpt).source == "beside"
    other = train_tiny(tmp_path / "other.safetensors", seed=1, steps=1)
    shutil.copytree(tiny_export, tmp_path / "other.onnx")
    with pytest.raises(ManifestError, match="does not match"):
        load(other, backend="onnx")


def test_precision_device_and_thread_errors(tiny_export: Path, monkeypatch) -> None:
    with pytest.raises(WorldSimError, match="fp32"):
        load(tiny_export, backend="onnx", precision="bf16")
    with pytest.raises(WorldSimError, match="expected 'auto', 'cpu'"):
        load(tiny_export, backend="onnx", device="tpu")
    if CUDA_EP not in require_onnxruntime().get_available_providers():
        with pytest.raises(WorldSimError, match="onnxruntime-gpu"):
            load(tiny_export, backend="onnx", device="cuda")
    for bad in ("0", " 2", "\u00b2", "\u0662", str(2**31), "9" * 30):  # "²" and "٢" pass str.isdigit()
        monkeypatch.setenv("WORLDSIM_ORT_THREADS", bad)
        with pytest.raises(WorldSimError, match=f"WORLDSIM_ORT_THREADS must be a number of threads >= 1 .*got '{bad}'"):
            load(tiny_export, backend="onnx")
    monkeypatch.setenv("WORLDSIM_ORT_THREADS", "1")
    assert load(tiny_export, backend="onnx").backend.device == "cpu" or CUDA_EP in require_onnxruntime().get_available_providers()


def test_the_dream_env_runs_on_the_onnx_backend(tiny_export: Path) -> None:
    env = gym.make("worldsim/Dream-v0", checkpoint=str(tiny_export), backend="onnx", width=16, height=16)
    frames, actions = toy_rollouts(1, 4, seed=3)
    obs, _ = env.reset(seed=0, options={"frames": frames[0], "actions": actions[0]})
    for _ in range(3):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert obs.shape == (16, 16, 3) and obs.dtype == np.uint8 and np.isfinite(reward)
    env.close()


def test_bench_dream_times_both_backends_side_by_side(tmp_path: Path, private_cache: Path, capsys) -> None:
    from worldsim.cli import main as cli

    out = tmp_path / "dream.json"
    args = ["bench", "dream", "--preset", "tiny", "--size", "16", "16", "--batch", "1", "2", "--chunks", "1",
            "--seconds", "0.1", "--rounds", "2", "--device", "cpu", "--backend", "torch", "onnx", "--json", str(out), "--no-env"]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli(args) == 0
        gc.collect()
    # The random model's scratch folder is removed when the timing ends, not by a finalizer
    # that warns "Implicitly cleaning up" (an error under -W error::ResourceWarning).
    assert not [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["backend"], r["batch"]) for r in rows) == [("onnx", 1), ("onnx", 2), ("torch", 1), ("torch", 2)]
    assert all(r["frames_per_s"] > 0 and r["device"] == "cpu" for r in rows)
    # The ratio is the median of rounds that alternate the backends, one per round.
    for r in (r for r in rows if r["backend"] == "onnx"):
        assert len(r["round_ratios"]) == 2 and min(r["round_ratios"]) <= r["ratio"] <= max(r["round_ratios"])
    printed = capsys.readouterr().out
    assert "onnx / torch" in printed and "at B=2, K=1" in printed
    # The random model is saved afresh each run (never byte-identical), so its export is
    # thrown away with it rather than left in the user's cache, a new copy every run.
    assert not private_cache.exists() or not any(private_cache.iterdir())
    assert os.environ["WORLDSIM_ONNX_CACHE"] == str(private_cache)


def test_an_export_whose_manifest_config_does_not_describe_its_graphs_is_refused(tiny_export: Path, tmp_path: Path) -> None:
    """The graphs' hashes are checked, the manifest's config is not: a layer count edited
    there sized the KV cache (10**6 layers tried to allocate 53 GB), other sizes failed
    deep inside a step with an ONNX Runtime or numpy error."""
    for name, change in {"layers": {"layers": 10**6}, "width": {"width": 512, "heads": 2}}.items():
        folder = tmp_path / name
        shutil.copytree(tiny_export, folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["config"]["dynamics"].update(change)
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ManifestError, match="does not describe its dynamics graph"):
            load(folder, backend="onnx", device="cpu")
    manifest["config"]["dynamics"].update(width=64, heads=2, context=10**7)  # 153 GB of cache at the first prompt
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="has a bad one.*context 10000000 exceeds"):
        load(folder, backend="onnx", device="cpu")


def test_an_unwritable_onnx_cache_is_one_error_naming_it_and_the_ways_around(tiny_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    """It was a bare NotADirectoryError or PermissionError from mkdir (a read-only home, say)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("WORLDSIM_ONNX_CACHE", str(blocker / "cache"))
    with pytest.raises(WorldSimError, match=r"cannot write the ONNX cache .*WORLDSIM_ONNX_CACHE.*worldsim export onnx"):
        load(tiny_checkpoint, backend="onnx", device="cpu")


def test_an_onnx_cache_on_a_full_disk_is_one_error_naming_it_and_the_ways_around(
    tiny_checkpoint: Path, private_cache: Path, full_disk
) -> None:
    """A disk that filled while the cache's export was written gave a bare "File too large" (or
    "No space left on device"), naming neither the cache nor how to put it elsewhere."""
    with full_disk(1000), pytest.raises(WorldSimError, match=rf"cannot write the ONNX cache {private_cache}/\w+ \(File too large\); free space there, set WORLDSIM_ONNX_CACHE"):
        load(tiny_checkpoint, backend="onnx", device="cpu")
    assert list(private_cache.iterdir()) == []  # no half export, no temporary folder


def test_threads_sets_the_onnx_backends_threads_as_torchs(monkeypatch, capsys) -> None:
    """`--threads N` with `--backend onnx` runs ONNX Runtime on N threads in bench dream-env (and
    eval and play, through the same helper), as in bench dream: it set only torch's there."""
    from export.ort_session import THREADS_ENV
    from worldsim.cli import main as cli
    from worldsim.cpus import ORT_THREADS_ENV

    assert ORT_THREADS_ENV == THREADS_ENV  # the core names it itself: it never imports export
    monkeypatch.setenv(THREADS_ENV, "5")
    monkeypatch.delenv(THREADS_ENV)  # unset now; restored as it was afterwards
    ort = require_onnxruntime()
    made = []
    real = ort.InferenceSession

    def session(path, opts, **kwargs):
        made.append(opts.intra_op_num_threads)
        return real(path, opts, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session)
    before = torch.get_num_threads()
    try:
        args = ["bench", "dream-env", "--preset", "tiny", "--width", "16", "--height", "16", "--backend", "onnx",
                "--device", "cpu", "--threads", "1", "--steps", "1", "--warmup", "0", "--nums", "1"]  # fmt: skip
        assert cli(args) == 0
    finally:
        torch.set_num_threads(before)
    assert made and set(made) == {1}


def _a_workers_onnx_dream(folder: str) -> tuple[list[int], int]:
    """Load an export in this (pool worker) process: each session's intra-op threads, and the OS
    threads that loading added."""
    before = len(os.listdir("/proc/self/task"))
    backend = load(folder, backend="onnx", device="cpu").backend
    added = len(os.listdir("/proc/self/task")) - before
    sessions = (backend._encoder, backend._decoder, backend._dynamics)
    return [s.get_session_options().intra_op_num_threads for s in sessions], added


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc (Linux)")
@pytest.mark.parametrize("context, threads", [("fork", None), ("spawn", None), ("spawn", "2")])
def test_an_async_workers_onnx_dream_runs_on_one_thread_unless_worldsim_ort_threads_says(
    tiny_export: Path, monkeypatch, context: str, threads: str | None
) -> None:
    """N async env (or record) workers with backend="onnx" each ran its three sessions on every
    core, N times the cores in threads, where their torch runs on one. A worker's sessions now
    take one thread, as torch's do, unless WORLDSIM_ORT_THREADS says."""
    import multiprocessing

    from export.ort_session import THREADS_ENV

    if threads is None:
        monkeypatch.delenv(THREADS_ENV, raising=False)
    else:
        monkeypatch.setenv(THREADS_ENV, threads)
    with multiprocessing.get_context(context).Pool(1) as pool:
        per_session, added = pool.apply_async(_a_workers_onnx_dream, (str(tiny_export),)).get(timeout=300)  # a fork that hung fails here
    assert per_session == [1 if threads is None else int(threads)] * 3
    if threads is None:
        assert added <= 1, f"loading the dream added {added} threads to the worker"
