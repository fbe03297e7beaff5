"""MaskGIT decoding of one frame in K chunks of patches, shared by every backend.

The backend only has to answer "given these known patches (the rest masked), what are the
logits for every cell?". This module decides how many patches each of the K passes fixes
(a cosine schedule), which ones (the most confident), and what values they take (argmax
at temperature 0, otherwise a seeded draw from the tempered softmax). It works on numpy arrays so the torch
and the ONNX Runtime backends share it unchanged: same seed, same draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MASKED = -1
"""Code value of a cell that is not generated yet (the dynamics model's mask)."""
TINY_TEMPERATURE = float(np.finfo(np.float32).tiny)
"""The lowest temperature above 0 that sampling uses: lower ones are raised to it."""


@dataclass(frozen=True)
class PassOutput:
    """What the backend returns for one pass over a partly masked frame."""

    logits: np.ndarray
    """float32 ``[B, h, w, sum(levels)]``, one block of logits per FSQ channel."""
    reward: np.ndarray
    """float32 ``[B]``."""
    done_logit: np.ndarray
    """float32 ``[B]``."""
    stay: np.ndarray | None = None
    """float32 ``[B, h, w, len(levels)]``: the stay gate's bonus for the previous frame's level
    in each channel, added to the logits before sampling (None: the model has no gate)."""
    still_logit: np.ndarray | None = None
    """float32 ``[B]``: logit of "the frame equals the previous one" (None: no still head)."""


@dataclass(frozen=True)
class FrameSample:
    """A generated frame in codes, with the heads of the last pass."""

    codes: np.ndarray
    """int64 ``[B, h, w]``."""
    reward: np.ndarray
    done_logit: np.ndarray
    still_logit: np.ndarray | None = None
    """float ``[B]`` from the first pass, the one that sees no generated patch (None: no still head)."""


def chunk_sizes(num_patches: int, chunks: int) -> list[int]:
    """Patches fixed at each of the K passes: a cosine schedule, each at least one.

    The first passes fix few patches (the least-informed guesses), the last ones many.
    ``chunks`` larger than ``num_patches`` is capped to one patch per pass.
    """
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}")
    k = min(chunks, num_patches)
    sizes, left = [], num_patches
    for i in range(k):
        r = 0 if i + 1 == k else math.floor(num_patches * math.cos(math.pi / 2 * (i + 1) / k))
        r = max(min(r, left - 1), k - i - 1)  # fix at least one now, leave one per later pass
        sizes.append(left - r)
        left = r
    return sizes


