"""The jitted training step in functional form (nnx.split/merge + jax.jit, buffers donated).

Train state (a pytree; every leaf is checkpointed):
    rest      nnx.State   every parameter but the item table
    items     nnx.State   the item table E [V, D] (one leaf)
    opt       optax state of AdamW over `rest`
    item_m, item_v [V, D] Adam moments of the table (lazy: only touched rows change)
    applied   int32       steps applied so far (Adam's t for the table)
    step      int32       steps taken (applied + skipped); the schedule and the RNG use it
    key       uint32 [2]  raw base PRNG key; step t uses fold_in(key, t)
    ema_rest, ema_items   moving averages of rest and items (only with optim.ema_decay)

Sparse mode (sampled losses): the step gathers the unique ids U of the batch's inputs, targets and
candidates (padded to a static size), runs the network on E[U] with ids remapped into U,
differentiates with respect to E[U], and scatters the lazily-updated rows back, so neither the
gradient nor the update ever touches all V rows. Dense mode (full softmax, or sparse_items="off"):
the same code with U = all rows, which is exactly dense Adam on the table.

With feedback / context (StepSpec.events enabled; segue.models.events) the step also takes the
batch's event arrays: the network reads the events' feedback and context, the next-item loss
scores q_t = next_query(h_t, ctx_{t+1}) instead of h_t, and the feedback head adds
sum_k w_k masked_mean(l_k) (segue.training.feedback_losses) on the target events' feedback. The
head reads E[x_{t+1}] from the same rows (E[U] in sparse mode), so the row-sparse update holds.
Without events the step is today's, operation for operation.

With item side features (StepSpec.items enabled; segue.models.item_encoder) the step also takes the
per-token feature arrays: the rows E[U] (or the whole table) are composed with the feature
embeddings of the same tokens before the network reads them, in the input and in the tied output,
with the id dropped at items.id_dropout per token (its own random stream, so the plain streams do
not move). The id table keeps its row-sparse update; the feature tables are dense parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from segue.data.vocab import EOP, N_SPECIAL
from segue.models.events import Categories, EventsConfig
from segue.models.item_encoder import ItemEncoderConfig, Shapes, gather_features
from segue.models.transformer import ModelConfig, SequenceTransformer
from segue.training import feedback_losses as FL
from segue.training import losses as L
from segue.training import optim as O


@dataclass(frozen=True)
class StepSpec:
    """Static facts the step is compiled for."""

    model: ModelConfig
    loss: L.LossConfig
    optim: O.OptimConfig
    vocab_size: int
    total_steps: int
    eop_target: bool = True
    events: EventsConfig = field(default_factory=EventsConfig)
    categories_json: str = "{}"  # the training context categories (JSON), saved with the network
    rating_prior: tuple[float, float] | None = None  # the training ratings' (mean, sd), ditto
    rating_item_bias: tuple[float, ...] | None = None  # the rating head's item biases, ditto
    items: ItemEncoderConfig = field(default_factory=ItemEncoderConfig)  # side features (off)
    item_shapes: Shapes = ()  # (feature, table rows, width) of the fitted feature vocabularies
    content_dim: int = 0

    @property
    def categories(self) -> Categories:
        import json

        return json.loads(self.categories_json)

    @property
    def sparse(self) -> bool:
        if self.optim.sparse_items == "auto":
            return self.loss.kind != "full"
        return self.optim.sparse_items == "on" and self.loss.kind != "full"

    @property
    def n_classes(self) -> int:
        """Tokens that can be targets: the items, and <eop> when sequences end with it."""
        return self.vocab_size - N_SPECIAL + int(self.eop_target)

    def class_mask(self) -> jax.Array:
        """[V] True for tokens that take part in the full softmax."""
        tokens = jnp.arange(self.vocab_size)
        return (tokens >= N_SPECIAL) | ((tokens == EOP) & self.eop_target)


def split_network(net: SequenceTransformer) -> tuple[Any, nnx.State, nnx.State]:
    """graphdef, items (the table), rest (every other parameter)."""
    graphdef, items, rest = nnx.split(net, nnx.PathContains("item_emb"), ...)
    return graphdef, items, rest


def table_of(items: nnx.State) -> jax.Array:
    (leaf,) = jax.tree_util.tree_leaves(items)
    return leaf


def with_table(items: nnx.State, table: jax.Array) -> nnx.State:
    return jax.tree_util.tree_map(lambda _: table, items)


def init_state(spec: StepSpec, seed: int, ridge_table: np.ndarray | None = None) -> tuple[Any, dict[str, Any]]:
    """(graphdef, state) of a fresh network; `ridge_table` [V, k] starts the rating head's fold-in
    table (events.rating_ridge_start = "als") with its gain at 1."""
    net = SequenceTransformer(
        spec.model,
        spec.vocab_size,
        nnx.Rngs(seed),
        init_temperature=spec.loss.init_temperature,
        events=spec.events,
        categories=spec.categories,
        rating_prior=spec.rating_prior,
        rating_item_bias=None if spec.rating_item_bias is None else np.asarray(spec.rating_item_bias, np.float32),
        items=spec.items,
        item_shapes=spec.item_shapes,
        content_dim=spec.content_dim,
    )
    if ridge_table is not None:
        net.ridge_table[...] = jnp.asarray(ridge_table, jnp.float32)
        net.ridge_log_gain[...] = jnp.zeros_like(net.ridge_log_gain[...])
    graphdef, items, rest = split_network(net)
    table = table_of(items)
    tx = O.dense_transform(spec.optim, rest)
    state = {
        "rest": rest,
        "items": items,
        "opt": tx.init(rest),
        "item_m": jnp.zeros_like(table),
        "item_v": jnp.zeros_like(table),
        "applied": jnp.zeros((), jnp.int32),
        "step": jnp.zeros((), jnp.int32),
        "key": jax.random.key_data(jax.random.key(seed + 1)),
    }
    if spec.optim.ema_decay is not None:
        state["ema_rest"] = jax.tree_util.tree_map(jnp.copy, rest)
        state["ema_items"] = jax.tree_util.tree_map(jnp.copy, items)
    return graphdef, state


def network_of(graphdef: Any, state: dict[str, Any], average: bool = False) -> SequenceTransformer:
    """The network of a train state; with `average`, its moving-average weights when it keeps them."""
    if average and "ema_rest" in state:
        return nnx.merge(graphdef, state["ema_items"], state["ema_rest"])
    return nnx.merge(graphdef, state["items"], state["rest"])


def _candidates(spec: StepSpec, key: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Shared candidate tokens [K]: in-batch draws (logq only), then uniform item tokens."""
    ku, kb = jax.random.split(key)
    uniform = jax.random.randint(ku, (spec.loss.n_negatives,), N_SPECIAL, spec.vocab_size)
    if spec.loss.kind != "logq" or spec.loss.n_inbatch == 0:
        return uniform
    logits = jnp.where(mask, 0.0, -jnp.inf)
    pos = jax.random.categorical(kb, logits, shape=(spec.loss.n_inbatch,))
    return jnp.concatenate([targets[pos], uniform])


