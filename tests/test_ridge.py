"""ridge.stacked_ridge, the batched fold-in solve, against least squares on the augmented system."""

from __future__ import annotations

import numpy as np
import pytest

from segue.models.ridge import stacked_ridge


def _lstsq(f: np.ndarray, e: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    # min |e - F x|^2 + sum_k p_k x_k^2 is least squares on [F; diag(sqrt p)] x = [e; 0]
    a = np.concatenate([f, np.diag(np.sqrt(penalty))])
    return np.linalg.lstsq(a, np.concatenate([e, np.zeros(len(penalty))]), rcond=None)[0]


@pytest.mark.parametrize("m", [1, 5, 12, 13, 40])  # k = 13: m < k takes the m x m form, m >= k the k x k one
def test_stacked_ridge_equals_least_squares_with_padding(m: int) -> None:
    rng = np.random.default_rng(m)
    g, k = 6, 13
    f = rng.normal(size=(g, m, k))
    e = rng.normal(size=(g, m))
    lengths = rng.integers(0, m + 1, g)
    lengths[0] = m
    pad = np.arange(m)[None, :] >= lengths[:, None]
    f[pad] = 0.0
    e[pad] = rng.normal(size=int(pad.sum())) * 100  # a padded entry's target must not matter
    penalty = rng.uniform(0.05, 3.0, k)
    got = stacked_ridge(f, e, penalty)
    assert got.shape == (g, k) and got.dtype == np.float64
    for i in range(g):
        want = _lstsq(f[i, : lengths[i]], e[i, : lengths[i]], penalty)
        np.testing.assert_allclose(got[i], want, rtol=1e-8, atol=1e-10)
    assert np.allclose(got[lengths == 0], 0.0)


def test_stacked_ridge_refuses_a_non_positive_penalty() -> None:
    f, e = np.ones((1, 2, 3)), np.ones((1, 2))
    with pytest.raises(ValueError, match="penalty > 0"):
        stacked_ridge(f, e, np.array([1.0, 0.0, 1.0]))


@pytest.mark.parametrize("m", [7, 13, 30])  # k = 13: the dual form below k, the primal from k on
def test_ridge_all_but_one_equals_each_rows_own_solve(m: int) -> None:
    from segue.models.ridge import ridge_all_but_one

    rng = np.random.default_rng(m)
    k = 13
    f = rng.normal(size=(m, k))
    drop = np.array([-1, *range(m), -1])
    e = rng.normal(size=(len(drop), m))
    penalty = rng.uniform(0.05, 3.0, k)
    got = ridge_all_but_one(f, e, drop, penalty)
    assert got.shape == (len(drop), k)
    for g, j in enumerate(drop):
        keep = np.arange(m) != j
        np.testing.assert_allclose(got[g], _lstsq(f[keep], e[g, keep], penalty), rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="penalty > 0"):
        ridge_all_but_one(f, e, drop, np.zeros(k))
