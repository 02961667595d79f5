"""Two-stage pipelines (segue.models.pipeline): fit, save/load, leakage, evaluation hooks, serving.

Real stores (built through build_store), real generators, a real LightGBM ranker, a real uvicorn
server; tiny data so the whole file stays within a few tens of seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest

from segue.data.arrays import SplitData
from segue.data.sources.base import Chunk, ListSource
from segue.data.store import BuildConfig, Store, build_store
from segue.errors import ConfigError, SegueError
from segue.evaluation.evaluator import evaluate
from segue.evaluation.protocols import ProtocolConfig
from segue.evaluation.report import compute_stats, write_report
from segue.models.base import load_model
from segue.models.pipeline import PipelineConfig, PipelineRecommender
from segue.serving.app import create_app
from segue.serving.cli import serve_in_thread

ARTISTS = ["Aurora", "Basalt", "Cinder", "Delta", "Echo"]
FAST_RANKER = {"n_estimators": 30, "early_stopping_rounds": 10}


def playlist_store(path: Path, n_items: int = 60, n_seq: int = 240, seed: int = 0) -> Path:
    """Playlists named after the artist most of their tracks are by ('basalt mix 3')."""
    rng = np.random.default_rng(seed)
    items = pa.table(
        {
            "item_key": [f"t{i}" for i in range(n_items)],
            "name": [f"Song {i}" for i in range(n_items)],
            "creator": [ARTISTS[i % 5] for i in range(n_items)],
            "album": [f"{ARTISTS[i % 5]} {i % 3}" for i in range(n_items)],
        }
    )
    sk, ik, pos, names = [], [], [], []
    for s in range(n_seq):
        a = int(rng.integers(0, 5))
        n = int(rng.integers(3, 12))
        own = [i for i in range(n_items) if i % 5 == a]
        picks = [int(rng.choice(own)) if rng.random() < 0.8 else int(rng.integers(0, n_items)) for _ in range(n)]
        sk += [f"pl{s}"] * n
        ik += [f"t{i}" for i in picks]
        pos += list(range(n))
        names.append(f"{ARTISTS[a].lower()} mix {s % 7}")
    events = pa.table({"seq_key": sk, "item_key": ik, "position": pa.array(pos, pa.int32())})
    seqs = pa.table({"seq_key": [f"pl{s}" for s in range(n_seq)], "name": names})
    source = ListSource([Chunk(events=events, items=items, sequences=seqs)])
    return build_store(source, path, BuildConfig(seed=seed, splits=[{"kind": "random_sequence"}]))


def pipeline_config(**extra: object) -> PipelineConfig:
    return PipelineConfig.from_dict(
        {
            "generators": [
                {"name": "pop", "family": "popularity", "n": 20},
                {"name": "knn", "family": "itemknn", "n": 20},
            ],
            "ranker": FAST_RANKER,
        }
        | extra
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    store = playlist_store(root / "store.duckdb")
    with Store.open(store) as s:
        model = PipelineRecommender(pipeline_config()).fit(SplitData.load(s, "random"))
    return {"root": root, "store": store, "folder": model.save(root / "pipe"), "model": model}


def test_saves_and_loads_to_identical_scores(fitted) -> None:
    with Store.open(fitted["store"]) as s:
        data = SplitData.load(s, "random")
        hist = data.targets(2)  # held-out playlists: some seeds, with their names
        rows = hist.nonempty()[:12]
        hist = hist.take(rows, np.zeros(len(rows), np.int64), np.minimum(hist.lengths[rows], 3))
        hist.meta["seq_names"] = ["basalt mix"] * 6 + [None] * 6
        first = load_model(fitted["folder"])
        again = load_model(fitted["folder"])
        assert first.family == "pipeline" and first.generator_names == ["pop", "knn", "names"]
        a, b = first.score(hist), again.score(hist)
        assert a.shape == (len(rows), len(data.vocab)) and np.isfinite(a[:, 4:]).all()
        assert np.array_equal(a, b)
        # A saved-and-reloaded copy of a loaded pipeline scores the same again.
        copy = first.save(fitted["root"] / "copy")
        assert np.array_equal(load_model(copy).score(hist), a)


def test_fitted_and_loaded_feature_states_compute_the_same_features_as_scipy(fitted) -> None:
    """The features read CSR rows with numpy (csr_lookup), which needs sorted indices: the state
    the ranker trains on (fitted in memory, its name matrix a sparse product) and the loaded one
    the server uses give identical features, equal to scipy's indexing and sums."""
    from segue.models.ranking_features import csr_lookup

    fresh, loaded = fitted["model"], load_model(fitted["folder"])
    with Store.open(fitted["store"]) as s:
        hist = SplitData.load(s, "random").targets(2)
    rows = hist.nonempty()[:16]
    hist = hist.take(rows, np.zeros(len(rows), np.int64), np.minimum(hist.lengths[rows], 4))
    hist.meta["seq_names"] = ["basalt mix", "Cinder", None, "aurora mix 3", "echo delta mix", "no such words"] * 3
    pools = loaded.pools(hist)
    for a, b in zip(fresh.features_of(hist, np.arange(len(rows)), pools), loaded.features_of(hist, np.arange(len(rows)), pools), strict=True):
        np.testing.assert_array_equal(a, b)
    st = loaded.state
    for r, pool in enumerate(pools):
        last = np.asarray(hist.row(r), np.int64)[-st.last_k :]
        np.testing.assert_array_equal(csr_lookup(st.knn, last, pool.tokens), st.knn[last][:, pool.tokens].toarray())
        w = st.word_ids(hist.meta["seq_names"][r])
        if len(w):
            want = np.asarray(st.name_items[w][:, pool.tokens].sum(axis=0)).ravel()
            np.testing.assert_array_equal(st.query_features(hist.row(r), hist.meta["seq_names"][r], pool.tokens, pool.scores, pool.ranks)[:, st.item_names.index("name_score")], want)
    for name in ["basalt", "basalt mix", "mix 3", "cinder echo mix 5"]:
        w = st.word_ids(name)
        total = np.asarray(st.name_items[w].sum(axis=0)).ravel()
        order = np.lexsort((np.arange(len(total)), -total))
        order = order[total[order] > 0]
        for n in (1, 7, 300):
            got = st.name_candidates(name, n)
            np.testing.assert_array_equal(got[0], order[:n])
            np.testing.assert_array_equal(got[1], total[order[:n]])


