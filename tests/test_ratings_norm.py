"""Hybrid rating normalisation: the cases Sprout describes, the exact inverse, bad ratings."""

from __future__ import annotations

import numpy as np
import pytest

from segue.data.ratings import RatingScale, check_ratings, denormalise, normalise, user_norm
from segue.errors import InputError

SCALE = RatingScale(1, 10)


def _one(ratings: list[float], **kw: object) -> np.ndarray:
    h, _ = normalise(np.array([0, len(ratings)]), np.array(ratings, dtype=np.float32), SCALE, **kw)
    return h.astype(np.float64)


def test_low_variance_user_keeps_a_positive_signal() -> None:
    # someone who rates everything 7-8: var 0.25, w = 0.25 / 1.25 = 0.2
    r = [7, 8, 7, 8]
    h = _one(r, tau=1.0)
    a = (np.array(r) - 5.5) / 4.5
    z = (np.array(r) - 7.5) / 0.5
    np.testing.assert_allclose(h, 0.2 * z + 0.8 * a, rtol=1e-6)
    assert h[1] > 0 and h[0] > -0.2  # a 7 stays close to neutral-positive, not a strong dislike
    z_only = _one(r, mode="zscore")
    assert z_only[0] == pytest.approx(-1.0)  # what a z-score alone would make of the 7s


def test_high_variance_user_gets_a_scale_and_shift() -> None:
    r = [2, 9, 5, 10, 1, 7]
    h = _one(r, tau=1.0)
    mean, var = np.mean(r), np.var(r)
    w = var / (var + 1.0)
    assert w > 0.9
    np.testing.assert_allclose(h, w * (np.array(r) - mean) / np.sqrt(var) + (1 - w) * (np.array(r) - 5.5) / 4.5, rtol=1e-6)
    # mostly the z-score: centred near 0 with spread near 1
    assert abs(h.mean()) < 0.05 and 0.9 < h.std() < 1.1


def test_all_one_or_ten_user_maps_to_the_ends() -> None:
    r = [1, 10, 10, 1]
    h = _one(r, tau=1.0)
    # mean 5.5 = the scale's middle, sd 4.5 = the half-range: z and absolute agree, +-1
    np.testing.assert_allclose(h, [-1, 1, 1, -1], atol=1e-6)
    h3 = _one([10, 10, 10, 1])  # mostly 10s: the 10s are positive, the 1 strongly negative
    assert (h3[:3] > 0).all() and h3[3] < -1


def test_constant_user_uses_the_absolute_scale_in_every_mode() -> None:
    for mode in ("hybrid", "zscore", "raw"):
        np.testing.assert_allclose(_one([8, 8, 8], mode=mode), [(8 - 5.5) / 4.5] * 3, rtol=1e-6)


def test_inverse_returns_the_original_ratings() -> None:
    rng = np.random.default_rng(0)
    lengths = [3, 1, 5, 7, 2]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    r = rng.integers(1, 11, offsets[-1]).astype(np.float32)
    r[4] = np.nan  # unrated entries stay NaN and do not enter the statistics
    for mode in ("hybrid", "zscore", "raw"):
        h, norm = normalise(offsets, r, SCALE, mode=mode, tau=2.0)
        assert np.isnan(h[4])
        row = np.repeat(np.arange(len(lengths)), lengths)
        back = np.array([denormalise(h[i : i + 1], norm, SCALE, row[i : i + 1])[0] for i in range(len(r))])
        ok = ~np.isnan(r)
        np.testing.assert_allclose(back[ok], r[ok], atol=1e-4)
    stats = user_norm(offsets, r, SCALE)
    assert stats.mean[1] == pytest.approx(r[3])


def test_denormalise_clips_to_the_scale() -> None:
    _, norm = normalise(np.array([0, 2]), np.array([3, 9], np.float32), SCALE)
    assert denormalise(np.array([[50.0, -50.0]]), norm, SCALE)[0].tolist() == [10.0, 1.0]


def test_rating_outside_the_scale_names_the_item_and_the_scale() -> None:
    with pytest.raises(InputError, match=r"rating 11 of item 42 is outside the rating scale \[1, 10\]"):
        check_ratings(np.array([5, 11, np.nan]), SCALE, np.array([7, 42, 3]))
    check_ratings(np.array([1, 10, np.nan]), SCALE)  # the ends and unrated entries are fine
