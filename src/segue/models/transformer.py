"""A causal transformer over item sequences (trecs' decoder, SASRec's task) as a Recommender.

Architecture (pre-LayerNorm GPT decoder; defaults are trecs'):
    x_0 = s E[tokens] + P[positions]               E [V, D] item table, P [context, D] learned,
                                                   s = sqrt(D) if scale_embeddings else 1
    x_l = x_{l-1} + Drop(Attn(LN(x_{l-1})))         causal multi-head self-attention
    x_l = x_l + Drop(W2 act(W1 LN(x_l)))             feed-forward, ReLU by default
    h   = LN(x_L);   score(c) = <h, E[c]>            output tied to the item table
Dropout (rate p) is applied to the embedding sum and to both residual branches.

The item table is passed to `hidden()` explicitly so a training step can run the network on the
rows a batch touches only (see segue.training.step); the module still owns it as a Param.

Feedback and context (ARGUS; TransformerConfig.events, segue.models.events; all off by default,
and then none of the following parameters exist; time features are three more context columns):
    x_0 += R[rating bucket] + W_f [f(x); missing] + sum_c C_c[slot_c]     per input event
    q_t  = h_t + MLP_q([h_t; ctx_{t+1}])      next-item head (ctx_{t+1}: the target event's
                                              context, known at request time; MLP_q's output
                                              layer starts at zero, so q = h at init)
    y_t  = MLP_f([h_t; E[x_{t+1}]; ctx_{t+1}]) feedback head: that event's feedback
           (+ <P h_t, Q E[x_{t+1}]> on the rating column with events.rating_rank = k > 0: P, Q
           [k, D], P starting at zero; a low-rank user-item term, biased MF's p_u . q_i)
With events.rating_ridge = lambda, the rating column adds (b_u + <p_u, q_{t+1}>) / s0 where
[b_u, p_u] is the ridge fold-in of the rated inputs up to t (q_j = g Q E[x_j], or g T[x_j] with
rating_ridge_table; `ridge_user`: prefix sums and one batched solve; a scored history's comes
from the host, segue.models.events.ridge_fold, over every rated event it has).
With events.rating_fold, h_t += W_u sum_{j<=t} w(r_j) E[x_j] / sqrt(n_t) (n_t: rated inputs up to
t, w learned per rating bucket, W_u starting at zero): asymmetric SVD's user factor, causal.
ctx = sum_c C_c[slot_c] (one table per context column, slot 0 = null or unseen category).
Without context the next-item head is the identity (today's model).

Item side features (TransformerConfig.items, segue.models.item_encoder; off by default, and then
no parameter of it exists): E[t] above becomes the composed vector of item t (id embedding + feature
embeddings + projected content vector), on the input side and in the tied output alike. For
scoring, the composed vectors of every token (and of items added beyond the vocabulary, which are
features-only) are baked into a copy of the network's item table (`with_composed_items`), so every
scoring path reads them as it reads the plain table.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from pydantic import Field, model_validator

from segue.config import Config
from segue.data.arrays import SequenceArrays
from segue.data.item_features import ItemFeatures
from segue.data.vocab import N_SPECIAL, Vocabulary
from segue.errors import SegueError
from segue.models import events as EV
from segue.models.base import NEG_INF
from segue.models.events import EventsConfig
from segue.models.item_encoder import (
    ExtraItems,
    ItemEncoder,
    ItemEncoderConfig,
    Shapes,
    add_store_items,
    compose_table,
    fit_features,
)
from segue.models.neural import NeuralRecommender, flat_weights, read_weights, write_weights
from segue.models.pairwise_config import PairwiseConfig
from segue.models.train_config import LossConfig, OptimConfig, TrainerConfig


class ModelConfig(Config):
    n_layers: int = Field(6, ge=1)
    n_heads: int = Field(8, ge=1)
    d_model: int = Field(128, ge=1)
    d_ff: int = Field(256, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    context_length: int = Field(50, ge=1)
    activation: Literal["relu", "gelu"] = "relu"
    init_std: float = Field(0.02, gt=0)
    # Multiply input item embeddings by sqrt(d_model) (Vaswani et al., SASRec) so the item signal
    # dominates the positions at init; the tied output still scores with the unscaled table.
    scale_embeddings: bool = False

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        return self


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when `key` is None (evaluation) or rate is 0.

    The mask comes from random bytes (four per 32-bit draw): an element is dropped when its byte is
    below r = round(256 rate), so the rate is quantised to r / 256 and survivors are scaled by
    256 / (256 - r). On CPU this is ~10x cheaper than `jax.random.bernoulli` (which made dropout
    a third of the training step).
    """
    if key is None or rate == 0.0:
        return x
    r = max(1, round(256 * rate))
    if x.shape[-1] % 4:
        keep = jax.random.bernoulli(key, 1.0 - r / 256, x.shape)
    else:
        bits = jax.random.bits(key, (*x.shape[:-1], x.shape[-1] // 4), jnp.uint32)
        keep = jax.lax.bitcast_convert_type(bits, jnp.uint8).reshape(x.shape) >= r
    return jnp.where(keep, x * (256.0 / (256 - r)), 0.0)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs) -> None:
        d, init = cfg.d_model, nnx.initializers.normal(cfg.init_std)
        # Residual projections scaled down with depth (GPT-2) so the sum stays well-scaled.
        out_init = nnx.initializers.normal(cfg.init_std / (2 * cfg.n_layers) ** 0.5)
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.qkv = nnx.Linear(d, 3 * d, kernel_init=init, rngs=rngs)
        self.proj = nnx.Linear(d, d, kernel_init=out_init, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.ff1 = nnx.Linear(d, cfg.d_ff, kernel_init=init, rngs=rngs)
        self.ff2 = nnx.Linear(cfg.d_ff, d, kernel_init=out_init, rngs=rngs)
        self.n_heads = cfg.n_heads
        self.rate = cfg.dropout
        self.act = jax.nn.relu if cfg.activation == "relu" else jax.nn.gelu

    def __call__(self, x: jax.Array, bias: jax.Array, key: jax.Array | None) -> jax.Array:
        b, t, d = x.shape
        h, dh = self.n_heads, d // self.n_heads
        k1, k2 = jax.random.split(key) if key is not None else (None, None)
        qkv = self.qkv(self.ln1(x)).reshape(b, t, 3, h, dh)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, H, dh]
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (dh**-0.5) + bias  # [B, H, T, T]
        att = jax.nn.softmax(att, axis=-1)
        y = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, d)
        x = x + dropout(self.proj(y), self.rate, k1)
        return x + dropout(self.ff2(self.act(self.ff1(self.ln2(x)))), self.rate, k2)


