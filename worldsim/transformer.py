"""The dynamics model: an action-conditioned, block-causal transformer over spacetime patches.

A frame's code grid ``[h, w]`` is cut into ``patch x patch`` cells, giving ``N = h*w/patch^2``
tokens per frame. Training runs two streams over a window of ``T`` frames:

* the **context stream**: every frame's (randomly corrupted) codes, conditioned on the action
  that led to it; frame ``t`` attends to context frames ``<= t``;
* the **target stream**: frames ``1..T-1`` with a random share of their patches replaced by a
  mask token (MaskGIT); target frame ``t`` attends to context frames ``< t`` and to itself,
  and predicts the masked patches, the reward and the episode end.

This is exactly what generation does: the KV cache holds context-stream keys and values of
the frames so far, and the frame being generated is a target-stream frame refined in K
passes. The two streams cost twice the tokens in training, but there is no train/inference
mismatch between "a frame being predicted" and "a frame serving as context".

Positions are 3-D rotary embeddings over (frame, row, column) of the patch grid, so other
frame sizes and aspect ratios run at inference. The time frequencies are integer multiples
of ``2 pi / time_period`` so absolute frame indices can be taken modulo ``time_period``
without changing any attention score: unbounded rollouts never lose float precision (each
angle is reduced in integers before it is rounded, :meth:`Rope.angles`).

**Stay gate** (``DynamicsConfig.stay_gate``). Most of a frame does not change from one step
to the next: on held-out BlockWorld, 57 % of the cells keep their exact code. With one
categorical per FSQ channel, a model has to put its mass on the previous level in every
channel at once to keep a cell, which a small model learns slowly. The gate is a second
head that gives, per cell and channel, a learned bonus added to the logit of the level the
previous frame had there (:func:`add_stay`). Its weights start at zero, so a model given a
gate starts exactly where it was, and training decides, cell by cell from the context,
how much to trust "unchanged". The previous frame is the context frame as the model sees
it: corrupted in training, generated in a rollout. With ``DynamicsConfig.stay_motion`` the
gate favours that frame's codes shifted by what the step's action does to the picture (a
turn slides it sideways), so "unchanged" means "unchanged but for the camera"
(:mod:`worldsim.motion`).

**Still head** (``DynamicsConfig.still_head``). A quarter to a third of held-out BlockWorld steps change
no pixel at all (attacking air, looking past the pitch limit, walking into a wall), yet a
per-cell decision, sampled independently for 256 cells, never keeps all of them: the dream
shimmers while the world stands still. The still head predicts, from the target frame's
pooled tokens like the reward head, the logit that the frame's codes equal the previous
frame's (trained with binary cross-entropy on exactly that event, on the frames whose
patches are all masked, as they are when the runtime asks). With ``worldsim.load(still=True)``
the runtime keeps the previous frame, codes and pixels, wherever it is above 0; it is off by
default, because in open loop it can lock into a frozen dream (docs/model.md).

**Rolled-out context** (``DynamicsConfig.rollout_share``). In a rollout every context frame
is one the model generated, with the model's own kind of error: a frame that moved too
little, a smeared edge, a code that stayed when it should have changed. Random-code
corruption does not look like that, so a model trained on recorded context alone meets
those errors first in the dream, and compounds them (freezing is one: a still generated
context makes "keep every code" the likely next frame). With a share above 0, that share of
training windows first gets ``rollout_passes`` no-gradient prediction passes: each samples
frames 1..T-1 at once, fully masked, exactly as the runtime's first pass does, from the
context of the pass before, and the last pass's frames become the context (told the
runtime's ``inference_corruption`` level). The targets stay the recorded frames, so the
model learns to steer back from its own errors to the real world. It costs one forward pass
per pass on the chosen windows, and no backward. On the BlockWorld preview, 1,000 steps at a
share of 0.5 made the dream turn more but did not stop it freezing (docs/model.md), so the
share is 0 unless asked for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worldsim.errors import refuse_unknown_fields
from worldsim.motion import as_table, stay_reference

NO_ACTION = -1
"""Action value that marks "no action" (the first frame of a recording or prompt)."""
MASKED = -1
"""Code value that marks a masked cell in the target-stream input."""
SPATIAL_TABLES = 8
"""Grid sizes whose (row, column) embedding a :class:`Dynamics` keeps at once (the oldest goes)."""


@dataclass(frozen=True)
class DynamicsConfig:
    """Sizes and training knobs of the dynamics transformer."""

    levels: tuple[int, ...]
    """FSQ levels of the tokenizer this model predicts (one categorical per level set)."""
    action_nvec: tuple[int, ...]
    """Choices per action component (``(n,)`` for ``Discrete(n)``)."""
    action_kind: str = "MultiDiscrete"
    """``"Discrete"`` or ``"MultiDiscrete"``: how the runtime validates actions."""
    width: int = 256
    """Residual stream width."""
    layers: int = 6
    """Transformer blocks."""
    heads: int = 4
    """Attention heads (width / heads is the head size)."""
    patch: int = 2
    """Latent cells per patch side: a token covers ``patch x patch`` cells."""
    context: int = 16
    """Frames in the window, in training and in the runtime's sliding KV cache."""
    mlp_ratio: int = 4
    """MLP hidden width over residual width."""
    max_corruption: float = 0.2
    """Training: each context frame has a level c ~ U(0, max) of its cells replaced at random."""
    inference_corruption: float = 0.05
    """Runtime: the corruption level the model is told its (generated) context has."""
    reward_weight: float = 1.0
    done_weight: float = 0.1
    time_period: int = 4096
    """Frame positions are taken modulo this (exactly, see the module docstring)."""
    stay_gate: bool = False
    """A head that biases each cell towards its previous frame's code (module docstring)."""
    still_head: bool = False
    """A head that predicts "this frame equals the previous one" (module docstring)."""
    still_weight: float = 0.5
    rollout_share: float = 0.0
    """Training: the share of windows whose context frames 1..T-1 are the model's own sampled
    predictions instead of the recorded frames (module docstring, "Rolled-out context")."""
    rollout_passes: int = 2
    """Training: prediction passes that build a rolled-out context; pass k conditions on the
    frames of pass k-1, so the context carries up to k steps of the model's own errors."""
    rollout_temperature: float = 0.5
    """Training: the sampling temperature of those predictions (the runtime's default)."""
    change_weight: float = 1.0
    """Training: the weight of a masked cell whose code differs from the previous frame's, in
    the cross-entropy, against 1 for a cell that kept its code (1: all cells alike). Most
    cells keep their code from one step to the next, so an unweighted loss is mostly about
    keeping; above 1 the cells the world moved count for more (docs/model.md, "Not met")."""
    stay_motion: tuple[tuple[int, int, int, int], ...] = ()
    """The stay gate's reference moved with the camera: ``(component, value, dx, dy)`` rows,
    a shift in cells of the previous frame's codes per action value (:mod:`worldsim.motion`;
    empty: the reference is the previous frame unshifted)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DynamicsConfig:
        """The config ``to_dict`` wrote; an unknown field is a ``ValueError``, not dropped.

        A field missing from an older file takes its default: fields are added with a default
        that keeps the older behaviour (``stay_motion`` empty, ``stay_gate`` off).
        """
        refuse_unknown_fields("dynamics config", d, {f.name for f in fields(cls)})
        d = dict(d)
        d["levels"] = tuple(d["levels"])
        d["action_nvec"] = tuple(d["action_nvec"])
        d["stay_motion"] = as_table(d.get("stay_motion", ()))
        return cls(**d)


@dataclass
class DynamicsOutput:
    """A training forward pass: the loss to minimise and scalars to log."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class Prediction:
    """One target-stream pass of the runtime."""

    logits: torch.Tensor
    """float ``[B, h, w, sum(levels)]``: per cell, one block of logits per FSQ channel."""
    reward: torch.Tensor
    """float ``[B]``: predicted reward of the step that leads to this frame."""
    done_logit: torch.Tensor
    """float ``[B]``: logit of "the episode terminated at this step"."""
    stay: torch.Tensor | None = None
    """float ``[B, h, w, len(levels)]``: the stay gate's bonus for the previous frame's level
    in each channel (None without a gate); :func:`add_stay` applies it."""
    still_logit: torch.Tensor | None = None
    """float ``[B]``: logit of "this frame's codes equal the previous frame's" (None without
    a still head)."""


