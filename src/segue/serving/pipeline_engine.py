"""Serving a two-stage pipeline folder (segue.models.pipeline): the Engine's path for it.

Per request: every generator proposes candidates (in a thread pool: their numpy/scipy scoring
releases the GIL), seen items and allow lists filter each generator's list, the pool's features go
through the same `pool_features` code as training, the ranker orders the pool, the niche boost
s - b log(count + 1) applies to the ranker's scores, and `exclude` / deny lists remove items from
the ranked pool. Removing them after ranking keeps the other items' scores and order (a feature
such as an item's rank in a generator's list would shift if an excluded item left that list
first), as the model's own recommend() and /v1/rank score them.
Each returned item carries the generators that proposed it and its feature row (for the log).
"""

from __future__ import annotations

import numpy as np

from segue.data.arrays import SequenceArrays
from segue.models.filters import niche_boost as niche_boost_scores
from segue.models.pipeline import outside_pool


def is_pipeline(model: object) -> bool:
    return getattr(model, "family", None) == "pipeline" and callable(getattr(model, "pools", None))


def pool_impacts(full: np.ndarray, without: np.ndarray) -> np.ndarray:
    """Leave-one-out impacts [m, L] of a pipeline's scores after the history, full [m], and after
    it less each item, without [L, m]: the ranker score difference where the item is in the pool
    both times, +inf where it leaves the pool without that history item, -inf where it joins it,
    0 where it is outside both times (the backfill's order is no ranker score)."""
    out_full, out_wo = outside_pool(full)[None, :], outside_pool(without)  # [1, m], [L, m]
    impact = np.where(out_full | out_wo, 0.0, full[None, :] - without)
    impact = np.where(~out_full & out_wo, np.inf, impact)
    return np.where(out_full & ~out_wo, -np.inf, impact).T


def rank_pipeline(
    model: object,
    histories: list[np.ndarray],
    k: int,
    excl: list[np.ndarray],
    *,
    exclude_seen: bool,
    allow: np.ndarray | None,
    names: list[str | None] | None,
    counts: np.ndarray,
    niche_boost: float = 0.0,
    timings: dict[str, float] | None = None,
    arrays: SequenceArrays | None = None,
) -> list[dict]:
    """Per history: tokens [<=k], scores, the proposing generators and features of each item.
    `excl` (per history: seen items, `exclude`, deny) leave the ranked pool; `arrays`: the
    histories with their event columns (ratings, feedback, context), if any."""
    if arrays is None:
        arrays = SequenceArrays.from_lists([np.asarray(h, dtype=np.int32) for h in histories])
    arrays.meta = dict(arrays.meta)
    arrays.meta["seq_names"] = list(names) if names is not None else [None] * len(histories)
    rows = np.arange(len(histories))
    pools = model.pools(  # type: ignore[attr-defined]
        arrays, rows, exclude_seen=exclude_seen, allow=allow, timings=timings
    )
    scores, feats = model.rank_pools(arrays, rows, pools, timings=timings)  # type: ignore[attr-defined]
    gens = model.generator_names  # type: ignore[attr-defined]
    out = []
    for pool, s, f, banned in zip(pools, scores, feats, excl, strict=True):
        if niche_boost:
            s = niche_boost_scores(s, counts[pool.tokens], niche_boost)
        order = np.lexsort((pool.tokens, -s))
        order = order[~np.isin(pool.tokens[order], banned)][:k]
        out.append(
            {
                "tokens": pool.tokens[order],
                "scores": np.asarray(s[order], np.float32),
                "sources": pool.sources(gens, order),
                "features": f[order],
            }
        )
    return out
