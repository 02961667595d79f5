"""The evaluator end to end on a real store: batching, alignment, vocabulary checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evalhelp import FnModel, eval_store, random_model
from segue.data.arrays import SplitData
from segue.data.store import Store
from segue.errors import SegueError
from segue.evaluation.evaluator import auto_batch_size, evaluate, mask_rows, top_k_rows
from segue.evaluation.protocols import ProtocolConfig, build_task
from segue.models.popularity import Popularity


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return eval_store(tmp_path_factory.mktemp("evaluator") / "e.duckdb", n_seq=150)


@pytest.fixture(scope="module")
def fitted(store_path: Path) -> dict:
    with Store.open(store_path) as s:
        data = SplitData.load(s, "loo")
        return {"popularity": Popularity().fit(data), "random": random_model(data.vocab)}


def test_top_k_rows_matches_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    s = rng.standard_normal((9, 300)).astype(np.float32)
    s[3, :295] = -np.inf  # only 5 candidates in this row
    tokens, top = top_k_rows(s.copy(), 10)
    full = np.argsort(-s, axis=1, kind="stable")[:, :10]
    for b in range(9):
        if b == 3:
            assert tokens[b, :5].tolist() == full[b, :5].tolist() and (tokens[b, 5:] == -1).all()
        else:
            assert tokens[b].tolist() == full[b].tolist()
            np.testing.assert_array_equal(top[b], s[b, full[b]])


def test_mask_rows() -> None:
    from segue.data.arrays import SequenceArrays

    h = SequenceArrays.from_lists([[5, 6], [], [7, 5, 7]])
    s = np.zeros((2, 10), np.float32)
    mask_rows(s, h, np.array([2, 0]))
    assert np.isneginf(s[0]).nonzero()[0].tolist() == [5, 7]
    assert np.isneginf(s[1]).nonzero()[0].tolist() == [5, 6]
    assert auto_batch_size(100_000) == (256 << 20) // 400_000


def test_evaluate_aligned_per_user_values_and_batch_invariance(store_path: Path, fitted: dict) -> None:
    r1 = evaluate(fitted, store_path, "loo", "leave_last_out", ks=[1, 5, 10], batch_size=7)
    r2 = evaluate(fitted, store_path, None, ProtocolConfig(name="loo"), ks=[10, 5, 1])
    assert r1.ks == (1, 5, 10) == r2.ks and r1.split == r2.split == "loo"
    q = len(r1.seq_ids)
    for name in fitted:
        for key, v in r1.models[name].per_user.items():
            assert v.shape == (q,)
            np.testing.assert_array_equal(v, r2.models[name].per_user[key])
    s = r1.summary()
    # hit rate grows with K; popularity beats random on a popularity-skewed corpus
    assert s["popularity"]["hr@1"] <= s["popularity"]["hr@5"] <= s["popularity"]["hr@10"]
    assert s["popularity"]["ndcg@10"] > s["random"]["ndcg@10"]
    # popularity recommends the same few items to everybody: low coverage, high popularity percentile
    assert s["popularity"]["coverage@10"] < s["random"]["coverage@10"]
    assert s["popularity"]["poppct@10"] > 80 > s["random"]["poppct@10"]
    assert r1.store_checksum and r1.split_info["kind"] == "leave_last_out"


def test_ks_beyond_the_catalogue(store_path: Path, fitted: dict) -> None:
    res = evaluate({"popularity": fitted["popularity"]}, store_path, "loo", ks=[10, 1000])
    s = res.summary()["popularity"]
    assert s["hr@1000"] >= s["hr@10"]
    assert s["coverage@1000"] <= 1.0


def test_model_of_another_split_is_refused(store_path: Path, fitted: dict) -> None:
    with pytest.raises(SegueError, match="fitted on split 'loo'.*'temporal'"):
        evaluate({"popularity": fitted["popularity"]}, store_path, "temporal", "temporal")


def test_model_of_the_same_split_name_in_another_store_is_refused(fitted: dict, tmp_path: Path) -> None:
    other = eval_store(tmp_path / "other.duckdb", n_seq=90, n_items=25, seed=7)
    with pytest.raises(SegueError, match="fitted on split 'loo' of another store .* evaluate it on the store and split"):
        evaluate({"popularity": fitted["popularity"]}, other, "loo", "leave_last_out")


def test_bad_model_output_is_reported(store_path: Path, fitted: dict) -> None:
    vocab = fitted["popularity"].vocab
    with Store.open(store_path) as s:
        task = build_task(SplitData.load(s, "loo"), "leave_last_out")
    from segue.evaluation.evaluator import rank_task

    wrong = FnModel(vocab, lambda h, rows: np.zeros((len(rows), 3), np.float32))
    with pytest.raises(SegueError, match="shape"):
        rank_task("wrong", wrong, task, 10)
    nan = FnModel(vocab, lambda h, rows: np.full((len(rows), len(vocab)), np.nan, np.float32))
    with pytest.raises(SegueError, match="NaN"):
        rank_task("nan", nan, task, 10)


@pytest.mark.realdata
@pytest.mark.slow
def test_ml100k_random_holdout_against_ranx(shared_data: Path, tmp_path: Path) -> None:
    """Real ranked lists (popularity, and EASE when present) re-scored by ranx on ml-100k."""
    import contextlib

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as csv

    from segue.data.sources.base import Chunk, ListSource
    from segue.data.store import BuildConfig, build_store
    from segue.evaluation import metrics as M
    from segue.evaluation.protocols import resolve_split
    from segue.models.base import model_class

    t = csv.read_csv(
        shared_data / "ml-100k" / "u.data",
        read_options=csv.ReadOptions(column_names=["u", "i", "r", "ts"]),
        parse_options=csv.ParseOptions(delimiter="\t"),
    )
    events = pa.table({"seq_key": pc.cast(t["u"], pa.string()), "item_key": pc.cast(t["i"], pa.string()), "ts": t["ts"]})
    path = build_store(ListSource([Chunk(events=events)]), tmp_path / "ml.duckdb", BuildConfig(splits=[{"kind": "leave_last_out"}]))
    split = resolve_split(path, "random_holdout", None)  # added on the fly
    with Store.open(path) as s:
        data = SplitData.load(s, split)
        task = build_task(data, "random_holdout")
        models = {"popularity": Popularity().fit(data)}
        with contextlib.suppress(ImportError):  # the EASE baseline may be absent from this checkout
            models["ease"] = model_class("ease")().fit(data)
    assert len(task) == 943
    from segue.evaluation.evaluator import rank_task
    from test_metrics import _ranx

    for name, model in models.items():
        ranked = rank_task(name, model, task, 20)
        ours = M.per_user_metrics(ranked, task.rel_offsets, task.rel_keys, [10, 20])
        ref = _ranx(ranked, task.rel_offsets, task.rel_keys, ["ndcg@10", "hit_rate@20", "mrr@20", "hits@10"])
        np.testing.assert_allclose(ours["ndcg@10"], ref["ndcg@10"], atol=1e-12)
        np.testing.assert_allclose(ours["hr@20"], ref["hit_rate@20"])
        np.testing.assert_allclose(ours["mrr@20"], ref["mrr@20"])
        np.testing.assert_allclose(ours["recall@10"], ref["hits@10"] / np.minimum(10, task.n_relevant))
        assert 0.05 < ours["ndcg@10"].mean() < 0.6
