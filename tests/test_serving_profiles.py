"""Profiles over real HTTP: ratings reach the model, scale checks, niche boost, surprising items.

The model is a biasedmf fitted on a tiny rated store with two tastes: half the users love the
'Mecha' titles and dislike the 'Romance' ones, the other half the reverse; titles differ in
popularity (how many users rated them), so a niche boost has something to move.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest

from segue.data.arrays import SequenceArrays, SplitData
from segue.data.sources.base import Chunk, ListSource
from segue.data.store import BuildConfig, Store, build_store
from segue.data.vocab import N_SPECIAL
from segue.models.biasedmf import BiasedMF, BiasedMFConfig
from segue.models.filters import niche_boost_tokens
from segue.models.popularity import Popularity
from segue.serving.app import create_app
from segue.serving.cli import serve_in_thread
from segue.serving.engine import Engine
from segue.serving.index import IndexConfig
from servinghelp import free_port, kill_tree, start_serve, wait_ready

N_USERS, N_ITEMS = 160, 30
GENRES = ("Mecha", "Romance")


def genre(i: int) -> str:
    return GENRES[i % 2]


def rated_store(path: Path, seed: int = 0) -> Path:
    """Users rate ~8 titles 1-5 by taste (+-2 around 3); title i is picked with weight 1/(i+1)."""
    rng = np.random.default_rng(seed)
    items = pa.table(
        {
            "item_key": [f"a{i}" for i in range(N_ITEMS)],
            "name": [f"{genre(i)} Saga {i}" for i in range(N_ITEMS)],
            "creator": [f"Studio {genre(i)}" for i in range(N_ITEMS)],
        }
    )
    weights = 1.0 / np.arange(1, N_ITEMS + 1)
    seq, item, pos, rating = [], [], [], []
    for u in range(N_USERS):
        taste = 1 if u % 2 == 0 else -1  # +1: likes Mecha (even titles)
        picks = rng.choice(N_ITEMS, size=8, replace=False, p=weights / weights.sum())
        for p, i in enumerate(picks):
            sign = 1 if i % 2 == 0 else -1
            r = int(np.clip(np.rint(3 + 2 * taste * sign + rng.normal(0, 0.4)), 1, 5))
            seq.append(f"u{u}")
            item.append(f"a{i}")
            pos.append(p)
            rating.append(float(r))
    events = pa.table({"seq_key": seq, "item_key": item, "position": pa.array(pos, pa.int32()), "rating": rating})
    source = ListSource([Chunk(events=events, items=items)])
    return build_store(source, path, BuildConfig(seed=seed, splits=[{"kind": "random_holdout"}]))


def fit_biasedmf(store_path: Path, folder: Path) -> Path:
    with Store.open(store_path) as store:
        data = SplitData.load(store, "holdout")
        model = BiasedMF(BiasedMFConfig(factors=2, reg=1.0, bias_reg=1.0, iterations=15)).fit(data)
    return model.save(folder)


def fit_popularity(store_path: Path, folder: Path) -> Path:
    with Store.open(store_path) as store:
        model = Popularity().fit(SplitData.load(store, "holdout"))
    return model.save(folder)


def fit_autoencoder(store_path: Path, folder: Path) -> Path:
    """A small profile autoencoder (both heads) on the rated store's holdout split (~5 s)."""
    from segue.models.autoencoder import AutoencoderConfig, AutoencoderRecommender

    cfg = AutoencoderConfig.from_dict(
        {
            "model": {"hidden": [16], "bottleneck": 8, "input_dropout": 0.3},
            "optim": {"lr": 1e-2, "warmup_steps": 0, "schedule": "constant"},
            "trainer": {"max_steps": 60, "eval_every": 60, "metric": "ndcg@100", "progress": False, "loader": {"batch_size": 16}},
        }
    )
    with Store.open(store_path) as store:
        return AutoencoderRecommender(cfg).fit(SplitData.load(store, "holdout")).save(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("profiles")
    store = rated_store(root / "store.duckdb")
    return {"store": store, "bmf": fit_biasedmf(store, root / "bmf"), "pop": fit_popularity(store, root / "pop")}


@pytest.fixture(scope="module")
def server(folders: dict[str, Path]):
    app = create_app(folders["bmf"], store=folders["store"], use_env_admin_key=False)
    with serve_in_thread(app) as s:
        yield s


@pytest.fixture(scope="module")
def http(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def recommend(http: httpx.Client, **body) -> dict:
    r = http.post("/v1/recommend", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def ids(body: dict) -> list[str]:
    return [i["id"] for i in body["items"]]


def share_mecha(ids_: list[str]) -> float:
    return float(np.mean([int(i[1:]) % 2 == 0 for i in ids_]))


# --- ratings reach the model ---------------------------------------------------------------------


def test_healthz_names_the_rating_scale(http: httpx.Client) -> None:
    h = http.get("/healthz").json()
    assert h["rating_scale"] == [1.0, 5.0]


def test_flipping_ratings_flips_the_recommendations(http: httpx.Client) -> None:
    history = ["a0", "a1", "a2", "a3"]  # two Mecha, two Romance titles
    loves_mecha = recommend(http, history=history, ratings=[5, 1, 5, 1], n=6)
    loves_romance = recommend(http, history=history, ratings=[1, 5, 1, 5], n=6)
    unrated = recommend(http, history=history, n=6)
    assert loves_mecha["warnings"] == [] and loves_romance["warnings"] == []
    assert share_mecha(ids(loves_mecha)) >= 5 / 6
    assert share_mecha(ids(loves_romance)) <= 1 / 6
    # null ratings are unrated: the same answer as no ratings at all
    nulls = recommend(http, history=history, ratings=[None] * 4, n=6)
    assert ids(nulls) == ids(unrated)
    assert [i["score"] for i in nulls["items"]] == [i["score"] for i in unrated["items"]]


def test_served_scores_are_the_models_fold_in(http: httpx.Client, folders: dict[str, Path]) -> None:
    history, ratings = ["a4", "a7", "a10"], [4.0, None, 2.0]
    body = recommend(http, history=history, ratings=ratings, n=5)
    engine = Engine.load(folders["bmf"], store=folders["store"])
    tokens, _ = engine.vocab.encode_external(history)
    arrays = SequenceArrays.from_lists([tokens])
    arrays.rating = np.array([4.0, np.nan, 2.0], np.float32)
    scores = engine.model.score(arrays)[0]
    for item in body["items"]:
        t = engine.encoder.encode_one(item["id"])
        assert item["score"] == pytest.approx(float(scores[t]), rel=1e-5, abs=1e-5)


# --- refusals ----------------------------------------------------------------------------------------


def test_out_of_scale_rating_is_422_naming_item_and_scale(http: httpx.Client) -> None:
    r = http.post("/v1/recommend", json={"history": ["a0", "a5", "a2"], "ratings": [4, 7.5, None]})
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "ratings", 1]
    assert "'a5'" in err["msg"] and "history[1]" in err["msg"] and "[1, 5]" in err["msg"]
    low = http.post("/v1/explain", json={"history": ["a0"], "ratings": [0]})
    assert low.status_code == 422 and low.json()["detail"][0]["loc"] == ["body", "ratings", 0]


def test_misaligned_ratings_are_422_naming_ratings(http: httpx.Client) -> None:
    for path in ("/v1/recommend", "/v1/explain"):
        r = http.post(path, json={"history": ["a0", "a1"], "ratings": [3]})
        assert r.status_code == 422, path
        (err,) = r.json()["detail"]
        assert err["loc"] == ["body", "ratings"]
        assert "1 values but history has 2 items" in err["msg"]


def test_an_item_rated_twice_differently_is_said_and_the_same_rating_twice_is_not(http: httpx.Client) -> None:
    body = recommend(http, history=["a0", "a5", "a0"], ratings=[4, 2, 1])
    assert any("('a0': 1, 4); the model reads each" in w for w in body["warnings"]), body["warnings"]
    assert not any("more than once" in w for w in recommend(http, history=["a0", "a5", "a0"], ratings=[4, 2, 4])["warnings"])


def test_non_finite_ratings_are_refused(http: httpx.Client) -> None:
    r = http.post("/v1/recommend", content=b'{"history": ["a0"], "ratings": [NaN]}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "ratings"]


def test_ratings_to_a_family_without_them_are_accepted_with_a_warning(folders: dict[str, Path]) -> None:
    app = create_app(folders["pop"], store=folders["store"], use_env_admin_key=False)
    with serve_in_thread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        assert c.get("/healthz").json()["rating_scale"] is None
        rated = recommend(c, history=["a0", "a1"], ratings=[5, 99], n=5)
        plain = recommend(c, history=["a0", "a1"], n=5)
        assert ids(rated) == ids(plain)
        assert any("does not use ratings" in w for w in rated["warnings"])
        assert "surprising" not in c.post("/v1/explain", json={"history": ["a0"], "ratings": [5]}).json()


# --- niche boost -----------------------------------------------------------------------------------


def test_niche_boost_moves_the_ranking_to_rarer_items(http: httpx.Client, folders: dict[str, Path]) -> None:
    counts = Engine.load(folders["bmf"], store=folders["store"]).vocab
    count = {counts.external_ids[t]: int(counts.counts[t]) for t in range(N_SPECIAL, len(counts))}
    history, ratings = ["a0", "a1"], [5, 1]
    plain = recommend(http, history=history, ratings=ratings, n=8)
    zero = recommend(http, history=history, ratings=ratings, n=8, niche_boost=0)
    assert zero["items"] == plain["items"]  # b = 0 changes nothing
    boosted = recommend(http, history=history, ratings=ratings, n=8, niche_boost=1.5)
    assert ids(boosted) != ids(plain)

    def mean_log_count(body: dict) -> float:
        return float(np.mean([np.log1p(count[i]) for i in ids(body)]))

    assert mean_log_count(boosted) < mean_log_count(plain) - 0.3
    neg = http.post("/v1/recommend", json={"history": history, "niche_boost": -1})
    assert neg.status_code == 422 and neg.json()["detail"][0]["loc"] == ["body", "niche_boost"]


@pytest.mark.parametrize("b", [0.0, 0.7, 3.0, 40.0])
def test_niche_boost_is_the_same_on_every_retrieval_path(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, b: float
) -> None:
    """score(), the exact index and HNSW all give the boosted top k of the full score vector."""
    import segue.serving.engine as engine_mod

    # A small first pool (4 k = 12 of 30 items) makes large b widen it, the case under test.
    monkeypatch.setattr(engine_mod, "BOOST_POOL_MIN", 1)
    exact = Engine.load(folders["bmf"], store=folders["store"], index_config=IndexConfig(kind="exact"))
    graph = Engine.load(
        folders["bmf"], store=folders["store"], index_config=IndexConfig(kind="hnsw", min_bucket=8, exact_bucket_below=1)
    )
    scored = Engine.load(folders["bmf"], store=folders["store"])
    scored.index = None  # the path of families without embeddings: model.score() over all items
    history = [np.array(exact.vocab.encode_external(["a0", "a3", "a8"])[0], np.int64)]
    ratings = [np.array([5, 2, 4], np.float32)]
    full = exact.model.score(exact.arrays(history, None, ratings))
    ref = niche_boost_tokens(full, exact.counts, b)[0]
    ref[history[0]] = -np.inf
    want = np.argsort(-ref, kind="stable")[:3]
    assert exact.dot_exact and graph.info.retrieval == "hnsw"
    for engine in (exact, graph, scored):
        got = engine.rank(history, 3, ratings=ratings, niche_boost=b)[0]
        assert got.tokens.tolist() == want.tolist(), engine.info.retrieval
        np.testing.assert_allclose(got.scores, ref[want], rtol=1e-4, atol=1e-4)


# --- explanations --------------------------------------------------------------------------------


def test_impact_is_the_score_drop_when_the_item_is_removed(http: httpx.Client) -> None:
    history, ratings = ["a0", "a2", "a1", "a6"], [5, 4, 2, None]
    r = http.post("/v1/explain", json={"history": history, "ratings": ratings, "n": 3, "top": 4})
    assert r.status_code == 200, r.text
    item = r.json()["items"][0]
    best = item["contributions"][0]
    assert best["impact"] > 0  # the named item raised the recommendation
    j = history.index(best["id"])
    rest = [h for i, h in enumerate(history) if i != j]
    rest_r = [x for i, x in enumerate(ratings) if i != j]
    full = recommend(http, history=history, ratings=ratings, allow=[item["id"]], n=1)["items"][0]["score"]
    without = recommend(http, history=rest, ratings=rest_r, allow=[item["id"]], n=1)["items"][0]["score"]
    assert full == pytest.approx(item["score"], rel=1e-5)
    assert full - without == pytest.approx(best["impact"], rel=1e-3, abs=1e-5)


def test_most_surprising_names_the_rating_the_model_did_not_expect(http: httpx.Client, folders: dict[str, Path]) -> None:
    # A Mecha fan's profile with one Mecha title rated 1: that one is the surprise.
    history, ratings = ["a0", "a2", "a4", "a6", "a8", "a1"], [5, 5, 5, 1, 5, None]
    body = http.post("/v1/explain", json={"history": history, "ratings": ratings, "n": 2, "top": 3}).json()
    surprising = body["surprising"]
    assert len(surprising) == 3
    first = surprising[0]
    assert first["id"] == "a6" and first["position"] == 3 and first["given"] == 1.0
    assert first["predicted"] > 2.5 and first["difference"] == pytest.approx(1.0 - first["predicted"])
    assert first["name"] == "Mecha Saga 6"
    assert all(abs(a["difference"]) >= abs(b["difference"]) for a, b in zip(surprising, surprising[1:], strict=False))
    assert "a1" not in [s["id"] for s in surprising]  # unrated items are never surprising
    # predicted = the model's predict() for the item given the whole profile
    model = BiasedMF.load(folders["bmf"])
    tokens, _ = model.vocab.encode_external(history)
    arrays = SequenceArrays.from_lists([tokens])
    arrays.rating = np.array([np.nan if x is None else x for x in ratings], np.float32)
    want = model.predict(arrays, np.zeros(1, np.int64), tokens[3:4])[0]
    assert first["predicted"] == pytest.approx(float(want), rel=1e-5)


def test_explained_items_carry_the_predicted_rating_of_rating_families(http: httpx.Client, folders: dict[str, Path]) -> None:
    """biasedmf's score is its predicted rating, and /v1/explain says so; a family without ratings
    gives none."""
    body = {"history": ["a0", "a2", "a1"], "ratings": [5, 4, None], "n": 3}
    items = http.post("/v1/explain", json=body).json()["items"]
    assert len(items) == 3
    for item in items:
        assert item["predicted_rating"] == pytest.approx(item["score"], rel=1e-5) and 1.0 <= item["predicted_rating"] <= 5.0
    app = create_app(folders["pop"], store=folders["store"], use_env_admin_key=False)
    with serve_in_thread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        items = c.post("/v1/explain", json={"history": ["a0", "a2"], "n": 2}).json()["items"]
        assert len(items) == 2 and all("predicted_rating" not in i for i in items)


# --- the profile autoencoder behind the same server ------------------------------------------------


def test_autoencoder_reads_served_ratings_and_refuses_out_of_scale(folders: dict[str, Path], tmp_path: Path) -> None:
    """Sprout's model through HTTP: the served scores are its fold-in of the rated profile, the
    ratings change them, and a rating outside its scale is a 422 naming item and scale."""
    folder = fit_autoencoder(folders["store"], tmp_path / "ae")
    app = create_app(folder, store=folders["store"], use_env_admin_key=False)
    with serve_in_thread(app) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        assert c.get("/healthz").json()["rating_scale"] == [1.0, 5.0]
        history = ["a0", "a1", "a2", "a3"]
        high = recommend(c, history=history, ratings=[5, 1, 5, 1], n=8)
        low = recommend(c, history=history, ratings=[1, 5, 1, 5], n=8)
        assert high["warnings"] == [] and [i["score"] for i in high["items"]] != [i["score"] for i in low["items"]]
        engine = Engine.load(folder, store=folders["store"])
        tokens, _ = engine.vocab.encode_external(history)
        arrays = SequenceArrays.from_lists([tokens])
        arrays.rating = np.array([5, 1, 5, 1], np.float32)
        scores = engine.model.score(arrays)[0]
        for item in high["items"]:
            assert item["score"] == pytest.approx(float(scores[engine.encoder.encode_one(item["id"])]), rel=1e-4, abs=1e-4)
        r = c.post("/v1/recommend", json={"history": history, "ratings": [5, 9, None, 1]})
        assert r.status_code == 422
        (err,) = r.json()["detail"]
        assert err["loc"] == ["body", "ratings", 1] and "'a1'" in err["msg"] and "[1, 5]" in err["msg"]
        explained = c.post("/v1/explain", json={"history": history, "ratings": [5, 1, 5, 1], "n": 2})
        assert explained.status_code == 200 and "surprising" in explained.json()
        # each explained item's predicted rating: the model's predict() given the profile, on the
        # scale, and not the ranking score (a log probability for this family)
        items = explained.json()["items"]
        toks = np.array([engine.encoder.encode_one(i["id"]) for i in items])
        want = engine.model.predict(arrays, np.zeros(len(toks), np.int64), toks)
        for item, w in zip(items, want, strict=True):
            assert item["predicted_rating"] == pytest.approx(float(w), rel=1e-5)
            assert 1.0 <= item["predicted_rating"] <= 5.0 and item["score"] < 0
        # an item rated twice, differently: said, with what this family does (keeps the last)
        twice = recommend(c, history=[*history, "a0"], ratings=[5, 1, 5, 1, 2], n=8)
        (w,) = twice["warnings"]
        assert "1 item(s) rated more than once with different ratings ('a0': 2, 5)" in w and "its last rating" in w
        last = recommend(c, history=history[1:] + ["a0"], ratings=[1, 5, 1, 2], n=8)
        assert [i["score"] for i in twice["items"]] == pytest.approx([i["score"] for i in last["items"]], abs=1e-5)


def test_a_served_autoencoder_logs_each_line_once(tmp_path: Path, folders: dict[str, Path]) -> None:
    """`segue serve` of a neural model: loading it imports orbax, which logs through absl, which
    gave the root logger a second handler; every segue line then came out twice."""
    folder = fit_autoencoder(folders["store"], tmp_path / "ae")
    port = free_port()
    proc = start_serve(["--model", str(folder), "--port", str(port), "--no-feature-log"], tmp_path / "out", tmp_path / "err")
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/recommend", json={"history": ["a1", "a2"], "ratings": [5, 1]})
        assert r.status_code == 200
    finally:
        kill_tree(proc)
    err = (tmp_path / "err").read_text()
    loaded = [x for x in err.splitlines() if "loaded autoencoder model" in x]
    assert len(loaded) == 1 and " segue.serving INFO loaded autoencoder model" in loaded[0], err
