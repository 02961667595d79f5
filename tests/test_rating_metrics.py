"""Rating metrics: hand-computed RMSE, MAE and pair accuracy; held-out pairs; CIs over users."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datahelp import make_store
from evalhelp import FnModel
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.store import Store
from segue.errors import ConfigError, SegueError
from segue.evaluation.ratings import (
    build_pairs,
    evaluate_errors,
    evaluate_pairs,
    mae,
    pair_accuracy,
    pair_correct,
    pair_scores,
    per_user_pair_accuracy,
    rated_targets,
    rmse,
)
from segue.evaluation.significance import mean_ci
from segue.models.popularity import Popularity

# Users' events in time order; the last four of users 0-2 fall after the test cut (ts >= 100).
SEQS = [
    [0, 1, 2, 3, 4, 5, 6],
    [1, 2, 3, 4, 5, 6, 7],
    [0, 2, 4, 6, 8, 1, 3],
    [5, 6, 7],
]
RATINGS = [
    [4.0, 2.0, 3.0, 5.0, 3.0, 3.0, 1.0],  # test: items 3, 4, 5, 6 rated 5, 3, 3, 1
    [1.0, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0],  # test: all 4 -> no pair
    [3.0, 3.0, 3.0, 2.0, 5.0, 1.0, 4.0],  # test: items 6, 8 (never in training), 1, 3 rated 2, 5, 1, 4
    [2.0, 3.0, 4.0],
]
TS = [[0, 10, 20, 100, 110, 120, 130]] * 3 + [[0, 10, 20]]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SplitData:
    path = make_store(
        tmp_path_factory.mktemp("ratings") / "s.duckdb",
        SEQS,
        [{"kind": "temporal", "valid_cut": 50, "test_cut": 100}],
        rating=RATINGS,
        ts=TS,
    )
    store = Store.open(path)
    yield SplitData.load(store, "temporal")
    store.close()


def test_rmse_and_mae_by_hand() -> None:
    pred, true = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 5.0])
    assert rmse(pred, true) == pytest.approx(np.sqrt(5 / 3))  # (1 + 0 + 4) / 3
    assert mae(pred, true) == pytest.approx(1.0)  # (1 + 0 + 2) / 3
    assert np.isnan(rmse(np.zeros(0), np.zeros(0)))


def test_pair_accuracy_by_hand() -> None:
    sa, sb = np.array([3.0, 1.0, 2.0, 2.0, -np.inf]), np.array([1.0, 2.0, 2.0, 0.0, -np.inf])
    np.testing.assert_array_equal(pair_correct(sa, sb), [1.0, 0.0, 0.5, 1.0, 0.5])
    assert pair_accuracy(sa, sb) == pytest.approx(3.0 / 5)
    w = np.array([1.0, 2.0, 1.0, 4.0, 2.0])
    assert pair_accuracy(sa, sb, w) == pytest.approx((1 + 0 + 0.5 + 4 + 1) / 10)
    users = np.array([0, 0, 2, 2, 2])
    np.testing.assert_allclose(per_user_pair_accuracy(pair_correct(sa, sb), users, 3), [0.5, np.nan, 2 / 3])
    np.testing.assert_allclose(per_user_pair_accuracy(pair_correct(sa, sb), users, 3, w), [1 / 3, np.nan, 5.5 / 7])


def truth(data: SplitData) -> dict[tuple[int, int], float]:
    """(row, token) -> held-out rating, read from the test part."""
    t = rated_targets(data, "test")
    return {(int(r), int(k)): float(v) for r, k, v in zip(t.rows, t.tokens, t.ratings, strict=True)}


def test_build_pairs(data: SplitData) -> None:
    pairs = build_pairs(data, "test")
    rated = truth(data)
    by_user = {int(u): sorted(zip(pairs.rating_a[pairs.rows == u], pairs.rating_b[pairs.rows == u], strict=True)) for u in np.unique(pairs.rows)}
    assert by_user == {
        0: [(3.0, 1.0), (3.0, 1.0), (5.0, 1.0), (5.0, 3.0), (5.0, 3.0)],
        2: [(2.0, 1.0), (4.0, 1.0), (4.0, 2.0)],
    }  # user 1 rated all test items 4: no pair; user 3 has no test event; item 8 (user 2's 5)
    # is outside the training vocabulary, so no model can order it: left out
    assert any("1 held-out ratings of items outside the vocabulary" in n for n in pairs.notes)
    for u, a, b, ra, rb in zip(pairs.rows, pairs.tokens_a, pairs.tokens_b, pairs.rating_a, pairs.rating_b, strict=True):
        assert rated[(u, a)] == ra > rb == rated[(u, b)]
    # the history is the test part's input: the user's events before the cut
    np.testing.assert_array_equal(pairs.histories.lengths[:3], [3, 3, 3])
    np.testing.assert_array_equal(pairs.gap, pairs.rating_a - pairs.rating_b)


def test_build_pairs_cap_is_a_seeded_subset(data: SplitData) -> None:
    full = build_pairs(data, "test")
    key = {(int(u), int(a), int(b)) for u, a, b in zip(full.rows, full.tokens_a, full.tokens_b, strict=True)}
    capped = build_pairs(data, "test", max_pairs_per_user=2, seed=5)
    assert np.bincount(capped.rows).tolist() == [2, 0, 2]
    assert {(int(u), int(a), int(b)) for u, a, b in zip(capped.rows, capped.tokens_a, capped.tokens_b, strict=True)} <= key
    again = build_pairs(data, "test", max_pairs_per_user=2, seed=5)
    np.testing.assert_array_equal(again.tokens_a, capped.tokens_a)
    assert any("seeded sample" in n for n in capped.notes)
    # users with a shorter history are left out: all three have 3 events before the cut
    assert len(build_pairs(data, "test", min_history=3)) == len(full)
    short = build_pairs(data, "test", min_history=4)
    assert len(short) == 0 and any("3 users with fewer than 4" in n for n in short.notes)
    with pytest.raises(ConfigError, match="max_pairs_per_user"):
        build_pairs(data, "test", max_pairs_per_user=0)
    with pytest.raises(ConfigError, match="not train"):
        build_pairs(data, "train")


def rating_fn(data: SplitData, sign: float) -> FnModel:
    """Scores every held-out item by sign * its true rating (an oracle, or its reverse)."""
    rated = truth(data)

    def fn(h: SequenceArrays, rows: np.ndarray) -> np.ndarray:
        s = np.zeros((len(rows), len(data.vocab)), np.float32)
        for (r, k), v in rated.items():
            s[rows == r, k] = sign * v
        return s

    return FnModel(data.vocab, fn)


class MeanPredictor:
    """A RatingPredictor (not a Recommender): predicts the history's mean rating, 3 when empty."""

    def predict(self, histories: SequenceArrays, rows: np.ndarray, tokens: np.ndarray, ratings: np.ndarray | None = None) -> np.ndarray:
        means = np.array([np.mean(histories.rating[histories.offsets[r] : histories.offsets[r + 1]]) if histories.lengths[r] else 3.0 for r in rows])
        return means.astype(np.float32)


