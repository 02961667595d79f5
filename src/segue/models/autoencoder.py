"""Profile autoencoder: a denoising autoencoder over a user's set of items and their ratings.

For users whose data has no useful order, only a profile (an anime list, a film diary), as in
Sprout. A profile over the n catalogue items is two vectors: presence x (1 = in the profile) and
hybrid-normalised ratings y (segue.data.ratings; 0 where unrated). The network

    e = [x / ||x||_2, y / ||x||_2]                   (x only when rating_input is off; it
                                                     follows rating_head unless set)
    z = encoder(e)   MLP, swish between layers, linear bottleneck
    z <- z + N(0, noise^2)                           training only
    presence logits  l = head_p(z) [n]               multinomial likelihood (Mult-DAE)
    rating           p = head_r(z) [n]               hybrid-normalised rating of every item

is trained (segue.training.autoencoder_task) to rebuild the whole profile from an input with a
random fraction of its entries dropped. With the rating head off it is Mult-DAE (Liang et al.
2018): presence in, presence out.

Scores (`score_mode`), per item i of a profile u, on the log scale (the ranking of a geometric
mean is that of its log, and log scores take the niche boost as a subtraction):
    presence  log softmax(l)_i
    rating    log q_i,  q_i = (r_i - lo + 1/2) / (hi - lo + 1) in (0, 1), r_i = p_i on the original
              scale of u (segue.data.ratings.denormalise with u's own mean, sd and weight)
    unified   alpha log softmax(l)_i + (1 - alpha) log q_i   (log of the weighted geometric mean)
`score(histories)` is fold-in: a new profile is encoded by one forward pass, no retraining.

Optional wide part (model.wide = "ease"; not Sprout's design): l <- l + a (x @ W) with W the EASE
item-item weights of the training profiles (zero diagonal, L2 wide_l2), fixed. wide_mode:
  joint    a = exp(s_w) learnt with the network, whose presence head's last layer starts at zero
           (training starts from EASE's ranking)
  stacked  the network trains on top of out-of-fold wide logits, a fixed
  score    the network trains alone; a = wide_scale (chosen on validation) joins at scoring
Measured in configs/*autoencoder*.toml: joint and stacked training moved the ranking away from
EASE's; "score" ranks above EASE by a small margin (ml-100k test: paired CI excludes 0; anime:
a tie or a small margin, by the unified exponent). At fold-in the wide logits are the sum of W's
rows of the profile's items (sparse_wide_logits), not the dense [1, n] x [n, n] product: anime
score() 12 ms p50 against 45 ms for the product. It is off by default. The encoder's first layer
is read the same way at fold-in (first_layer: the profile's rows of its [2n, h] kernel), and the
jitted network runs from its output.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from pydantic import Field, model_validator

from segue.config import Config
from segue.data.arrays import SequenceArrays
from segue.data.ratings import (
    NormMode,
    RatingScale,
    UserNorm,
    check_ratings,
    denormalise,
    normalise,
)
from segue.data.vocab import N_SPECIAL
from segue.errors import SegueError
from segue.models.base import NEG_INF
from segue.models.filters import niche_boost
from segue.models.neural import NeuralRecommender, flat_weights, read_weights, write_weights
from segue.models.rating import check_pairs, history_ratings
from segue.models.ridge import ridge_all_but_one, stacked_ridge
from segue.models.train_config import OptimConfig, TrainerConfig

if TYPE_CHECKING:
    import scipy.sparse as sp

ScoreMode = Literal["unified", "presence", "rating"]


class AutoencoderModelConfig(Config):
    hidden: list[int] = [600]  # encoder widths before the bottleneck
    bottleneck: int = Field(200, ge=1)
    decoder_hidden: list[int] = []  # each head's widths between the bottleneck and the output
    input_dropout: float = Field(0.5, ge=0, lt=1)  # share of profile entries hidden from the input in training
    bottleneck_noise: float = Field(0.1, ge=0)  # sd of the Gaussian noise added to z in training
    rating_head: bool = True  # false: presence only (Mult-DAE)
    # Whether the encoder reads the hybrid ratings beside the presence flags; None: as rating_head.
    # false with rating_head = true: the rating head is an auxiliary task of a presence-only input;
    # true with rating_head = false: a Mult-DAE that reads ratings (how much of a difference is
    # the input's, how much the second loss's)
    rating_input: bool | None = None
    normalisation: NormMode = "hybrid"
    tau: float = Field(1.0, gt=0)  # hybrid: w_u = var_u / (var_u + tau), tau in squared rating units
    rating_scale: list[float] | None = None  # [low, high]; None: the training ratings' min and max
    score: ScoreMode = "unified"  # unset: "unified" with the rating head, "presence" without
    alpha: float = Field(0.5, ge=0, le=1)  # unified: exponent of the presence probability
    niche_boost: float = Field(0.0, ge=0)  # b of segue.models.filters.niche_boost (0 = off)

    @property
    def reads_ratings(self) -> bool:
        """Whether the encoder's input holds the ratings beside the presence flags."""
        return self.rating_head if self.rating_input is None else self.rating_input
    # lam of the rating head's fold-in correction at scoring (rating_correction; 0 = off): biased
    # MF's user step on the head's own errors over the profile's rated items, in the head's item
    # space. 0.1 was best or near it on VALID on the anime ratings, the anime lists and ml-100k
    # (bench/autoencoder_rating_probe.py --foldin-lams; configs/*autoencoder*.toml)
    rating_foldin: float = Field(0.1, ge=0)
    # Optional "wide" part (not Sprout's): presence logits += a * (x @ W), W the EASE item-item
    # weights (zero diagonal, L2 wide_l2) of the training profiles, fixed; a = exp(wide_log_scale)
    # is learnt jointly with the network, which so learns a correction to EASE's ranking.
    wide: Literal["none", "ease"] = "none"
    wide_l2: float = Field(250.0, gt=0)
    # "joint": the wide logits enter the training loss with a learnt scale (above); "score": the
    # network trains alone and the wide logits are added at scoring only, a = wide_scale (fixed,
    # chosen on validation): a product of the two models' presence distributions; "stacked": the
    # network trains on top of wide logits that are out-of-fold for each training profile (W
    # fitted without its fold of wide_folds), so it learns what EASE misses on profiles EASE has
    # not seen, as at fold-in, not on EASE's in-sample fit; a is fixed at the least-NLL start
    wide_mode: Literal["joint", "score", "stacked"] = "joint"
    wide_scale: float = Field(1.0, gt=0)
    wide_folds: int = Field(2, ge=2)

    @model_validator(mode="before")
    @classmethod
    def _default_score(cls, data: Any) -> Any:
        # rating_head = false alone gives the Mult-DAE: a presence score, the only one it has
        if isinstance(data, dict) and "score" not in data and data.get("rating_head") is False:
            return {**data, "score": "presence"}
        return data

    @model_validator(mode="after")
    def _check(self) -> AutoencoderModelConfig:
        if self.rating_scale is not None and (len(self.rating_scale) != 2 or not self.rating_scale[1] > self.rating_scale[0]):
            raise ValueError(f"rating_scale must be [low, high] with low < high, got {self.rating_scale}")
        if not self.rating_head and self.score != "presence":
            raise ValueError(f"score '{self.score}' needs the rating head (rating_head = true) or score = 'presence'")
        return self


