"""The MaskGIT sampler shared by every backend: what it draws, and in which order it fixes patches."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from worldsim.sampling import MASKED, MaskGitSampler, PassOutput, chunk_sizes

LEVELS = (4, 3)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_draws_follow_the_tempered_softmax_of_each_channel(temperature: float) -> None:
    channel0 = np.array([2.0, 0.0, -1.0, 1.0], dtype=np.float32)
    channel1 = np.array([-3.0, 0.5, 0.0], dtype=np.float32)
    cells = 200_000
    logits = np.broadcast_to(np.concatenate([channel0, channel1]), (1, cells, 1, 7))
    sampler = MaskGitSampler(LEVELS, 1, 1, temperature, np.random.default_rng(0))
    code, conf = sampler._choose(logits, None, None)
    level0, level1 = code[0, :, 0] % 4, code[0, :, 0] // 4
    for levels, x in ((level0, channel0), (level1, channel1)):
        want = _softmax(x / temperature)
        got = np.bincount(levels, minlength=len(x)) / cells
        # Four standard errors of a binomial share: a wrong distribution fails, noise does not.
        assert np.all(np.abs(got - want) < 4 * np.sqrt(want * (1 - want) / cells) + 1e-9), (got, want)
    # The confidence is the untempered log-probability of the chosen levels.
    lp0, lp1 = np.log(_softmax(channel0)), np.log(_softmax(channel1))
    np.testing.assert_allclose(conf[0, :, 0], lp0[level0] + lp1[level1], rtol=1e-5, atol=1e-5)


def test_a_level_of_zero_probability_is_never_drawn() -> None:
    logits = np.zeros((1, 50_000, 1, 7), dtype=np.float32)
    logits[..., 1] = -1e4  # underflows to probability 0 in float32
    logits[..., 4:] = [-1e4, 0.0, -1e4]
    code, _ = MaskGitSampler(LEVELS, 1, 1, 1.0, np.random.default_rng(1))._choose(logits, None, None)
    assert not np.any(code % 4 == 1)
    assert np.all(code // 4 == 1)


class _EdgeDraws:
    """A generator whose every uniform draw is ``value``: the ends of float32's [0, 1)."""

    def __init__(self, value: float) -> None:
        self.value = np.float32(value)

    def random(self, size, dtype=np.float64) -> np.ndarray:
        return np.full(size, self.value, dtype)


