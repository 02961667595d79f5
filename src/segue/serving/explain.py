"""Explanations: which history items raised each recommended item most (Sprout's "most impactful"),
and which rated profile items the model did not expect (Sprout's "most surprising").

Leave-one-out re-scoring: with h the history (as the model sees it) and s(h, t) the model's score
of item t after h, the impact of history item h_j on t is

    impact(j, t) = s(h, t) - s(h without h_j, t)

Positive impact: h_j pushed t up. All L + 1 histories go through the model in one batched call
(`Engine.explain`); a removed item's rating leaves with it. For a two-stage pipeline, t must be in
the candidate pool for its ranker score to mean anything: where t leaves the pool without h_j the
contribution says so (`"pool": "leaves"`, no impact; listed first, being the largest effect), and
where it joins it, `"pool": "joins"`.

Surprise, for families that predict ratings: with r_j the rating the profile gives item h_j and
r_hat(h, h_j) the model's predicted rating of h_j given the whole profile h (ratings included),

    surprise(j) = r_j - r_hat(h, h_j)

and the items with the largest |surprise(j)| are listed. A rated item repeated in the profile
counts once, by its last rating.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segue.data.vocab import N_SPECIAL
from segue.serving.encoding import EventColumns
from segue.serving.engine import Engine


def explain_profile(
    engine: Engine,
    history: np.ndarray,
    items: np.ndarray,
    top: int = 5,
    history_ids: list[str] | None = None,
    ratings: np.ndarray | None = None,
    offset: int = 0,
    events: EventColumns | None = None,
    context: dict[str, str] | None = None,
    name: str | None = None,
    exclude_seen: bool = True,
    allow: np.ndarray | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(explained items, surprising items) of one profile.

    Each item gets its score, its predicted rating (families that predict ratings) and the `top`
    history items by impact (largest first). The surprising items - None for families without
    ratings - are the `top` rated, known profile items by |given - predicted| (largest first), each
    with its position in the request (`offset` = items cut before `history`), given, predicted and
    their difference. Both predictions come from one `predict_ratings` call: the same profile, one
    forward pass. `history_ids` (the request's ids, aligned with `history`) name `<unk>` items as
    the caller did; `ratings` (aligned, NaN = unrated), `events` (aligned feedback, times and
    context, with the next event's time), `context` (of the event to predict) and `name` (a
    playlist title, which shapes a pipeline's candidate pool, as an `allow` list does) go to the
    model with the history, as /v1/recommend passes them, so the explained score is the served one.
    """
    history = np.asarray(history, dtype=np.int64)
    kept = len(engine.encoder.truncate(history))
    offset += len(history) - kept
    history = history[len(history) - kept :]
    if history_ids is not None:
        history_ids = history_ids[len(history_ids) - kept :]
    if ratings is not None:
        ratings = np.asarray(ratings, np.float32)[len(ratings) - kept :]
    if events is not None:
        events = events.tail(kept)
    items = np.asarray(items, dtype=np.int64)
    rating_family = engine.rating_range is not None
    sel = _rated_profile_items(history, ratings) if rating_family else np.zeros(0, np.int64)
    predicted = None
    if rating_family and len(history) and len(items) + len(sel):
        predicted = engine.predict_ratings(history, ratings, np.concatenate([items, history[sel]])).astype(np.float64)
    explained = _explain_items(
        engine, history, items, top, history_ids, ratings, None if predicted is None else predicted[: len(items)], offset,
        events, context, name, exclude_seen, allow,
    )
    if not rating_family:
        return explained, None
    if predicted is None or len(sel) == 0:
        return explained, []
    assert ratings is not None  # sel is empty without ratings
    return explained, _surprising(engine, history, ratings, sel, predicted[len(items) :], top, history_ids, offset)


def _explain_items(
    engine: Engine,
    history: np.ndarray,
    items: np.ndarray,
    top: int,
    history_ids: list[str] | None,
    ratings: np.ndarray | None,
    predicted: np.ndarray | None,
    offset: int = 0,
    events: EventColumns | None = None,
    context: dict[str, str] | None = None,
    name: str | None = None,
    exclude_seen: bool = True,
    allow: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    # A contribution's `position` is its index in the request's history: `offset` items were cut
    # before `history` (the model's context), as for the surprising items.
    if len(items) == 0:
        return []
    if len(history) == 0:  # nothing to leave out: the empty-history score, as /v1/recommend's
        scores = engine.empty_history_scores(items, name, allow=allow)
        return [
            {**engine.catalogue.describe(int(t)), "score": _finite(s), "contributions": []}
            for t, s in zip(items.tolist(), scores.tolist(), strict=True)
        ]
    scores, impact = engine.explain(history, items, ratings, events, context, name, exclude_seen, allow=allow)
    out = []
    for i, t in enumerate(items):
        order = np.argsort(-impact[i], kind="stable")[:top]
        contributions = []
        for j in order:
            about = engine.catalogue.describe(int(history[j]))
            if about["id"] is None and history_ids is not None:
                about = {**about, "id": history_ids[j], "name": history_ids[j]}
            x = float(impact[i, j])
            if np.isinf(x):  # a pipeline's item leaves (+inf) or joins (-inf) the candidate pool
                contributions.append({**about, "position": offset + int(j), "impact": None, "pool": "leaves" if x > 0 else "joins"})
            else:
                contributions.append({**about, "position": offset + int(j), "impact": x})
        out.append(
            {
                **engine.catalogue.describe(int(t)),
                "score": _finite(scores[i]),
                **({} if predicted is None else {"predicted_rating": _finite(predicted[i])}),
                "contributions": contributions,
            }
        )
    return out


def _rated_profile_items(history: np.ndarray, ratings: np.ndarray | None) -> np.ndarray:
    """Positions of the rated, known profile items, the last occurrence of each."""
    if ratings is None or len(history) == 0:
        return np.zeros(0, np.int64)
    # The last occurrence of each token: reversed, np.unique's first index is the last one.
    _, last_rev = np.unique(history[::-1], return_index=True)
    sel = np.sort(len(history) - 1 - last_rev)
    return sel[(history[sel] >= N_SPECIAL) & np.isfinite(ratings[sel])]


def _surprising(
    engine: Engine,
    history: np.ndarray,
    ratings: np.ndarray,
    sel: np.ndarray,
    pred: np.ndarray,
    top: int,
    history_ids: list[str] | None,
    offset: int,
) -> list[dict[str, Any]]:
    given = np.asarray(ratings, np.float64)
    ok = np.isfinite(pred)
    sel, pred = sel[ok], pred[ok]
    order = np.argsort(-np.abs(given[sel] - pred), kind="stable")[:top]
    out = []
    for i in order:
        j = int(sel[i])
        about = engine.catalogue.describe(int(history[j]))
        if about["id"] is None and history_ids is not None:
            about = {**about, "id": history_ids[j]}
        out.append(
            {
                **about,
                "position": offset + j,
                "given": float(given[j]),
                "predicted": float(pred[i]),
                "difference": float(given[j] - pred[i]),
            }
        )
    return out


def _finite(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None
