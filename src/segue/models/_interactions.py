"""Sparse interaction matrices shared by the classic baselines (itemknn, ease, item2vec, als).

The baselines work in *item space*: column j is vocabulary token j + N_SPECIAL, so special tokens
(and `<unk>`, which stands for items outside the vocabulary) never enter a model. `pad_scores`
turns item-space scores [B, n_items] back into token space [B, V] with -inf on special tokens.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from segue.data.arrays import SequenceArrays, SplitData
from segue.data.vocab import N_SPECIAL
from segue.models.base import NEG_INF


def select_rows(histories: SequenceArrays, rows: np.ndarray | None) -> np.ndarray:
    return histories.check_rows(rows)


def history_matrix(
    histories: SequenceArrays,
    rows: np.ndarray | None,
    n_items: int,
    *,
    decay: float = 1.0,
) -> sp.csr_matrix:
    """CSR [B, n_items] float32 of the histories `rows`: entry (b, j) = decay**age of the most
    recent occurrence of item j in history b, where age 0 is the last event of the history.

    With decay = 1 this is the binary user x item matrix. Special tokens and tokens outside
    [N_SPECIAL, N_SPECIAL + n_items) are dropped (items unknown to the model are skipped).
    """
    rows = select_rows(histories, rows)
    starts = np.asarray(histories.offsets[rows], dtype=np.int64)
    lengths = np.asarray(histories.offsets[rows + 1], dtype=np.int64) - starts
    total = int(lengths.sum())
    if total == 0:
        return sp.csr_matrix((len(rows), n_items), dtype=np.float32)
    out_starts = np.cumsum(lengths) - lengths
    idx = np.arange(total, dtype=np.int64) - np.repeat(out_starts - starts, lengths)
    tokens = np.asarray(histories.tokens[idx], dtype=np.int64)
    b = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    age = np.repeat(out_starts + lengths - 1, lengths) - np.arange(total, dtype=np.int64)
    col = tokens - N_SPECIAL
    keep = (col >= 0) & (col < n_items)
    b, col, age = b[keep], col[keep], age[keep]
    # Keep the most recent occurrence of each (row, item): the smallest age.
    order = np.lexsort((age, col, b))
    b, col, age = b[order], col[order], age[order]
    first = np.ones(len(b), dtype=bool)
    first[1:] = (b[1:] != b[:-1]) | (col[1:] != col[:-1])
    b, col, age = b[first], col[first], age[first]
    data = np.ones(len(b), np.float32) if decay == 1.0 else np.power(np.float64(decay), age).astype(np.float32)
    m = sp.csr_matrix((data, (b, col)), shape=(len(rows), n_items), dtype=np.float32)
    m.sort_indices()
    return m


def training_matrix(train: SequenceArrays, n_items: int) -> sp.csr_matrix:
    """Binary CSR [n_sequences, n_items] of the training sequences (empty rows dropped)."""
    return history_matrix(train, train.nonempty(), n_items)


def item_counts(train: SequenceArrays, n_items: int) -> np.ndarray:
    """Training events per item, float64 [n_items]."""
    col = np.asarray(train.tokens, dtype=np.int64) - N_SPECIAL
    col = col[(col >= 0) & (col < n_items)]
    return np.bincount(col, minlength=n_items).astype(np.float64)


def popularity_backfill(counts: np.ndarray) -> np.ndarray:
    """Scores in [-1, 0) ordered by popularity: ranked after any positive score, ties broken by count."""
    c = np.asarray(counts, dtype=np.float64)
    top = c.max() if len(c) and c.max() > 0 else 1.0
    return (c / (top * 1.0001) - 1.0).astype(np.float32)


def pad_scores(item_scores: np.ndarray) -> np.ndarray:
    """Item-space scores [B, n_items] -> token-space float32 [B, N_SPECIAL + n_items], specials -inf."""
    out = np.empty((item_scores.shape[0], item_scores.shape[1] + N_SPECIAL), dtype=np.float32)
    out[:, :N_SPECIAL] = NEG_INF
    out[:, N_SPECIAL:] = item_scores
    return out


def pad_rows(item_matrix: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Item-space rows [n_items, d] -> token-space [N_SPECIAL + n_items, d] (specials = fill)."""
    out = np.full((item_matrix.shape[0] + N_SPECIAL, item_matrix.shape[1]), fill, dtype=np.float32)
    out[N_SPECIAL:] = item_matrix
    return out


def order_matters(data: SplitData) -> bool:
    """Whether the split's targets follow its histories in time (then recent items say more).

    False for random within-user holdout and for strong generalization with a random fold-in:
    there the held-out items are a random subset, and the order of the history carries no signal.
    """
    info = data.store.split_info(data.split)
    if info["kind"] == "random_holdout":
        return False
    return not (info["kind"] == "strong" and info["params"].get("foldin") == "random")


def resolve_decay(decay: float | None, data: SplitData, sequential: float) -> float:
    """The recency decay to use: `decay` if set, else `sequential` when order matters, else 1."""
    if decay is not None:
        return float(decay)
    return sequential if order_matters(data) else 1.0
