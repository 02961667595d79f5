"""Metrics against hand-computed examples and against ranx (an independent implementation)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from segue.evaluation import metrics as M


def _case(ranked: list[list[int]], rel: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r = np.array(ranked, dtype=np.int64)
    off, keys = M.relevance_csr(rel)
    return r, off, keys, M.hit_matrix(r, off, keys)


def test_hand_example() -> None:
    # Relevant: tokens 7 and 4, and an item outside the vocabulary (key -12): |rel| = 3.
    ranked, off, keys, hits = _case([[5, 7, 9, 4]], [[7, 4, -12]])
    nrel = M.n_relevant(off)
    assert hits.tolist() == [[False, True, False, True]]
    assert M.hit_rate(hits, 1)[0] == 0 and M.hit_rate(hits, 2)[0] == 1
    assert M.recall(hits, nrel, 2)[0] == pytest.approx(1 / 2)  # 1 hit / min(2, 3)
    assert M.recall(hits, nrel, 4)[0] == pytest.approx(2 / 3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert M.ndcg(hits, nrel, 4)[0] == pytest.approx(dcg / idcg)
    assert M.ndcg(hits, nrel, 1)[0] == 0
    assert M.mrr(hits, 1)[0] == 0 and M.mrr(hits, 4)[0] == pytest.approx(0.5)
    assert M.r_precision(hits, nrel)[0] == pytest.approx(1 / 3)  # top 3 = [5, 7, 9]
    assert M.clicks(hits)[0] == 0
    assert M.precision(hits, 4)[0] == pytest.approx(0.5)


def test_duplicate_relevant_items_count_once() -> None:
    ranked, off, keys, hits = _case([[1, 2, 3]], [[2, 2, 2, 9]])
    assert M.n_relevant(off).tolist() == [2]
    assert M.recall(hits, M.n_relevant(off), 3)[0] == pytest.approx(0.5)


def test_empty_slots_and_negative_keys_never_hit() -> None:
    # -1 marks an empty slot; a key of -1 (an <unk> item) must not match it.
    ranked, off, keys, hits = _case([[4, -1, -1]], [[-1, 4]])
    assert hits.tolist() == [[True, False, False]]


def test_clicks_as_in_the_challenge() -> None:
    ranked = np.arange(500)[None, :].repeat(3, axis=0) + 10
    off, keys = M.relevance_csr([[10 + 24], [10 + 9], [10_000]])  # first hit at rank 25, rank 10, none
    hits = M.hit_matrix(ranked, off, keys)
    assert M.clicks(hits).tolist() == [2.0, 0.0, 51.0]


def test_coverage_and_popularity_percentile() -> None:
    counts = np.array([0, 0, 0, 0, 10, 5, 5, 1])  # 4 special tokens, 4 items
    pct = M.popularity_percentiles(counts, 4)
    assert np.isnan(pct[:4]).all()
    # items 10, 5, 5, 1: the two 5s share a mid-rank
    assert pct[4:].tolist() == pytest.approx([100 * 3.5 / 4, 100 * 2 / 4, 100 * 2 / 4, 100 * 0.5 / 4])
    ranked = np.array([[4, 5], [4, -1]])
    assert M.coverage(ranked, 1, 4) == pytest.approx(1 / 4)
    assert M.coverage(ranked, 2, 4) == pytest.approx(2 / 4)
    pp = M.popularity_percentile(ranked, 2, pct)
    assert pp.tolist() == pytest.approx([(87.5 + 50) / 2, 87.5])  # the empty slot is skipped


def _ranx(ranked: np.ndarray, off: np.ndarray, keys: np.ndarray, metrics: list[str]) -> dict[str, np.ndarray]:
    ranx = pytest.importorskip("ranx")
    qrels = {}
    run = {}
    for q in range(len(ranked)):
        qid = f"q{q:05d}"
        qrels[qid] = {f"d{k}": 1 for k in keys[off[q] : off[q + 1]]}
        row = [int(t) for t in ranked[q] if t >= 0]
        run[qid] = {f"d{t}": float(len(row) - i) for i, t in enumerate(row)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), metrics, return_mean=False)
    return {m: np.asarray(res[m]) for m in metrics}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_ranx_on_random_cases(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_q, length, vocab = 60, 30, 80
    ranked = np.stack([rng.permutation(vocab)[:length] for _ in range(n_q)]) + 4
    # empty tail slots in some rows (fewer candidates than the list length); slot 0 always filled
    for q in rng.choice(n_q, 10, replace=False):
        ranked[q, rng.integers(1, length) :] = -1
    rel = []
    for _ in range(n_q):
        n = int(rng.integers(1, 40))
        known = rng.choice(vocab, n, replace=False) + 4
        unk = -rng.integers(1, 5, int(rng.integers(0, 3)))  # items outside the vocabulary
        rel.append(np.concatenate([known, unk]))
    off, keys = M.relevance_csr(rel)
    hits = M.hit_matrix(ranked, off, keys)
    nrel = M.n_relevant(off)
    ks = [1, 5, 10, 30]
    names = [f"{m}@{k}" for k in ks for m in ("hit_rate", "hits", "ndcg", "mrr", "precision")] + ["r-precision"]
    ref = _ranx(ranked, off, keys, names)
    assert ref["hits@30"].sum() > 0  # the case is not trivial
    for k in ks:
        np.testing.assert_allclose(M.hit_rate(hits, k), ref[f"hit_rate@{k}"])
        np.testing.assert_allclose(M.recall(hits, nrel, k), ref[f"hits@{k}"] / np.minimum(k, nrel))
        np.testing.assert_allclose(M.ndcg(hits, nrel, k), ref[f"ndcg@{k}"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(M.mrr(hits, k), ref[f"mrr@{k}"])
        np.testing.assert_allclose(M.precision(hits, k), ref[f"precision@{k}"])
    np.testing.assert_allclose(M.r_precision(hits, nrel), ref["r-precision"])


def test_per_user_metrics_keys_and_ranx_recall_when_rel_is_small() -> None:
    # With |rel| <= k, Liang's recall equals the textbook recall that ranx computes.
    rng = np.random.default_rng(5)
    ranked = np.stack([rng.permutation(50)[:20] for _ in range(40)]) + 4
    off, keys = M.relevance_csr([rng.choice(50, int(rng.integers(1, 6)), replace=False) + 4 for _ in range(40)])
    out = M.per_user_metrics(ranked, off, keys, [10, 20], M.popularity_percentiles(np.arange(54), 4))
    assert {"hr@10", "recall@20", "ndcg@10", "mrr@20", "poppct@10", "rprec", "clicks"} <= set(out)
    ref = _ranx(ranked, off, keys, ["recall@10", "recall@20"])
    np.testing.assert_allclose(out["recall@10"], ref["recall@10"])
    np.testing.assert_allclose(out["recall@20"], ref["recall@20"])
    with pytest.raises(ValueError, match="at least one relevant"):
        M.per_user_metrics(ranked[:1], np.array([0, 0]), np.zeros(0, np.int64), [10])


def test_metric_names_are_the_names_per_user_metrics_reports() -> None:
    # tune and retrain check a configured metric against metric_names before any work
    ranked = np.array([[5, 6, 7, 8]])
    got = M.per_user_metrics(ranked, np.array([0, 1]), np.array([6]), (1, 3))
    assert sorted(got) == sorted(M.metric_names((1, 3)))
