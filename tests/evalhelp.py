"""Stores and tiny hand-written models for the evaluation tests (real stores via build_store)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from datahelp import make_store
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.vocab import Vocabulary
from segue.models.base import BaseRecommender

EVAL_SPLITS = [
    {"kind": "random_sequence", "name": "random", "valid_fraction": 0.1, "test_fraction": 0.3},
    {"kind": "leave_last_out", "name": "loo"},
    {"kind": "temporal", "name": "temporal"},
    {"kind": "strong", "name": "strong", "valid_users": 0.15, "test_users": 0.2},
]


def eval_store(path: Path, n_seq: int = 120, n_items: int = 40, seed: int = 3, splits: list | None = None) -> Path:
    """Sequences with repeats (so targets can recur in histories) and interleaved timestamps."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_seq):
        n = int(rng.integers(2, 30))
        # popularity-skewed items; ~1 in 8 events repeats an earlier item of the sequence
        seq = list(np.minimum(rng.zipf(1.3, n) - 1, n_items + 20))
        for i in range(1, n):
            if rng.random() < 0.125:
                seq[i] = seq[int(rng.integers(0, i))]
        seqs.append(seq)
    ts = [sorted(rng.integers(0, 100_000, len(s)).tolist()) for s in seqs]
    return make_store(path, seqs, splits or EVAL_SPLITS, ts=ts)


class FnModel(BaseRecommender):
    """A model whose scores come from a function of (histories, rows): for tests and benches."""

    family = "fn_test"

    def __init__(self, vocab: Vocabulary, fn: Callable[[SequenceArrays, np.ndarray], np.ndarray]) -> None:
        super().__init__(None, vocab)
        self.fn = fn

    def fit(self, data: SplitData, *, progress: object = None) -> FnModel:
        return self

    def score(self, histories: SequenceArrays, rows: np.ndarray | None = None) -> np.ndarray:
        rows = np.arange(len(histories)) if rows is None else np.asarray(rows)
        return self.fn(histories, rows)


def history_lover(vocab: Vocabulary) -> FnModel:
    """Scores special tokens and the history's own items above everything else."""

    def fn(h: SequenceArrays, rows: np.ndarray) -> np.ndarray:
        s = np.random.default_rng(0).random((len(rows), len(vocab))).astype(np.float32)
        s[:, :4] = 1e6
        for b, r in enumerate(rows):
            s[b, h.row(int(r))] = 1e5
        return s

    return FnModel(vocab, fn)


def random_model(vocab: Vocabulary, seed: int = 0) -> FnModel:
    """Uniform random scores, fixed per history row (so batching never changes them)."""

    def fn(h: SequenceArrays, rows: np.ndarray) -> np.ndarray:
        return np.stack([np.random.default_rng([seed, int(r)]).random(len(vocab)) for r in rows]).astype(np.float32)

    return FnModel(vocab, fn)
