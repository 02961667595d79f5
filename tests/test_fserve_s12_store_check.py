"""`segue serve --store` of another store than the model's training one is named as such, not
served silently with another corpus's names where ids overlap (walk s12 serve F4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from segue.data.store import Store
from segue.models.base import read_model_header
from servinghelp import dot_folder, free_port, kill_tree, named_store, start_serve


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fserve-store")
    store = named_store(root / "store.duckdb")
    other = named_store(root / "other.duckdb", seed=5)  # the same ids, other playlists
    model = dot_folder(store, root / "dot")
    with Store.open(store) as s:  # as segue train records it
        (model / "store_checksum.txt").write_text(s.checksum + "\n")
    return {"store": store, "other": other, "model": model}


def test_store_mismatch_names_both_checksums_and_the_training_store_passes(setup) -> None:
    from segue.serving.cli import store_mismatch

    model = setup["model"]
    header = read_model_header(model)
    assert store_mismatch(model, header, setup["store"]) is None
    said = store_mismatch(model, header, setup["other"])
    assert said is not None and "is not the store" in said and "store_checksum.txt" in said, said
    with Store.open(setup["other"]) as s:
        assert s.checksum[:12] in said


def test_segue_serve_warns_before_serving_with_another_store(setup, tmp_path, monkeypatch) -> None:
    # The run stops at a refused option right after the store check: the warning is on stderr.
    monkeypatch.setenv("SEGUE_ADMIN_KEY", "k")
    port = free_port()
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    proc = start_serve(["--model", str(setup["model"]), "--store", str(setup["other"]), "--port", str(port),
                        "--workers", "2", "--admin-port", str(port), "--no-feature-log"], out, err)
    try:
        assert proc.wait(120) == 2, err.read_text()[-2000:]
    finally:
        kill_tree(proc)
    text = " ".join(err.read_text().split())
    assert "warning: --store" in text and "is not the store" in text, text[-2000:]
