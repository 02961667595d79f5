"""Walk 2 (s10) serving regressions: whole numbers, one version per folder, explain's list fields,
continue's advice, the supervisor's query strings and its workers' admin-key log."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from segue.data.vocab import N_SPECIAL
from segue.models.base import load_model
from segue.serving.app import create_app
from segue.serving.cli import serve_in_thread
from servinghelp import dot_folder, named_store


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("walk2")
    store = named_store(root / "store.duckdb")
    return {"root": root, "store": store, "dot": dot_folder(store, root / "dot")}


@pytest.fixture(scope="module")
def dot(folders):
    app = create_app(folders["dot"], store=folders["store"], use_env_admin_key=False)
    with serve_in_thread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        yield c


def ids_of(folder: Path, n: int, start: int = 0) -> list[str]:
    vocab = load_model(folder).vocab
    return [vocab.external_ids[t] for t in range(N_SPECIAL + start, N_SPECIAL + start + n)]


def test_integral_json_numbers_are_whole_numbers(dot, folders) -> None:
    # R3: strict ints refused 3.0 (JSON's number 3, as float-serialising clients send it;
    # httpx writes Python's 3.0 as 3.0).
    h = ids_of(folders["dot"], 2)
    r = dot.post("/v1/recommend", json={"history": h, "n": 3.0})
    assert r.status_code == 200 and len(r.json()["items"]) == 3, r.text
    for extra in ({"ts": 1700000000.0}, {"timestamps": [1700000000.0, 1700000001]}):
        r = dot.post("/v1/recommend", json={"history": h, "n": 2, **extra})
        assert r.status_code == 200, (extra, r.text)
    a = dot.post("/v1/continue", json={"history": h, "n": 3, "random_seed": 7.0, "top_k": 5.0})
    b = dot.post("/v1/continue", json={"history": h, "n": 3, "random_seed": 7, "top_k": 5})
    assert a.status_code == 200 and [i["id"] for i in a.json()["items"]] == [i["id"] for i in b.json()["items"]]
    r = dot.post("/v1/explain", json={"history": h, "n": 2.0, "top": 1.0})
    assert r.status_code == 200 and len(r.json()["items"]) == 2, r.text


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/v1/recommend", "n", 3.5),
        ("/v1/recommend", "n", True),
        ("/v1/recommend", "n", "3"),
        ("/v1/recommend", "ts", 1700000000.5),
        ("/v1/continue", "random_seed", 7.25),
        ("/v1/explain", "n", 2.5),
    ],
)
def test_fractions_booleans_and_strings_are_still_no_whole_numbers(dot, folders, path, field, value) -> None:
    r = dot.post(path, json={"history": ids_of(folders["dot"], 1), field: value})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", field], r.text
    if isinstance(value, float):
        assert "whole number" in r.json()["detail"][0]["msg"]


def test_a_folders_version_ignores_what_servers_write_into_it(folders) -> None:
    # R1: two workers on one folder reported two versions: each worker's catalogue save holds a
    # temporary `.items.parquet.tmp-PID` in the folder, which the other worker's start-up hashed.
    from segue.serving.engine import _folder_version

    folder = folders["dot"]
    before = _folder_version(folder, "dot")
    tmp = folder / ".items.parquet.tmp-99999"
    tmp.write_bytes(b"half a parquet file")
    old = folder / ".weights.old-99999"
    old.mkdir()
    (old / "w.npy").write_bytes(b"x")
    try:
        assert _folder_version(folder, "dot") == before
    finally:
        tmp.unlink()
        (old / "w.npy").unlink()
        old.rmdir()
    # The model's own files still count: a changed state file is a new version.
    state = next(p for p in sorted(folder.iterdir()) if p.is_file() and p.name not in ("model.toml", "vocab.json", "items.parquet"))
    data = state.read_bytes()
    state.write_bytes(data + b"\0")
    try:
        assert _folder_version(folder, "dot") != before
    finally:
        state.write_bytes(data)


def test_explain_takes_recommends_list_fields_and_explains_the_served_list(dot, folders) -> None:
    # R7: exclude/deny/allow/exclude_seen/name were extra_forbidden, so explain's default top n
    # was not the list /v1/recommend served.
    ids = ids_of(folders["dot"], 12)
    history = ids[:2]
    top = [i["id"] for i in dot.post("/v1/recommend", json={"history": history, "n": 3}).json()["items"]]
    bodies = [
        {"deny": [top[0]]},
        {"exclude": top[:2]},
        {"allow": ids[1:8]},
        {"exclude_seen": False},
        {"deny": [top[1]], "exclude_seen": False, "allow": ids[:10]},
    ]
    for extra in bodies:
        body = {"history": history, "n": 3, **extra}
        served = dot.post("/v1/recommend", json=body).json()["items"]
        r = dot.post("/v1/explain", json=body)
        assert r.status_code == 200, (extra, r.text)
        got = r.json()["items"]
        assert [i["id"] for i in got] == [i["id"] for i in served], extra
        assert [i["score"] for i in got] == pytest.approx([i["score"] for i in served], rel=1e-5, abs=1e-6)
    assert [i["id"] for i in dot.post("/v1/explain", json={"history": history, "n": 3, "deny": [top[0]]}).json()["items"]] != top
    # A name the model does not read: accepted and said, as /v1/recommend says it.
    r = dot.post("/v1/explain", json={"history": history, "n": 1, "name": "river"}).json()
    assert any("does not read playlist names" in w for w in r["warnings"]), r["warnings"]
    # Still refused as in /v1/recommend: a non-bool exclude_seen, an unknown field.
    assert dot.post("/v1/explain", json={"history": history, "exclude_seen": 0}).status_code == 422
    assert dot.post("/v1/explain", json={"history": history, "denied": [top[0]]}).status_code == 422


def test_a_pipeline_explains_the_list_a_name_served(pipe) -> None:
    # R7, pipelines: `name` shapes the candidate pool, so explain without it scored other items.
    for body in ({"history": ["t1"], "name": "aurora", "n": 4}, {"history": ["t1", "t2"], "name": "aurora", "n": 4, "deny": ["t3"]}):
        served = pipe.post("/v1/recommend", json=body).json()["items"]
        r = pipe.post("/v1/explain", json=body)
        assert r.status_code == 200, r.text
        got = r.json()["items"]
        assert [i["id"] for i in got] == [i["id"] for i in served]
        assert [i["score"] for i in got] == pytest.approx([i["score"] for i in served], rel=1e-5, abs=1e-6)


def test_a_pipeline_explains_the_served_scores_with_seen_items_and_for_a_named_empty_history(pipe) -> None:
    # exclude_seen = false lets the history's items into the pools, and a name shapes an empty
    # history's pool: explain scored both with the default pool, so its scores were not the served ones.
    t1_pool = {"history": ["t1", "t2"], "exclude_seen": False, "n": 60}
    served = pipe.post("/v1/recommend", json=t1_pool).json()["items"]
    assert {"t1", "t2"} & {i["id"] for i in served}, served  # a seen item is served: the case at hand
    for body in (t1_pool, {"history": [], "name": "aurora", "n": 4}):
        served = pipe.post("/v1/recommend", json=body).json()["items"]
        got = pipe.post("/v1/explain", json=body).json()["items"]
        assert [i["id"] for i in got] == [i["id"] for i in served]
        assert all(i["score"] is not None for i in got), got
        assert [i["score"] for i in got] == pytest.approx([i["score"] for i in served], rel=1e-5, abs=1e-6)


def test_continue_on_a_ratings_only_model_gives_no_advice_it_cannot_follow(tmp_path: Path) -> None:
    # R8: /v1/continue said "give `ratings`", which /v1/continue refuses (extra_forbidden).
    from test_serving_profiles import fit_biasedmf, rated_store

    store = rated_store(tmp_path / "store.duckdb")
    app = create_app(fit_biasedmf(store, tmp_path / "bmf"), store=store, use_env_admin_key=False)
    with serve_in_thread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        body = {"history": ["a1", "a2", "a3"], "n": 2, "greedy": True}
        r = c.post("/v1/continue", json=body).json()
        said = [w for w in r["warnings"] if "reads only rated items" in w]
        assert said and "give `ratings`" not in said[0] and "takes no ratings" in said[0], r["warnings"]
        assert c.post("/v1/continue", json={**body, "ratings": [5, 4, 5]}).status_code == 422
        # The routes that take ratings keep the advice.
        r = c.post("/v1/recommend", json={"history": body["history"], "n": 2}).json()
        assert any("give `ratings`" in w for w in r["warnings"]), r["warnings"]


def test_the_supervisors_admin_port_names_a_query_string_as_one_worker_does(folders) -> None:
    # R9: the supervisor compared the raw path (query included) with its routes: a 404 "not found"
    # for /admin/reload?model=..., where one worker answers a 422 naming the parameter.
    import socket

    from segue.serving.workers import AdminServer, ServeSettings, Supervisor

    key = {"X-API-Key": "k", "Content-Type": "application/json"}
    one = create_app(folders["dot"], store=folders["store"], admin_key="k", use_env_admin_key=False)
    with serve_in_thread(one) as s:
        want = httpx.post(f"{s.url}/admin/reload?model=/tmp/m", headers=key, content=b"{}")
    assert want.status_code == 422
    sock = socket.socket()
    sup = Supervisor(ServeSettings(model=folders["dot"]), sock, 2, 5.0)
    server = AdminServer(sup, "127.0.0.1", 0, "k")
    server.start()
    url = f"http://127.0.0.1:{server.httpd.server_port}"
    try:
        got = httpx.post(f"{url}/admin/reload?model=/tmp/m", headers=key, content=b"{}")
        assert got.status_code == 422 and got.json()["detail"] == want.json()["detail"], got.text
        assert sup.reloads.empty()  # refused before any worker moves
        r = httpx.get(f"{url}/admin/workers?x=1", headers=key)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "x"], r.text
        assert "'x'" in r.json()["detail"][0]["msg"]
        assert httpx.get(f"{url}/admin/workers?", headers=key).status_code == 200  # `?` alone is no query
        assert httpx.get(f"{url}/admin/other?x=1", headers=key).status_code == 404
    finally:
        server.close()
        sock.close()


def test_a_supervisors_worker_does_not_say_the_admin_key_is_unset(folders, monkeypatch, caplog) -> None:
    # R2: with SEGUE_ADMIN_KEY set and several workers, each worker (built with admin=False: the
    # supervisor keeps /admin/reload) logged "SEGUE_ADMIN_KEY is not set".
    import logging

    from segue.serving.workers import ServeSettings, build_app

    monkeypatch.setenv("SEGUE_ADMIN_KEY", "k")
    with caplog.at_level(logging.WARNING, logger="segue"):
        build_app(ServeSettings(model=folders["dot"], store=folders["store"], admin=False))
    assert not any("SEGUE_ADMIN_KEY is not set" in r.getMessage() for r in caplog.records), caplog.text
    # A server that looked for the key and found none still says so.
    monkeypatch.delenv("SEGUE_ADMIN_KEY")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="segue"):
        create_app(folders["dot"], store=folders["store"])
    assert any("SEGUE_ADMIN_KEY is not set" in r.getMessage() for r in caplog.records), caplog.text
