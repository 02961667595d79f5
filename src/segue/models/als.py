"""Implicit-feedback ALS (Hu, Koren & Volinsky 2008) through the `implicit` library (CPU).

With r_ui = 1 if sequence u holds item i in training (or the number of times, `repeat_counts`),
preference p_ui = [r_ui > 0] and confidence c_ui = 1 + alpha * r_ui, ALS minimises

    sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + regularization * (sum_u |x_u|^2 + sum_i |y_i|^2)

by alternating exact (or conjugate-gradient) least-squares solves for the user factors x_u and the
item factors y_i. Any history h, including a user never seen in training, is scored by solving for
its user factor with the item factors fixed (implicit's `recalculate_user`, an exact Cholesky solve)

    x_h = argmin_x sum_i c_hi (p_hi - x . y_i)^2 + regularization * |x|^2,   score(h, j) = x_h . y_j.

Defaults (validation parts of ml-100k and Amazon Beauty, bench/quality.py): 128 factors,
regularization 30, alpha 5, 15 iterations. The best alpha differs by dataset (2 on ml-100k, 20-40
on the sparser Beauty); the defaults favour the dense general-recommendation case.

An empty history (x_h = 0) gets training popularity scores in [-1, 0) instead.

Retrieval: `item_embeddings()` [V, d] (zero rows for special tokens) and `query_embeddings(histories,
rows)` [B, d] give exactly the vectors whose dot product is `score`, for an inner-product ANN index.

Threads: implicit parallelises over users/items itself (`num_threads`), so BLAS is limited to one
thread while it runs (threadpoolctl), as implicit recommends for OpenBLAS. implicit is imported at
module level so that every BLAS library is loaded before the limit is applied (a library loaded
inside `threadpool_limits` is not limited, and implicit then warns).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Self

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from pydantic import Field
from threadpoolctl import threadpool_limits

from segue.config import Config
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.vocab import N_SPECIAL
from segue.models._interactions import (
    item_counts,
    pad_rows,
    pad_scores,
    popularity_backfill,
    select_rows,
)
from segue.models.base import BaseRecommender


class ALSConfig(Config):
    factors: int = Field(128, ge=1)
    regularization: float = Field(30.0, ge=0)  # absolute (implicit does not scale it)
    alpha: float = Field(5.0, ge=0)  # confidence c = 1 + alpha * r
    iterations: int = Field(15, ge=1)
    repeat_counts: bool = False  # r = number of events of the item (else 1)
    use_cg: bool = True  # conjugate gradient during fit (exact Cholesky when False)
    num_threads: int = Field(2, ge=0)  # 0 = all cores
    seed: int = 0


def confidence_matrix(
    histories: SequenceArrays, rows: np.ndarray, n_items: int, alpha: float, repeat_counts: bool
) -> sp.csr_matrix:
    """CSR [B, n_items] float32 of c = 1 + alpha * r for the items of each history (others absent)."""
    starts = np.asarray(histories.offsets[rows], dtype=np.int64)
    lengths = np.asarray(histories.offsets[rows + 1], dtype=np.int64) - starts
    total = int(lengths.sum())
    out_starts = np.cumsum(lengths) - lengths
    idx = np.arange(total, dtype=np.int64) - np.repeat(out_starts - starts, lengths)
    col = np.asarray(histories.tokens[idx], dtype=np.int64) - N_SPECIAL
    b = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    keep = (col >= 0) & (col < n_items)
    m = sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (b[keep], col[keep])), shape=(len(rows), n_items)
    )
    m.sum_duplicates()
    if not repeat_counts:
        m.data[:] = 1.0
    m.data = (1.0 + alpha * m.data).astype(np.float32)
    m.sort_indices()
    return m


class ALS(BaseRecommender):
    """Implicit ALS recommender (see the module docstring for the objective and scoring)."""

    family = "als"
    state_shapes = {"item_factors.npy": ("item_factors", ("n", None)), "counts.npy": ("counts", ("n",))}
    config_class = ALSConfig
    config: ALSConfig

    def fit(self, data: SplitData, *, progress: Callable[[str, int, int], None] | None = None) -> Self:
        c = self.config
        self.vocab = data.vocab
        n = data.vocab.n_items
        train = data.train
        conf = confidence_matrix(train, train.nonempty(), n, c.alpha, c.repeat_counts)
        callback = None
        if progress is not None:

            def callback(iteration: int, elapsed: float, loss: float) -> None:
                progress("als", iteration + 1, c.iterations)

        with threadpool_limits(1, "blas"):
            model = self._new_model()
            model.fit(conf, show_progress=False, callback=callback)
        self.item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)  # [n, d]
        self._model = model
        self.counts = item_counts(train, n)
        return self

    def _new_model(self) -> AlternatingLeastSquares:
        c = self.config
        # alpha=1 inside implicit: the matrix we pass already holds the confidences 1 + alpha * r.
        return AlternatingLeastSquares(
            factors=c.factors,
            regularization=c.regularization,
            alpha=1.0,
            iterations=c.iterations,
            use_cg=c.use_cg,
            num_threads=c.num_threads,
            random_state=c.seed,
        )

    def item_embeddings(self) -> np.ndarray:
        """[V, d] float32 item factors (zero rows for special tokens)."""
        self._check_fitted()
        return pad_rows(self.item_factors)

    def query_embeddings(self, histories: SequenceArrays, rows: np.ndarray | None = None) -> np.ndarray:
        """[B, d] float32 user factors solved from each history with the item factors fixed."""
        self._check_fitted()
        rows = select_rows(histories, rows)
        c = self.config
        conf = confidence_matrix(histories, rows, self.item_factors.shape[0], c.alpha, c.repeat_counts)
        with threadpool_limits(1, "blas"):
            users = self._model.recalculate_user(np.arange(len(rows)), conf)
        return np.asarray(users, dtype=np.float32).reshape(len(rows), -1)

    def score(self, histories: SequenceArrays, rows: np.ndarray | None = None) -> np.ndarray:
        rows = select_rows(histories, rows)
        q = self.query_embeddings(histories, rows)
        s = q @ self.item_factors.T  # [B, n_items]
        cold = ~q.any(axis=1)
        if cold.any():
            s[cold] = popularity_backfill(self.counts)
        return pad_scores(s)

    def _save_state(self, folder: Path) -> None:
        np.save(folder / "item_factors.npy", self.item_factors)
        np.save(folder / "counts.npy", self.counts)

    def _load_state(self, folder: Path) -> None:
        self.item_factors = np.load(folder / "item_factors.npy")
        self.counts = np.load(folder / "counts.npy")
        with threadpool_limits(1, "blas"):
            self._model = self._new_model()
        self._model.item_factors = self.item_factors
