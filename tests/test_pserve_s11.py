"""Serving a two-stage pipeline as it was trained and evaluated (walk wpipe, session 11).

A real store with timestamps (rankhelp.feedback_store), a fitted pipeline (popularity + item-kNN,
LightGBM ranker), a real uvicorn server with a feature log; the named-playlist checks use the
served pipeline of tests/conftest.py (`pipe`, a store with playlist names).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import numpy as np
import pytest

from rankhelp import feedback_store
from segue.data.arrays import SplitData
from segue.data.splits import Part
from segue.data.store import Store
from segue.models.pipeline import PipelineConfig, PipelineRecommender
from segue.serving.app import create_app
from segue.serving.cli import serve_in_thread
from segue.serving.engine import Engine
from segue.serving.index import IndexConfig

TIME_FEATURES = ["pop_window_log", "age_at_query_days"]


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory):
    """A pipeline fitted on a store with timestamps, served with a feature log; the test part's
    histories (with the store's times) and a few rows whose items are all known."""
    root = tmp_path_factory.mktemp("pserve-timed")
    store = feedback_store(root / "store.duckdb")
    cfg = PipelineConfig.from_dict(
        {
            "generators": [{"name": "pop", "family": "popularity", "n": 20}, {"name": "knn", "family": "itemknn", "n": 20}],
            "name_candidates": 0,
            "ranker": {"n_estimators": 30, "early_stopping_rounds": 10},
        }
    )
    with Store.open(store) as s:
        data = SplitData.load(s, "loo")
        model = PipelineRecommender(cfg).fit(data)
        hist = data.history(Part.TEST)
    folder = model.save(root / "pipe")
    assert set(TIME_FEATURES) <= set(model.state.names) and hist.ts is not None
    rows = [r for r in range(len(hist)) if len(hist.row(r)) >= 2 and (np.asarray(hist.row(r)) >= 4).all()][:6]
    flog = root / "flog"
    app = create_app(folder, store=store, feature_log=flog, admin_key=None, use_env_admin_key=False)
    with serve_in_thread(app) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        yield {"client": c, "model": model, "hist": hist, "rows": rows, "flog": flog, "folder": folder}


def _request(t: dict, r: int) -> tuple[list[str], list[int]]:
    """External ids and store times of test history row r."""
    h, vocab = t["hist"], t["model"].vocab
    ids = [vocab.external_ids[x] for x in np.asarray(h.row(r))]
    return ids, h.ts[h.offsets[r] : h.offsets[r + 1]].tolist()


def _last_log(flog: Path) -> dict:
    return json.loads((flog / "features.jsonl").read_text().splitlines()[-1])


def test_served_pipeline_ranks_with_the_request_timestamps_as_the_library_with_the_store_times(timed) -> None:
    """The ranker's time features read the history's last event time: training and evaluation take
    it from the store, and the server takes it from `timestamps` (it dropped them, so every served
    row had NaN there and the served top 10 was not the evaluated one)."""
    c, model, hist = timed["client"], timed["model"], timed["hist"]
    vocab = model.vocab
    differs_without = 0
    for r in timed["rows"]:
        ids, ts = _request(timed, r)
        want, want_scores = model.recommend(hist.take(np.array([r])), 10)  # the store's arrays, with ts
        body = c.post("/v1/recommend", json={"history": ids, "n": 10, "timestamps": ts}).json()
        assert not [w for w in body["warnings"] if "timestamps" in w], body["warnings"]
        assert [i["id"] for i in body["items"]] == [vocab.external_ids[x] for x in want[0]]
        np.testing.assert_allclose([i["score"] for i in body["items"]], want_scores[0], rtol=1e-5, atol=1e-6)
        logged = _last_log(timed["flog"])["outputs"]
        cols = [logged["feature_names"].index(f) for f in TIME_FEATURES]
        assert np.isfinite(np.array(logged["features"], np.float64)[:, cols]).all()
        # /v1/rank scores the same candidates as /v1/recommend ranked them, times included.
        ranked = c.post("/v1/rank", json={"history": ids, "items": [i["id"] for i in body["items"]], "timestamps": ts}).json()
        np.testing.assert_allclose([i["score"] for i in ranked["items"]], want_scores[0], rtol=1e-5, atol=1e-6)
        bare = c.post("/v1/recommend", json={"history": ids, "n": 10}).json()
        assert any("timestamps: not given" in w for w in bare["warnings"]), bare["warnings"]
        differs_without += [i["score"] for i in bare["items"]] != [i["score"] for i in body["items"]]
    assert differs_without  # the times matter to this ranker: without them the ranking differs
    health = c.get("/healthz").json()
    assert health["events"]["time"] is True


def test_a_pipeline_says_which_event_fields_it_ignores(timed) -> None:
    c = timed["client"]
    ids, ts = _request(timed, timed["rows"][0])
    body = c.post(
        "/v1/recommend",
        json={"history": ids, "timestamps": ts, "ts": ts[-1] + 60, "feedback": {"skip": [True] * len(ids)}},
    ).json()
    assert any(w.startswith("feedback: the pipeline model reads no per-event feedback") for w in body["warnings"])
    assert any(w.startswith("ts: the pipeline model reads the time of the history's last event") for w in body["warnings"])
    assert not any("timestamps" in w and "ignored" in w and not w.startswith("ts:") for w in body["warnings"])


def test_rank_on_a_pipeline_logs_the_features_recommend_logs(timed) -> None:
    c, flog = timed["client"], timed["flog"]
    ids, ts = _request(timed, timed["rows"][1])
    rec = c.post("/v1/recommend", json={"history": ids, "n": 5, "timestamps": ts}).json()
    rec_log = _last_log(flog)["outputs"]
    cands = [i["id"] for i in rec["items"]][::-1]
    got = c.post("/v1/rank", json={"history": ids, "items": cands, "timestamps": ts}).json()
    rank_log = _last_log(flog)
    assert rank_log["endpoint"] == "/v1/rank"
    out = rank_log["outputs"]
    assert [i["id"] for i in out["items"]] == [i["id"] for i in got["items"]] == [i["id"] for i in rec["items"]]
    assert [i["score"] for i in out["items"]] == [i["score"] for i in got["items"]]
    assert out["feature_names"] == rec_log["feature_names"]
    np.testing.assert_array_equal(np.array(out["features"], np.float64), np.array(rec_log["features"], np.float64))
    assert out["generators"] == rec_log["generators"] == [i["generators"] for i in got["items"]]


def test_rank_scores_a_history_candidate_when_exclude_seen_is_false_and_says_why_not_otherwise(timed) -> None:
    c = timed["client"]
    ids, ts = _request(timed, timed["rows"][2])
    body = {"history": ids, "timestamps": ts}
    got = c.post("/v1/rank", json=body | {"items": [ids[0]]}).json()
    assert got["items"][0].get("score") is None
    assert any("in the history" in w and '"exclude_seen": false' in w for w in got["warnings"]), got["warnings"]
    assert not any("no generator proposed" in w for w in got["warnings"])
    rec = c.post("/v1/recommend", json=body | {"n": 100, "exclude_seen": False}).json()
    seen = [i for i in rec["items"] if i["id"] in ids]
    assert seen  # the pools hold history items once they may
    let_in = c.post("/v1/rank", json=body | {"items": [seen[0]["id"]], "exclude_seen": False}).json()
    assert let_in["items"][0]["score"] == pytest.approx(seen[0]["score"], rel=1e-6)
    assert not let_in["warnings"]


def test_rank_takes_the_playlist_name_and_scores_as_recommend_and_explain(pipe) -> None:
    """/v1/rank refused `name` (422), so a named playlist's candidates got the unnamed scores."""
    history = ["t2", "t7", "t12"]
    named = {"history": history, "name": "cinder mix"}
    rec = pipe.post("/v1/recommend", json=named | {"n": 8}).json()
    ids = [i["id"] for i in rec["items"]]
    r = pipe.post("/v1/rank", json=named | {"items": ids[::-1]})
    assert r.status_code == 200, r.text
    got = r.json()
    assert [i["id"] for i in got["items"]] == ids
    np.testing.assert_allclose([i["score"] for i in got["items"]], [i["score"] for i in rec["items"]], rtol=1e-6)
    assert [i["generators"] for i in got["items"]] == [i["generators"] for i in rec["items"]]
    explained = pipe.post("/v1/explain", json=named | {"items": ids[:2]}).json()["items"]
    assert [e["score"] for e in explained] == pytest.approx([i["score"] for i in got["items"][:2]], rel=1e-6)
    unnamed = pipe.post("/v1/rank", json={"history": history, "items": ids}).json()
    assert [i.get("score") for i in unnamed["items"]] != [i["score"] for i in got["items"]]


def test_index_options_on_a_pipeline_are_said_to_do_nothing(timed, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="segue.serving"):
        Engine.load(timed["folder"], index_config=IndexConfig(kind="hnsw", expansion_search=5))
    said = [r.getMessage() for r in caplog.records if "--index hnsw and --ef 5 ignored" in r.getMessage()]
    assert said and "two-stage pipeline has no stage-one index" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="segue.serving"):
        Engine.load(timed["folder"])
    assert not [r for r in caplog.records if "ignored" in r.getMessage()]