def stay_index(prev_codes: torch.Tensor, levels: torch.Tensor, radix: torch.Tensor) -> torch.Tensor:
    """Codes ``[..., h, w]`` -> the logit index of each channel's level ``[..., h, w, D]``."""
    starts = torch.cumsum(levels, 0) - levels
    return (prev_codes.unsqueeze(-1) // radix) % levels + starts


def add_stay(logits: torch.Tensor, stay: torch.Tensor, prev_codes: torch.Tensor, levels: torch.Tensor, radix: torch.Tensor) -> torch.Tensor:
    """Logits ``[..., sum(levels)]`` with ``stay[..., i]`` added to the logit of channel i's
    level in ``prev_codes`` ``[...]`` (the previous frame's codes of the same cells)."""
    return logits.scatter_add(-1, stay_index(prev_codes, levels, radix), stay.to(logits.dtype))


def _rope_freqs(head_dim: int, time_period: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (time multiples k int64 ``[nt]``, row and column frequencies ``[ns]``, zeros ``[rest]``)."""
    pairs = head_dim // 2
    nt = max(1, pairs // 3)
    ns = (pairs - nt) // 2
    # Time: integer multiples k of 2*pi/P, from P/4 (a quarter turn per frame) down to 1.
    k = torch.logspace(math.log10(time_period / 4), 0, nt).round().clamp(min=1).long()
    fs = 1.0 / (64.0 ** (torch.arange(ns) / max(ns, 1)))  # rows and columns: integer grids
    return k, fs, torch.zeros(pairs - nt - 2 * ns)


class Rope(nn.Module):
    """3-D rotary position embedding over (frame, row, column)."""

    def __init__(self, head_dim: int, time_period: int) -> None:
        super().__init__()
        kt, fs, fz = _rope_freqs(head_dim, time_period)
        self.time_period = time_period
        self.register_buffer("kt", kt, persistent=False)
        self.register_buffer("fs", fs, persistent=False)
        self.register_buffer("fz", fz, persistent=False)

    def angles(self, t: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer positions ``[S]`` each -> (cos, sin) ``[S, head_dim]``."""
        P = self.time_period
        # A frame's time angles are (t * k mod P) steps of 2*pi/P, reduced in integers and
        # rounded once: as exact at frame 4,000 as at frame 4. As t times a float frequency
        # they grew to thousands of radians before the wrap, where fp32 keeps ~5e-4 rad, and
        # a world (re)started late in a batch's clock dreamt otherwise than at its start.
        steps = torch.remainder(torch.remainder(t, P)[:, None] * self.kt, P).float()  # (S, nt)
        ang = torch.cat(
            [
                steps * (2 * math.pi / P),
                y.float()[:, None] * self.fs,
                x.float()[:, None] * self.fs,
                t.float()[:, None] * self.fz,
            ],
            dim=-1,
        )  # (S, head_dim / 2)
        ang = torch.cat([ang, ang], dim=-1)  # (S, head_dim)
        return ang.cos(), ang.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def _attention_bf16_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention for bf16 inference on a CPU, as two batched matmuls around a softmax.

    A generation pass has few queries (one or two frames) over a long cache. There torch's
    CPU flash-attention kernel runs 1.5-1.8x slower than two bf16 batched matmuls around a
    bf16 softmax (the ``small`` preset's shape: 64 worlds x 4 heads of 64, 32 queries over
    400 keys; three rounds on a 2-vCPU AVX512-BF16 EPYC), and attention was about a third of
    a batched step. ``mask`` is a bool ``[S, Sk]`` or ``[B, 1, S, Sk]``
    (True = may attend) in which every query sees at least one key.
    """
    B, H, S, dh = q.shape
    Sk = k.shape[2]
    qs, kt = q.reshape(B * H, S, dh), k.reshape(B * H, Sk, dh).transpose(1, 2)
    if mask is not None and mask.dim() == 2:
        # One mask for all worlds (a prompt's causal mask, a frame's later passes): added
        # inside the score matmul as 0 or -inf instead of a masked_fill pass over the scores
        # (64 worlds x 4 heads, 32 queries over 208 keys: 2.1 against 2.7 ms a layer,
        # micro-benchmark). A step's first pass hides the replaced slot per world, so it
        # keeps masked_fill.
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
        scores = torch.baddbmm(bias, qs, kt, alpha=dh**-0.5).view(B, H, S, Sk)
    else:
        scores = torch.bmm(qs * dh**-0.5, kt).view(B, H, S, Sk)
        if mask is not None:
            scores.masked_fill_(~mask, float("-inf"))
    p = scores.softmax(-1)  # (B, H, S, Sk); the bf16 kernel sums in fp32, and is 1.8x faster than dtype=fp32
    return torch.bmm(p.view(B * H, S, Sk), v.reshape(B * H, Sk, dh)).view(B, H, S, dh)


class Block(nn.Module):
    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        d = cfg.width
        self.heads = cfg.heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.mlp_ratio * d)
        self.fc2 = nn.Linear(cfg.mlp_ratio * d, d)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        past: torch.Tensor | None,
        mask: torch.Tensor | None,
        free: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x ``[B, S, D]``, past ``[2, B, H, Sp, dh]`` -> (x, this block's new kv ``[2, B, H, S, dh]``).

        With ``free`` > 0 the last ``free`` (>= S) slots of ``past`` are scratch: the new keys
        and values are written into its first S slots and attention runs over the whole of
        ``past`` (``mask`` hides the unused rest), so the cache is never copied to append
        them; the new kv is then left there and None is returned in its place.
        """
        B, S, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, S, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        # RoPE in the tables' fp32, then back to the matmuls' dtype: under bf16 autocast a bf16
        # k would otherwise come out fp32 and drag the whole cache and attention up with it.
        q, k = _rotate(q, cos, sin).to(v.dtype), _rotate(k, cos, sin).to(v.dtype)  # (B, H, S, dh)
        if past is not None and free:
            end = past.shape[3] - free
            past[0, :, :, end : end + S] = k
            past[1, :, :, end : end + S] = v
            k, v, new_kv = past[0], past[1], None  # (B, H, Sp + free, dh)
        else:
            new_kv = torch.stack([k, v])
            if past is not None:
                k = torch.cat([past[0].to(k.dtype), k], dim=2)
                v = torch.cat([past[1].to(v.dtype), v], dim=2)
        if q.dtype == torch.bfloat16 and q.device.type == "cpu" and not torch.is_grad_enabled():
            y = _attention_bf16_cpu(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(y.transpose(1, 2).reshape(B, S, D))  # (B, S, D)
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return x, new_kv


class Dynamics(nn.Module):
    """The world model's transformer; ``forward`` is the training loss, the rest is the runtime's."""

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, p, nd = cfg.width, cfg.patch, len(cfg.levels)
        self.register_buffer("levels", torch.tensor(cfg.levels), persistent=False)
        radix = [math.prod(cfg.levels[:i]) for i in range(nd)]
        self.register_buffer("radix", torch.tensor(radix), persistent=False)
        offsets = [sum(cfg.action_nvec[:i]) for i in range(len(cfg.action_nvec))]
        self.register_buffer("act_offsets", torch.tensor(offsets), persistent=False)
        self.patch_in = nn.Linear(p * p * nd, d)
        self.mask_emb = nn.Parameter(torch.randn(d) * 0.02)
        self.act_emb = nn.Embedding(sum(cfg.action_nvec), d)
        self.no_act = nn.Parameter(torch.randn(d) * 0.02)
        self.level_emb = nn.Parameter(torch.zeros(d))
        self.stream_emb = nn.Embedding(2, d)
        self.rope = Rope(d // cfg.heads, cfg.time_period)
        self._spatial_cache: dict[tuple[int, int, str], torch.Tensor] = {}
        """(rows, columns, device) -> :meth:`_spatial`'s table: at most :data:`SPATIAL_TABLES`
        grids, emptied when the model moves (:meth:`_apply`)."""
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, p * p * sum(cfg.levels))
        self.reward_head = nn.Linear(d, 1)
        self.done_head = nn.Linear(d, 1)
        self.stay_head = nn.Linear(d, p * p * nd) if cfg.stay_gate else None
        self.still_head = nn.Linear(d, 1) if cfg.still_head else None
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.stay_head is not None:  # a new gate changes nothing until training moves it
            nn.init.zeros_(self.stay_head.weight)
            nn.init.zeros_(self.stay_head.bias)
        if self.still_head is not None:  # a new still head says "not still" until it learns
            nn.init.zeros_(self.still_head.weight)
            nn.init.constant_(self.still_head.bias, -4.0)
        # Episode ends are rare: start from a prior of about 2% rather than a coin flip, so an
        # untrained or briefly trained model does not end every dream episode at once.
        nn.init.constant_(self.done_head.bias, -4.0)

    # ----- pieces shared by training and the runtime -------------------------------------

    def _patch_values(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``[..., h, w]`` (negative = masked) -> (FSQ values ``[..., N, p*p*D]``, masked ``[..., N]``)."""
        p = self.cfg.patch
        masked = codes < 0
        lv = (codes.clamp(min=0).unsqueeze(-1) // self.radix) % self.levels  # (..., h, w, D)
        vals = lv.float() / (self.levels - 1).float() * 2.0 - 1.0
        *lead, h, w, nd = vals.shape
        vals = vals.reshape(*lead, h // p, p, w // p, p, nd).transpose(-4, -3)  # (..., h/p, w/p, p, p, D)
        vals = vals.reshape(*lead, (h // p) * (w // p), p * p * nd)  # (..., N, p*p*D)
        m = masked.reshape(*lead, h // p, p, w // p, p).transpose(-3, -2)
        return vals, m.reshape(*lead, (h // p) * (w // p), p * p).any(-1)

    def _action(self, actions: torch.Tensor) -> torch.Tensor:
        """actions int64 ``[..., C]`` (all NO_ACTION = none) -> embedding ``[..., D]``."""
        none = actions[..., 0] < 0
        emb = self.act_emb(actions.clamp(min=0) + self.act_offsets).sum(-2)
        return torch.where(none.unsqueeze(-1), self.no_act, emb)

    def _embed(
        self, codes: torch.Tensor, actions: torch.Tensor, stream: int, level: torch.Tensor | None
    ) -> torch.Tensor:
        """codes ``[B, F, h, w]``, actions ``[B, F, C]`` -> tokens ``[B, F, N, D]``."""
        vals, masked = self._patch_values(codes)
        x = self.patch_in(vals)
        x = torch.where(masked.unsqueeze(-1), self.mask_emb, x)
        x = x + self._spatial(*self._grid(codes), x.device)
        cond = self._action(actions) + self.stream_emb.weight[stream]  # (B, F, D)
        if level is not None:
            cond = cond + level.unsqueeze(-1) * self.level_emb
        return x + cond.unsqueeze(2)

    def _spatial(self, gh: int, gw: int, device: torch.device) -> torch.Tensor:
        """Fixed sinusoidal embedding of each token's (row, column), ``[N, D]``.

        RoPE alone makes attention position-aware, but every token of a fully masked frame
        then has the same input; this gives each its own, so the MLPs know where they are
        (and training converges several times faster). It is a function of the integer
        grid, so it exists for any frame size.

        Kept per grid and device: building it is about 20 small ops, run twice in every
        generation pass, and at one world they were 2.5 % of a step's torch time. Not while
        tracing, where the ONNX export needs it built from the traced grid size.
        """
        if torch.jit.is_tracing():
            return self._spatial_table(gh, gw, device)
        key = (gh, gw, str(device))
        table = self._spatial_cache.get(key)
        if table is None:
            # A normal tensor even when first asked for in inference mode, so that training
            # can still use it afterwards.
            with torch.inference_mode(False), torch.no_grad():
                table = self._spatial_table(gh, gw, device)
            while len(self._spatial_cache) >= SPATIAL_TABLES:  # a model run at many frame sizes
                del self._spatial_cache[next(iter(self._spatial_cache))]
            self._spatial_cache[key] = table
        return table

    def _apply(self, *args: Any, **kwargs: Any) -> Any:
        """``.to()``, ``.cuda()``, ``.cpu()``, ``.half()`` and the like: the tables kept for the old
        device are let go of, or a model moved off a GPU would keep its tables in GPU memory."""
        self._spatial_cache.clear()
        return super()._apply(*args, **kwargs)

    def _spatial_table(self, gh: int, gw: int, device: torch.device) -> torch.Tensor:
        """:meth:`_spatial`, computed: ``[N, D]``."""
        q = self.cfg.width // 4
        f = 1.0 / (100.0 ** (torch.arange(q, device=device) / q))
        y = torch.arange(gh, device=device).repeat_interleave(gw).float()[:, None] * f
        x = torch.arange(gw, device=device).repeat(gh).float()[:, None] * f
        emb = torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=-1)  # (N, 4q)
        return F.pad(emb, (0, self.cfg.width - 4 * q))

    def _positions(self, t: torch.Tensor, gh: int, gw: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame indices ``[F]`` -> (cos, sin) ``[F*N, head_dim]`` for a ``gh x gw`` patch grid."""
        dev = t.device
        y = torch.arange(gh, device=dev).repeat_interleave(gw).repeat(t.numel())
        x = torch.arange(gw, device=dev).repeat(gh * t.numel())
        tt = t.repeat_interleave(gh * gw)
        return self.rope.angles(tt, y, x)

    def _run(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: torch.Tensor | None, mask: torch.Tensor | None,
        free: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``[B, S, D]``, kv ``[L, 2, B, H, Sp, dh]`` -> (normed x, new kv ``[L, 2, B, H, S, dh]``).

        ``free``: see :meth:`Block.forward`; the new kv is then a view of the scratch slots.
        """
        new = []
        for i, blk in enumerate(self.blocks):
            x, nkv = blk(x, cos, sin, None if kv is None else kv[i], mask, free)
            new.append(nkv)
        if kv is not None and free:
            end = kv.shape[4] - free
            return self.ln_f(x), kv[:, :, :, :, end : end + x.shape[1]]
        return self.ln_f(x), torch.stack(new)

    def _heads(self, x: torch.Tensor, gh: int, gw: int) -> Prediction:
        """Target tokens ``[B, F, N, D]`` -> logits ``[B, F, h, w, sum(levels)]``, reward, done ``[B, F]``."""
        p = self.cfg.patch
        B, Fr, N, _ = x.shape
        def cells(y: torch.Tensor) -> torch.Tensor:  # (B, F, N, p*p*V) -> (B, F, h, w, V)
            return y.view(B, Fr, gh, gw, p, p, -1).transpose(3, 4).reshape(B, Fr, gh * p, gw * p, -1)

        pooled = x.mean(2)
        stay = None if self.stay_head is None else cells(self.stay_head(x))
        still = None if self.still_head is None else self.still_head(pooled)[..., 0]
        return Prediction(cells(self.head(x)), self.reward_head(pooled)[..., 0], self.done_head(pooled)[..., 0], stay, still)

    def final_logits(self, pred: Prediction, prev_codes: torch.Tensor | None) -> torch.Tensor:
        """The prediction's logits with the stay gate applied for the previous frame's codes
        ``prev_codes`` (shaped like the logits' cells); unchanged without a gate or codes."""
        if pred.stay is None or prev_codes is None:
            return pred.logits
        return add_stay(pred.logits, pred.stay, prev_codes, self.levels, self.radix)

    def _grid(self, codes: torch.Tensor) -> tuple[int, int]:
        h, w = codes.shape[-2:]
        p = self.cfg.patch
        if h % p or w % p:
            raise ValueError(f"code grid {h}x{w} is not a multiple of the patch size {p}")
        return h // p, w // p

    # ----- training ---------------------------------------------------------------------

    def forward(
        self,
        codes: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        terminated: torch.Tensor,
        generator: torch.Generator | None = None,
        first_action: torch.Tensor | None = None,
    ) -> DynamicsOutput:
        """Two-stream training loss on a window.

        Args:
            codes: int64 ``[B, T, h, w]`` tokenizer codes of T consecutive frames.
            actions: int64 ``[B, T-1, C]``; ``actions[:, i]`` led from frame i to frame i+1.
            rewards: float ``[B, T-1]``; terminated: bool ``[B, T-1]``, aligned with actions.
            generator: the source of the masking and corruption draws.
            first_action: int64 ``[B, C]``, the action that led to frame 0, or NO_ACTION
                (the default) where there was none. In a rollout the oldest frame of the
                sliding window has one, so training should see it too.
        """
        cfg = self.cfg
        B, T, h, w = codes.shape
        gh, gw = self._grid(codes)
        N = gh * gw
        dev = codes.device
        rand = lambda *s: torch.rand(*s, device=dev, generator=generator)  # noqa: E731
        # Context stream: replace a share `level` of each frame's cells with random codes.
        level = rand(B, T) * cfg.max_corruption
        noise = (rand(B, T, h, w) * math.prod(cfg.levels)).long()
        ctx_codes = torch.where(rand(B, T, h, w) < level[..., None, None], noise, codes)
        if self.training and cfg.rollout_share > 0:
            ctx_codes, level = self._rolled_out(ctx_codes, level, actions, first_action, rand)

        # Target stream: MaskGIT cosine schedule, at least one masked patch per frame.
        ratio = torch.cos(rand(B, T - 1) * math.pi / 2)
        n_mask = (ratio * N).ceil().clamp(min=1)
        rank = rand(B, T - 1, N).argsort(-1).argsort(-1)
        pmask = rank < n_mask[..., None]  # (B, T-1, N)
        cell_mask = pmask.view(B, T - 1, gh, 1, gw, 1).expand(B, T - 1, gh, cfg.patch, gw, cfg.patch)
        cell_mask = cell_mask.reshape(B, T - 1, h, w)
        tgt_codes = torch.where(cell_mask, MASKED, codes[:, 1:])

        pred = self.teacher_forced(ctx_codes, actions, level, tgt_codes, first_action)
        # Frame t+1 stays like context frame t, moved by the action between them (stay_motion).
        logits = self.final_logits(pred, stay_reference(ctx_codes[:, :-1], actions, cfg.stay_motion))
        # Per-channel cross-entropy on the masked cells only.
        target = (codes[:, 1:].unsqueeze(-1) // self.radix) % self.levels  # (B, T-1, h, w, D)
        ce = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev)
        sel = cell_mask.reshape(-1)
        weight = None
        if self.training and cfg.change_weight != 1.0:  # validation stays the plain loss, comparable across runs
            changed = (codes[:, 1:] != codes[:, :-1]).reshape(-1)[sel]
            weight = torch.where(changed, cfg.change_weight, 1.0)
            weight = weight / weight.mean()  # the same scale as the unweighted mean
        for i, lg in enumerate(logits.float().split(list(cfg.levels), dim=-1)):
            lg = lg.reshape(-1, cfg.levels[i])[sel]
            tg = target[..., i].reshape(-1)[sel]
            if weight is None:
                ce = ce + F.cross_entropy(lg, tg)
            else:
                ce = ce + (F.cross_entropy(lg, tg, reduction="none") * weight).mean()
            correct = correct + (lg.argmax(-1) == tg).float().mean()
        ce = ce / len(cfg.levels)
        r_loss = F.mse_loss(pred.reward.float(), rewards.float())
        d_loss = F.binary_cross_entropy_with_logits(pred.done_logit.float(), terminated.float())
        loss = ce + cfg.reward_weight * r_loss + cfg.done_weight * d_loss
        logs = {
            "ce": float(ce.detach()),
            "acc": float(correct.detach()) / len(cfg.levels),
            "reward_mse": float(r_loss.detach()),
            "done_bce": float(d_loss.detach()),
        }
        if pred.still_logit is not None:
            # Trained only on frames with every patch masked: the runtime asks the head in the
            # first pass, before any patch is generated, and a visible patch would give it away.
            still = (codes[:, 1:] == codes[:, :-1]).flatten(2).all(-1)  # (B, T-1): nothing changed
            full = pmask.all(-1)
            s_loss = F.binary_cross_entropy_with_logits(pred.still_logit.float(), still.float(), reduction="none")
            s_loss = (s_loss * full).sum() / full.sum().clamp(min=1)
            loss = loss + cfg.still_weight * s_loss
            logs["still_bce"] = float(s_loss.detach())
            logs["still_acc"] = float((((pred.still_logit > 0) == still) & full).sum() / full.sum().clamp(min=1))
        return DynamicsOutput(loss=loss, logs=logs)

    @torch.no_grad()
    def _rolled_out(self, ctx_codes, level, actions, first_action, rand):
        """Context codes and levels where a ``rollout_share`` of the windows have frames 1..T-1
        replaced by the model's own sampled predictions (module docstring)."""
        cfg = self.cfg
        B, T = ctx_codes.shape[:2]
        pick = (rand(B) < cfg.rollout_share).nonzero().flatten()
        if len(pick) == 0:
            return ctx_codes, level
        codes, lv = ctx_codes[pick], level[pick].clone()
        lv[:, 1:] = cfg.inference_corruption
        act = actions[pick]
        first = None if first_action is None else first_action[pick]
        masked = torch.full_like(codes[:, 1:], MASKED)
        for _ in range(max(1, cfg.rollout_passes)):
            pred = self.teacher_forced(codes, act, lv, masked, first)
            logits = self.final_logits(pred, stay_reference(codes[:, :-1], act, cfg.stay_motion)).float()
            sampled = torch.zeros_like(codes[:, 1:])
            for i, lg in enumerate(logits.split(list(cfg.levels), dim=-1)):
                if cfg.rollout_temperature > 0:
                    gumbel = -torch.log(-torch.log(rand(*lg.shape).clamp(1e-9, 1 - 1e-9)))
                    lg = lg / cfg.rollout_temperature + gumbel
                sampled = sampled + lg.argmax(-1) * self.radix[i]
            codes = torch.cat([codes[:, :1], sampled], dim=1)
        ctx_codes, level = ctx_codes.clone(), level.clone()
        ctx_codes[pick], level[pick] = codes, lv
        return ctx_codes, level

    def teacher_forced(
        self,
        codes: torch.Tensor,
        actions: torch.Tensor,
        level: torch.Tensor,
        target_codes: torch.Tensor,
        first_action: torch.Tensor | None = None,
    ) -> Prediction:
        """Predictions for frames 1..T-1 of a window in one block-causal pass.

        Args:
            codes: int64 ``[B, T, h, w]``, the context frames (as the model should see them).
            actions: int64 ``[B, T-1, C]``; ``actions[:, i]`` led from frame i to frame i+1.
            level: float ``[B, T]``, the corruption level input of each context frame.
            target_codes: int64 ``[B, T-1, h, w]``, frames 1..T-1 with MASKED cells to predict.
            first_action: int64 ``[B, C]``, the action that led to frame 0 (None: NO_ACTION).

        Returns:
            logits ``[B, T-1, h, w, sum(levels)]``, reward and done logit ``[B, T-1]``.
        """
        B, T = codes.shape[:2]
        gh, gw = self._grid(codes)
        N = gh * gw
        dev = codes.device
        if first_action is None:
            first = torch.full((B, 1, actions.shape[-1]), NO_ACTION, dtype=actions.dtype, device=dev)
        else:
            first = first_action.to(actions.dtype).reshape(B, 1, -1)
        prev_act = torch.cat([first, actions], dim=1)  # (B, T, C): the action that led to each frame
        ctx = self._embed(codes, prev_act, 0, level)  # (B, T, N, D)
        tgt = self._embed(target_codes, prev_act[:, 1:], 1, None)  # (B, T-1, N, D)
        x = torch.cat([ctx.flatten(1, 2), tgt.flatten(1, 2)], dim=1)  # (B, (2T-1)N, D)
        t_idx = torch.arange(T, device=dev)
        cos, sin = self._positions(torch.cat([t_idx, t_idx[1:]]), gh, gw)
        out, _ = self._run(x, cos, sin, None, self.train_mask(T, N, dev))
        return self._heads(out[:, T * N :].reshape(B, T - 1, N, -1), gh, gw)

    @staticmethod
    def train_mask(T: int, N: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Allowed attention ``[S, S]`` (True = may attend) for the two-stream training layout."""
        ft = torch.arange(T, device=device).repeat_interleave(N)  # frame of each context token
        fg = torch.arange(1, T, device=device).repeat_interleave(N)  # frame of each target token
        ctx_rows = torch.cat([ft[:, None] >= ft[None, :], torch.zeros(T * N, fg.numel(), dtype=torch.bool, device=device)], 1)
        tgt_rows = torch.cat([fg[:, None] > ft[None, :], fg[:, None] == fg[None, :]], 1)
        return torch.cat([ctx_rows, tgt_rows], 0)

    # ----- runtime (the torch backend calls these) ----------------------------------------

    @staticmethod
    def _cache_mask(valid: torch.Tensor | None, new_mask: torch.Tensor | None, S: int) -> torch.Tensor | None:
        """Per-world cache validity ``[B, Sp]`` and a mask among new tokens ``[S, S]`` -> ``[B, 1, S, Sp+S]``."""
        if valid is None:
            return new_mask
        B = valid.shape[0]
        new = torch.ones(S, S, dtype=torch.bool, device=valid.device) if new_mask is None else new_mask
        return torch.cat([valid[:, None, None, :].expand(B, 1, S, valid.shape[1]), new.expand(B, 1, S, S)], dim=-1)

    def _pass_mask(
        self, kv: torch.Tensor | None, valid: torch.Tensor | None, new: torch.Tensor | None, S: int, free: int
    ) -> torch.Tensor | None:
        """The attention mask of a runtime pass of S new tokens: ``[S, K]`` or ``[B, 1, S, K]``
        over K = the cache's entries, then the new tokens (``new`` ``[S, S]``, None: all see
        all), then any unused scratch slots; None when every token may see every key."""
        if kv is None:
            return new
        Sp = kv.shape[4] - free
        if valid is not None:
            mask = self._cache_mask(valid, new, S)
        elif new is not None:
            mask = torch.cat([torch.ones(S, Sp, dtype=torch.bool, device=new.device), new], 1)
        else:
            mask = None
        if free > S:
            if mask is None:
                mask = torch.ones(S, Sp + S, dtype=torch.bool, device=kv.device)
            unused = torch.zeros(*mask.shape[:-1], free - S, dtype=torch.bool, device=mask.device)
            mask = torch.cat([mask, unused], -1)
        return mask

    def append(
        self,
        codes: torch.Tensor,
        actions: torch.Tensor,
        t0: torch.Tensor,
        level: float,
        kv: torch.Tensor | None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Commit F frames to the context: their context-stream keys and values.

        Args:
            codes: int64 ``[B, F, h, w]``; actions: int64 ``[B, F, C]`` (NO_ACTION for none).
            t0: int64 scalar, absolute index of the first of these frames.
            level: the corruption level the model is told these frames have.
            kv: ``[L, 2, B, H, Sp, dh]`` cache of earlier frames, or None.
            valid: bool ``[B, Sp]``, which cache entries each world may see (None: all).

        Returns:
            The new entries ``[L, 2, B, H, F*N, dh]`` (the caller stores them).
        """
        B, Fr = codes.shape[:2]
        gh, gw = self._grid(codes)
        N = gh * gw
        dev = codes.device
        lv = torch.full((B, Fr), float(level), device=dev)
        x = self._embed(codes, actions, 0, lv).flatten(1, 2)  # (B, F*N, D)
        cos, sin = self._positions(t0 + torch.arange(Fr, device=dev), gh, gw)
        ft = torch.arange(Fr, device=dev).repeat_interleave(N)
        causal = (ft[:, None] >= ft[None, :]) if Fr > 1 else None
        if causal is not None and kv is not None and valid is None:
            causal = torch.cat([torch.ones(Fr * N, kv.shape[4], dtype=torch.bool, device=dev), causal], 1)
        _, new_kv = self._run(x, cos, sin, kv, self._cache_mask(valid, causal, Fr * N))
        return new_kv

    def predict(
        self,
        codes: torch.Tensor,
        actions: torch.Tensor,
        t: torch.Tensor,
        kv: torch.Tensor | None,
        valid: torch.Tensor | None = None,
        commit_codes: torch.Tensor | None = None,
        commit_actions: torch.Tensor | None = None,
        level: float = 0.0,
        free: int = 0,
    ) -> tuple[Prediction, torch.Tensor | None]:
        """One target-stream pass for the frame at absolute index ``t``, optionally fused
        with committing frame ``t - 1`` to the context.

        Fusing matters on a CPU: at batch 1 a pass is bound by reading the weights, so
        committing the previous frame in the same pass (2N tokens instead of N) is almost free.

        Args:
            codes: int64 ``[B, h, w]``, MASKED (-1) where not yet generated (whole patches).
            actions: int64 ``[B, C]``, the action that leads to this frame.
            t: int64 scalar frame index; kv: the context cache ``[L, 2, B, H, Sp, dh]``.
            valid: bool ``[B, Sp]``, which cache entries each world may see (None: all).
            commit_codes, commit_actions: ``[B, h, w]`` and ``[B, C]`` of frame ``t - 1``
                when it is not in ``kv`` yet; ``level`` is its corruption level input.
            free: scratch slots at the end of ``kv`` (at least 2N), after its ``Sp`` cache
                entries: this pass writes its keys and values there rather than copying the
                cache to append them (see :meth:`Block.forward`). 0: ``kv`` is all cache.

        Returns:
            The prediction, and the committed frame's cache entries ``[L, 2, B, H, N, dh]``
            (None without a commit; a view of the scratch slots when ``free``).
        """
        gh, gw = self._grid(codes)
        B, N = codes.shape[0], gh * gw
        x = self._embed(codes[:, None], actions[:, None], 1, None).flatten(1, 2)  # (B, N, D)
        tt = t.reshape(1)
        if commit_codes is None:
            cos, sin = self._positions(tt, gh, gw)
            out, _ = self._run(x, cos, sin, kv, self._pass_mask(kv, valid, None, N, free), free)
            entries = None
        else:
            lv = torch.full((B, 1), float(level), device=codes.device)
            xc = self._embed(commit_codes[:, None], commit_actions[:, None], 0, lv).flatten(1, 2)
            x = torch.cat([xc, x], dim=1)  # (B, 2N, D): committed frame, then target
            cos, sin = self._positions(torch.cat([tt - 1, tt]), gh, gw)
            row = torch.arange(2 * N, device=codes.device)
            new = ~((row[:, None] < N) & (row[None, :] >= N))  # the committed frame never sees the target
            out, new_kv = self._run(x, cos, sin, kv, self._pass_mask(kv, valid, new, 2 * N, free), free)
            out, entries = out[:, N:], new_kv[:, :, :, :, :N]
        pred = self._heads(out.reshape(B, 1, N, -1), gh, gw)
        stay = None if pred.stay is None else pred.stay[:, 0]
        still = None if pred.still_logit is None else pred.still_logit[:, 0]
        return Prediction(pred.logits[:, 0], pred.reward[:, 0], pred.done_logit[:, 0], stay, still), entries
