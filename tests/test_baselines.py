"""The classic baselines (itemknn, ease, item2vec, als) on small real stores built with build_store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datahelp import make_store
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.splits import Part
from segue.data.store import Store
from segue.data.vocab import N_SPECIAL, UNK
from segue.errors import SegueError
from segue.models.als import ALS, ALSConfig
from segue.models.base import load_model
from segue.models.ease import EASE, EASEConfig
from segue.models.item2vec import Item2Vec, Item2VecConfig
from segue.models.itemknn import ItemKNN, ItemKNNConfig

FAST = {
    "itemknn": lambda: ItemKNN(ItemKNNConfig(neighbours=5, shrink=2.0, decay=0.8)),
    "ease": lambda: EASE(EASEConfig(l2=5.0)),
    "item2vec": lambda: Item2Vec(Item2VecConfig(vector_size=8, epochs=5, workers=1, window=3)),
    "als": lambda: ALS(ALSConfig(factors=4, iterations=5, num_threads=1)),
}


def block_sequences(rng: np.random.Generator, n_users: int = 80) -> list[list[int]]:
    """Half the users consume items 0-9, the other half items 10-19 (random order, no repeats)."""
    seqs = []
    for u in range(n_users):
        base = 0 if u % 2 == 0 else 10
        seqs.append((base + rng.permutation(10)[: rng.integers(4, 9)]).tolist())
    return seqs


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    rng = np.random.default_rng(3)
    path = make_store(
        tmp_path_factory.mktemp("baselines") / "s.duckdb",
        block_sequences(rng),
        [{"kind": "random_holdout"}, {"kind": "leave_last_out"}],
    )
    s = Store.open(path)
    yield s
    s.close()


@pytest.fixture(scope="module")
def data(store: Store) -> SplitData:
    return SplitData.load(store, "holdout")


def dense_train(data: SplitData) -> np.ndarray:
    """Binary [n_sequences_with_events, n_items] training matrix, computed directly."""
    n = data.vocab.n_items
    rows = []
    for r in data.train.nonempty():
        x = np.zeros(n)
        toks = np.asarray(data.train.row(r))
        x[toks[toks >= N_SPECIAL] - N_SPECIAL] = 1
        rows.append(x)
    return np.array(rows)


def group_of(data: SplitData, token: int) -> int:
    """0 for items 0-9, 1 for items 10-19 (from their external ids 'i<x>')."""
    return int(int(data.vocab.external_id(token)[1:]) >= 10)


# ---------------------------------------------------------------------------------------------
# the protocol, for every family


@pytest.mark.parametrize("family", list(FAST))
def test_fit_score_recommend_save_load(family: str, data: SplitData, tmp_path: Path) -> None:
    model = FAST[family]().fit(data)
    history = data.history(Part.TEST)
    rows = history.nonempty()[:7]
    scores = model.score(history, rows)
    assert scores.shape == (len(rows), len(data.vocab)) and scores.dtype == np.float32
    assert np.all(scores[:, :N_SPECIAL] == -np.inf)
    assert np.isfinite(scores[:, N_SPECIAL:]).any(axis=1).all()

    tokens, top = model.recommend(history, 3, rows)
    assert tokens.shape == (len(rows), 3)
    for b, r in enumerate(rows):
        assert not set(tokens[b].tolist()) & set(np.asarray(history.row(r)).tolist())
        assert np.all(tokens[b] >= N_SPECIAL)
        assert np.all(np.diff(top[b]) <= 0)

    folder = model.save(tmp_path / family)
    again = load_model(folder)
    assert type(again) is type(model) and again.config == model.config
    assert np.array_equal(again.score(history, rows), scores)


@pytest.mark.parametrize("family", list(FAST))
def test_empty_history_scores_by_popularity(family: str, data: SplitData) -> None:
    model = FAST[family]().fit(data)
    scores = model.score(SequenceArrays.from_lists([[]]))[0]
    finite = np.flatnonzero(np.isfinite(scores))
    assert len(finite) > 0
    # Tokens are ordered by training count, so popularity order = ascending token order.
    assert np.all(np.diff(scores[finite]) <= 0)
    assert scores[finite[0]] > scores[finite[-1]]


def test_blocks_are_recovered_by_every_family(data: SplitData) -> None:
    """A user of the first block gets items of the first block, and likewise for the second."""
    tok = {x: data.vocab.encode_external([f"i{x}"])[0][0] for x in range(20)}
    hist = SequenceArrays.from_lists([[tok[0], tok[1], tok[2]], [tok[12], tok[15]]])
    models = {
        "itemknn": FAST["itemknn"](),
        "ease": FAST["ease"](),
        "item2vec": Item2Vec(Item2VecConfig(vector_size=8, epochs=30, workers=1, window=8)),
        "als": ALS(ALSConfig(factors=2, iterations=10, num_threads=1)),  # two blocks, two factors
    }
    for family, model in models.items():
        model.fit(data)
        tokens, _ = model.recommend(hist, 4)
        assert [group_of(data, t) for t in tokens[0]] == [0] * 4, family
        assert [group_of(data, t) for t in tokens[1]] == [1] * 4, family


# ---------------------------------------------------------------------------------------------
# EASE


def test_ease_matches_direct_formula(data: SplitData) -> None:
    l2 = 7.0
    model = EASE(EASEConfig(l2=l2, dtype="float64")).fit(data)
    x = dense_train(data)
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0)
    np.testing.assert_allclose(model.weights, b, rtol=1e-5, atol=1e-6)
    # score(h) = x_h B on a hand-made history (the <unk> token is ignored)
    t = N_SPECIAL + np.array([0, 3, 5])
    s = model.score(SequenceArrays.from_lists([[*t.tolist(), UNK]]))[0]
    np.testing.assert_allclose(s[N_SPECIAL:], b[t - N_SPECIAL].sum(axis=0), rtol=1e-5, atol=1e-6)
    # float32 (the default) agrees with float64
    f32 = EASE(EASEConfig(l2=l2)).fit(data)
    np.testing.assert_allclose(f32.weights, b, atol=1e-4)


def test_ease_hand_example() -> None:
    """A 3-item example small enough to check by hand."""
    from scipy.sparse import csr_matrix

    from segue.models.ease import ease_weights

    x = csr_matrix(np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=np.float32))
    # G + I = [[4,2,2],[2,4,2],[2,2,4]] -> P = [[3,-1,-1],[-1,3,-1],[-1,-1,3]] / 8, B_ij = 1/3 off-diagonal
    b = ease_weights(x, 1.0, "float64")
    expected = np.full((3, 3), 1 / 3)
    np.fill_diagonal(expected, 0)
    np.testing.assert_allclose(b, expected, atol=1e-12)


def test_ease_refuses_too_large_catalogue(data: SplitData) -> None:
    with pytest.raises(SegueError, match=r"20 items.*max_items=10.*needs 1.6 KiB"):
        EASE(EASEConfig(max_items=10)).fit(data)


# ---------------------------------------------------------------------------------------------
# ItemKNN


def direct_similarity(x: np.ndarray, neighbours: int, shrink: float) -> np.ndarray:
    n = x.sum(axis=0)
    co = x.T @ x
    sim = co / (np.sqrt(np.outer(n, n)) + shrink)
    np.fill_diagonal(sim, 0)
    out = np.zeros_like(sim)
    for i in range(len(sim)):
        order = np.lexsort((np.arange(len(sim)), -sim[i]))[:neighbours]
        keep = order[sim[i, order] > 0]
        out[i, keep] = sim[i, keep]
    return out


@pytest.mark.parametrize("block_entries", [1, 20_000_000])
def test_itemknn_similarity_matches_direct(data: SplitData, block_entries: int) -> None:
    model = ItemKNN(ItemKNNConfig(neighbours=4, shrink=3.0, block_entries=block_entries)).fit(data)
    expected = direct_similarity(dense_train(data), 4, 3.0)
    np.testing.assert_allclose(model.sim.toarray(), expected, rtol=1e-6, atol=1e-7)
    assert model.sim.nnz == np.count_nonzero(expected)


def test_itemknn_scores_recency_weighted_sum(data: SplitData) -> None:
    model = ItemKNN(ItemKNNConfig(neighbours=6, shrink=1.0, decay=0.5, backfill=False)).fit(data)
    s_dense = model.sim.toarray()
    hist = [N_SPECIAL + 2, N_SPECIAL + 7, N_SPECIAL + 2, N_SPECIAL + 11]  # item 2 last seen at age 1
    expected = 0.5 * s_dense[2] + 0.25 * s_dense[7] + 1.0 * s_dense[11]
    got = model.score(SequenceArrays.from_lists([hist]))[0, N_SPECIAL:]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# item2vec


def test_item2vec_skips_unknown_items_and_is_deterministic(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    seqs = block_sequences(rng, 40)
    seqs[0] = [99, *seqs[0]]  # item 99 occurs once (in training): in the vocabulary, under min_count=2
    path = make_store(tmp_path / "s.duckdb", seqs, [{"kind": "leave_last_out"}])
    with Store.open(path) as store:
        data = SplitData.load(store, "loo")
        rare = int(data.vocab.encode_external(["i99"])[0][0])
        assert rare != UNK
        cfg = Item2VecConfig(vector_size=8, epochs=3, workers=1, min_count=2, seed=11)
        model = Item2Vec(cfg).fit(data)
        assert not model.has_vector[rare] and model.has_vector[N_SPECIAL]
        known = [N_SPECIAL + 0, N_SPECIAL + 4]
        base = model.score(SequenceArrays.from_lists([known]))
        noisy = model.score(SequenceArrays.from_lists([[known[0], rare, UNK, known[1]]]))
        # Unknown items are skipped (not replaced by anything): with decay 1 the query is the same.
        flat = Item2Vec(cfg.model_copy(update={"decay": 1.0})).fit(data)
        np.testing.assert_array_equal(
            flat.score(SequenceArrays.from_lists([known])),
            flat.score(SequenceArrays.from_lists([[known[0], rare, UNK, known[1]]])),
        )
        assert noisy.shape == base.shape
        assert noisy[0, rare] == -np.inf and np.all(noisy[0, ~model.has_vector] == -np.inf)
        # Only unknown items -> popularity fallback, not a random vector.
        cold = model.score(SequenceArrays.from_lists([[rare, UNK]]))[0]
        assert np.array_equal(cold, model.score(SequenceArrays.from_lists([[]]))[0])
        # Same seed, one worker: identical vectors.
        again = Item2Vec(cfg).fit(data)
        assert np.array_equal(again.input_vectors, model.input_vectors)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_item2vec_embeddings_reproduce_scores(data: SplitData, similarity: str) -> None:
    model = Item2Vec(Item2VecConfig(vector_size=8, epochs=2, workers=1, similarity=similarity)).fit(data)
    history = data.history(Part.TEST)
    rows = history.nonempty()[:5]
    q, e = model.query_embeddings(history, rows), model.item_embeddings()
    assert q.shape == (5, 8) and e.shape == (len(data.vocab), 8)
    s = model.score(history, rows)
    ok = model.has_vector
    np.testing.assert_allclose(s[:, ok], (q @ e.T)[:, ok], rtol=1e-5, atol=1e-6)
    if similarity == "cosine":
        np.testing.assert_allclose(np.linalg.norm(e[ok], axis=1), 1, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# ALS


def test_als_scores_unseen_user_from_history_and_embeddings_match(data: SplitData) -> None:
    model = ALS(ALSConfig(factors=4, iterations=10, num_threads=1)).fit(data)
    # A user that is not in training: its factor is solved from the history alone.
    hist = SequenceArrays.from_lists([[N_SPECIAL + 0, N_SPECIAL + 1]])
    q = model.query_embeddings(hist)
    assert q.shape == (1, 4) and np.any(q != 0)
    s = model.score(hist)
    np.testing.assert_allclose(s[0, N_SPECIAL:], (q @ model.item_embeddings().T)[0, N_SPECIAL:], rtol=1e-5)
    # The solved factor satisfies the normal equations of the confidence-weighted least squares.
    y = model.item_factors.astype(np.float64)
    c = np.ones(len(y))
    c[[0, 1]] = 1 + model.config.alpha
    p = np.zeros(len(y))
    p[[0, 1]] = 1
    a = (y.T * c) @ y + model.config.regularization * np.eye(4)
    np.testing.assert_allclose(q[0], np.linalg.solve(a, (y.T * c) @ p), rtol=1e-3, atol=1e-4)


def test_auto_decay_follows_the_split(store: Store, data: SplitData, tmp_path: Path) -> None:
    """Recency weighting by default only where targets follow the history in time."""
    from segue.models import itemknn

    loo = SplitData.load(store, "loo")
    assert ItemKNN().fit(data).meta["decay"] == 1.0  # random within-user holdout
    model = ItemKNN().fit(loo)
    assert model.meta["decay"] == itemknn.SEQUENTIAL_DECAY < 1
    assert load_model(model.save(tmp_path / "m")).meta["decay"] == model.meta["decay"]
    assert ItemKNN(ItemKNNConfig(decay=0.5)).fit(data).meta["decay"] == 0.5


@pytest.mark.realdata
@pytest.mark.slow
def test_baselines_beat_popularity_on_ml100k(shared_data: Path, tmp_path: Path) -> None:
    """Validation NDCG@10 on ml-100k (random within-user holdout, full ranking) via the harness."""
    import pyarrow as pa

    from segue.data.sources.base import Chunk, ListSource
    from segue.data.store import BuildConfig, build_store
    from segue.evaluation import ProtocolConfig, build_task, evaluate_task
    from segue.models.popularity import Popularity

    users, items, ratings, ts = np.loadtxt(shared_data / "ml-100k" / "u.data", dtype=np.int64).T
    events = pa.table({"seq_key": users.astype(str), "item_key": items.astype(str), "ts": ts, "rating": ratings * 1.0})
    path = build_store(ListSource([Chunk(events=events)]), tmp_path / "ml.duckdb", BuildConfig(splits=[{"kind": "random_holdout"}]))
    with Store.open(path) as store:
        data = SplitData.load(store, "holdout")
        task = build_task(data, ProtocolConfig(name="random_holdout", part="valid"))
        models = {"pop": Popularity(), "ease": EASE(), "itemknn": ItemKNN(), "als": ALS()}
        results = evaluate_task({k: m.fit(data) for k, m in models.items()}, task, (10,))
    ndcg = {k: r.mean("ndcg@10") for k, r in results.items()}
    assert ndcg["ease"] > 0.25 and ndcg["ease"] > 1.8 * ndcg["pop"], ndcg
    assert ndcg["itemknn"] > 1.4 * ndcg["pop"] and ndcg["als"] > 1.4 * ndcg["pop"], ndcg
