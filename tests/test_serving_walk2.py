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