def test_name_score_sums_the_words_in_scipys_order() -> None:
    """Twelve words, one candidate: np.sum would add pairwise (48 of these 200 columns differ in
    the last bit); the feature adds row after row, as scipy's sparse .sum(axis=0) does."""
    import scipy.sparse as sp

    from segue.models.ranking_features import _sum_rows, csr_lookup

    m = sp.random(12, 200, density=0.9, format="csr", dtype=np.float32, random_state=0)
    m.sum_duplicates()
    for c in range(200):
        got = _sum_rows(csr_lookup(m, np.arange(12), np.array([c])))
        np.testing.assert_array_equal(got, np.asarray(m[:, [c]].sum(axis=0)).ravel())


def test_a_generator_that_fails_to_load_is_named(fitted, tmp_path) -> None:
    broken = shutil.copytree(fitted["folder"], tmp_path / "broken")
    (broken / "generators" / "knn" / "similarity.npz").unlink()
    with pytest.raises(SegueError, match=r"pipeline generator 'knn' \(.*generators/knn\) failed to load"):
        load_model(broken)
    shutil.rmtree(broken / "generators" / "pop")
    with pytest.raises(SegueError, match=r"pipeline generator 'pop'.*no such model folder"):
        load_model(broken)


def test_config_errors_name_the_generator() -> None:
    with pytest.raises(ConfigError, match="generator 'x': give either folder"):
        PipelineConfig.from_dict({"generators": [{"name": "x", "family": "ease", "folder": "f"}]})
    with pytest.raises(ConfigError, match="unique: a repeated"):
        PipelineConfig.from_dict({"generators": [{"name": "a", "family": "ease"}, {"name": "a", "family": "als"}]})


