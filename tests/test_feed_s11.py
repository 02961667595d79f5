"""Items added to a run with `segue items add`: every reader of the run knows them (the server,
`segue export`, `segue continue`), and a model whose vocabulary holds them already counts them once."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from segue.cli import app
from segue.data.arrays import SequenceArrays
from segue.data.item_features import raw_features
from segue.data.store import Store
from segue.models.base import load_model
from segue.serving.items import add_items, apply_added_items
from test_cold_start import mixed, store  # noqa: F401  (module-scoped fixtures: a store, a run with item features)


def _run_with_added(mixed: Path, tmp_path: Path, ids: list[str]) -> Path:  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(mixed, run)
    p = tmp_path / "new.parquet"
    pq.write_table(pa.table({"item": ids, "name": [f"Fresh {i}" for i in ids], "artist": ["A"] * len(ids),
                             "album": ["A album 0"] * len(ids)}), p)
    assert add_items(run, p)["added"] == len(ids)
    return run


def test_applied_added_items_are_counted_once(mixed: Path, tmp_path: Path) -> None:  # noqa: F811
    """apply_added_items extends model.vocab with the added items: a second call, a later
    add_items and the check of history tokens must not count them again."""
    run = _run_with_added(mixed, tmp_path, ["x1", "x2"])
    v = len(load_model(mixed).vocab)
    m = load_model(run)
    assert apply_added_items(m, run) == [v, v + 1] and len(m.vocab) == v + 2
    assert apply_added_items(m, run) == [v, v + 1] and len(m.vocab) == v + 2  # nothing added twice
    assert len(m.extended_vocab()) == v + 2 and m.base_vocab().external_ids == load_model(mixed).vocab.external_ids
    # a further item takes the next token, V + 2 (it was handed V + 4)
    raw = raw_features(m.item_features.names, [{"external_id": "x3", "creator": "A", "album": "A album 0"}])
    assert m.add_items(["x3"], raw).tolist() == [v + 2]
    ext = m.extended_vocab()
    assert len(ext) == v + 3 and ext.external_ids[v:] == ["x1", "x2", "x3"]
    # a token past V + 3 is skipped as unknown (it was read as the table's last row)
    a = int(m.vocab.encode_external(["i0"])[0][0])
    s = m.score(SequenceArrays.from_lists([[a, v + 3], [a]]))
    assert s.shape[1] == v + 3
    np.testing.assert_allclose(s[0], s[1], rtol=1e-5, atol=1e-6)


def test_export_holds_the_added_items_as_served(store: Path, mixed: Path, tmp_path: Path) -> None:  # noqa: F811
    from segue.serving.export import export_vectors, read_export, user_histories

    run = _run_with_added(mixed, tmp_path, ["fresh-X"])
    out = tmp_path / "exp"
    res = CliRunner().invoke(app, ["export", str(run), "-o", str(out), "--store", str(store), "--split", "temporal"])
    assert res.exit_code == 0, res.output
    assert "1 of them added with segue items add" in " ".join(res.output.split())
    tt = read_export(out)
    assert "fresh-X" in tt.item_ids and tt.meta["n_added_items"] == 1
    feats_only = pq.read_table(out / "items.parquet").column("features_only").to_pylist()
    assert [i for i, f in zip(tt.item_ids, feats_only, strict=True) if f] == ["fresh-X"]
    # the dot products are the scores of the served model (the added items applied) for every item
    served = load_model(run)
    apply_added_items(served, run)
    with Store.open(store) as st:
        hist, _ = user_histories(st, "temporal", "all", served.base_vocab())
        rows = tt.user_seq_ids[:10]
        np.testing.assert_allclose(tt.users[:10] @ tt.items.T, served.score(hist, rows)[:, tt.item_tokens], rtol=1e-4, atol=1e-4)
        # the library path exports such a model (it blamed "another store")
        meta = export_vectors(served, st, "temporal", tmp_path / "exp2")
    assert meta["n_added_items"] == 1 and meta["n_items"] == tt.meta["n_items"]


def test_continue_knows_the_added_items_as_the_server_does(mixed: Path, tmp_path: Path) -> None:  # noqa: F811
    from segue.serving.engine import Engine

    run = _run_with_added(mixed, tmp_path, ["fresh-Y"])
    res = CliRunner().invoke(app, ["continue", "--model", str(run), "--seed", "fresh-Y", "--seed", "i0", "-n", "3", "--greedy"])
    assert res.exit_code == 0, res.output
    assert "unknown seed" not in res.output
    cli_ids = re.findall(r"^\s*\d+\. .*?\(?([\w-]+)\)?\s+p=", res.output, flags=re.M)
    engine = Engine.load(run)
    picks, _, _ = engine.continue_(engine.vocab.encode_external(["fresh-Y", "i0"])[0], 3, greedy=True)
    assert cli_ids == [engine.vocab.external_id(t) for t in picks]
    # the added item is a candidate too, named from items_added.parquet
    res = CliRunner().invoke(app, ["continue", "--model", str(run), "--seed", "i0", "-n", "500", "--greedy"])
    assert res.exit_code == 0, res.output
    assert "Fresh fresh-Y — A (fresh-Y)" in res.output


def test_items_add_shows_the_form_of_the_values_the_run_knows(mixed: Path, tmp_path: Path) -> None:  # noqa: F811
    """An unseen artist (on MPD stores: a name where the run keeps artist keys) is said with a value
    the run knows, so the mismatch of forms shows."""
    run = tmp_path / "run"
    shutil.copytree(mixed, run)
    p = tmp_path / "new.parquet"
    pq.write_table(pa.table({"item": ["n1"], "name": ["N1"], "artist": ["Nobody Known"], "album": ["A album 0"]}), p)
    res = CliRunner().invoke(app, ["items", "add", str(run), str(p)])
    out = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    known = load_model(mixed).item_features.vocabs["artist"].values[0]
    assert "items with only unseen values: artist 1, composed as the feature's <unk>" in out, out
    assert f"artist values are like '{known}'" in out and "artist_key / creator_key first" in out, out


def test_export_of_a_part_holds_the_sequences_that_part_scores(tmp_path: Path) -> None:
    """--part test exports the users with test targets and a history before them (as evaluation
    scores them), says how many were left out, and refuses a split that holds out whole sequences."""
    from datahelp import make_store
    from segue.data.arrays import SplitData
    from segue.errors import ConfigError
    from segue.models.transformer import TransformerConfig, TransformerRecommender
    from segue.serving.export import export_vectors, read_export

    rng = np.random.default_rng(0)
    seqs, ts = [], []
    for s in range(40):
        seqs.append([int(x) for x in rng.integers(0, 20, 6)])
        # a third of the users stop before the cuts (no targets); u1, u4: everything after them (no history)
        times = [10, 20, 30, 40, 50, 60] if s % 3 == 0 else [10, 20, 30, 40, 150, 250]
        ts.append([300, 310, 320, 330, 340, 350] if s in (1, 4) else times)
    st_path = make_store(tmp_path / "s.duckdb", seqs, [{"kind": "temporal", "name": "t", "valid_cut": 100, "test_cut": 200},
                                                        {"kind": "random_sequence", "name": "rs"}], ts=ts)
    cfg = TransformerConfig.from_dict({"model": {"n_layers": 1, "n_heads": 2, "d_model": 8, "d_ff": 16, "context_length": 8}})
    with Store.open(st_path) as st:
        for split, part in (("t", "test"), ("rs", "valid")):
            rec = TransformerRecommender(cfg)
            rec.vocab = SplitData.load(st, split).vocab
            rec.network = rec.build(len(rec.vocab))
            if split == "rs":  # held-out playlists have no history before their part
                with pytest.raises(ConfigError, match="holds out whole sequences"):
                    export_vectors(rec, st, split, tmp_path / "rs", part=part)
                assert not (tmp_path / "rs").exists()
                continue
            meta = export_vectors(rec, st, split, tmp_path / "t", part=part)
            rec.save(tmp_path / "m")
            keys = dict(st.con.execute("SELECT seq_id, external_id FROM sequences").fetchall())
    want = {f"u{s}" for s in range(40) if s % 3 and s not in (1, 4)}
    tt = read_export(tmp_path / "t")
    assert {keys[int(r)] for r in tt.user_seq_ids} == want and set(tt.user_ids) == want
    assert meta["n_users"] == len(want) and meta["n_with_targets"] == len(want) + 2 and meta["n_without_history"] == 2
    res = CliRunner().invoke(app, ["export", str(tmp_path / "m"), "-o", str(tmp_path / "c"), "--store", str(st_path), "--split", "t", "--part", "test"])
    assert res.exit_code == 0, res.output
    assert f"{len(want)} user vectors" in res.output and "(2 of 26 left out: no history before them)" in " ".join(res.output.split())


def test_a_model_with_applied_items_saves_a_folder_that_loads(mixed: Path, tmp_path: Path) -> None:  # noqa: F811
    # save() wrote the extended vocab.json beside weights sized for the training vocabulary: the
    # folder no longer loaded
    run = _run_with_added(mixed, tmp_path, ["x1"])
    m = load_model(run)
    apply_added_items(m, run)
    folder = m.save(tmp_path / "saved")
    back = load_model(folder)
    assert back.vocab.external_ids == load_model(mixed).vocab.external_ids
    h = SequenceArrays.from_lists([[int(back.vocab.encode_external(["i0"])[0][0])]])
    np.testing.assert_allclose(back.score(h), load_model(run).score(h), rtol=1e-5, atol=1e-6)


def test_a_run_with_added_items_served_without_store_names_all_its_items(store: Path, mixed: Path, tmp_path: Path) -> None:  # noqa: F811
    # item_names.json holds the training vocabulary's names; the served vocabulary also holds the
    # added items, and the server refused the file as the wrong length (the demo's items step)
    import httpx

    from segue.serving.app import create_app
    from segue.serving.catalogue import ITEMS_FILE
    from segue.serving.cli import serve_in_thread
    from segue.training.continuation import save_item_names

    run = _run_with_added(mixed, tmp_path, ["fresh-1"])
    (run / ITEMS_FILE).unlink(missing_ok=True)
    with Store.open(store) as s:  # what segue train writes: the training vocabulary's names
        save_item_names(s, load_model(mixed).vocab, run / "item_names.json")
    app = create_app(run, admin_key=None, use_env_admin_key=False)
    with serve_in_thread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.get("/healthz").json()["has_names"] is True
        found = c.get("/v1/items/search", params={"q": "Fresh"}).json()
        assert any(i["id"] == "fresh-1" and i["name"] == "Fresh fresh-1" for i in found["items"]), found
