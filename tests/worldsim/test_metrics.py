"""The frame metrics and the collapse detector on known inputs and on real engine frames."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image, ImageFilter

import worldsim  # noqa: F401  (registers the ids)
from worldsim.metrics import (
    PSNR_CAP,
    Band,
    detect_collapse,
    frame_stats,
    horizontal_shift,
    macro_f1,
    motion_ratio,
    precision_recall,
    psnr,
    ssim,
)


@pytest.fixture(scope="module")
def engine_frames() -> np.ndarray:
    """300 BlockWorld frames at 32x32 under held turns and walks (what a rollout shows)."""
    env = gym.make("worldsim/BlockWorld-v0", width=32, height=32)
    obs, _ = env.reset(seed=1_000_123)
    frames = [obs]
    rng = np.random.default_rng(0)
    action = np.zeros(8, dtype=np.int64)
    for t in range(300):
        if t % 15 == 0:  # hold each action for 15 steps, as a player does
            action = np.zeros(8, dtype=np.int64)
            action[rng.choice([0, 3])] = rng.integers(1, 3)
        obs, _, term, trunc, _ = env.step(action)
        frames.append(obs)
        if term or trunc:
            obs, _ = env.reset(seed=1_000_124)
    env.close()
    return np.stack(frames)


def test_psnr_identical_is_capped_and_known_values() -> None:
    a = np.full((2, 8, 8, 3), 100, np.uint8)
    assert np.all(psnr(a, a) == PSNR_CAP)
    b = a.copy()
    b[0] += 10  # MSE 100 everywhere -> 10 log10(255^2 / 100) = 28.13 dB
    assert psnr(a, b)[0] == pytest.approx(28.1308, abs=1e-3)
    assert psnr(a, b)[1] == PSNR_CAP
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, a[:, :4])



def test_frames_on_another_scale_are_refused_not_scored() -> None:
    """Float frames in [0, 1] scored as a picture 255 times darker: frames 27 dB apart read
    60 dB (the cap) and SSIM 1.0. They are refused; integer frames in 0..255 score as uint8."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(np.int64) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    for metric in (psnr, ssim):
        with pytest.raises(ValueError, match=r"must be uint8 \(0\.\.255\), got dtype float64"):
            metric(a / 255.0, b / 255.0)
        with pytest.raises(ValueError, match=r"got int16 values -3\.\.252"):
            metric(a.astype(np.int16) - 3, b)
        np.testing.assert_array_equal(metric(a.tolist(), b.astype(np.int32)), metric(a, b))
    with pytest.raises(ValueError, match="must be uint8"):
        frame_stats(a.astype(np.float32))
    assert psnr(a, b).max() < 30

def test_ssim_identical_is_one_and_orders_degradations(engine_frames: np.ndarray) -> None:
    f = engine_frames[:10]
    assert np.allclose(ssim(f, f), 1.0, atol=1e-9)
    rng = np.random.default_rng(0)
    light = np.clip(f + rng.normal(0, 5, f.shape), 0, 255).astype(np.uint8)
    heavy = np.clip(f + rng.normal(0, 40, f.shape), 0, 255).astype(np.uint8)
    s_light, s_heavy = ssim(f, light), ssim(f, heavy)
    assert np.all(s_light < 1) and np.all(s_heavy < s_light)
    assert ssim(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)) == pytest.approx(1.0)


def _ssim_by_definition(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of one frame pair written out window by window: an 11x11 Gaussian (sigma 1.5)
    at every valid position, K1 = 0.01, K2 = 0.03, per channel, then the mean."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    r = np.arange(11) - 5.0
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    H, W = x.shape[:2]
    vals = []
    for c in range(3):
        for i in range(H - 10):
            for j in range(W - 10):
                px, py = x[i : i + 11, j : j + 11, c], y[i : i + 11, j : j + 11, c]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * px * px).sum() - mx * mx, (w * py * py).sum() - my * my
                cov = (w * px * py).sum() - mx * my
                vals.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_the_windowed_definition(engine_frames: np.ndarray) -> None:
    # The separable filter must give what the 2-D Gaussian window gives, on a real frame
    # against a blurred and a noisy version of it, and on frames of odd sizes.
    rng = np.random.default_rng(1)
    f = engine_frames[40, :17, :23]
    blurred = np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(1)))
    noisy = np.clip(f + rng.normal(0, 20, f.shape), 0, 255).astype(np.uint8)
    for g in (blurred, noisy):
        assert ssim(f, g) == pytest.approx(_ssim_by_definition(f, g), abs=1e-12)
    batch = ssim(np.stack([f, f]), np.stack([blurred, noisy]))
    assert batch.shape == (2,)
    assert batch[0] == pytest.approx(_ssim_by_definition(f, blurred), abs=1e-12)


