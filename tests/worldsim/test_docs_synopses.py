"""The command synopses in docs/ name every option the command takes; eval's and demo's also state
their parsers' real defaults (the other synopses name values, not defaults: `[--width W]`)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
from pathlib import Path

import pytest

from worldsim.cli import main

DOCS = Path(__file__).resolve().parents[2] / "docs"
SYNOPSES = [("dream.md", "play"), ("eval.md", "eval"), ("eval.md", "demo"), ("eval.md", "train recipe"),
            ("onnx.md", "export onnx")]  # fmt: skip
OPTION = r"--[a-z][a-z0-9-]*"


def _synopsis(doc: str, command: str) -> str:
    """The code block of ``doc`` that starts with ``worldsim <command> `` and shows options in brackets."""
    blocks = (DOCS / doc).read_text().split("```")[1::2]  # the text inside each fence
    for block in blocks:
        body = block.split("\n", 1)[-1]  # after the fence's language tag
        if body.startswith(f"worldsim {command} ") and "[--" in body:
            return body
    raise AssertionError(f"docs/{doc} has no synopsis of `worldsim {command}`")


def _options(command: str) -> set[str]:
    """The long options in the usage line of ``worldsim <command> --help`` (``--no-x`` of ``--x`` left out)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*command.split(), "--help"])
    usage = out.getvalue().split("\n\n")[0]
    found = set(re.findall(rf"(?<![\w-]){OPTION}", usage)) - {"--help"}
    return {o for o in found if not (o.startswith("--no-") and "--" + o[5:] in found)}


@pytest.mark.parametrize(("doc", "command"), SYNOPSES)
def test_synopsis_names_every_option(doc: str, command: str) -> None:
    shown = set(re.findall(rf"(?<![\w-]){OPTION}(?![\w-])", _synopsis(doc, command)))
    missing = sorted(_options(command) - shown)
    assert not missing, f"docs/{doc}: the synopsis of `worldsim {command}` leaves out {missing}"


@pytest.mark.parametrize(
    ("doc", "module"), [("eval.md", "worldsim.evaluate"), ("eval.md", "worldsim.demo")]
)
def test_synopsis_defaults_are_the_parsers(doc: str, module: str) -> None:
    parser: argparse.ArgumentParser = importlib.import_module(module).build_parser()
    command = parser.prog.removeprefix("worldsim ")
    defaults = {a.option_strings[0]: a.default for a in parser._actions if a.option_strings}
    # "[--episodes 64]" and "[--seed 0 [1 2 ...]]" state a default; "[--checkpoint C]" and
    # "[--precision fp32|bf16]" name a value
    stated = re.findall(rf"\[({OPTION}) ([a-z0-9][\w.]*)[\] ]", _synopsis(doc, command))
    assert stated
    for option, value in stated:
        default = defaults[option]
        default = default[0] if isinstance(default, list) else default
        assert str(default) == value, (
            f"docs/{doc}: `worldsim {command}` states {option} {value}, the parser's default is {default!r}"
        )
