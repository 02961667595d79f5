"""A pipeline skips history tokens outside [0, V), as every other family does (walk s12 lib F1):
score() and recommend() of [[V + 10, t]] equal those of [[t]]."""

from __future__ import annotations

import numpy as np
import pytest

from segue.data.arrays import SequenceArrays, SplitData
from segue.data.store import Store
from segue.models.pipeline import PipelineRecommender
from test_plib_s11 import config, repeat_store


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> PipelineRecommender:
    store = repeat_store(tmp_path_factory.mktemp("oov") / "rep.duckdb", n_users=120)
    with Store.open(store) as s:
        return PipelineRecommender(config()).fit(SplitData.load(s, "loo"))


def test_out_of_vocabulary_tokens_are_skipped(model: PipelineRecommender) -> None:
    v = len(model.vocab)
    t = 5
    with_oov = SequenceArrays.from_lists([[v + 10, t]])
    plain = SequenceArrays.from_lists([[t]])
    np.testing.assert_array_equal(model.score(with_oov), model.score(plain))
    ids_a, sc_a = model.recommend(with_oov, 10)
    ids_b, sc_b = model.recommend(plain, 10)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(sc_a, sc_b)