# --- leakage -------------------------------------------------------------------------------------


def loo_store(path: Path, change: str | None) -> Path:
    """Leave-last-out users; `change` = "test" or "valid" replaces that part's item of every user
    (but user 0, who holds every item first so item ids stay the same) by another known item."""
    rng = np.random.default_rng(5)
    n_items = 30
    seqs = [list(range(n_items))]
    for _ in range(80):
        base = int(rng.integers(0, 3)) * 10
        seqs.append([base + int(x) for x in rng.integers(0, 10, int(rng.integers(4, 9)))])
    if change is not None:
        pos = -1 if change == "test" else -2
        for s in seqs[1:]:
            s[pos] = (s[pos] + 7) % n_items
    events = pa.table(
        {
            "seq_key": [f"u{i}" for i, s in enumerate(seqs) for _ in s],
            "item_key": [f"i{x}" for s in seqs for x in s],
            "position": pa.array([p for s in seqs for p in range(len(s))], pa.int32()),
        }
    )
    return build_store(ListSource([Chunk(events=events)]), path, BuildConfig(splits=[{"kind": "leave_last_out", "name": "loo"}]))


def fit_on(store: Path) -> tuple[str, list[np.ndarray]]:
    with Store.open(store) as s:
        data = SplitData.load(s, "loo")
        model = PipelineRecommender(pipeline_config(name_candidates=0)).fit(data)
        _, targets = model.training_queries(data)
        return model.ranker.booster.model_to_string(), targets


def test_the_ranker_never_sees_test_targets(tmp_path) -> None:
    base, base_targets = fit_on(loo_store(tmp_path / "base.duckdb", None))
    other_test, _ = fit_on(loo_store(tmp_path / "test.duckdb", "test"))
    other_valid, valid_targets = fit_on(loo_store(tmp_path / "valid.duckdb", "valid"))
    # Changing every test target leaves the trained ranker identical ...
    assert other_test == base
    # ... while changing the validation targets (what it trains on) changes it: the check can fail.
    assert other_valid != base
    assert any(not np.array_equal(a, b) for a, b in zip(base_targets, valid_targets, strict=True))
    # The training targets are exactly each user's second-to-last item.
    with Store.open(tmp_path / "base.duckdb") as s:
        data = SplitData.load(s, "loo")
        valid = data.targets(1)
        expected = [np.asarray(valid.row(r)) for r in np.flatnonzero(valid.lengths > 0)]
    assert all(np.array_equal(a, b) for a, b in zip(base_targets, expected, strict=True))


# --- evaluation --------------------------------------------------------------------------------


def test_evaluation_reports_pool_recall_importances_and_the_title_only_row(fitted, tmp_path) -> None:
    pipe = load_model(fitted["folder"])
    with Store.open(fitted["store"]) as s:
        data = SplitData.load(s, "random")
        pop = load_model(fitted["folder"] / "generators" / "pop")
        knn = load_model(fitted["folder"] / "generators" / "knn")
        cfg = ProtocolConfig(name="playlist_continuation", continuation_ks=[0, 1, 5])
        assert data.kind == "random_sequence"
        result = evaluate({"pipeline": pipe, "pop": pop, "knn": knn}, s, "random", cfg, ks=[10, 50])
    info = result.models["pipeline"].info
    for n in (50, 200, 500):
        pr = info[f"pool_recall@{n}"]
        # The merged pool finds at least what any generator alone finds.
        assert pr["pool"] >= max(pr["pop"], pr["knn"], pr["names"]) - 1e-12
        assert 0 < pr["pool_size"] <= 3 * n
    assert info["pool_recall@500"]["pool"] >= info["pool_recall@50"]["pool"]
    imp = info["feature_importance"]
    assert abs(sum(imp.values()) - 1) < 1e-3 and set(imp) == set(pipe.state.names)
    # Title only (K = 0): the pipeline answers from the name, popularity cannot.
    groups = result.group_summary()
    assert "K=0" in groups
    assert groups["K=0"]["pipeline"]["rprec"] > groups["K=0"]["pop"]["rprec"] + 0.05
    out = write_report(result, tmp_path / "report", compute_stats(result, n_boot=50))
    md = (out / "report.md").read_text()
    assert "pipeline: candidate pool recall@N" in md and "ranker feature importance" in md
    saved = json.loads((out / "results.json").read_text())
    assert saved["models"]["pipeline"]["pool_recall@50"]["pool"] == info["pool_recall@50"]["pool"]


