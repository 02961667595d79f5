"""The `pairwise` section of a transformer config: fine-tuning on feedback pairs (ARGUS).

Plain data, so it lives in the models layer: the fitted model reads `score` (how it ranks items)
and the training layer (segue.training.pairwise) reads the rest. A config with this section is a
fine-tuning run: it starts from the weights of the run folder `init_from` and trains on pairs of
one sequence's events that share a history prefix, the better-rated item against the worse one.

Ranking score of item c after a history (h: the hidden state, q: the next-item query, E[c] its
vector, y_hat(h, c): the feedback head's raw output for column `feedback`, ratings normalised per
user):
    logit     s = <q, E[c]>
    feedback  s = y_hat(h, c)
    mix       s = a <q, E[c]> + b y_hat(h, c)    (a, b learned, starting at 1 and `mix_init`)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from segue.config import Config

RankScore = Literal["logit", "feedback", "mix"]


class PairwiseConfig(Config):
    """Fine-tuning on pairs of one sequence's events (better feedback against worse)."""

    init_from: str  # the pretrained run folder (relative paths: to the config file's folder)
    score: RankScore = "mix"
    feedback: str = "rating"  # the feedback-head column used by the feedback / mix scores
    by: str = "rating"  # what orders a pair: "rating" or a feedback column name (fb_<name>)
    # Two events form a pair when at most `window` seconds apart (None: anywhere in the window of
    # the sequence the batch holds); both are scored from the history before the earlier one,
    # lagged by `lag` seconds (ARGUS: user vectors recomputed once a day, lag = 86400).
    window: float | None = Field(None, gt=0)
    lag: float = Field(0.0, ge=0)
    # "random": each pair is scored from a random earlier prefix (an anchor column drawn uniformly
    # from 0, the empty history, up to the lagged anchor): short histories, as cold-start users have
    prefix: Literal["last", "random"] = "last"
    max_pairs: int = Field(64, ge=1)  # pairs drawn per sequence and batch (a fixed shape)
    weight: Literal["gap", "uniform"] = "gap"  # per pair: |feedback gap| or 1
    min_gap: float = Field(0.0, ge=0)  # pairs with a gap at or below this are left out
    mix_init: float = 1.0  # b at the start of a mix fine-tuning (a starts at 1)
