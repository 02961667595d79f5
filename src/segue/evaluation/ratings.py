"""Feedback metrics: rating error (RMSE, MAE) and pair accuracy, with bootstrap CIs over users.

Held-out data comes from a split's scored part (valid or test): every rated target event is a
(user, item, rating) triple, and the user's history is the split's input for that part
(`history_parts`: train, plus valid when scoring test, plus a held-out user's fold-in part), the
same history the ranking protocols give a model.

    rmse = sqrt(mean_e (r_hat_e - r_e)^2)        mae = mean_e |r_hat_e - r_e|

over held-out ratings e, on the original scale. Pair accuracy asks whether a model orders two
held-out items of one user, given the same history, as the user's feedback does: for pairs
k = (a, b) with r_a > r_b,

    correct_k = 1[s_a > s_b] + 1/2 * 1[s_a = s_b]
    pair_accuracy = sum_k w_k correct_k / sum_k w_k,   w_k = 1 or the gap r_a - r_b (weighted)

Any Recommender is scored through `score()` (its ordering of items); a model that is only a
`RatingPredictor` through `predict()`. The headline PairAccuracy is the mean over users of each
user's pair accuracy (every user counts once, as with the ranking metrics), so its bootstrap
resamples users (segue.evaluation.significance); RMSE/MAE resample users too, with each user's
squared/absolute errors kept together: RMSE*_b = sqrt(sum_u W_bu SE_u / sum_u W_bu N_u).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from segue.data.arrays import SequenceArrays, SplitData
from segue.data.splits import Part, parse_part
from segue.data.vocab import N_SPECIAL
from segue.errors import ConfigError, InputError, SegueError
from segue.evaluation.significance import (
    Comparison,
    Interval,
    bootstrap_means,
    cis,
    compare_many,
)
from segue.models.base import Recommender
from segue.models.rating import RatingPredictor

# ---------------------------------------------------------------------------------------------
# pure metrics


def rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Root mean squared error sqrt(mean((predicted - actual)^2)) over pairs of the same shape
    (or one side a scalar); NaN for no pairs."""
    d = _differences(predicted, actual)
    return float(np.sqrt(np.mean(d * d))) if d.size else float("nan")


def mae(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Mean absolute error mean(|predicted - actual|) over pairs of the same shape (or one side a
    scalar); NaN for no pairs."""
    d = _differences(predicted, actual)
    return float(np.mean(np.abs(d))) if d.size else float("nan")


def _differences(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """predicted - actual as float64 (either may be a scalar), or an InputError when two arrays'
    shapes differ (broadcasting would silently compare every prediction with every rating)."""
    p, a = np.asarray(predicted, np.float64), np.asarray(actual, np.float64)
    if p.shape != a.shape and p.ndim and a.ndim:
        raise InputError(f"predicted has shape {p.shape} but actual {a.shape}", field="actual", expected="one rating per prediction")
    return p - a


def pair_correct(score_a: np.ndarray, score_b: np.ndarray) -> np.ndarray:
    """Per pair float64: 1 if score_a > score_b, 1/2 if equal (-inf = -inf too), else 0
    (a is the item with the better feedback)."""
    a, b = np.asarray(score_a, np.float64), np.asarray(score_b, np.float64)
    return (a > b) + 0.5 * (a == b)


def pair_accuracy(score_a: np.ndarray, score_b: np.ndarray, weights: np.ndarray | None = None) -> float:
    """sum_k w_k * correct_k / sum_k w_k with correct_k = 1[s_a > s_b] + 1/2 1[s_a = s_b];
    w = 1 when `weights` is None (e.g. pass the feedback gap r_a - r_b). NaN for no pairs."""
    c = pair_correct(score_a, score_b)
    w = np.ones_like(c) if weights is None else np.asarray(weights, np.float64)
    total = w.sum()
    return float((w * c).sum() / total) if total > 0 else float("nan")


def per_user_pair_accuracy(
    correct: np.ndarray, users: np.ndarray, n_users: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """acc_u = sum_{k of u} w_k correct_k / sum_{k of u} w_k, float64 [n_users] (NaN without pairs).
    `users` [P] are indices in [0, n_users)."""
    w = np.ones(len(correct)) if weights is None else np.asarray(weights, np.float64)
    num = np.bincount(users, weights=w * correct, minlength=n_users)
    den = np.bincount(users, weights=w, minlength=n_users)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


# ---------------------------------------------------------------------------------------------
# held-out data


@dataclass
class RatedTargets:
    """Held-out ratings of a split's scored part: rating e is (history row rows[e], tokens[e],
    ratings[e]); `histories` holds every user's input for that part (row = store sequence)."""

    histories: SequenceArrays
    rows: np.ndarray  # int64 [N]
    tokens: np.ndarray  # int64 [N] (may be <unk>: models predict those too)
    ratings: np.ndarray  # float64 [N]
    notes: list[str] = field(default_factory=list)