@pytest.mark.parametrize("ranked_moves", [False, True])
def test_the_ends_of_the_uniform_draw_never_pick_a_level_of_zero_probability(ranked_moves: bool) -> None:
    """``rng.random(dtype=float32)`` is exactly 0 once in 2^24 draws, and 1 - 2^-24 as often."""
    low = np.zeros((1, 4, 1, 7), dtype=np.float32)
    low[..., [0, 4]] = -1e4  # level 0 of each channel underflows to probability 0
    high = np.zeros((1, 4, 1, 7), dtype=np.float32)
    high[..., [3, 6]] = -1e4  # the top level of each channel does
    prev = np.full((1, 4, 1), 5)  # level 1 in both channels: with ranked moves half the cells leave it
    for logits, draw, (bad0, bad1) in ((low, 0.0, (0, 0)), (high, 1 - 2**-24, (3, 2))):
        sampler = MaskGitSampler(LEVELS, 1, 1, 1.0, _EdgeDraws(draw), ranked_moves=ranked_moves)  # type: ignore[arg-type]
        code, _ = sampler._choose(logits, None, prev if ranked_moves else None)
        assert not np.any(code % 4 == bad0) and not np.any(code // 4 == bad1), (draw, code)


def test_temperature_zero_takes_the_argmax_and_the_first_of_ties() -> None:
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((3, 5, 6, 7)).astype(np.float32)
    logits[0, 0, 0, :4] = [1.0, 3.0, 3.0, 0.0]  # a tie: the first wins
    code, _ = MaskGitSampler(LEVELS, 1, 1, 0.0, rng)._choose(logits, None, None)
    want = logits[..., :4].argmax(-1) + 4 * logits[..., 4:].argmax(-1)
    np.testing.assert_array_equal(code, want)
    assert code[0, 0, 0] % 4 == 1


@pytest.mark.parametrize("temperature", [1e-50, 1e-38, 1e-20])
def test_a_tiny_positive_temperature_draws_the_argmax_not_a_blank_frame(temperature: float) -> None:
    """1e-50 is 0 in float32: dividing the logits by it made the argmax NaN and every cell level 0."""
    logits = np.random.default_rng(3).standard_normal((2, 5, 6, 7)).astype(np.float32) * 30
    want, _ = MaskGitSampler(LEVELS, 1, 1, 0.0, np.random.default_rng(0))._choose(logits, None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or invalid-value warnings either
        code, _ = MaskGitSampler(LEVELS, 1, 1, temperature, np.random.default_rng(0))._choose(logits, None, None)
    np.testing.assert_array_equal(code, want)


def test_the_stay_bonus_goes_to_the_previous_level_in_gated_worlds_only() -> None:
    logits = np.zeros((2, 1, 1, 7), dtype=np.float32)
    logits[..., 0] = 1.0  # level 0 of channel 0 leads without the bonus
    prev = np.full((2, 1, 1), 2 + 4 * 1)  # levels (2, 1)
    stay = np.full((2, 1, 1, 2), 5.0, dtype=np.float32)
    sampler = MaskGitSampler(LEVELS, 1, 1, 0.0, np.random.default_rng(0))
    code, _ = sampler._choose(logits, stay, prev, gated=np.array([True, False]))
    assert code[0, 0, 0] == 2 + 4 * 1  # gated: kept the previous levels
    assert code[1, 0, 0] == 0  # not gated: the plain argmax
    assert np.all(logits[..., 0] == 1.0) and np.all(logits[..., 1:] == 0.0), "the caller's logits were changed"


def test_ungated_worlds_draw_at_their_own_temperature_and_greedy_stays_greedy() -> None:
    channel0 = np.array([2.0, 0.0, -1.0, 1.0], dtype=np.float32)
    cells = 100_000
    logits = np.broadcast_to(np.concatenate([channel0, np.zeros(3, np.float32)]), (2, cells, 1, 7))
    sampler = MaskGitSampler(LEVELS, 1, 1, 0.5, np.random.default_rng(3), ungated_temperature=1.0)
    code, _ = sampler._choose(logits, None, None, gated=np.array([True, False]))
    for world, temperature in ((0, 0.5), (1, 1.0)):  # the guard's world draws from the plain softmax
        want = _softmax(channel0 / temperature)
        got = np.bincount(code[world, :, 0] % 4, minlength=4) / cells
        assert np.all(np.abs(got - want) < 4 * np.sqrt(want * (1 - want) / cells) + 1e-9), (world, got, want)
    greedy = MaskGitSampler(LEVELS, 1, 1, 0.0, np.random.default_rng(3), ungated_temperature=1.0)
    code, _ = greedy._choose(logits, None, None, gated=np.array([True, False]))
    assert np.all(code % 4 == 0)
    with pytest.raises(ValueError, match="ungated_temperature"):
        MaskGitSampler(LEVELS, 1, 1, 0.5, np.random.default_rng(3), ungated_temperature=0.0)


def test_same_seed_same_frame_and_each_pass_fixes_its_chunk_of_patches() -> None:
    h = w = 4

    def predict_from(seed: int):
        rng = np.random.default_rng(seed)
        seen: list[np.ndarray] = []

        def predict(codes: np.ndarray) -> PassOutput:
            seen.append(codes.copy())
            return PassOutput(
                logits=rng.standard_normal((2, h, w, 7)).astype(np.float32),
                reward=np.zeros(2, np.float32),
                done_logit=np.zeros(2, np.float32),
            )

        return predict, seen

    runs = []
    for _ in range(2):
        predict, seen = predict_from(5)
        sample = MaskGitSampler(LEVELS, 2, 3, 0.7, np.random.default_rng(9)).generate(predict, 2, h, w)
        runs.append((sample.codes, seen))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    codes, seen = runs[0]
    assert len(seen) == 3 and np.all(seen[0] == MASKED)
    assert not np.any(codes == MASKED) and np.all((codes >= 0) & (codes < math.prod(LEVELS)))
    # Each pass fixes its chunk of whole 2x2 patches, and a fixed patch never changes again.
    fixed = [int((s[0] != MASKED).sum()) // 4 for s in seen[1:]] + [4]  # patches of world 0
    assert fixed == list(np.cumsum(chunk_sizes(4, 3)))
    for later, earlier in zip(seen[2:], seen[1:]):
        keep = earlier != MASKED
        np.testing.assert_array_equal(later[keep], earlier[keep])


def test_chunk_sizes_cover_every_patch_with_at_least_one_per_pass() -> None:
    for n in (1, 4, 16, 64):
        for k in (1, 2, 4, 8, 100):
            sizes = chunk_sizes(n, k)
            assert sum(sizes) == n and min(sizes) >= 1 and len(sizes) == min(n, k)
    with pytest.raises(ValueError, match="chunks"):
        chunk_sizes(4, 0)



def test_ranked_moves_move_the_most_likely_cells_as_many_as_expected() -> None:
    """A world's cells leave their previous level in order of how likely each is to, and as
    many as the independent draws would move on average; they go where their own
    distribution, without the previous level, sends them."""
    worlds, cells = 400, 16
    rng = np.random.default_rng(6)
    logits = rng.normal(0, 1.5, (worlds, cells, 1, 7)).astype(np.float32)
    prev = rng.integers(0, 12, (worlds, cells, 1))
    sampler = MaskGitSampler(LEVELS, 1, 1, 1.0, np.random.default_rng(7), ranked_moves=True)
    code, _ = sampler._choose(logits, None, prev)
    for lo, hi, radix in ((0, 4, 1), (4, 7, 4)):
        p = _softmax(logits[..., lo:hi])[:, :, 0]  # (worlds, cells, levels)
        was = (prev[..., 0] // radix) % (hi - lo)
        p_move = 1 - np.take_along_axis(p, was[..., None], -1)[..., 0]
        moved = ((code[..., 0] // radix) % (hi - lo)) != was
        expected = p_move.sum(1)
        assert np.all((moved.sum(1) == np.floor(expected)) | (moved.sum(1) == np.ceil(expected)))
        assert abs(moved.sum() - expected.sum()) < 4 * np.sqrt(worlds)  # rounded up as often as it should be
        # Every cell that moved was at least as likely to as every cell that stayed.
        lowest_moved = np.where(moved, p_move, np.inf).min(1)
        highest_kept = np.where(moved, -np.inf, p_move).max(1)
        assert np.all(lowest_moved >= highest_kept - 1e-6)
    # Destinations follow the leaving cell's own odds among the other levels.
    logits = np.broadcast_to(np.array([0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0], np.float32), (4000, 8, 8, 7))
    sampler = MaskGitSampler(LEVELS, 1, 1, 1.0, np.random.default_rng(8), ranked_moves=True)
    code, _ = sampler._choose(logits, None, np.ones((4000, 8, 8), np.int64))  # previous level 1 in channel 0
    gone = code[code % 4 != 1] % 4
    want = _softmax(np.array([0.0, 0.0, -1.0]))  # levels 0, 2 and 3 of channel 0
    np.testing.assert_allclose(np.bincount(gone, minlength=4)[[0, 2, 3]] / len(gone), want, atol=0.01)


def test_ranked_moves_leave_the_freeze_guards_worlds_and_framings_without_a_previous_frame_alone() -> None:
    logits = np.zeros((2, 8, 8, 7), dtype=np.float32)
    logits[..., 0] = 1.0  # channel 0: every cell has the same odds of leaving level 0
    prev = np.zeros((2, 8, 8), dtype=np.int64)
    runs = []
    for seed in range(200):
        sampler = MaskGitSampler(LEVELS, 1, 1, 1.0, np.random.default_rng(seed), ranked_moves=True)
        code, _ = sampler._choose(logits, None, prev, gated=np.array([True, False]))
        runs.append((code % 4 != 0).reshape(2, -1).sum(1))
    moved = np.array(runs)  # (draws, worlds)
    p_move = 1 - _softmax(np.array([1.0, 0.0, 0.0, 0.0]))[0]
    assert set(np.unique(moved[:, 0])) <= {int(np.floor(64 * p_move)), int(np.ceil(64 * p_move))}  # ranked: the count is fixed
    assert moved[:, 1].std() > 2  # the guard's world draws each cell on its own: the count varies
    # Without a previous frame, or greedy, nothing changes.
    for temperature, prev_codes in ((1.0, None), (0.0, prev)):
        plain = MaskGitSampler(LEVELS, 1, 1, temperature, np.random.default_rng(9))._choose(logits, None, prev_codes)
        ranked = MaskGitSampler(LEVELS, 1, 1, temperature, np.random.default_rng(9), ranked_moves=True)._choose(logits, None, prev_codes)
        np.testing.assert_array_equal(plain[0], ranked[0])
