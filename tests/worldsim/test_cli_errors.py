"""Bad flags across the CLI: one line naming the flag, exit 2, no traceback, nothing run."""

from __future__ import annotations

import argparse

import pytest

from worldsim.cli import COMMANDS, DEVICE_HELP
from worldsim.cli import main as cli


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "dream", "--batch", "0"], "--batch and --chunks must be at least 1"),
        (["bench", "dream", "--threads", "0"], "--threads must be at least 1"),
        (["bench", "dream", "--size", "63", "63", "--batch", "1", "--chunks", "1", "--seconds", "0.01", "--rounds", "1"],
         "multiples of 16"),
        (["bench", "dream-env", "--threads", "0"], "--threads must be at least 1"),
        (["bench", "train", "--steps", "-1"], "--steps and --batch must be at least 1"),
        (["bench", "engine", "--width", "4"], "width and height must be integers >= 8"),
        (["record", "--env", "worldsim/BlockWorld-v0", "--steps", "5", "--width", "0", "--out", "never.msgpack"],
         "width and height must be integers >= 8"),
        (["record", "--env", "worldsim/BlockWorld-v0", "--steps", "5", "--workers", "0", "--out", "never"],
         "--workers must be at least 1"),
        (["bench", "record", "--window", "0"], "--window must be at least 1, got 0"),
        (["bench", "record", "--batch", "0"], "--batch must be at least 1, got 0"),
        (["bench", "record", "--workers", "0"], "--workers must be at least 1, got 0"),
        (["bench", "record", "--num-envs", "0"], "--num-envs must be at least 1, got 0"),
        (["bench", "record", "--read-seconds", "0"], "--read-seconds must be positive"),
        (["bench", "record", "--seed", "-1"], "--seed must be between 0 and"),
        (["replay", "pyproject.toml", "--out", "never.gif", "--max-frames", "0"], "--max-frames must be at least 1"),
        (["demo", "--seed", "-1", "--out", "never"], "--seed must be at least 0"),
        (["eval", "--seed", "-1", "--out", "never"], "--seed values must be at least 0"),
        (["eval", "--context", "100", "--out", "never"], "--context must be 1-11 for this model"),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(argv) == 2
    out, err = capsys.readouterr()
    assert message in err and "Traceback" not in err
    assert out == ""  # refused before anything is measured or printed
    assert err.strip().count("\n") == 0
    assert not any(p.name.startswith("never") for p in tmp_path.iterdir())


