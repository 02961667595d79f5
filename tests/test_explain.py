"""Explanations: the reported drops are the model's own score differences when the item is removed."""

from __future__ import annotations

import numpy as np
import pytest

from datahelp import make_store
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.store import Store
from segue.data.vocab import N_SPECIAL
from segue.errors import SegueError
from segue.models.autoencoder import AutoencoderConfig, AutoencoderRecommender
from segue.models.ease import EASE, EASEConfig
from segue.models.explain import leave_one_out, most_impactful, most_surprising


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    rng = np.random.default_rng(3)
    seqs = [[int(x) for x in rng.choice(20, int(rng.integers(4, 9)), replace=False) + 10 * (u % 2)] for u in range(60)]
    ratings = [[float(rng.integers(1, 6)) for _ in s] for s in seqs]
    path = make_store(tmp_path_factory.mktemp("ex") / "s.duckdb", seqs, [{"kind": "strong", "valid_users": 8, "test_users": 8}], rating=ratings)
    with Store.open(path) as store:
        yield SplitData.load(store, "strong")


@pytest.fixture(scope="module")
def models(data: SplitData) -> dict:
    ae = AutoencoderConfig.from_dict(
        {
            "model": {"hidden": [16], "bottleneck": 8},
            "optim": {"lr": 1e-2, "warmup_steps": 0, "schedule": "constant"},
            "trainer": {"max_steps": 30, "eval_every": 30, "metric": "ndcg@100", "progress": False, "loader": {"batch_size": 16}},
        }
    )
    return {"ease": EASE(EASEConfig(l2=5.0)).fit(data), "autoencoder": AutoencoderRecommender(ae).fit(data)}


def _profile() -> SequenceArrays:
    hist = SequenceArrays.from_lists([[N_SPECIAL + 1, N_SPECIAL + 3, N_SPECIAL + 5, N_SPECIAL + 3, N_SPECIAL + 8], [N_SPECIAL + 2]])
    hist.rating = np.array([5, 1, 4, 2, 3, 4], np.float32)
    return hist


def test_leave_one_out_removes_every_occurrence() -> None:
    loo, removed = leave_one_out(_profile(), 0)
    assert removed.tolist() == [N_SPECIAL + t for t in (1, 3, 5, 8)]
    assert [loo.row(i).tolist() for i in range(len(loo))] == [
        [N_SPECIAL + 3, N_SPECIAL + 5, N_SPECIAL + 3, N_SPECIAL + 8],
        [N_SPECIAL + 1, N_SPECIAL + 5, N_SPECIAL + 8],
        [N_SPECIAL + 1, N_SPECIAL + 3, N_SPECIAL + 3, N_SPECIAL + 8],
        [N_SPECIAL + 1, N_SPECIAL + 3, N_SPECIAL + 5, N_SPECIAL + 3],
    ]
    assert loo.rating[:4].tolist() == [1, 4, 2, 3]  # ratings travel with their items


@pytest.mark.parametrize("family", ["ease", "autoencoder"])
def test_removing_the_named_item_lowers_the_score_by_the_reported_amount(models: dict, family: str) -> None:
    model = models[family]
    hist = _profile()
    recs, _ = model.recommend(hist, 4, np.array([0]))
    explained = most_impactful(model, hist, 0, recs[0], top=2)
    assert set(explained) == set(recs[0].tolist())
    checked = 0
    for item, impacts in explained.items():
        for imp in impacts:
            assert imp.drop > 0
            # score the profile without that item, directly, and compare
            lo, hi = hist.offsets[0], hist.offsets[1]
            keep = np.asarray(hist.tokens[lo:hi]) != imp.because
            alone = SequenceArrays.from_lists([np.asarray(hist.tokens[lo:hi])[keep]])
            alone.rating = np.asarray(hist.rating[lo:hi])[keep]
            before = model.score(hist, np.array([0]))[0, item]
            after = model.score(alone)[0, item]
            assert before - after == pytest.approx(imp.drop, rel=1e-4, abs=1e-5)
            checked += 1
        # ordered: the first named item lowers the score most
        assert [i.drop for i in impacts] == sorted((i.drop for i in impacts), reverse=True)
    assert checked > 0


def test_most_surprising_compares_given_and_predicted(models: dict) -> None:
    model = models["autoencoder"]
    hist = _profile()
    got = most_surprising(model, hist, 0, top=4)
    assert len(got) == 4  # four distinct rated items (the repeated one keeps its last rating, 2)
    assert {s.item: s.given for s in got}[N_SPECIAL + 3] == 2.0
    pred = model.predict(hist, np.array([0]), np.array([[s.item for s in got]]))[0]
    np.testing.assert_allclose([s.predicted for s in got], pred, rtol=1e-6)
    diffs = [abs(s.difference) for s in got]
    assert diffs == sorted(diffs, reverse=True)
    with pytest.raises(SegueError, match="predicts no ratings"):
        most_surprising(models["ease"], hist, 0)
