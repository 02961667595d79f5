"""The service over real HTTP: a uvicorn server on a free loopback port, driven with httpx."""

from __future__ import annotations

import threading
import time
import weakref
from pathlib import Path

import httpx
import numpy as np
import pytest

from segue.data.vocab import N_SPECIAL
from segue.models.base import load_model
from segue.serving.app import create_app
from segue.serving.catalogue import ITEMS_FILE
from segue.serving.cli import serve_in_thread
from segue.serving.index import IndexConfig
from servinghelp import dot_folder, named_store, popularity_folder

ADMIN_KEY = "test-admin-key-123"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serving")
    store = named_store(root / "store.duckdb")
    return {
        "root": root,
        "store": store,
        "pop": popularity_folder(store, root / "pop"),
        "dot": dot_folder(store, root / "dot"),
    }


@pytest.fixture(scope="module")
def dot_server(folders: dict[str, Path]):
    app = create_app(folders["dot"], store=folders["store"], feature_log=folders["root"] / "flog", admin_key=ADMIN_KEY)
    with serve_in_thread(app) as server:
        yield server


@pytest.fixture(scope="module")
def pop_server(folders: dict[str, Path]):
    app = create_app(folders["pop"], store=folders["store"], admin_key=None, use_env_admin_key=False)
    with serve_in_thread(app) as server:
        yield server


def client(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30)


def known_ids(folder: Path, n: int = 3) -> list[str]:
    vocab = load_model(folder).vocab
    return [vocab.external_ids[t] for t in range(N_SPECIAL, N_SPECIAL + n)]


# --- every endpoint ---------------------------------------------------------------------------