def test_evaluate_pairs_oracle_reverse_constant(data: SplitData) -> None:
    pairs = build_pairs(data, "test")
    models = {"oracle": rating_fn(data, 1.0), "reverse": rating_fn(data, -1.0), "popularity": Popularity().fit(data), "mean": MeanPredictor()}
    rep = evaluate_pairs(models, pairs, n_boot=200)
    assert rep.n_pairs == 8 and rep.users.tolist() == [0, 2]
    assert rep.intervals["oracle"].mean == 1.0 and rep.intervals["reverse"].mean == 0.0
    assert rep.intervals["mean"].mean == 0.5  # one value per user: every pair ties
    assert rep.comparisons["reverse"].diff == -1.0 and rep.reference == "oracle"
    # popularity counts the training events of each token: the same order for both users
    pop = Popularity().fit(data)
    sa, sb = pair_scores(pop, pairs)
    acc = [pair_accuracy(sa[pairs.rows == u], sb[pairs.rows == u]) for u in (0, 2)]
    assert rep.intervals["popularity"].mean == pytest.approx(np.mean(acc))
    assert rep.pooled["popularity"] == pytest.approx(pair_accuracy(sa, sb))
    iv = rep.intervals["popularity"]
    assert iv.low <= iv.mean <= iv.high
    ci = mean_ci(rep.per_user["popularity"], n_boot=200)
    assert (ci.low, ci.high) == pytest.approx((iv.low, iv.high))
    weighted = evaluate_pairs({"pop": pop}, pairs, weighted=True, n_boot=50)
    acc_w = [pair_accuracy(sa[pairs.rows == u], sb[pairs.rows == u], pairs.gap[pairs.rows == u]) for u in (0, 2)]
    assert weighted.intervals["pop"].mean == pytest.approx(np.mean(acc_w))


def test_scoring_paths(data: SplitData) -> None:
    pairs = build_pairs(data, "test")
    with pytest.raises(SegueError, match="not a RatingPredictor"):
        pair_scores(Popularity().fit(data), pairs, via="predict")
    with pytest.raises(SegueError, match="not a Recommender"):
        pair_scores(MeanPredictor(), pairs, via="score")
    with pytest.raises(ConfigError, match="reference 'x'"):
        evaluate_pairs({"m": MeanPredictor()}, pairs, reference="x")


