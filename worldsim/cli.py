"""The ``worldsim`` command: a table of subcommands, each imported only when it runs.

Every subcommand lives beside the code it drives and exposes ``main(argv) -> int``, which
parses its own arguments. This keeps ``worldsim --help`` instant (no torch import) and
keeps the core free of imports from ``envs/``, ``agents/`` and ``export/``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

# name -> ("module:function", one-line help). Longest name wins ("bench engine" over "bench").
COMMANDS: dict[str, tuple[str, str]] = {
    "play": ("agents.human:main", "play the dream, the engine or both side by side with keyboard and mouse"),
    "export onnx": ("export.onnx_export:main", "export a checkpoint to ONNX graphs with a manifest, verified against torch"),
    "bench engine": ("envs.blockworld.bench:main", "BlockWorld steps/s, single and vector, and reset time"),
    "train tokenizer": ("worldsim.train:tokenizer_main", "fit the frame tokenizer (FSQ autoencoder) on recordings"),
    "train dynamics": ("worldsim.train:dynamics_main", "fit the world model's transformer on recordings, given a tokenizer"),
    "train refiner": ("worldsim.train:refiner_main", "add a refiner to a world model: sharper frames from the frame shown before"),
    "train swap-decoder": ("worldsim.train:swap_decoder_main", "give a world model the decoder (and refiner) of a tokenizer fine-tuned with --decoder-only"),
    "train set-guidance": ("worldsim.train:set_guidance_main", "store the action guidance a world model samples with"),
    "bench train": ("worldsim.bench:train_main", "training frames/s and tokens/s per preset, and the share of the matmul peak"),
    "bench dream-env": ("envs.dream_bench:main", "dream env steps/s through Gymnasium: single, and vector at N=16 and N=64"),
    "bench dream": ("envs.dream_bench:bench_dream_main",
                    "generation frames/s at B=1 and B=64 and FLOPs/frame, then the dream env's steps/s through Gymnasium"),
    "record": ("agents.record:main", "roll out the random or explorer agent in a Gymnasium pixel env and write a recording"),
    "bench record": ("agents.bench_record:main", "recording steps/s (1 process and --num-envs) and PNG bytes/frame"),
    "replay": ("worldsim.video:main", "turn a recording (file or shard folder) into an MP4 or GIF, with an optional overlay"),
    "eval": ("worldsim.evaluate:main", "measure a world model against its reference env: PSNR/SSIM, controllability, permanence, stability"),
    "demo": ("worldsim.demo:main", "dream BlockWorld with the shipped model: GIFs, frames/s and PSNR against copy-last"),
    "train recipe": ("worldsim.recipe:main", "reproduce a shipped model from nothing (record, tokenizer, dynamics), resumable"),
}


def json_object(text: str) -> dict:
    """An argparse ``type`` for options such as ``--env-kwargs``: a JSON object, or a usage error."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


DEVICE_HELP = "torch device: auto (the default: CUDA if present, else the CPU), cpu, cuda, cuda:1 ..."
"""The help of ``--device``, the same in every command."""

PRECISIONS = ("auto", "fp32", "bf16")
"""What ``--precision`` takes in every command: ``auto`` is the device's fastest accurate one."""


def precision_choice(text: str) -> str | None:
    """An argparse ``type`` for an inference ``--precision``: ``fp32``, ``bf16``, or ``auto`` (None).

    ``worldsim train`` took ``auto`` while eval and the benches refused it, so a script that
    passed one ``--precision`` to each command failed on the second.
    """
    if text not in PRECISIONS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(PRECISIONS)}, got {text!r}")
    return None if text == "auto" else text


def _usage(group: str | None = None) -> str:
    """The command table; with ``group`` (``train``, ``bench``, ...) only that group's commands."""
    names = sorted(n for n in COMMANDS if group is None or n.split()[0] == group)
    width = max(len(name) for name in names)
    lines = ["usage: worldsim <command> [options]   (worldsim <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {COMMANDS[name][1]}" for name in names]
    return "\n".join(lines)


