"""Checkpoints: safetensors weights with the full model config as JSON metadata.

A checkpoint rebuilds its model from the file alone. Its safetensors metadata holds
``format`` (``"worldsim-checkpoint"``), ``version`` and ``config`` (JSON of
:class:`ModelConfig`). A tokenizer checkpoint holds ``tokenizer.*`` tensors; a dynamics
checkpoint holds ``tokenizer.*`` and ``dynamics.*``, so it alone is enough to generate.

Training state for ``--resume`` (optimizer moments, step, RNG states, data position) is a
second safetensors file whose JSON metadata describes the structure. Nothing here uses
pickle: loading a file can never run code. Every write goes to a temporary file in the same
folder, then ``os.replace`` moves it into place, so a kill never leaves a half-written file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from worldsim.atomic import atomic_write
from worldsim.errors import WorldSimError, refuse_unknown_fields
from worldsim.recording import MAX_FRAME_SIDE
from worldsim.spaces import ActionSpec
from worldsim.tokenizer import Tokenizer, TokenizerConfig
from worldsim.transformer import Dynamics, DynamicsConfig

FORMAT = "worldsim-checkpoint"
STATE_FORMAT = "worldsim-train-state"
VERSION = 1
"""Bumped when a change makes older files unreadable; files of another version are refused."""
MAX_LEVELS = 1 << 16
"""The most FSQ levels a channel may have. The dynamics predicts ``sum(levels)`` logits a
cell from as many embedding rows, all real memory: a tokenizer file asking for 10**8 levels
made ``worldsim train dynamics`` try a 100 GB embedding. Trained tokenizers use 5 to 8."""
MAX_ACTION_CHOICES = 1 << 16
"""The most choices all action components may have together: the dynamics embeds each as a
row, so a recording declaring ``Discrete(10**8)`` made training try a 25.6 GB embedding.
BlockWorld's actions have 28, Atari's 18."""
MAX_CONTEXT = 4096
"""The most frames a checkpoint's context may hold. The runtime allocates a KV cache of
``context - 1`` frames at every prompt, so a file asking for 10**7 (with a time_period to
match) made the first prompt of a tiny model try an 82 GB allocation. 4096 frames are
3.4 minutes at 20 ticks/s and the default time_period; trained contexts are tens of frames."""

MAX_REFINER_CHANNELS = 1024
MAX_REFINER_BLOCKS = 64
"""Bounds on the refiner's size (``tokenizer.refiner_*``), checked before anything is built:
it runs at full resolution on every generated frame, and the trained one has 24 channels and
3 blocks."""


class CheckpointError(WorldSimError):
    """The file is not a WorldSim checkpoint, is damaged, or was made by an incompatible version."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a world model, stored inside its checkpoint."""

    tokenizer: TokenizerConfig
    dynamics: DynamicsConfig | None = None
    """None in a tokenizer-only checkpoint."""
    frame_shape: tuple[int, int] = (64, 64)
    """(height, width) of the frames it was trained on."""
    env_id: str | None = None
    """The Gymnasium id of the env the training recordings came from, if known."""
    env_kwargs: dict[str, Any] | None = None
    preset: str | None = None
    """The preset name it was built from, for the record."""
    guidance: float = 1.0
    """The action guidance scale the runtime samples this model with unless told otherwise
    (1 = none; :class:`worldsim.runtime.WorldModel`). A property of the trained weights, so it
    travels with them: ``worldsim train set-guidance`` writes it."""
    guided_actions: tuple[int, ...] | None = None
    """The action components guidance strengthens (None: all of them)."""

    @property
    def action_spec(self) -> ActionSpec | None:
        if self.dynamics is None:
            return None
        return ActionSpec(self.dynamics.action_kind, self.dynamics.action_nvec)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer.to_dict(),
            "dynamics": None if self.dynamics is None else self.dynamics.to_dict(),
            "frame_shape": list(self.frame_shape),
            "env_id": self.env_id,
            "env_kwargs": self.env_kwargs,
            "preset": self.preset,
            "guidance": self.guidance,
            "guided_actions": None if self.guided_actions is None else list(self.guided_actions),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """The config ``to_dict`` wrote, checked with :meth:`check` (it may come from a file made elsewhere).

        A field this WorldSim does not know is refused rather than dropped: it comes from a
        newer WorldSim or a hand-edited file, and a model built without it may not be the
        model that was saved.
        """
        refuse_unknown_fields("model config", d, {f.name for f in dataclasses.fields(cls)})
        config = cls(
            tokenizer=TokenizerConfig.from_dict(d["tokenizer"]),
            dynamics=None if d.get("dynamics") is None else DynamicsConfig.from_dict(d["dynamics"]),
            frame_shape=tuple(d.get("frame_shape", (64, 64))),
            env_id=d.get("env_id"),
            env_kwargs=d.get("env_kwargs"),
            preset=d.get("preset"),
            guidance=float(d.get("guidance", 1.0)),
            guided_actions=None if d.get("guided_actions") is None else tuple(int(i) for i in d["guided_actions"]),
        )
        config.check()
        return config

    def check(self) -> None:
        """Refuse a config no model can have, before anything is built from it.

        Raises:
            ValueError: naming the first bad field.
        """
        t, d = self.tokenizer, self.dynamics
        _check_ints("tokenizer.channels", t.channels, 1)
        _check_ints("tokenizer.levels", t.levels, 2)  # an FSQ channel of one level divides by zero
        if max(t.levels) > MAX_LEVELS or math.prod(t.levels) >= 2**31:  # codes are cached as int32
            raise ValueError(f"tokenizer.levels {list(t.levels)} ask for more than {MAX_LEVELS} levels a channel or "
                             "2**31 codes in all")  # fmt: skip
        _check_ints("tokenizer.res_blocks", t.res_blocks, 0, len(t.channels))
        if 2 ** (len(t.channels) - 1) > MAX_FRAME_SIDE:  # each stage builds layers; 10**5 of them took minutes
            raise ValueError(f"tokenizer.channels has {len(t.channels)} resolutions: a stride of 2**{len(t.channels) - 1} "
                             f"exceeds {MAX_FRAME_SIDE} pixels, the largest frames a recording holds")  # fmt: skip
        for name, most in (("refiner_channels", MAX_REFINER_CHANNELS), ("refiner_blocks", MAX_REFINER_BLOCKS)):
            v = getattr(t, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= most:
                raise ValueError(f"tokenizer.{name} must be an integer from 0 to {most}, got {v!r}")
        if bool(t.refiner_channels) != bool(t.refiner_blocks):
            raise ValueError(f"tokenizer.refiner_channels ({t.refiner_channels}) and refiner_blocks ({t.refiner_blocks}) "
                             "must both be 0 (no refiner) or both above 0")  # fmt: skip
        _check_ints("frame_shape", self.frame_shape, 1, 2)
        if max(self.frame_shape) > MAX_FRAME_SIDE:  # the dream env's observation space allocates 4 bytes a pixel
            raise ValueError(f"frame_shape {list(self.frame_shape)} exceeds {MAX_FRAME_SIDE} pixels a side, "
                             "the largest frames a recording holds")  # fmt: skip
        if not _is_number(self.guidance) or not self.guidance >= 0:
            raise ValueError(f"guidance must be a finite scale >= 0, got {self.guidance!r}")
        for name in ("env_id", "preset"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string or null, got {getattr(self, name)!r}")
        if self.env_kwargs is not None and not isinstance(self.env_kwargs, dict):
            raise ValueError(f"env_kwargs must be an object or null, got {self.env_kwargs!r}")
        if d is None:
            return
        if tuple(d.levels) != tuple(t.levels):
            raise ValueError(f"dynamics.levels {list(d.levels)} differ from tokenizer.levels {list(t.levels)}")
        _check_ints("dynamics.action_nvec", d.action_nvec, 1)
        if sum(d.action_nvec) > MAX_ACTION_CHOICES:
            raise ValueError(f"dynamics.action_nvec has {sum(d.action_nvec)} choices in all, more than {MAX_ACTION_CHOICES}")
        if d.action_kind not in ("Discrete", "MultiDiscrete") or (d.action_kind == "Discrete" and len(d.action_nvec) != 1):
            raise ValueError(f"dynamics.action_kind must be Discrete (one component) or MultiDiscrete, got {d.action_kind!r}")
        for name in ("width", "layers", "heads", "patch", "context", "mlp_ratio", "time_period", "rollout_passes"):
            v = getattr(d, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"dynamics.{name} must be an integer >= 1, got {v!r}")
        if d.width % d.heads:
            raise ValueError(f"dynamics.width {d.width} is not a multiple of dynamics.heads {d.heads}")
        if d.context > MAX_CONTEXT:
            raise ValueError(f"dynamics.context {d.context} exceeds {MAX_CONTEXT} frames, the most a checkpoint may hold "
                             "(the runtime's cache holds context - 1 frames)")  # fmt: skip
        if d.context > d.time_period:  # the runtime's cache holds context - 1 frames: 10**6 of them is gigabytes
            raise ValueError(f"dynamics.context {d.context} exceeds dynamics.time_period {d.time_period}, after which "
                             "frame positions repeat")  # fmt: skip
        for name in ("max_corruption", "inference_corruption", "reward_weight", "done_weight", "still_weight",
                     "rollout_share", "rollout_temperature", "change_weight"):  # fmt: skip
            if not _is_number(getattr(d, name)):
                raise ValueError(f"dynamics.{name} must be a finite number, got {getattr(d, name)!r}")
        for name in ("stay_gate", "still_head"):
            if not isinstance(getattr(d, name), bool):
                raise ValueError(f"dynamics.{name} must be true or false, got {getattr(d, name)!r}")
        for row in d.stay_motion:  # read at every step: a bad row was an IndexError there, not here
            c, v, dx, dy = row
            if not (0 <= c < len(d.action_nvec) and 0 <= v < d.action_nvec[c] and max(abs(dx), abs(dy)) <= MAX_FRAME_SIDE):
                raise ValueError(f"dynamics.stay_motion row {list(row)} is not (component, value, dx, dy) of actions "
                                 f"{list(d.action_nvec)} with shifts of at most {MAX_FRAME_SIDE} cells")  # fmt: skip
        g, C = self.guided_actions, len(d.action_nvec)
        if g is not None and (not g or len(set(g)) != len(g) or not all(0 <= i < C for i in g)):
            raise ValueError(f"guided_actions must be distinct action component indices in [0, {C}), got {list(g)}")


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check_ints(name: str, values: Any, minimum: int, length: int | None = None) -> None:
    """``values``: a non-empty sequence of ints >= ``minimum`` (of ``length`` items if given)."""
    if (
        not isinstance(values, tuple | list) or not values or (length is not None and len(values) != length)
        or any(not isinstance(v, int) or isinstance(v, bool) or v < minimum for v in values)
    ):  # fmt: skip
        count = "" if length is None else f"{length} "
        raise ValueError(f"{name} must be {count}integers >= {minimum}, got {values!r}")


@dataclass
class LoadedModel:
    """A checkpoint's modules, built and filled, in eval mode."""

    config: ModelConfig
    tokenizer: Tokenizer
    dynamics: Dynamics | None
    info: dict[str, Any] = field(default_factory=dict)
    """Free-form training facts stored with the weights (steps, data, losses)."""


def weights_digest(modules: dict[str, torch.nn.Module], salt: str = "") -> str:
    """sha256 over ``salt`` and every tensor of ``modules`` (name prefix -> module), in name
    order: equal digests mean equal weights, so equal codes or outputs."""
    h = hashlib.sha256(salt.encode())
    for prefix, module in modules.items():
        for name, t in sorted(module.state_dict().items()):
            h.update((prefix + name).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


_OS_ERROR = re.compile(r"\(os error (\d+)\)")
"""How safetensors (Rust) ends the message of a failed write: ``... (os error 28)``."""


def atomic_save(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write a safetensors file whole or not at all (:func:`worldsim.atomic.atomic_write`).

    Raises:
        OSError: the file system refused the write (a full disk: ``ENOSPC``), naming ``path``.
    """
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(tmp: str) -> None:
        try:
            save_file(contiguous, tmp, metadata=metadata)
        except SafetensorError as e:
            # safetensors reports a failed write as its own error type: a full disk ended training
            # with a traceback, and the IDM and code caches, which go on without their file on an
            # OSError, lost the eval's result or the run. It is an OSError like any other write's.
            m = _OS_ERROR.search(str(e))
            if m is None:
                raise
            code = int(m[1])
            raise OSError(code, os.strerror(code), str(path)) from e

    atomic_write(path, write)


def _read(path: str | os.PathLike, fmt: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    path = Path(path)
    if path.is_dir():
        hint = " (an ONNX export runs with --backend onnx)" if (path / "manifest.json").is_file() else ""
        raise CheckpointError(f"{path}: a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no items())
    except Exception as e:  # safetensors raises its own types for bad headers and short files
        raise CheckpointError(f"{path}: not a safetensors file, or one cut short or damaged ({e})") from None
    if meta.get("format") != fmt:
        raise CheckpointError(f"{path}: not a WorldSim {fmt} file (metadata format={meta.get('format')!r})")
    if meta.get("version") != str(VERSION):
        raise CheckpointError(
            f"{path}: made by an incompatible WorldSim version (file version {meta.get('version')}, "
            f"this WorldSim reads version {VERSION}); retrain or use the matching WorldSim"
        )
    return meta, tensors


def save_model(
    path: str | os.PathLike,
    config: ModelConfig,
    tokenizer: Tokenizer,
    dynamics: Dynamics | None = None,
    info: dict[str, Any] | None = None,
) -> None:
    """Save a tokenizer (and dynamics) checkpoint atomically."""
    tensors = {f"tokenizer.{k}": v for k, v in tokenizer.state_dict().items()}
    if dynamics is not None:
        tensors.update({f"dynamics.{k}": v for k, v in dynamics.state_dict().items()})
    meta = {
        "format": FORMAT,
        "version": str(VERSION),
        "kind": "dynamics" if dynamics is not None else "tokenizer",
        "config": json.dumps(config.to_dict()),
        "info": json.dumps(info or {}),
    }
    atomic_save(tensors, path, meta)


def _check_tensors(path: str | os.PathLike, config: ModelConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse tensors that are not the ones ``config``'s modules hold, before those are built.

    A config from a file made elsewhere may ask for any size. The modules are built on the
    meta device, which allocates nothing, and compared with the file, so a width of 10**9 is
    an error at once instead of a 48 GB allocation (and a layer count of 10**7 is refused
    before 10**7 blocks are made: the file must hold the tensors of every one).
    """
    t, d = config.tokenizer, config.dynamics
    blocks = len(t.channels) + 2 * sum(t.res_blocks) + (0 if d is None else d.layers)
    if blocks > len(tensors):
        raise CheckpointError(f"{path}: its config asks for {blocks} blocks and layers, the file holds only {len(tensors)} tensors")
    try:
        with torch.device("meta"):
            # Building a layer takes milliseconds even on the meta device, and a layer holds a
            # dozen tensors: a 2 MB file of 20,000 empty tensors asking for 20,000 layers took
            # 94 s and 1 GB to be refused. Counting the tensors of one and two layers (and res
            # blocks) first tells how many the file must hold, at the cost of four small builds. A
            # file short of a few is built and compared below, which names the missing ones.
            need = _tensors_needed(config)
            if need > 2 * len(tensors):
                raise CheckpointError(f"{path}: its config asks for {need} tensors, the file holds only {len(tensors)}")
            want = {f"tokenizer.{k}": v for k, v in Tokenizer(t).state_dict().items()}
            if d is not None:
                want.update({f"dynamics.{k}": v for k, v in Dynamics(d).state_dict().items()})
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError, OverflowError) as e:
        raise CheckpointError(f"{path}: its config describes no model that can be built ({e})") from None
    missing, extra = sorted(want.keys() - tensors.keys()), sorted(tensors.keys() - want.keys())
    if missing or extra:
        some = [f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}" if missing else "",
                f"not in the model {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}" if extra else ""]  # fmt: skip
        raise CheckpointError(f"{path}: its tensors do not match its config ({'; '.join(s for s in some if s)})")
    for name, w in want.items():
        v = tensors[name]
        if v.shape != w.shape:
            raise CheckpointError(f"{path}: tensor {name} has shape {list(v.shape)}, its config needs {list(w.shape)}")
        # Weights stored in another float precision load as the model's; anything else is not weights.
        if v.dtype != w.dtype and not (v.dtype.is_floating_point and w.dtype.is_floating_point):
            raise CheckpointError(f"{path}: tensor {name} is {v.dtype}, the model needs {w.dtype}")
        if v.dtype.is_floating_point and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: tensor {name} holds NaN or infinite values; the weights are damaged")


def _tensors_needed(config: ModelConfig) -> int:
    """How many tensors the modules of ``config`` hold, from builds of at most two layers and
    res blocks (call on the meta device). Layers and res blocks are alike, so it is exact."""
    t, d = config.tokenizer, config.dynamics
    flat = replace(t, res_blocks=(0,) * len(t.channels))
    base = len(Tokenizer(flat).state_dict())
    per_res = len(Tokenizer(replace(flat, res_blocks=(1,) + flat.res_blocks[1:])).state_dict()) - base
    need = base + per_res * sum(t.res_blocks)
    if d is not None:
        one = len(Dynamics(replace(d, layers=1)).state_dict())
        need += one + (len(Dynamics(replace(d, layers=2)).state_dict()) - one) * (d.layers - 1)
    return need


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the modules a checkpoint describes; bad files raise :class:`CheckpointError`."""
    meta, tensors = _read(path, FORMAT)
    if "config" not in meta:
        raise CheckpointError(f"{path}: no model config in its metadata")
    try:
        raw = json.loads(meta["config"])
        config = ModelConfig.from_dict(raw)
    # JSON nested 10**5 deep is a RecursionError, a 5,000-digit number a ValueError: not JSONDecodeErrors.
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"{path}: malformed model config in its metadata ({detail})") from None
    try:
        info = json.loads(meta.get("info", "{}"))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: malformed info in its metadata ({e})") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: malformed info in its metadata (not a JSON object)")
    _check_tensors(path, config, tensors)
    try:
        tokenizer = Tokenizer(config.tokenizer)
        tokenizer.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("tokenizer.")})
        dynamics = None
        if config.dynamics is not None:
            dynamics = Dynamics(config.dynamics)
            dynamics.load_state_dict({k[9:]: v for k, v in tensors.items() if k.startswith("dynamics.")})
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: config and weights do not match a WorldSim model ({e})") from None
    tokenizer.to(device).eval()
    if dynamics is not None:
        dynamics.to(device).eval()
    return LoadedModel(config=config, tokenizer=tokenizer, dynamics=dynamics, info=info)


def save_state(path: str | os.PathLike, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Save training state: named tensors plus a JSON-able structure, atomically."""
    meta = {"format": STATE_FORMAT, "version": str(VERSION), "state": json.dumps(state)}
    atomic_save(tensors, path, meta)


def load_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what :func:`save_state` wrote."""
    meta, tensors = _read(path, STATE_FORMAT)
    try:
        state = json.loads(meta["state"])
    except (KeyError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: malformed training state in its metadata ({e!r})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: malformed training state in its metadata (not a JSON object)")
    return tensors, state


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state dict split into safetensors tensors and a JSON structure."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{pid}.{key}"] = val
            else:
                scalars.setdefault(str(pid), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], struct: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        if name.startswith("opt."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = val
    for pid, sc in struct["scalars"].items():
        state.setdefault(int(pid), {}).update(sc)
    groups = []
    for mine, saved in zip(opt.param_groups, struct["param_groups"]):
        # JSON turned tuples (Adam's betas) into lists; give them back their type.
        groups.append({k: tuple(v) if isinstance(mine.get(k), tuple) else v for k, v in saved.items()})
    opt.load_state_dict({"state": state, "param_groups": groups})


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def checkpoint_steps(path: str | os.PathLike) -> int | None:
    """``info.steps`` of a checkpoint, read from its header alone; None when the file is
    missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("info", "{}"))
        return int(info.get("steps", 0))
    except Exception:  # a damaged file counts as no checkpoint: whoever asks decides what to do
        return None
