"""Faults found by the s10 web/API walk (walk-web.md), each checked over real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
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
