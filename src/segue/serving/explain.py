"""Explanations: which history items raised each recommended item most (Sprout's "most impactful").

Leave-one-out re-scoring: with h the history (as the model sees it) and s(h, t) the model's score
of item t after h, the impact of history item h_j on t is

    impact(j, t) = s(h, t) - s(h without h_j, t)

Positive impact: h_j pushed t up. All L + 1 histories go through the model in one batched call
(`Engine.explain`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segue.serving.engine import Engine


def explain_items(
    engine: Engine,
    history: np.ndarray,
    items: np.ndarray,
    top: int = 5,
    history_ids: list[str] | None = None,
) -> list[dict[str, Any]]:
    """For each item: its score and the `top` history items by impact (largest first).

    `history_ids` (the request's ids, aligned with `history`) name `<unk>` items as the caller did.
    """
    history = np.asarray(history, dtype=np.int64)
    kept = len(engine.encoder.truncate(history))
    if history_ids is not None:
        history_ids = history_ids[len(history_ids) - kept :]
    history = history[len(history) - kept :]
    items = np.asarray(items, dtype=np.int64)
    if len(items) == 0:
        return []
    if len(history) == 0:
        return [
            {**engine.catalogue.describe(int(t)), "score": None, "contributions": []} for t in items
        ]
    scores, impact = engine.explain(history, items)
    out = []
    for i, t in enumerate(items):
        order = np.argsort(-impact[i], kind="stable")[:top]
        contributions = []
        for j in order:
            about = engine.catalogue.describe(int(history[j]))
            if about["id"] is None and history_ids is not None:
                about = {**about, "id": history_ids[j], "name": history_ids[j]}
            contributions.append({**about, "position": int(j), "impact": float(impact[i, j])})
        out.append(
            {
                **engine.catalogue.describe(int(t)),
                "score": _finite(scores[i]),
                "contributions": contributions,
            }
        )
    return out


def _finite(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None