# --- serving -----------------------------------------------------------------------------------


def test_served_features_equal_offline_features(fitted) -> None:
    folder, flog = fitted["folder"], fitted["root"] / "flog"
    model = load_model(folder)
    vocab = model.vocab
    history = [vocab.external_ids[t] for t in (6, 9, 14)]
    app = create_app(folder, store=fitted["store"], feature_log=flog, admin_key=None, use_env_admin_key=False)
    with serve_in_thread(app) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/v1/recommend", json={"history": history, "n": 15, "name": "Cinder mix", "deny": [history[0]]})
        assert r.status_code == 200, r.text
        body = r.json()
        cold = c.post("/v1/recommend", json={"history": [], "n": 5, "name": "aurora"}).json()
    items = body["items"]
    assert len(items) == 15 and body["retrieval"] == "pipeline"
    assert all(set(i["generators"]) <= {"pop", "knn", "names"} and i["generators"] for i in items)
    assert cold["items"] and all("names" in i["generators"] for i in cold["items"][:3])
    record = json.loads((flog / "features.jsonl").read_text().splitlines()[0])
    assert record["outputs"]["feature_names"] == model.state.names
    logged = np.array(record["outputs"]["features"], dtype=np.float64)
    # Offline: the same history and name through the pipeline's own code.
    from segue.data.arrays import SequenceArrays

    tokens = np.array([vocab.encode_external([i])[0][0] for i in history], np.int32)
    arrays = SequenceArrays.from_lists([tokens])
    arrays.meta["seq_names"] = ["Cinder mix"]
    pool = model.pools(arrays, np.array([0]), exclude=[tokens[:1].astype(np.int64)])[0]
    offline = model.pool_features(arrays, 0, pool)
    offline_scores = model.rank_pools(arrays, np.array([0]), [pool])[0][0]
    served = np.array([vocab.encode_external([i["id"]])[0][0] for i in items])
    where = np.searchsorted(pool.tokens, served)
    assert np.array_equal(pool.tokens[where], served)
    np.testing.assert_array_equal(logged, offline[where].astype(np.float64))
    # The served scores come from the ranker's lookup tables, equal to LightGBM's own predict.
    assert model.ranker.lookup is not None
    np.testing.assert_array_equal(model.ranker.predict(offline), model.ranker.predict_reference(offline))
    np.testing.assert_allclose([i["score"] for i in items], offline_scores[where], rtol=1e-6)
    sources = pool.sources(model.generator_names)
    assert [i["generators"] for i in items] == [sources[w] for w in where]


