"""Ranking metrics, computed per user (query) from ranked top-K lists and relevant sets.

Inputs, for a batch of B queries:
  ranked  int [B, L]  recommended tokens, best first; -1 marks an empty slot (fewer candidates).
                      A token repeated in a list counts once, at its first rank: a later copy is
                      a miss (so recall and NDCG stay <= 1 and precision counts distinct hits)
  relevant            CSR: offsets int64 [B + 1], keys int64 [nnz]; query b's relevant set is
                      keys[offsets[b]:offsets[b + 1]], each key once. A key >= 0 is a vocabulary
                      token; a key < 0 is a relevant item the vocabulary lacks (<unk>): it counts
                      in |rel| but can never be hit.
From these, `hit_matrix` gives hits bool [B, L] (hits[b, i] = ranked[b, i] is relevant) and
`n_rel` int [B] = |rel_b|. Ranks r are 1-based; every metric below is per query (an array [B]),
so two models can be compared query by query. Queries must have |rel| >= 1.
"""

from __future__ import annotations

import numpy as np


def relevance_csr(rows: list[list[int]] | list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Relevant sets given as lists -> (offsets, keys), duplicates removed within each row."""
    uniq = [np.unique(np.asarray(r, dtype=np.int64)) for r in rows]
    offsets = np.zeros(len(uniq) + 1, dtype=np.int64)
    np.cumsum([len(u) for u in uniq], out=offsets[1:])
    keys = np.concatenate(uniq) if uniq else np.zeros(0, np.int64)
    return offsets, keys.astype(np.int64)


def hit_matrix(ranked: np.ndarray, offsets: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """hits bool [B, L]: ranked[b, i] >= 0, it is in query b's relevant set, and it is the first
    occurrence of that token in row b (a repeated item is hit once).

    Vectorised by coding each (query, token) pair as one int64 and testing set membership.
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    n, length = ranked.shape
    counts = np.diff(offsets)
    if len(counts) != n:
        raise ValueError(f"{n} ranked rows but {len(counts)} relevant sets")
    keys = np.asarray(keys, dtype=np.int64)
    width = int(max(ranked.max(initial=0), keys.max(initial=0))) + 1
    rel_rows = np.repeat(np.arange(n, dtype=np.int64), counts)
    known = keys >= 0
    rel_codes = rel_rows[known] * width + keys[known]
    codes = np.arange(n, dtype=np.int64)[:, None] * width + ranked
    hits = np.isin(codes, rel_codes)
    hits &= ranked >= 0
    hits &= first_occurrence(ranked)
    return hits


def first_occurrence(ranked: np.ndarray) -> np.ndarray:
    """bool [B, L]: ranked[b, i] does not occur earlier in row b (a stable sort per row keeps the
    earliest copy of each token first)."""
    order = np.argsort(ranked, axis=1, kind="stable")
    srt = np.take_along_axis(ranked, order, axis=1)
    first_sorted = np.ones(ranked.shape, dtype=bool)
    first_sorted[:, 1:] = srt[:, 1:] != srt[:, :-1]
    out = np.empty(ranked.shape, dtype=bool)
    np.put_along_axis(out, order, first_sorted, axis=1)
    return out


def n_relevant(offsets: np.ndarray) -> np.ndarray:
    return np.diff(np.asarray(offsets)).astype(np.int64)


def _check(hits: np.ndarray, k: int) -> np.ndarray:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > hits.shape[1]:
        raise ValueError(f"k={k} is longer than the ranked lists ({hits.shape[1]})")
    return hits[:, :k]


def hit_rate(hits: np.ndarray, k: int) -> np.ndarray:
    """HR@k = 1 if any of the top k is relevant, else 0."""
    return _check(hits, k).any(axis=1).astype(np.float64)


def recall(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    """Recall@k = |top-k ∩ rel| / min(k, |rel|) (Liang et al. 2018, so that 1 is reachable)."""
    return _check(hits, k).sum(axis=1) / np.minimum(k, n_rel)


def precision(hits: np.ndarray, k: int) -> np.ndarray:
    """Precision@k = |top-k ∩ rel| / k."""
    return _check(hits, k).sum(axis=1) / k


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))  # 1/log2(r + 1), r = 1..k