def test_recommend_continue_explain_carry_model_and_names(dot_server, folders) -> None:
    c = client(dot_server)
    ids = known_ids(folders["dot"])
    r = c.post("/v1/recommend", json={"history": ids, "n": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["model"]["run_id"] == "dot" and body["model"]["family"] == "dot"
    assert r.headers["x-segue-model-version"] == body["model"]["version"]
    assert len(body["items"]) == 5 and not set(i["id"] for i in body["items"]) & set(ids)
    assert all(i["name"].startswith("Song ") for i in body["items"])  # names from the store
    # The route encodes its own bytes: they must still follow the documented schema, None left out.
    from segue.serving.app import RecommendResponse

    assert RecommendResponse.model_validate(body).model_dump(exclude_none=True) == body
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)

    r = c.post("/v1/continue", json={"history": ids[:2], "n": 6, "temperature": 0.7, "random_seed": 3})
    cont = r.json()
    assert r.status_code == 200 and len(cont["items"]) == 6
    assert "deprecation" not in r.headers and cont["warnings"] == []
    got = [i["id"] for i in cont["items"]]
    assert len(set(got)) == 6 and not set(got) & set(ids[:2])
    assert [s["id"] for s in cont["history"]] == ids[:2] and cont["seed"] == cont["history"]
    # The same random seed gives the same continuation; greedy follows the ranking.
    again = c.post("/v1/continue", json={"history": ids[:2], "n": 6, "temperature": 0.7, "random_seed": 3}).json()
    assert [i["id"] for i in again["items"]] == got
    greedy = c.post("/v1/continue", json={"history": ids[:2], "n": 1, "greedy": True}).json()
    top = c.post("/v1/recommend", json={"history": ids[:2], "n": 1}).json()
    assert greedy["items"][0]["id"] == top["items"][0]["id"]

    r = c.post("/v1/explain", json={"history": ids, "n": 3, "top": 2})
    ex = r.json()
    assert r.status_code == 200 and len(ex["items"]) == 3
    for item in ex["items"]:
        assert len(item["contributions"]) == 2
        assert {x["id"] for x in item["contributions"]} <= set(ids)
        impacts = [x["impact"] for x in item["contributions"]]
        assert impacts == sorted(impacts, reverse=True)


def test_explain_equals_leave_one_out_offline(dot_server, folders) -> None:
    model = load_model(folders["dot"])
    ids = known_ids(folders["dot"], 4)
    ex = client(dot_server).post("/v1/explain", json={"history": ids, "items": [ids[0]], "top": 4}).json()
    tokens, _ = model.vocab.encode_external(ids)
    from segue.data.arrays import SequenceArrays

    full = model.score(SequenceArrays.from_lists([tokens]))[0, tokens[0]]
    for contrib in ex["items"][0]["contributions"]:
        j = contrib["position"]
        without = model.score(SequenceArrays.from_lists([np.delete(tokens, j)]))[0, tokens[0]]
        assert contrib["impact"] == pytest.approx(full - without, rel=1e-4, abs=1e-5)


def test_search_similar_health_metrics_page_docs(dot_server, folders) -> None:
    c = client(dot_server)
    found = c.get("/v1/items/search", params={"q": "basalt ii"}).json()["items"]
    assert found and all(i["creator"] == "Basalt" and i["album"].startswith("Basalt II") for i in found)
    assert c.get("/v1/items/search", params={"q": "no such words"}).json()["items"] == []
    item = found[0]["id"]
    sim = c.get(f"/v1/items/{item}/similar", params={"n": 4}).json()
    assert len(sim["items"]) == 4 and item not in [i["id"] for i in sim["items"]]
    missing = c.get("/v1/items/track:nope/similar")
    assert missing.status_code == 404 and "track:nope" in missing.json()["detail"]

    health = c.get("/healthz").json()
    assert health["status"] == "ok" and health["has_names"] and health["n_items"] > 0
    metrics = c.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'segue_requests_total{method="GET",route="/v1/items/search",status="200"}' in text
    assert 'segue_request_seconds_bucket{route="/v1/items/search",le="+Inf"}' in text
    assert "segue_unknown_item_rate" in text and 'segue_model_info{run_id="dot"' in text

    page = c.get("/")
    assert page.status_code == 200 and "<title>segue</title>" in page.text
    spec = c.get("/openapi.json").json()
    assert {"/v1/recommend", "/v1/continue", "/v1/explain", "/v1/items/search", "/healthz"} <= set(spec["paths"])
    assert c.get("/docs").status_code == 200
    # The store's names were saved into the model folder for later runs without --store.
    assert (folders["dot"] / ITEMS_FILE).exists()


# --- parity: HTTP scores are the offline model's scores ----------------------------------------


@pytest.mark.parametrize("which", ["pop", "dot"])
def test_http_scores_equal_offline_scores(which, folders, pop_server, dot_server) -> None:
    server = pop_server if which == "pop" else dot_server
    model = load_model(folders[which])
    c = client(server)
    rng = np.random.default_rng(0)
    vocab = model.vocab
    for _ in range(4):
        tokens = rng.choice(np.arange(N_SPECIAL, len(vocab)), size=int(rng.integers(1, 8)), replace=False)
        ids = [vocab.external_ids[t] for t in tokens]
        body = c.post("/v1/recommend", json={"history": ids, "n": 10}).json()
        from segue.data.arrays import SequenceArrays

        histories = SequenceArrays.from_lists([tokens])
        offline = model.score(histories)[0]
        served = {i["id"]: i["score"] for i in body["items"]}
        for ext, score in served.items():
            assert score == pytest.approx(float(offline[vocab.encode_external([ext])[0][0]]), rel=1e-5, abs=1e-5)
        # Same ranking as the offline recommend() (exact retrieval on this small catalogue).
        top, _ = model.recommend(histories, 10)
        assert [vocab.external_ids[t] for t in top[0]] == list(served)


def test_hnsw_stage_one_scores_equal_offline(folders) -> None:
    # Force the ANN path on the small catalogue: scores stay the model's, ranking matches exactly.
    config = IndexConfig(kind="hnsw", min_bucket=8, exact_bucket_below=16)
    app = create_app(folders["dot"], index_config=config, use_env_admin_key=False)
    model = load_model(folders["dot"])
    ids = known_ids(folders["dot"], 3)
    with serve_in_thread(app) as server:
        c = client(server)
        assert c.get("/healthz").json()["retrieval"] == "hnsw"
        body = c.post("/v1/recommend", json={"history": ids, "n": 10}).json()
    from segue.data.arrays import SequenceArrays

    histories = SequenceArrays.from_lists([model.vocab.encode_external(ids)[0]])
    top, scores = model.recommend(histories, 10)
    assert [i["id"] for i in body["items"]] == [model.vocab.external_ids[t] for t in top[0]]
    assert np.allclose([i["score"] for i in body["items"]], scores[0], rtol=1e-5, atol=1e-6)


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_is_422_naming_the_field(dot_server) -> None:
    c = client(dot_server)
    cases = [
        ({"history": ["a"], "n": 0}, "n"),
        ({"history": "not a list"}, "history"),
        ({"history": ["a"], "surprise": 1}, "surprise"),
        ({"history": ["x"] * 6000}, "history"),
        ({"history": ["a"], "n": 100000}, "n"),
    ]
    for body, field in cases:
        r = c.post("/v1/recommend", json=body)
        assert r.status_code == 422, body
        assert any(d["loc"][-1] == field for d in r.json()["detail"]), r.json()
    r = c.post("/v1/continue", json={"history": ["a"], "temperature": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "temperature"]
    r = c.post("/v1/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    # a JSON body sent as a form (curl -d without -H) is said to need the JSON content type
    for ctype in ("application/x-www-form-urlencoded", None):
        headers = {"content-type": ctype} if ctype else {}
        r = c.post("/v1/recommend", content=b'{"history": ["track:1"], "n": 3}', headers=headers)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "content-type"], r.json()
        assert "send Content-Type: application/json" in r.json()["detail"][0]["msg"]
    r = c.get("/v1/items/search", params={"q": ""})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "q"]
    # Unknown query parameters are refused as unknown body fields are, not silently ignored.
    r = c.get("/v1/items/search", params={"q": "basalt", "limt": 5})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "limt"]
    r = c.get("/v1/items/track:1/similar", params={"m": 5})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "m"]
    r = c.get("/v1/items/search", params={"q": "basalt", "limit": "1e400"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "limit"]


def test_non_finite_numbers_are_422_naming_the_field(dot_server) -> None:
    # JSON 1e400 parses to inf and NaN to nan: the 422 used to fail to serialise them (a 500).
    c = client(dot_server)
    cases = [
        ("/v1/recommend", b'{"history": ["a"], "n": 1e400}', "n", "inf"),
        ("/v1/recommend", b'{"history": ["a"], "n": NaN}', "n", "nan"),
        ("/v1/recommend", b'{"history": ["a"], "n": -Infinity}', "n", "-inf"),
        ("/v1/continue", b'{"seed": ["a"], "temperature": 1e400}', "temperature", "inf"),
        ("/v1/continue", b'{"history": ["a"], "temperature": NaN}', "temperature", "nan"),
        ("/v1/continue", b'{"history": ["a"], "top_k": 1e400}', "top_k", "inf"),
        ("/v1/continue", b'{"history": ["a"], "random_seed": NaN}', "random_seed", "nan"),
        ("/v1/explain", b'{"history": ["a"], "top": -1e400}', "top", "-inf"),
    ]
    for path, body, field, shown in cases:
        r = c.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (body, r.text)
        detail = r.json()["detail"]
        assert [d["loc"] for d in detail] == [["body", field]], detail
        assert detail[0]["input"] == shown  # rendered as a string, valid JSON
        # Integer fields take whole numbers only (3.0 yes, true no): a non-finite float is none.
        assert detail[0]["type"] in ("finite_number", "int_type", "value_error"), detail


def test_oversized_body_is_413(dot_server) -> None:
    c = client(dot_server)
    big = b'{"history": ["' + b"a" * (2 << 20) + b'"]}'
    r = c.post("/v1/recommend", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"][0]["loc"] == ["body"]
    # A chunked body declares no length: the limit still holds while it is read.
    chunks = (b"a" * 65536 for _ in range(40))
    r = client(dot_server).post("/v1/recommend", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"][0]["msg"]
    # Just under the limit is read and validated as usual (a 422 for the over-long id).
    near = b'{"history": ["' + b"a" * ((1 << 20) - 100) + b'"]}'
    r = client(dot_server).post("/v1/recommend", content=near, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "history", 0]
    assert len(r.content) < 2000  # the 1 MB id is not echoed back whole


def test_values_json_cannot_carry_back_are_4xx(dot_server) -> None:
    c = client(dot_server)
    headers = {"content-type": "application/json", "X-API-Key": ADMIN_KEY}
    cases = [
        # Lone surrogates are valid JSON escapes but not UTF-8: ids are echoed and logged.
        ("/v1/recommend", b'{"history": ["\\ud800"]}', ["body", "history", 0]),
        ("/v1/continue", b'{"history": ["a", "x\\udfff"]}', ["body", "history", 1]),
        ("/v1/explain", b'{"history": ["a"], "items": ["\\ud800"]}', ["body", "items", 0]),
        ("/v1/recommend", b'{"context": {"k": "\\ud800"}}', ["body", "context", "k"]),
        ("/admin/reload", b'{"model": "\\ud800"}', ["body", "model"]),
        # Huge ints, empty and non-object bodies.
        ("/v1/continue", b'{"random_seed": 1' + b"0" * 40 + b"}", ["body", "random_seed"]),
        ("/v1/recommend", b"[]", ["body"]),
        ("/v1/recommend", b"null", ["body"]),
    ]
    for path, body, loc in cases:
        r = c.post(path, content=body, headers=headers)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["detail"][0]["loc"] == loc, r.json()
    # A body that is not UTF-8 is malformed JSON like any other, and says where.
    r = c.post("/v1/recommend", content=b'{"history": ["caf\xe9"]}', headers=headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", 17], r.text
    assert "0xe9" in r.json()["detail"][0]["msg"]
    # An integer past Python's 4300-digit parsing limit is no JSON the server can read: a 422 saying so.
    r = c.post("/v1/recommend", content=b'{"n": ' + b"9" * 5000 + b"}", headers=headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"], r.text
    # A long list over its limit is echoed cut short, not whole.
    r = c.post("/v1/recommend", json={"history": ["x"] * 5001})
    assert r.status_code == 422 and len(r.content) < 3000
    assert r.json()["detail"][0]["input"][-1] == "... 4981 more items"


def test_continue_takes_history_and_seed_is_a_deprecated_alias(dot_server, folders) -> None:
    c = client(dot_server)
    ids = known_ids(folders["dot"], 3)
    new = c.post("/v1/continue", json={"history": ids[:2], "n": 4, "random_seed": 1})
    old = c.post("/v1/continue", json={"seed": ids[:2], "n": 4, "random_seed": 1})
    assert new.status_code == old.status_code == 200
    assert [i["id"] for i in old.json()["items"]] == [i["id"] for i in new.json()["items"]]
    assert old.headers["deprecation"].startswith("@") and "history" in old.headers["warning"]
    assert any("deprecated" in w for w in old.json()["warnings"])
    assert "deprecation" not in new.headers and "warning" not in new.headers
    both = c.post("/v1/continue", json={"history": ids[:1], "seed": ids[1:2]})
    assert both.status_code == 422 and both.json()["detail"][0]["loc"] == ["body", "seed"]
    # The schema documents `seed` (request and answer) as deprecated, `history` as the name.
    schemas = c.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["ContinueRequest"]["properties"]["seed"]["deprecated"] is True
    assert "deprecated" not in schemas["ContinueRequest"]["properties"]["history"]
    assert schemas["ContinueResponse"]["properties"]["seed"]["deprecated"] is True
    assert {"history", "n"} <= set(schemas["RecommendRequest"]["properties"])


def test_metrics_label_docs_and_openapi_by_route(dot_server) -> None:
    c = client(dot_server)
    assert c.get("/docs").status_code == 200 and c.get("/openapi.json").status_code == 200
    assert c.get("/static-offline-docs/swagger-ui.css").status_code == 200
    assert c.get("/redoc").status_code == 404  # not exposed (see create_app)
    c.post("/healthz")  # a known path with the wrong method
    # Refused by the envelope before routing: still counted under their route.
    c.post("/v1/explain", content=b"[" * ((1 << 20) + 1), headers={"content-type": "application/json"})
    c.post("/v1/continue", content=b'{"history": ["\xff"]}', headers={"content-type": "application/json"})
    text = c.get("/metrics").text
    for route, status in [("/docs", 200), ("/openapi.json", 200), ("/static-offline-docs", 200), ("/healthz", 405),
                          ("/v1/explain", 413), ("/v1/continue", 422)]:
        assert f'route="{route}",status="{status}"' in text, route
    assert 'route="<unmatched>",status="404"' in text  # /redoc


def test_unknown_ids_are_warnings_and_empty_history_falls_back(dot_server, folders) -> None:
    c = client(dot_server)
    ids = known_ids(folders["dot"], 2)
    r = c.post("/v1/recommend", json={"history": [ids[0], "track:unknown-1", "zzz"], "n": 3, "deny": ["nope"]})
    assert r.status_code == 200
    w = " ".join(r.json()["warnings"])
    assert "track:unknown-1" in w and "zzz" in w and "<unk>" in w and "nope" in w
    r = c.post("/v1/continue", json={"history": ["only-unknown"], "n": 2})
    assert r.status_code == 200 and len(r.json()["items"]) == 2 and "only-unknown" in " ".join(r.json()["warnings"])
    r = c.post("/v1/recommend", json={"history": [], "n": 4})
    body = r.json()
    assert r.status_code == 200 and body["retrieval"] == "popularity"
    assert any("popularity" in x for x in body["warnings"])
    vocab = load_model(folders["dot"]).vocab
    served_counts = [int(vocab.counts[vocab.encode_external([i["id"]])[0][0]]) for i in body["items"]]
    assert served_counts == sorted(vocab.counts[N_SPECIAL:].tolist(), reverse=True)[:4]
    # Scored log(1 + count), as /v1/rank and /v1/explain score an empty history.
    assert [i["score"] for i in body["items"]] == pytest.approx(np.log1p(served_counts).tolist(), rel=1e-6)
    assert "segue_items_unknown_total" in c.get("/metrics").text


def test_exclusions_allow_and_deny(dot_server, folders) -> None:
    c = client(dot_server)
    ids = known_ids(folders["dot"], 12)
    base = [i["id"] for i in c.post("/v1/recommend", json={"history": ids[:2], "n": 5}).json()["items"]]
    denied = c.post("/v1/recommend", json={"history": ids[:2], "n": 5, "deny": base[:2]}).json()
    assert not set(base[:2]) & {i["id"] for i in denied["items"]}
    allowed = c.post("/v1/recommend", json={"history": ids[:2], "n": 5, "allow": ids[:6]}).json()
    got = [i["id"] for i in allowed["items"]]
    assert set(got) == set(ids[2:6])  # seen items stay excluded
    seen_ok = c.post("/v1/recommend", json={"history": ids[:2], "n": 3, "allow": ids[:2], "exclude_seen": False}).json()
    assert {i["id"] for i in seen_ok["items"]} == set(ids[:2])


# --- admin ---------------------------------------------------------------------------------------


def test_admin_routes_absent_without_a_key(pop_server) -> None:
    c = client(pop_server)
    assert c.post("/admin/reload", headers={"X-API-Key": "anything"}).status_code == 404
    assert "/admin/reload" not in c.get("/openapi.json").json()["paths"]
    assert c.get("/healthz").json()["admin"] is False


def test_admin_key_required_and_reload_swaps(folders) -> None:
    app = create_app(folders["pop"], admin_key=ADMIN_KEY, use_env_admin_key=False)
    with serve_in_thread(app) as server:
        c = client(server)
        assert c.post("/admin/reload").status_code == 401
        assert c.post("/admin/reload", headers={"X-API-Key": "wrong"}).status_code == 403
        assert c.get("/healthz").json()["model"]["family"] == "popularity"
        old = weakref.ref(app.state.segue["engine"])
        r = c.post("/admin/reload", headers={"X-API-Key": ADMIN_KEY}, json={"model": str(folders["dot"])})
        assert r.status_code == 200 and r.json()["model"]["family"] == "dot"
        # The server freezes live objects out of the collector after a reload; the replaced model
        # must still be freed (by reference counting), not kept for good.
        assert old() is None
        assert c.get("/healthz").json()["model"]["family"] == "dot"
        bad = c.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, json={"model": str(folders["root"] / "nothing")})
        assert bad.status_code == 422 and c.get("/healthz").json()["model"]["family"] == "dot"


def test_env_key_mounts_admin(folders, monkeypatch) -> None:
    monkeypatch.setenv("SEGUE_ADMIN_KEY", "from-env")
    app = create_app(folders["pop"])
    with serve_in_thread(app) as server:
        r = client(server).post("/admin/reload", headers={"X-API-Key": "from-env"})
        assert r.status_code == 200


def test_reload_under_concurrent_load_drops_nothing(folders) -> None:
    app = create_app(folders["pop"], admin_key=ADMIN_KEY, use_env_admin_key=False)
    ids = known_ids(folders["pop"], 3)
    failures: list[str] = []
    families: set[str] = set()
    done = threading.Event()
    counts = [0]

    def hammer() -> None:
        with client(server) as c:
            while not done.is_set():
                try:
                    r = c.post("/v1/recommend", json={"history": ids, "n": 5})
                    if r.status_code != 200 or len(r.json()["items"]) != 5:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        families.add(r.json()["model"]["family"])
                        counts[0] += 1
                except httpx.HTTPError as e:
                    failures.append(repr(e))

    with serve_in_thread(app) as server:
        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for t in threads:
            t.start()
        c = client(server)
        for target in ["dot", "pop", "dot", "pop"]:
            time.sleep(0.3)
            r = c.post("/admin/reload", headers={"X-API-Key": ADMIN_KEY}, json={"model": str(folders[target])})
            assert r.status_code == 200
        time.sleep(0.3)
        done.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert counts[0] > 20 and families == {"popularity", "dot"}


def test_model_version_changes_with_the_weights_not_with_a_reload(folders, tmp_path) -> None:
    from segue.serving.engine import Engine

    first = Engine.load(folders["dot"]).info.version
    assert Engine.load(folders["dot"]).info.version == first  # the same folder, loaded again
    # A retrained model: same config and file sizes, other weights.
    model = load_model(folders["dot"])
    model.embeddings = model.embeddings[::-1].copy()
    retrained = Engine.load(model.save(tmp_path / "retrained")).info
    assert retrained.version != first and retrained.family == "dot"


def test_only_exact_search_behind_a_cheap_query_runs_on_the_event_loop(folders) -> None:
    from segue.serving.engine import Engine

    # The dot model's query takes ~30 us, under CHEAP_QUERY_S (0.3 ms) by about 10x.
    assert Engine.load(folders["dot"], index_config=IndexConfig(kind="exact")).cheap_on_loop
    graph = IndexConfig(kind="hnsw", exact_bucket_below=1)
    assert not Engine.load(folders["dot"], index_config=graph).cheap_on_loop
    assert not Engine.load(folders["pop"]).cheap_on_loop  # scored by the model, no index


# --- the feature log --------------------------------------------------------------------------


def test_requests_land_in_the_feature_log(dot_server, folders) -> None:
    from segue.serving.feature_log import FeatureLogSource

    c = client(dot_server)
    ids = known_ids(folders["dot"], 3)
    rid = c.post("/v1/recommend", json={"history": ids, "n": 2}).json()["request_id"]
    source = FeatureLogSource(folders["root"] / "flog")
    events = [ch.events for ch in source.chunks()]
    import pyarrow as pa

    table = pa.concat_tables(events)
    mine = table.filter(pa.compute.equal(table.column("seq_key"), f"request:{rid}"))
    assert mine.column("item_key").to_pylist() == ids


def test_a_loaded_transformer_compiles_nothing_inside_requests(tmp_path, folders) -> None:
    from segue.models.transformer import (
        ModelConfig,
        TransformerConfig,
        TransformerRecommender,
        _query_fn,
    )
    from segue.serving.engine import Engine

    vocab = load_model(folders["pop"]).vocab
    config = TransformerConfig(model=ModelConfig(n_layers=1, n_heads=2, d_model=16, d_ff=32, context_length=20))
    model = TransformerRecommender(config, vocab)
    model.network = model.build(len(vocab))
    engine = Engine.load(model.save(tmp_path / "transformer"))
    jitted = engine.model._compiled[2][_query_fn]
    compiled = jitted._cache_size()
    assert compiled >= 3  # widths 8, 16 and the context 20, for one history
    items = np.arange(N_SPECIAL, len(vocab))
    for n in range(1, 30):  # every history length, past the context
        ranked = engine.rank([items[:n]], 5)[0]
        assert (ranked.tokens >= N_SPECIAL).sum() == 5
    assert jitted._cache_size() == compiled


def test_a_transformer_folder_serves_through_ann_with_offline_scores(tmp_path, folders) -> None:
    # An untrained tiny transformer: serving needs only the folder and the protocol.
    from segue.data.arrays import SequenceArrays
    from segue.models.transformer import ModelConfig, TransformerConfig, TransformerRecommender

    vocab = load_model(folders["pop"]).vocab
    config = TransformerConfig(model=ModelConfig(n_layers=1, n_heads=2, d_model=16, d_ff=32, context_length=6))
    model = TransformerRecommender(config, vocab)
    model.network = model.build(len(vocab))
    folder = model.save(tmp_path / "transformer")
    index_config = IndexConfig(kind="hnsw", min_bucket=8, exact_bucket_below=16)
    app = create_app(folder, index_config=index_config, use_env_admin_key=False)
    ids = known_ids(folders["pop"], 9)
    with serve_in_thread(app) as server:
        c = client(server)
        health = c.get("/healthz").json()
        assert health["retrieval"] == "hnsw" and health["context_length"] == 6
        body = c.post("/v1/recommend", json={"history": ids, "n": 5}).json()
        assert any("kept the last 6" in w for w in body["warnings"])
        cont = c.post("/v1/continue", json={"history": ids[:2], "n": 3, "random_seed": 0}).json()
        assert len(cont["items"]) == 3 and not {i["id"] for i in cont["items"]} & set(ids[:2])
    tokens, _ = vocab.encode_external(ids)
    offline = load_model(folder)
    # The evaluation path: the model crops to its context, every history item is masked as seen.
    top, scores = offline.recommend(SequenceArrays.from_lists([tokens]), 5)
    assert [i["id"] for i in body["items"]] == [vocab.external_ids[t] for t in top[0]]
    assert np.allclose([i["score"] for i in body["items"]], scores[0], rtol=1e-4, atol=1e-5)


def test_a_near_zero_temperature_samples_the_greedy_continuation(folders) -> None:
    import warnings

    from segue.serving.engine import Engine

    engine = Engine.load(folders["dot"])
    seed = np.array([N_SPECIAL, N_SPECIAL + 1])
    greedy, _, _ = engine.continue_(seed, 5, greedy=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the gaps / 5e-324 overflowed (a RuntimeWarning per step)
        cold, probs, _ = engine.continue_(seed, 5, temperature=5e-324, rng=np.random.default_rng(0))
    assert cold == greedy and probs == [1.0] * 5


def test_names_from_another_store_are_refused_and_a_partial_one_keeps_the_saved_names(tmp_path, caplog) -> None:
    """`segue serve --store` with a store the model was not trained on: it had served without a
    name and overwritten the folder's items.parquet with the empty table."""
    import logging

    import pyarrow as pa
    import pyarrow.parquet as pq

    from segue.data.sources.base import Chunk, ListSource
    from segue.data.store import BuildConfig, build_store
    from segue.errors import SegueError
    from segue.serving.catalogue import Catalogue, load_catalogue

    store = named_store(tmp_path / "a.duckdb")
    folder = dot_folder(store, tmp_path / "dot")
    vocab = load_model(folder).vocab
    n = len(vocab) - N_SPECIAL
    assert load_catalogue(folder, vocab, store).found == n  # the training store names every item
    # a store holding only some of the items: a warning, and the saved table is kept
    part = named_store(tmp_path / "b.duckdb", n_items=20)
    caplog.set_level(logging.WARNING, logger="segue.serving")
    got = load_catalogue(folder, vocab, part)
    assert 0 < got.found < n and any(f"of the model's {n} items" in r.getMessage() for r in caplog.records)
    assert Catalogue(vocab, pq.read_table(folder / ITEMS_FILE)).found == n
    # a store with none of them: refused
    events = pa.table({"seq_key": ["u1", "u1", "u2"], "item_key": ["x:1", "x:2", "x:1"], "position": pa.array([0, 1, 0], pa.int32())})
    other = build_store(ListSource([Chunk(events=events)]), tmp_path / "c.duckdb", BuildConfig(seed=0, splits=[]))
    with pytest.raises(SegueError, match=f"c.duckdb: has none of the model's {n} items"):
        load_catalogue(folder, vocab, other)
    assert Catalogue(vocab, pq.read_table(folder / ITEMS_FILE)).found == n