def test_items_outside_the_pool_get_no_score_and_leaving_it_is_said(fitted) -> None:
    """/v1/rank lists candidates no generator proposed last, without a score (score() gives them a
    -1e6 offset that only orders them); /v1/explain says which history item keeps a recommended
    item in the pool (`"pool": "leaves"`), where the score difference would be that offset."""
    from segue.data.arrays import SequenceArrays

    folder, model = fitted["folder"], load_model(fitted["folder"])
    vocab = model.vocab
    h = np.array([6, 9, 14, 21], np.int32)

    def pool_of(tokens: np.ndarray) -> set[int]:
        arrays = SequenceArrays.from_lists([tokens])
        arrays.meta["seq_names"] = [None]
        return set(model.pools(arrays, np.array([0]))[0].tokens.tolist())

    pool = pool_of(h)
    outside = [t for t in range(4, len(vocab)) if t not in pool and t not in h][:2]
    inside = sorted(pool)[:2]
    # an item of the pool that one history item alone keeps there
    leaving = [(t, j) for j in range(len(h)) for t in sorted(pool - pool_of(np.delete(h, j)))]
    assert len(outside) == 2 and leaving
    ids = [vocab.external_ids[t] for t in h]
    app = create_app(folder, store=fitted["store"], admin_key=None, use_env_admin_key=False)
    with serve_in_thread(app) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        cands = [vocab.external_ids[t] for t in outside + inside]
        r = c.post("/v1/rank", json={"history": ids, "items": cands}).json()
        assert [i["id"] for i in r["items"]][2:] == cands[:2]  # outside the pool: last
        assert all("score" not in i for i in r["items"][2:])
        assert all(abs(i["score"]) < 1e3 for i in r["items"][:2])
        assert any("2 candidate(s) outside the pipeline's candidate pool" in w for w in r["warnings"])
        t, j = leaving[0]
        e = c.post("/v1/explain", json={"history": ids, "items": [vocab.external_ids[t]], "top": 10}).json()
    contrib = e["items"][0]["contributions"]
    assert contrib[0]["position"] == j and contrib[0]["pool"] == "leaves" and "impact" not in contrib[0]
    assert all(abs(x["impact"]) < 1e3 for x in contrib if "pool" not in x)


@pytest.mark.slow
def test_demo_pipeline_step(tmp_path) -> None:
    from segue.demo import DemoOptions, run_demo

    state = run_demo(DemoOptions(workdir=tmp_path, steps=["build", "pipeline"], serve=False, n_playlists=200, n_items=300))
    results = json.loads((state.results["pipeline"] / "results.json").read_text())
    info = results["models"]["pipeline"]
    assert info["pool_recall@50"]["pool"] >= info["pool_recall@50"]["itemknn"]
    assert set(results["models"]) == {"pipeline", "itemknn", "item2vec", "popularity"}


def test_items_outside_the_pool_keep_the_popularity_order(fitted) -> None:
    from segue.data.arrays import SequenceArrays
    from segue.models.pipeline import OUTSIDE_POOL, outside_pool

    model = fitted["model"]
    counts = np.asarray(model.vocab.counts, np.int64)
    s = model.score(SequenceArrays.from_lists([[6, 9, 14]]))[0]
    out = np.flatnonzero(outside_pool(s))
    out = out[out >= 4]
    assert len(out) > 10 and s[out].max() <= OUTSIDE_POOL
    # a higher training count scores higher, an equal one the same: as many values as counts
    order = np.argsort(-counts[out], kind="stable")
    assert np.all(np.diff(s[out][order]) <= 0)
    assert len(np.unique(s[out])) == len(np.unique(counts[out]))


def test_recommend_with_exclude_seen_false_lets_seen_items_into_the_pools(fitted) -> None:
    from segue.data.arrays import SequenceArrays
    from segue.models.pipeline import outside_pool

    model = fitted["model"]
    counts = np.asarray(model.vocab.counts, np.int64)
    top = (4 + np.argsort(-counts[4:], kind="stable")[:3]).astype(np.int32)  # popularity proposes them
    hist = SequenceArrays.from_lists([top])
    n = len(model.vocab) - 4
    kept, kept_vals = model.recommend(hist, n, exclude_seen=False)
    got = dict(zip(kept[0].tolist(), kept_vals[0].tolist(), strict=True))
    assert set(top.tolist()) <= set(got) and not outside_pool(np.array([got[int(t)] for t in top])).any()
    excluded, _ = model.recommend(hist, 10)
    assert not set(top.tolist()) & set(excluded[0].tolist())
