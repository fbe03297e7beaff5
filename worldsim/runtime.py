"""The runtime: ``worldsim.load`` -> :class:`WorldModel` -> ``prompt`` / ``step``.

The runtime has two layers, so that another inference engine can slot in underneath.

**A backend** is a narrow object with pure array-in/array-out methods (numpy in, numpy out,
except the KV cache, which stays in the backend's own array type):

* ``encode(frames uint8 [B,H,W,3]) -> codes int64 [B,h,w]``
* ``decode(codes int64 [B,h,w]) -> frames uint8 [B,H,W,3]``
* ``refine(prev_frames uint8 [B,H,W,3], frames uint8 [B,H,W,3], prev_codes int64 [B,h,w],
  codes int64 [B,h,w]) -> frames uint8 [B,H,W,3]``: the refiner's correction of the decoded
  ``frames`` with the frames shown before; called only for a checkpoint with a refiner
* ``empty_cache(batch, tokens, scratch) -> cache [L, 2, B, heads, tokens (+ scratch), head_dim]``
  (zeros): the runtime uses the first ``tokens`` slots; a backend may add ``scratch`` slots
  after them for a pass's own keys and values (``2N``, enough for the fused commit pass)
* ``append(codes [B,F,h,w], actions int64 [B,F,C], t0: int, cache | None, valid | None)
  -> entries [L, 2, B, heads, F*N, head_dim]``: the context keys/values of F frames;
* ``predict(codes [B,h,w] (-1 = masked), actions [B,C], t: int, cache | None, valid | None,
  commit=None) -> (sampling.PassOutput, entries | None)``: logits, reward and episode-end
  logit for frame ``t``; ``commit = (codes [B,h,w], actions [B,C])`` of frame ``t - 1``
  commits that frame in the same pass and returns its entries ``[L, 2, B, heads, N, head_dim]``.

``valid`` is bool ``[B, tokens]`` (which cache entries each world may attend to) or None
when all may. ``t`` is the absolute frame index; the model takes it modulo its
``time_period``. A backend also has ``config`` (:class:`~worldsim.checkpoint.ModelConfig`),
``name`` and ``device`` attributes. Backends are found by name in :data:`BACKENDS`, as
``"module:factory"`` strings imported only when asked for, so the ONNX Runtime backend in
``export/`` plugs in with :func:`register_backend` and the core never imports it.

**The WorldModel** is backend-agnostic: it validates inputs, keeps the sliding-window KV
cache (a ring buffer of ``context - 1`` frames, so memory is bounded however long the
rollout), and samples frames with :class:`~worldsim.sampling.MaskGitSampler`. The newest
frame stays *pending* until the next step, whose first pass commits it: at batch 1 a pass
costs what reading the weights costs, so K = 1 is one pass per frame, not two.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from worldsim.errors import SettingError, WorldSimError
from worldsim.motion import stay_reference
from worldsim.sampling import MaskGitSampler, PassOutput
from worldsim.spaces import ActionSpec

DEFAULT_CHECKPOINT = Path(__file__).parent / "assets" / "blockworld-64.safetensors"
DEFAULT_CHUNKS = 1
"""K when not given: one pass per frame, the setting that reaches 30 frames/s for one world
on a 2-core CPU with ``small`` (32.6 against 17.1 at K = 2; docs/model.md)."""
DEFAULT_TEMPERATURE = 0.5
"""Sampling by default, reproducible through ``seed``. Greedy decoding (temperature 0) of the
ungated preview model (before the stay gate) froze open-loop: after 3-34 steps it kept
choosing the previous frame's codes while the real world turned (57-65 % of 150 explorer steps frozen, on held-out
worlds). At 0.5 and 0.7 no frame froze in 500 steps, and PSNR over steps 1-16 was the same
(17.8 and 24.4 dB on two worlds, against 18.5 and 24.0 greedy). 0.5 is the lower of the two:
the least noise that kept the dream moving. Rechecked for the gated model shipped now: 0.3
raised PSNR over steps 1-16 on 16 tuning worlds from 20.9 to 21.3 dB, but two of three
2,000-step rollouts froze (532 and 120 frozen frames; worlds 777 and 778 of the snippet
in docs/model.md, "Stay gate", with ``temperature=0.3``) and collapsed, so 0.5 stays.
``temperature=0`` stays exactly deterministic."""
DEFAULT_STILL = False
"""The still head is off unless asked for. On a fine-tuned BlockWorld candidate it made still
frames exact (teacher-forced PSNR 27.9 -> 34.3 dB on held-out worlds), but in open loop it
can lock in: identical context frames make it predict "still" again while the player moves
(docs/model.md, "Still head"). ``worldsim.load(still=True)`` turns it on."""
DEFAULT_KEEP_PIXELS = False
"""Keep the previous frame's pixels wherever a cell's code did not change (conditional
replenishment, as video codecs skip unchanged blocks). The codes, and so everything the
model sees, are the same either way: only the picture changes, so it cannot feed back into
the dream. After a prompt the kept pixels are the real frame's, so regions the model leaves
alone stay exact instead of showing the tokenizer's reconstruction error. On 16 held-out
BlockWorld episodes with an earlier shipped model (a preview) it raised teacher-forced PSNR from 28.5 to 30.4 dB
and open-loop PSNR over steps 1-16 from 24.8 to 25.4. It is off by default because it also
shows that model's weak spot plainly: where the dream changes only a few cells a step
while the world moves, the decoder's ripple reads as motion and kept pixels read as a frozen
frame, and the eval's 2,000-step stability rollout is then judged collapsed from step 313
(docs/model.md, "Keeping unchanged pixels"). ``worldsim.load(keep_pixels=True)`` turns it on."""
DEFAULT_UNFREEZE = 1
"""Still steps after which a world's next frame is sampled without the stay gate (0: never).

