"""What the transformer reads and predicts about each event besides its item (ARGUS' two heads).

`EventsConfig` (the `events` section of TransformerConfig; everything off by default) names the
columns. The functions here turn a store's per-event columns into the fixed-shape arrays the
network takes, on the host, in numpy, the same way for training batches (segue.data.loader keys
rating / fb_<name> / ctx_<name> and their target_* twins) and for scored histories (a
SequenceArrays, from a split or from a serving request):

    rating_bucket [B, T] int32    0 = no rating; 1 + round((r - lo) / (hi - lo) (n - 1)) clipped
                                  to 1..n over the configured scale [lo, hi] with n buckets
    fb, fb_missing [B, T, F]      f(x) per feedback column (flag: x > 0.5; fraction: clip(x, 0, 1);
                                  count: log(1 + max(x, 0)); numeric: x), 0 and missing = 1 where
                                  the event has no value
    ctx, next_ctx [B, T, C] int32 category slots: 0 = null or a category the model never saw,
                                  1 + i for the model's i-th training category of that column.
                                  next_ctx[:, t] is the context of event t + 1 (the target's),
                                  known at request time (platform, hour of the request)
    fb_target, fb_mask [B, T, K]  what the feedback head is trained on (see `head_targets`)

With `time`, three more context columns come from the events' unix timestamps (`ts`; UTC):
    gap   0 = unknown (no timestamp, or no earlier event in the window), 1 = same second,
          2 + floor(log2(seconds since the previous event)) up to 33
    hour  1 + hour of day (0 = unknown);   day  1 + day of week, Monday = 1 (0 = unknown)
For the next event (next_ctx) they are its own time and its gap to the last input event; a
scored history without the next event's timestamp leaves them unknown.

Categories are matched by *name*: a SequenceArrays compiled from another part of a split, or built
from a request, codes its categories in its own order (`context_categories`), so codes are
remapped through the model's saved training lists (`context_lut`).

Ratings as a head target are normalised per row: z = (r - mu) / s with mu and sd the mean and
standard deviation of the row's rated *input* events in the window (the history the model sees;
with rating_stats = "prefix", a training target's are those of the inputs up to its own column
only, as a scored history has them: `prefix_rating_stats`)
and s = max(sd, rating_std_floor); a row without rated inputs takes mu = the scale's midpoint.
With a rating prior (m0, s0) (the training ratings' mean and standard deviation, fitted with the
model and saved with its weights; `fit_rating_prior`), the row statistics shrink towards it as if the
row held k = rating_prior_weight more ratings drawn from it:
    mu = (sum r + k m0) / (n + k),   sd^2 = (sum (r - mu)^2 + k s0^2) / (n + k)
so a new user (n = 0) is normalised around the mean rating, not the scale's midpoint, and a user
with one rating does not get sd = 0. A model saved without a prior keeps the plain statistics.
A prediction goes back to the scale as clip(mu + s z, lo, hi) with mu and s of the history.
With rating_stats_scope = "history", a scored history's statistics read all its rated events, not
only the window the network reads (training targets keep the statistics of their batch window).
With rating_min_history = m > 0, a history with fewer than m rated events gets s = 0 (it predicts
mu, the baseline) and a training target whose prefix holds fewer than m rated inputs is masked.

With item biases (rating_item_bias = lambda > 0; what biasedmf's item term captures) the head
predicts a residual over a user + item bias baseline fitted on the training ratings:
    b_i from the ridge baseline m + b_u + b_i of the training ratings (m: their mean; b_u, b_i
          shrunk by lambda pseudo-ratings each, alternated; `fit_item_bias`)
every rating r of item i is read as r - b_i by the statistics above (the prior too: the mean and
sd of the training residuals), so mu is the row's shrunk user bias, the target is
z = (r - b_i - mu) / s and a prediction is clip(mu + b_i + s z, lo, hi): an untrained head
(z = 0) already predicts the bias baseline. The biases are saved with the weights.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from segue.config import Config
from segue.data.arrays import SequenceArrays
from segue.data.vocab import N_SPECIAL, UNK
from segue.models.ridge import stacked_ridge

FeedbackKind = Literal["flag", "fraction", "count", "numeric"]
HeadKind = Literal["rating", "flag", "fraction", "count", "numeric"]


class EventsConfig(Config):
    """Feedback and context per event (all off: the plain next-item transformer)."""

    rating: bool = False  # embed each input event's rating (buckets over rating_scale)
    rating_scale: tuple[float, float] = (1.0, 5.0)
    rating_buckets: int = Field(5, ge=2)
    # fb_<name> columns embedded by a learned projection (with a missing-value indicator each)
    feedback: dict[str, FeedbackKind] = {}
    context: list[str] = []  # ctx_<name> categorical columns: input events and the next-item head
    max_categories: int = Field(64, ge=1)  # categories kept per context column (table rows - 1)
    time: bool = False  # gap to the previous event, hour of day, day of week (needs timestamps)
    # feedback head: "rating" or a name of `feedback` -> loss weight (Huber on ratings normalised
    # per row, BCE on flags, cross-entropy on [0, 1] for fractions, Huber on counts / numerics)
    predict: dict[str, float] = {}
    rating_std_floor: float = Field(0.5, gt=0)  # s = max(sd of the row's ratings, this)
    # pseudo-ratings at the training prior (mean, sd) added to every row's statistics (0: none)
    rating_prior_weight: float = Field(2.0, ge=0)
    # shrinkage lambda of the fitted item biases the rating head predicts a residual over (0: none)
    rating_item_bias: float = Field(0.0, ge=0)
    # the statistics a training target is normalised with: the whole window's rated inputs
    # ("window"), or only those before the target ("prefix": what a scored history has, so a new
    # user's first ratings are trained as they are predicted)
    rating_stats: Literal["window", "prefix"] = "window"
    # rank k of a bilinear user-item term added to the rating column, <P h_t, Q E[x_{t+1}]>
    # (biased MF's p_u . q_i, which an MLP over [h; E] represents poorly; 0: none)
    rating_rank: int = Field(0, ge=0)
    # a history with fewer rated events than this predicts the bias baseline (mu + b_i) and a
    # target after such a prefix carries no rating loss (0: the head predicts every rating). At 1,
    # an empty history predicts what biased MF does for a new user, instead of a residual the head
    # could only learn from the training users' first ratings
    rating_min_history: int = Field(0, ge=0)
    # with rating_rank > 0: false leaves the rating column to the bilinear term alone (the MLP's
    # output there is dropped), i.e. biased MF's structure m + b_u + b_i + p_u . q_i with the
    # user factor P h_t read from the history
    rating_mlp: bool = True
    # the ratings a scored history's statistics (mu, s and the count above) come from: the window
    # the network reads (its last context_length - 1 events), or every rated event of the history
    # (a user's bias is better estimated from all of it; on ml-100k's temporal split the window's
    # mean loses 0.022 RMSE for users with a history, most of them beyond 99 ratings)
    rating_stats_scope: Literal["window", "history"] = "window"
    # add to h_t the rating-weighted sum of the rated input items' vectors up to t, over sqrt of
    # their count, through a projection that starts at zero: sum_j w(r_j) E[x_j] / sqrt(n_t)
    # (w learned per rating bucket, starting at -1..1): the user factor of asymmetric SVD
    # (Koren 2008), a causal running sum the attention layers cannot form (they average the
    # item and rating embeddings separately, never their product)
    rating_fold: bool = False
    # lambda of the ridge fold-in user factor (0: none): for a target after the rated events j
    # (item vectors q_j = g Q E[x_j], g a learned gain; residuals e_j = r_j - b_j - m0 over the item
    # biases and the prior mean), [b_u, p_u] = (sum_j f_j f_j^T + diag(rating_ridge_bias, lambda,
    # ...))^-1 sum_j f_j e_j with f_j = [1, q_j] (the ALS user step of biasedmf, solved from the
    # history), and the rating column adds (b_u + <p_u, q_{t+1}>) / s0. The user statistics are then
    # the prior's (mu = m0, s = s0: the fold-in is the user's bias and factor). Training targets
    # fold in their prefix (causal prefix sums); a scored history folds in the events the
    # statistics read (rating_stats_scope: the window, or all of them)
    rating_ridge: float = Field(0.0, ge=0)
    rating_ridge_bias: float = Field(5.0, gt=0)  # ridge weight on the fold-in's user bias b_u
    # the fold-in's item vectors are a [V, k] table of their own (g T[x], trained by the rating
    # loss alone) instead of g Q E[x] (a projection of the next-item table)
    rating_ridge_table: bool = False
    # |q| of an item's fold-in vector at init (biasedmf's ALS factors: ~0.57 on ml-100k); small
    # values start every item near 0, as ALS leaves the items it knows little about
    rating_ridge_init: float = Field(0.5, gt=0)
    # with rating_ridge: also add the network's own user factor P h_t to p_u (P starts at zero)
    rating_hidden: bool = True
    # where rating_ridge_table starts: "random" (norm rating_ridge_init), or "als": the item
    # factors of biased MF fitted by ALS on the training ratings (segue.models.biasedmf.fit_als;
    # rank rating_rank, reg rating_ridge, bias_reg rating_ridge_bias) with the gain g at 1, so that
    # at step 0 the fold-in is biasedmf's user step over those factors; training then adapts them
    rating_ridge_start: Literal["random", "als"] = "random"
    huber_delta: float = Field(1.0, gt=0)
    head_width: int | None = Field(None, ge=1)  # hidden width of both heads' MLPs (default d_ff)

    @model_validator(mode="after")
    def _check(self) -> EventsConfig:
        lo, hi = self.rating_scale
        if not hi > lo:
            raise ValueError(f"rating_scale must be (low, high) with high > low, got {self.rating_scale}")
        for name, w in self.predict.items():
            if name != "rating" and name not in self.feedback:
                raise ValueError(
                    f"predict: '{name}' is neither 'rating' nor a column of events.feedback "
                    f"({', '.join(sorted(self.feedback)) or 'none'}), so its kind is unknown"
                )
            if w < 0:
                raise ValueError(f"predict: the weight of '{name}' is negative ({w})")
        for name in ("rating_rank", "rating_min_history"):
            if getattr(self, name) > 0 and "rating" not in self.predict:
                raise ValueError(f"{name}: the feedback head predicts no rating (add 'rating' to predict)")
        if not self.rating_mlp and self.rating_rank == 0:
            raise ValueError("rating_mlp = false needs rating_rank > 0 (the rating column would be empty)")
        if self.rating_ridge_start == "als" and not (self.rating_ridge > 0 and self.rating_ridge_table):
            raise ValueError("rating_ridge_start = 'als' starts the fold-in's own table: set rating_ridge > 0 and rating_ridge_table = true")
        if self.rating_ridge > 0:
            if self.rating_rank == 0:
                raise ValueError("rating_ridge: the fold-in needs item vectors of rank rating_rank > 0")
            if self.rating_item_bias <= 0 or self.rating_prior_weight <= 0:
                raise ValueError(
                    "rating_ridge: the fold-in reads residuals over the fitted item biases and the prior mean "
                    "(set rating_item_bias > 0 and rating_prior_weight > 0)"
                )
        if self.rating_fold and not self.rating:
            raise ValueError("rating_fold: the inputs' ratings are not read (set rating = true)")
        if len(set(self.context)) != len(self.context):
            raise ValueError(f"context lists a column twice: {self.context}")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.rating or self.feedback or self.context or self.predict or self.time)

    @property
    def n_context(self) -> int:
        """Context columns the network embeds: the categorical ones, then gap / hour / day."""
        return len(self.context) + (N_TIME if self.time else 0)

    @property
    def context_rows(self) -> int:
        """Rows of each context embedding table (slot 0 + categories, or the time slots)."""
        return max(self.max_categories, GAP_SLOTS - 1 if self.time else 0) + 1

    @property
    def feedback_names(self) -> list[str]:
        return sorted(self.feedback)

    def targets(self) -> list[tuple[str, HeadKind, float]]:
        """(name, kind, weight) of each head output, in output order (sorted by name)."""
        return [(n, "rating" if n == "rating" else self.feedback[n], self.predict[n]) for n in sorted(self.predict)]


Categories = dict[str, list[str]]
N_TIME = 3  # gap, hour, day
GAP_SLOTS = 34  # 0 unknown, 1 same second, 2 + floor(log2(gap)) for gaps up to 2^32 s


def time_slots(ts: np.ndarray, prev_ts: np.ndarray, ok: np.ndarray, prev_ok: np.ndarray) -> np.ndarray:
    """[..., 3] int32 (gap, hour, day) slots of events at `ts` after events at `prev_ts` (unix
    seconds; `ok` / `prev_ok`: the event exists; ts <= 0 counts as unknown)."""
    ts = np.asarray(ts, dtype=np.int64)
    prev_ts = np.asarray(prev_ts, dtype=np.int64)
    known = ok & (ts > 0)
    gap = ts - prev_ts
    has_gap = known & prev_ok & (prev_ts > 0) & (gap >= 0)
    log_gap = np.floor(np.log2(np.maximum(gap, 1))).astype(np.int64)
    g = np.where(gap == 0, 1, np.minimum(2 + log_gap, GAP_SLOTS - 1))
    hour = (ts // 3600) % 24 + 1
    day = (ts // 86400 + 3) % 7 + 1  # 1970-01-01 was a Thursday: Monday = 1
    out = np.stack([np.where(has_gap, g, 0), np.where(known, hour, 0), np.where(known, day, 0)], axis=-1)
    return out.astype(np.int32)


def _prev(a: np.ndarray, fill: object = 0) -> np.ndarray:
    """a shifted one column to the right along axis 1 (column 0 gets `fill`)."""
    out = np.empty_like(a)
    out[:, 0] = fill
    out[:, 1:] = a[:, :-1]
    return out


# ---------------------------------------------------------------------------------------------
# categories


def model_categories(cfg: EventsConfig, arrays: SequenceArrays, source: str = "training data") -> Categories:
    """The training category lists of the configured context columns (saved with the model).

    Raises ValueError naming the column when the data lacks it or has too many categories."""
    out: Categories = {}
    for name in cfg.context:
        if name not in arrays.context:
            have = ", ".join(sorted(arrays.context)) or "none"
            raise ValueError(f"events.context: {source} has no context column '{name}' (it has: {have})")
        cats = list(arrays.context_categories.get(name, []))
        if len(cats) > cfg.max_categories:
            raise ValueError(
                f"events.context: column '{name}' has {len(cats)} categories in the {source}, above "
                f"events.max_categories = {cfg.max_categories} (raise it)"
            )
        out[name] = cats
    return out


def context_lut(model_cats: list[str], arrays_cats: list[str]) -> np.ndarray:
    """int32 [len(arrays_cats) + 1]: code c of the arrays -> model slot (1 + index by name, 0 if
    the model never saw it); the last entry serves code -1 (null)."""
    index = {c: i for i, c in enumerate(model_cats)}
    return np.array([index.get(c, -1) + 1 for c in arrays_cats] + [0], dtype=np.int32)


def slots(lut: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Model slots of codes (-1 = null, and codes past the lut, are slot 0)."""
    codes = np.asarray(codes)
    ok = (codes >= 0) & (codes < len(lut) - 1)
    return np.where(ok, lut[np.where(ok, codes, len(lut) - 1)], 0).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# per-event encodings


