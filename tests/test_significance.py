"""Bootstrap CIs and paired comparisons: sanity on cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from segue.evaluation.significance import (
    bootstrap_means,
    cis,
    compare_many,
    mean_ci,
    paired_bootstrap,
    resample_counts,
)


def test_resample_counts_are_multinomial_draws() -> None:
    w = resample_counts(50, 200, seed=1)
    assert w.shape == (200, 50) and (w.sum(axis=1) == 50).all()
    assert 0.9 < w.mean() * 1.0 < 1.1 and w.std() > 0.5  # ~Poisson(1) per unit
    np.testing.assert_array_equal(w, resample_counts(50, 200, seed=1))
    assert not np.array_equal(w, resample_counts(50, 200, seed=2))


def test_identical_models_give_p_one_and_ci_around_zero() -> None:
    a = np.random.default_rng(0).random(300)
    c = paired_bootstrap(a, a.copy(), n_boot=500, seed=3)
    assert c.diff == 0 and c.p_value == 1.0
    assert c.low <= 0 <= c.high


def test_noise_only_difference_is_not_significant() -> None:
    rng = np.random.default_rng(1)
    base = rng.random(400)
    a = base + rng.normal(0, 0.05, 400)
    b = base + rng.normal(0, 0.05, 400)
    c = paired_bootstrap(a, b, n_boot=1000, seed=0)
    assert c.p_value > 0.05 and c.low <= 0 <= c.high


def test_clearly_better_model_has_small_p() -> None:
    rng = np.random.default_rng(2)
    b = (rng.random(500) < 0.2).astype(float)  # hit rate 0.2
    a = np.maximum(b, (rng.random(500) < 0.3).astype(float))  # never worse, often better
    c = paired_bootstrap(a, b, n_boot=1000, seed=0)
    assert c.diff > 0.15 and c.p_value < 0.01 and c.low > 0
    # sign flips with the order
    r = paired_bootstrap(b, a, n_boot=1000, seed=0)
    assert r.diff == pytest.approx(-c.diff) and r.high < 0


def test_mean_ci_covers_the_true_mean_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(3)
    inside = 0
    trials = 200
    for t in range(trials):
        x = rng.exponential(1.0, 80)  # true mean 1
        ci = mean_ci(x, n_boot=400, seed=t)
        inside += ci.low <= 1.0 <= ci.high
        assert ci.low <= ci.mean <= ci.high
    assert 0.88 <= inside / trials <= 0.99  # percentile bootstrap is a bit narrow at n = 80


def test_nan_values_are_skipped_and_clusters_resample_whole_groups() -> None:
    x = np.array([1.0, np.nan, 3.0, 5.0])
    reps = bootstrap_means(x[None, :], n_boot=300, seed=0)[0]
    assert np.nanmin(reps) >= 1.0 and np.nanmax(reps) <= 5.0
    # Two clusters, each internally constant: every replicate mean is a mix of 0 and 10 weighted
    # by cluster sizes 3 and 1, so only 0, 10 and 2.5 are possible.
    v = np.array([0.0, 0.0, 0.0, 10.0])
    reps = bootstrap_means(v[None, :], clusters=np.array([7, 7, 7, 9]), n_boot=300, seed=0)[0]
    assert set(np.round(reps, 9)) <= {0.0, 10.0, 2.5}
    assert len(set(np.round(reps, 9))) == 3


def test_many_at_once_match_one_at_a_time() -> None:
    rng = np.random.default_rng(4)
    vals = {m: rng.random(200) + i * 0.1 for i, m in enumerate("abc")}
    many = compare_many(vals, "a", n_boot=300, seed=5)
    assert set(many) == {"b", "c"}
    one = paired_bootstrap(vals["c"], vals["a"], n_boot=300, seed=5)
    assert many["c"].diff == pytest.approx(one.diff)
    assert many["c"].p_value == pytest.approx(one.p_value)
    intervals = cis(vals, n_boot=300, seed=5)
    assert intervals["b"].mean == pytest.approx(vals["b"].mean())
    assert intervals["a"].high < intervals["c"].low  # 0.2 apart with n=200: clearly separated