@dataclass
class RatingPairs:
    """Held-out pairs: user rows[k] rated tokens_a[k] above tokens_b[k] (rating_a > rating_b)."""

    histories: SequenceArrays
    rows: np.ndarray  # int64 [P]
    tokens_a: np.ndarray  # int64 [P]
    tokens_b: np.ndarray  # int64 [P]
    rating_a: np.ndarray  # float64 [P]
    rating_b: np.ndarray  # float64 [P]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def gap(self) -> np.ndarray:
        return self.rating_a - self.rating_b


def _scored_part(data: SplitData, part: str | int | Part) -> Part:
    p = parse_part(part)
    if p == Part.TRAIN:
        raise ConfigError("rating metrics: part must be valid or test, not train")
    return p


def rated_targets(data: SplitData, part: str | int | Part = "test") -> RatedTargets:
    """Every rated event of `part` (NaN ratings skipped), with the part's history views."""
    p = _scored_part(data, part)
    targ = data.targets(p)
    if targ.rating is None:
        raise SegueError(f"split '{data.split}' of {data.store.path}: the {p.name.lower()} part has no ratings")
    rows = np.repeat(np.arange(len(targ), dtype=np.int64), targ.lengths)
    r = np.asarray(targ.rating, np.float64)
    keep = ~np.isnan(r)
    tokens = np.asarray(targ.tokens, np.int64)[keep]
    notes = [f"{int(keep.sum())} held-out ratings of {len(np.unique(rows[keep]))} users ({p.name.lower()} part)"]
    if (~keep).any():
        notes.append(f"{int((~keep).sum())} {p.name.lower()} events without a rating skipped")
    n_unk = int((tokens < N_SPECIAL).sum())
    if n_unk:
        notes.append(f"{n_unk} held-out ratings are of items outside the training vocabulary (kept)")
    return RatedTargets(data.history(p), rows[keep], tokens, r[keep], notes)


