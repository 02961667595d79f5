"""Item-kNN over co-occurrence in training sequences (sparse all the way).

Let X be the binary sequence x item matrix of the training split and n_i = sum_u X_ui the number of
sequences holding item i. The similarity of items i != j is the shrunk cosine

    sim(i, j) = co(i, j) / (sqrt(n_i * n_j) + shrink),     co = X^T X,

and only the `neighbours` most similar items of each item are kept (a sparse [n, n] matrix S).
A history h is scored as

    score(h, j) = sum_{i in h} w_i * S[i, j],     w_i = decay ** age_i

where age_i is how many events ago item i was last seen (0 = the last event; decay = 1 weighs the
whole history equally; by default decay is chosen from the split at fit time, see
`segue.models._interactions.resolve_decay`). Items no history item points to score in [-1, 0) by training popularity
(`backfill`), so they rank after every item with a positive score, most popular first.

Defaults (chosen on the validation parts of ml-100k and Amazon Beauty, bench/quality.py): 200
neighbours, shrink 10, decay 0.6 where order matters (1 for random holdouts).

X^T X is computed in blocks of rows sized so that a block's co-occurrence entries stay below
`block_entries`, and each block is cut to its top neighbours before the next, so memory stays
bounded by the block, not by n^2. The cost is that of X^T X itself, sum over sequences of
length^2: about 40 s for 100k items and 2.5M events (Zipf popularity) on 2 shared cores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Self

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from segue.config import Config
from segue.data.arrays import SequenceArrays, SplitData
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

SEQUENTIAL_DECAY = 0.6


class ItemKNNConfig(Config):
    neighbours: int = Field(200, ge=1)  # kept per item
    shrink: float = Field(10.0, ge=0)
    # Recency weight per event of age; None = auto: SEQUENTIAL_DECAY where the split's targets
    # follow the history in time, 1 (no recency) for random within-user holdouts.
    decay: float | None = Field(None, gt=0, le=1)
    backfill: bool = True  # rank items without similarity by popularity (after all others)
    block_entries: int = Field(20_000_000, ge=1)  # co-occurrence entries computed at once


def cosine_neighbours(
    x: sp.csr_matrix,
    neighbours: int,
    shrink: float,
    block_entries: int = 20_000_000,
    progress: Callable[[str, int, int], None] | None = None,
) -> sp.csr_matrix:
    """Top-`neighbours` shrunk-cosine similarities between the columns of binary `x` [U, n].

    Returns CSR [n, n] float32 with zero diagonal; row i holds the neighbours of item i.
    """
    x = sp.csr_matrix(x, dtype=np.float32)
    n = x.shape[1]
    xt = x.T.tocsr()  # [n, U]
    support = np.asarray(xt.sum(axis=1)).ravel().astype(np.float64)  # n_i
    root = np.sqrt(support).astype(np.float32)
    # Upper bound on the co-occurrence entries of row i: sum of the lengths of i's sequences.
    row_len = np.diff(x.indptr).astype(np.float64)
    bound = np.maximum(xt @ row_len, 1.0)
    blocks = _blocks(bound, block_entries)
    parts: list[sp.csr_matrix] = []
    for b, (lo, hi) in enumerate(blocks):
        co = (xt[lo:hi] @ x).tocsr()  # [hi - lo, n] co-occurrence counts
        lengths = np.diff(co.indptr)
        # float32/int32 throughout: these arrays hold every co-occurring pair of the block.
        r = np.repeat(np.arange(lo, hi, dtype=np.int32), lengths)
        c = co.indices
        keep = r != c
        r, c = r[keep], c[keep]
        sim = co.data[keep] / (root[r] * root[c] + np.float32(shrink))
        del co
        counts = np.bincount(r - lo, minlength=hi - lo)
        indptr = np.zeros(hi - lo + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        c, sim, indptr = _top_per_row(indptr, c, sim, neighbours)
        parts.append(sp.csr_matrix((sim, c, indptr), shape=(hi - lo, n)))
        if progress is not None:
            progress("itemknn", b + 1, len(blocks))
    s = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((n, n), dtype=np.float32)
    s.sort_indices()
    return s


def _blocks(bound: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive row ranges whose summed bound is about `budget` (a lone large row gets its own)."""
    if len(bound) == 0:
        return []
    cs = np.cumsum(bound)
    block = ((cs - bound) // budget).astype(np.int64)
    edges = np.flatnonzero(np.r_[True, block[1:] != block[:-1], True])
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _top_per_row(
    indptr: np.ndarray, cols: np.ndarray, vals: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the k largest values of each CSR row (ties: smaller column first).

    Rows with at most k entries are kept whole (vectorised); only longer rows are cut, one at a
    time, with a partition to the candidates >= the k-th value and a sort among those.
    """
    lengths = np.diff(indptr)
    keep = np.ones(len(cols), dtype=bool)
    for row in np.flatnonzero(lengths > k):
        lo, hi = indptr[row], indptr[row + 1]
        v = vals[lo:hi]
        threshold = np.partition(v, len(v) - k)[len(v) - k]
        cand = np.flatnonzero(v >= threshold)
        if len(cand) > k:  # ties at the threshold: the smaller columns win
            cand = cand[np.lexsort((cols[lo:hi][cand], -v[cand]))[:k]]
        row_keep = np.zeros(hi - lo, dtype=bool)
        row_keep[cand] = True
        keep[lo:hi] = row_keep
    rows = np.repeat(np.arange(len(lengths)), lengths)
    new_lengths = np.bincount(rows[keep], minlength=len(lengths))
    new_indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(new_lengths, out=new_indptr[1:])
    return cols[keep], vals[keep], new_indptr


class ItemKNN(BaseRecommender):
    """Item-kNN recommender (see the module docstring for the formulas)."""

    family = "itemknn"
    meta_fields = ("decay",)
    state_shapes = {"similarity.npz": ("sim", ("n", "n")), "counts.npy": ("counts", ("n",))}
    config_class = ItemKNNConfig
    config: ItemKNNConfig

    def fit(self, data: SplitData, *, progress: Callable[[str, int, int], None] | None = None) -> Self:
        self.vocab = data.vocab
        n = data.vocab.n_items
        x = training_matrix(data.train, n)
        c = self.config
        self.sim = cosine_neighbours(x, c.neighbours, c.shrink, c.block_entries, progress)
        self.counts = item_counts(data.train, n)
        self.meta["decay"] = resolve_decay(c.decay, data, SEQUENTIAL_DECAY)
        return self

    def score(self, histories: SequenceArrays, rows: np.ndarray | None = None) -> np.ndarray:
        self._check_fitted()
        rows = select_rows(histories, rows)
        h = history_matrix(histories, rows, self.sim.shape[0], decay=self.meta["decay"])
        s = (h @ self.sim).toarray().astype(np.float32, copy=False)  # [B, n]
        if self.config.backfill:
            fill = popularity_backfill(self.counts)
            zero = s == 0
            s[zero] = np.broadcast_to(fill, s.shape)[zero]
        return pad_scores(s)

    def similar_items(self, token: int) -> tuple[np.ndarray, np.ndarray]:
        """Neighbour tokens and similarities of `token`, most similar first. `token` must be an
        item token, in [N_SPECIAL, V) (a special token or a negative one would index another
        item's row): else an InputError naming it."""
        from segue.data.vocab import N_SPECIAL
        from segue.errors import InputError

        v = self._check_fitted()
        if isinstance(token, bool) or not isinstance(token, int | np.integer) or not N_SPECIAL <= token < len(v):
            raise InputError(f"token {token!r} is not an item token", field="token", expected=f"a whole number in [{N_SPECIAL}, {len(v)})")
        i = int(token) - N_SPECIAL
        lo, hi = self.sim.indptr[i], self.sim.indptr[i + 1]
        cols, vals = self.sim.indices[lo:hi], self.sim.data[lo:hi]
        order = np.lexsort((cols, -vals))
        return (cols[order] + N_SPECIAL).astype(np.int32), vals[order]

    def _save_state(self, folder: Path) -> None:
        sp.save_npz(folder / "similarity.npz", self.sim, compressed=False)
        np.save(folder / "counts.npy", self.counts)

    def _load_state(self, folder: Path) -> None:
        self.sim = sp.load_npz(folder / "similarity.npz").tocsr()
        self.counts = np.load(folder / "counts.npy")
