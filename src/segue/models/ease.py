"""EASE: a closed-form linear item-item model (Steck, "Embarrassingly Shallow Autoencoders", 2019).

With X the binary sequence x item matrix of the training split and lambda the L2 weight,

    P = (X^T X + lambda * I)^-1,     B = I - P * diag(1 / diag(P))   (i.e. B_ij = -P_ij / P_jj),
    diag(B) = 0,

and a history h scores score(h) = x_h B, where x_h is the binary history row, or with recency
weighting (x_hi = decay ** age of item i's last occurrence, age 0 = the last event) where order
matters; by default decay is chosen from the split at fit time (`_interactions.resolve_decay`).
A history without any known item gets training popularity scores in [-1, 0) instead.

Default lambda 250 (validation NDCG@10 on ml-100k is flat from 250 to 500; the sparser Amazon
Beauty prefers 25-50, see bench/quality.py TUNED). The Gram matrix is dense [n, n]: the model refuses catalogues above `max_items` with a SegueError
naming the limit and the memory it would need, rather than running out of memory. The inverse is
computed in place through a Cholesky factorisation (LAPACK potrf/potri), so the peak is about one
[n, n] matrix plus the sparse X.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal, Self

import numpy as np
import scipy.linalg.lapack as lapack
from pydantic import Field

from segue.config import Config
from segue.data.arrays import SequenceArrays, SplitData
from segue.errors import SegueError
from segue.models._interactions import (
    history_matrix,
    item_counts,
    pad_scores,
    popularity_backfill,
    resolve_decay,
    select_rows,
    training_matrix,
)
from segue.models.base import BaseRecommender

SEQUENTIAL_DECAY = 0.9


class EASEConfig(Config):
    l2: float = Field(250.0, gt=0)  # lambda (tuned on ml-100k; sparser data like Beauty prefers ~25-50)
    max_items: int = Field(20_000, ge=1)  # dense Gram limit
    dtype: Literal["float32", "float64"] = "float32"
    # Recency weight of history items when scoring (1 = binary); None = auto: SEQUENTIAL_DECAY where
    # the split's targets follow the history in time, 1 for random within-user holdouts.
    decay: float | None = Field(None, gt=0, le=1)


def check_size(n_items: int, config: EASEConfig) -> None:
    """Raise a SegueError naming the limit and the memory needed when the catalogue is too large."""
    if n_items > config.max_items:
        gib = n_items * n_items * np.dtype(config.dtype).itemsize / 2**30
        raise SegueError(
            f"EASE: the catalogue has {n_items:,} items, above the dense Gram limit max_items="
            f"{config.max_items:,} (a {n_items:,} x {n_items:,} {config.dtype} matrix needs {_size(gib)}); "
            "raise max_items if memory allows, or use itemknn, als or item2vec"
        )


def ease_weights(x, l2: float, dtype: str = "float32") -> np.ndarray:  # noqa: ANN001 (scipy sparse)
    """B [n, n] from binary X [U, n] (see module docstring)."""
    n = x.shape[1]
    g = np.ascontiguousarray((x.T @ x).toarray(order="C"), dtype=dtype)  # [n, n]
    g[np.diag_indices(n)] += l2
    potrf, potri = (lapack.spotrf, lapack.spotri) if dtype == "float32" else (lapack.dpotrf, lapack.dpotri)
    # g is symmetric, so its transpose is the same matrix in Fortran order: LAPACK works in place.
    c, info = potrf(g.T, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise SegueError(f"EASE: the Gram matrix is not positive definite (LAPACK potrf info={info}); raise l2")
    p, info = potri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise SegueError(f"EASE: inverting the Gram matrix failed (LAPACK potri info={info})")
    _symmetrise_upper(p)
    p = p.T  # C order again (symmetric, so the same values)
    diag = np.diag(p).copy()
    p /= -diag[None, :]  # B_ij = -P_ij / P_jj
    p[np.diag_indices(n)] = 0
    return p


def _symmetrise_upper(p: np.ndarray, block: int = 1024) -> None:
    """Copy the upper triangle of `p` onto its lower triangle in place (potri fills only one)."""
    n = p.shape[0]
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        # rows lo:hi, columns < hi: lower part comes from the transpose of the upper strip.
        strip = p[:hi, lo:hi].T.copy()  # [hi - lo, hi] = p[lo:hi, :hi] mirrored
        tri = np.tril_indices(hi - lo, -1)
        blk = p[lo:hi, lo:hi]
        blk[tri] = strip[:, lo:hi][tri]
        p[lo:hi, :lo] = strip[:, :lo]


class EASE(BaseRecommender):
    """EASE recommender (see the module docstring for the formula and the size limit)."""

    family = "ease"
    meta_fields = ("decay",)
    state_shapes = {"weights.npy": ("weights", ("n", "n")), "counts.npy": ("counts", ("n",))}
    config_class = EASEConfig
    config: EASEConfig

    def fit(self, data: SplitData, *, progress: Callable[[str, int, int], None] | None = None) -> Self:
        n = data.vocab.n_items
        c = self.config
        check_size(n, c)
        self.vocab = data.vocab
        x = training_matrix(data.train, n)
        if progress is not None:
            progress("ease", 0, 1)
        self.weights = ease_weights(x, c.l2, c.dtype).astype(np.float32, copy=False)
        self.counts = item_counts(data.train, n)
        self.meta["decay"] = resolve_decay(c.decay, data, SEQUENTIAL_DECAY)
        if progress is not None:
            progress("ease", 1, 1)
        return self

    def score(self, histories: SequenceArrays, rows: np.ndarray | None = None) -> np.ndarray:
        self._check_fitted()
        rows = select_rows(histories, rows)
        h = history_matrix(histories, rows, self.weights.shape[0], decay=self.meta["decay"])
        s = np.asarray(h @ self.weights, dtype=np.float32)  # [B, n]
        cold = np.diff(h.indptr) == 0
        if cold.any():
            s[cold] = popularity_backfill(self.counts)
        return pad_scores(s)

    def _save_state(self, folder: Path) -> None:
        np.save(folder / "weights.npy", self.weights)
        np.save(folder / "counts.npy", self.counts)

    def _load_state(self, folder: Path) -> None:
        self.weights = np.load(folder / "weights.npy")
        self.counts = np.load(folder / "counts.npy")


def _size(gib: float) -> str:
    """A memory size in the largest unit that keeps it >= 1 (never '0.0 GiB' for a small matrix)."""
    size = gib * 2**30
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} bytes"