def test_engine_explains_a_pipeline_with_allow_as_it_ranks_with_allow(timed) -> None:
    """/v1/recommend with `allow` builds the pools from the allowed items; Engine.explain scored the
    unrestricted pool (other scores, and served items "outside the pool"). explain.py must pass
    the request's `allow` on for /v1/explain to use this."""
    eng = Engine.load(timed["folder"])
    hist = timed["hist"]
    h = np.asarray(hist.row(timed["rows"][0]), np.int64)
    pool = eng.rank([h], len(eng.vocab))[0].tokens
    pool = set(pool[pool >= 0].tolist())
    outside = [t for t in range(4, len(eng.vocab)) if t not in pool and t not in set(h.tolist())][:6]
    allow = np.array([*outside, min(pool)], np.int64)
    ranked = eng.rank([h], 4, allow=allow)[0]
    assert (ranked.tokens >= 0).all() and set(ranked.tokens.tolist()) & set(outside)
    scores, impact = eng.explain(h, ranked.tokens, allow=allow)
    np.testing.assert_allclose(scores, ranked.scores, rtol=1e-6)
    assert impact.shape == (4, len(h))
    unrestricted, _ = eng.explain(h, ranked.tokens)
    assert np.isnan(unrestricted).any()  # the allowed items outside the unrestricted pool
    cold = eng.rank([h[:0]], 4, allow=allow)[0]
    cold_tokens = cold.tokens[cold.tokens >= 0]
    assert set(cold_tokens.tolist()) & set(outside)
    np.testing.assert_allclose(eng.empty_history_scores(cold_tokens, allow=allow), cold.scores[: len(cold_tokens)], rtol=1e-6)