def rating_buckets(cfg: EventsConfig, rating: np.ndarray, present: np.ndarray) -> np.ndarray:
    """0 where absent or NaN, else 1 + round((r - lo) / (hi - lo) (n - 1)) clipped to 1..n."""
    lo, hi = cfg.rating_scale
    n = cfg.rating_buckets
    r = np.asarray(rating, dtype=np.float32)
    ok = present & np.isfinite(r)
    b = np.clip(np.rint((np.where(ok, r, lo) - lo) / (hi - lo) * (n - 1)), 0, n - 1).astype(np.int32) + 1
    return np.where(ok, b, 0).astype(np.int32)


def feedback_value(kind: str, x: np.ndarray) -> np.ndarray:
    """The input/target transform of a feedback column (NaN stays NaN)."""
    x = np.asarray(x, dtype=np.float32)
    if kind == "flag":
        return np.where(np.isfinite(x), (x > 0.5).astype(np.float32), np.nan)
    if kind == "fraction":
        return np.clip(x, 0.0, 1.0)
    if kind == "count":
        return np.log1p(np.maximum(x, 0.0))
    return x


def _shrunk_stats(
    cfg: EventsConfig, n: np.ndarray, s1: np.ndarray, s2: np.ndarray, prior: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, s) from the count n, sum s1 and sum of squares s2 of rated events (any shape), shrunk
    towards `prior` (m0, s0) by cfg.rating_prior_weight pseudo-ratings (the module docstring):
    mu = (s1 + k m0) / (n + k), s = max(sqrt((sum (r - mu)^2 + k s0^2) / (n + k)), floor)."""
    if prior is None:
        m0, s0, k = 0.5 * (cfg.rating_scale[0] + cfg.rating_scale[1]), 0.0, 0.0
    else:
        m0, s0, k = float(prior[0]), float(prior[1]), float(cfg.rating_prior_weight)
    total = n + k
    safe = np.maximum(total, 1e-12)
    mu = np.where(total > 0, (s1 + k * m0) / safe, m0)
    ss = np.maximum(s2 - 2 * mu * s1 + n * mu * mu, 0.0) + k * s0**2  # sum (r - mu)^2 + k s0^2
    var = np.where(total > 0, ss / safe, s0**2)
    s = np.maximum(np.sqrt(var), cfg.rating_std_floor)
    return mu.astype(np.float32), s.astype(np.float32)


def _rated_values(rating: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rated flags, ratings with 0 elsewhere) of the present events, float64."""
    r = np.asarray(rating, dtype=np.float64)
    ok = present & np.isfinite(r)
    return ok, np.where(ok, r, 0.0)