def test_evaluate_errors_by_hand(data: SplitData) -> None:
    t = rated_targets(data, "test")
    rep = evaluate_errors({"mean": MeanPredictor()}, t, n_boot=300)
    hist = t.histories
    means = {r: float(np.mean(hist.rating[hist.offsets[r] : hist.offsets[r + 1]])) for r in range(3)}
    pred = np.array([means[int(r)] for r in t.rows])
    assert rep.n_ratings == 12
    assert rep.rmse["mean"].mean == pytest.approx(np.sqrt(np.mean((pred - t.ratings) ** 2)))
    assert rep.mae["mean"].mean == pytest.approx(np.mean(np.abs(pred - t.ratings)))
    for iv in (rep.rmse["mean"], rep.mae["mean"]):
        assert iv.low <= iv.mean <= iv.high and iv.low < iv.high


def test_evaluate_errors_paired_difference(data: SplitData) -> None:
    t = rated_targets(data, "test")

    class Const:
        def __init__(self, v: float) -> None:
            self.v = v

        def predict(self, histories: SequenceArrays, rows: np.ndarray, tokens: np.ndarray, ratings: np.ndarray | None = None) -> np.ndarray:
            return np.full(len(rows), self.v, np.float32)

    rep = evaluate_errors({"three": Const(3.0), "same": Const(3.0), "one": Const(1.0)}, t, n_boot=200)
    with pytest.raises(SegueError, match="returned NaN for 12 held-out ratings"):
        evaluate_errors({"nan": Const(np.nan)}, t)
    assert rep.rmse_diff["same"].diff == 0.0 and rep.rmse_diff["same"].p_value == 1.0
    d = rep.rmse_diff["one"]
    assert d.diff == pytest.approx(rmse(np.ones(12), t.ratings) - rmse(np.full(12, 3.0), t.ratings))
    assert d.low <= d.diff <= d.high and d.diff > 0


def test_no_pairs_or_no_ratings(tmp_path: Path, data: SplitData) -> None:
    one = build_pairs(data, "test")
    empty = type(one)(one.histories, *(np.zeros(0, np.int64),) * 5)
    with pytest.raises(SegueError, match="no held-out pair"):
        evaluate_pairs({"m": MeanPredictor()}, empty)
    path = make_store(tmp_path / "implicit.duckdb", [[1, 2, 3, 4]] * 4, [{"kind": "random_holdout", "test_fraction": 0.5}])
    with Store.open(path) as s, pytest.raises(SegueError, match="test part has no ratings"):
        rated_targets(SplitData.load(s, "holdout"), "test")


def test_segue_evaluate_reports_pair_accuracy_and_rating_error(data: SplitData, tmp_path: Path) -> None:
    """evaluate() adds PairAccuracy (score() for all, predict() for rating predictors) and RMSE to
    the report; both agree with a direct computation on the same pairs."""
    from segue.evaluation.evaluator import evaluate
    from segue.evaluation.ratings import feedback_report
    from segue.evaluation.report import compute_stats, render_markdown, results_json
    from segue.models.biasedmf import BiasedMF

    pop = Popularity().fit(data)
    bmf = BiasedMF().fit(data)
    models = {"popularity": pop, "biasedmf": bmf}
    res = evaluate(models, data.store, "temporal", "temporal", ks=[1, 5], n_boot=100)
    fb = res.feedback
    pairs = build_pairs(data, "test", min_history=1)
    assert set(fb.pairs.per_user) == {"popularity", "biasedmf", "biasedmf (predicted rating)"}
    users = np.unique(pairs.rows)
    np.testing.assert_array_equal(fb.pairs.users, users)
    for name, model, via in (("popularity", pop, "score"), ("biasedmf (predicted rating)", bmf, "predict")):
        sa, sb = pair_scores(model, pairs, via=via)
        direct = [pair_accuracy(sa[pairs.rows == u], sb[pairs.rows == u]) for u in users]
        np.testing.assert_allclose(fb.pairs.per_user[name], direct)
    best = max(fb.pairs.per_user, key=lambda n: fb.pairs.per_user[n].mean())
    assert fb.pairs.reference == best and best not in fb.pairs.comparisons
    # rating error: biasedmf only (popularity predicts no ratings), over every held-out rating
    t = rated_targets(data, "test")
    assert set(fb.errors.rmse) == {"biasedmf"} and fb.errors.n_ratings == len(t.rows)
    assert fb.errors.rmse["biasedmf"].mean == pytest.approx(rmse(bmf.predict(t.histories, t.rows, t.tokens), t.ratings), rel=1e-6)
    stats = compute_stats(res, n_boot=100)
    md = render_markdown(res, stats)
    assert "PairAccuracy (mean over 2 users" in md and "biasedmf (predicted rating)" in md and "Rating error on" in md
    js = results_json(res, stats)
    assert js["feedback"]["pair_accuracy"]["n_pairs"] == len(pairs)
    # a part without ratings: no feedback report
    unrated = make_store(tmp_path / "u.duckdb", SEQS, [{"kind": "temporal", "valid_cut": 50, "test_cut": 100}], ts=TS)
    with Store.open(unrated) as st:
        assert feedback_report({"popularity": pop}, SplitData.load(st, "temporal")) is None
