"""recommend()/top_k as a library: one tie rule, -1 for empty slots, k and token checks."""

from __future__ import annotations

import numpy as np
import pytest

from segue.data.arrays import SequenceArrays
from segue.data.vocab import N_SPECIAL
from segue.errors import InputError
from segue.evaluation.evaluator import top_k_rows
from segue.evaluation.metrics import per_user_metrics
from segue.models.base import select_top, top_k

V = N_SPECIAL + 12


def tied_scores(b: int = 2) -> np.ndarray:
    """Scores with many ties (popularity-like counts)."""
    rng = np.random.default_rng(3)
    s = rng.integers(0, 3, size=(b, V)).astype(np.float32)
    s[:, :N_SPECIAL] = -np.inf
    return s


def by_token(row: np.ndarray) -> np.ndarray:
    """Reference order: descending score, equal scores by ascending token, -1 for -inf."""
    order = np.lexsort((np.arange(len(row)), -row))
    return np.where(np.isneginf(row[order]), -1, order)


def test_top_k_ties_by_token_and_prefix_of_longer() -> None:
    s = tied_scores()
    full, _ = top_k(s.copy(), V)
    for k in range(1, V + 1):
        tokens, _ = top_k(s.copy(), k)
        assert np.array_equal(tokens, full[:, :k]), k
        for b in range(len(s)):
            assert np.array_equal(tokens[b], by_token(s[b])[:k])


def test_evaluator_metric_at_k_does_not_depend_on_other_ks() -> None:
    # Many equal scores at the cut: the top 3 alone must be the first 3 of the top 10.
    s = np.zeros((1, 1000), np.float32)
    s[0, :N_SPECIAL] = -np.inf
    s[0, 500] = 1.0
    three, _ = top_k_rows(s.copy(), 3)
    ten, _ = top_k_rows(s.copy(), 10)
    assert three.tolist() == [[500, 4, 5]]
    assert np.array_equal(three, ten[:, :3])
    for k in (1, 7, 50):
        assert np.array_equal(select_top(s[0], k), by_token(s[0])[:k])


def test_empty_slots_are_minus_one_never_masked_tokens() -> None:
    s = np.arange(V, dtype=np.float32)[None, :].copy()
    h = SequenceArrays.from_lists([[V - 1, V - 2, V - 3]])
    tokens, vals = top_k(s.copy(), V - N_SPECIAL, h)
    n_left = V - N_SPECIAL - 3
    assert tokens[0, :n_left].tolist() == list(range(V - 4, N_SPECIAL - 1, -1))
    assert (tokens[0, n_left:] == -1).all() and np.isneginf(vals[0, n_left:]).all()
    # allow=[] leaves no candidate at all
    tokens, _ = top_k(s.copy(), 3, allow=np.array([], dtype=np.int64))
    assert (tokens == -1).all()
    # fed to the metrics, a seen item can no longer count as a hit
    tokens, _ = top_k(s.copy(), V, h)
    m = per_user_metrics(tokens, np.array([0, 1]), np.array([V - 1]), (V,), np.zeros(V))
    assert m[f"hr@{V}"][0] == 0.0


def test_k_larger_than_catalogue_pads_to_k() -> None:
    tokens, vals = top_k(tied_scores(), V + 5)
    assert tokens.shape == vals.shape == (2, V + 5)
    assert (tokens[:, V - N_SPECIAL :] == -1).all()


@pytest.mark.parametrize("k", [0, -1, 2.0, True, "3"])
def test_bad_k_is_an_input_error(k: object) -> None:
    with pytest.raises(InputError, match="'k'"):
        top_k(tied_scores(), k)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["allow", "deny"])
@pytest.mark.parametrize("token", [-1, V, V + 5])
def test_out_of_range_allow_deny_token_is_named(name: str, token: int) -> None:
    with pytest.raises(InputError, match=rf"'{name}'.*token {token} .*\[0, {V}\)"):
        top_k(tied_scores(), 3, **{name: np.array([N_SPECIAL, token])})


def test_history_tokens_outside_vocabulary_are_skipped_not_wrapped() -> None:
    s = np.arange(V, dtype=np.float32)[None, :].copy()
    h = SequenceArrays.from_lists([[-1, V + 5]])
    tokens, _ = top_k(s, 2, h)
    assert tokens.tolist() == [[V - 1, V - 2]]  # the last item is not masked by token -1


def test_nan_score_is_no_candidate() -> None:
    s = np.arange(V, dtype=np.float32)[None, :].copy()
    s[0, V - 1] = np.nan
    tokens, _ = top_k(s, 2)
    assert tokens.tolist() == [[V - 2, V - 3]]