def build_pairs(
    data: SplitData,
    part: str | int | Part = "test",
    *,
    max_pairs_per_user: int = 200,
    seed: int = 0,
    min_history: int = 0,
) -> RatingPairs:
    """All pairs of one user's held-out rated items whose ratings differ, better item first.

    Items outside the training vocabulary are left out (no model can order them), as are pairs of
    the same item. A user with more than `max_pairs_per_user` pairs keeps a sample of that many,
    drawn without replacement by a generator seeded with (seed, user row): the same pairs
    whatever the other users are. Users whose history has fewer than `min_history` events are
    left out (1 matches the ranking protocols' default; 0 keeps cold-start users, whom a rating
    model can only order by item effects).
    """
    if max_pairs_per_user < 1:
        raise ConfigError(f"max_pairs_per_user must be >= 1, got {max_pairs_per_user}")
    t = rated_targets(data, part)
    known = t.tokens >= N_SPECIAL
    enough = t.histories.lengths[t.rows] >= min_history
    keep = known & enough
    rows, tokens, ratings = t.rows[keep], t.tokens[keep], t.ratings[keep]
    bounds = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1], True]) if len(rows) else np.zeros(1, np.int64)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("rows", "a", "b")}
    n_capped = 0
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        n = hi - lo
        i, j = np.triu_indices(n, 1)
        r_i, r_j = ratings[lo + i], ratings[lo + j]
        ok = (r_i != r_j) & (tokens[lo + i] != tokens[lo + j])
        i, j = i[ok], j[ok]
        if len(i) > max_pairs_per_user:
            pick = np.random.default_rng([seed, int(rows[lo])]).choice(len(i), max_pairs_per_user, replace=False)
            i, j = i[np.sort(pick)], j[np.sort(pick)]
            n_capped += 1
        better_i = ratings[lo + i] > ratings[lo + j]
        out["a"].append(lo + np.where(better_i, i, j))
        out["b"].append(lo + np.where(better_i, j, i))
        out["rows"].append(np.full(len(i), rows[lo], np.int64))
    a = np.concatenate(out["a"]) if out["a"] else np.zeros(0, np.int64)
    b = np.concatenate(out["b"]) if out["b"] else np.zeros(0, np.int64)
    pair_rows = np.concatenate(out["rows"]) if out["rows"] else np.zeros(0, np.int64)
    notes = [
        f"{len(a)} held-out pairs of {len(np.unique(pair_rows))} users (items rated differently; "
        f"at most {max_pairs_per_user} per user, seed {seed})"
    ]
    if n_capped:
        notes.append(f"{n_capped} users had more pairs and kept a seeded sample")
    if (~known).any():
        notes.append(f"{int((~known).sum())} held-out ratings of items outside the vocabulary left out of pairs")
    if (~enough).any():
        short = len(np.unique(t.rows[~enough]))
        notes.append(f"{short} users with fewer than {min_history} history event(s) left out")
    return RatingPairs(t.histories, pair_rows, tokens[a], tokens[b], ratings[a], ratings[b], notes)


# ---------------------------------------------------------------------------------------------
# scoring models

Via = Literal["score", "predict"]


def resolve_via(model: Any, via: Via | None) -> Via:
    """How a model orders items: score() for a Recommender, predict() for a rating predictor that
    is not one (or when asked)."""
    if via is None:
        via = "score" if isinstance(model, Recommender) else "predict"
    if via == "predict" and not isinstance(model, RatingPredictor):
        raise SegueError(f"{getattr(model, 'family', type(model).__name__)}: has no predict() (not a RatingPredictor)")
    if via == "score" and not isinstance(model, Recommender):
        raise SegueError(f"{getattr(model, 'family', type(model).__name__)}: has no score() (not a Recommender)")
    return via