class MLP(nnx.Module):
    """Linear -> ReLU -> Linear; `zero_out` starts the output layer at zero."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, std: float, rngs: nnx.Rngs, *, zero_out: bool = False) -> None:
        self.fc1 = nnx.Linear(d_in, d_hidden, kernel_init=nnx.initializers.normal(std), rngs=rngs)
        out_init = nnx.initializers.zeros if zero_out else nnx.initializers.normal(std)
        self.fc2 = nnx.Linear(d_hidden, d_out, kernel_init=out_init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.relu(self.fc1(x)))


class EventEncoder(nnx.Module):
    """Feedback and context embeddings of events (see the module docstring and segue.models.events)."""

    def __init__(self, ev: EventsConfig, d: int, std: float, rngs: nnx.Rngs) -> None:
        init = nnx.initializers.normal(std)
        self.rating_emb = nnx.Param(init(rngs.params(), (ev.rating_buckets + 1, d))) if ev.rating else None
        f = len(ev.feedback)
        self.fb_proj = nnx.Linear(2 * f, d, kernel_init=init, rngs=rngs) if f else None
        c = ev.n_context
        self.ctx_emb = nnx.Param(init(rngs.params(), (c, ev.context_rows, d))) if c else None

    def context(self, slots: jax.Array) -> jax.Array:
        """sum_c C_c[slots[..., c]]: slots [..., C] -> [..., D]."""
        table = self.ctx_emb[...]
        return sum(table[c][slots[..., c]] for c in range(table.shape[0]))

    def __call__(self, events: dict[str, jax.Array]) -> jax.Array:
        """The events' additive input vectors [B, T, D]."""
        parts = []
        if self.rating_emb is not None:
            parts.append(self.rating_emb[...][events["rating_bucket"]])
        if self.fb_proj is not None:
            parts.append(self.fb_proj(jnp.concatenate([events["fb"], events["fb_missing"]], axis=-1)))
        if self.ctx_emb is not None:
            parts.append(self.context(events["ctx"]))
        if not parts:  # a head-only config (e.g. predict ratings without reading them)
            return jnp.zeros((), jnp.float32)
        return sum(parts[1:], parts[0])


