"""A tiny world model checkpoint for the dream env and viewer tests, built once per process.

The frames are 16x16 so that the ``tiny`` preset generates fast enough for long rollouts on
a shared 2-core CPU; the checkpoint names BlockWorld as its source env, as the shipped
model does. A second checkpoint names a toy env with a ``Discrete`` action space, to show
the dream env is not tied to BlockWorld.
"""

from __future__ import annotations

from pathlib import Path

import torch

from worldsim.checkpoint import ModelConfig, save_model
from worldsim.presets import dynamics_config, get_preset
from worldsim.registration import BLOCKWORLD_ID
from worldsim.spaces import ActionSpec
from worldsim.tokenizer import Tokenizer
from worldsim.transformer import Dynamics

SIDE = 16
"""Frame height and width the tests run the dream at."""
BLOCKWORLD_SPEC = ActionSpec("MultiDiscrete", (3, 3, 2, 3, 3, 2, 2, 10))
TOY_ID = "tests.worldsim.toy_env:ToyImage-v0"
TOY_SPEC = ActionSpec("Discrete", (5,))

_cache: dict[str, Path] = {}


def _build(path: Path, spec: ActionSpec, env_id: str, env_kwargs: dict) -> Path:
    torch.manual_seed(0)
    preset = get_preset("tiny")
    dyn = dynamics_config(preset, preset.tokenizer.levels, spec)
    config = ModelConfig(tokenizer=preset.tokenizer, dynamics=dyn, frame_shape=(SIDE, SIDE),
                         env_id=env_id, env_kwargs=env_kwargs, preset="tiny")  # fmt: skip
    save_model(path, config, Tokenizer(preset.tokenizer), Dynamics(dyn))
    return path


def blockworld_checkpoint(folder: Path) -> Path:
    """The path of a tiny BlockWorld dream checkpoint (built on first use)."""
    if "blockworld" not in _cache:
        _cache["blockworld"] = _build(folder / "tiny-blockworld.safetensors", BLOCKWORLD_SPEC, BLOCKWORLD_ID, {})
    return _cache["blockworld"]


def toy_checkpoint(folder: Path) -> Path:
    """The path of a tiny checkpoint of the toy env (``Discrete(5)``), built on first use."""
    if "toy" not in _cache:
        _cache["toy"] = _build(folder / "tiny-toy.safetensors", TOY_SPEC, TOY_ID, {"discrete": True})
    return _cache["toy"]