def ndcg(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k with binary relevance: DCG = sum_{r<=k, hit} 1/log2(r + 1), divided by the ideal
    IDCG = sum_{r=1}^{min(k, |rel|)} 1/log2(r + 1)."""
    disc = _discounts(k)
    dcg = _check(hits, k) @ disc
    ideal = np.concatenate([[0.0], np.cumsum(disc)])[np.minimum(k, n_rel)]
    return dcg / ideal


def first_hit_rank(hits: np.ndarray) -> np.ndarray:
    """1-based rank of the first relevant item in the list, or 0 when there is none."""
    any_hit = hits.any(axis=1)
    return np.where(any_hit, hits.argmax(axis=1) + 1, 0)


def mrr(hits: np.ndarray, k: int) -> np.ndarray:
    """MRR@k = 1 / rank of the first relevant item if that rank <= k, else 0."""
    r = first_hit_rank(_check(hits, k))
    return np.where(r > 0, 1.0 / np.maximum(r, 1), 0.0)


def r_precision(hits: np.ndarray, n_rel: np.ndarray) -> np.ndarray:
    """R-precision = |top-R ∩ rel| / R with R = |rel| (RecSys Challenge 2018, track level).

    When |rel| exceeds the list length L, the missing ranks count as misses (a lower bound),
    as the challenge does for its 500 predictions.
    """
    length = hits.shape[1]
    upto = np.arange(1, length + 1)[None, :] <= np.asarray(n_rel)[:, None]
    return (hits & upto).sum(axis=1) / n_rel


def clicks(hits: np.ndarray) -> np.ndarray:
    """RecSys Challenge 2018 "recommended songs clicks" over a list of length L:
    floor((r - 1) / 10) for the 1-based rank r of the first relevant item (pages of 10 a user
    refreshes before seeing a relevant one), or floor(L / 10) + 1 when none is in the list
    (51 for the challenge's L = 500). Lower is better."""
    r = first_hit_rank(hits)
    return np.where(r > 0, (r - 1) // 10, hits.shape[1] // 10 + 1).astype(np.float64)


def coverage(ranked: np.ndarray, k: int, n_items: int) -> float:
    """Catalogue coverage@k = |union over queries of the top k| / n_items (one value, not per user)."""
    top = np.asarray(ranked[:, :k])
    top = top[top >= 0]
    return float(len(np.unique(top)) / n_items) if n_items else 0.0


def popularity_percentiles(counts: np.ndarray, n_special: int) -> np.ndarray:
    """Per-token popularity percentile in [0, 100] from training counts [V]: for item t,
    100 * (#{items j: c_j < c_t} + 0.5 * #{items j: c_j = c_t}) / n_items (mid-rank, so ties share
    one value); NaN for the special tokens."""
    counts = np.asarray(counts, dtype=np.float64)
    items = counts[n_special:]
    n = len(items)
    out = np.full(len(counts), np.nan)
    if n == 0:
        return out
    srt = np.sort(items)
    less = np.searchsorted(srt, items, side="left")
    less_eq = np.searchsorted(srt, items, side="right")
    out[n_special:] = 100.0 * (less + 0.5 * (less_eq - less)) / n
    return out


def popularity_percentile(ranked: np.ndarray, k: int, percentiles: np.ndarray) -> np.ndarray:
    """Mean popularity percentile of the top k (a lower value = less popular picks); empty slots
    are skipped, and a query with no valid slot gets NaN."""
    top = np.asarray(ranked[:, :k], dtype=np.int64)
    valid = top >= 0
    vals = np.where(valid, percentiles[np.where(valid, top, 0)], 0.0)
    valid &= ~np.isnan(vals)
    vals = np.where(valid, vals, 0.0)
    n = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, vals.sum(axis=1) / np.maximum(n, 1), np.nan)


# Names used in results: "<metric>@<k>" for the k-dependent ones, plain for the rest.
AT_K = ("hr", "recall", "ndcg", "mrr", "precision", "poppct")
PLAIN = ("rprec", "clicks")
LOWER_IS_BETTER = frozenset({"clicks"})
LABELS = {
    "hr": "HitRate",
    "recall": "Recall",
    "ndcg": "NDCG",
    "mrr": "MRR",
    "precision": "Precision",
    "poppct": "Pop. percentile",
    "rprec": "R-precision",
    "clicks": "Clicks",
    "coverage": "Coverage",
}


PER_K_METRICS = ("hr", "recall", "ndcg", "mrr", "precision")  # per_user_metrics' name@k, each k
WHOLE_LIST_METRICS = ("rprec", "clicks")  # over the whole list, no k


def metric_names(ks: tuple[int, ...] | list[int]) -> list[str]:
    """The names per_user_metrics reports for `ks` (without popularity percentiles)."""
    return [f"{m}@{k}" for m in PER_K_METRICS for k in ks] + list(WHOLE_LIST_METRICS)


def per_user_metrics(
    ranked: np.ndarray,
    offsets: np.ndarray,
    keys: np.ndarray,
    ks: tuple[int, ...] | list[int],
    percentiles: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every per-query metric for every k in `ks` (each <= L), plus R-precision and clicks over
    the whole list. Returns name -> float64 [B]."""
    hits = hit_matrix(ranked, offsets, keys)
    nrel = n_relevant(offsets)
    if (nrel < 1).any():
        raise ValueError("every query needs at least one relevant item")
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(hits, k)
        out[f"recall@{k}"] = recall(hits, nrel, k)
        out[f"ndcg@{k}"] = ndcg(hits, nrel, k)
        out[f"mrr@{k}"] = mrr(hits, k)
        out[f"precision@{k}"] = precision(hits, k)
        if percentiles is not None:
            out[f"poppct@{k}"] = popularity_percentile(ranked, k, percentiles)
    out["rprec"] = r_precision(hits, nrel)
    out["clicks"] = clicks(hits)
    return out


def split_key(key: str) -> tuple[str, int | None]:
    """'ndcg@10' -> ('ndcg', 10); 'rprec' -> ('rprec', None)."""
    name, _, k = key.partition("@")
    return name, (int(k) if k else None)