class AutoencoderLossConfig(Config):
    """How the presence and rating losses combine (segue.training.autoencoder_losses).

    Default "fixed" (1, 1): measured on anime and ml-100k (configs/*autoencoder*.toml), uncertainty
    weighting ranks worse. Its weights settle at exp(-s_t) = 1 / L_t, so the rating loss (~0.3)
    outweighs the presence NLL (~600 nats) about 2000-fold in the shared encoder; with (1, 1) the
    encoder follows presence while Adam, being per-parameter scale-free, still trains the rating
    head at full speed."""

    weighting: Literal["uncertainty", "fixed"] = "fixed"
    presence_weight: float = Field(1.0, ge=0)  # fixed only
    rating_weight: float = Field(1.0, ge=0)  # fixed only
    huber_delta: float = Field(1.0, gt=0)
    # "sum": each profile's presence NLL summed over its items (Mult-DAE); "mean": divided by the
    # profile size: O(log n) nats, on which uncertainty weighting settles near the rating loss
    presence: Literal["sum", "mean"] = "sum"
    # "profile": rebuild every entry of the profile (Mult-DAE); "dropped": only the entries hidden
    # from the input, with the kept ones masked out of the softmax: the task of fold-in scoring
    # (rank the items a profile lacks, its own items excluded), and no reward for copying the
    # input, as EASE's zero diagonal forbids it
    target: Literal["profile", "dropped"] = "profile"
    # lam of a ridge penalty on the rating head: L_rate = huber + lam * sum of its kernels' squared
    # weights. The presence loss decides the code z; Adam trains the rating decoder at full speed on
    # whatever z holds, and unpenalised it over-fits (anime: 1.34 RMSE, worse than the user's mean;
    # bench/autoencoder_rating_probe.py: the best linear decoder of the same z reaches 1.20).
    # 1e-3 was the best of 3e-4 / 1e-3 / 3e-3 / 1e-2 on VALID on the anime lists, and of 1e-3 / 3e-3
    # / 1e-2 on ml-100k, with the ranking unchanged (configs/*autoencoder*.toml); 0 turns it off
    rating_l2: float = Field(1e-3, ge=0)


