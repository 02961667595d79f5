"""Faults found by the s10 web/API walk (walk-web.md), each checked over real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from segue.data.vocab import N_SPECIAL
from segue.models.base import load_model
from segue.serving.app import create_app
from segue.serving.cli import serve_in_thread
from segue.serving.engine import Engine
from servinghelp import dot_folder, named_store, popularity_folder

KEY = "walk-admin-key"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("walk")
    store = named_store(root / "store.duckdb")
    return {"root": root, "store": store, "pop": popularity_folder(store, root / "pop"), "dot": dot_folder(store, root / "dot")}


@pytest.fixture(scope="module")
def dot(folders):
    app = create_app(folders["dot"], store=folders["store"], admin_key=KEY, use_env_admin_key=False)
    with serve_in_thread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        yield c


def ids_of(folder: Path, n: int, start: int = 0) -> list[str]:
    vocab = load_model(folder).vocab
    return [vocab.external_ids[t] for t in range(N_SPECIAL + start, N_SPECIAL + start + n)]


def test_explain_position_is_the_index_in_the_request_history_past_the_context(folders) -> None:
    # F6: a model that reads its last 3 items; a 7-item history keeps history[4:].
    model = load_model(folders["dot"])
    model.context_length = 3  # type: ignore[attr-defined]
    engine = Engine.from_model(model, folders["dot"], store=folders["store"])
    history = ids_of(folders["dot"], 7)
    app = create_app(engine=engine, use_env_admin_key=False)
    with serve_in_thread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        body = c.post("/v1/explain", json={"history": history, "n": 2, "top": 3}).json()
    assert any("dropped 4 older" in w for w in body["warnings"])
    for item in body["items"]:
        positions = [x["position"] for x in item["contributions"]]
        assert sorted(positions) == [4, 5, 6]
        for x in item["contributions"]:
            assert history[x["position"]] == x["id"]


def test_id_name_and_context_lengths_are_counted_in_characters(dot) -> None:
    # F2: a 513-character id said "at most 512 items", as if the history list were too long.
    cases = [
        ({"history": ["x" * 513]}, ["body", "history", 0], "at most 512 characters"),
        ({"history": [""]}, ["body", "history", 0], "at least 1 character"),
        ({"history": [], "name": "n" * 513}, ["body", "name"], "at most 512 characters"),
        ({"history": [], "context": {"k": "v" * 257}}, ["body", "context", "k"], "at most 256 characters"),
        ({"history": [], "exclude": ["y" * 513]}, ["body", "exclude", 0], "at most 512 characters"),
    ]
    for body, loc, msg in cases:
        r = dot.post("/v1/recommend", json=body)
        assert r.status_code == 422, body
        err = r.json()["detail"][0]
        assert err["loc"][: len(loc)] == loc and msg in err["msg"], err
        assert "items" not in err["msg"]


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/v1/recommend", "n", True),
        ("/v1/recommend", "n", "3"),
        ("/v1/recommend", "niche_boost", True),
        ("/v1/recommend", "exclude_seen", "false"),
        ("/v1/recommend", "exclude_seen", 0),
        ("/v1/continue", "n", True),
        ("/v1/continue", "greedy", 1),
        ("/v1/continue", "temperature", "0.5"),
        ("/v1/explain", "top", True),
        ("/v1/rank", "timestamps", [True]),
    ],
)
def test_booleans_and_numeric_strings_are_no_numbers(dot, folders, path, field, value) -> None:
    # F11: lax pydantic took true as 1 and "3" as 3 without a word.
    body = {"history": ids_of(folders["dot"], 1), field: value}
    if path == "/v1/rank":
        body["items"] = ids_of(folders["dot"], 2, start=3)
    r = dot.post(path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", field]


def test_ratings_must_be_numbers_not_booleans_or_strings(folders) -> None:
    # F11 for ratings, on a model that reads them: checked before the family is asked.
    app = create_app(folders["dot"], use_env_admin_key=False)
    with serve_in_thread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        for bad in (True, "7"):
            for path in ("/v1/recommend", "/v1/explain"):
                r = c.post(path, json={"history": ids_of(folders["dot"], 1), "ratings": [bad]})
                assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "ratings", 0], r.text
        ok = c.post("/v1/recommend", json={"history": ids_of(folders["dot"], 2), "ratings": [4, 2.5], "n": 2})
        assert ok.status_code == 200 and len(ok.json()["items"]) == 2


def test_reload_checks_the_key_before_the_body(dot, folders) -> None:
    # F12: a misspelt field or a malformed body was a 422 (the schema) before the key was checked.
    for content in (b'{"modell": "x"}', b"[1]", b"{bad", b'{"model": "/etc"}', b""):
        r = dot.post("/admin/reload", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 401, (content, r.text)
        wrong = dot.post("/admin/reload", content=content, headers={"content-type": "application/json", "X-API-Key": "no"})
        assert wrong.status_code == 403, (content, wrong.text)
    keyed = {"content-type": "application/json", "X-API-Key": KEY}
    r = dot.post("/admin/reload", content=b'{"modell": "x"}', headers=keyed)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "modell"], r.text
    r = dot.post("/admin/reload", content=b"{bad", headers=keyed)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][0] == "body", r.text
    r = dot.post("/admin/reload", content=b'{"model": 3}', headers=keyed)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "model"], r.text
    r = dot.post("/admin/reload", json={"model": str(folders["dot"]), "store": str(folders["store"])}, headers=keyed)
    assert r.status_code == 200 and r.json()["model"]["family"] == "dot", r.text
    assert dot.post("/admin/reload", headers={"X-API-Key": KEY}).status_code == 200  # no body: the same folder
    schema = dot.get("/openapi.json").json()["paths"]["/admin/reload"]["post"]["requestBody"]
    assert set(schema["content"]["application/json"]["schema"]["properties"]) == {"model", "store"}


def fallbacks(c: httpx.Client) -> int:
    line = next(x for x in c.get("/metrics").text.splitlines() if x.startswith("segue_popularity_fallbacks_total "))
    return int(line.split()[1])


def test_empty_history_scores_one_way_on_every_endpoint(dot, folders) -> None:
    # F1: /v1/recommend scored an empty history by the raw count, /v1/rank by log(1 + count).
    vocab = load_model(folders["dot"]).vocab
    before = fallbacks(dot)
    rec = dot.post("/v1/recommend", json={"history": [], "n": 4}).json()
    ids = [i["id"] for i in rec["items"]]
    counts = [int(vocab.counts[vocab.encode_external([i])[0][0]]) for i in ids]
    assert [i["score"] for i in rec["items"]] == pytest.approx(np.log1p(counts).tolist(), rel=1e-6)
    ranked = dot.post("/v1/rank", json={"history": [], "items": ids[::-1]}).json()
    assert {i["id"]: i["score"] for i in ranked["items"]} == {i["id"]: i["score"] for i in rec["items"]}
    explained = dot.post("/v1/explain", json={"history": [], "items": ids}).json()
    assert [i["score"] for i in explained["items"]] == [i["score"] for i in rec["items"]]
    for body in (ranked, explained):
        assert any("fell back to popularity" in w for w in body["warnings"])
    assert fallbacks(dot) == before + 3  # every endpoint that answered an empty history counts it
    # The niche boost subtracts b log(count + 1) from the same scale: b = 1 flattens popularity.
    flat = dot.post("/v1/recommend", json={"history": [], "n": 4, "niche_boost": 1}).json()
    assert [i["score"] for i in flat["items"]] == pytest.approx([0.0] * 4, abs=1e-6)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory):
    from segue.data.arrays import SplitData
    from segue.data.store import Store
    from segue.models.pipeline import PipelineRecommender
    from test_pipeline import pipeline_config, playlist_store

    root = tmp_path_factory.mktemp("walk-pipe")
    store = playlist_store(root / "store.duckdb")
    with Store.open(store) as s:
        folder = PipelineRecommender(pipeline_config()).fit(SplitData.load(s, "random")).save(root / "pipe")
    app = create_app(folder, store=store, use_env_admin_key=False)
    with serve_in_thread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        yield c


def test_a_pipeline_scores_an_empty_history_with_its_ranker_everywhere(pipe) -> None:
    # F1, pipeline: /v1/recommend gave ranker scores yet said "fell back to popularity" and
    # retrieval "popularity"; /v1/rank gave log(1 + count) for the same items.
    before = fallbacks(pipe)
    rec = pipe.post("/v1/recommend", json={"history": [], "n": 5}).json()
    assert rec["retrieval"] == "pipeline" and all(i["generators"] for i in rec["items"])
    assert not any("fell back to popularity" in w for w in rec["warnings"])
    assert any("empty history" in w and "pipeline" in w for w in rec["warnings"])
    ids = [i["id"] for i in rec["items"]]
    ranked = pipe.post("/v1/rank", json={"history": [], "items": ids}).json()
    explained = pipe.post("/v1/explain", json={"history": [], "items": ids}).json()
    want = {i["id"]: i["score"] for i in rec["items"]}
    assert {i["id"]: i["score"] for i in ranked["items"]} == pytest.approx(want, rel=1e-5)
    assert {i["id"]: i["score"] for i in explained["items"]} == pytest.approx(want, rel=1e-5)
    assert fallbacks(pipe) == before + 3


def test_json_the_parser_cannot_read_is_a_422_saying_why(dot) -> None:
    # F15: deep nesting and a >4300-digit integer got FastAPI's bare 400 "error parsing the body".
    headers = {"content-type": "application/json", "X-API-Key": KEY}
    deep = b'{"history":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    digits = b'{"history":["a"],"n":' + b"9" * 5000 + b"}"
    for path in ("/v1/recommend", "/v1/explain", "/admin/reload"):
        for content, words in ((deep, "nested too deeply"), (digits, "integer of more than")):
            r = dot.post(path, content=content, headers=headers)
            assert r.status_code == 422, (path, r.text)
            detail = r.json()["detail"][0]
            assert detail["loc"] == ["body"] and words in detail["msg"], detail
    r = dot.post("/admin/reload", content=b'{"model": "\\ud800"}', headers=headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "model"]
    r = dot.post("/admin/reload", content=b'{"model": ', headers=headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", 10], r.text
