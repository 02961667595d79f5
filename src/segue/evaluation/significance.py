"""Bootstrap confidence intervals and paired comparisons over per-user metric values.

Resampling units are users (queries), or clusters of queries (e.g. the several queries one
playlist gives in playlist continuation), drawn with replacement. One draw of B resamples is a
count matrix W [B, C] (W[b, c] = how often unit c is in resample b); every statistic is a ratio of
weighted sums, so all metrics and models are resampled together with one matrix product:

    mean*_b = sum_c W[b, c] * S[c] / sum_c W[b, c] * N[c]

with S[c] the sum of the unit's values and N[c] its number of (non-NaN) values. The same seed
gives the same resamples, so the per-model CIs and the paired differences share them.

Paired bootstrap of models A and B on the same queries: d = mean(a - b); its CI is the
percentile interval of d*; the two-sided p-value tests d = 0 by shifting the bootstrap
distribution to the null: p = (1 + #{b: |d*_b - d| >= |d|}) / (1 + B).
Identical models give d* = d = 0 everywhere, so p = 1 and the CI is [0, 0].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def resample_counts(n_units: int, n_boot: int, seed: int) -> np.ndarray:
    """W float64 [n_boot, n_units]: multinomial counts of n_units draws with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_units, size=(n_boot, n_units))
    flat = (np.arange(n_boot, dtype=np.int64)[:, None] * n_units + idx).ravel()
    return np.bincount(flat, minlength=n_boot * n_units).reshape(n_boot, n_units).astype(np.float64)


def _unit_sums(values: np.ndarray, clusters: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit sums S [A, C] and counts N [A, C] of the non-NaN values [A, n]."""
    valid = ~np.isnan(values)
    v = np.where(valid, values, 0.0)
    if clusters is None:
        return v, valid.astype(np.float64)
    _, inv = np.unique(np.asarray(clusters), return_inverse=True)
    n_c = int(inv.max()) + 1 if len(inv) else 0
    s = np.zeros((values.shape[0], n_c))
    c = np.zeros((values.shape[0], n_c))
    for a in range(values.shape[0]):
        s[a] = np.bincount(inv, weights=v[a], minlength=n_c)
        c[a] = np.bincount(inv, weights=valid[a].astype(np.float64), minlength=n_c)
    return s, c


def bootstrap_means(
    values: np.ndarray,
    *,
    clusters: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    chunk: int = 250,
) -> np.ndarray:
    """Bootstrap replicates of the mean of each row of `values` [A, n] (NaN skipped) -> [A, n_boot].

    With `clusters` [n] (labels), whole clusters are resampled. Resamples are drawn in chunks
    so memory stays O(chunk * units).
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    s, c = _unit_sums(values, clusters)
    rng_seeds = np.random.SeedSequence(seed).spawn((n_boot + chunk - 1) // chunk)
    out = np.empty((values.shape[0], n_boot))
    for i, ss in enumerate(rng_seeds):
        lo, hi = i * chunk, min(n_boot, (i + 1) * chunk)
        w = resample_counts(s.shape[1], hi - lo, int(ss.generate_state(1)[0]))  # [b, C]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, lo:hi] = (s @ w.T) / (c @ w.T)
    return out


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class Comparison:
    """mean(a) - mean(b) on the queries both could be scored on, its CI and two-sided p-value."""

    diff: float
    low: float
    high: float
    p_value: float
    n: int


def mean_ci(
    values: np.ndarray,
    *,
    clusters: np.ndarray | None = None,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> Interval:
    """Mean of `values` [n] with its percentile bootstrap CI."""
    reps = bootstrap_means(np.asarray(values)[None, :], clusters=clusters, n_boot=n_boot, seed=seed)[0]
    lo, hi = np.nanquantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return Interval(_nanmean(values), float(lo), float(hi))


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    *,
    clusters: np.ndarray | None = None,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> Comparison:
    """Paired bootstrap of mean(a - b) over queries where both values exist (see module doc)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must align: {a.shape} vs {b.shape}")
    d = a - b  # NaN where either is NaN
    reps = bootstrap_means(d[None, :], clusters=clusters, n_boot=n_boot, seed=seed)[0]
    return summarize_difference(d, reps, level)


def summarize_difference(d: np.ndarray, reps: np.ndarray, level: float) -> Comparison:
    """Comparison from per-query differences `d` [n] and bootstrap replicates of their mean."""
    diff = _nanmean(d)
    reps = reps[~np.isnan(reps)]
    n = int((~np.isnan(d)).sum())
    if np.isnan(diff):
        return Comparison(float("nan"), float("nan"), float("nan"), float("nan"), n)
    if len(reps) == 0:  # no resamples (n_boot 0): the difference needs none, its CI and p do
        return Comparison(diff, float("nan"), float("nan"), float("nan"), n)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    # Tolerance so that float noise in identical resamples never turns "equal" into "more extreme".
    tol = 1e-12 * max(1.0, abs(diff))
    extreme = int((np.abs(reps - diff) >= abs(diff) - tol).sum())
    p = (1 + extreme) / (1 + len(reps))
    return Comparison(diff, float(lo), float(hi), float(min(p, 1.0)), n)


def compare_many(
    values: dict[str, np.ndarray],
    reference: str,
    *,
    clusters: np.ndarray | None = None,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Comparison]:
    """Paired comparison of every other model against `reference`: name -> (model - reference)."""
    others = [m for m in values if m != reference]
    if not others:
        return {}
    d = np.stack([np.asarray(values[m], np.float64) - np.asarray(values[reference], np.float64) for m in others])
    reps = bootstrap_means(d, clusters=clusters, n_boot=n_boot, seed=seed)
    return {m: summarize_difference(d[i], reps[i], level) for i, m in enumerate(others)}


def cis(
    values: dict[str, np.ndarray],
    *,
    clusters: np.ndarray | None = None,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Interval]:
    """Mean and CI of every array in `values` (all resampled together with the same draws)."""
    names = list(values)
    if not names:
        return {}
    stack = np.stack([np.asarray(values[n], np.float64) for n in names])
    reps = bootstrap_means(stack, clusters=clusters, n_boot=n_boot, seed=seed)
    out = {}
    for i, n in enumerate(names):
        r = reps[i][~np.isnan(reps[i])]
        lo, hi = np.quantile(r, [(1 - level) / 2, (1 + level) / 2]) if len(r) else (np.nan, np.nan)
        out[n] = Interval(_nanmean(stack[i]), float(lo), float(hi))
    return out
