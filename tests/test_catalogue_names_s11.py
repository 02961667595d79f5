"""A training run served without --store shows its items' names: the server read names only from
items.parquet (which `segue serve --store` writes), so production served ids as names unless an
earlier, unrelated serve had run with --store, while `segue continue` printed the run's names."""

from __future__ import annotations

from pathlib import Path

import httpx

from segue.data.store import Store
from segue.models.base import load_model
from segue.serving.app import create_app
from segue.serving.catalogue import ITEMS_FILE, load_catalogue
from segue.serving.cli import serve_in_thread
from segue.training.continuation import ITEM_NAMES_FILE, save_item_names
from servinghelp import named_store, popularity_folder


def test_a_run_served_without_store_names_its_items_from_item_names_json(tmp_path: Path) -> None:
    store = named_store(tmp_path / "s.duckdb")
    folder = popularity_folder(store, tmp_path / "pop")
    model = load_model(folder)
    with Store.open(store) as s:
        save_item_names(s, model.vocab, folder / ITEM_NAMES_FILE)  # what segue train writes
        want = dict(s.con.execute("SELECT external_id, name FROM items").fetchall())
    assert not (folder / ITEMS_FILE).exists()
    cat = load_catalogue(folder, model.vocab)
    assert cat.found == len(model.vocab) - 4
    app = create_app(folder, admin_key=None, use_env_admin_key=False)
    with serve_in_thread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.get("/healthz").json()["has_names"] is True
        items = c.post("/v1/recommend", json={"history": [], "n": 5}).json()["items"]
        assert items and all(i["name"] == want[i["id"]] and i["name"] != i["id"] for i in items), items
    assert not (folder / ITEMS_FILE).exists()  # nothing written into the run folder
