"""Optimisers: optax AdamW for the dense parameters, a lazy row-sparse Adam for the item table.

Learning rate at step t (t counts applied and skipped steps alike):
    lr(t) = base_lr * warmup(t) * shape(t) * plateau_scale
    warmup(t) = min(1, (t + 1) / warmup_steps)
    shape(t)  = 1 (constant) or  final + (1 - final) * (1 + cos(pi * min(1, u))) / 2 (cosine),
                u = (t - warmup_steps) / max(1, total_steps - warmup_steps), final = min_lr_ratio
`plateau_scale` is host state: multiplied by `plateau_factor` when the validation metric has not
improved for `plateau_patience` evaluations (reduce-on-plateau).

Gradients of all parameters (dense and table rows) are clipped together to a global L2 norm of
`clip_norm`. A step whose loss or gradient norm is not finite leaves every parameter and moment
unchanged (the trainer reports it).

Lazy Adam (TF's LazyAdam, torch's SparseAdam) for the rows U touched by a batch, at step t >= 1:
    m_U <- b1 m_U + (1 - b1) g_U;   v_U <- b2 v_U + (1 - b2) g_U^2
    x_U <- x_U - lr * m_U / (1 - b1^t) / (sqrt(v_U / (1 - b2^t)) + eps)
Rows outside U keep their values and moments, so a step costs O(|U| D), not O(V D). On the rows a
batch touches this equals dense Adam with the same moments (the test checks it); the moments of
untouched rows simply do not decay. Embedding tables are not weight-decayed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from segue.models.train_config import OptimConfig  # noqa: F401  (re-exported)


def lr_at(config: OptimConfig, step: jax.Array, total_steps: int) -> jax.Array:
    """lr(t) without the plateau scale (see the module docstring)."""
    t = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(1.0, (t + 1.0) / max(1, config.warmup_steps)) if config.warmup_steps else 1.0
    if config.schedule == "constant":
        shape = 1.0
    else:
        u = jnp.clip((t - config.warmup_steps) / max(1, total_steps - config.warmup_steps), 0.0, 1.0)
        f = config.min_lr_ratio
        shape = f + (1.0 - f) * 0.5 * (1.0 + jnp.cos(math.pi * u))
    return config.lr * warm * shape


def decay_mask(params: object) -> object:
    """True for weight matrices (ndim >= 2 leaves named 'kernel'); norms, biases, tables: False."""

    def is_kernel(path: tuple, leaf: jax.Array) -> bool:
        names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        return leaf.ndim >= 2 and "kernel" in names

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def dense_transform(config: OptimConfig, params: object) -> optax.GradientTransformation:
    """AdamW without the learning rate (it is applied by the caller, who knows the schedule)."""
    return optax.chain(
        optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps),
        optax.add_decayed_weights(config.weight_decay, mask=decay_mask(params)),
    )


def ema_decay_at(decay: float, applied: jax.Array) -> jax.Array:
    """d_t = min(decay, (1 + t) / (10 + t)) for t applied steps."""
    t = jnp.asarray(applied, jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def ema_update(average: object, params: object, d: jax.Array) -> object:
    """a <- d a + (1 - d) x, leaf by leaf."""
    return jax.tree_util.tree_map(lambda a, x: d * a + (1.0 - d) * x, average, params)


class RowAdamState(NamedTuple):
    m: jax.Array  # [V, D]
    v: jax.Array  # [V, D]


def row_adam_init(table: jax.Array) -> RowAdamState:
    return RowAdamState(jnp.zeros_like(table), jnp.zeros_like(table))


def row_adam_update(
    rows: jax.Array,
    grads: jax.Array,
    m: jax.Array,
    v: jax.Array,
    count: jax.Array,
    lr: jax.Array,
    config: OptimConfig,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Lazy Adam on gathered rows [M, D]: returns new (rows, m, v). `count` is t (>= 1)."""
    t = jnp.asarray(count, jnp.float32)
    m = config.b1 * m + (1.0 - config.b1) * grads
    v = config.b2 * v + (1.0 - config.b2) * grads * grads
    m_hat = m / (1.0 - config.b1**t)
    v_hat = v / (1.0 - config.b2**t)
    return rows - lr * m_hat / (jnp.sqrt(v_hat) + config.eps), m, v


def gather_unique(ids: jax.Array, size: int, n_rows: int) -> tuple[jax.Array, jax.Array]:
    """Unique ids of `ids` padded to `size` with the out-of-range id `n_rows`, and each id's slot.

    Returns (unique [size], local [ids.shape]) with unique[local] == ids. Padding slots gather
    zeros (mode="fill") and are dropped on scatter (mode="drop").
    """
    flat = ids.reshape(-1)
    unique, inverse = jnp.unique(flat, size=size, fill_value=n_rows, return_inverse=True)
    return unique, inverse.reshape(ids.shape)


def take_rows(table: jax.Array, unique: jax.Array) -> jax.Array:
    return table.at[unique].get(mode="fill", fill_value=0)


def put_rows(table: jax.Array, unique: jax.Array, rows: jax.Array) -> jax.Array:
    return table.at[unique].set(rows, mode="drop")


def global_norm(*trees: object) -> jax.Array:
    leaves = [x for t in trees for x in jax.tree_util.tree_leaves(t)]
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def clip_scale(norm: jax.Array, clip_norm: float | None) -> jax.Array:
    """Factor that brings the global norm down to clip_norm (1 when below or unclipped)."""
    if clip_norm is None:
        return jnp.ones((), jnp.float32)
    return jnp.minimum(1.0, clip_norm / jnp.maximum(norm, 1e-12))


class PlateauState(NamedTuple):
    best: float
    bad: int
    scale: float


def plateau_update(state: PlateauState, metric: float, config: OptimConfig) -> PlateauState:
    """Reduce-on-plateau on a validation metric where higher is better."""
    if config.plateau_patience is None:
        return state
    if metric > state.best:
        return PlateauState(metric, 0, state.scale)
    bad = state.bad + 1
    if bad >= config.plateau_patience:
        return PlateauState(state.best, 0, max(config.min_plateau_scale, state.scale * config.plateau_factor))
    return PlateauState(state.best, bad, state.scale)
