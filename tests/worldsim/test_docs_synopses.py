"""The command synopses in docs/ name every option the command takes; eval's and demo's also state
their parsers' real defaults (the other synopses name values, not defaults: `[--width W]`). Every
command line quoted in the README and docs/ uses only options its command has, and every
synopsis there shows the options its command requires."""

from __future__ import annotations

import argparse
import contextlib
import functools
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


def _usage(command: str) -> str:
    """The usage line of ``worldsim <command> --help``, on one line."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*command.split(), "--help"])
    return " ".join(out.getvalue().split("\n\n")[0].split())


def _options(command: str) -> set[str]:
    """The long options in the usage line of ``worldsim <command> --help`` (``--no-x`` of ``--x`` left out)."""
    found = set(re.findall(rf"(?<![\w-]){OPTION}", _usage(command))) - {"--help"}
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


ROOT = DOCS.parent
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@functools.cache
def _quoted_commands() -> tuple[list[tuple[str, str, str]], list[str]]:
    """Every ``worldsim <command> ...`` quoted in code in the README and docs/ (Python code
    blocks aside), as (page, command, what follows it); and the quoted ones that name no command.

    ``tokenizer|dynamics`` after ``train`` quotes both commands; a table cell's ``\\|`` is a ``|``.
    """
    from worldsim.cli import COMMANDS

    groups = {c.split()[0] for c in COMMANDS}
    found, unknown = [], []
    for page in PAGES:
        text = page.read_text()
        blocks = re.findall(r"```([^\n]*)\n(.*?)```", text, flags=re.S)
        # a line ending in a backslash, or followed by indented lines, goes on there
        lines = [
            ln
            for lang, body in blocks
            if lang != "python"
            for ln in re.sub(r"\\?\n[ \t]+|\\\n", " ", body).splitlines()
        ]
        spans = [
            " ".join(s.split())
            for s in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        ]
        for code in lines + spans:
            code = code.replace("\\|", "|")
            for m in re.finditer(
                r"(?:^|(?<=[\s(;]))worldsim ([a-z][\w|-]*)(?: ([a-z][\w|-]*))?(.*?)(?=\sworldsim |$)",
                code,
            ):
                group, sub, rest = m.group(1), m.group(2) or "", m.group(3)
                names = [f"{group} {s}" for s in sub.split("|")]
                if not all(n in COMMANDS for n in names):
                    names, rest = group.split("|"), f" {sub}{rest}"
                if all(n in COMMANDS for n in names):
                    found += [(page.name, n, rest) for n in names]
                elif group not in groups:  # "worldsim train ..." names a group: fine
                    unknown.append(f"{page.name}: `worldsim {group}` is no command")
    return found, unknown


def test_quoted_commands_use_only_options_their_parsers_have() -> None:
    quoted, unknown = _quoted_commands()
    assert len(quoted) > 100  # the README and docs/ quote that many command lines
    bad = list(unknown)
    for page, command, rest in quoted:
        known = set(re.findall(rf"(?<![\w-]){OPTION}", _usage(command)))
        bad += [f"{page}: `worldsim {command}` has no {o}" for o in re.findall(rf"(?<![\w-]){OPTION}(?![\w-])", rest)
                if o not in known]  # fmt: skip
    assert not bad, "\n".join(sorted(set(bad)))


def test_quoted_synopses_name_required_options_and_real_choices() -> None:
    """A synopsis (a quoted command with ``[--option]`` in it and no `` ...``) shows every option
    the command requires, and the values it lists for an option are ones the parser accepts."""
    bad = []
    for page, command, rest in _quoted_commands()[0]:
        if "[--" not in rest or re.search(r"(^|\s)(\.\.\.|…)", rest):
            continue
        usage = optional = _usage(command)
        while (inner := re.sub(r"\[[^\[\]]*\]", "", optional)) != optional:
            optional = inner
        required = set(re.findall(rf"(?<![\w-]){OPTION}", optional)) - {"--help"}
        shown = set(re.findall(rf"(?<![\w-]){OPTION}(?![\w-])", rest))
        bad += [
            f"{page}: the synopsis `worldsim {command}{rest}` leaves out the required {o}"
            for o in required - shown
        ]
        for option, values in re.findall(rf"({OPTION}) \{{?([\w-]+(?:[|,][\w-]+)+)\}}?", rest):
            choices = re.search(rf"{option} \{{([^}}]+)\}}", usage)
            if choices and not set(re.split("[|,]", values)) <= set(choices.group(1).split(",")):
                bad.append(
                    f"{page}: `worldsim {command}` lists {option} {values}; the parser takes {{{choices.group(1)}}}"
                )
    assert not bad, "\n".join(bad)


def test_documented_load_signature_is_the_real_one() -> None:
    """docs/model.md's ``worldsim.load(...)`` names every parameter, with its default."""
    import inspect

    import worldsim

    text = " ".join((DOCS / "model.md").read_text().split())
    shown = re.search(r"`worldsim\.load\((checkpoint=None, \*,[^`]*)\)`", text)
    assert shown, "docs/model.md has no synopsis of worldsim.load"
    params = [p.strip() for p in shown.group(1).split(",") if p.strip() != "*"]
    real = [
        f"{n}={p.default!r}".replace("'", '"')
        for n, p in inspect.signature(worldsim.load).parameters.items()
    ]
    assert params == real


OUTPUTS = ("--out", "--dir", "--record", "--screenshot", "--json")
"""The options through which commands write files."""


def test_the_readme_says_what_every_output_option_does_to_an_existing_file() -> None:
    """Some commands replace an existing output, others refuse it without a flag: the README's
    table names the rule for every command's every output option."""
    from worldsim.cli import COMMANDS

    text = (ROOT / "README.md").read_text()
    section = text[text.index("**What is already at the output path.**") :]
    section = section[: section.index("\n## ")]
    covered = set()
    for span in re.findall(r"`worldsim ([^`]+)`", section):
        words = span.replace("\\|", "|").split()
        names = [f"{words[0]} {s}" for s in words[1].split("|")] if len(words) > 1 else []
        if not names or not all(n in COMMANDS for n in names):
            names = [words[0]]
        covered |= {(n, o) for n in names for o in words if o in OUTPUTS}
    wanted = {(c, o) for c in COMMANDS for o in OUTPUTS if o in _options(c)}
    assert wanted, "no command writes through an output option?"
    missing = sorted(f"worldsim {c} {o}" for c, o in wanted - covered)
    assert not missing, f"README.md, 'What is already at the output path', leaves out {missing}"
