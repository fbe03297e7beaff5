"""Smoke run of `worldsim bench engine` with a tiny budget."""

import re

import pytest

from envs.blockworld.bench import main
from worldsim.errors import WorldSimError


def test_bench_engine_reports_rates_reset_time_and_the_targets(capsys):
    assert main(["--seconds", "0.2"]) == 0  # 64x64 and 64 worlds: the setting, so targets are judged
    out = capsys.readouterr().out
    single = re.search(r"single env\s+([\d,]+)\s+([\d,]+)", out)
    vector = re.search(r"vector env \(64 worlds\)\s+([\d,]+)\s+([\d,]+)", out)
    assert single and vector, out
    assert int(single.group(1).replace(",", "")) > 0 and int(vector.group(1).replace(",", "")) > 0
    assert re.search(r"reset \(new world\)\s+[\d.]+ s", out)
    for target in ("single env >= 2,000 steps/s", "vector env >= 8,000 steps/s", "reset < 0.2 s"):
        assert re.search(rf"target {re.escape(target)}.*: (met|NOT met) \(", out), out


def test_bench_engine_other_sizes_print_no_verdict_and_bad_options_fail(capsys):
    assert main(["--seconds", "0.1", "--num-envs", "2", "--width", "32", "--height", "16"]) == 0
    out = capsys.readouterr().out
    assert "vector env (2 worlds)" in out and "target" not in out
    with pytest.raises(WorldSimError, match="--num-envs"):
        main(["--num-envs", "0"])


def test_bench_engine_runs_where_the_os_reports_no_load_average(monkeypatch, capsys):
    monkeypatch.delattr("os.getloadavg")  # Windows has none
    assert main(["--seconds", "0.1", "--num-envs", "2", "--width", "16", "--height", "16"]) == 0
    assert "load average n/a at start" in capsys.readouterr().out


def test_bench_engine_writes_its_figures_to_json_in_a_new_folder(tmp_path, capsys):
    """As `bench train`, `bench dream` and `bench record` do: a row per configuration, the
    folder made."""
    import json

    out = tmp_path / "new folder" / "engine.json"
    assert main(["--seconds", "0.1", "--num-envs", "2", "--width", "16", "--height", "16", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    single, vector = doc["rows"]
    assert (single["env"], vector["env"], vector["num_envs"]) == ("single", "vector", 2)
    assert f"{single['steps_per_s']:,.0f}" in printed and f"{vector['steps_per_s']:,.0f}" in printed
    assert doc["reset_seconds"] > 0 and (doc["width"], doc["height"]) == (16, 16) and doc["targets"] == {}
