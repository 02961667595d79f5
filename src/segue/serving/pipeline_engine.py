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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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


@dataclass
class GeneratorView:
    """What segue.serving.events reads of an Engine (model, info, rating_range, context_values),
    for a pipeline's generator that reads per-event inputs: the request's ratings, feedback, times
    and context are checked against that generator's `events`, as its own server would check them,
    and reach it through the pipeline's arrays, as the store's columns did in training."""

    model: Any
    info: Any
    rating_range: tuple[float, float] | None = None
    context_values: dict[str, frozenset[str]] = field(default_factory=dict)


def event_generator(model: object) -> Any | None:
    """A pipeline's generator that reads per-event inputs (a transformer with `events`): the one
    its `feedback` setting names, else the first in config order; None when none does."""
    from segue.models.events import EventsConfig

    gens: dict[str, Any] = getattr(model, "generators", None) or {}
    first = getattr(getattr(model, "config", None), "feedback", None)
    for name in ([first] if first in gens else []) + list(gens):
        g = gens[name]
        cfg = getattr(getattr(g, "config", None), "events", None)
        if isinstance(cfg, EventsConfig) and cfg.enabled and getattr(getattr(g, "network", None), "has_events", False):
            return g
    return None


def events_view(engine: Engine) -> Engine | GeneratorView:
    """The engine whose per-event inputs segue.serving.events checks (`served_events`,
    `input_rating_scale`, `describe`): a pipeline's event-reading generator, else the engine."""
    if not engine.pipeline or served_events(engine) is not None:
        return engine
    gen = event_generator(engine.model)
    if gen is None:
        return engine
    cats = getattr(getattr(gen, "network", None), "categories", None) or {}
    return GeneratorView(gen, engine.info, None, {k: frozenset(v) for k, v in cats.items()})


def pipeline_request_events(
    engine: Engine, req: HistoryEvents, ids: list[str], context: dict[str, str] | None, warnings: list[str]
) -> EventColumns | None:
    """A pipeline request's EventColumns: what its event-reading generator reads (checked as
    request_events checks it for that generator), plus the history's `timestamps` when its ranker
    reads times (as it read the store's in training and evaluation); a warning for every field
    neither reads and for a history whose last event has no time (the ranker's time features are
    then unknown, and the ranking is not the one evaluated with times)."""
    reads = reads_history_times(engine.model)
    view = events_view(engine)
    cfg = served_events(view)  # type: ignore[arg-type]
    if cfg is not None:
        gen_time = cfg.time
        # Times the ranker reads and the generator does not are no "ignored" field for it.
        sub = req.model_copy(update={"timestamps": None}) if reads and not gen_time else req
        ev = request_events(view, sub, ids, context, warnings)  # type: ignore[arg-type]
    else:
        gen_time, ev = False, None
        sent = [n for n, v in (("feedback", req.feedback), ("event_context", req.event_context)) if v]
        if sent:
            warnings.append(f"{'/'.join(sent)}: the pipeline model reads no per-event feedback or context; ignored")
        times = [n for n, v in (("timestamps", req.timestamps), ("ts", req.ts)) if v is not None and not (reads and n == "timestamps")]
        if times:
            what = "was trained without event times" if not reads else "reads the time of the history's last event (`timestamps`), not the time of the event to predict"
            warnings.append(f"{' and '.join(times)}: the pipeline model {what}; ignored")
    if not reads:
        return ev
    if ids and (req.timestamps is None or req.timestamps[-1] is None):
        what = "not given" if req.timestamps is None else "null for the last history event"
        warnings.append(
            f"timestamps: {what}; the pipeline's ranker reads the time of the history's last event "
            f"({', '.join(TIME_FEATURES)}), as training and evaluation did: without it those features "
            "are unknown and the ranking may differ from the evaluated one"
        )
    if req.timestamps is None:
        return ev
    if not gen_time:  # request_events said nothing of the times' order
        warnings += time_order(req.timestamps, None)
    if ev is None or ev.ts is None:
        ev = ev or EventColumns()
        ev.ts = np.array([0 if t is None else t for t in req.timestamps], dtype=np.int64)
    return ev


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
