"""The ONNX Runtime backend of the runtime: the backend protocol of :mod:`worldsim.runtime`
on the graphs of :mod:`export.graphs`.

It is selected with ``worldsim.load(path, backend="onnx")``. Everything above the backend
(prompt and step validation, the sliding-window cache, MaskGIT sampling and its random
draws) is :class:`worldsim.runtime.WorldModel` and :mod:`worldsim.sampling`, the same code
the torch backend runs under. The KV cache is a float32 numpy array; ONNX Runtime reads its
per-layer slices in place on the CPU (:func:`export.graphs.cache_feed`).

On CUDA the cache makes a round trip through host memory on every pass (the WorldModel
writes into it with numpy slicing); that costs bandwidth at large batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.cache import resolve_export
from export.graphs import cache_feed
from export.manifest import MANIFEST, ManifestError
from export.ort_session import choose_placement, open_session, require_onnxruntime, session_device
from worldsim.checkpoint import ModelConfig
from worldsim.errors import WorldSimError
from worldsim.sampling import MASKED, PassOutput

NO_ACTION = -1


class OrtBackend:
    """Runs an export folder's encoder, decoder and dynamics graphs in ONNX Runtime.

    Args:
        folder: an export folder (``manifest.json`` and the three graphs).
        manifest: its manifest, already validated (:func:`export.manifest.read_manifest`).
        device: ``"auto"`` (the CUDA provider when ``onnxruntime-gpu`` sees a GPU, else the
            CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Attributes:
        device: where it actually runs, ``"cpu"`` or ``"cuda:N"``.
        provider: the ONNX Runtime execution provider it runs on.
    """

    name = "onnx"
    precision = "fp32"

    def __init__(self, folder: str | Path, manifest: dict[str, Any], device: str = "auto") -> None:
        ort = require_onnxruntime()
        self.folder = Path(folder)
        self.manifest = manifest
        self.config = ModelConfig.from_dict(manifest["config"])
        placement = choose_placement(device, ort)
        graphs = manifest["graphs"]
        self._encoder = open_session(self.folder / graphs["encoder"]["file"], placement, ort)
        self._decoder = open_session(self.folder / graphs["decoder"]["file"], placement, ort)
        self._dynamics = open_session(self.folder / graphs["dynamics"]["file"], placement, ort)
        self._refiner = None
        if self.config.tokenizer.refiner_channels:  # read_manifest checked that the export has its graph
            self._refiner = open_session(self.folder / graphs["refiner"]["file"], placement, ort)
        self.device, self.provider = session_device(self._dynamics)
        dyn = self.config.dynamics
        self._kv_shape = (dyn.layers, 2, dyn.heads, dyn.width // dyn.heads)
        self._components = len(dyn.action_nvec)
        self._check_graph()

    def _check_graph(self) -> None:
        """Refuse a manifest config that does not describe the dynamics graph. The graphs'
        hashes are checked, the manifest's config is not: sizes edited there would otherwise
        size the KV cache (10**6 layers: a 53 GB allocation) or fail deep inside a step."""
        dyn, L, _, heads, dh = self.config.dynamics, *self._kv_shape
        inputs = {i.name: i.shape for i in self._dynamics.get_inputs()}
        logits = self._dynamics.get_outputs()[0].shape[-1]
        V = sum(dyn.levels) + (len(dyn.levels) if dyn.stay_gate else 0)
        kv = [shape for name, shape in inputs.items() if name.startswith(("cache_key_", "cache_value_"))]
        if (
            len(kv) != 2 * L or any(shape[1] != heads or shape[3] != dh for shape in kv)
            or inputs.get("context_actions", [None] * 3)[2] != self._components or logits != V
        ):  # fmt: skip
            raise ManifestError(
                f"{self.folder / MANIFEST}: its config does not describe its dynamics graph (layers, heads, width, "
                "levels, stay gate or action components differ); export again with `worldsim export onnx`"
            )

    @classmethod
    def from_checkpoint(cls, path: str, *, device: str = "auto", precision: str | None = None) -> OrtBackend:
        """The factory ``worldsim.load`` calls: ``path`` is a checkpoint or an export folder.

        A checkpoint without an export beside it is exported once into the cache (see
        :mod:`export.cache`).
        """
        if precision not in (None, "fp32"):
            raise WorldSimError(f"the ONNX backend runs fp32 graphs: precision must be 'fp32' or None, got {precision!r}")
        require_onnxruntime()  # before a possible export, so a missing install is the first thing said
        resolved = resolve_export(path)
        return cls(resolved.folder, resolved.manifest, device)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        return self._encoder.run(None, {"frames": np.ascontiguousarray(frames, dtype=np.uint8)})[0]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self._decoder.run(None, {"codes": np.ascontiguousarray(codes, dtype=np.int64)})[0]

    def refine(self, prev_frames: np.ndarray, frames: np.ndarray, prev_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
        if self._refiner is None:
            raise WorldSimError(f"{self.folder}: this export has no refiner graph")
        feed = {"prev_frames": np.ascontiguousarray(prev_frames, dtype=np.uint8),
                "frames": np.ascontiguousarray(frames, dtype=np.uint8),
                "prev_codes": np.ascontiguousarray(prev_codes, dtype=np.int64),
                "codes": np.ascontiguousarray(codes, dtype=np.int64)}  # fmt: skip
        return self._refiner.run(None, feed)[0]

    def empty_cache(self, batch: int, tokens: int, scratch: int = 0) -> np.ndarray:
        """Zeros ``[L, 2, B, heads, tokens, head_dim]``; the graph appends a pass's keys and
        values itself, so ``scratch`` slots are not needed and none are made."""
        L, two, H, dh = self._kv_shape
        return np.zeros((L, two, batch, H, tokens, dh), dtype=np.float32)

    def _run(
        self,
        context_codes: np.ndarray,
        context_actions: np.ndarray,
        codes: np.ndarray,
        actions: np.ndarray,
        t: int,
        cache: np.ndarray | None,
        valid: np.ndarray | None,
    ) -> list[np.ndarray]:
        B = codes.shape[0]
        if cache is None:
            cache = self.empty_cache(B, 0)
        if valid is None:
            valid = np.ones((B, cache.shape[4]), dtype=bool)
        feed = {
            "context_codes": np.ascontiguousarray(context_codes, dtype=np.int64),
            "context_actions": np.ascontiguousarray(context_actions, dtype=np.int64),
            "codes": np.ascontiguousarray(codes, dtype=np.int64),
            "actions": np.ascontiguousarray(actions, dtype=np.int64),
            "t": np.array(t, dtype=np.int64),
            "valid": np.ascontiguousarray(valid, dtype=bool),
            **cache_feed(cache),
        }
        return self._dynamics.run(None, feed)

    def append(self, codes: np.ndarray, actions: np.ndarray, t0: int, cache: np.ndarray | None, valid: np.ndarray | None) -> np.ndarray:
        """Cache entries of F frames ``codes [B, F, h, w]`` starting at frame ``t0``.

        The graph always predicts a target frame too; here it is a fully masked dummy at
        ``t0 + F`` whose outputs are dropped (N extra tokens, once per prompt).
        """
        B, Fr, h, w = codes.shape
        target = np.full((B, h, w), MASKED, dtype=np.int64)
        none = np.full((B, self._components), NO_ACTION, dtype=np.int64)
        return self._run(codes, actions, target, none, t0 + Fr, cache, valid)[3]

    def predict(
        self,
        codes: np.ndarray,
        actions: np.ndarray,
        t: int,
        cache: np.ndarray | None,
        valid: np.ndarray | None,
        commit: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[PassOutput, np.ndarray | None]:
        B, h, w = codes.shape
        if commit is None:
            ctx = np.zeros((B, 0, h, w), dtype=np.int64)
            ctx_actions = np.zeros((B, 0, self._components), dtype=np.int64)
        else:
            ctx = np.asarray(commit[0])[:, None]  # (B, 1, h, w): frame t-1
            ctx_actions = np.asarray(commit[1])[:, None]  # (B, 1, C)
        logits, reward, done, entries, *still = self._run(ctx, ctx_actions, codes, actions, t, cache, valid)
        V = sum(self.config.dynamics.levels)  # the graph packs the stay gate's values after the logits
        stay = logits[..., V:] if logits.shape[-1] > V else None
        out = PassOutput(logits=logits[..., :V], reward=reward, done_logit=done, stay=stay, still_logit=still[0] if still else None)
        return out, None if commit is None else entries