def _default_optim() -> OptimConfig:
    return OptimConfig(lr=3e-3, warmup_steps=0, schedule="constant", weight_decay=0.0, clip_norm=5.0, plateau_patience=2)


def _default_trainer() -> TrainerConfig:
    return TrainerConfig(max_steps=20_000, max_epochs=200, eval_every=50, metric="ndcg@100", patience=10, checkpoint_every=500)


class AutoencoderConfig(Config):
    """The autoencoder family's settings. Training batches are whole profiles drawn by the task's
    own loader: of `trainer.loader` only batch_size is read (the seed is `trainer.seed`)."""

    model: AutoencoderModelConfig = AutoencoderModelConfig()
    loss: AutoencoderLossConfig = AutoencoderLossConfig()
    optim: OptimConfig = Field(default_factory=_default_optim)
    trainer: TrainerConfig = Field(default_factory=_default_trainer)

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: Any) -> Any:
        # A partial [optim] or [trainer] table keeps the family's defaults for the fields it does
        # not give (left alone, pydantic would fill them from OptimConfig / TrainerConfig: warmup
        # 200 and cosine, metric ndcg@10 and 10,000 steps)
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, default in (("optim", _default_optim()), ("trainer", _default_trainer())):
            if isinstance(data.get(name), dict):
                out[name] = default.model_dump(include=default.model_fields_set) | data[name]
        return out


class Buffer(nnx.Variable):
    """Network state that is not trained (the rating scale, training item counts)."""


SAVED = nnx.Any(nnx.Param, Buffer)  # what a weights file holds


def _mlp(dims: list[int], rngs: nnx.Rngs) -> nnx.List:
    return nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:], strict=True)])


def _run(layers: nnx.List, x: jax.Array) -> jax.Array:
    """Linear layers with swish between them (none after the last)."""
    for i, layer in enumerate(layers):
        x = layer(x)
        if i < len(layers) - 1:
            x = nnx.swish(x)
    return x