def per_position_loss(
    spec: StepSpec,
    h: jax.Array,
    rows: jax.Array,
    local_t: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    cands: jax.Array | None,
    local_c: jax.Array | None,
    log_tau: jax.Array,
    inputs: jax.Array | None = None,
) -> jax.Array:
    """Losses [N] for hidden states h [N, D]; `rows` is the table (dense) or E[U] (sparse).

    `inputs` [B, T] (row indices, N = B T) is needed by the full softmax with mask_seen."""
    kind = spec.loss.kind
    if kind == "full":
        logits = h @ rows.T  # [N, V]
        if spec.loss.mask_seen:
            if inputs is None:
                raise ValueError("mask_seen needs the inputs")
            b, t = inputs.shape
            logits = L.mask_seen_logits(logits.reshape(b, t, -1), inputs, local_t.reshape(b, t)).reshape(b * t, -1)
        return L.full_softmax_ce(logits, local_t, spec.class_mask(), spec.loss.label_smoothing)
    pos = jnp.sum(h * rows[local_t], axis=-1)  # [N]
    neg = h @ rows[local_c].T  # [N, K]
    hit = cands[None, :] == targets[:, None]
    if kind == "sampled":
        return L.sampled_softmax_ce(pos, neg, hit)
    if kind == "label_in_denominator":
        return L.label_in_denominator_ce(pos, neg, hit, spec.n_classes)
    n_in = spec.loss.n_inbatch
    log_q_pos, log_q_neg = L.mixed_log_q(cands, targets, mask, n_in, spec.loss.n_negatives, spec.n_classes)
    tau = L.clip_temperature(log_tau) if spec.loss.learn_temperature else spec.loss.init_temperature
    return L.logq_ce(pos, neg, hit, log_q_pos, log_q_neg, tau)


