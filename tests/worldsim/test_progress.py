"""Progress in a log: when stderr is no terminal (`nohup worldsim train ... > log`, CI), the
commands write a few whole lines instead of a carriage-return bar redrawn many times a second."""

from __future__ import annotations

import io
import re

import pytest

from tests.worldsim.test_train import FAST, toy_recording
from tests.worldsim.toy_env import FULL_ID
from worldsim.cli import main as cli
from worldsim.progress import LineProgress


class Clock:
    """A ``time.monotonic`` that the test moves on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr("worldsim.progress.time.monotonic", c)
    return c


def test_a_log_gets_a_line_each_tenth_and_a_last_line_with_the_total_time(clock: Clock) -> None:
    log = io.StringIO()
    bar = LineProgress(1000, "train tokenizer", unit="step", stream=log)
    for _ in range(1000):
        clock.now += 0.125  # a tenth takes 12.5 s: the tenths, not the minute, set the pace
        bar.update(1)
        bar.set_postfix(loss="0.0412")
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 10, lines
    assert lines[0] == "train tokenizer: 100/1000 steps (10%), 0:12 so far, 8.00 steps/s, about 1:52 left; loss=0.0412"
    assert lines[-1] == "train tokenizer: 1000/1000 steps (100%) in 2:05, 8.00 steps/s; loss=0.0412"


def test_a_slow_run_writes_a_line_a_minute_and_a_resumed_one_counts_its_own_rate(clock: Clock) -> None:
    log = io.StringIO()
    bar = LineProgress(100, "train dynamics", unit="step", initial=50, stream=log)
    for _ in range(4):
        clock.now += 30.0  # 2 steps a minute: no tenth in sight, so the clock sets the pace
        bar.update(1)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("train dynamics: 52/100 steps (52%), 1:00 so far, 0.03 steps/s"), lines
    bar.close()
    bar.close()
    assert log.getvalue().splitlines()[-1] == "train dynamics: 54/100 steps (54%) in 2:00, 0.03 steps/s"
    assert len(log.getvalue().splitlines()) == 3


def test_train_and_record_write_whole_lines_when_stderr_is_a_file(tmp_path, capsys) -> None:
    """pytest's captured stderr is no terminal, as a log file is not: tqdm wrote `\\r` redraws there."""
    data = toy_recording(tmp_path / "toy.wsrec")
    out = tmp_path / "tok.safetensors"
    assert cli(["train", "tokenizer", "--data", str(data), "--out", str(out), "--steps", "3", *FAST]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err, err
    assert re.search(r"^train tokenizer: 3/3 steps \(100%\) in 0:\d\d, [\d.]+ steps/s; loss=[\d.]+, fps=[\d.]+$", err, re.M), err
    rec = tmp_path / "toy.msgpack"
    assert cli(["record", "--env", FULL_ID, "--steps", "200", "--out", str(rec)]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and re.search(r"^record: 200/200 steps \(100%\) in ", captured.err, re.M), captured.err
    assert captured.out.startswith("wrote 200 steps")  # the summary, on stdout as before
    assert cli(["record", "--env", FULL_ID, "--steps", "20", "--out", str(rec), "--overwrite", "--quiet"]) == 0
    assert "record:" not in capsys.readouterr().err
