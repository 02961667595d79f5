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
A two-stage pipeline scores only the candidates its generators propose: the others come after
them, in the backfill's popularity order, without a score (`outside_pool` counts them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segue.models.pipeline import outside_pool
from segue.serving.encoding import EventColumns, model_kwargs
from segue.serving.engine import Engine


@dataclass
class RankedCandidates:
    tokens: np.ndarray  # int64 [m], best first
    scores: np.ndarray  # float32 [m]
    feedback: dict[str, np.ndarray] | None  # column -> [m] predictions (same order), if any
    fallback: bool = False  # empty history: popularity
    outside_pool: int = 0  # a pipeline's candidates no generator proposed (last, score NaN)


def rank_candidates(
    engine: Engine,
    history: np.ndarray,
    candidates: np.ndarray,
    *,
    context: dict[str, str] | None = None,
    ratings: np.ndarray | None = None,
    events: EventColumns | None = None,
) -> RankedCandidates:
    """Scores and predicted feedback of `candidates` (tokens, unique, known) after one history."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if len(history) == 0 and not engine.pipeline:
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
    scores = np.asarray(scores, np.float32)[order]
    outside = outside_pool(scores) if engine.pipeline else np.zeros(len(scores), bool)
    return RankedCandidates(
        candidates[order], np.where(outside, np.nan, scores), fb, fallback=len(history) == 0, outside_pool=int(outside.sum())
    )
