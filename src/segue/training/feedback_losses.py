"""Feedback-head losses (ARGUS' second head), as pure functions of predictions and targets.

Notation: y_hat the head's raw output for one event and one feedback column, y its target (see
segue.models.events: ratings z-normalised per row, flags in {0, 1}, fractions in [0, 1], counts
log(1 + x)), m in {0, 1} whether the event carries that feedback. Events without feedback carry no
loss: every column's loss is a masked mean sum_n m_n l_n / max(1, sum_n m_n).

Losses
  huber        l = d^2 / 2 if |d| <= delta else delta (|d| - delta / 2),   d = y_hat - y
               (ratings, counts, numeric columns)
  binary_ce    l = softplus(y_hat) - y y_hat = -y log sigma(y_hat) - (1 - y) log(1 - sigma(y_hat))
               (flags: y in {0, 1}; fractions: the same cross-entropy with a soft target y in
               [0, 1], smallest at sigma(y_hat) = y)
  feedback_loss  sum_k w_k masked_mean_n(l_k(y_hat_{n,k}, y_{n,k}), m_{n,k}) over the head's
               columns k with the configured weights w_k
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def huber(pred: jax.Array, target: jax.Array, delta: float = 1.0) -> jax.Array:
    """l = d^2 / 2 if |d| <= delta else delta (|d| - delta / 2), d = pred - target (elementwise)."""
    d = jnp.abs(pred - target)
    return jnp.where(d <= delta, 0.5 * d * d, delta * (d - 0.5 * delta))


def binary_ce(logit: jax.Array, target: jax.Array) -> jax.Array:
    """l = softplus(logit) - target * logit (elementwise; target in [0, 1])."""
    return jax.nn.softplus(logit) - target * logit


def column_loss(kind: str, pred: jax.Array, target: jax.Array, delta: float = 1.0) -> jax.Array:
    """The elementwise loss of a feedback column of `kind` (rating, flag, fraction, count, numeric)."""
    if kind in ("flag", "fraction"):
        return binary_ce(pred, target)
    return huber(pred, target, delta)


def feedback_loss(
    pred: jax.Array,
    target: jax.Array,
    mask: jax.Array,
    kinds: Sequence[str],
    weights: Sequence[float],
    delta: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """(sum_k w_k masked_mean(l_k, m_k), per-column masked means [K]).

    pred, target, mask [..., K]: one column per head output, in the order of `kinds` / `weights`."""
    pred = pred.reshape(-1, pred.shape[-1])
    target = target.reshape(pred.shape)
    m = mask.reshape(pred.shape).astype(pred.dtype)
    per = []
    # A masked event's target may be anything (NaN, inf): it is replaced before the loss, so not
    # even a 0 * NaN reaches the gradient.
    target = jnp.where(m > 0, target, 0.0)
    for k, kind in enumerate(kinds):
        l_k = column_loss(kind, pred[:, k], target[:, k], delta)
        per.append(jnp.sum(m[:, k] * l_k) / jnp.maximum(1.0, jnp.sum(m[:, k])))
    cols = jnp.stack(per)
    return jnp.sum(cols * jnp.asarray(weights, pred.dtype)), cols