def test_f1_and_precision_recall() -> None:
    assert macro_f1(np.array([0, 1, 2, 1]), np.array([0, 1, 2, 1]), 3) == 1.0
    # class 0: tp 1 fp 1 fn 0 -> 2/3; class 1: tp 0 fp 0 fn 1 -> 0
    assert macro_f1(np.array([0, 1]), np.array([0, 0]), 2) == pytest.approx(1 / 3)
    pr = precision_recall(np.array([1, 0, 1, 0], bool), np.array([1, 1, 0, 0], bool))
    assert (pr.precision, pr.recall, pr.hits) == (0.5, 0.5, 1)
    # 2 predicted, 3 happened, 1 hit: precision is over the predicted, recall over the happened
    pr = precision_recall(np.array([1, 0, 1, 0, 1], bool), np.array([1, 1, 0, 0, 0], bool))
    assert (pr.precision, pr.recall, pr.predicted, pr.actual) == (0.5, pytest.approx(1 / 3), 2, 3)
    none = precision_recall(np.zeros(3, bool), np.zeros(3, bool))
    assert none.precision is None and none.recall is None


def test_collapse_passes_real_engine_frames(engine_frames: np.ndarray) -> None:
    band = Band.from_frames(engine_frames[:150])
    # unseen real frames of the same env, judged against the band of others
    report = detect_collapse(engine_frames[150:], engine_frames[150:], band=band)
    assert not report.collapsed, report.summary()
    assert report.summary()["flagged_fraction"] < 0.1


@pytest.mark.parametrize("kind", ["blank", "constant", "noise", "frozen", "blurred"])
def test_collapse_flags_failures(engine_frames: np.ndarray, kind: str) -> None:
    real = engine_frames[150:]
    band = Band.from_frames(engine_frames[:150])
    T = len(real)
    rng = np.random.default_rng(0)
    if kind == "blank":
        dream = np.zeros_like(real)
    elif kind == "constant":
        dream = np.broadcast_to(np.array([90, 140, 200], np.uint8), real.shape).copy()
    elif kind == "noise":
        dream = rng.integers(0, 256, real.shape, dtype=np.uint8)
    elif kind == "frozen":
        dream = np.repeat(real[:1], T, axis=0)
    else:  # a heavy Gaussian blur: the detail of the world is gone
        dream = np.stack([np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(6))) for f in real])
    report = detect_collapse(dream, real, band=band)
    assert report.collapsed, (kind, report.summary())
    assert report.collapse_step == 0
    # the failure that was planted is the one named
    field = {"blank": "blank", "constant": "blank", "noise": "noise", "frozen": "frozen", "blurred": "blur"}[kind]
    assert getattr(report, field).mean() > 0.5


def test_motion_ratio_tells_a_dream_that_shimmers_in_place_from_one_that_moves(engine_frames: np.ndarray) -> None:
    real = engine_frames[150:]
    rs = frame_stats(real)
    assert motion_ratio(rs, rs) == pytest.approx(1.0)
    # a picture that stays put but shimmers by one level: the collapse verdict passes it, the ratio does not
    rng = np.random.default_rng(0)
    shimmer = np.clip(real[:1].astype(np.int16) + rng.integers(-1, 2, real.shape), 0, 255).astype(np.uint8)
    assert not detect_collapse(shimmer, real, band=Band.from_frames(engine_frames[:150])).collapsed
    assert motion_ratio(frame_stats(shimmer), rs) < 0.25
    # only the selected steps count: a dream true to the real frames for the first half and
    # stuttering (each frame shown twice) in the second reads 1 over the first half alone
    h = len(real) // 2
    first_half = np.arange(len(real)) < h
    stutter = frame_stats(np.concatenate([real[:h], real[h::2].repeat(2, axis=0)])[: len(real)])
    assert motion_ratio(stutter, rs, first_half) == pytest.approx(1.0)
    assert motion_ratio(stutter, rs) < 0.95
    # a real view that never moves gives no ratio
    still = frame_stats(np.repeat(real[:1], len(real), axis=0))
    assert motion_ratio(rs, still) is None


