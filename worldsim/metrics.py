"""Frame and prediction metrics for the fidelity evaluation: PSNR, SSIM, F1, precision and
recall, and the collapse detector for long rollouts.

Every frame metric takes uint8 frames ``[..., H, W, 3]`` and returns one number per frame,
so callers can average over whatever set of frames they compare (and compare the dream and
the copy-last-frame baseline on exactly the same frames). Other integer arrays (a nested
list of ints) are taken when their values lie in 0..255; float frames are refused with a
``ValueError``, since their scale (0..1 or 0..255) cannot be told from the values.

**PSNR** is per frame, ``10 log10(255^2 / MSE)`` over all pixels and channels. Identical
frames have an infinite PSNR; it is capped at :data:`PSNR_CAP` (60 dB) so that averages
stay finite. 60 dB is an MSE of 0.065: at 64x64 a frame with up to about 800 of its 12,288
channel values off by one level (and none further) still reaches it, so the cap touches
exact and nearly exact copies alike (for example the copy-last baseline while the player
stands still); ``by_change`` in the eval counts exact copies on their own.

**SSIM** is Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
K2 = 0.03, computed per RGB channel over the valid region and averaged, as
``skimage.metrics.structural_similarity(..., gaussian_weights=True, use_sample_covariance=False,
data_range=255, channel_axis=-1)`` (Wang's population covariance, not skimage's default)
does. Frames smaller than 11 pixels use the largest odd window that fits.

**Collapse.** A long open-loop rollout collapses when its frames stop looking like frames
of the world: blank or a single colour, noise, or frozen while the world moves. Each
frame gets three statistics, all on luma in grey levels:

* ``std``: spatial standard deviation. A blank or single-colour frame has ~0; real views
  always show some contrast (sky against ground, the HUD).
* ``edge``: mean absolute difference between horizontally and vertically adjacent pixels.
  Blur and flat frames drive it to ~0; noise drives it far above any real view, because
  real frames are piecewise smooth (blocks, sky) and noise is not.
* ``change``: mean absolute difference from the previous frame. A frozen dream has ~0
  while the reference env, given the same actions, moves.

The acceptable range of ``std`` and ``edge`` is taken from real frames of the same env
(:class:`Band`: the 1st to 99th percentile, widened by a factor of :data:`BAND_MARGIN`), so
the detector needs no per-env tuning. A frame is *flagged* when a statistic leaves its band
or it is frozen (``change`` below :data:`FREEZE_EPS` while the real frame at the same step
changed by more than :data:`MOTION_EPS`). The rollout *collapses* at the first step where
more than half of a :data:`COLLAPSE_WINDOW`-frame window is flagged: one odd frame (a view
straight into a wall) is not a collapse, a persistent failure is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PSNR_CAP = 60.0
"""dB given to a frame identical to its reference (its true PSNR is infinite)."""
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
BAND_MARGIN = 2.0
"""The real-data band of a statistic is [q01 / margin, q99 * margin]."""
FREEZE_EPS = 0.25
"""Mean absolute change (grey levels) below which a frame counts as identical to the last."""
MOTION_EPS = 2.0
"""Mean absolute change (grey levels) above which the real frame counts as moving."""
COLLAPSE_WINDOW = 20
"""Frames in the sliding window of the collapse verdict (one second at 20 ticks/s)."""
_LUMA = np.array([0.299, 0.587, 0.114])


def _as_float(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [..., H, W, 3], got shape {list(frames.shape)}")
    # Every figure here is on the 0..255 scale (PSNR's peak, SSIM's constants, the bands' grey
    # levels). Float frames in [0, 1], as ML pipelines keep them, read as a picture 255 times
    # darker: PSNR hit the 60 dB cap and SSIM ~1 for frames 27 dB apart, silently.
    if frames.dtype.kind not in "iu":
        raise ValueError(
            f"frames must be uint8 (0..255), got dtype {frames.dtype}; convert float frames with "
            "(x * 255).round().astype(np.uint8) from [0, 1], or x.round().astype(np.uint8) from [0, 255]"
        )
    if frames.dtype != np.uint8 and frames.size and (frames.min() < 0 or frames.max() > 255):
        raise ValueError(f"frames must be uint8 (0..255), got {frames.dtype} values {frames.min()}..{frames.max()}")
    return frames.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray, cap: float = PSNR_CAP) -> np.ndarray:
    """Per-frame PSNR in dB of uint8 frames ``[..., H, W, 3]`` (identical frames: ``cap``)."""
    x, y = _as_float(a), _as_float(b)
    if x.shape != y.shape:
        raise ValueError(f"frames to compare differ in shape: {list(x.shape)} vs {list(y.shape)}")
    mse = ((x - y) ** 2).mean(axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(255.0**2 / mse)
    return np.minimum(db, cap)


def _gaussian(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(t: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``t`` ``[N, H, W, 3]`` filtered by the separable kernel ``g`` x ``g``, 'valid' borders.

    Two 1-D passes of shifted, weighted sums: 2 x 11 multiply-adds per pixel instead of a
    121-tap 2-D convolution. In float64 torch has no fast path for the depthwise 2-D
    filter, which took about 10 s per call on 2,000 frames (80 % of an eval with 64
    episodes); this takes a fraction of a second and agrees to rounding error."""
    n, H, W = len(g), t.shape[1], t.shape[2]
    h = g[0] * t[:, : H - n + 1]
    for k in range(1, n):
        h += g[k] * t[:, k : k + H - n + 1]
    out = g[0] * h[:, :, : W - n + 1]
    for k in range(1, n):
        out += g[k] * h[:, :, k : k + W - n + 1]
    return out


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame SSIM of uint8 frames ``[..., H, W, 3]`` (1 for identical frames).

    The usual definition (Wang et al. 2004): an 11x11 Gaussian window of sigma 1.5
    (smaller for tiny frames), constants K1 = 0.01 and K2 = 0.03, per RGB channel, averaged
    over the valid window positions and the channels."""
    x, y = _as_float(a), _as_float(b)
    if x.shape != y.shape:
        raise ValueError(f"frames to compare differ in shape: {list(x.shape)} vs {list(y.shape)}")
    lead, (H, W) = x.shape[:-3], x.shape[-3:-1]
    size = min(SSIM_WINDOW, H - (H + 1) % 2, W - (W + 1) % 2)
    g = _gaussian(size, SSIM_SIGMA)
    X, Y = x.reshape(-1, H, W, 3), y.reshape(-1, H, W, 3)
    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    mx, my = _blur(X, g), _blur(Y, g)
    sxx = _blur(X * X, g) - mx * mx
    syy = _blur(Y * Y, g) - my * my
    sxy = _blur(X * Y, g) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean(axis=(1, 2, 3)).reshape(lead)


def macro_f1(true: np.ndarray, pred: np.ndarray, classes: int) -> float:
    """F1 averaged over the classes that occur in ``true`` or ``pred`` (sklearn's macro F1)."""
    true, pred = np.asarray(true).reshape(-1), np.asarray(pred).reshape(-1)
    scores = []
    for c in range(classes):
        tp = np.sum((true == c) & (pred == c))
        fp = np.sum((true != c) & (pred == c))
        fn = np.sum((true == c) & (pred != c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


@dataclass(frozen=True)
class PrecisionRecall:
    """Precision and recall of binary event predictions (None where undefined)."""

    precision: float | None
    """Of the predicted events, the share that happened; None when none was predicted."""
    recall: float | None
    """Of the events that happened, the share predicted; None when none happened."""
    predicted: int
    actual: int
    hits: int


def precision_recall(actual: np.ndarray, predicted: np.ndarray) -> PrecisionRecall:
    """Precision and recall of bool ``predicted`` against bool ``actual`` (same shape)."""
    a, p = np.asarray(actual, bool).reshape(-1), np.asarray(predicted, bool).reshape(-1)
    hits, n_pred, n_act = int(np.sum(a & p)), int(p.sum()), int(a.sum())
    return PrecisionRecall(
        precision=hits / n_pred if n_pred else None,
        recall=hits / n_act if n_act else None,
        predicted=n_pred,
        actual=n_act,
        hits=hits,
    )


@dataclass(frozen=True)
class FrameStats:
    """The collapse statistics of a sequence of T frames (grey levels, luma)."""

    std: np.ndarray
    """float [T]: spatial standard deviation."""
    edge: np.ndarray
    """float [T]: mean absolute difference of adjacent pixels."""
    change: np.ndarray
    """float [T]: mean absolute difference from the previous frame (0 for the first)."""


def frame_stats(frames: np.ndarray) -> FrameStats:
    """Collapse statistics of uint8 frames ``[T, H, W, 3]``."""
    y = _as_float(frames) @ _LUMA  # (T, H, W)
    if y.ndim != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {list(np.shape(frames))}")
    edge = 0.5 * (np.abs(np.diff(y, axis=2)).mean(axis=(1, 2)) + np.abs(np.diff(y, axis=1)).mean(axis=(1, 2)))
    change = np.zeros(len(y))
    change[1:] = np.abs(np.diff(y, axis=0)).mean(axis=(1, 2))
    return FrameStats(std=y.std(axis=(1, 2)), edge=edge, change=change)


def motion_ratio(dream: FrameStats, real: FrameStats, keep: np.ndarray | None = None) -> float | None:
    """How much the dream moves against the real frames at the same steps: the mean
    frame-to-frame change of ``dream`` over that of ``real`` (1: as much; 0: a still picture).

    The collapse verdict only counts frames that barely change at all; a dream can also
    settle into a view it keeps shimmering in while the real view moves on, which this
    shows. It counts any change, shimmer included: low means a still picture, high does not
    prove motion (a fixed view redrawn with fresh noise each step reads high). ``keep``
    (bool ``[T]``) selects the steps to count, for example without the real episode's
    resets; None when the real frames do not move there.
    """
    sel = np.ones(len(real.change), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    moved = float(real.change[sel].mean()) if sel.any() else 0.0
    return float(dream.change[sel].mean()) / moved if moved > 0 else None


def horizontal_shift(prev: np.ndarray, nxt: np.ndarray, max_shift: int = 8) -> np.ndarray:
    """How many pixels the picture moved sideways from ``prev`` to ``nxt`` (uint8 ``[..., H, W, 3]``):
    float ``[...]``, positive when it moved right (a turn to the left), to a tenth of a pixel or so.

    The shift is the one that best aligns the two frames' grey values (least mean squared
    difference) over their middle three quarters of rows, with ``max_shift`` columns left
    out at each side, refined between whole pixels by a parabola through the best shift and
    its two neighbours. A picture with nothing to align (the sky, a flat wall) reads 0,
    however far the view turned; so a mean over many steps of one scripted turn compares the
    speeds at which a dream and the real view turn, but a single pair says little.
    """
    a, b = _as_float(prev).mean(-1), _as_float(nxt).mean(-1)
    H, W = a.shape[-2:]
    if W <= 2 * max_shift + 2:
        raise ValueError(f"frames {W} pixels wide are too narrow to measure shifts of up to {max_shift} pixels")
    rows = slice(H // 8, H - H // 8)
    ref = a[..., rows, max_shift : W - max_shift]
    err = np.stack([np.mean((ref - b[..., rows, max_shift + d : W - max_shift + d]) ** 2, axis=(-2, -1))
                    for d in range(-max_shift, max_shift + 1)], -1)  # fmt: skip
    best = err.argmin(-1)
    flat = err.max(-1) - err.min(-1) < 1e-6
    i = np.clip(best, 1, 2 * max_shift - 1)
    lo, mid, hi = (np.take_along_axis(err, (i + k)[..., None], -1)[..., 0] for k in (-1, 0, 1))
    curve = lo - 2 * mid + hi
    edge = (best == 0) | (best == 2 * max_shift)
    frac = np.where((curve > 0) & ~edge, 0.5 * (lo - hi) / np.where(curve > 0, curve, 1), 0.0)
    shift = best - max_shift + np.clip(frac, -0.5, 0.5)  # nxt[x + shift] matches prev[x]
    return np.where(flat, 0.0, shift)


@dataclass(frozen=True)
class Band:
    """The range of ``std`` and ``edge`` that real frames of an env occupy."""

    std: tuple[float, float]
    edge: tuple[float, float]

    @classmethod
    def from_frames(cls, frames: np.ndarray, margin: float = BAND_MARGIN) -> Band:
        """The 1st-99th percentile of real frames ``[T, H, W, 3]``, widened by ``margin``."""
        s = frame_stats(frames)

        def band(v: np.ndarray) -> tuple[float, float]:
            lo, hi = np.percentile(v, [1, 99])
            return float(lo / margin), float(hi * margin)

        return cls(std=band(s.std), edge=band(s.edge))


@dataclass
class CollapseReport:
    """Per-frame statistics and flags of a rollout, and the verdict."""

    stats: FrameStats
    band: Band
    blank: np.ndarray
    """bool [T]: ``std`` below the band (blank or a single colour)."""
    blur: np.ndarray
    """bool [T]: ``edge`` below the band (featureless)."""
    noise: np.ndarray
    """bool [T]: ``edge`` above the band, or ``std`` above it."""
    frozen: np.ndarray
    """bool [T]: unchanged while the real world moved."""
    collapse_step: int | None
    """The first step from which more than half of a window is flagged; None = no collapse."""
    window: int = COLLAPSE_WINDOW
    extra: dict = field(default_factory=dict)

    @property
    def flagged(self) -> np.ndarray:
        return self.blank | self.blur | self.noise | self.frozen

    @property
    def collapsed(self) -> bool:
        return self.collapse_step is not None

    def summary(self) -> dict:
        """JSON-ready counts and the verdict."""
        T = len(self.blank)
        return {
            "frames": T,
            "collapsed": self.collapsed,
            "collapse_step": self.collapse_step,
            "flagged_fraction": float(self.flagged.mean()) if T else 0.0,
            "blank_frames": int(self.blank.sum()),
            "blur_frames": int(self.blur.sum()),
            "noise_frames": int(self.noise.sum()),
            "frozen_frames": int(self.frozen.sum()),
            "band": {"std": list(self.band.std), "edge": list(self.band.edge)},
            "window": self.window,
        }


def detect_collapse(
    dream: np.ndarray, real: np.ndarray | None = None, band: Band | None = None, window: int = COLLAPSE_WINDOW
) -> CollapseReport:
    """Flag collapsed frames of a rollout.

    Args:
        dream: uint8 ``[T, H, W, 3]`` generated frames.
        real: uint8 ``[T, H, W, 3]`` reference frames under the same actions; gives the
            band (when ``band`` is None) and the motion that makes an unchanged dream frame
            frozen. Without it, frozen frames are not detected.
        band: the real-data band; None = from ``real``.
        window: frames in the sliding window of the verdict.
    """
    if band is None:
        if real is None:
            raise ValueError("detect_collapse needs real frames or a band")
        band = Band.from_frames(real)
    s = frame_stats(dream)
    blank = s.std < band.std[0]
    blur = s.edge < band.edge[0]
    noise = (s.edge > band.edge[1]) | (s.std > band.std[1])
    frozen = np.zeros(len(s.std), dtype=bool)
    if real is not None:
        if np.shape(real) != np.shape(dream):
            raise ValueError(f"real and dream differ in shape: {list(np.shape(real))} vs {list(np.shape(dream))}")
        moving = frame_stats(real).change > MOTION_EPS
        frozen = moving & (s.change < FREEZE_EPS)
        frozen[0] = False
    flagged = (blank | blur | noise | frozen).astype(np.int64)
    w = min(window, len(flagged))
    collapse_step = None
    if w:
        counts = np.convolve(flagged, np.ones(w, dtype=np.int64), mode="valid")  # [T - w + 1]
        bad = np.flatnonzero(counts * 2 > w)
        if bad.size:
            collapse_step = int(bad[0])
    return CollapseReport(stats=s, band=band, blank=blank, blur=blur, noise=noise, frozen=frozen,
                          collapse_step=collapse_step, window=w)  # fmt: skip
