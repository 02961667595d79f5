"""The ranking stage for a caller with its own candidates (`POST /v1/rank`).

Given a history (with its ratings, feedback, times and context, as /v1/recommend takes them) and a
candidate list, each known candidate gets
    score     the model's next-item score of it after the history, conditioned on the context of
              the event to predict (the transformer's next-item head; the same number /v1/recommend
              ranks by), and
    feedback  what the model predicts that event's feedback would be if the candidate came next:
              the transformer's feedback head on each column's own scale (ratings on the rating
              scale, flags as probabilities, fractions in [0, 1]), or a rating predictor's rating;
              absent for a model that predicts none.
Candidates come back best first. Unknown ids cannot be scored: they are listed in a warning. An
empty history is ranked by training popularity (log(1 + count)), like /v1/recommend's fallback
(`Engine.empty_history_scores`); a pipeline ranks it with its ranker, as /v1/recommend does.
A two-stage pipeline ranks through /v1/recommend's own path (pipeline_engine.rank_pipeline: the
same pools, shaped by the playlist `name` and `exclude_seen`, features and ranker), so a candidate's
score is the one /v1/recommend gives it for the same body; each scored candidate keeps the
generators that proposed it and its feature row (for the feature log). It scores only the
candidates in its pool: the others come after them, in the backfill's popularity order, without a
score (`outside_pool` counts those no generator proposed, `in_history` those left out of the pools
as history items, which `exclude_seen` = False lets in).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segue.serving.encoding import EventColumns, model_kwargs
from segue.serving.engine import Engine
from segue.serving.pipeline_engine import rank_pipeline


@dataclass
class RankedCandidates:
    tokens: np.ndarray  # int64 [m], best first
    scores: np.ndarray  # float32 [m]
    feedback: dict[str, np.ndarray] | None  # column -> [m] predictions (same order), if any
    fallback: bool = False  # empty history: popularity (a pipeline: an empty, unnamed history)
    outside_pool: int = 0  # a pipeline's candidates no generator proposed (last, score NaN)
    in_history: int = 0  # a pipeline's candidates left out of its pools as history items (likewise)
    sources: list[list[str]] | None = None  # a pipeline: the generators of each candidate ([]: none)
    features: list[np.ndarray | None] | None = None  # a pipeline: each candidate's feature row


def rank_candidates(
    engine: Engine,
    history: np.ndarray,
    candidates: np.ndarray,
    *,
    context: dict[str, str] | None = None,
    ratings: np.ndarray | None = None,
    events: EventColumns | None = None,
    name: str | None = None,
    exclude_seen: bool = True,
) -> RankedCandidates:
    """Scores and predicted feedback of `candidates` (tokens, unique, known) after one history.
    `name` (a playlist title) and `exclude_seen` shape a two-stage pipeline's candidate pool, as
    on /v1/recommend; other models score every candidate whatever they say."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if engine.pipeline:
        return _rank_in_pool(engine, history, candidates, context, ratings, events, name, exclude_seen)
    if len(history) == 0:
        scores = engine.empty_history_scores(candidates)
        order = np.argsort(-scores, kind="stable")
        return RankedCandidates(candidates[order], scores[order], None, fallback=True)
    scores = engine.score_tokens([history], candidates[None, :], [context], [ratings], [events])[0]
    feedback = None
    if getattr(engine.model, "feedback_targets", None):
        arrays = engine.arrays([history], [context], [ratings], [events])
        fn = engine.model.predict_feedback  # type: ignore[attr-defined]
        got = fn(arrays, None, candidates[None, :], **model_kwargs(fn, arrays))
        feedback = {k: np.asarray(v, np.float32)[0] for k, v in got.items()}
    elif engine.rating_range is not None:
        feedback = {"rating": engine.predict_ratings(history, ratings, candidates)}
    order = np.argsort(-scores, kind="stable")
    fb = None if feedback is None else {k: v[order] for k, v in feedback.items()}
    return RankedCandidates(candidates[order], np.asarray(scores, np.float32)[order], fb)


def _rank_in_pool(
    engine: Engine,
    history: np.ndarray,
    candidates: np.ndarray,
    context: dict[str, str] | None,
    ratings: np.ndarray | None,
    events: EventColumns | None,
    name: str | None,
    exclude_seen: bool,
) -> RankedCandidates:
    """A pipeline's candidates: the ranked pool of /v1/recommend's path (every pool item, nothing
    excluded after ranking), looked up; candidates outside it follow in the backfill's order."""
    history = np.asarray(history, dtype=np.int64)
    arrays = engine.arrays([history], [context], [ratings], [events])
    ranked = rank_pipeline(
        engine.model, [history], len(engine.vocab), [np.zeros(0, np.int64)], exclude_seen=exclude_seen,
        allow=None, names=[name], counts=engine.counts, arrays=arrays,
    )[0]  # fmt: skip
    where = {int(t): i for i, t in enumerate(ranked["tokens"].tolist())}
    at = np.array([where.get(int(t), -1) for t in candidates], dtype=np.int64)
    inside = at >= 0
    fill = engine.model.backfill()  # type: ignore[attr-defined]  # the popularity order of score()
    order = np.concatenate([
        np.flatnonzero(inside)[np.argsort(at[inside], kind="stable")],
        np.flatnonzero(~inside)[np.argsort(-fill[candidates[~inside]], kind="stable")],
    ]).astype(np.int64)  # fmt: skip
    seen = np.isin(candidates, history) & exclude_seen
    scores = np.full(len(candidates), np.nan, np.float32)
    scores[inside] = ranked["scores"][at[inside]]
    features: list[np.ndarray | None] = [ranked["features"][a] if a >= 0 else None for a in at]
    sources = [ranked["sources"][a] if a >= 0 else [] for a in at]
    return RankedCandidates(
        candidates[order],
        scores[order],
        None,
        fallback=len(history) == 0 and not name,
        outside_pool=int((~inside & ~seen).sum()),
        in_history=int((~inside & seen).sum()),
        sources=[sources[i] for i in order],
        features=[features[i] for i in order],
    )