def pair_scores(model: Any, pairs: RatingPairs, *, via: Via | None = None, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The model's values (s_a, s_b) float64 [P] for every pair: score() of both items from one
    [B, V] score batch per user, or predict() of the two (row, item) lists."""
    via = resolve_via(model, via)
    if via == "predict":
        sa = model.predict(pairs.histories, pairs.rows, pairs.tokens_a)
        sb = model.predict(pairs.histories, pairs.rows, pairs.tokens_b)
        return np.asarray(sa, np.float64), np.asarray(sb, np.float64)
    users, inv = np.unique(pairs.rows, return_inverse=True)
    sa, sb = np.empty(len(pairs)), np.empty(len(pairs))
    for lo in range(0, len(users), batch_size):
        s = model.score(pairs.histories, users[lo : lo + batch_size])
        sel = np.flatnonzero((inv >= lo) & (inv < lo + batch_size))
        sa[sel] = s[inv[sel] - lo, pairs.tokens_a[sel]]
        sb[sel] = s[inv[sel] - lo, pairs.tokens_b[sel]]
    return sa, sb


def rating_predictions(model: Any, targets: RatedTargets) -> np.ndarray:
    """predict() of every held-out rating, float64 [N]."""
    resolve_via(model, "predict")
    pred = np.asarray(model.predict(targets.histories, targets.rows, targets.tokens), np.float64)
    name = getattr(model, "family", type(model).__name__)
    if pred.shape != targets.ratings.shape:
        raise SegueError(f"{name}: predict() returned shape {pred.shape}, expected {targets.ratings.shape}")
    if np.isnan(pred).any():
        raise SegueError(f"{name}: predict() returned NaN for {int(np.isnan(pred).sum())} held-out ratings")
    return pred


# ---------------------------------------------------------------------------------------------
# with CIs


@dataclass
class PairReport:
    """Per-user pair accuracy of every model (aligned on `users`), means with CIs, comparisons."""

    users: np.ndarray  # int64 [U] history rows with at least one pair
    per_user: dict[str, np.ndarray]  # model -> float64 [U]
    pooled: dict[str, float]  # model -> pair_accuracy over all pairs
    intervals: dict[str, Interval]
    comparisons: dict[str, Comparison]  # model -> (model - reference), paired over users
    reference: str | None
    weighted: bool
    n_pairs: int
    notes: list[str]


def evaluate_pairs(
    models: Mapping[str, Any],
    pairs: RatingPairs,
    *,
    weighted: bool = False,
    via: Mapping[str, Via] | None = None,
    reference: str | None = None,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> PairReport:
    """PairAccuracy (mean over users) of each model with a bootstrap CI over users, and the paired
    bootstrap of each model against `reference` (default: the first model)."""
    if not models:
        raise SegueError("no model to evaluate")
    if len(pairs) == 0:
        raise SegueError("no held-out pair: the scored part has no user with two differently rated items")
    users, inv = np.unique(pairs.rows, return_inverse=True)
    w = pairs.gap if weighted else None
    per_user, pooled = {}, {}
    for name, model in models.items():
        sa, sb = pair_scores(model, pairs, via=(via or {}).get(name))
        if np.isnan(sa).any() or np.isnan(sb).any():
            raise SegueError(f"model '{name}': NaN scores for held-out pairs")
        c = pair_correct(sa, sb)
        per_user[name] = per_user_pair_accuracy(c, inv, len(users), w)
        pooled[name] = pair_accuracy(sa, sb, w)
    ref = reference or next(iter(models))
    if ref not in models:
        raise ConfigError(f"reference '{ref}' is not among the models ({', '.join(models)})")
    return PairReport(
        users=users,
        per_user=per_user,
        pooled=pooled,
        intervals=cis(per_user, level=level, n_boot=n_boot, seed=seed),
        comparisons=compare_many(per_user, ref, level=level, n_boot=n_boot, seed=seed),
        reference=ref,
        weighted=weighted,
        n_pairs=len(pairs),
        notes=list(pairs.notes),
    )


@dataclass
class ErrorReport:
    """RMSE and MAE of every rating predictor on held-out ratings, with CIs over users."""

    rmse: dict[str, Interval]
    mae: dict[str, Interval]
    rmse_diff: dict[str, Comparison]  # model -> RMSE(model) - RMSE(reference), users resampled together
    reference: str | None
    n_ratings: int
    notes: list[str]


def evaluate_errors(
    models: Mapping[str, Any],
    targets: RatedTargets,
    *,
    reference: str | None = None,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> ErrorReport:
    """RMSE/MAE of each model's predict() with percentile bootstrap CIs over users (a user's
    ratings are resampled together), and RMSE differences against `reference` on the same
    resamples, p-value as in significance.summarize_difference."""
    if not models:
        raise SegueError("no model to evaluate")
    names = list(models)
    ref = reference or names[0]
    if ref not in models:
        raise ConfigError(f"reference '{ref}' is not among the models ({', '.join(names)})")
    err = np.stack([rating_predictions(models[n], targets) - targets.ratings for n in names])  # [M, N]
    sq_reps = bootstrap_means(err * err, clusters=targets.rows, n_boot=n_boot, seed=seed)  # MSE* [M, B]
    abs_reps = bootstrap_means(np.abs(err), clusters=targets.rows, n_boot=n_boot, seed=seed)
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    rmse_reps = np.sqrt(sq_reps)
    out_rmse, out_mae, diffs = {}, {}, {}
    r = names.index(ref)
    for m, name in enumerate(names):
        out_rmse[name] = Interval(rmse(err[m], 0.0), *map(float, np.quantile(rmse_reps[m], [lo_q, hi_q])))
        out_mae[name] = Interval(mae(err[m], 0.0), *map(float, np.quantile(abs_reps[m], [lo_q, hi_q])))
        if m != r:
            diffs[name] = _difference(out_rmse[name].mean - out_rmse[ref].mean, rmse_reps[m] - rmse_reps[r], level, len(targets.rows))
    return ErrorReport(out_rmse, out_mae, diffs, ref, len(targets.rows), list(targets.notes))


def _difference(diff: float, reps: np.ndarray, level: float, n: int) -> Comparison:
    """Percentile CI of a difference and the two-sided p-value of the shifted bootstrap
    p = (1 + #{b: |d*_b - d| >= |d|}) / (1 + B) (as segue.evaluation.significance)."""
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    tol = 1e-12 * max(1.0, abs(diff))
    extreme = int((np.abs(reps - diff) >= abs(diff) - tol).sum())
    return Comparison(float(diff), float(lo), float(hi), float(min((1 + extreme) / (1 + len(reps)), 1.0)), n)


# ---------------------------------------------------------------------------------------------
# inside `segue evaluate`


def predicts_ratings(model: Any) -> bool:
    """A RatingPredictor whose predictions are ratings (a transformer needs a rating head)."""
    if not isinstance(model, RatingPredictor):
        return False
    targets = getattr(model, "feedback_targets", None)
    return targets is None or "rating" in targets


@dataclass
class FeedbackReport:
    """PairAccuracy of every model (through score(), and through predict() for rating predictors,
    labelled '<name> (predicted rating)') and RMSE/MAE of the rating predictors, on the held-out
    ratings of an evaluation's scored part."""

    pairs: PairReport | None
    errors: ErrorReport | None
    notes: list[str]


def best_reference(per_user: Mapping[str, np.ndarray]) -> str:
    """The model with the highest mean over users (ties: the first)."""
    return max(per_user, key=lambda n: float(np.nanmean(per_user[n])))


def feedback_report(
    models: Mapping[str, Any],
    data: SplitData,
    part: str | int | Part = "test",
    *,
    min_history: int = 1,
    max_pairs_per_user: int = 200,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> FeedbackReport | None:
    """The feedback metrics of `segue evaluate` (None when the scored part carries no ratings).

    Pairs: `build_pairs` with the protocol's `min_history`; the comparisons are against the model
    with the best PairAccuracy. Ratings: every rated held-out event, against the first rating
    predictor."""
    try:
        targets = rated_targets(data, part)
    except SegueError:
        return None
    notes: list[str] = []
    raters: dict[str, Any] = {}
    probe = RatedTargets(targets.histories, targets.rows[:1], targets.tokens[:1], targets.ratings[:1])
    for name, model in models.items():
        if not predicts_ratings(model) or not len(probe.rows):
            continue
        try:
            rating_predictions(model, probe)
        except SegueError as e:  # e.g. a transformer without a rating head
            notes.append(f"{name}: no rating predictions ({e})")
            continue
        raters[name] = model
    pair_rep = None
    pairs = build_pairs(data, part, max_pairs_per_user=max_pairs_per_user, seed=seed, min_history=min_history)
    if len(pairs):
        entries, via = dict(models), {n: "score" for n in models}
        for name, model in raters.items():
            entries[f"{name} (predicted rating)"] = model
            via[f"{name} (predicted rating)"] = "predict"
        pair_rep = evaluate_pairs(entries, pairs, via=via, level=level, n_boot=n_boot, seed=seed)  # type: ignore[arg-type]
        ref = best_reference(pair_rep.per_user)
        pair_rep.reference = ref
        pair_rep.comparisons = compare_many(pair_rep.per_user, ref, level=level, n_boot=n_boot, seed=seed)
    else:
        notes.append("no held-out pairs (no user of the scored part has two items rated differently): no PairAccuracy")
    err_rep = evaluate_errors(raters, targets, level=level, n_boot=n_boot, seed=seed) if raters else None
    return FeedbackReport(pair_rep, err_rep, notes)
