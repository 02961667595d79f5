"""Serving a two-stage pipeline folder (segue.models.pipeline): the Engine's path for it.

Per request: every generator proposes candidates (in a thread pool: their numpy/scipy scoring
releases the GIL), seen items and allow lists filter each generator's list, the pool's features go
through the same `pool_features` code as training, the ranker orders the pool, the niche boost
s - b log(count + 1) applies to the ranker's scores, and `exclude` / deny lists remove items from
the ranked pool. Removing them after ranking keeps the other items' scores and order (a feature
such as an item's rank in a generator's list would shift if an excluded item left that list
first), as the model's own recommend() and /v1/rank score them.
Each returned item carries the generators that proposed it and its feature row (for the log).

Times: the ranker's `pop_window_log` and `age_at_query_days` read the time of the history's last
event (PipelineRecommender.features_of: `arrays.ts`), which training and `segue evaluate` take
from the store. A request gives it as `timestamps` (aligned with `history`), which
`pipeline_request_events` turns into the arrays' `ts` column, so a served ranking equals the
evaluated one for the same history and times; without them those features are unknown (NaN).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from segue.data.arrays import SequenceArrays
from segue.models.filters import niche_boost as niche_boost_scores
from segue.models.pipeline import outside_pool
from segue.serving.encoding import EventColumns
from segue.serving.events import HistoryEvents, request_events, served_events, time_order

if TYPE_CHECKING:
    from segue.serving.engine import Engine

TIME_FEATURES = ("pop_window_log", "age_at_query_days")


def is_pipeline(model: object) -> bool:
    return getattr(model, "family", None) == "pipeline" and callable(getattr(model, "pools", None))


def reads_history_times(model: object) -> bool:
    """Does a pipeline's ranker read the time of the history's last event (its store had times)?"""
    state = getattr(model, "state", None)
    return is_pipeline(model) and state is not None and getattr(state, "event_keys", None) is not None


def pipeline_request_events(
    engine: Engine, req: HistoryEvents, ids: list[str], context: dict[str, str] | None, warnings: list[str]
) -> EventColumns | None:
    """A pipeline request's EventColumns: the history's `timestamps` when its ranker reads times
    (as it read the store's in training and evaluation), with a warning for every field it does
    not read and for a history whose last event has no time (the time features are then unknown,
    and the ranking is not the one evaluated with times)."""
    reads = reads_history_times(engine.model)
    if served_events(engine) is not None:  # a generator reads events: its checks, plus the times
        ev = request_events(engine, req, ids, context, warnings)
        if reads and req.timestamps is not None and (ev is None or ev.ts is None):
            ev = ev or EventColumns()
            ev.ts = np.array([0 if t is None else t for t in req.timestamps], dtype=np.int64)
        return ev
    sent = [n for n, v in (("feedback", req.feedback), ("event_context", req.event_context)) if v]
    if sent:
        warnings.append(f"{'/'.join(sent)}: the pipeline model reads no per-event feedback or context; ignored")
    if not reads:
        times = [n for n, v in (("timestamps", req.timestamps), ("ts", req.ts)) if v is not None]
        if times:
            warnings.append(f"{' and '.join(times)}: the pipeline model was trained without event times; ignored")
        return None
    if req.ts is not None:
        warnings.append(
            "ts: the pipeline model reads the time of the history's last event (`timestamps`), not the "
            "time of the event to predict; ignored"
        )
    if ids and (req.timestamps is None or req.timestamps[-1] is None):
        what = "not given" if req.timestamps is None else "null for the last history event"
        warnings.append(
            f"timestamps: {what}; the pipeline's ranker reads the time of the history's last event "
            f"({', '.join(TIME_FEATURES)}), as training and evaluation did: without it those features "
            "are unknown and the ranking may differ from the evaluated one"
        )
    if req.timestamps is None:
        return None
    warnings += time_order(req.timestamps, None)
    return EventColumns(ts=np.array([0 if t is None else t for t in req.timestamps], dtype=np.int64))


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