def test_collapse_found_when_it_starts_late(engine_frames: np.ndarray) -> None:
    real = engine_frames[150:]
    dream = real.copy()
    dream[100:] = 0
    report = detect_collapse(dream, real, band=Band.from_frames(engine_frames[:150]))
    assert report.collapsed and 80 < report.collapse_step <= 100


def test_horizontal_shift_reads_how_far_a_picture_slid_sideways() -> None:
    rng = np.random.default_rng(0)
    wide = (rng.random((64, 200, 3)) * 255).astype(np.uint8)
    prev = wide[:, 50:114]
    # content that moved d pixels to the right reads +d, to the left -d, in a batch
    nxt = np.stack([wide[:, 50 - d : 114 - d] for d in (0, 1, 3, -2)])
    np.testing.assert_allclose(horizontal_shift(np.broadcast_to(prev, nxt.shape), nxt), [0, 1, 3, -2], atol=0.05)
    # between whole pixels, on a smooth picture, to within a tenth of a pixel
    x = np.arange(64.0)
    def smooth(d: float) -> np.ndarray:
        row = 127 + 100 * np.sin((x + 100 - d) / 20 * np.pi)
        return np.repeat(np.broadcast_to(row, (64, 64))[..., None], 3, -1).round().astype(np.uint8)
    for d in (0.5, 1.3, 2.7):
        assert horizontal_shift(smooth(0), smooth(d)) == pytest.approx(d, abs=0.1)
    # nothing to align (the sky) reads 0, whatever the view did
    sky = np.full((64, 64, 3), 120, np.uint8)
    assert horizontal_shift(sky, sky) == 0
    with pytest.raises(ValueError, match="too narrow"):
        horizontal_shift(prev[:, :16], prev[:, :16])


def test_horizontal_shift_tells_blockworld_turns_apart() -> None:
    """Turning left slides the real picture right, turning right slides it left; a still view stays."""
    env = gym.make("worldsim/BlockWorld-v0", width=64, height=64)
    means = {}
    for yaw in (0, 1, 2):
        pairs = []
        for seed in (1_000_322, 1_000_323):  # worlds with something in view most of the way round
            obs, _ = env.reset(seed=seed)
            frames = [obs]
            for _ in range(24):
                obs, *_ = env.step(np.array([0, 0, 0, yaw, 0, 0, 0, 0]))
                frames.append(obs)
            f = np.stack(frames)
            pairs.append(horizontal_shift(f[:-1], f[1:]))
        means[yaw] = float(np.mean(pairs))
    env.close()
    assert abs(means[0]) < 0.2
    assert means[1] > 2.0 and means[2] < -2.0  # 5 degrees a step is about 4 pixels at 64x64


def test_collapse_needs_more_than_half_of_a_window_flagged(engine_frames: np.ndarray) -> None:
    """Real frames with a run of blank ones: 10 of a 20-frame window is not a collapse, 11 is,
    and the verdict names the first window that holds all 11."""
    band = Band(std=(1.0, 1e9), edge=(0.1, 1e9))  # flags blank frames and nothing real
    real = engine_frames[:100]
    assert not detect_collapse(real, band=band, window=20).flagged.any()
    for blank, step in ((10, None), (11, 31)):
        dream = real.copy()
        dream[40 : 40 + blank] = 0
        report = detect_collapse(dream, band=band, window=20)
        assert report.blank.sum() == blank and report.collapse_step == step
