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
