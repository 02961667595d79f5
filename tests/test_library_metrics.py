"""Metrics on ranked lists handed in by library users: a repeated item counts once."""

from __future__ import annotations

import numpy as np

from segue.evaluation import metrics as M


def test_repeated_item_counts_once_at_its_first_rank() -> None:
    off, keys = M.relevance_csr([[7, 8], [7, 8]])
    ranked = np.array([[7, 7, 7], [7, 9, 8]])
    out = M.per_user_metrics(ranked, off, keys, [3])
    assert out["recall@3"].tolist() == [0.5, 1.0]
    assert out["precision@3"][0] == 1 / 3
    assert out["ndcg@3"][0] == 1.0 / (1.0 + 1.0 / np.log2(3))
    assert out["hr@3"][0] == 1.0 and out["mrr@3"][0] == 1.0
    assert M.hit_matrix(ranked, off, keys).tolist() == [[True, False, False], [True, False, True]]


def test_empty_slots_stay_misses() -> None:
    off, keys = M.relevance_csr([[5]])
    assert M.hit_matrix(np.array([[-1, -1, 5]]), off, keys).tolist() == [[False, False, True]]