def test_a_pipeline_with_an_event_reading_generator_takes_the_request_events_over_http(tmp_path: Path) -> None:
    """A pipeline whose transformer generator reads ratings / feedback / times: the request's
    values reach it over HTTP as they reach it through Engine.rank (they were dropped with 'the
    pipeline model does not use ratings', so its <gen>_fb_* features came from a bare history)."""
    from rankhelp import untrained

    store = feedback_store(tmp_path / "store.duckdb")
    tf = untrained(store).save(tmp_path / "tf")
    cfg = PipelineConfig.from_dict(
        {
            "generators": [
                {"name": "pop", "family": "popularity", "n": 20},
                {"name": "tf", "folder": str(tf), "n": 20},
            ],
            "name_candidates": 0,
            "ranker": {"n_estimators": 20, "early_stopping_rounds": 10},
        }
    )
    with Store.open(store) as s:
        folder = PipelineRecommender(cfg).fit(SplitData.load(s, "loo")).save(tmp_path / "pipe")
    eng = Engine.load(folder, store=store)
    m = eng.model
    col = m.state.names.index("tf_fb_listened")
    h = np.array([5, 9, 12, 20])
    ids = [m.vocab.external_ids[t] for t in h]
    ts = [1_700_000_000 + 3600 * i for i in range(4)]
    flog = tmp_path / "flog"
    app = create_app(folder, store=store, feature_log=flog, admin_key=None, use_env_admin_key=False)
    with serve_in_thread(app) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        health = c.get("/healthz").json()
        assert health["rating_scale"] == [1.0, 5.0]
        assert health["events"]["feedback"] == {"listened": "fraction", "skip": "flag"} and health["events"]["time"]
        served = {}
        for r in (1, 5):
            body = c.post("/v1/recommend", json={"history": ids, "n": 10, "ratings": [r] * 4, "timestamps": ts, "ts": ts[-1] + 60}).json()
            assert not [w for w in body["warnings"] if "ignored" in w], body["warnings"]
            logged = _last_log(flog)["outputs"]
            served[r] = ([i["id"] for i in body["items"]], np.array(logged["features"], np.float64)[:, col])
        bad = c.post("/v1/recommend", json={"history": ids, "feedback": {"skip": [3, 0, 0, 1]}})
        assert bad.status_code == 422 and "history[0]" in bad.text
    assert not np.array_equal(served[1][1], served[5][1])  # the ratings reach the feedback head
    for r in (1, 5):
        from segue.serving.encoding import EventColumns

        ev = EventColumns(ts=np.array(ts, np.int64), next_ts=ts[-1] + 60)
        ranked = eng.rank([h], 10, ratings=[np.full(4, r, np.float32)], events=[ev])[0]
        assert served[r][0] == [m.vocab.external_ids[t] for t in ranked.tokens]
        np.testing.assert_allclose(served[r][1], ranked.features[:, col], rtol=1e-5)


def test_explain_with_allow_over_http_explains_the_served_scores(timed) -> None:
    """/v1/explain with `allow` on a pipeline scored the unrestricted pool: other scores than
    /v1/recommend served, and served items "outside the pool" (walk wpipe, fault 12)."""
    eng = Engine.load(timed["folder"])
    vocab = timed["model"].vocab
    h = np.asarray(timed["hist"].row(timed["rows"][0]), np.int64)
    pool = eng.rank([h], len(eng.vocab))[0].tokens
    pool = set(pool[pool >= 0].tolist())
    outside = [t for t in range(4, len(eng.vocab)) if t not in pool and t not in set(h.tolist())][:6]
    body = {
        "history": [vocab.external_ids[t] for t in h],
        "n": 4,
        "allow": [vocab.external_ids[t] for t in [*outside, min(pool)]],
    }
    c = timed["client"]
    served = c.post("/v1/recommend", json=body).json()["items"]
    explained = c.post("/v1/explain", json=body).json()["items"]
    assert [i["id"] for i in explained] == [i["id"] for i in served]
    assert set(i["id"] for i in served) & {vocab.external_ids[t] for t in outside}
    np.testing.assert_allclose([i["score"] for i in explained], [i["score"] for i in served], rtol=1e-5)
