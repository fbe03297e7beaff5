"""Tiny world model checkpoints for the dream env and viewer tests, trained once per process.

Each is trained in the test run itself, with the same commands a user runs: ``worldsim
record`` (explorer agent), ``worldsim train tokenizer`` and ``worldsim train dynamics``, with
the ``tiny`` preset and a few dozen steps. The frames are 16x16 so that the tiny model
generates fast enough for long rollouts on a shared 2-core CPU. One checkpoint is of
BlockWorld, as the shipped model is; the other of a toy env with a ``Discrete`` action
space, to show the dream env is not tied to BlockWorld.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from worldsim.registration import BLOCKWORLD_ID

SIDE = 16
"""Frame height and width the tests run the dream at."""
TOY_ID = "tests.worldsim.toy_env:ToyImage-v0"
RECORD_STEPS = 300
TOKENIZER_STEPS = 40
DYNAMICS_STEPS = 40

_cache: dict[str, Path] = {}


def _train(folder: Path, env_id: str, agent: str, env_kwargs: str | None) -> Path:
    from agents.record import main as record
    from worldsim.train import dynamics_main, tokenizer_main

    folder.mkdir(parents=True, exist_ok=True)
    data, tok, dyn = folder / "data.msgpack", folder / "tokenizer.safetensors", folder / "dynamics.safetensors"
    common = ["--preset", "tiny", "--device", "cpu", "--precision", "fp32", "--warmup", "5", "--log-every", "10",
              "--val-every", "1000", "--ckpt-every", "1000"]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine a second thread mostly spins
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            extra = ["--env-kwargs", env_kwargs] if env_kwargs else []
            record(["--env", env_id, "--agent", agent, "--steps", str(RECORD_STEPS), "--out", str(data),
                    "--width", str(SIDE), "--height", str(SIDE), "--workers", "1", "--quiet", *extra])  # fmt: skip
            tokenizer_main(["--data", str(data), "--out", str(tok), "--steps", str(TOKENIZER_STEPS),
                            "--batch", "16", "--lr", "3e-3", *common])  # fmt: skip
            dynamics_main(["--data", str(data), "--tokenizer", str(tok), "--out", str(dyn),
                           "--steps", str(DYNAMICS_STEPS), "--batch", "4", "--lr", "1e-3", *common])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return dyn


def blockworld_checkpoint(folder: Path) -> Path:
    """A tiny BlockWorld dream checkpoint, trained on first use (cached for the process)."""
    if "blockworld" not in _cache:
        _cache["blockworld"] = _train(folder / "blockworld", BLOCKWORLD_ID, "explorer", None)
    return _cache["blockworld"]


def toy_checkpoint(folder: Path) -> Path:
    """A tiny checkpoint of the toy env (``Discrete(5)`` actions), trained on first use."""
    if "toy" not in _cache:
        _cache["toy"] = _train(folder / "toy", TOY_ID, "random", '{"discrete": true}')
    return _cache["toy"]