class SequenceTransformer(nnx.Module):
    """The network: tokens [B, T] -> hidden states [B, T, D]; logits are <q, E[c]> (q = h without context)."""

    def __init__(
        self,
        cfg: ModelConfig,
        vocab_size: int,
        rngs: nnx.Rngs,
        *,
        init_temperature: float = 1.0,
        events: EventsConfig | None = None,
        categories: EV.Categories | None = None,
        rating_prior: tuple[float, float] | None = None,
        rating_item_bias: np.ndarray | None = None,
        rank: tuple[str, int, float] | None = None,
        items: ItemEncoderConfig | None = None,
        item_shapes: Shapes = (),
        content_dim: int = 0,
    ) -> None:
        self.rate = cfg.dropout  # plain values only: the graphdef must stay hashable
        self.emb_scale = float(cfg.d_model) ** 0.5 if cfg.scale_embeddings else 1.0
        std = cfg.init_std
        self.item_emb = nnx.Param(jax.random.normal(rngs.params(), (vocab_size, cfg.d_model)) * std)
        self.pos_emb = nnx.Param(jax.random.normal(rngs.params(), (cfg.context_length, cfg.d_model)) * std)
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
        self.ln_f = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        # log of the softmax temperature (used by the logq loss only; clipped to [0.01, 100]).
        self.log_temperature = nnx.Param(jnp.log(jnp.asarray(init_temperature, jnp.float32)))
        # Event parts exist only when configured, and are made after the plain ones, so the plain
        # parameters (and their random init under a seed) are today's either way.
        if events is not None and events.enabled:
            d, width = cfg.d_model, events.head_width or cfg.d_ff
            self.encoder = EventEncoder(events, d, std, rngs)
            c = d if events.n_context else 0
            self.next_head = MLP(d + c, width, d, std, rngs, zero_out=True) if c else None
            k = len(events.predict)
            self.feedback_head = MLP(2 * d + c, width, k, std, rngs) if k else None
            # The training category lists (name-matched at scoring), as JSON: a plain hashable value.
            self.categories_json = json.dumps(categories or {}, sort_keys=True)
            # The training ratings' (mean, sd), the feedback head's normalisation prior (or null).
            self.rating_prior_json = json.dumps(list(rating_prior) if rating_prior is not None else None)
            # The fitted item biases the rating head predicts a residual over (events.rating_item_bias),
            # as JSON too (a hashable plain value; host-side only, never inside a compiled function).
            self.item_bias_json = _bias_json(rating_item_bias)
        # A pairwise fine-tuned network ranks by (mode, feedback column, b_0) (PairwiseConfig);
        # its mix weights (a, b) are a Param made last, so every other parameter is as before.
        if rank is not None and rank[0] != "logit":
            self.rank_mode, self.rank_col = rank[0], rank[1]
            # ranking by the rating column: the item biases the head's residual leaves out are added back
            self.rank_rating = events is not None and [k for _, k, _ in events.targets()][rank[1]] == "rating"
            if rank[0] == "mix":
                self.rank_mix = nnx.Param(jnp.asarray([1.0, rank[2]], jnp.float32))
        # Made last for the same reason: the plain parameters' init does not move.
        if items is not None and items.enabled:
            self.item_encoder = ItemEncoder(items, item_shapes, content_dim, cfg.d_model, std, rngs)
        if events is not None and events.enabled and events.rating_rank > 0:
            d, k = cfg.d_model, events.rating_rank
            # P starts at zero (the term starts at 0); Q keeps E's scale (std 1 / sqrt(D))
            self.rating_p = nnx.Linear(d, k, use_bias=False, kernel_init=nnx.initializers.zeros, rngs=rngs)
            self.rating_q = nnx.Linear(d, k, use_bias=False, kernel_init=nnx.initializers.normal(d**-0.5), rngs=rngs)
            self.rating_col = [n for n, _, _ in events.targets()].index("rating")
            self.rating_mlp = events.rating_mlp
        if events is not None and events.enabled and events.rating_ridge > 0:
            # the fold-in's item vectors are g Q E[x]; g (log, learned) starts them at the norm
            # events.rating_ridge_init from E's init scale (|Q E|^2 ~ k std^2)
            self.ridge_log_gain = nnx.Param(jnp.log(jnp.asarray(events.rating_ridge_init / (k**0.5 * std), jnp.float32)))
            self.ridge_pen = (events.rating_ridge_bias, events.rating_ridge)
            self.rating_hidden = events.rating_hidden
            if events.rating_ridge_table:  # its own table, at the init norm of g Q E above
                self.ridge_table = nnx.Param(jax.random.normal(rngs.params(), (vocab_size, k)) * std)
        if events is not None and events.enabled and events.rating_fold:
            n = events.rating_buckets
            self.fold_weight = nnx.Param(jnp.concatenate([jnp.zeros(1), jnp.linspace(-1.0, 1.0, n)]))
            self.fold_proj = nnx.Linear(cfg.d_model, cfg.d_model, use_bias=False, kernel_init=nnx.initializers.zeros, rngs=rngs)

    @property
    def has_events(self) -> bool:
        return hasattr(self, "encoder")

    def hidden(
        self,
        tokens: jax.Array,
        emb: jax.Array | None = None,
        positions: jax.Array | None = None,
        key: jax.Array | None = None,
        events: dict[str, jax.Array] | None = None,
    ) -> jax.Array:
        """tokens [B, T] index `emb` (default: the item table); key=None disables dropout.

        `events` (segue.models.events arrays) is required by a network built with events."""
        emb = self.item_emb[...] if emb is None else emb
        b, t = tokens.shape
        pos = self.pos_emb[...]
        x = emb[tokens] * self.emb_scale + (pos[:t][None] if positions is None else pos[positions])
        if self.has_events:
            if events is None:
                raise ValueError("this network reads event feedback/context: pass `events`")
            x = x + self.encoder(events)
        # Causal mask as an additive bias: query q sees keys k <= q.
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))
        bias = jnp.where(causal, 0.0, -1e9).astype(x.dtype)[None, None]
        keys = jax.random.split(key, len(self.blocks) + 1) if key is not None else [None] * (len(self.blocks) + 1)
        x = dropout(x, self.rate, keys[-1])
        for blk, k in zip(self.blocks, keys[:-1], strict=True):
            x = blk(x, bias, k)
        h = self.ln_f(x)
        if getattr(self, "fold_proj", None) is not None:  # + W sum_{j<=t} w(r_j) E[x_j] / sqrt(n_t)
            bucket = events["rating_bucket"]
            w = jnp.where(bucket > 0, self.fold_weight[...][bucket], 0.0)  # [B, T]
            n = jnp.maximum(jnp.cumsum(bucket > 0, axis=1), 1).astype(h.dtype)
            u = jnp.cumsum(w[..., None] * emb[tokens], axis=1) / jnp.sqrt(n)[..., None]
            h = h + self.fold_proj(u)
        return h

    @property
    def has_ridge(self) -> bool:
        return hasattr(self, "ridge_log_gain")

    def fold_vectors(self, item_vecs: jax.Array, tokens: jax.Array | None = None) -> jax.Array:
        """The ridge fold-in's item vectors [..., k]: g Q e of item vectors e [..., D], or g T[tokens]
        with events.rating_ridge_table (then `tokens` [...] is required)."""
        g = jnp.exp(self.ridge_log_gain[...])
        table = getattr(self, "ridge_table", None)
        if table is None:
            return g * self.rating_q(item_vecs)
        if tokens is None:
            raise ValueError("this network's fold-in vectors are a table (events.rating_ridge_table): pass `tokens`")
        return g * table[...][tokens]

    def fold_table(self) -> np.ndarray:
        """float32 [V, k] fold-in vectors of every token (the host's segue.models.events.ridge_fold)."""
        table = self.item_emb[...]
        return np.asarray(self.fold_vectors(table, jnp.arange(table.shape[0])))

    def ridge_user(self, item_vecs: jax.Array, value: jax.Array, rated: jax.Array, tokens: jax.Array | None = None) -> jax.Array:
        """[B, T, 1 + k] the ridge fold-in [b_u, p_u] / s0 at every column t from the rated inputs
        of columns 0..t (item vectors [B, T, D], residuals e_j and 0/1 flags [B, T]; see
        segue.models.events.EventsConfig.rating_ridge): prefix sums of f_j f_j^T and f_j e_j with
        f_j = [1, q_j], then one batched solve. Causal: column t reads nothing after it."""
        q = self.fold_vectors(item_vecs, tokens)
        f = jnp.concatenate([jnp.ones((*q.shape[:-1], 1), q.dtype), q], axis=-1) * rated[..., None]
        gram = jnp.cumsum(f[..., :, None] * f[..., None, :], axis=1)  # [B, T, 1 + k, 1 + k]
        rhs = jnp.cumsum(f * value[..., None], axis=1)
        pen = jnp.asarray([self.ridge_pen[0]] + [self.ridge_pen[1]] * q.shape[-1], q.dtype)
        x = jnp.linalg.solve(gram + jnp.diag(pen), rhs[..., None])[..., 0]
        return x / EV.prior_sd(self.rating_prior)

    def next_query(self, h: jax.Array, next_ctx: jax.Array | None = None) -> jax.Array:
        """q_t = h_t + MLP_q([h_t; ctx_{t+1}]) (the identity without context). h [..., D]."""
        if not self.has_events or self.next_head is None:
            return h
        if next_ctx is None:
            raise ValueError("this network's next-item head reads the next event's context: pass next_ctx")
        return h + self.next_head(jnp.concatenate([h, self.encoder.context(next_ctx)], axis=-1))

    def predict_feedback(
        self,
        h: jax.Array,
        item_vecs: jax.Array,
        next_ctx: jax.Array | None = None,
        user: jax.Array | None = None,
        tokens: jax.Array | None = None,
    ) -> jax.Array:
        """Raw head outputs [..., K] (order: EventsConfig.targets()) for hidden states h [..., D]
        and the item vectors E[x_{t+1}] [..., D] of the events whose feedback is predicted; `user`
        [..., 1 + k] the ridge fold-in (`ridge_user`, or the host's fold_user) of a network with
        events.rating_ridge; `tokens` [...] the items' ids (needed by events.rating_ridge_table)."""
        if not self.has_events or self.feedback_head is None:
            raise ValueError("this network has no feedback head (events.predict is empty)")
        parts = [h, item_vecs]
        if self.next_head is not None:
            parts.append(self.encoder.context(next_ctx))
        out = self.feedback_head(jnp.concatenate(parts, axis=-1))
        if getattr(self, "rating_p", None) is not None:  # + <P h, Q e> on the rating column
            hidden = getattr(self, "rating_hidden", True)
            low_rank = jnp.sum(self.rating_p(h) * self.rating_q(item_vecs), axis=-1) if hidden else 0.0
            if self.has_ridge:  # + (b_u + <p_u, g Q e>) / s0 of the fold-in
                if user is None:
                    raise ValueError("this network folds in the history's ratings (events.rating_ridge): pass `user`")
                low_rank = low_rank + user[..., 0] + jnp.sum(user[..., 1:] * self.fold_vectors(item_vecs, tokens), axis=-1)
            out = out.at[..., self.rating_col].add(low_rank) if self.rating_mlp else out.at[..., self.rating_col].set(low_rank)
        return out

    def rank_offsets(self) -> jax.Array | None:
        """[V] what the ranking score adds to the feedback head's rating column per item: the item
        biases its residual leaves out, in the head's normalised units (b_i / s0, s0 the prior's
        sd), so the score orders one user's items as the predicted ratings do; None when the
        network ranks by no rating column or has no item biases."""
        bias = self.rating_item_bias if self.has_events else None
        if bias is None or not getattr(self, "rank_rating", False):
            return None
        return jnp.asarray(bias / EV.prior_sd(self.rating_prior))

    def rank_score(
        self,
        h: jax.Array,
        item_vecs: jax.Array,
        next_ctx: jax.Array | None = None,
        tokens: jax.Array | None = None,
        user: jax.Array | None = None,
    ) -> jax.Array:
        """The ranking score [...] of items E[c] [..., D] after hidden states h [..., D] (same
        leading shape): <q, E[c]>, the feedback head's column, or their learned mix
        (segue.models.pairwise_config). `tokens` [...] (the items' ids) adds `rank_offsets`."""
        mode = getattr(self, "rank_mode", "logit")
        logit = jnp.sum(self.next_query(h, next_ctx) * item_vecs, axis=-1)
        if mode == "logit":
            return logit
        fb = self.predict_feedback(h, item_vecs, next_ctx, user, tokens)[..., self.rank_col]
        offsets = self.rank_offsets()
        if offsets is not None and tokens is not None:
            fb = fb + offsets[tokens]
        if mode == "feedback":
            return fb
        a_b = self.rank_mix[...]
        return a_b[0] * logit + a_b[1] * fb

    @property
    def categories(self) -> EV.Categories:
        return json.loads(getattr(self, "categories_json", "{}"))

    @property
    def rating_prior(self) -> tuple[float, float] | None:
        p = json.loads(getattr(self, "rating_prior_json", "null"))
        return (float(p[0]), float(p[1])) if p is not None else None

    @property
    def rating_item_bias(self) -> np.ndarray | None:
        """float32 [V] item biases of the rating head's baseline (None: no item biases)."""
        return _parse_bias(getattr(self, "item_bias_json", "null"))

    @property
    def has_item_encoder(self) -> bool:
        return hasattr(self, "item_encoder")


