"""Two-tower export: the exported vectors reproduce the model's scores, and an ANN index over them
retrieves the model's own top 100 (recall@100 >= 0.95)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rankhelp import feedback_store, untrained
from segue.cli import app
from segue.data.arrays import compile_split
from segue.data.splits import Part
from segue.data.store import Store
from segue.data.vocab import N_SPECIAL
from segue.errors import SegueError
from segue.models.base import top_k
from segue.models.popularity import Popularity
from segue.serving.export import export_vectors, read_export
from segue.serving.index import HNSWIndex, IndexConfig, recall_at_k

K = 100


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("export")
    store = feedback_store(root / "s.duckdb")
    rec = untrained(store)
    return store, rec.save(root / "model"), rec


def test_ann_over_exported_vectors_returns_the_models_top_k(trained, tmp_path: Path) -> None:
    store, _, rec = trained
    with Store.open(store) as st:
        meta = export_vectors(rec, st, "loo", tmp_path / "tt", part="test")
        hist = compile_split(st, "loo", (0, 1, 4), vocab=rec.vocab)
        nxt = compile_split(st, "loo", (int(Part.TEST),), vocab=rec.vocab)
    tt = read_export(tmp_path / "tt")
    assert meta["part"] == "test" and tt.meta == meta and tt.items.shape == (len(rec.vocab) - N_SPECIAL, 16)
    assert len(tt.item_ids) == len(tt.items) and tt.item_ids[0] == rec.vocab.external_ids[N_SPECIAL]
    assert len(tt.items) > 2 * K  # the top 100 is a real choice
    # user vectors are the next-item head's queries, with the first target's context
    rows = tt.user_seq_ids
    assert len(rows) == len(hist.nonempty()) and tt.user_ids[0].startswith("u")
    model = rec.score(hist, rows, next_events=nxt)
    dots = tt.users @ tt.items.T
    np.testing.assert_allclose(dots, model[:, N_SPECIAL:], rtol=1e-4, atol=1e-4)
    # the context of the event to predict matters: without it the model scores otherwise
    assert not np.allclose(rec.score(hist, rows), model, atol=1e-3)
    truth, _ = top_k(model, K)
    config = IndexConfig(kind="hnsw", buckets=3, min_bucket=40, exact_bucket_below=0, expansion_search=200, threads=1)
    index = tt.index(config)
    assert isinstance(index, HNSWIndex) and all(g is not None for g in index.graphs)  # really graphs
    got, _ = index.search(tt.users, K)
    recall = recall_at_k(got, truth)
    print(f"recall@{K} of HNSW over the exported vectors against the model's top {K}: {recall:.4f}")
    assert recall >= 0.95, recall


def test_export_command_writes_all_sequences_atomically(trained, tmp_path: Path) -> None:
    store, folder, rec = trained
    out = tmp_path / "vectors"
    res = CliRunner().invoke(app, ["export", str(folder), "--store", str(store), "--split", "loo", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "item vectors" in res.output and not list(tmp_path.glob(".vectors*"))
    users = pq.read_table(out / "users.parquet")
    with Store.open(store) as st:
        every = compile_split(st, "loo", tuple(int(p) for p in Part), vocab=rec.vocab)
    assert users.num_rows == len(every.nonempty())
    assert users.column("n_events").to_pylist() == every.lengths[every.nonempty()].tolist()
    tt = read_export(out)
    want = rec.query_embeddings(every, tt.user_seq_ids[:5])
    np.testing.assert_allclose(tt.users[:5], want, rtol=1e-5, atol=1e-6)
    # errors are one line naming what is wrong
    res = CliRunner().invoke(app, ["export", str(folder), "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "pass --store" in res.output
    res = CliRunner().invoke(app, ["export", str(folder), "--store", str(store), "--split", "loo", "--part", "later", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--part 'later'" in res.output and not (tmp_path / "x").exists()


def test_a_model_without_two_towers_is_refused(trained, tmp_path: Path) -> None:
    from segue.data.arrays import SplitData

    store = trained[0]
    with Store.open(store) as st:
        pop = Popularity().fit(SplitData.load(st, "loo"))
        with pytest.raises(SegueError, match="popularity model has no two towers"):
            export_vectors(pop, st, "loo", tmp_path / "p")
    assert not (tmp_path / "p").exists()
    # segue export on a baseline's folder says so at once; it first asked for --split, which
    # could not help
    pop.save(tmp_path / "pop")
    res = CliRunner().invoke(app, ["export", str(tmp_path / "pop"), "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "popularity model has no two towers" in res.output and "--split" not in res.output, res.output


def test_demo_rank_step_exports_and_ranks_retrieved_candidates(trained, tmp_path: Path, capsys) -> None:
    import shutil

    from segue.demo import DemoOptions, run_demo

    store, folder, _ = trained
    shutil.copy(store, tmp_path / "store.duckdb")
    shutil.copytree(folder, tmp_path / "runs" / "transformer")
    run_demo(DemoOptions(workdir=tmp_path, steps=["rank"], serve=False))
    out = capsys.readouterr().out
    assert "20 candidates retrieved from the vectors, ranked" in out
    assert read_export(tmp_path / "vectors").meta["part"] == "all"