A model with a stay gate can freeze: it keeps (nearly) every cell, the context stands
still, and a still context makes the gate keep every cell again, while the real world moves
on. With ``unfreeze=n``, once a world's dream has changed at most :data:`STILL_CELL_SHARE`
of its cells on each of n steps in a row, its next frames are sampled without the gate's
bonus (and at :data:`UNFREEZE_TEMPERATURE`) until one changes more, so the dynamics' own prediction gets to move the picture.
Models without a gate are not affected.

Measured on the shipped model, 2,000 open-loop explorer steps in each of the 8 worlds
``STABILITY_SEED_BASE + 777..784`` (the docs/model.md snippet, batched): without the guard
3 of 8 collapsed into a frozen picture; with ``unfreeze=1`` (and
:data:`UNFREEZE_TEMPERATURE`) none did, with sampling seeds 0, 1 and 2. On an earlier
preview model with the current sampler it was 4 of 8 without the guard and 0 of 8 with it
(at most 63 frozen frames); with the earlier Gumbel sampler the same 4 of 8 and 0 of 8,
and ``unfreeze=2`` still let 2 of 8 collapse. On that preview, over the eval's 16 held-out
episodes, it cost 0.52 dB of open-loop PSNR over horizons 1-16 (25.31 -> 24.79 dB: a truly
still world is then sampled without the gate and shimmers a little), raises the IDM's move
ratio from 0.83 to 0.95, and keeps the eval's own 2,000-step rollout from collapsing
(38.4 % -> 5.9 % of frames flagged); teacher-forced figures are unchanged (docs/model.md,
"Freeze guard"; ``worldsim eval --unfreeze N``)."""
UNFREEZE_TEMPERATURE = 1.0
"""The sampling temperature of a world while the freeze guard has its gate off (at least the
model's own; not used at temperature 0, which stays greedy and deterministic).

Dropping the gate's bonus is not always enough: a model can drift into a view with nothing
to move, such as an empty night sky, where its own prediction is the same frame again. At
the model's temperature (0.5) the shipped model froze in 8 of 24 long rollouts (the 8
worlds above, sampling seeds 0, 1 and 2) with the gate off; drawing those worlds' frames
from the plain softmax (1.0) until they move again, 0 of 24 collapsed (docs/model.md,
"Freeze guard" and "Not met")."""
STILL_CELL_SHARE = 0.1
"""A generated frame that changed at most this share of its cells counts as a still step.
The dream's frozen stretches are not exact: it kept changing 2-5 % of its cells a step
(under a quarter of a level of mean pixel change) while the player walked. At 0.06 with
``unfreeze=1`` no world collapsed either, but the frozen stretches were longer (at most 196
frames, against 106 at 0.1; both with the earlier Gumbel sampler)."""
DEFAULT_RANKED_MOVES = False
"""Each cell decides on its own whether it leaves its previous level unless asked otherwise.
``ranked_moves=True`` decides it for the whole frame: the cells most likely to change do,
as many as are expected to (:meth:`worldsim.sampling.MaskGitSampler._choose`). On the
release before the polish phase it makes one step from real frames turn further (``worldsim eval``'s
``teacher_forced_turn_rate`` 0.62-0.64 against 0.45-0.48), the open-loop dream little
(``turn_rate`` 0.24-0.29 against 0.20-0.26); it costs 0.09-0.17 dB of every PSNR and makes
long rollouts stiller, so it is not the default (docs/model.md, "Ranked moves")."""
NO_ACTION = -1

BACKENDS: dict[str, str] = {
    "torch": "worldsim.torch_backend:TorchBackend.from_checkpoint",
    "onnx": "export.ort_backend:OrtBackend.from_checkpoint",  # imported only when asked for
}
"""Backend name -> ``"module:factory"``; ``factory(path, device=..., precision=...)``."""


def register_backend(name: str, target: str) -> None:
    """Make ``worldsim.load(..., backend=name)`` call ``target`` (``"module:factory"``)."""
    BACKENDS[name] = target


class Backend(Protocol):
    """What :class:`WorldModel` needs from an inference engine (see the module docstring)."""

    name: str
    device: str
    config: Any

    def encode(self, frames: np.ndarray) -> np.ndarray: ...
    def decode(self, codes: np.ndarray) -> np.ndarray: ...
    def refine(self, prev_frames: np.ndarray, frames: np.ndarray, prev_codes: np.ndarray, codes: np.ndarray) -> np.ndarray: ...
    def empty_cache(self, batch: int, tokens: int, scratch: int = 0) -> Any: ...
    def append(self, codes: np.ndarray, actions: np.ndarray, t0: int, cache: Any, valid: np.ndarray | None) -> Any: ...
    def predict(
        self, codes: np.ndarray, actions: np.ndarray, t: int, cache: Any, valid: np.ndarray | None,
        commit: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[PassOutput, Any]: ...


@dataclass(frozen=True)
class StepResult:
    """One step of B worlds."""

    frames: np.ndarray
    """uint8 ``[B, H, W, 3]``."""
    reward: np.ndarray
    """float32 ``[B]``: the predicted reward of this step."""
    done: np.ndarray
    """bool ``[B]``: the model predicts the episode terminated at this step."""


class WorldModel:
    """B worlds generated by a world model, prompted with real frames and stepped by actions.

    Args:
        backend: the inference engine (see the module docstring).
        chunks: K, passes per generated frame (1 = all patches in one pass; a K above the number
            of a frame's patches makes one pass per patch).
        temperature: 0 = greedy and deterministic; above 0 samples.
        seed: seeds every random draw of sampling.
        still: act on the model's still head (if it has one): keep the previous frame exactly
            where the head says nothing changed (default :data:`DEFAULT_STILL`).
        keep_pixels: keep the previous frame's pixels in the cells whose code did not change
            (default :data:`DEFAULT_KEEP_PIXELS`).
        refine: pass each decoded frame through the checkpoint's refiner, which corrects it
            with the frame shown before (:class:`worldsim.tokenizer.Refiner`). None: on when the
            checkpoint has a refiner; True for a checkpoint without one is an error.
        unfreeze: still steps after which a world is sampled without the stay gate, at
            :data:`UNFREEZE_TEMPERATURE`, until it moves (default :data:`DEFAULT_UNFREEZE`; 0 = never).
        guidance: action guidance scale g (None: the checkpoint's ``guidance``, 1 = off). Each
            pass is run twice, with the world's action and with the same action but its
            guided components set to 0 (for BlockWorld's yaw: not turning), and sampled from
            ``reference + g * (action - reference)`` of their logits and stay-gate bonuses:
            g > 1 strengthens what those components change. A world whose guided components
            are all 0 is sampled as without guidance; reward and episode end always come
            from the action's pass. It costs a second pass for every pass of a step in which
            some world uses a guided component. The shipped model is
            unguided by default and names yaw as its guided component; why, and what
            ``guidance=1.3`` does to it: docs/model.md, "Action guidance".
        guided_actions: the action components guidance strengthens (None: the checkpoint's
            ``guided_actions``; all components when it names none).
        ranked_moves: decide for each frame at once which cells leave their previous
            level, instead of each cell on its own (default :data:`DEFAULT_RANKED_MOVES`).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        chunks: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        still: bool | None = None,
        keep_pixels: bool | None = None,
        unfreeze: int | None = None,
        guidance: float | None = None,
        guided_actions: Any = None,
        ranked_moves: bool | None = None,
        refine: bool | None = None,
    ) -> None:
        self.backend = backend
        self.config = backend.config
        dyn = self.config.dynamics
        if dyn is None:
            raise WorldSimError("this checkpoint holds only a tokenizer; generating needs a dynamics checkpoint")
        self.action_spec: ActionSpec = self.config.action_spec
        for name, value in (("chunks", chunks), ("unfreeze", unfreeze)):  # whole numbers, not truncated floats
            if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)):
                raise SettingError(f"{name} must be an integer, got {value!r}")
        for name, value in (("temperature", temperature), ("guidance", guidance)):  # float("0.5") and float(True) would pass
            if value is not None and (not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool)):
                raise SettingError(f"{name} must be a number, got {value!r}")
        for name, value in (("ranked_moves", ranked_moves), ("still", still), ("keep_pixels", keep_pixels), ("refine", refine)):
            if value is not None and not isinstance(value, (bool, np.bool_)):  # bool("no") would be True
                raise SettingError(f"{name} must be True, False or None, got {value!r}")
        self.chunks = DEFAULT_CHUNKS if chunks is None else int(chunks)
        self.temperature = DEFAULT_TEMPERATURE if temperature is None else float(temperature)
        if self.chunks < 1:
            raise SettingError(f"chunks must be >= 1, got {chunks}")
        if not self.temperature >= 0 or not np.isfinite(self.temperature):  # NaN fails both comparisons
            raise SettingError(f"temperature must be a finite number >= 0, got {temperature}")
        self.ranked_moves = DEFAULT_RANKED_MOVES if ranked_moves is None else bool(ranked_moves)
        self.still = DEFAULT_STILL if still is None else bool(still)
        self.keep_pixels = DEFAULT_KEEP_PIXELS if keep_pixels is None else bool(keep_pixels)
        has_refiner = bool(self.config.tokenizer.refiner_channels)
        if refine and not has_refiner:
            raise SettingError("refine=True needs a checkpoint with a refiner (`worldsim train refiner` adds one)")
        self.refine = has_refiner if refine is None else bool(refine)
        """Whether decoded frames go through the checkpoint's refiner."""
        self.unfreeze = DEFAULT_UNFREEZE if unfreeze is None else int(unfreeze)
        if self.unfreeze < 0:
            raise SettingError(f"unfreeze must be >= 0 steps, got {unfreeze}")
        self.guidance = self.config.guidance if guidance is None else float(guidance)
        if not np.isfinite(self.guidance) or self.guidance < 0:
            raise SettingError(f"guidance must be a finite scale >= 0 (1 = off), got {guidance}")
        C = self.action_spec.num_components
        guided = self.config.guided_actions if guided_actions is None else guided_actions
        try:
            comps = tuple(range(C)) if guided is None else tuple(int(i) for i in guided)
        except (TypeError, ValueError):
            comps = ()
        if not comps or len(set(comps)) != len(comps) or not all(0 <= i < C for i in comps):
            raise SettingError(f"guided_actions must be distinct action component indices in [0, {C}), got {guided!r}")
        self.guided_actions: tuple[int, ...] = comps
        """The action components guidance strengthens."""
        self._motion = dyn.stay_motion if dyn.stay_gate else ()
        self._still_run: np.ndarray | None = None  # [B]: still steps in a row, per world
        # The still path, pixel keeping and the refiner need the last frame's pixels.
        self._keeps_frames = (self.still and dyn.still_head) or self.keep_pixels or self.refine
        self.frame_multiple = self.config.tokenizer.stride * dyn.patch
        """Frame height and width must be multiples of this."""
        self.context_frames = dyn.context
        """Frames the model sees: the new one and ``context_frames - 1`` in the KV cache."""
        self._cap = max(1, dyn.context - 1)
        self.reseed(seed)
        self._cache: Any = None
        self._valid: np.ndarray | None = None
        self._t = 0  # absolute index of the pending (newest) frame
        self._pending: tuple[np.ndarray, np.ndarray] | None = None  # its codes [B,h,w], action [B,C]
        self._frame: np.ndarray | None = None  # its pixels [B,H,W,3] as shown: real after a prompt
        self._shape: tuple[int, int, int] | None = None  # (B, H, W)

    def __repr__(self) -> str:
        # What a user checks first after worldsim.load(): which env and frame size the model
        # was trained on, what it takes, and how it samples here (device and precision included).
        spec = self.action_spec
        h, w = self.config.frame_shape
        guided = "" if self.guidance == 1 else f", guided_actions={list(self.guided_actions)}"
        return (f"WorldModel(env_id={self.config.env_id!r}, frame_shape=({h}, {w}), "
                f"actions={spec.kind}{list(spec.nvec)}, context={self.context_frames}, "
                f"frame_multiple={self.frame_multiple}, backend={self.backend.name!r}, "
                f"device={self.backend.device!r}, precision={getattr(self.backend, 'precision', None)!r}, "
                f"chunks={self.chunks}, temperature={self.temperature:g}, guidance={self.guidance:g}{guided}, "
                f"unfreeze={self.unfreeze}, ranked_moves={self.ranked_moves}, refine={self.refine})")

    @property
    def batch_size(self) -> int:
        """B of the last prompt (0 before the first)."""
        return 0 if self._shape is None else self._shape[0]

    @property
    def last_codes(self) -> np.ndarray | None:
        """Tokenizer codes ``[B, h, w]`` of each world's newest frame (None before a prompt)."""
        return None if self._pending is None else self._pending[0].copy()

    def reseed(self, seed: int | None) -> None:
        """Restart the random draws of sampling from ``seed`` (None: fresh entropy).

        Raises:
            SettingError: a seed that is not a non-negative integer.
        """
        if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0):
            raise SettingError(f"seed must be a non-negative integer or None, got {seed!r}")
        self._rng = np.random.default_rng(seed)
        levels = self.config.dynamics.levels
        hot = max(self.temperature, UNFREEZE_TEMPERATURE) if self.unfreeze else None
        self._sampler = MaskGitSampler(levels, self.config.dynamics.patch, self.chunks, self.temperature, self._rng, hot,
                                       self.ranked_moves)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames ``[B, H, W, 3]`` -> tokenizer codes ``[B, h, w]``."""
        return self.backend.encode(self._check_frames(frames, 4))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Tokenizer codes ``[B, h, w]`` -> uint8 frames ``[B, H, W, 3]``.

        Raises:
            SettingError: codes that are not integers ``[B, h, w]`` in ``[0, number of codes)``.
        """
        codes = np.asarray(codes)
        n = int(np.prod(self.config.tokenizer.levels))
        if codes.dtype.kind not in "iu" or codes.ndim != 3 or 0 in codes.shape:
            raise SettingError(f"codes must be integers [B, h, w], got {codes.dtype} {list(codes.shape)}")
        if codes.min() < 0 or codes.max() >= n:
            raise SettingError(f"codes must be in [0, {n}) for this tokenizer, got {codes.min()}..{codes.max()}")
        return self.backend.decode(codes.astype(np.int64))

    def _check_frames(self, frames: Any, ndim: int) -> np.ndarray:
        frames = np.asarray(frames)
        want = "[B, T, H, W, 3]" if ndim == 5 else "[B, H, W, 3]"
        if frames.dtype != np.uint8:
            raise SettingError(f"frames must be uint8 {want}, got dtype {frames.dtype}")
        if frames.ndim != ndim or frames.shape[-1] != 3 or 0 in frames.shape:
            raise SettingError(f"frames must have shape {want} with 3 RGB channels, got {list(frames.shape)}")
        h, w = frames.shape[-3:-1]
        m = self.frame_multiple
        if h % m or w % m:
            raise SettingError(f"frame height and width must be multiples of {m} for this model, got {h}x{w}")
        return frames

    def prompt(self, frames: Any, actions: Any, worlds: Any = None) -> None:
        """Start worlds from real context frames.

        Args:
            frames: uint8 ``[B, T, H, W, 3]``, any T >= 1; only the most recent
                ``context_frames - 1`` are kept.
            actions: ``[B, T-1, ...]`` (or None when T = 1): ``actions[:, i]`` led from frame
                i to frame i+1.
            worlds: None to (re)start all B worlds; or indices into the current batch of the
                worlds to restart (the others keep their state), with ``frames`` then
                holding ``len(worlds)`` prompts of the current frame size.
        """
        frames = self._check_frames(frames, 5)
        n, T, H, W, _ = frames.shape
        if actions is None and T == 1:
            actions = np.zeros((n, 0, self.action_spec.num_components), dtype=np.int64)
        elif actions is None:
            raise ValueError(f"actions may be None only for a one-frame prompt; {T} frames need [{n}, {T - 1}, ...] actions")
        acts = self.action_spec.as_array(actions, (n, T - 1))
        if worlds is not None:
            if self._shape is None:
                raise WorldSimError("prompt(worlds=...) restarts some worlds: call prompt() for all worlds first")
            idx = np.asarray(worlds).reshape(-1)
            B = self._shape[0]
            if idx.dtype.kind not in "iu":  # a bool mask [True, False] would be read as indices [1, 0]
                raise ValueError(f"worlds must be integer indices into the batch, got {worlds!r}")
            idx = idx.astype(np.int64)
            if idx.shape != (n,) or np.any(idx < 0) or np.any(idx >= B) or len(set(idx.tolist())) != n:
                raise ValueError(f"worlds must be {n} distinct indices in [0, {B}) matching the frames, got {worlds!r}")
            if (H, W) != self._shape[1:]:
                raise ValueError(f"restarted worlds must keep the frame size {self._shape[1]}x{self._shape[2]}, got {H}x{W}")
        keep = min(T, self._cap + 1)  # the cache holds cap frames, plus the pending one
        codes = self.backend.encode(frames[:, T - keep :].reshape(n * keep, H, W, 3))
        codes = codes.reshape(n, keep, *codes.shape[1:])  # (n, keep, h, w)
        none = np.full((n, 1, acts.shape[-1]), NO_ACTION, dtype=np.int64)
        prev = np.concatenate([none, acts], axis=1)[:, T - keep :]  # the action that led to each kept frame
        N = self._tokens(H, W)
        if worlds is None:
            self._shape = (n, H, W)
            self._t = T - 1
            self._cache = self.backend.empty_cache(n, self._cap * N, scratch=2 * N)
            self._valid = np.zeros((n, self._cap * N), dtype=bool)
            self._pending = (codes[:, -1].copy(), prev[:, -1].copy())
            self._still_run = np.zeros(n, dtype=np.int64)
            self._frame = frames[:, -1].copy() if self._keeps_frames else None
            targets = list(range(n))
        else:
            targets = idx.tolist()
            self._valid[idx] = False
            self._still_run[idx] = 0
            self._pending[0][idx] = codes[:, -1]
            self._pending[1][idx] = prev[:, -1]
            if self._keeps_frames:
                self._frame[idx] = frames[:, -1]
        if keep == 1:
            return
        t0 = self._t - keep + 1  # restarted worlds line up with the others' clock
        entries = self.backend.append(codes[:, :-1], prev[:, :-1], t0, None, None)
        for j in range(keep - 1):
            s = ((t0 + j) % self._cap) * N
            for i, b in enumerate(targets):
                self._cache[:, :, b, :, s : s + N] = entries[:, :, i, :, j * N : (j + 1) * N]
                self._valid[b, s : s + N] = True

    def _tokens(self, H: int, W: int) -> int:
        m = self.frame_multiple
        return (H // m) * (W // m)

    def step(self, actions: Any) -> StepResult:
        """Advance all B worlds by one step.

        Args:
            actions: ``[B, C]`` ints for a MultiDiscrete space, ``[B]`` (or ``[B, 1]``) for
                Discrete; one action per world.
        """
        if self._shape is None:
            raise WorldSimError("call prompt() before step()")
        B, H, W = self._shape
        acts = self.action_spec.as_array(actions, (B,))
        t, N = self._t + 1, self._tokens(H, W)
        # The pending frame t-1 goes into the slot of frame t-1-cap, which must drop out of
        # sight in the same pass: the model never sees more than context-1 earlier frames.
        slot = ((t - 1) % self._cap) * N
        first_valid = self._valid.copy()
        first_valid[:, slot : slot + N] = False
        commit = self._pending
        # Guidance needs a second pass only when some world moves a guided component.
        guide, reference, moving = False, acts, None
        if self.guidance != 1.0:
            reference = acts.copy()
            reference[:, list(self.guided_actions)] = 0
            moving = np.any(acts != reference, axis=1)  # (B,): only these worlds are guided
            guide = bool(moving.any())

        def predict(codes: np.ndarray) -> PassOutput:
            nonlocal commit
            if commit is not None:
                valid = None if first_valid.all() else first_valid
                out, entries = self.backend.predict(codes, acts, t, self._cache, valid, commit)
                self._cache[:, :, :, :, slot : slot + N] = entries
                self._valid[:, slot : slot + N] = True
                commit = None
            else:
                valid = None if self._valid.all() else self._valid
                out = self.backend.predict(codes, acts, t, self._cache, valid)[0]
            if guide:  # the same pass over the same visible frames, with the guided components at 0
                valid = None if self._valid.all() else self._valid
                out = guided(out, self.backend.predict(codes, reference, t, self._cache, valid)[0], self.guidance, moving)
            return out

        s = self.config.tokenizer.stride
        gated = None
        if self.unfreeze and self.config.dynamics.stay_gate:
            gated = self._still_run < self.unfreeze
        prev = self._pending[0]
        if self._motion:  # the gate favours the previous codes moved as this step's actions move the picture
            prev = stay_reference(prev, acts, self._motion)
        sample = self._sampler.generate(predict, B, H // s, W // s, prev, gated)
        codes, frames = sample.codes, self.backend.decode(sample.codes)
        if self.refine:
            frames = self.backend.refine(self._frame, frames, self._pending[0], codes)
        if self._keeps_frames:
            if self.still and sample.still_logit is not None:
                # The model says nothing changed: keep the previous frame exactly, codes and
                # pixels (after a prompt those are the real frame's), so a still world does not shimmer.
                still = np.asarray(sample.still_logit) > 0
                codes = np.where(still[:, None, None], self._pending[0], codes)
                frames = np.where(still[:, None, None, None], self._frame, frames)
            if self.keep_pixels:
                same = (codes == self._pending[0]).repeat(s, axis=1).repeat(s, axis=2)
                frames = np.where(same[..., None], self._frame, frames)
            self._frame = frames
            frames = frames.copy()  # the caller's copy: this one is kept
        changed = (codes != self._pending[0]).mean(axis=(1, 2))  # share of cells, per world
        self._still_run = np.where(changed <= STILL_CELL_SHARE, self._still_run + 1, 0)
        self._pending = (codes, acts)
        self._t = t
        return StepResult(
            frames=frames,
            reward=np.asarray(sample.reward, dtype=np.float32),
            done=np.asarray(sample.done_logit) > 0,
        )


def guided(act: PassOutput, reference: PassOutput, scale: float, rows: np.ndarray | None = None) -> PassOutput:
    """``reference + scale * (act - reference)`` of two passes' logits, stay bonuses and still
    logits, where ``reference`` is the pass with the guided action components at 0; reward and
    episode end stay the action's. Combining the bonuses the same way as the logits makes it
    exactly the same combination of the logits the sampler draws from.

    ``rows`` (bool ``[B]``) limits the mix to the worlds whose action moves a guided
    component; the others keep the action's pass as it is, so that a world that does not turn
    is sampled exactly as without guidance (in bf16 the two passes round differently even
    where their inputs agree)."""

    def mix(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
        if a is None or b is None:
            return a
        a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
        if rows is None:
            return b + np.float32(scale) * (a - b)
        out = a.copy()
        out[rows] = b[rows] + np.float32(scale) * (a[rows] - b[rows])
        return out

    return PassOutput(logits=mix(act.logits, reference.logits), reward=act.reward, done_logit=act.done_logit,
                      stay=mix(act.stay, reference.stay), still_logit=mix(act.still_logit, reference.still_logit))  # fmt: skip


def load(
    checkpoint: str | Path | None = None,
    *,
    backend: str = "torch",
    device: str = "auto",
    precision: str | None = None,
    chunks: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    still: bool | None = None,
    keep_pixels: bool | None = None,
    unfreeze: int | None = None,
    guidance: float | None = None,
    guided_actions: Any = None,
    ranked_moves: bool | None = None,
    refine: bool | None = None,
) -> WorldModel:
    """Load a world model checkpoint for generation.

    Args:
        checkpoint: a dynamics checkpoint (``.safetensors``); None = the shipped default.
        backend: ``"torch"``, or another registered in :data:`BACKENDS` (``"onnx"``).
        device: ``"auto"`` (CUDA if present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        precision: ``"fp32"`` or ``"bf16"``; None = the fastest that stays accurate on the
            device (bf16 on CUDA and on CPUs with native bf16 matmuls, fp32 otherwise).
        chunks: K, passes per frame (default :data:`DEFAULT_CHUNKS`).
        temperature: 0 = greedy; above 0 samples (default :data:`DEFAULT_TEMPERATURE`).
        seed: seeds the sampling draws.
        still: act on the model's still head (default :data:`DEFAULT_STILL`).
        keep_pixels: keep the previous frame's pixels where a cell's code did not change
            (default :data:`DEFAULT_KEEP_PIXELS`).
        refine: use the checkpoint's refiner (None: when it has one; see :class:`WorldModel`).
        unfreeze: still steps after which a world is sampled without the stay gate, at
            :data:`UNFREEZE_TEMPERATURE`, until it moves (default :data:`DEFAULT_UNFREEZE`; 0 = never).
        guidance, guided_actions: action guidance (None: the checkpoint's; see :class:`WorldModel`).
        ranked_moves: decide for each frame at once which cells leave their previous level
            (default :data:`DEFAULT_RANKED_MOVES`; see :class:`WorldModel`).

    Raises:
        WorldSimError: no default model, unknown backend or device, or a bad checkpoint file.
        SettingError: a bad setting (chunks, temperature, seed ...), named in the message; it
            is also a ``ValueError``.
    """
    if checkpoint is None:
        if not DEFAULT_CHECKPOINT.is_file():
            raise WorldSimError(
                f"the shipped world model {DEFAULT_CHECKPOINT} is missing; `make model` (`worldsim train recipe "
                "blockworld-64 --install`) trains it again from nothing, or pass worldsim.load() a checkpoint "
                "of your own (`worldsim train tokenizer`, then `worldsim train dynamics`)"
            )
        checkpoint = DEFAULT_CHECKPOINT
    if precision not in (None, "fp32", "bf16"):
        raise WorldSimError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if backend not in BACKENDS:
        raise WorldSimError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    module, attr = BACKENDS[backend].split(":")
    factory: Any = importlib.import_module(module)
    for part in attr.split("."):
        factory = getattr(factory, part)
    be = factory(str(checkpoint), device=device, precision=precision)
    return WorldModel(be, chunks=chunks, temperature=temperature, seed=seed, still=still, keep_pixels=keep_pixels,
                      unfreeze=unfreeze, guidance=guidance, guided_actions=guided_actions, ranked_moves=ranked_moves,
                      refine=refine)