def make_train_step(
    spec: StepSpec, graphdef: Any, shardings: dict[str, Any] | None = None, metrics_sharding: Any = None
) -> Callable[..., tuple[dict[str, Any], dict[str, jax.Array]]]:
    """step(state, inputs [B, T], targets [B, T], mask [B, T], lr_scale[, events][, feats]) -> (state, metrics).

    `events` (the arrays of segue.models.events.batch_events) is required when spec.events is
    enabled and must be None otherwise; `feats` (the per-token arrays of
    segue.data.item_features.ItemFeatures.arrays) likewise when spec.items is enabled.
    `shardings` (segue.training.mesh.state_shardings) keeps the state's layout on a mesh from step
    to step; None: one device, as before meshes."""
    ocfg = spec.optim
    ev_cfg = spec.events
    heads = ev_cfg.targets()
    kinds, weights = [k for _, k, _ in heads], [w for _, _, w in heads]

    def step(
        state: dict[str, Any],
        inputs: jax.Array,
        targets: jax.Array,
        mask: jax.Array,
        lr_scale: jax.Array,
        events: dict[str, jax.Array] | None = None,
        feats: dict[str, jax.Array] | None = None,
    ):
        if (events is None) == ev_cfg.enabled:
            raise ValueError("events must be given exactly when the spec's events section is enabled")
        if (feats is None) == spec.items.enabled:
            raise ValueError("feats must be given exactly when the spec's items section is enabled")
        tx = O.dense_transform(ocfg, state["rest"])
        t = state["step"]
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), t)
        k_drop, k_cand = jax.random.split(key)
        table = table_of(state["items"])
        V = table.shape[0]
        b, T = inputs.shape
        tgt = targets.reshape(-1)
        msk = mask.reshape(-1)
        cands = None if spec.loss.kind == "full" else _candidates(spec, k_cand, tgt, msk)
        if spec.sparse:
            ids = jnp.concatenate([inputs.reshape(-1), tgt, cands])
            unique, local = O.gather_unique(ids, ids.shape[0], V)
            rows0 = O.take_rows(table, unique)
            l_in = local[: b * T].reshape(b, T)
            l_t = local[b * T : 2 * b * T]
            l_c = local[2 * b * T :]
        else:
            unique = None
            rows0 = table
            l_in, l_t, l_c = inputs, tgt, cands
        if feats is not None:
            row_tokens = unique if spec.sparse else jnp.arange(V)
            row_feats = gather_features(feats, row_tokens)
            k_id = jax.random.fold_in(key, 0x1D)  # the id dropout's own stream

        def loss_fn(rest: nnx.State, id_rows: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
            net = nnx.merge(graphdef, state["items"], rest)
            rows = id_rows if feats is None else net.item_encoder.compose(id_rows, row_tokens, row_feats, k_id)
            if events is None:
                h = net.hidden(l_in, emb=rows, key=k_drop).reshape(b * T, -1)
                per = per_position_loss(spec, h, rows, l_t, tgt, msk, cands, l_c, net.log_temperature[...], l_in)
                return L.masked_mean(per, msk), {}
            hs = net.hidden(l_in, emb=rows, key=k_drop, events=events)  # [B, T, D]
            nxt = events.get("next_ctx")
            q = net.next_query(hs, nxt).reshape(b * T, -1)
            per = per_position_loss(spec, q, rows, l_t, tgt, msk, cands, l_c, net.log_temperature[...], l_in)
            item_loss = L.masked_mean(per, msk)
            if not heads:
                return item_loss, {"item_loss": item_loss}
            user = None
            if net.has_ridge:  # the ridge fold-in of every column's rated prefix
                user = net.ridge_user(rows[l_in], events["fold_value"], events["fold_rated"], inputs)
            pred = net.predict_feedback(hs, rows[l_t].reshape(b, T, -1), nxt, user, targets)
            fb, cols = FL.feedback_loss(pred, events["fb_target"], events["fb_mask"], kinds, weights, ev_cfg.huber_delta)
            aux = {"item_loss": item_loss, "feedback_loss": fb}
            aux |= {f"fb_loss_{name}": cols[i] for i, (name, _, _) in enumerate(heads)}
            return item_loss + fb, aux

        (loss, aux), (g_rest, g_rows) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(state["rest"], rows0)
        norm = O.global_norm(g_rest, g_rows)
        ok = jnp.isfinite(loss) & jnp.isfinite(norm)
        scale = O.clip_scale(norm, ocfg.clip_norm)
        g_rest = jax.tree_util.tree_map(lambda g: g * scale, g_rest)
        g_rows = g_rows * scale
        lr = O.lr_at(ocfg, t, spec.total_steps) * lr_scale

        updates, opt = tx.update(g_rest, state["opt"], state["rest"])
        rest = optax.apply_updates(state["rest"], jax.tree_util.tree_map(lambda u: -lr * u, updates))
        count = state["applied"] + 1
        if spec.sparse:
            m0, v0 = O.take_rows(state["item_m"], unique), O.take_rows(state["item_v"], unique)
        else:
            m0, v0 = state["item_m"], state["item_v"]
        rows, m, v = O.row_adam_update(rows0, g_rows, m0, v0, count, lr, ocfg)

        def keep(new: Any, old: Any) -> Any:
            return jax.tree_util.tree_map(lambda a, c: jnp.where(ok, a, c), new, old)

        rest, opt = keep(rest, state["rest"]), keep(opt, state["opt"])
        rows, m, v = keep(rows, rows0), keep(m, m0), keep(v, v0)
        if spec.sparse:
            table = O.put_rows(table, unique, rows)
            item_m = O.put_rows(state["item_m"], unique, m)
            item_v = O.put_rows(state["item_v"], unique, v)
        else:
            table, item_m, item_v = rows, m, v
        new = {
            "rest": rest,
            "items": with_table(state["items"], table),
            "opt": opt,
            "item_m": item_m,
            "item_v": item_v,
            "applied": jnp.where(ok, count, state["applied"]),
            "step": t + 1,
            "key": state["key"],
        }
        if ocfg.ema_decay is not None:
            d = jnp.where(ok, O.ema_decay_at(ocfg.ema_decay, count), 1.0)  # a skipped step moves nothing
            new["ema_rest"] = O.ema_update(state["ema_rest"], rest, d)
            new["ema_items"] = O.ema_update(state["ema_items"], new["items"], d)
        tau = L.clip_temperature(rest_log_tau(rest))
        metrics = {"loss": loss, "grad_norm": norm, "skipped": ~ok, "lr": lr, "count": jnp.sum(mask), "temperature": tau}
        return new, metrics | aux

    if shardings is None:
        return jax.jit(step, donate_argnums=(0,))
    return jax.jit(step, donate_argnums=(0,), out_shardings=(shardings, metrics_sharding))


def rest_log_tau(rest: nnx.State) -> jax.Array:
    return rest["log_temperature"][...]
