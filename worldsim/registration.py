"""Gymnasium registration by string entry points: the core never imports ``envs``."""

import importlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path

import gymnasium as gym

BLOCKWORLD_ID = "worldsim/BlockWorld-v0"
DREAM_ID = "worldsim/Dream-v0"
DREAM_MAX_EPISODE_STEPS = 1000
"""The dream's default episode length: 50 s of play at 20 ticks/s."""


def register_envs() -> None:
    """Register WorldSim's env ids. Idempotent, so every import path may call it."""
    if BLOCKWORLD_ID not in gym.registry:
        gym.register(
            id=BLOCKWORLD_ID,
            entry_point="envs.blockworld.env:BlockWorldEnv",
            vector_entry_point="envs.blockworld.vector:BlockWorldVectorEnv",
            max_episode_steps=None,
        )
    if DREAM_ID not in gym.registry:
        gym.register(
            id=DREAM_ID,
            entry_point="envs.dream:DreamEnv",
            vector_entry_point="envs.dream_vector:DreamVectorEnv",
            max_episode_steps=DREAM_MAX_EPISODE_STEPS,
        )


SIBLING_PACKAGES = ("envs", "agents", "export")
"""WorldSim's top-level packages beside ``worldsim`` (the envs, the agents, the ONNX export)."""


def shadowed_siblings() -> dict[str, str]:
    """``{package: what Python would import instead}`` for each sibling that is not WorldSim's.

    WorldSim installs ``envs``, ``agents`` and ``export`` as top-level packages beside
    ``worldsim``. A folder of the same name earlier on ``sys.path`` (an RL project's own
    ``envs/``, next to the script it runs) hides them, and the env ids and CLI commands
    that need them would fail with a bare ``No module named 'envs.blockworld'``. Looking
    them up imports nothing.
    """
    home = Path(__file__).resolve().parent.parent
    found = {}
    for name in SIBLING_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        places = list(spec.submodule_search_locations or []) if spec is not None else []
        if spec is not None and spec.origin and not places:
            places = [str(Path(spec.origin).parent)]
        if not any(Path(p).resolve() == home / name for p in places):
            found[name] = ", ".join(places) or (spec.origin if spec is not None and spec.origin else "nothing")
    return found


def warn_if_shadowed() -> None:
    """Warn, once at import, naming each WorldSim package that another folder hides."""
    for name, instead in shadowed_siblings().items():
        warnings.warn(
            f"WorldSim's package {name!r} is hidden by {instead} (a folder named {name!r} earlier on "
            f"sys.path, such as one beside your script): WorldSim's env ids and commands that need "
            f"{name!r} can fail to import it; rename that folder or run from another one",
            RuntimeWarning,
            stacklevel=3,
        )


def resolve_env_id(env_id: str) -> str:
    """The registered id of ``env_id``, importing the module of a ``module:Id`` first.

    The module is looked up on ``sys.path`` and then in the current folder, so that
    ``--env my_envs:MyEnv-v0`` finds ``./my_envs.py`` from the ``worldsim`` script as from
    ``python -m worldsim`` (the script alone does not put the current folder on the path).
    WorldSim's own ids are registered on the way.

    Raises:
        WorldSimError: the module cannot be imported.
    """
    from worldsim.errors import WorldSimError

    if ":" in env_id:
        module, env_id = env_id.split(":", 1)
        try:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as e:
                here = os.getcwd()
                if e.name != module.split(".")[0] or here in sys.path:
                    raise
                sys.path.append(here)  # appended: never shadows an installed package
                importlib.import_module(module)
        except ImportError as e:
            raise WorldSimError(f"cannot import {module!r} for env {env_id!r}: {e}") from None
    if env_id.startswith("worldsim/"):
        register_envs()
    return env_id