def _resolve(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    for n in (2, 1):
        name = " ".join(argv[:n])
        if len(argv) >= n and name in COMMANDS:
            return name, list(argv[n:])
    return None


def _expand_home(args: Sequence[str]) -> list[str]:
    """``~`` or ``~user`` at the start of an argument, or of the value of ``--option=value``,
    as the user's home folder.

    The shell expands ``--out ~/runs`` but neither ``--out=~/runs`` nor a quoted ``"~/runs"``
    (a path held in a script's variable), and argparse does not either: every command then
    made a folder named ``~`` in the working directory.
    """
    expanded = []
    for arg in args:
        option, eq, value = arg.partition("=")
        if arg.startswith("~"):
            arg = os.path.expanduser(arg)
        elif option.startswith("--") and eq and value.startswith("~"):
            arg = f"{option}={os.path.expanduser(value)}"
        expanded.append(arg)
    return expanded


def _warning_printer(name: str, fallback: Any) -> Any:
    """A ``warnings.showwarning`` that prints WorldSim's own warnings (a truncated recording,
    say) as one line, once each, instead of with the source line that raised them."""
    shown: set[str] = set()

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if category.__module__.split(".")[0] not in ("worldsim", "envs", "agents", "export"):
            fallback(message, category, filename, lineno, file, line)
            return
        text = f"worldsim {name}: warning: {message}"
        if text not in shown:
            shown.add(text)
            print(text, file=sys.stderr if file is None else file)

    return show


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises :class:`KeyboardInterrupt`, so that the clean-up
    written for Ctrl-C runs for it too."""


# Commands that keep SIGTERM's own handling: `play` lets pygame (SDL) turn it into a window
# close, which ends the game as Escape does (the --record file and --screenshot are written).
_OWN_SIGTERM = frozenset({"play"})


@contextlib.contextmanager
def _sigterm_as_interrupt(name: str) -> Iterator[None]:
    """Raise :class:`Terminated` on SIGTERM while command ``name`` runs.

    Without it SIGTERM (``kill``, ``docker stop``, a job scheduler's time limit) ended the
    process on the spot: a checkpoint or ONNX export being written left its temporary file
    or folder behind for good, and nothing was said. Only the main thread of the process
    that set it may raise: a process forked from it restores the default and is ended by it.
    """
    if name in _OWN_SIGTERM or threading.current_thread() is not threading.main_thread():
        yield
        return
    pid = os.getpid()

    def terminated(signum: int, frame: Any) -> None:
        if os.getpid() != pid:  # a forked child that inherited the handler: die as it would have
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; user errors print one line and exit 2, never a traceback.

    Output piped into a reader that stops early (``worldsim --help | head``) ends the
    command quietly, as other Unix tools do, with the status of a SIGPIPE death (141).
    """
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows up here for output still buffered
        return code
    except BrokenPipeError:
        # Python would flush stdout again at exit and print a second traceback: point it at
        # /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        # asked for: on stdout, status 0; a bare `worldsim` is a usage error (stderr, 2), as a
        # bare `worldsim train` is and argparse's own usage errors are
        print(_usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from worldsim import __version__

        print(f"worldsim {__version__}")
        return 0
    found = _resolve(argv)
    groups = {name.split()[0] for name in COMMANDS if " " in name}
    if found is None and argv[0] in groups and (len(argv) == 1 or argv[1] in ("-h", "--help")):
        asked = len(argv) > 1  # `worldsim train --help`: the train commands; bare `worldsim train` is a usage error
        print(_usage(argv[0]), file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    if found is None:
        print(f"worldsim: unknown command {' '.join(argv[:2])!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    name, rest = found
    rest = _expand_home(rest)
    target = COMMANDS[name][0]
    module_name, func_name = target.split(":")

    from worldsim.errors import WorldSimError

    previous = warnings.showwarning
    warnings.showwarning = _warning_printer(name, previous)
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        with _sigterm_as_interrupt(name):
            return int(func(rest) or 0)
    except WorldSimError as e:
        print(f"worldsim {name}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise  # the reader of our output went away: quiet, in main
    except KeyboardInterrupt as e:
        hint = f"; {e}" if str(e) else ""  # a command may say how to go on (the recipe: run it again)
        if isinstance(e, Terminated):
            print(f"worldsim {name}: terminated{hint}", file=sys.stderr)
            return 128 + signal.SIGTERM  # 143, the status a shell gives a process SIGTERM ended
        print(f"worldsim {name}: interrupted{hint}", file=sys.stderr)
        return 130
    except OSError as e:  # the file system said no: a path that cannot be made, read or written
        where = " -> ".join(repr(str(f)) for f in (e.filename, e.filename2) if f is not None)
        print(f"worldsim {name}: error: {e.strerror or e}{': ' + where if where else ''}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        hint = {"pygame": "pip install pygame", "onnxruntime": "pip install onnxruntime"}.get(
            (e.name or "").split(".")[0]
        )
        if hint is None:
            raise
        print(f"worldsim {name}: error: {e.name} is not installed; run `{hint}`", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())