class MaskGitSampler:
    """Generates a frame's codes with K passes of a backend's ``predict``.

    Args:
        levels: FSQ levels of the tokenizer (one categorical per channel per cell).
        patch: cells per patch side; whole patches are fixed together.
        chunks: K, the number of passes per frame (1 = one parallel pass).
        temperature: 0 for greedy (deterministic); otherwise softmax temperature.
        rng: the source of every random draw, so a seed reproduces a rollout.
        ungated_temperature: the temperature of the worlds whose stay gate is off
            (``gated`` False: the runtime's freeze guard); None = ``temperature``. Not used
            when ``temperature`` is 0, so greedy stays deterministic.
        ranked_moves: decide together which cells leave their previous level (see
            :meth:`_choose`); needs the previous frame's codes, and applies to the worlds
            whose stay gate is on.
    """

    def __init__(self, levels: tuple[int, ...], patch: int, chunks: int, temperature: float, rng: np.random.Generator,
                 ungated_temperature: float | None = None, ranked_moves: bool = False) -> None:  # fmt: skip
        self.ranked_moves = bool(ranked_moves)
        if chunks < 1:
            raise ValueError(f"chunks must be >= 1, got {chunks}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if ungated_temperature is not None and ungated_temperature <= 0:
            raise ValueError(f"ungated_temperature must be > 0, got {ungated_temperature}")
        self.ungated_temperature = None if ungated_temperature is None else float(ungated_temperature)
        self.levels = tuple(levels)
        self.patch = patch
        self.chunks = chunks
        # A positive temperature below float32's smallest normal number is 0 in the float32
        # division by it: the argmax's logit became 0/0 = NaN, and every cell drew level 0 (a
        # blank frame). At the smallest normal temperature the draw is already the argmax.
        self.temperature = max(float(temperature), TINY_TEMPERATURE) if temperature > 0 else 0.0
        self.rng = rng
        self._radix = np.array([math.prod(levels[:i]) for i in range(len(levels))], dtype=np.int64)
        self._levels = np.array(levels, dtype=np.int64)
        self._starts = np.cumsum([0, *levels[:-1]]).astype(np.int64)
        """Offset of each channel's block of logits."""

    def _choose(
        self, logits: np.ndarray, stay: np.ndarray | None, prev: np.ndarray | None, gated: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """logits ``[B, h, w, sum(levels)]`` -> (codes ``[B, h, w]``, log-prob of the choice ``[B, h, w]``).

        With a stay gate ``[B, h, w, D]`` and the previous frame's codes ``prev`` ``[B, h, w]``,
        each channel's logit of its previous level gets the gate's bonus first (as in training),
        in the worlds where ``gated`` (bool ``[B]``; None: all) is True.

        Each channel's level is drawn from softmax(logits / temperature) by inverting its
        cumulative sum with one uniform draw, in float32: one random number per channel and
        cell instead of a Gumbel draw per level, which made sampling about 15 % of a 64-world
        step of ``small`` on a 2-core CPU. At temperature 0 it is the argmax (the first on ties).

        With ``ranked_moves`` (and ``prev``, at a temperature above 0), whether a cell's
        channel keeps its previous level is decided for the whole world at once: with
        ``p_i`` each cell's probability of leaving its previous level, the ``n`` cells with
        the highest ``p_i`` leave it, where ``n`` is ``sum(p_i)`` rounded up or down at random
        (so its mean is the expected count of the independent draws); each leaving cell then
        draws its new level from its own distribution without the previous level. Drawn
        independently, a step in which every cell of an edge has, say, a 40 % chance to move
        moves a random 40 % of them, a speckle the decoder renders as a smear; ranked, the
        step moves the edge's most likely cells and keeps the others. The worlds whose gate is
        off (``gated`` False: the freeze guard) keep independent draws. With K > 1 passes each
        pass ranks the whole frame again, and keeps the choices of the patches it fixes.
        """
        x = np.asarray(logits, dtype=np.float32)
        batch_shape = x.shape[:-1]
        # Levels first, cells second: each reduction over a channel's few levels becomes
        # elementwise arithmetic on whole rows of cells, which numpy runs vectorized.
        x = x.reshape(-1, x.shape[-1]).T.copy()  # (sum(levels), cells)
        cells = np.arange(x.shape[1])
        if stay is not None and prev is not None:
            bonus = np.asarray(stay, dtype=np.float32).reshape(-1, len(self.levels))
            if gated is not None:
                bonus = bonus * np.repeat(gated, x.shape[1] // len(gated))[:, None]
            at = self._starts + (prev.reshape(-1, 1) // self._radix) % self._levels  # (cells, D): previous levels
            x[at, cells[:, None]] += bonus
        code = np.zeros(x.shape[1], dtype=np.int64)
        conf = np.zeros(x.shape[1], dtype=np.float32)
        u = None if self.temperature == 0 else self.rng.random((len(self.levels), x.shape[1]), dtype=np.float32)
        temp: float | np.ndarray = self.temperature
        if self.temperature > 0 and self.ungated_temperature is not None and gated is not None and not np.all(gated):
            per_world = np.where(np.asarray(gated, dtype=bool), self.temperature, self.ungated_temperature)
            temp = np.repeat(per_world, x.shape[1] // len(per_world)).astype(np.float32)  # per cell
        ranked = None
        if self.ranked_moves and u is not None and prev is not None:
            worlds = batch_shape[0]
            per_world = x.shape[1] // worlds
            ranked = np.ones(worlds, dtype=bool) if gated is None else np.asarray(gated, dtype=bool)
            prev_levels = ((prev.reshape(-1, 1) // self._radix) % self._levels).T  # (D, cells)
            own = self.rng.random((len(self.levels), x.shape[1]), dtype=np.float32)  # the unranked worlds' draws
            rounding = self.rng.random((len(self.levels), worlds), dtype=np.float32)
            jitter = self.rng.random((len(self.levels), worlds, per_world), dtype=np.float32) * 1e-6  # breaks ties at random
        for i, (lv, radix, start) in enumerate(zip(self.levels, self._radix, self._starts)):
            z = x[start : start + lv]
            z = z - z.max(0)  # <= 0, with a 0 at the argmax
            lse = np.log(np.exp(z).sum(0))
            if self.temperature == 0:
                idx = z.argmax(0)
            else:
                with np.errstate(over="ignore"):  # a logit far below the best at a low temperature: -inf, weight 0
                    cdf = np.exp(z / temp)
                for k in range(1, lv):  # a running sum row by row: np.cumsum along axis 0 is 10x slower
                    np.add(cdf[k - 1], cdf[k], out=cdf[k])
                # The drawn level is the first whose running sum exceeds u * total: counting
                # the sums <= it (not <) skips a level of no mass even at u = 0, which float32
                # draws give once in 2^24 (64 worlds of 16x16 cells in 5 channels: every ~200 steps).
                # Capped just below the total, which u * total can round up to at the top end.
                if ranked is None:
                    idx = (cdf <= np.minimum(u[i] * cdf[-1], np.nextafter(cdf[-1], np.float32(0)))).sum(0)
                else:
                    pl = prev_levels[i]
                    mass_prev = cdf[pl, cells] - np.where(pl > 0, cdf[np.maximum(pl - 1, 0), cells], 0.0)
                    p_move = (1.0 - mass_prev / cdf[-1]).reshape(worlds, per_world)
                    n = np.floor(p_move.sum(1) + rounding[i])  # (worlds,)
                    order = np.argsort(-(p_move + jitter[i]), axis=1)
                    rank = np.empty_like(order)
                    np.put_along_axis(rank, order, np.broadcast_to(np.arange(per_world), order.shape), axis=1)
                    stay = np.where(ranked[:, None], rank >= n[:, None], own[i].reshape(worlds, per_world) < 1.0 - p_move)
                    # A leaving cell draws from its distribution with the previous level taken out.
                    rest = cdf - (np.arange(lv)[:, None] >= pl) * mass_prev
                    total = cdf[-1] - mass_prev
                    thr = np.minimum(u[i] * total, np.nextafter(total, np.float32(0)))
                    idx = np.where(stay.reshape(-1), pl, (rest <= thr).sum(0))
                idx = np.minimum(idx, lv - 1)  # rounding at the top end
            code += idx * radix
            conf += z[idx, cells] - lse
        return code.reshape(batch_shape), conf.reshape(batch_shape)

    def generate(
        self, predict: Callable[[np.ndarray], PassOutput], batch: int, h: int, w: int, prev: np.ndarray | None = None,
        gated: np.ndarray | None = None,
    ) -> FrameSample:
        """Run K passes; ``predict(codes)`` sees the codes so far (MASKED where unknown).
        ``prev`` ``[B, h, w]`` is the previous frame's codes, for a model with a stay gate;
        ``gated`` (bool ``[B]``, None: all) says in which worlds the gate's bonus applies."""
        p = self.patch
        gh, gw = h // p, w // p
        n = gh * gw
        codes = np.full((batch, h, w), MASKED, dtype=np.int64)
        fixed = np.zeros((batch, n), dtype=bool)
        sizes = chunk_sizes(n, self.chunks)
        out = None
        still = None
        for k, size in enumerate(sizes):
            out = predict(codes)
            if k == 0:
                still = out.still_logit
            choice, conf = self._choose(out.logits, out.stay, prev, gated)
            # Patch confidence: summed log-prob of its cells. (B, h, w) -> (B, gh*gw)
            pconf = conf.reshape(batch, gh, p, gw, p).sum((2, 4)).reshape(batch, n)
            if self.temperature > 0 and k + 1 < len(sizes):
                # MaskGIT's annealed randomness in which patches go first.
                anneal = self.temperature * (1.0 - (k + 1) / len(sizes))
                pconf = pconf + anneal * self.rng.gumbel(size=pconf.shape)
            pconf = np.where(fixed, -np.inf, pconf)
            # Stable sort: ties are broken by patch index, so greedy decoding is deterministic.
            pick = np.argsort(-pconf, axis=1, kind="stable")[:, :size]
            newly = np.zeros_like(fixed)
            np.put_along_axis(newly, pick, True, axis=1)
            fixed |= newly
            cell = np.repeat(np.repeat(newly.reshape(batch, gh, gw), p, 1), p, 2)  # (B, h, w)
            codes = np.where(cell, choice, codes)
        assert out is not None
        return FrameSample(codes=codes, reward=out.reward, done_logit=out.done_logit, still_logit=still)
