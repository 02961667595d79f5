"""An empty history with niche_boost b = 1 is flattened exactly (walk s12 profile F4): every
score 0 and the order the tie rule's (ascending token), not float32 rounding residue."""

from __future__ import annotations

import numpy as np
import pytest

from segue.serving.engine import Engine
from test_serving_profiles import fit_popularity, rated_store


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    root = tmp_path_factory.mktemp("flat")
    return Engine.load(fit_popularity(rated_store(root / "s.duckdb"), root / "pop"))


def test_b_one_flattens_the_empty_history_exactly(engine: Engine) -> None:
    (r,) = engine.rank([np.zeros(0, np.int64)], 20, niche_boost=1.0)
    assert r.fallback
    assert (r.scores == 0).all()
    assert (np.diff(r.tokens) > 0).all()  # ties by ascending token


def test_b_zero_and_a_half_keep_their_scores(engine: Engine) -> None:
    (r0,) = engine.rank([np.zeros(0, np.int64)], 10)
    np.testing.assert_array_equal(r0.scores, engine.popularity[r0.tokens])
    (r,) = engine.rank([np.zeros(0, np.int64)], 10, niche_boost=0.5)
    np.testing.assert_allclose(r.scores, 0.5 * np.log1p(engine.counts[r.tokens]), rtol=1e-6)
