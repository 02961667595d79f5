"""Per-user rating normalisation (pure functions): hybrid z-score / absolute scale, and its inverse.

Ratings r on a scale [lo, hi] (e.g. 1-10), for one user u with rated items R_u:
    mean_u = mean of r over R_u,  var_u = population variance over R_u,  sd_u = sqrt(var_u)
    a(r)   = (r - (lo + hi) / 2) / ((hi - lo) / 2)          absolute position on the scale, in [-1, 1]
    z(r)   = (r - mean_u) / sd_u                            (0 when sd_u = 0)
    w_u    = var_u / (var_u + tau)                          tau > 0, in squared rating units
    h(r)   = w_u z(r) + (1 - w_u) a(r)                      the hybrid score
The lower a user's variance, the more weight goes to the absolute scale: someone who rates
everything 7-8 (var 0.25, tau 1: w = 0.2) keeps a positive signal on 1-10, where a z-score alone
would turn their 7s into strong dislikes; a user with a wide range gets (mostly) a scale-and-shift.
`mode` "zscore" is w_u = 1 (w_u = 0 for a user without variance, whose z is undefined) and "raw"
is w_u = 0 (the absolute scale only).

h is linear in r, so it inverts exactly for any user:
    h = c_u r - d_u,  c_u = w_u / sd_u + (1 - w_u) / half,  d_u = w_u mean_u / sd_u + (1 - w_u) mid / half
    r = (h + d_u) / c_u                     (mid = (lo + hi) / 2, half = (hi - lo) / 2; c_u > 0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from segue.errors import InputError

NormMode = Literal["hybrid", "zscore", "raw"]


@dataclass(frozen=True)
class RatingScale:
    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise InputError(f"rating scale [{self.low}, {self.high}] is empty", expected="low < high")

    @property
    def mid(self) -> float:
        return (self.low + self.high) / 2.0

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2.0

    def __str__(self) -> str:
        return f"[{self.low:g}, {self.high:g}]"


def check_ratings(
    ratings: np.ndarray,
    scale: RatingScale,
    items: np.ndarray | None = None,
    *,
    source: str = "ratings",
    describe: Callable[[int], str] | None = None,
) -> None:
    """Raise an InputError naming the first rating outside `scale` (NaN = unrated is fine).

    `describe(i)` names entry i for people (user and item as the input spells them); without it
    the entry is named by `items[i]`, an internal id."""
    r = np.asarray(ratings, dtype=np.float64)
    bad = np.flatnonzero(~np.isnan(r) & ((r < scale.low) | (r > scale.high) | ~np.isfinite(r)))
    if len(bad):
        i = int(bad[0])
        item = describe(i) if describe is not None else f"item {items[i]}" if items is not None else f"entry {i}"
        raise InputError(
            f"rating {r[i]:g} of {item} is outside the rating scale {scale} ({len(bad)} such rating(s))",
            record=source,
            expected=f"ratings between {scale.low:g} and {scale.high:g}",
        )


@dataclass(frozen=True)
class UserNorm:
    """Per-user parameters of the hybrid score (arrays [n_users])."""

    mean: np.ndarray
    sd: np.ndarray
    weight: np.ndarray  # w_u

    def coefficients(self, scale: RatingScale) -> tuple[np.ndarray, np.ndarray]:
        """(c_u, d_u) with h = c_u r - d_u."""
        inv_sd = np.where(self.sd > 0, 1.0 / np.where(self.sd > 0, self.sd, 1.0), 0.0)
        c = self.weight * inv_sd + (1.0 - self.weight) / scale.half
        d = self.weight * self.mean * inv_sd + (1.0 - self.weight) * scale.mid / scale.half
        return c, d


def user_norm(offsets: np.ndarray, ratings: np.ndarray, scale: RatingScale, *, mode: NormMode = "hybrid", tau: float = 1.0) -> UserNorm:
    """Per-row mean, sd and blend weight w_u over the rated entries of CSR rows (NaN = unrated).

    A row without ratings gets mean = scale.mid, sd = 0, w = 0 (its predictions use the absolute scale)."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    offsets = np.asarray(offsets, dtype=np.int64)
    r = np.asarray(ratings, dtype=np.float64)
    n = len(offsets) - 1
    row = np.repeat(np.arange(n), np.diff(offsets))
    rated = ~np.isnan(r)
    cnt = np.bincount(row[rated], minlength=n).astype(np.float64)
    s1 = np.bincount(row[rated], weights=r[rated], minlength=n)
    s2 = np.bincount(row[rated], weights=r[rated] ** 2, minlength=n)
    has = cnt > 0
    mean = np.where(has, s1 / np.maximum(cnt, 1), scale.mid)
    var = np.where(has, np.maximum(s2 / np.maximum(cnt, 1) - mean**2, 0.0), 0.0)
    var[var < 1e-12] = 0.0  # a user who gives one value has no spread (not rounding noise)
    sd = np.sqrt(var)
    if mode == "hybrid":
        w = var / (var + tau)
    elif mode == "zscore":
        w = (sd > 0).astype(np.float64)
    elif mode == "raw":
        w = np.zeros(n)
    else:
        raise ValueError(f"unknown normalisation mode {mode!r}")
    return UserNorm(mean=mean, sd=sd, weight=w)


def normalise(offsets: np.ndarray, ratings: np.ndarray, scale: RatingScale, *, mode: NormMode = "hybrid", tau: float = 1.0) -> tuple[np.ndarray, UserNorm]:
    """Hybrid scores h [N] float32 of CSR ratings (NaN stays NaN) and the per-row UserNorm."""
    norm = user_norm(offsets, ratings, scale, mode=mode, tau=tau)
    c, d = norm.coefficients(scale)
    row = np.repeat(np.arange(len(offsets) - 1), np.diff(np.asarray(offsets, dtype=np.int64)))
    h = c[row] * np.asarray(ratings, dtype=np.float64) - d[row]
    return h.astype(np.float32), norm


def denormalise(h: np.ndarray, norm: UserNorm, scale: RatingScale, rows: np.ndarray | None = None, *, clip: bool = True) -> np.ndarray:
    """Ratings on the original scale from hybrid scores h [B, ...] of the users `rows` (all if None):
    r = (h + d_u) / c_u, clipped to the scale by default."""
    c, d = norm.coefficients(scale)
    if rows is not None:
        c, d = c[rows], d[rows]
    h = np.asarray(h, dtype=np.float64)
    shape = (-1,) + (1,) * (h.ndim - 1)
    r = (h + d.reshape(shape)) / c.reshape(shape)
    if clip:
        r = np.clip(r, scale.low, scale.high)
    return r.astype(np.float32)