class ProfileAutoencoder(nnx.Module):
    def __init__(self, config: AutoencoderModelConfig, n_items: int, rngs: nnx.Rngs, scale: tuple[float, float] = (0.0, 1.0)) -> None:
        self.n_items = n_items
        self.with_ratings = config.reads_ratings
        n_in = n_items * (2 if self.with_ratings else 1)
        self.encoder = _mlp([n_in, *config.hidden, config.bottleneck], rngs)
        self.presence_head = _mlp([config.bottleneck, *config.decoder_hidden, n_items], rngs)
        self.rating_head = _mlp([config.bottleneck, *config.decoder_hidden, n_items], rngs) if config.rating_head else None
        self.log_vars = nnx.Param(jnp.zeros((2,), jnp.float32))  # s_presence, s_rating (uncertainty weighting)
        self.scale = Buffer(jnp.asarray(scale, jnp.float32))
        self.counts = Buffer(jnp.zeros((n_items,), jnp.float32))
        self.wide = Buffer(jnp.zeros((n_items, n_items), jnp.float32)) if config.wide == "ease" else None
        self.wide_log_scale = nnx.Param(jnp.zeros((), jnp.float32)) if config.wide == "ease" else None
        if config.wide == "ease":
            self.wide_log_scale[...] = jnp.log(jnp.float32(config.wide_scale))
        if config.wide == "ease" and config.wide_mode != "score":  # the deep logits start at 0: training begins from EASE's ranking
            last = self.presence_head[-1]
            last.kernel[...] = jnp.zeros_like(last.kernel[...])

    def wide_logits(self, presence: jax.Array) -> jax.Array:
        """a * (x @ W) of full profiles x [B, n] (zeros without a wide part)."""
        if self.wide is None:
            return jnp.zeros_like(presence)
        return jnp.exp(self.wide_log_scale[...]) * (presence @ self.wide[...])

    def encode(self, presence: jax.Array, ratings: jax.Array) -> jax.Array:
        norm = jnp.maximum(jnp.sqrt(jnp.sum(presence * presence, axis=-1, keepdims=True)), 1e-6)
        x = presence / norm
        if self.with_ratings:
            # the same scale as the presence half: unscaled O(1) ratings of an 80-item profile would
            # outweigh its presence entries (1 / sqrt(80) each) tenfold in the first layer
            x = jnp.concatenate([x, ratings / norm], axis=-1)
        return _run(self.encoder, x)

    def presence_logits(self, z: jax.Array) -> jax.Array:
        """The presence head's logits [B, n] of bottleneck codes z (without the wide part)."""
        return _run(self.presence_head, z)

    def decode(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = _run(self.presence_head, z)
        rating = _run(self.rating_head, z) if self.rating_head is not None else jnp.zeros_like(logits)
        return logits, rating

    def __call__(self, presence: jax.Array, ratings: jax.Array, noise_key: jax.Array | None = None, noise: float = 0.0) -> tuple[jax.Array, jax.Array]:
        z = self.encode(presence, ratings)
        if noise_key is not None and noise > 0:
            z = z + noise * jax.random.normal(noise_key, z.shape, z.dtype)
        logits, rating = self.decode(z)
        if self.wide is not None:
            logits = logits + self.wide_logits(presence)
        return logits, rating

    # --- the sparse training path: a profile batch as entries (row b_e, column j_e, values) ---
    def encode_entries(self, row: jax.Array, col: jax.Array, x: jax.Array, y: jax.Array, n_rows: int) -> jax.Array:
        """encode() of the dense batch whose nonzero entries are (row, col) with presence x [E]
        and rating y [E]: the first layer sums the kernel rows of the entries (E << B n gathers
        instead of a [B, 2n] x [2n, h] product), the rest as encode()."""
        norm = jnp.maximum(jnp.sqrt(jax.ops.segment_sum(x * x, row, n_rows)), 1e-6)
        first, rest = self.encoder[0], list(self.encoder)[1:]
        k = first.kernel[...]
        e = x[:, None] * k[col]
        if self.with_ratings:
            e = e + y[:, None] * k[col + self.n_items]
        h = jax.ops.segment_sum(e, row, n_rows) / norm[:, None] + first.bias[...]
        for layer in rest:
            h = layer(nnx.swish(h))
        return h

    def rating_kernel_sq(self) -> jax.Array:
        """sum over the rating head's kernels of their squared weights (0 without the head)."""
        if self.rating_head is None:
            return jnp.zeros((), jnp.float32)
        return sum((jnp.sum(layer.kernel[...] ** 2) for layer in self.rating_head), jnp.zeros((), jnp.float32))

    def rating_at(self, z: jax.Array, row: jax.Array, col: jax.Array) -> jax.Array:
        """The rating head's output at entries (row, col) [E], without the [B, n] product."""
        assert self.rating_head is not None
        layers = list(self.rating_head)
        h = z
        for layer in layers[:-1]:
            h = nnx.swish(layer(h))
        last = layers[-1]
        return jnp.sum(h[row] * last.kernel[...].T[col], axis=-1) + last.bias[...][col]


# ---------------------------------------------------------------------------------------------
# profiles


def profile_entries(histories: SequenceArrays, rows: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The distinct items of each profile: (batch row b, item column j, rating (NaN = unrated),
    item id), one entry per (b, j); a repeated item keeps its last rating. Tokens outside the
    catalogue (special tokens, <unk>) are dropped."""
    rows = np.asarray(rows, dtype=np.int64)
    offsets = np.asarray(histories.offsets, dtype=np.int64)
    starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
    total = int(lengths.sum())
    out_starts = np.cumsum(lengths) - lengths
    idx = np.arange(total, dtype=np.int64) - np.repeat(out_starts - starts, lengths)
    b = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    col = np.asarray(histories.tokens[idx], dtype=np.int64) - N_SPECIAL
    rating = np.asarray(histories.rating[idx], dtype=np.float64) if histories.rating is not None else np.full(total, np.nan)
    item = np.asarray(histories.item_ids[idx], dtype=np.int64)
    keep = (col >= 0) & (col < n_items)
    b, col, rating, item = b[keep], col[keep], rating[keep], item[keep]
    # last occurrence of each (b, col): unique over the reversed order
    code = (b * n_items + col)[::-1]
    _, first = np.unique(code, return_index=True)
    sel = np.sort(len(code) - 1 - first)
    return b[sel], col[sel], rating[sel], item[sel]


class Profiles:
    """Model inputs of a batch of profiles, as entries (the forward pass's sparse form) and as
    dense [B, n] arrays, and each profile's rating normalisation."""

    def __init__(self, histories: SequenceArrays, rows: np.ndarray, n_items: int, scale: RatingScale, config: AutoencoderModelConfig) -> None:
        self.with_ratings = config.reads_ratings
        self.n_items = n_items
        b, col, rating, item = profile_entries(histories, rows, n_items)
        if config.reads_ratings or config.rating_head:
            check_ratings(rating, scale, np.where(item >= 0, item, col + N_SPECIAL), source="profile ratings")
        else:  # a model that reads no ratings ignores them (the server warns), whatever they hold
            rating = np.full(len(rating), np.nan)
        n = len(rows)
        offsets = np.searchsorted(b, np.arange(n + 1))
        h, self.norm = normalise(offsets, rating, scale, mode=config.normalisation, tau=config.tau)
        self.ratings = np.zeros((n, n_items), np.float32)
        rated = ~np.isnan(rating)
        self.ratings[b[rated], col[rated]] = h[rated]
        self.rated = np.zeros((n, n_items), bool)  # entries with a rating (h may be 0 where rated)
        self.rated[b[rated], col[rated]] = True
        self.scale = scale
        # the same inputs as entries (row b, column j, rating input: h, 0 where unrated), sorted by b
        self.entries = (b, col, np.where(rated, h, 0.0).astype(np.float32))

    @functools.cached_property
    def presence(self) -> np.ndarray:
        """Presence flags [B, n] (the dense network's input; the forward pass reads `entries`)."""
        b, col, _ = self.entries
        out = np.zeros(self.ratings.shape, np.float32)
        out[b, col] = 1.0
        return out

    def rows_input(self, start: int, stop: int, n_rows: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """Rows start..stop-1 as sparse [n_rows, ...] matrices: the encoder's input x = [presence,
        ratings] / ||presence|| ([n_rows, 2n], or [n_rows, n] without a rating input), and the
        presence flags [n_rows, n]; rows past the batch are empty (padding)."""
        import scipy.sparse as sp

        b, col, y = self.entries
        lo, hi = np.searchsorted(b, [start, stop])
        b, col, y = b[lo:hi] - start, col[lo:hi], y[lo:hi]
        n_items = self.n_items
        presence = sp.csr_matrix((np.ones(len(b), np.float32), (b, col)), shape=(n_rows, n_items))
        inv = (1.0 / np.sqrt(np.maximum(np.bincount(b, minlength=n_rows), 1))).astype(np.float32)[b]
        if not self.with_ratings:
            return sp.csr_matrix((inv, (b, col)), shape=(n_rows, n_items)), presence
        x = sp.csr_matrix(
            (np.concatenate([inv, y * inv]), (np.concatenate([b, b]), np.concatenate([col, col + n_items]))),
            shape=(n_rows, 2 * n_items),
        )
        return x, presence


# ---------------------------------------------------------------------------------------------


def _forward(graphdef: Any, state: Any, presence: jax.Array, ratings: jax.Array) -> tuple[jax.Array, jax.Array]:
    net = nnx.merge(graphdef, state)
    logits, rating = net(presence, ratings)
    return jax.nn.log_softmax(logits, axis=-1), rating


def _forward_after_first(graphdef: Any, state: Any, first: jax.Array, wide: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """_forward from the encoder's first-layer output [B, h] (x @ K + b, computed outside as a
    sparse product: first_layer), plus the wide logits when there are any."""
    net = nnx.merge(graphdef, state)
    h = first
    for layer in list(net.encoder)[1:]:
        h = layer(nnx.swish(h))
    logits, rating = net.decode(h)
    return jax.nn.log_softmax(logits if wide is None else logits + wide, axis=-1), rating


def first_layer(x: sp.csr_matrix, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The encoder's first layer x @ K + b [B, h] of sparse inputs x [B, 2n]: the sum of K's rows
    of each profile's entries. A profile holds few items (anime: ~80 of 6,936), so this reads
    about 160 of K's 13,872 rows, where the dense product reads all of them: 1.4 against 13 ms
    for explain's 81 rows, 0.1 against 1.2 ms for one profile."""
    return np.asarray(x @ kernel, dtype=np.float32) + bias


def sparse_wide_logits(presence: np.ndarray | sp.spmatrix, weights: np.ndarray, scale: float) -> np.ndarray:
    """scale * (x @ W) [B, n] of presence rows x [B, n] (dense or sparse): the sum of W's rows of
    each profile's items. A profile holds few of the n items (anime: ~80 of 6,936), so this reads
    those rows only, where the dense product reads all of W (192 MB) per call."""
    import scipy.sparse as sp

    out = (presence if sp.issparse(presence) else sp.csr_matrix(presence)) @ weights
    out *= np.float32(scale)
    return np.asarray(out, dtype=np.float32)


def rating_correction(pred: np.ndarray, given: np.ndarray, rated: np.ndarray, q: np.ndarray, lam: float) -> np.ndarray:
    """Per-profile corrections [B, n] of the rating head's hybrid predictions pred [B, n].

    q [n, d + 1]: item k's features q_k = [1, w_k], w_k [d] its column of the head's last layer
    (head_item_features; item-major, so that gathering a profile's rows is contiguous). With
    e_k = given_k - pred_k over the profile's rated entries k (mask rated [B, n]):
        c = (sum_k q_k q_k' + diag(1, lam, ..., lam))^-1 sum_k q_k e_k,  correction_j = c . q_j
    biased MF's ALS user step on the head's errors (a user bias and a user vector in the head's
    own item space), solved per profile at scoring (ridge.stacked_ridge; rows that share one rated
    set, each missing at most one of it, as /v1/explain's leave-one-out rows do, by
    ridge.ridge_all_but_one). A profile without ratings gets 0.

    The same system as biasedmf.ridge_by_group (the ALS steps), not solved by it: that one
    builds every Gram by a sparse product of [k^2]-wide outer products, right for thousands of
    users at k ~ 33, and at scoring (one to 81 profiles, k = 201) it measured 2.5x slower
    (POST /v1/recommend p50 14.8 against 6.0 ms, /v1/explain 220 against 86 ms on anime)."""
    if lam <= 0:
        raise ValueError(f"rating_correction needs lam > 0, got {lam}")
    f = q.shape[1]
    penalty = np.full(f, lam)
    penalty[0] = 1.0  # the user bias: a unit prior on the hybrid scale
    out = np.zeros(pred.shape, np.float64)
    counts = rated.sum(axis=1)
    rows = np.flatnonzero(counts)
    if len(rows) > 1:
        # rows whose rated set is the longest row's set or it less one item (/v1/explain's profile
        # and its leave-one-out copies): one factored system for all (ridge_all_but_one)
        full = rated[rows[np.argmax(counts[rows])]]
        inside = ~(rated[rows] & ~full).any(axis=1)
        shared = rows[inside & (counts[rows] >= full.sum() - 1)]
    else:
        shared = rows[:0]
    if len(shared) > 1:
        u = np.flatnonzero(full)  # [m]
        missing = ~rated[shared][:, u]  # [S, m], at most one True a row
        drop = np.where(missing.any(axis=1), missing.argmax(axis=1), -1)
        e = np.asarray(given[shared][:, u], np.float64) - pred[shared][:, u]
        out[shared] = ridge_all_but_one(q[u], e, drop, penalty) @ q.T
        rows = np.setdiff1d(rows, shared)
    # batched over profiles, in groups of at most ~2M gathered features (padded to the group's
    # longest profile; a padded entry has q = 0 and adds nothing): one stacked solve per group
    start = 0
    while start < len(rows):
        stop, m = start + 1, int(counts[rows[start]])
        while stop < len(rows) and (stop + 1 - start) * max(m, int(counts[rows[stop]])) * f <= 2_000_000:
            m = max(m, int(counts[rows[stop]]))
            stop += 1
        grp = rows[start:stop]
        g_of, k_of = np.nonzero(rated[grp])  # row-major: each profile's items in order
        slot = np.arange(len(g_of)) - np.repeat(np.cumsum(counts[grp]) - counts[grp], counts[grp])
        idx = np.zeros((len(grp), m), np.int64)
        valid = np.zeros((len(grp), m), bool)
        idx[g_of, slot], valid[g_of, slot] = k_of, True
        qk = q[idx] * valid[:, :, None]  # [G, m, d + 1]
        e = np.where(valid, np.take_along_axis(np.asarray(given[grp], np.float64) - pred[grp], idx, axis=1), 0.0)  # [G, m]
        c = stacked_ridge(qk, e, penalty)  # [G, d + 1]
        out[grp] = c @ q.T
        start = stop
    return out


def head_item_features(net: ProfileAutoencoder) -> np.ndarray:
    """[1, w_k] per item: [n, d + 1] float64, a column of ones beside the transposed kernel W [d, n]
    of the rating head's last layer."""
    assert net.rating_head is not None
    w = np.asarray(net.rating_head[-1].kernel[...], np.float64)
    return np.ascontiguousarray(np.concatenate([np.ones((w.shape[1], 1)), w.T], axis=1))


def rating_unit(r: np.ndarray, scale: RatingScale) -> np.ndarray:
    """q = (r - lo + 1/2) / (hi - lo + 1): a rating on the scale mapped into (0, 1)."""
    return (np.asarray(r) - scale.low + 0.5) / (scale.high - scale.low + 1.0)


class AutoencoderRecommender(NeuralRecommender):
    family = "autoencoder"
    config_class = AutoencoderConfig
    config: AutoencoderConfig
    score_batch = 256
    profile_set = True  # profile_entries: a repeated item keeps its last rating

    def __init__(self, config: AutoencoderConfig | None = None, vocab: Any = None) -> None:
        super().__init__(config, vocab)
        self.network: ProfileAutoencoder | None = None
        self._compiled: tuple[ProfileAutoencoder, Any, Any, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, float] | None] | None = None
        self._items: tuple[ProfileAutoencoder, np.ndarray] | None = None

    def build(self, n_items: int, seed: int = 0, scale: tuple[float, float] = (0.0, 1.0)) -> ProfileAutoencoder:
        return ProfileAutoencoder(self.config.model, n_items, nnx.Rngs(seed), scale=scale)

    def _net(self) -> ProfileAutoencoder:
        self._check_fitted()
        if self.network is None:
            raise SegueError("autoencoder: no network weights (fit() or load() first)")
        return self.network

    @property
    def scale(self) -> RatingScale:
        lo, hi = (float(x) for x in np.asarray(self._net().scale[...]))
        return RatingScale(lo, hi)

    def item_counts(self) -> np.ndarray:
        """Training events per item column [n_items] (for the niche boost)."""
        return np.asarray(self._net().counts[...], dtype=np.float64)

    def _head_items(self, net: ProfileAutoencoder) -> np.ndarray:
        """head_item_features of the network (cached per network: 11 MB on anime, built once)."""
        if self._items is None or self._items[0] is not net:
            self._items = (net, head_item_features(net))
        return self._items[1]

    def forward(self, histories: SequenceArrays, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, UserNorm]:
        """(log presence probabilities [B, n], predicted hybrid ratings [B, n], each profile's UserNorm).
        The ratings include the fold-in correction (model.rating_foldin > 0: rating_correction)."""
        net = self._net()
        if self._compiled is None or self._compiled[0] is not net:
            graphdef, state = nnx.split(net)
            # The first layer and the wide logits read only the profile's rows of their weights
            # (first_layer, sparse_wide_logits); the network runs from the first layer's output.
            first = (np.asarray(net.encoder[0].kernel[...], np.float32), np.asarray(net.encoder[0].bias[...], np.float32))
            wide = None
            if net.wide is not None:
                wide = (np.asarray(net.wide[...], dtype=np.float32), float(np.exp(np.asarray(net.wide_log_scale[...]))))
            self._compiled = (net, state, jax.jit(partial(_forward_after_first, graphdef)), first, wide)
        _, state, run, first, wide = self._compiled
        rows = np.arange(len(histories)) if rows is None else np.asarray(rows, dtype=np.int64)
        prof = Profiles(histories, rows, net.n_items, self.scale, self.config.model)
        lam = self.config.model.rating_foldin
        # one compiled shape per power of two up to score_batch
        bs = min(self.score_batch, 1 << max(0, int(len(rows) - 1).bit_length()))
        logp, rating = [], []
        for s in range(0, len(rows), bs):
            n = min(bs, len(rows) - s)
            x, presence = prof.rows_input(s, s + n, bs)  # rows past n are padding
            a, b = run(state, first_layer(x, *first), None if wide is None else sparse_wide_logits(presence, *wide))
            logp.append(np.asarray(a)[:n])
            rating.append(np.asarray(b)[:n])
            if lam > 0 and net.rating_head is not None:
                sl = slice(s, s + n)
                fix = rating_correction(rating[-1], prof.ratings[sl], prof.rated[sl], self._head_items(net), lam)
                rating[-1] = (rating[-1] + fix).astype(np.float32)
        if not logp:
            empty = np.zeros((0, net.n_items), np.float32)
            return empty, empty, prof.norm
        return np.concatenate(logp), np.concatenate(rating), prof.norm

    def item_scores(self, logp: np.ndarray, rating: np.ndarray, norm: UserNorm, mode: ScoreMode | None = None) -> np.ndarray:
        """Item-space log scores [B, n] of the forward pass (see the module docstring)."""
        mode = mode or self.config.model.score
        alpha = self.config.model.alpha
        if mode == "presence" or (mode == "unified" and alpha == 1.0):
            s = logp
        else:
            scale = self.scale
            log_q = np.log(rating_unit(denormalise(rating, norm, scale), scale)).astype(np.float32)
            s = log_q if mode == "rating" else alpha * logp + (1.0 - alpha) * log_q
        if self.config.model.niche_boost > 0:
            s = niche_boost(s, self.item_counts(), self.config.model.niche_boost)
        return np.asarray(s, dtype=np.float32)

    def score(self, histories: SequenceArrays, rows: np.ndarray | None = None, mode: ScoreMode | None = None) -> np.ndarray:
        """[B, V] log scores (fold-in: one forward pass per profile); special tokens -inf."""
        logp, rating, norm = self.forward(histories, rows)
        out = np.empty((logp.shape[0], logp.shape[1] + N_SPECIAL), np.float32)
        out[:, :N_SPECIAL] = NEG_INF
        out[:, N_SPECIAL:] = self.item_scores(logp, rating, norm, mode)
        return out

    def predict(
        self,
        histories: SequenceArrays,
        rows: np.ndarray | None,
        tokens: np.ndarray,
        ratings: np.ndarray | None = None,
    ) -> np.ndarray:
        """Predicted ratings float32 on the original scale (a token outside the catalogue gets the
        profile's neutral rating, hybrid 0).

        Pairs, as segue.models.rating.RatingPredictor: rows [P] and tokens [P] give [P].
        A grid: tokens [B, k] for the histories `rows` [B] (all rows if None) give [B, k].
        `ratings` [n_events], if given, replaces the histories' rating column."""
        if not self.config.model.rating_head:
            raise SegueError("autoencoder: this model has no rating head (model.rating_head = false): it cannot predict ratings")
        if ratings is not None:
            histories = replace(histories, rating=history_ratings(histories, ratings))
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim == 1:
            pair_rows, pair_tokens = check_pairs(histories, np.asarray(rows), tokens)
            uniq, inv = np.unique(pair_rows, return_inverse=True)
            _, rating, norm = self.forward(histories, uniq)
            return self._ratings_of(rating, norm, inv, pair_tokens)
        _, rating, norm = self.forward(histories, rows)
        b = np.repeat(np.arange(len(tokens)), tokens.shape[1])
        return self._ratings_of(rating, norm, b, tokens.reshape(-1)).reshape(tokens.shape)

    def _ratings_of(self, rating: np.ndarray, norm: UserNorm, b: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Original-scale ratings of (profile b[p], token tokens[p]) from the rating head's output."""
        col = tokens - N_SPECIAL
        ok = (col >= 0) & (col < rating.shape[1])
        # a token outside the catalogue (<unk>, special) gets the profile's neutral rating (hybrid
        # 0 on its own scale), as RatingPredictor asks: every pair has a prediction
        h = np.where(ok, rating[b, np.where(ok, col, 0)], 0.0)
        return denormalise(h, norm, self.scale, rows=b).astype(np.float32)

    def rating_range(self) -> tuple[float, float]:
        """The rating scale (low, high) read from training (or set by model.rating_scale)."""
        if not self.config.model.rating_head:
            raise SegueError("autoencoder: this model has no rating head: it reads no ratings")
        return self.scale.low, self.scale.high

    # --- persistence --------------------------------------------------------------------------
    def _save_state(self, folder: Path) -> None:
        save_weights(self._net(), folder / "weights.npz")

    def _load_state(self, folder: Path) -> None:
        self.network = load_weights(self.build(len(self.vocab) - N_SPECIAL), folder / "weights.npz")


def save_weights(net: ProfileAutoencoder, path: Path) -> None:
    """Parameters and buffers as a flat .npz keyed by their path ('encoder/0/kernel', 'scale', ...)."""
    write_weights(flat_weights(net, SAVED), path)


def load_weights(net: ProfileAutoencoder, path: Path) -> ProfileAutoencoder:
    read_weights(net, SAVED, path)
    return net


__all__ = [
    "AutoencoderConfig",
    "AutoencoderLossConfig",
    "AutoencoderModelConfig",
    "AutoencoderRecommender",
    "ProfileAutoencoder",
    "Profiles",
    "save_weights",
    "load_weights",
]
