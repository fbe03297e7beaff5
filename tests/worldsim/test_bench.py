"""Smoke runs of `worldsim bench train` and `worldsim bench dream` with tiny budgets."""

from __future__ import annotations

import json

import pytest
import torch

from worldsim.cli import main as cli


@pytest.fixture(autouse=True)
def restore_threads():
    """`--threads` sets torch's thread count for the process: give the next tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_bench_train_reports_throughput_flops_and_share_of_peak(tmp_path) -> None:
    out = tmp_path / "new folder" / "train.json"  # made, as every --out's folder is
    args = ["bench", "train", "--presets", "tiny", "--size", "16", "16", "--batch", "2", "--steps", "1",
            "--device", "cpu", "--threads", "1", "--json", str(out)]  # fmt: skip
    assert cli(args) == 0
    res = json.loads(out.read_text())
    assert {r["model"] for r in res["rows"]} == {"tokenizer", "dynamics"}
    for r in res["rows"]:
        assert r["frames_per_s"] > 0 and r["tokens_per_s"] > 0 and r["gflop_per_step"] > 0 and 0 < r["share_of_peak"]
    assert res["peaks_flops"]["fp32"] > 0


def test_bench_dream_reports_frames_per_second_for_each_batch_and_k(tmp_path) -> None:
    out = tmp_path / "dream.json"
    args = ["bench", "dream", "--preset", "tiny", "--size", "16", "16", "--batch", "1", "2", "--chunks", "1", "2",
            "--seconds", "0.1", "--device", "cpu", "--threads", "1", "--json", str(out), "--no-env"]  # fmt: skip
    assert cli(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["batch"], r["chunks"]) for r in rows) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(r["frames_per_s"] > 0 and r["gflop_per_frame"] > 0 for r in rows)
    k1 = next(r for r in rows if (r["batch"], r["chunks"]) == (1, 1))
    k2 = next(r for r in rows if (r["batch"], r["chunks"]) == (1, 2))
    assert k2["gflop_per_frame"] > k1["gflop_per_frame"]  # a second pass costs FLOPs


def test_the_bench_points_the_onnx_cache_through_the_variable_the_export_reads():
    from export.cache import CACHE_ENV
    from worldsim.bench import ONNX_CACHE_ENV

    assert ONNX_CACHE_ENV == CACHE_ENV  # the core names it itself: it never imports export
