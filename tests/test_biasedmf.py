"""biasedmf: planted-matrix recovery, fold-in, save/load, and ranking through the evaluator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datahelp import make_store
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.splits import Part
from segue.data.store import Store
from segue.data.vocab import N_SPECIAL, UNK
from segue.errors import InputError, SegueError
from segue.evaluation.cli import resolve_models
from segue.evaluation.evaluator import evaluate
from segue.models.base import Recommender, families, load_model
from segue.models.biasedmf import BiasedMF, BiasedMFConfig, ridge_by_group
from segue.models.rating import RatingPredictor

N_USERS, N_ITEMS, RANK = 60, 40, 3


def planted(seed: int = 0) -> tuple[list[list[int]], list[list[float]]]:
    """Each user rates ~70% of the items; r = 3 + b_u + b_i + p_u . q_i exactly (rank 3)."""
    rng = np.random.default_rng(seed)
    bu, bi = rng.normal(0, 0.3, N_USERS), rng.normal(0, 0.5, N_ITEMS)
    p, q = rng.normal(0, 0.6, (N_USERS, RANK)), rng.normal(0, 0.6, (N_ITEMS, RANK))
    seqs, ratings = [], []
    for u in range(N_USERS):
        items = rng.permutation(N_ITEMS)[: int(0.7 * N_ITEMS)]
        seqs.append(items.tolist())
        ratings.append([float(3 + bu[u] + bi[i] + p[u] @ q[i]) for i in items])
    return seqs, ratings


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    seqs, ratings = planted()
    path = make_store(tmp_path_factory.mktemp("bmf") / "s.duckdb", seqs, [{"kind": "random_holdout"}], rating=ratings)
    s = Store.open(path)
    yield s
    s.close()


@pytest.fixture(scope="module")
def data(store: Store) -> SplitData:
    return SplitData.load(store, "holdout")


@pytest.fixture(scope="module")
def model(data: SplitData) -> BiasedMF:
    return BiasedMF(BiasedMFConfig(factors=RANK, reg=0.3, bias_reg=0.3, iterations=30, clip=False)).fit(data)


def held_out(data: SplitData) -> tuple[SequenceArrays, np.ndarray, np.ndarray, np.ndarray]:
    """(test histories, rows, tokens, ratings) of every test rating."""
    targ = data.targets(Part.TEST)
    rows = np.repeat(np.arange(len(targ)), targ.lengths)
    return data.history(Part.TEST), rows, np.asarray(targ.tokens), np.asarray(targ.rating, np.float64)


def test_ridge_by_group_matches_direct_solve() -> None:
    rng = np.random.default_rng(1)
    feats, y = rng.normal(size=(5, 3)), rng.normal(size=9)
    group = np.array([2, 0, 2, 0, 0, 2, 0, 2, 2])  # any order; group 1 has no event
    other = np.array([0, 1, 4, 1, 3, 0, 2, 3, 4])  # entity 1 twice in group 0: counted twice
    pen = np.array([0.5, 1.0, 2.0])
    x = ridge_by_group(group, other, y, feats, 3, pen)
    for g in (0, 2):
        a = feats[other[group == g]]
        expect = np.linalg.solve(a.T @ a + np.diag(pen), a.T @ y[group == g])
        np.testing.assert_allclose(x[g], expect, rtol=1e-5)  # float32 Grams
    np.testing.assert_array_equal(x[1], 0.0)


def test_recovers_planted_matrix_and_beats_global_mean(model: BiasedMF, data: SplitData) -> None:
    hist, rows, tokens, r = held_out(data)
    assert len(r) > 100
    pred = model.predict(hist, rows, tokens)
    rmse = float(np.sqrt(np.mean((pred - r) ** 2)))
    global_mean = float(np.sqrt(np.mean((model.meta["mu"] - r) ** 2)))
    assert rmse < 0.1, rmse
    assert rmse < global_mean / 5, (rmse, global_mean)
    assert model.meta["train_rmse"] < 0.1


def test_fit_is_deterministic(data: SplitData, model: BiasedMF) -> None:
    again = BiasedMF(model.config).fit(data)
    np.testing.assert_array_equal(again.item_factors, model.item_factors)


def test_fold_in_of_training_users_matches_trained_factors(model: BiasedMF, data: SplitData) -> None:
    rows = model.user_rows
    bu, p = model.fold_in(data.train, rows)
    np.testing.assert_allclose(bu, model.user_bias, atol=1e-4)
    np.testing.assert_allclose(p, model.user_factors, atol=1e-4)
    # and so are the predictions: fold-in from the training history vs the stored user factors
    item = np.arange(model.item_bias.shape[0])
    trained = model.meta["mu"] + model.user_bias[:, None] + model.item_bias[None, :] + model.user_factors @ model.item_factors.T
    folded = model.score(data.train, rows)[:, N_SPECIAL:]
    np.testing.assert_allclose(folded, trained, atol=1e-4)
    pair_rows = np.repeat(rows[:5], len(item))
    pred = model.predict(data.train, pair_rows, np.tile(item + N_SPECIAL, 5))
    np.testing.assert_allclose(pred, trained[:5].ravel(), atol=1e-4)


def test_save_load_gives_identical_predictions(model: BiasedMF, data: SplitData, tmp_path: Path) -> None:
    folder = model.save(tmp_path / "m")
    assert "reg = 0.3" in (folder / "model.toml").read_text()
    loaded = load_model(folder)
    assert isinstance(loaded, BiasedMF) and loaded.config == model.config
    hist, rows, tokens, _ = held_out(data)
    np.testing.assert_array_equal(loaded.predict(hist, rows, tokens), model.predict(hist, rows, tokens))
    np.testing.assert_array_equal(loaded.score(hist), model.score(hist))


def test_score_is_the_predicted_rating_and_recommend_ranks_by_it(model: BiasedMF, data: SplitData) -> None:
    hist = data.history(Part.TEST)
    rows = hist.nonempty()[:4]
    s = model.score(hist, rows)
    assert s.shape == (4, len(data.vocab)) and s.dtype == np.float32
    assert np.isneginf(s[:, :N_SPECIAL]).all()
    tokens = np.arange(N_SPECIAL, len(data.vocab))
    for b, r in enumerate(rows):
        np.testing.assert_allclose(s[b, N_SPECIAL:], model.predict(hist, np.full(len(tokens), r), tokens), rtol=1e-5)
    top, top_s = model.recommend(hist, 5, rows)
    for b, r in enumerate(rows):
        unseen = np.setdiff1d(tokens, hist.row(int(r)))
        best = unseen[np.argsort(-s[b, unseen], kind="stable")[:5]]
        np.testing.assert_array_equal(np.sort(top[b]), np.sort(best))
        assert np.all(np.diff(top_s[b]) <= 0)


def test_embeddings_dot_product_is_the_score(model: BiasedMF, data: SplitData) -> None:
    hist = data.history(Part.TEST)
    rows = hist.nonempty()[:3]
    dot = model.query_embeddings(hist, rows) @ model.item_embeddings().T
    s = model.score(hist, rows)
    np.testing.assert_allclose(dot[:, N_SPECIAL:], s[:, N_SPECIAL:], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.item_embeddings()[:N_SPECIAL], 0.0)


def test_served_by_the_engine_with_exact_dot_scores(model: BiasedMF, tmp_path: Path) -> None:
    from segue.serving.engine import Engine

    engine = Engine.load(model.save(tmp_path / "m"))
    assert engine.info.family == "biasedmf" and engine.dot_exact
    history = np.array([N_SPECIAL, N_SPECIAL + 1])
    ranked = engine.rank([history], 3)[0]
    # a request carries no ratings: the history is unrated, so items rank by mu + b_i
    unseen = np.setdiff1d(np.arange(len(model.item_bias)), history - N_SPECIAL)
    best = unseen[np.argsort(-model.item_bias[unseen], kind="stable")[:3]] + N_SPECIAL
    assert [int(t) for t in ranked.tokens] == best.tolist()


def test_unrated_history_and_unknown_items(model: BiasedMF, data: SplitData) -> None:
    hist = SequenceArrays.from_lists([[N_SPECIAL, N_SPECIAL + 1], []])  # no rating column: unrated
    pred = model.predict(hist, np.array([0, 1, 0]), np.array([N_SPECIAL + 2, N_SPECIAL + 2, UNK]))
    mu, bi = model.meta["mu"], float(model.item_bias[2])
    np.testing.assert_allclose(pred, [mu + bi, mu + bi, mu], rtol=1e-6)
    # supplying ratings for the same events folds them in (the first history now has a user bias)
    rated = model.predict(hist, np.array([0]), np.array([N_SPECIAL + 2]), ratings=np.array([5.0, 5.0]))
    assert rated[0] > pred[0]
    with pytest.raises(InputError, match="one value per history event"):
        model.predict(hist, np.array([0]), np.array([N_SPECIAL]), ratings=np.array([5.0]))
    with pytest.raises(InputError, match="rows must lie in"):
        model.predict(hist, np.array([2]), np.array([N_SPECIAL]))


def test_history_ratings_outside_the_scale_are_refused_by_score_and_predict(model: BiasedMF) -> None:
    low, high = model.rating_range()
    hist = SequenceArrays.from_lists([[N_SPECIAL, N_SPECIAL + 1, N_SPECIAL + 2]])
    for bad in (np.inf, -np.inf, high + 1.0, low - 1.0, 100.0):
        hist.rating = np.array([4.0, bad, 3.0], np.float32)
        name = model.vocab.external_id(N_SPECIAL + 1)
        with pytest.raises(InputError, match=rf"item '{name}' \(token {N_SPECIAL + 1}\) is outside the rating scale"):
            model.score(hist)
        with pytest.raises(InputError, match="outside the rating scale"):
            model.recommend(hist, 3)
        with pytest.raises(InputError, match="outside the rating scale"):
            model.predict(hist, np.array([0]), np.array([N_SPECIAL + 3]))
    # the scale's own ends and NaN (unrated) are fine, and score() agrees with predict()
    hist.rating = np.array([low, np.nan, high], np.float32)
    s = model.score(hist)
    assert np.all(np.isfinite(s[:, N_SPECIAL:]))
    np.testing.assert_allclose(model.predict(hist, np.array([0]), np.array([N_SPECIAL + 3])), s[0, N_SPECIAL + 3], rtol=1e-5)


def test_clip_keeps_predictions_in_the_training_range(data: SplitData) -> None:
    m = BiasedMF(BiasedMFConfig(factors=RANK, reg=0.3, bias_reg=0.3, iterations=5)).fit(data)
    hist, rows, tokens, _ = held_out(data)
    pred = m.predict(hist, rows, tokens)
    assert pred.min() >= m.meta["rating_min"] and pred.max() <= m.meta["rating_max"]
    low, high = m.rating_range()
    assert (low, high) == (m.meta["rating_min"], m.meta["rating_max"]) and low < high


def test_protocols_and_evaluator(model: BiasedMF, store: Store) -> None:
    assert isinstance(model, Recommender) and isinstance(model, RatingPredictor)
    assert "biasedmf" in families()
    result = evaluate({"bmf": model}, store, "holdout", "random_holdout", ks=(5,))
    ndcg = result.models["bmf"].per_user["ndcg@5"]
    assert len(ndcg) > 0 and np.isfinite(ndcg).all()


def test_evaluate_fits_biasedmf_by_name(store: Store) -> None:
    models, infos = resolve_models(["biasedmf"], store, "holdout")
    assert isinstance(models["biasedmf"], BiasedMF) and infos["biasedmf"]["family"] == "biasedmf"
    assert "factors = 32" in infos["biasedmf"]["model_toml"]


def test_split_without_ratings_is_a_clear_error(tmp_path: Path) -> None:
    path = make_store(tmp_path / "implicit.duckdb", [[1, 2, 3], [2, 3, 4]], [{"kind": "random_holdout"}])
    with Store.open(path) as s, pytest.raises(SegueError, match="split 'holdout'.*has no ratings"):
        BiasedMF().fit(SplitData.load(s, "holdout"))


@pytest.mark.parametrize("family", ["biasedmf", "ease"])
def test_reads_unrated_declares_whether_an_unrated_item_moves_the_scores(model: BiasedMF, data: SplitData, family: str) -> None:
    # The server warns from this declaration (reads_unrated): keep it true to what score() does.
    from segue.models.base import model_class

    rec = model if family == "biasedmf" else model_class(family)().fit(data)
    one_unrated = SequenceArrays.from_lists([[N_SPECIAL + 1], []])
    one_unrated.rating = np.array([np.nan], np.float32)
    s = rec.score(one_unrated)
    moved = not np.array_equal(s[0], s[1])
    assert rec.reads_unrated == moved == (family != "biasedmf")