def row_rating_stats(
    cfg: EventsConfig, rating: np.ndarray, present: np.ndarray, prior: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(mu [B], s [B]) of each row's rated present events, shrunk towards `prior` (m0, s0) by
    cfg.rating_prior_weight pseudo-ratings when given (see the module docstring)."""
    ok, v = _rated_values(rating, present)
    return _shrunk_stats(cfg, ok.sum(axis=-1).astype(np.float64), v.sum(axis=-1), (v * v).sum(axis=-1), prior)


def prefix_rating_stats(
    cfg: EventsConfig, rating: np.ndarray, present: np.ndarray, prior: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(mu [B, T], s [B, T]): `row_rating_stats` of each column's prefix (the rated present events
    in columns 0..t); the last column's equal the row's."""
    ok, v = _rated_values(rating, present)
    return _shrunk_stats(cfg, np.cumsum(ok, axis=-1, dtype=np.float64), np.cumsum(v, axis=-1), np.cumsum(v * v, axis=-1), prior)


def fit_rating_prior(cfg: EventsConfig, rating: np.ndarray | None, offset: np.ndarray | None = None) -> tuple[float, float] | None:
    """(mean, sd) of the finite training ratings (minus `offset`, each event's item bias, when
    given): the prior of `row_rating_stats`; None when the head predicts no rating, the prior is
    off, or there are no ratings."""
    if "rating" not in cfg.predict or cfg.rating_prior_weight <= 0 or rating is None:
        return None
    r = np.asarray(rating, dtype=np.float64)
    if offset is not None:
        r = r - np.asarray(offset, dtype=np.float64)
    r = r[np.isfinite(r)]
    if not len(r):
        return None
    return float(r.mean()), float(r.std())


BIAS_ITERS = 10  # alternations of user and item biases (the RMSE on ml-100k settles by 10)


def fit_item_bias(
    cfg: EventsConfig, tokens: np.ndarray, rating: np.ndarray | None, vocab_size: int, users: np.ndarray | None = None
) -> np.ndarray | None:
    """float32 [vocab_size] item biases of the training ratings (0 for tokens without ratings), or
    None when cfg.rating_item_bias is 0, the head predicts no rating, or there are no ratings.

    b_i = sum (r - m) / (n_i + lambda) (m the ratings' mean); with `users` (each event's user
    row), the ridge baseline m + b_u + b_i instead, by BIAS_ITERS alternations of
    b_u = sum (r - m - b_i) / (n_u + lambda) and b_i = sum (r - m - b_u) / (n_i + lambda), so an
    item's bias is not its raters' leniency (the model gets b_u from the history it reads)."""
    if cfg.rating_item_bias <= 0 or "rating" not in cfg.predict or rating is None:
        return None
    r = np.asarray(rating, dtype=np.float64)
    ok = np.isfinite(r) & (np.asarray(tokens) >= 0) & (np.asarray(tokens) < vocab_size)
    if not ok.any():
        return None
    tok = np.asarray(tokens, dtype=np.int64)[ok]
    dev = r[ok] - r[ok].mean()
    lam = cfg.rating_item_bias
    n_i = np.bincount(tok, None, vocab_size) + lam
    b_i = np.bincount(tok, dev, vocab_size) / n_i
    if users is not None:
        u = np.asarray(users, dtype=np.int64)[ok]
        n_users = int(u.max()) + 1
        n_u = np.bincount(u, None, n_users) + lam
        for _ in range(BIAS_ITERS):
            b_u = np.bincount(u, dev - b_i[tok], n_users) / n_u
            b_i = np.bincount(tok, dev - b_u[u], vocab_size) / n_i
    return b_i.astype(np.float32)


def bias_of(item_bias: np.ndarray | None, tokens: np.ndarray) -> np.ndarray:
    """item_bias[tokens] (0 for tokens outside it, or everywhere without biases), float32."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if item_bias is None:
        return np.zeros(tokens.shape, np.float32)
    ok = (tokens >= 0) & (tokens < len(item_bias))
    return np.where(ok, item_bias[np.where(ok, tokens, 0)], 0.0).astype(np.float32)


def encode_events(
    cfg: EventsConfig,
    present: np.ndarray,
    rating: np.ndarray | None,
    feedback: dict[str, np.ndarray],
    ctx: dict[str, np.ndarray],
    ts: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Network inputs for events [B, T] (`present`: the column holds a real event; values elsewhere
    are ignored). `feedback` maps names to raw values, `ctx` names to model slots, `ts` holds unix
    seconds; a column the data lacks is simply missing (NaN / slot 0)."""
    out: dict[str, np.ndarray] = {}
    shape = present.shape
    if cfg.rating:
        out["rating_bucket"] = rating_buckets(cfg, rating if rating is not None else np.full(shape, np.nan), present)
    if cfg.feedback:
        vals, miss = [], []
        for name in cfg.feedback_names:
            x = feedback.get(name)
            x = feedback_value(cfg.feedback[name], x) if x is not None else np.full(shape, np.nan, np.float32)
            ok = present & np.isfinite(x)
            vals.append(np.where(ok, x, 0.0))
            miss.append((~ok).astype(np.float32))
        out["fb"] = np.stack(vals, axis=-1).astype(np.float32)
        out["fb_missing"] = np.stack(miss, axis=-1)
    if cfg.n_context:
        zeros = np.zeros(shape, np.int32)
        cols = [np.where(present, ctx.get(n, zeros), 0)[..., None] for n in cfg.context]
        if cfg.time:
            t = ts if ts is not None else np.zeros(shape, np.int64)
            cols.append(time_slots(t, _prev(t), present, _prev(present, False)))
        out["ctx"] = np.concatenate(cols, axis=-1).astype(np.int32)
    return out


def head_targets(
    cfg: EventsConfig,
    valid: np.ndarray,
    rating: np.ndarray | None,
    feedback: dict[str, np.ndarray],
    mu: np.ndarray,
    s: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """fb_target, fb_mask [B, T, K] for the head outputs of `cfg.targets()`: the target event's
    value (rating: z = (r - mu) / s, mu and s per row [B] or per column [B, T]; others:
    `feedback_value`); mask = valid and present."""
    tg, mk = [], []
    shape = valid.shape
    if mu.ndim == 1:
        mu, s = mu[:, None], s[:, None]
    for name, kind, _ in cfg.targets():
        if kind == "rating":
            r = rating if rating is not None else np.full(shape, np.nan, np.float32)
            x = (np.asarray(r, np.float32) - mu) / s
        else:
            raw = feedback.get(name)
            x = feedback_value(kind, raw) if raw is not None else np.full(shape, np.nan, np.float32)
        ok = valid & np.isfinite(x)
        tg.append(np.where(ok, x, 0.0))
        mk.append(ok)
    return np.stack(tg, axis=-1).astype(np.float32), np.stack(mk, axis=-1)


def is_event(tokens: np.ndarray) -> np.ndarray:
    """Columns holding a real event: an item token, or <unk> (an item outside the vocabulary)."""
    return (tokens >= N_SPECIAL) | (tokens == UNK)


# ---------------------------------------------------------------------------------------------
# training batches


def batch_events(
    cfg: EventsConfig,
    batch: dict[str, np.ndarray],
    luts: dict[str, np.ndarray],
    prior: tuple[float, float] | None = None,
    item_bias: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The network's event arrays for a training batch of segue.data.loader (`luts`: the training
    arrays' context codes -> model slots, per column; `prior`: the rating prior, fit_rating_prior;
    `item_bias`: fit_item_bias's biases, subtracted from input and target ratings for the head)."""
    inputs, targets, mask = batch["inputs"], batch["targets"], batch["mask"]
    present = is_event(inputs)
    fb_in = {n: batch[f"fb_{n}"] for n in cfg.feedback if f"fb_{n}" in batch}
    ctx_in = {n: slots(luts[n], batch[f"ctx_{n}"]) for n in cfg.context}
    rating = batch.get("rating")
    out = encode_events(cfg, present, rating, fb_in, ctx_in, batch.get("ts"))
    if cfg.n_context:
        cols = [slots(luts[n], batch[f"target_ctx_{n}"])[..., None] for n in cfg.context]
        if cfg.time:
            ts = batch.get("ts", np.zeros(inputs.shape, np.int64))
            nts = batch.get("target_ts", np.zeros(inputs.shape, np.int64))
            cols.append(time_slots(nts, ts, is_event(targets), present))
        out["next_ctx"] = np.concatenate(cols, axis=-1).astype(np.int32)
    if cfg.predict:
        r_in = rating if rating is not None else np.full(inputs.shape, np.nan)
        r_tg = batch.get("target_rating")
        if item_bias is not None:  # the head's residual over the item biases
            r_in = np.asarray(r_in, np.float32) - bias_of(item_bias, inputs)
            r_tg = None if r_tg is None else np.asarray(r_tg, np.float32) - bias_of(item_bias, targets)
        rated = present & np.isfinite(np.asarray(r_in, np.float32))
        if cfg.rating_ridge > 0 and "rating" in cfg.predict:  # the fold-in is the user's bias
            m0, s0 = _ridge_prior(prior)
            mu, s = np.full(inputs.shape, m0, np.float32), np.full(inputs.shape, s0, np.float32)
            out["fold_value"] = np.where(rated, np.asarray(r_in, np.float32) - m0, 0.0).astype(np.float32)
            out["fold_rated"] = rated.astype(np.float32)
        else:
            stats = prefix_rating_stats if cfg.rating_stats == "prefix" else row_rating_stats
            mu, s = stats(cfg, r_in, present, prior)
        fb_t = {n: batch[f"target_fb_{n}"] for n in cfg.feedback if f"target_fb_{n}" in batch}
        valid = mask & is_event(targets)
        out["fb_target"], out["fb_mask"] = head_targets(cfg, valid, r_tg, fb_t, mu, s)
        if cfg.rating_min_history > 0 and "rating" in cfg.predict:
            # rated inputs in columns 0..t: the history the target of column t is predicted from
            n_rated = np.cumsum(rated, axis=-1)
            col = [n for n, _, _ in cfg.targets()].index("rating")
            out["fb_mask"][..., col] &= n_rated >= cfg.rating_min_history
    return out


# ---------------------------------------------------------------------------------------------
# scored histories


def history_index(arrays: SequenceArrays, rows: np.ndarray, context_length: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(event index [n, T], is_item [n, T]) of the left-aligned inputs [<start>, h_1..h_n] that
    segue.data.loader.pad_histories builds (same cropping), T = width."""
    offsets = np.asarray(arrays.offsets, dtype=np.int64)
    start, n = offsets[rows], offsets[rows + 1] - offsets[rows]
    eff = np.minimum(n + 1, context_length)
    col = np.arange(width, dtype=np.int64)[None, :]
    real = col < eff[:, None]
    k = col + (n + 1 - eff)[:, None]
    item = real & (k >= 1)
    return np.where(item, start[:, None] + k - 1, 0), item


def history_events(
    cfg: EventsConfig,
    categories: Categories,
    arrays: SequenceArrays,
    rows: np.ndarray,
    context_length: int,
    width: int,
    next_events: SequenceArrays | None = None,
    prior: tuple[float, float] | None = None,
    item_bias: np.ndarray | None = None,
    fold_table: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(network event arrays, mu [n], s [n]) for scoring histories `rows` of `arrays` (with
    `item_bias`, mu and s are those of the ratings' residuals over their item biases).

    With cfg.rating_ridge, `fold_table` [V, k] (the network's fold-in item vectors,
    SequenceTransformer.fold_table) gives each history's fold-in user vector: fold_user [n, 1 + k]
    (`ridge_fold` of its rated events, in the head's units), and mu, s are the prior's.

    next_ctx at the last input column is the context of the event to predict: the first event of
    the same row of `next_events` when given, else the history's last event's context (a serving
    request's arrays carry the request context on every event), else unknown (slot 0)."""
    rows = np.asarray(rows, dtype=np.int64)
    idx, item = history_index(arrays, rows, context_length, width)

    def take(values: np.ndarray) -> np.ndarray:
        return np.asarray(values[idx.ravel()]).reshape(idx.shape)

    rating = take(arrays.rating) if arrays.rating is not None and len(arrays.tokens) else None
    fb = {n: take(arrays.feedback[n]) for n in cfg.feedback if n in arrays.feedback and len(arrays.tokens)}
    ctx: dict[str, np.ndarray] = {}
    for n in cfg.context:
        if n in arrays.context and len(arrays.tokens):
            lut = context_lut(categories.get(n, []), list(arrays.context_categories.get(n, [])))
            ctx[n] = slots(lut, take(arrays.context[n]))
    ts = take(arrays.ts) if cfg.time and arrays.ts is not None and len(arrays.tokens) else None
    out = encode_events(cfg, item, rating, fb, ctx, ts)
    if cfg.n_context:
        c = out["ctx"]
        nxt = np.zeros_like(c)
        nxt[:, :-1] = c[:, 1:]
        off = np.asarray(arrays.offsets, dtype=np.int64)
        last = np.minimum(off[rows + 1] - off[rows] + 1, context_length) - 1  # the last real column
        r = np.arange(len(rows))
        nxt[r, last] = c[r, last]  # default: the last event's context (its time is unknown)
        if cfg.time:
            nxt[r, last, len(cfg.context) :] = 0
        if next_events is not None:
            off = np.asarray(next_events.offsets, dtype=np.int64)
            has = off[rows + 1] > off[rows]
            first = np.where(has, off[rows], 0)
            for j, n in enumerate(cfg.context):
                if n in next_events.context and len(next_events.tokens):
                    lut = context_lut(categories.get(n, []), list(next_events.context_categories.get(n, [])))
                    s_ = slots(lut, np.asarray(next_events.context[n])[first])
                    nxt[r, last, j] = np.where(has, s_, nxt[r, last, j])
            if cfg.time and next_events.ts is not None and len(next_events.tokens):
                last_ts = ts[r, last] if ts is not None else np.zeros(len(rows), np.int64)
                nts = np.asarray(next_events.ts)[first]
                nxt[r, last, len(cfg.context) :] = time_slots(nts, last_ts, has, item[r, last])
        out["next_ctx"] = nxt.astype(np.int32)
    if cfg.rating_stats_scope == "history" and rating is not None:  # every event of the row
        off = np.asarray(arrays.offsets, dtype=np.int64)
        full = int((off[rows + 1] - off[rows]).max(initial=0)) + 1
        idx, item = history_index(arrays, rows, full, full)
        rating = take(arrays.rating)
    r = rating if rating is not None else np.full(idx.shape, np.nan)
    if item_bias is not None and rating is not None:
        r = np.asarray(r, np.float32) - bias_of(item_bias, take(arrays.tokens))
    rated = item & np.isfinite(np.asarray(r, np.float32))
    if cfg.rating_ridge > 0 and "rating" in cfg.predict:
        if fold_table is None:
            raise ValueError("events.rating_ridge: scoring needs the network's fold-in item vectors (fold_table)")
        m0, s0 = _ridge_prior(prior)
        tok = take(arrays.tokens) if rating is not None else np.zeros(idx.shape, np.int64)
        value = np.where(rated, np.asarray(r, np.float64) - m0, 0.0)
        out["fold_user"] = (ridge_fold(cfg, fold_table, tok, value, rated) / s0).astype(np.float32)
        mu, s = np.full(len(rows), m0, np.float32), np.full(len(rows), s0, np.float32)
    else:
        mu, s = row_rating_stats(cfg, r, item, prior)
    if cfg.rating_min_history > 0:  # too short a rated history: the baseline mu (+ b_i) alone
        n_rated = rated.sum(axis=-1)
        s = np.where(n_rated >= cfg.rating_min_history, s, 0.0).astype(np.float32)
    return out, mu, s


def prior_sd(prior: tuple[float, float] | None) -> float:
    """The head's unit s0: the rating prior's sd (1 without a prior or with a zero sd), what a
    rating term in rating units is divided by on the head's normalised scale."""
    return float(prior[1]) if prior is not None and prior[1] > 0 else 1.0


def _ridge_prior(prior: tuple[float, float] | None) -> tuple[float, float]:
    """(m0, s0) of the fold-in: the prior's mean and sd (the validator requires a prior)."""
    if prior is None:
        raise ValueError("events.rating_ridge: the model has no rating prior (no training ratings?)")
    return float(prior[0]), prior_sd(prior)


def ridge_fold(cfg: EventsConfig, table: np.ndarray, tokens: np.ndarray, value: np.ndarray, rated: np.ndarray) -> np.ndarray:
    """float64 [n, 1 + k] ridge fold-in [b_u, p_u] of each row's rated events (tokens, values
    e_j and flags [n, L]; `table` [V, k] the item vectors q): (sum_j f_j f_j^T + diag(
    rating_ridge_bias, rating_ridge, ...))^-1 sum_j f_j e_j with f_j = [1, q_j] (a row without rated
    events gets 0; ridge.stacked_ridge). The host form of SequenceTransformer.ridge_user at a
    history's last column."""
    table = np.asarray(table, np.float64)
    tokens = np.asarray(tokens, np.int64)
    ok = np.asarray(rated, bool) & (tokens >= 0) & (tokens < len(table))
    q = table[np.where(ok, tokens, 0)]  # [n, L, k]
    f = np.concatenate([np.ones((*q.shape[:-1], 1)), q], axis=-1) * ok[..., None]
    penalty = np.array([cfg.rating_ridge_bias] + [cfg.rating_ridge] * (f.shape[-1] - 1))
    return stacked_ridge(f, np.where(ok, value, 0.0), penalty)


def to_scale(
    cfg: EventsConfig, kind: str, pred: np.ndarray, mu: np.ndarray, s: np.ndarray, offset: np.ndarray | None = None
) -> np.ndarray:
    """A head output back on the column's own scale: ratings clip(mu + offset + s z, lo, hi)
    (offset: the predicted items' biases, shaped like pred; none without item biases); flags and
    fractions sigmoid (a probability / an expected fraction); counts exp(y) - 1; numerics as is."""
    pred = np.asarray(pred, dtype=np.float32)
    if kind == "rating":
        lo, hi = cfg.rating_scale
        base = mu[:, None] if offset is None else mu[:, None] + offset
        return np.clip(base + s[:, None] * pred, lo, hi)
    if kind in ("flag", "fraction"):
        return 1.0 / (1.0 + np.exp(-pred))
    if kind == "count":
        return np.expm1(np.maximum(pred, 0.0))
    return pred
