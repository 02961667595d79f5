"""The rating interface: families that predict explicit feedback (ratings) meet `RatingPredictor`.

A rating predictor answers, for (history row, item token) pairs, the rating the history's user
would give the item, on the original scale of the data (e.g. 1-5 stars). It is the counterpart
of `Recommender.score` (an ordering) for explicit feedback, and what segue.evaluation.ratings
measures with RMSE, MAE and pair accuracy. Histories are the same `SequenceArrays` the
recommenders take; their `rating` column (NaN = unrated event) is the feedback a model may fold in.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from segue.data.arrays import SequenceArrays
from segue.errors import InputError


@runtime_checkable
class RatingPredictor(Protocol):
    def predict(
        self,
        histories: SequenceArrays,
        rows: np.ndarray,
        tokens: np.ndarray,
        ratings: np.ndarray | None = None,
    ) -> np.ndarray:
        """Predicted ratings float32 [P] for the pairs (history row rows[p], item token tokens[p]).

        `ratings`, if given, is float [n_events of histories] aligned with `histories.tokens` and
        replaces `histories.rating` as the feedback of the history events (NaN = unrated).
        Tokens the model does not know (special tokens, <unk>) still get a prediction (e.g. the
        user's mean); predictions are on the original rating scale.
        """
        ...


@runtime_checkable
class ScaledRatingPredictor(RatingPredictor, Protocol):
    """A rating predictor that also reads ratings as history feedback, on a known scale."""

    def rating_range(self) -> tuple[float, float]:
        """(low, high): the rating scale the model was trained on. Ratings given to it as history
        feedback outside this range are rejected by callers (the server answers 422)."""
        ...


def history_ratings(histories: SequenceArrays, ratings: np.ndarray | None) -> np.ndarray:
    """The feedback of every history event, float32 [n_events]: `ratings` if given, else the
    histories' rating column, else all NaN (a history without ratings is unrated)."""
    n = int(histories.offsets[-1])
    if ratings is None:
        if histories.rating is None:
            return np.full(n, np.nan, np.float32)
        return np.asarray(histories.rating, dtype=np.float32)
    ratings = np.asarray(ratings, dtype=np.float32)
    if ratings.shape != (n,):
        raise InputError(f"ratings: expected one value per history event, shape ({n},), got {ratings.shape}")
    return ratings


def check_pairs(histories: SequenceArrays, rows: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows int64 [P], tokens int64 [P]) after checking they align and rows exist."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if rows.shape != tokens.shape:
        raise InputError(f"predict: rows and tokens must align, got {rows.shape} and {tokens.shape}")
    if len(rows) and (rows.min() < 0 or rows.max() >= len(histories)):
        raise InputError(f"predict: rows must lie in [0, {len(histories)}), got {rows.min()}..{rows.max()}")
    return rows, tokens