def with_composed_items(net: SequenceTransformer, feats: dict[str, Any]) -> SequenceTransformer:
    """A copy of `net` whose item table holds the composed vectors (evaluation mode) of every
    token `feats` describes (segue.data.item_features arrays; rows past the id table are
    features-only items), for scoring; the original network is untouched."""
    baked = nnx.clone(net)
    baked.item_emb = nnx.Param(compose_table(net.item_encoder, net.item_emb[...], feats))
    return baked


def count_flops_per_token(cfg: ModelConfig, n_candidates: int, seq_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward; a multiply-add = 2 FLOPs).

    Per layer: qkv 2*3D^2, projection 2*D^2, feed-forward 2*2*D*F, attention scores and mixing
    2*2*T*D (T = sequence length, causal half not discounted); output: 2*D per candidate.
    """
    d, f = cfg.d_model, cfg.d_ff
    t = cfg.context_length if seq_len is None else seq_len
    layer = 2 * 3 * d * d + 2 * d * d + 2 * 2 * d * f + 2 * 2 * t * d
    return 3.0 * (cfg.n_layers * layer + 2 * d * n_candidates)


# ---------------------------------------------------------------------------------------------
# the Recommender


class TransformerConfig(Config):
    """Everything needed to build and train the model (saved in model.toml)."""

    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    events: EventsConfig = EventsConfig()  # feedback / context per event (off: the plain model)
    pairwise: PairwiseConfig | None = None  # a fine-tuning on feedback pairs (segue.training.pairwise)
    items: ItemEncoderConfig = ItemEncoderConfig()  # side features of items (off: id embeddings only)

    @model_validator(mode="before")
    @classmethod
    def _loader_window(cls, data: Any) -> Any:
        """The loader's window is model.context_length (the trainer overrides the loader's own), so
        the loader takes it: a saved model.toml, which writes the loader's field, then holds the
        window trained with; one written with the default 50 beside smaller bucket_lengths loads
        again instead of failing LoaderConfig's own check; and a config built in code equals its
        saved copy read back. Instances stay instances (an assignment is not validated again)."""
        if not isinstance(data, dict):
            return data
        model = data.get("model")
        ctx = model.get("context_length") if isinstance(model, dict) else getattr(model, "context_length", None)
        ctx = ModelConfig.model_fields["context_length"].default if ctx is None else ctx
        if not isinstance(ctx, int) or isinstance(ctx, bool) or ctx < 1:
            return data  # model.context_length's own check names it
        trainer = data.get("trainer", {})
        loader = trainer.get("loader", {}) if isinstance(trainer, dict) else getattr(trainer, "loader", None)
        b = loader.get("bucket_lengths") if isinstance(loader, dict) else getattr(loader, "bucket_lengths", None)
        fits = not (isinstance(b, list) and b and isinstance(b[-1], int) and b[-1] < ctx)  # else _consistent names it
        if not isinstance(trainer, dict) or not isinstance(loader, dict):
            return data  # instances: _consistent sets their window
        new = {k: v for k, v in loader.items() if k != "context_length"}
        if fits:
            new["context_length"] = ctx
        return {**data, "trainer": {**trainer, "loader": new}}

    @model_validator(mode="after")
    def _consistent(self) -> TransformerConfig:
        check_sections(self.loss, self.optim)
        buckets = self.trainer.loader.bucket_lengths
        ctx = self.model.context_length
        if self.trainer.loader.context_length != ctx and (buckets is None or buckets[-1] >= ctx):
            # a section built or assigned in code: a copy with the model's window (object.__setattr__:
            # no assignment validation, which would run this validator again)
            loader = self.trainer.loader.model_copy(update={"context_length": ctx})
            object.__setattr__(self, "trainer", self.trainer.model_copy(update={"loader": loader}))
        if buckets is not None and buckets[-1] < self.model.context_length:
            # the loader's window is model.context_length (the loader's own is overridden)
            raise ValueError(
                f"trainer.loader.bucket_lengths: the largest bucket length {buckets[-1]} is below "
                f"model.context_length {self.model.context_length}"
            )
        if self.pairwise is not None and self.pairwise.score != "logit":
            cols = [n for n, _, _ in self.events.targets()]
            if self.pairwise.feedback not in cols:
                raise ValueError(
                    f"pairwise.feedback: '{self.pairwise.feedback}' is not a column of the feedback head "
                    f"(events.predict: {', '.join(cols) or 'none'}), so score '{self.pairwise.score}' cannot read it"
                )
        return self

    def rank(self) -> tuple[str, int, float] | None:
        """(score, feedback column index, mix_init) of a pairwise fine-tuned model, else None."""
        p = self.pairwise
        if p is None or p.score == "logit":
            return None
        return p.score, [n for n, _, _ in self.events.targets()].index(p.feedback), p.mix_init


def check_sections(loss: LossConfig, optim: OptimConfig) -> None:
    """Constraints across config sections (ValueError naming the field)."""
    sparse = loss.kind != "full" and optim.sparse_items != "off"
    if optim.ema_decay is not None and sparse:
        raise ValueError(
            f"optim.ema_decay needs dense item updates: loss kind '{loss.kind}' updates the item "
            "table row-sparsely (set optim.sparse_items = 'off' or loss.kind = 'full')"
        )


def _query(model: SequenceTransformer, inputs: jax.Array, positions: jax.Array, last: jax.Array, events: Any) -> jax.Array:
    """[B, D] query at column `last`: h, or the next-item head's q with events."""
    if events is None:
        h = model.hidden(inputs, positions=positions)  # [B, T, D]
    else:
        h = model.next_query(model.hidden(inputs, positions=positions, events=events), events.get("next_ctx"))
    return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]