def test_a_command_group_lists_its_commands(capsys):
    """`worldsim train --help` lists the train commands, as every command takes --help."""
    assert cli(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "train tokenizer" in out and "train dynamics" in out and "bench engine" not in out
    assert cli(["bench"]) == 2  # a group alone is not a command
    err = capsys.readouterr().err
    assert "bench dream" in err and "train tokenizer" not in err


def test_a_bare_worldsim_is_a_usage_error_on_stderr(capsys):
    """As a bare `worldsim train` is: the command table on stderr and status 2; --help: stdout, 0."""
    assert cli([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "train tokenizer" in err
    assert cli(["--help"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "train tokenizer" in out


@pytest.mark.parametrize("argv", [["--help"], ["record", "--help"]])
def test_output_into_a_closed_pipe_ends_quietly(argv):
    """``worldsim --help | head -1``: the reader is gone before the help is written."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-c", "import sys; from worldsim.cli import main; sys.exit(main())", *argv],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    finally:
        os.close(write)
    assert done.stderr == ""  # no BrokenPipeError traceback
    assert done.returncode in (0, 141)  # argparse's own --help exits 0 before the pipe is seen


def test_a_truncated_recording_is_one_warning_line_naming_the_cut(capsys, tmp_path):
    """Replaying what a killed recorder left: the cut is reported once, as one line in the
    CLI's voice, without the source line of WorldSim's code that noticed it."""
    from tests.worldsim.toy_env import record_toy

    path = tmp_path / "run.msgpack"
    record_toy(path, 2, seed=1)
    path.write_bytes(path.read_bytes()[:-10])
    assert cli(["replay", str(path), "--out", str(tmp_path / "r.gif")]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"worldsim replay: warning: {path}: truncated at byte ")


@pytest.mark.parametrize(
    "command",
    [["eval", "--out", "never"], ["bench", "dream"], ["bench", "dream-env"], ["bench", "train"],
     ["train", "tokenizer", "--data", "none", "--out", "never.safetensors"]],
)  # fmt: skip
def test_every_precision_flag_takes_auto(command, capsys, tmp_path, monkeypatch):
    """`--precision auto` is accepted wherever --precision is (train took it, eval refused it)."""
    monkeypatch.chdir(tmp_path)
    threads = ["--steps", "0"] if command[0] == "train" else ["--threads", "0"]
    assert cli([*command, "--precision", "auto", *threads]) == 2
    err = capsys.readouterr().err
    assert "must be at least 1" in err and "--precision" not in err  # parsed; refused for the next flag
    with pytest.raises(SystemExit) as e:
        cli([*command, "--precision", "fp16"])
    assert e.value.code == 2
    assert "--precision" in capsys.readouterr().err


@pytest.mark.parametrize("out", [["--out", "~/rec"], ["--out=~/rec"]])
def test_a_path_that_starts_with_a_tilde_is_in_the_home_folder(out, tmp_path, monkeypatch):
    """`--out=~/rec` and a quoted "~/rec", which the shell leaves alone, mean the home folder as
    `--out ~/rec` does, not a folder named `~` in the working directory."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    argv = ["record", "--env", "worldsim/BlockWorld-v0", "--steps", "2", "--width", "16", "--height", "16", "--quiet"]
    assert cli([*argv, *out]) == 0
    assert (home / "rec").is_dir() and not list(work.iterdir())


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, as `worldsim COMMAND --help` builds it."""
    import contextlib
    import io

    found: dict[str, argparse.ArgumentParser] = {}

    def grab(self: argparse.ArgumentParser, file: object = None) -> None:
        found[self.prog.removeprefix("worldsim ")] = self

    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
        mp.setattr(argparse.ArgumentParser, "print_help", grab)
        for name in COMMANDS:
            with contextlib.suppress(SystemExit):
                cli([*name.split(), "--help"])
    assert set(found) == set(COMMANDS)
    return found


def test_every_option_with_a_default_states_it_in_its_help():
    """`--help` says what an option left out means: `bench record --agent` is explorer, not
    `record`'s random, and `demo --steps` 200; an option without a help line says nothing."""
    silent = []
    for name, parser in _parsers().items():
        for a in parser._actions:
            quiet_default = a.default in (None, {}, argparse.SUPPRESS) or a.default is False or a.nargs == 0
            if a.option_strings and not quiet_default and "default" not in (a.help or ""):
                silent.append(f"{name} {a.option_strings[0]} (default {a.default!r})")
    assert not silent, silent


def test_device_has_the_same_help_everywhere():
    """Every --device takes the same values and says so in the same words (play: "the dream's")."""
    helps = {name: a.help for name, p in _parsers().items() for a in p._actions if "--device" in a.option_strings}
    assert len(helps) >= 8
    assert all(h.endswith(DEVICE_HELP) for h in helps.values()), helps


def test_demo_refuses_an_out_that_cannot_be_a_folder_before_it_dreams(tmp_path, monkeypatch, capsys):
    """As eval and export do: not after a minute of loading the model and dreaming."""
    import worldsim.runtime

    def no_dream(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(worldsim.runtime, "load", no_dream)
    (tmp_path / "a file").write_text("")
    assert cli(["demo", "--out", str(tmp_path / "a file")]) == 2
    assert "worldsim demo: error: File exists" in capsys.readouterr().err
