"""The ONNX graphs of a world model, as torch modules to trace, and their tensor specs.

* **encoder**: uint8 frames ``[B, H, W, 3]`` -> codes ``[B, h, w]`` (prompts).
* **decoder**: codes ``[B, h, w]`` -> uint8 frames ``[B, H, W, 3]`` (every generated frame).
* **refiner** (only for a checkpoint with one): the frames shown before, the decoded frames
  and the codes of both -> uint8 frames ``[B, H, W, 3]`` (:class:`worldsim.tokenizer.Refiner`).
* **dynamics**: one pass of the transformer with the KV cache as explicit tensors. It takes
  F context frames to commit (F = 0, 1 or many), the partly masked target frame, the cache
  (one key and one value input per layer) and its validity mask, and returns the target's logits, reward and episode-end logit plus
  the committed frames' new cache entries. One graph serves every runtime call:

  - a MaskGIT pass without a commit is F = 0;
  - the first pass of a step, which commits the previous frame, is F = 1 (the torch
    backend's fused ``predict(..., commit=...)``);
  - a prompt's ``append`` of F frames is F = F with a fully masked dummy target (N extra
    tokens, and it runs once per prompt).

  The MaskGIT chunks are not a separate graph: each chunk is one dynamics pass, and the
  choice of what to fix in each chunk is :mod:`worldsim.sampling`, shared with torch.

Why one dynamics graph and not three: every ONNX file holds its own copy of the weights,
and a single graph keeps one copy on disk and in memory. The torch methods special-case
"no mask needed" with Python branches (``Fr > 1``, ``valid is None``, ``kv is None``); a
traced graph cannot branch, so :class:`DynamicsStepGraph` always builds the full mask from
the same :class:`~worldsim.transformer.Dynamics` pieces. That is the same arithmetic (a mask
of all True changes no attention score), and the export's self-verification compares it
against the real ``Dynamics.append`` / ``Dynamics.predict`` on every export.

Why the cache is 2 x layers inputs and not one ``[L, 2, B, heads, S, head_dim]`` tensor:
ONNX has no views, so taking layer i's keys out of one tensor copies them, every pass. The
runtime keeps one numpy array, and :func:`cache_feed` hands ONNX Runtime its per-layer
slices, which are contiguous views that it reads in place. On the small model at B = 16
this removed 70 % of the pass time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from worldsim.checkpoint import ModelConfig
from worldsim.tokenizer import Tokenizer
from worldsim.transformer import Dynamics, Prediction

Dim = int | str
"""A tensor dimension in a spec: a fixed size, or the name of a dynamic axis."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a graph, as the manifest records it."""

    name: str
    dtype: str
    """numpy dtype name: ``uint8``, ``int64``, ``float32`` or ``bool``."""
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    """A graph's file name and its inputs and outputs, in call order."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The ``dynamic_axes`` argument of ``torch.onnx.export``: every named dimension."""
        return {
            t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            for t in self.inputs + self.outputs
            if any(isinstance(d, str) for d in t.shape)
        }

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }


def graph_specs(config: ModelConfig) -> dict[str, GraphSpec]:
    """The specs of the graphs of a dynamics checkpoint's model (three, four with a refiner).

    Dynamic axes: ``B`` worlds, ``H x W`` frame pixels, ``h x w`` code cells, ``F`` context
    frames to commit, ``S`` cached tokens, ``FN`` = F times the tokens per frame.
    """
    dyn = config.dynamics
    if dyn is None:
        raise ValueError("ONNX export needs a dynamics checkpoint (this one holds only a tokenizer)")
    C = len(dyn.action_nvec)
    kv = ("B", dyn.heads, "S", dyn.width // dyn.heads)
    entries = (dyn.layers, 2, "B", dyn.heads, "FN", dyn.width // dyn.heads)
    refiner = {} if not config.tokenizer.refiner_channels else {
        "refiner": GraphSpec(
            "refiner",
            (TensorSpec("prev_frames", "uint8", ("B", "H", "W", 3)), TensorSpec("frames", "uint8", ("B", "H", "W", 3)),
             TensorSpec("prev_codes", "int64", ("B", "h", "w")), TensorSpec("codes", "int64", ("B", "h", "w"))),
            (TensorSpec("refined", "uint8", ("B", "H", "W", 3)),),
        ),
    }  # fmt: skip
    return {
        "encoder": GraphSpec(
            "encoder",
            (TensorSpec("frames", "uint8", ("B", "H", "W", 3)),),
            (TensorSpec("codes", "int64", ("B", "h", "w")),),
        ),
        "decoder": GraphSpec(
            "decoder",
            (TensorSpec("codes", "int64", ("B", "h", "w")),),
            (TensorSpec("frames", "uint8", ("B", "H", "W", 3)),),
        ),
        "dynamics": GraphSpec(
            "dynamics",
            (
                TensorSpec("context_codes", "int64", ("B", "F", "h", "w")),
                TensorSpec("context_actions", "int64", ("B", "F", C)),
                TensorSpec("codes", "int64", ("B", "h", "w")),
                TensorSpec("actions", "int64", ("B", C)),
                TensorSpec("t", "int64", ()),
                TensorSpec("valid", "bool", ("B", "S")),
                *(TensorSpec(name, "float32", kv) for name in cache_names(dyn.layers)),
            ),
            (
                # with a stay gate, its len(levels) values per cell follow the logits
                TensorSpec("logits", "float32", ("B", "h", "w", sum(dyn.levels) + (len(dyn.levels) if dyn.stay_gate else 0))),
                TensorSpec("reward", "float32", ("B",)),
                TensorSpec("done_logit", "float32", ("B",)),
                TensorSpec("entries", "float32", entries),
                *((TensorSpec("still_logit", "float32", ("B",)),) if dyn.still_head else ()),
            ),
        ),
        **refiner,
    }


def cache_names(layers: int) -> list[str]:
    """The dynamics graph's cache inputs: ``cache_key_0, cache_value_0, cache_key_1, ...``."""
    return [f"cache_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


def cache_feed(cache: np.ndarray) -> dict[str, np.ndarray]:
    """The runtime's cache ``[L, 2, B, heads, S, head_dim]`` as the graph's per-layer inputs.

    ``cache[i, j]`` of a C-contiguous array is a contiguous view: nothing is copied.
    """
    cache = np.ascontiguousarray(cache, dtype=np.float32)
    return dict(zip(cache_names(cache.shape[0]), (cache[i, j] for i in range(cache.shape[0]) for j in (0, 1))))


def _as_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` in [-1, 1] (``frames_to_float`` with a positive permutation)."""
    return frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _as_frames(x: torch.Tensor) -> torch.Tensor:
    """float ``[B, 3, H, W]`` in [-1, 1] -> uint8 ``[B, H, W, 3]`` (``float_to_frames``, positively permuted)."""
    return x.permute(0, 2, 3, 1).add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


class EncoderGraph(nn.Module):
    """``Tokenizer.encode`` as a module: uint8 frames -> int64 codes.

    It spells out ``frames_to_float`` with a positive permutation: the TorchScript exporter
    turns ``movedim(-1, -3)`` into a Transpose with a negative axis, which ONNX rejects.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        tok = self.tokenizer
        _, idx = tok.fsq.quantize(tok.encoder(_as_float(frames)))
        return tok.fsq.pack(idx)


class DecoderGraph(nn.Module):
    """``Tokenizer.decode`` as a module: int64 codes -> uint8 frames (positive permutations,
    as in :class:`EncoderGraph`)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        tok = self.tokenizer
        vals = tok.fsq.values(tok.fsq.unpack(codes)).permute(0, 3, 1, 2)  # (B, D, h, w)
        return _as_frames(tok.decoder(vals))


class RefinerGraph(nn.Module):
    """``Tokenizer.refine`` as a module (positive permutations, as in :class:`EncoderGraph`)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, prev_frames: torch.Tensor, frames: torch.Tensor, prev_codes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return _as_frames(self.tokenizer.refiner(_as_float(prev_frames), _as_float(frames), codes != prev_codes))


class DynamicsStepGraph(nn.Module):
    """Commit F context frames and predict the target frame at ``t`` in one pass.

    The context frames are frames ``t - F .. t - 1``, told they have the runtime's
    corruption level (as ``Dynamics.append`` and the fused ``Dynamics.predict`` tell them).
    Attention: the cache where ``valid``; context frames causally among themselves; the
    target sees every context frame and itself, and no context frame sees the target.
    """

    def __init__(self, dynamics: Dynamics) -> None:
        super().__init__()
        self.dynamics = dynamics

    def forward(
        self,
        context_codes: torch.Tensor,
        context_actions: torch.Tensor,
        codes: torch.Tensor,
        actions: torch.Tensor,
        t: torch.Tensor,
        valid: torch.Tensor,
        *cache: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        d = self.dynamics
        p = d.cfg.patch
        B, Fr = context_codes.shape[:2]
        h, w = codes.shape[1:]
        gh, gw = h // p, w // p
        N = gh * gw
        dev = codes.device
        level = torch.full((B, Fr), float(d.cfg.inference_corruption), device=dev)
        xc = d._embed(context_codes, context_actions, 0, level).flatten(1, 2)  # (B, F*N, D)
        xt = d._embed(codes[:, None], actions[:, None], 1, None).flatten(1, 2)  # (B, N, D)
        x = torch.cat([xc, xt], dim=1)  # (B, (F+1)*N, D)
        times = torch.cat([t - Fr + torch.arange(Fr, device=dev), t.reshape(1)])  # (F+1,)
        cos, sin = d._positions(times, gh, gw)
        frame = torch.arange(Fr + 1, device=dev).repeat_interleave(N)  # the target is frame F
        new = frame[:, None] >= frame[None, :]  # ((F+1)*N, (F+1)*N)
        past = [cache[i : i + 2] for i in range(0, len(cache), 2)]  # per layer (keys, values), as _run indexes them
        out, kv = d._run(x, cos, sin, past, d._cache_mask(valid, new, (Fr + 1) * N))
        pred = d._heads(out[:, Fr * N :].reshape(B, 1, N, -1), gh, gw)  # target tokens (B, 1, N, D)
        outs = (packed_logits(pred)[:, 0], pred.reward[:, 0], pred.done_logit[:, 0], kv[:, :, :, :, : Fr * N])
        return outs if pred.still_logit is None else (*outs, pred.still_logit[:, 0])


def packed_logits(pred: Prediction) -> torch.Tensor:
    """The graph's ``logits`` output: the logits, then the stay gate's values when there is one."""
    return pred.logits if pred.stay is None else torch.cat([pred.logits, pred.stay.to(pred.logits.dtype)], -1)