def _score_fn(graphdef: Any, state: Any, inputs: jax.Array, positions: jax.Array, last: jax.Array, events: Any = None) -> jax.Array:
    model = nnx.merge(graphdef, state)
    return _query(model, inputs, positions, last, events) @ model.item_emb[...].T


def _query_fn(graphdef: Any, state: Any, inputs: jax.Array, positions: jax.Array, last: jax.Array, events: Any = None) -> jax.Array:
    return _query(nnx.merge(graphdef, state), inputs, positions, last, events)


RANK_CHUNK = 1024  # items scored per step by the feedback head (bounds the [B, chunk, width] hidden layer)


def _rank_fn(graphdef: Any, state: Any, inputs: jax.Array, positions: jax.Array, last: jax.Array, events: Any = None) -> jax.Array:
    """[B, V] ranking scores of every item (SequenceTransformer.rank_score), items in chunks."""
    model = nnx.merge(graphdef, state)
    h = model.hidden(inputs, positions=positions, events=events)
    at = last[:, None, None]
    h = jnp.take_along_axis(h, at, axis=1)[:, 0]  # [B, D]
    nxt = events.get("next_ctx") if events is not None else None
    nxt = None if nxt is None else jnp.take_along_axis(nxt, at, axis=1)[:, 0]
    user = events.get("fold_user") if events is not None else None  # [B, 1 + k]
    table = model.item_emb[...]
    v, b = table.shape[0], h.shape[0]
    n = -(-v // RANK_CHUNK)
    padded = jnp.concatenate([table, jnp.zeros((n * RANK_CHUNK - v, table.shape[1]), table.dtype)])

    tokens = jnp.minimum(jnp.arange(n * RANK_CHUNK), v - 1).reshape(n, RANK_CHUNK)  # the padding repeats the last

    def chunk(et: tuple[jax.Array, jax.Array]) -> jax.Array:  # e [C, D], tok [C] -> [B, C]
        e, tok = et
        shape = (b, e.shape[0])
        c = None if nxt is None else jnp.broadcast_to(nxt[:, None], (*shape, nxt.shape[-1]))
        h_b, e_b = jnp.broadcast_to(h[:, None], (*shape, h.shape[-1])), jnp.broadcast_to(e[None], (*shape, e.shape[-1]))
        u = None if user is None else jnp.broadcast_to(user[:, None], (*shape, user.shape[-1]))
        return model.rank_score(h_b, e_b, c, jnp.broadcast_to(tok[None], shape), u)

    out = jax.lax.map(chunk, (padded.reshape(n, RANK_CHUNK, -1), tokens))  # [n, B, C]
    return jnp.moveaxis(out, 0, 1).reshape(b, -1)[:, :v]


def _feedback_fn(
    graphdef: Any, state: Any, inputs: jax.Array, positions: jax.Array, last: jax.Array, events: Any, cands: jax.Array
) -> jax.Array:
    """[B, M, K] raw feedback-head outputs for candidate tokens cands [B, M] after each history."""
    model = nnx.merge(graphdef, state)
    h = model.hidden(inputs, positions=positions, events=events)
    h = jnp.take_along_axis(h, last[:, None, None], axis=1)  # [B, 1, D]
    e = model.item_emb[...][cands]  # [B, M, D]
    nxt = events.get("next_ctx")
    if nxt is not None:
        nxt = jnp.broadcast_to(jnp.take_along_axis(nxt, last[:, None, None], axis=1), (*cands.shape, nxt.shape[-1]))
    user = events.get("fold_user")  # [B, 1 + k]
    user = None if user is None else jnp.broadcast_to(user[:, None], (*cands.shape, user.shape[-1]))
    return model.predict_feedback(jnp.broadcast_to(h, e.shape), e, nxt, user, cands)


class TransformerRecommender(NeuralRecommender):
    """Next-item scores from the transformer: score(c | history) = <q_last, E[c]>.

    A model trained with feedback / context (config.events) reads the histories' per-event columns
    (by name: ratings, fb_*, ctx_* matched to its training categories); the next event's context is
    the first event of `next_events` when given, else the history's last event's (see
    segue.models.events.history_events). `predict_feedback` reads its feedback head."""

    family = "transformer"
    config_class = TransformerConfig
    config: TransformerConfig
    score_batch = 128  # rows per jitted scoring call (one compiled shape)

    def __init__(self, config: TransformerConfig | None = None, vocab: Any = None) -> None:
        super().__init__(config, vocab)
        self.network: SequenceTransformer | None = None
        # (network, state, {fn: jitted fn with the graphdef bound}) of the last network scored.
        # Splitting the network took 2.7 ms and hashing the graphdef as a static jit argument
        # 0.6 ms per call, against 0.8 ms for the forward pass of one history. The state holds
        # the network's own Variables, so in-place parameter updates are seen; assigning another
        # network re-splits.
        self._compiled: tuple[SequenceTransformer, Any, dict[Any, Any]] | None = None
        # With an items section: the fitted feature vocabularies and arrays, the items added
        # beyond the vocabulary (segue.models.item_encoder.ExtraItems) and the baked network.
        self.item_features: Any = None
        self.extra = ExtraItems()
        self._baked: tuple[Any, int, SequenceTransformer] | None = None

    def build(
        self,
        vocab_size: int,
        seed: int = 0,
        categories: EV.Categories | None = None,
        rating_prior: tuple[float, float] | None = None,
    ) -> SequenceTransformer:
        f = self.item_features
        return SequenceTransformer(
            self.config.model,
            vocab_size,
            nnx.Rngs(seed),
            init_temperature=self.config.loss.init_temperature,
            events=self.config.events,
            categories=categories,
            rating_prior=rating_prior,
            rank=self.config.rank(),
            items=self.config.items,
            item_shapes=f.shapes() if f is not None else (),
            content_dim=f.content_dim if f is not None else 0,
        )

    # --- items beyond ids (config.items) -------------------------------------------------------
    def fit(self, data: Any, **kw: Any) -> TransformerRecommender:
        if self.config.items.enabled:
            self.item_features = fit_features(data.store, data.vocab, self.config.items)
        return super().fit(data, **kw)

    @property
    def extra_item_ids(self) -> list[int]:
        """Store item ids of the tokens past the vocabulary (-1: added from outside the store)."""
        return self.extra.item_ids

    def add_items(self, external_ids: list[str], raw: Any, vectors: np.ndarray | None = None, item_ids: list[int] | None = None) -> np.ndarray:
        """Add items outside the vocabulary, features-only, from their raw features
        (segue.data.item_features.raw_features); returns their tokens (V + ...)."""
        if self.item_features is None:
            raise SegueError("transformer: this model has no item features (train it with an items section)")
        first = self._n_tokens()
        self.extra.add(external_ids, self.item_features.encode_new(raw, vectors), item_ids)
        return np.arange(first, first + len(external_ids))

    def add_store_items(self, store: Any) -> None:
        """Add every item of `store` outside the vocabulary (and not added yet), features-only."""
        if self.item_features is None:
            return
        add_store_items(self, store)

    def with_store_items(self, store: Any) -> TransformerRecommender:
        """A copy that also scores the store's items outside the vocabulary (add_store_items);
        this model is left as it is (the copy shares the weights, not the added items)."""
        if self.item_features is None:
            return self
        twin = copy.copy(self)
        twin.extra = ExtraItems(list(self.extra.external_ids), list(self.extra.item_ids), list(self.extra.parts))
        twin.add_store_items(store)
        return twin

    def base_vocab(self) -> Any:
        """The training vocabulary (tokens 0..V-1), without the added items: `vocab` itself may be
        the extended vocabulary (segue.models.item_encoder.apply_added_items sets it for serving)."""
        vocab = self._check_fitted()
        n = self._n_base()
        if n == len(vocab):
            return vocab
        cached = getattr(self, "_base_cache", None)
        if cached is None or cached[0] is not vocab:
            base = Vocabulary(item_ids=vocab.item_ids[:n], counts=vocab.counts[:n], external_ids=list(vocab.external_ids[:n]),
                              split=vocab.split, min_count=vocab.min_count)
            cached = self._base_cache = (vocab, base)
        return cached[1]

    def extended_vocab(self) -> Any:
        """The training vocabulary with the added items as tokens V.. (count 0), for serving (the
        same whether `vocab` is extended already or not)."""
        return self.extra.vocab(self.base_vocab())

    def _n_base(self) -> int:
        """V, the training vocabulary's size: the item features' arrays are the training tokens'
        (`vocab` may hold the added items too, which must not be counted twice)."""
        vocab = self._check_fitted()
        return len(self.item_features) if self.item_features is not None else len(vocab)

    def _n_tokens(self) -> int:
        """Tokens the model scores: V, then the added items (V + added)."""
        return self._n_base() + len(self.extra)

    # --- scoring -----------------------------------------------------------------------------
    def _net(self) -> SequenceTransformer:
        self._check_fitted()
        if self.network is None:
            raise SegueError("transformer: no network weights (fit() or load() first)")
        if not self.network.has_item_encoder:
            return self.network
        if self._baked is None or self._baked[0] is not self.network or self._baked[1] != len(self.extra):
            feats = self.extra.arrays(self.item_features.arrays())
            self._baked = (self.network, len(self.extra), with_composed_items(self.network, feats))
        return self._baked[2]

    def _batched(
        self,
        fn: Any,
        histories: SequenceArrays,
        rows: np.ndarray | None,
        *,
        next_events: SequenceArrays | None = None,
        cands: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fn's outputs for `rows`, rating mu [n], s [n]) in compiled batches (mu, s: events only)."""
        from segue.data.loader import pad_histories

        net = self._net()
        if self._compiled is None or self._compiled[0] is not net:
            graphdef, state = nnx.split(net)
            jitted = {f: jax.jit(partial(f, graphdef)) for f in (_score_fn, _query_fn, _feedback_fn, _rank_fn)}
            self._compiled = (net, state, jitted)
        _, state, jitted = self._compiled
        run = jitted[fn]
        ev_cfg = self.config.events if net.has_events else None
        categories = net.categories
        fold = self._fold_table(net) if net.has_ridge else None
        rows = np.arange(len(histories)) if rows is None else np.asarray(rows, dtype=np.int64)
        histories, rows, next_events = self._known_tokens(histories, rows, next_events)
        ctx = self.config.model.context_length
        outs, mus, ss = [], [], []
        # One compiled shape per power of two up to score_batch (a single history: batch 1)...
        bs = min(self.score_batch, 1 << max(0, int(len(rows) - 1).bit_length()))
        offsets = np.asarray(histories.offsets, dtype=np.int64)
        for s in range(0, len(rows), bs):
            sel = rows[s : s + bs]
            # ...and per power of two of the longest input up to the context (at least 8). Inputs
            # are left-aligned and attention is causal, so columns past `last` change nothing:
            # a 10-item history runs 16 columns, not 50 (one history: 2.7 -> 1.4 ms measured).
            longest = int(np.minimum(offsets[sel + 1] - offsets[sel] + 1, ctx).max())
            width = min(ctx, max(8, 1 << (longest - 1).bit_length()))
            ev = pad_histories(histories, sel, context_length=ctx, pad_to=width)
            n = len(sel)
            arrays: list[Any] = [ev.inputs, ev.positions, ev.last]
            if ev_cfg is not None:
                feats, mu, sd = EV.history_events(
                    ev_cfg, categories, histories, sel, ctx, width, next_events, net.rating_prior, net.rating_item_bias, fold
                )
                arrays.append(feats)
                mus.append(mu)
                ss.append(sd)
            if cands is not None:
                arrays.append(np.asarray(cands[s : s + bs], dtype=np.int32))
            if n < bs:  # pad to the compiled batch size
                arrays = jax.tree_util.tree_map(lambda a, p=bs - n: np.concatenate([a, np.repeat(a[:1], p, 0)]), arrays)
            outs.append(np.asarray(run(state, *arrays))[:n])
        if not outs:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32)
        mu = np.concatenate(mus) if mus else np.zeros(0, np.float32)
        sd = np.concatenate(ss) if ss else np.zeros(0, np.float32)
        return np.concatenate(outs).astype(np.float32, copy=False), mu, sd

    def _known_tokens(
        self, histories: SequenceArrays, rows: np.ndarray, next_events: SequenceArrays | None
    ) -> tuple[SequenceArrays, np.ndarray, SequenceArrays | None]:
        """The histories `rows` without their tokens outside [0, V + added items): items unknown to
        the model are skipped, as the classic families skip them (history_matrix); the network
        would read such a token as the last row of its table. Unchanged when every token is known."""
        n_tokens = self._n_tokens()
        off = np.asarray(histories.offsets, dtype=np.int64)
        starts, lengths = off[rows], off[rows + 1] - off[rows]
        out_starts = np.cumsum(lengths) - lengths
        idx = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(out_starts - starts, lengths)
        tokens = np.asarray(histories.tokens[idx], dtype=np.int64)
        keep = (tokens >= 0) & (tokens < n_tokens)
        if keep.all():
            return histories, rows, next_events
        kept = np.bincount(np.repeat(np.arange(len(rows)), lengths)[keep], minlength=len(rows))
        known = histories.gather(idx[keep], kept, {"rows": "subset"})
        return known, np.arange(len(rows), dtype=np.int64), None if next_events is None else next_events.take(rows)

    def _fold_table(self, net: SequenceTransformer) -> np.ndarray:
        """net.fold_table(), computed again only when an array it reads was replaced (a [V, D] x
        [D, k] product per request would dominate serving over a large catalogue)."""
        parts = [net.item_emb[...], net.rating_q.kernel[...], net.ridge_log_gain[...]]
        if getattr(net, "ridge_table", None) is not None:
            parts.append(net.ridge_table[...])
        key = tuple(id(a) for a in parts)
        cached = getattr(self, "_fold_cache", None)
        if cached is None or cached[0] != key or cached[1] is not net:
            cached = (key, net, net.fold_table(), parts)  # parts: keeps the ids alive and unique
            self._fold_cache = cached
        return cached[2]

    def score(self, histories: SequenceArrays, rows: np.ndarray | None = None, *, next_events: SequenceArrays | None = None) -> np.ndarray:
        """[B, V] inner products of the last query with every item (a pairwise fine-tuned model:
        its ranking score, SequenceTransformer.rank_score); specials -inf. History tokens outside
        [0, V + added items) are skipped; an empty history scores from <start> alone."""
        fn = _rank_fn if self.config.rank() is not None else _score_fn
        scores = self._batched(fn, histories, rows, next_events=next_events)[0]
        if scores.size:
            scores[:, :N_SPECIAL] = NEG_INF
        else:
            scores = np.zeros((0, self._n_tokens()), np.float32)
        return scores

    def query_embeddings(
        self, histories: SequenceArrays, rows: np.ndarray | None = None, *, next_events: SequenceArrays | None = None
    ) -> np.ndarray:
        """[B, D] query vectors; score(c) = query . item_embeddings()[c] (for ANN serving)."""
        return self._batched(_query_fn, histories, rows, next_events=next_events)[0]

    def item_embeddings(self) -> np.ndarray:
        """[V, D] output vectors of every token (rows 0..3 are special tokens: skip them)."""
        return np.asarray(self._net().item_emb[...])

    @property
    def feedback_targets(self) -> list[str]:
        """The columns the feedback head predicts ('rating' and/or feedback names), [] if none."""
        return [n for n, _, _ in self.config.events.targets()]

    def predict_feedback(
        self,
        histories: SequenceArrays,
        rows: np.ndarray | None,
        tokens: np.ndarray,
        *,
        next_events: SequenceArrays | None = None,
    ) -> dict[str, np.ndarray]:
        """Predicted feedback [B, M] per head column for candidate `tokens` [B, M] after each
        history, on the column's own scale (segue.models.events.to_scale: ratings on the rating
        scale, flags as probabilities, fractions in [0, 1], counts)."""
        net = self._net()
        if not net.has_events or net.feedback_head is None:
            raise SegueError("transformer: this model has no feedback head (events.predict is empty)")
        rows = np.arange(len(histories)) if rows is None else np.asarray(rows, dtype=np.int64)
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or len(tokens) != len(rows):
            raise SegueError(f"predict_feedback: tokens must be [rows, candidates] = [{len(rows)}, M], got {tokens.shape}")
        raw, mu, sd = self._batched(_feedback_fn, histories, rows, next_events=next_events, cands=tokens)
        if not raw.size:
            return {n: np.zeros(tokens.shape, np.float32) for n in self.feedback_targets}
        ev = self.config.events
        bias = net.rating_item_bias
        offset = None if bias is None else EV.bias_of(bias, tokens)
        return {
            name: EV.to_scale(ev, kind, raw[..., i], mu, sd, offset if kind == "rating" else None)
            for i, (name, kind, _) in enumerate(ev.targets())
        }

    def predict(self, histories: SequenceArrays, rows: np.ndarray | None, tokens: np.ndarray, ratings: Any = None) -> np.ndarray:
        """Predicted ratings on the rating scale: [B, M] for candidate `tokens` [B, M], or [P] for
        pairs (rows [P], tokens [P], the RatingPredictor interface: each history runs once for all
        its items); needs a head trained on ratings. `ratings` is not supported (the history's own)."""
        if "rating" not in self.feedback_targets:
            raise SegueError("transformer: this model does not predict ratings (add 'rating' to events.predict)")
        if ratings is not None:
            raise SegueError("transformer: predict() reads the histories' own ratings (ratings= is not supported)")
        tokens = np.asarray(tokens)
        if tokens.ndim == 2:
            return self.predict_feedback(histories, rows, tokens)["rating"]
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        tokens = tokens.astype(np.int64).reshape(-1)
        if rows.shape != tokens.shape:
            raise SegueError(f"predict: rows and tokens must align, got {rows.shape} and {tokens.shape}")
        users, inv = np.unique(rows, return_inverse=True)
        # each pair's column among its user's items: its rank within the user's group
        order = np.argsort(inv, kind="stable")
        starts = np.searchsorted(inv[order], np.arange(len(users)))
        col = np.empty(len(rows), np.int64)
        col[order] = np.arange(len(rows)) - starts[inv[order]]
        grid = np.full((len(users), int(col.max()) + 1 if len(rows) else 1), tokens[0] if len(rows) else 0, np.int64)
        grid[inv, col] = tokens
        out = self.predict_feedback(histories, users, grid)["rating"]
        return out[inv, col] if len(rows) else np.zeros(0, np.float32)

    # --- persistence --------------------------------------------------------------------------
    def _save_state(self, folder: Path) -> None:
        self._net()  # checks
        save_weights(self.network, folder / "weights.npz")
        if self.item_features is not None:
            self.item_features.save(folder)

    def _load_state(self, folder: Path) -> None:
        path = folder / "weights.npz"
        if self.config.items.enabled:
            self.item_features = ItemFeatures.load(folder)
        self.network = load_weights(self.build(len(self.vocab), categories=saved_categories(path)), path)


CATEGORIES_KEY = "__context_categories__"  # weights.npz entry: the training categories as JSON
PRIOR_KEY = "__rating_prior__"  # weights.npz entry: the training ratings' (mean, sd) as JSON
BIAS_KEY = "__rating_item_bias__"  # weights.npz entry: the rating head's item biases (float32 [V])


def _bias_json(bias: np.ndarray | None) -> str:
    return json.dumps(None if bias is None else [float(x) for x in np.asarray(bias, np.float32)])


@lru_cache(maxsize=8)
def _parse_bias(text: str) -> np.ndarray | None:
    v = json.loads(text)
    if v is None:
        return None
    out = np.asarray(v, np.float32)
    out.flags.writeable = False  # shared by every caller of the cache
    return out


def save_weights(net: SequenceTransformer, path: Path) -> None:
    """Parameters as a flat .npz keyed by their path ('blocks/0/qkv/kernel', ...); a network with
    events also stores its training context categories and rating prior (JSON text under
    CATEGORIES_KEY and PRIOR_KEY)."""
    flat = flat_weights(net, nnx.Param)
    if net.has_events:
        flat[CATEGORIES_KEY] = np.asarray(net.categories_json)
        flat[PRIOR_KEY] = np.asarray(net.rating_prior_json)
        if net.rating_item_bias is not None:
            flat[BIAS_KEY] = net.rating_item_bias
    write_weights(flat, path)


def saved_categories(path: Path) -> EV.Categories | None:
    """The context categories a weights file holds (None when it has none, or is missing)."""
    if not path.exists():
        return None
    with np.load(path) as data:
        return json.loads(str(data[CATEGORIES_KEY])) if CATEGORIES_KEY in data else None


def load_weights(net: SequenceTransformer, path: Path) -> SequenceTransformer:
    data = read_weights(net, nnx.Param, path)
    if net.has_events and CATEGORIES_KEY in data:
        net.categories_json = str(data[CATEGORIES_KEY])
    if net.has_events:  # a file written before the prior existed keeps the plain statistics
        net.rating_prior_json = str(data[PRIOR_KEY]) if PRIOR_KEY in data else "null"
        net.item_bias_json = _bias_json(data.get(BIAS_KEY))
    return net


__all__ = [
    "ModelConfig",
    "SequenceTransformer",
    "TransformerConfig",
    "TransformerRecommender",
    "count_flops_per_token",
    "save_weights",
    "load_weights",
]
