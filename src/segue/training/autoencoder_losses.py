"""Losses of the profile autoencoder (pure functions of arrays).

For a batch of B profiles over n items, with presence targets x [B, n] (1 = in the profile),
presence logits l [B, n], rated mask m [B, n], hybrid-normalised ratings y [B, n] and the rating
head's predictions p [B, n], and a row weight v [B] (0 for batch padding):
    multinomial NLL  L_pres = sum_b v_b (-sum_i x_bi log softmax(l_b)_i) / sum_b v_b
                     (Liang et al. 2018, Mult-VAE/DAE: only the profile's entries contribute)
    Huber            L_rate = sum_{b,i} v_b m_bi huber(p_bi - y_bi) / sum_{b,i} v_b m_bi
                     huber(e) = e^2 / 2 if |e| <= delta else delta (|e| - delta / 2)
    per entry        L_pres with each row's NLL divided by its profile size |x_b| (loss.presence =
                     "mean": an O(log n) loss, which uncertainty weighting can balance against L_rate)
    held out         L_pres over the entries hidden from the input only, the kept entries removed
                     from the softmax (loss.target = "dropped": the task of fold-in scoring)
The *_entries forms take the same batch as its nonzero entries e = (row b_e, column j_e) with a
validity flag u_e (0 = padding), and give the same numbers without [B, n] targets.
    uncertainty      L = sum_t exp(-s_t) L_t + s_t   (Kendall et al. 2018, one learnable log-variance s_t per loss)
    fixed            L = sum_t w_t L_t
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def multinomial_nll(logits: jax.Array, presence: jax.Array, weights: jax.Array, per_entry: bool = False) -> jax.Array:
    """L_pres: mean over weighted rows of -sum_i x_i log softmax(logits)_i (with `per_entry`,
    each row's sum divided by sum_i x_i)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    per_row = -jnp.sum(presence * logp, axis=-1)
    if per_entry:
        per_row = per_row / jnp.maximum(jnp.sum(presence, axis=-1), 1.0)
    return jnp.sum(weights * per_row) / jnp.maximum(jnp.sum(weights), 1e-9)


def multinomial_nll_entries(logp_at: jax.Array, row: jax.Array, valid: jax.Array, weights: jax.Array, per_entry: bool = False) -> jax.Array:
    """multinomial_nll from log softmax(logits) at the entries [E]: row NLL_b = -sum_{e: b_e = b} u_e
    logp_e; with `per_entry`, NLL_b / sum_{e: b_e = b} u_e (the "mean" form)."""
    n_rows = weights.shape[0]
    per_row = -jax.ops.segment_sum(valid * logp_at, row, n_rows)
    if per_entry:
        per_row = per_row / jnp.maximum(jax.ops.segment_sum(valid, row, n_rows), 1.0)
    return jnp.sum(weights * per_row) / jnp.maximum(jnp.sum(weights), 1e-9)


def held_out_nll_entries(
    logits: jax.Array, row: jax.Array, col: jax.Array, kept: jax.Array, target: jax.Array, weights: jax.Array, per_entry: bool = False
) -> jax.Array:
    """multinomial_nll_entries over the target entries (target_e = 1: those hidden from the input)
    with the kept entries (kept_e = 1) removed from each row's softmax: -log p of a hidden item
    among the items its profile's input lacks (loss.target = "dropped")."""
    logits = logits.at[row, col].add(-1e9 * kept)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return multinomial_nll_entries(logp[row, col], row, target, weights, per_entry)


def masked_huber_entries(pred: jax.Array, target: jax.Array, rated: jax.Array, delta: float = 1.0) -> jax.Array:
    """masked_huber at the entries [E]: mean Huber loss over the entries with rated_e = 1."""
    err = jnp.where(rated > 0, pred - target, 0.0)
    return jnp.sum(rated * huber(err, delta)) / jnp.maximum(jnp.sum(rated), 1e-9)


def huber(err: jax.Array, delta: float = 1.0) -> jax.Array:
    """huber(e) = e^2 / 2 for |e| <= delta, else delta (|e| - delta / 2)."""
    a = jnp.abs(err)
    return jnp.where(a <= delta, 0.5 * err * err, delta * (a - 0.5 * delta))


def masked_huber(pred: jax.Array, target: jax.Array, rated: jax.Array, weights: jax.Array, delta: float = 1.0) -> jax.Array:
    """L_rate: Huber loss averaged over the rated entries of the weighted rows (0 when none)."""
    m = rated * weights[:, None]
    err = jnp.where(m > 0, pred - target, 0.0)  # unrated targets may hold anything (NaN-free zeros)
    return jnp.sum(m * huber(err, delta)) / jnp.maximum(jnp.sum(m), 1e-9)


def uncertainty_weighted(losses: jax.Array, log_vars: jax.Array) -> jax.Array:
    """sum_t exp(-s_t) L_t + s_t over tasks t (losses [T], log_vars [T])."""
    return jnp.sum(jnp.exp(-log_vars) * losses + log_vars)


def fixed_weighted(losses: jax.Array, weights: jax.Array) -> jax.Array:
    """sum_t w_t L_t."""
    return jnp.sum(weights * losses)
