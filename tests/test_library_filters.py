"""niche_boost as a library call: b finite and >= 0, float32 out, errors in the caller's terms."""

from __future__ import annotations

import numpy as np
import pytest

from segue.data.vocab import N_SPECIAL
from segue.errors import InputError
from segue.models.filters import niche_boost, niche_boost_tokens

SCORES = np.array([[1.0, 2.0, -np.inf, 0.5]], np.float32)
COUNTS = np.array([0, 10, 3, 1])


@pytest.mark.parametrize("b", [np.nan, np.inf, -1.0, "1", None, True])
def test_boost_must_be_finite_and_not_negative(b: object) -> None:
    with pytest.raises(InputError, match="'niche_boost'.*finite number >= 0"):
        niche_boost(SCORES, COUNTS, b)  # type: ignore[arg-type]


def test_boost_returns_float32_for_every_b() -> None:
    for b in (0, 0.0, 0.7):
        out = niche_boost(SCORES.astype(np.float64), COUNTS, b)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, SCORES - b * np.log1p(COUNTS), rtol=1e-6)


def test_negative_counts_are_refused() -> None:
    with pytest.raises(InputError, match="'counts'"):
        niche_boost(SCORES, np.array([-2, 0, 0, 0]), 1.0)


def test_token_counts_mismatch_names_token_counts() -> None:
    st = np.zeros((1, N_SPECIAL + 2), np.float32)
    with pytest.raises(InputError, match=rf"token_counts has shape \({N_SPECIAL + 1},\) but the scores {N_SPECIAL + 2} tokens"):
        niche_boost_tokens(st, np.zeros(N_SPECIAL + 1), 1.0)
