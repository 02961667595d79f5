"""Shared fixtures. Tests marked `realdata` read ../shared/data and skip only when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEGUE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"{SHARED_DATA} is absent")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory):
    """An httpx client of a served two-stage pipeline (real store, fitted pipeline, real server)."""
    import httpx

    from segue.data.arrays import SplitData
    from segue.data.store import Store
    from segue.models.pipeline import PipelineRecommender
    from segue.serving.app import create_app
    from segue.serving.cli import serve_in_thread
    from test_pipeline import pipeline_config, playlist_store

    root = tmp_path_factory.mktemp("walk-pipe")
    store = playlist_store(root / "store.duckdb")
    with Store.open(store) as s:
        folder = PipelineRecommender(pipeline_config()).fit(SplitData.load(s, "random")).save(root / "pipe")
    app = create_app(folder, store=store, use_env_admin_key=False)
    with serve_in_thread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        yield c
