"""The profile autoencoder's training program (a `TrainTask`): profile batches, a dense jitted
denoising step, and full-ranking validation on the split's VALID part.

Batching: the task's own `ProfileLoader`, not the sequence loader. Each training row with at
least one item is a profile; every epoch is a seeded permutation of them (seed = trainer.seed,
epoch e uses seed + e), cut into batches of trainer.loader.batch_size profiles; the last batch is
padded with zero-weight rows, so one shape is compiled. Its state (epoch, batch index) is
checkpointed, so a resumed run sees the same batches. Of `trainer.loader` only batch_size is read.

A batch is the profiles' entries (row, column, hybrid rating), padded to a bucketed length; the
step never builds [B, n] inputs: the first layer sums the kernel rows of the kept entries
(ProfileAutoencoder.encode_entries) and the rating head is read at the rated entries only
(rating_at); the presence head's [B, n] logits are needed for the softmax. Same numbers as the
dense form (tests/test_autoencoder_sparse.py); bench/autoencoder_step.py times both.

Step t (key_t = fold_in(key, t)):
    keep ~ Bernoulli(1 - input_dropout) per entry;  input = (x * keep, y * keep)
    logits, p = network(input, noise on z)
    L_pres = multinomial_nll(logits, x) (loss.presence = "mean": per profile entry)
    L_rate = masked_huber(p, y, rated)   (whole profile)  [+ rating_l2 * sum ||W||^2 of the rating head's kernels]
    loss.target = "dropped": both over the dropped entries only, the kept ones out of the softmax
    L = sum_t exp(-s_t) L_t + s_t  (uncertainty)  or  w_p L_pres + w_r L_rate  (fixed)
AdamW (segue.training.optim: Adam + decoupled decay of kernels, lr schedule, global-norm clip);
a non-finite step leaves the state unchanged. Validation: each VALID user's history (TRAIN and
VALID_INPUT parts) is folded in and scored; items of the history are excluded; NDCG@100 and
Recall@20/50 (recall normalised by min(k, |targets|)) against the VALID items, and the RMSE of
the predicted ratings of the rated VALID items on the original scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from segue.data.arrays import SequenceArrays, SplitData, compile_split
from segue.data.ratings import RatingScale, check_ratings, normalise
from segue.data.splits import Part
from segue.data.vocab import N_SPECIAL
from segue.errors import ConfigError
from segue.models.autoencoder import (
    AutoencoderConfig,
    AutoencoderRecommender,
    Buffer,
    ProfileAutoencoder,
    load_weights,
    profile_entries,
    save_weights,
)
from segue.models.base import top_k
from segue.training import autoencoder_losses as AL
from segue.training import optim as O
from segue.training.task import total_steps

EVAL_KS = (10, 20, 50, 100)  # NDCG and Recall at each (config files choose ndcg@100)


def training_profiles(data: SplitData, fit_on: str) -> SequenceArrays:
    """The profiles trained on: the TRAIN part, or TRAIN with the validation users' whole profiles."""
    if fit_on == "train":
        return data.train
    return compile_split(data.store, data.split, (Part.TRAIN, Part.VALID_INPUT, Part.VALID), vocab=data.vocab)


def resolve_scale(config: AutoencoderConfig, arrays: SequenceArrays) -> RatingScale:
    """The configured rating scale, else the training ratings' min and max; (0, 1) without ratings."""
    ratings = arrays.rating
    has = ratings is not None and bool(np.isfinite(np.asarray(ratings)).any())
    if config.model.rating_scale is not None:
        scale = RatingScale(*config.model.rating_scale)
    elif has:
        r = np.asarray(ratings)
        scale = RatingScale(float(np.nanmin(r)), float(np.nanmax(r)))
        if not scale.high > scale.low:
            raise ConfigError(f"model.rating_scale: every training rating is {scale.low:g}; set the scale, e.g. rating_scale = [1, 10]")
    else:
        scale = RatingScale(0.0, 1.0)
    if config.model.rating_head and not has:
        raise ConfigError("model.rating_head is on but the split's training part has no ratings (set rating_head = false: Mult-DAE)")
    if config.model.rating_input and not has:
        raise ConfigError("model.rating_input is on but the split's training part has no ratings (set rating_input = false)")
    return scale


class ProfileLoader:
    """Endless, checkpointable batches of whole profiles (see the module docstring)."""

    def __init__(self, offsets: np.ndarray, cols: np.ndarray, values: np.ndarray, n_items: int, batch_size: int, seed: int) -> None:
        self.offsets, self.cols, self.values = offsets, cols, values  # values: hybrid scores, NaN = unrated
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.n = len(offsets) - 1
        self.wide: np.ndarray | None = None  # [n, n_items] wide scores x_u @ W of each profile, if any
        self.epoch, self.index = 0, 0
        self._perm: np.ndarray | None = None

    @property
    def batches_per_epoch(self) -> int:
        return max(1, math.ceil(self.n / self.batch_size))

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index}

    def set_state(self, state: dict[str, Any]) -> None:
        self.epoch, self.index, self._perm = int(state["epoch"]), int(state["index"]), None

    def __iter__(self) -> ProfileLoader:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index, self._perm = self.epoch + 1, 0, None
        if self._perm is None:
            self._perm = np.random.default_rng(self.seed + self.epoch).permutation(self.n)
        sel = self._perm[self.index * self.batch_size : (self.index + 1) * self.batch_size]
        self.index += 1
        return self.batch(sel)

    def _entries(self, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        starts, stops = self.offsets[sel], self.offsets[sel + 1]
        lengths = stops - starts
        idx = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths - starts, lengths)
        return np.repeat(np.arange(len(sel)), lengths), self.cols[idx], self.values[idx]

    def batch(self, sel: np.ndarray) -> dict[str, np.ndarray]:
        """The profiles `sel` as entries, padded to a bucketed capacity (few compiled shapes):
        row, col [E] int32, value [E] (hybrid rating, 0 = unrated), rated and valid [E] (0/1),
        weights [batch_size] (0 = padding row), and `wide` [batch_size, n] when wide scores are set."""
        b, cols, vals = self._entries(sel)
        nnz = len(b)
        grain = 1 << max(8, nnz.bit_length() - 3)
        cap = max(grain, -(-nnz // grain) * grain)
        out = {
            "row": np.zeros(cap, np.int32),
            "col": np.zeros(cap, np.int32),
            "value": np.zeros(cap, np.float32),
            "rated": np.zeros(cap, np.float32),
            "valid": np.zeros(cap, np.float32),
            "weights": np.zeros(self.batch_size, np.float32),
        }
        ok = ~np.isnan(vals)
        out["row"][:nnz], out["col"][:nnz], out["valid"][:nnz] = b, cols, 1.0
        out["value"][:nnz] = np.where(ok, vals, 0.0)
        out["rated"][:nnz] = ok
        out["weights"][: len(sel)] = 1.0
        if self.wide is not None:
            w = np.zeros((self.batch_size, self.n_items), np.float32)
            w[: len(sel)] = self.wide[sel]
            out["wide"] = w
        return out

    def dense_batch(self, sel: np.ndarray) -> dict[str, np.ndarray]:
        """The profiles `sel` as dense [batch_size, n] presence, ratings and rated arrays, and weights."""
        bs, n = self.batch_size, self.n_items
        b, cols, vals = self._entries(sel)
        presence = np.zeros((bs, n), np.float32)
        ratings = np.zeros((bs, n), np.float32)
        rated = np.zeros((bs, n), np.float32)
        presence[b, cols] = 1.0
        ok = ~np.isnan(vals)
        ratings[b[ok], cols[ok]] = vals[ok]
        rated[b[ok], cols[ok]] = 1.0
        weights = np.zeros(bs, np.float32)
        weights[: len(sel)] = 1.0
        return {"presence": presence, "ratings": ratings, "rated": rated, "weights": weights}


def entry_namer(data: SplitData, rows: np.ndarray, b: np.ndarray, item: np.ndarray) -> Callable[[int], str]:
    """describe(i) for check_ratings: profile entry i (from profile_entries over `rows`) as the
    store spells it, user (sequence key) and item."""

    def describe(i: int) -> str:
        con = data.store.con
        user = con.execute("SELECT external_id FROM sequences WHERE seq_id = ?", [int(rows[b[i]])]).fetchone()
        got = con.execute("SELECT external_id FROM items WHERE item_id = ?", [int(item[i])]).fetchone()
        return f"user '{user[0] if user else rows[b[i]]}', item '{got[0] if got else item[i]}'"

    return describe


class AutoencoderTask:
    """Trains a ProfileAutoencoder on the split's training profiles, validating on VALID."""

    unit = "profiles"

    def __init__(self, config: AutoencoderConfig, data: SplitData) -> None:
        self.config = config
        self.trainer = tc = config.trainer
        self.optim = config.optim
        self.vocab = data.vocab
        self.n_items = len(data.vocab) - N_SPECIAL
        arrays = training_profiles(data, tc.fit_on)
        self.scale = resolve_scale(config, arrays)
        rows = arrays.nonempty()
        b, cols, rating, item = profile_entries(arrays, rows, self.n_items)
        check_ratings(rating, self.scale, item, source=f"store {data.store.path}, split '{data.split}' training part", describe=entry_namer(data, rows, b, item))
        offsets = np.searchsorted(b, np.arange(len(rows) + 1))
        values, _ = normalise(offsets, rating, self.scale, mode=config.model.normalisation, tau=config.model.tau)
        self.counts = np.bincount(cols, minlength=self.n_items).astype(np.float32)
        self.loader = ProfileLoader(offsets, cols, values, self.n_items, tc.loader.batch_size, tc.seed)
        self.wide_weights: np.ndarray | None = None
        if config.model.wide == "ease":
            self.wide_weights, wide_scores = wide_part(offsets, cols, self.n_items, config.model.wide_l2)
            if config.model.wide_mode == "joint":  # only joint training reads the profiles' wide scores
                self.loader.wide = wide_scores
            elif config.model.wide_mode == "stacked":
                self.loader.wide = out_of_fold_wide(offsets, cols, self.n_items, config.model.wide_l2, config.model.wide_folds, tc.seed)
        self.total_steps, self.limit = total_steps(tc, self.loader.batches_per_epoch)
        self.graphdef: Any = None
        self._step_fn: Any = None
        self.vset = self._validation_set(data) if tc.fit_on == "train" else None
        if self.vset is not None:  # checked now, not at the first validation after the run folder is written
            hist, _, vrows = self.vset
            vb, _, vrating, vitem = profile_entries(hist, vrows, self.n_items)
            check_ratings(vrating, self.scale, vitem, source=f"store {data.store.path}, split '{data.split}' validation input", describe=entry_namer(data, vrows, vb, vitem))

    def _validation_set(self, data: SplitData) -> tuple[SequenceArrays, SequenceArrays, np.ndarray] | None:
        try:
            hist, tgt = data.history(Part.VALID), data.targets(Part.VALID)
        except Exception:  # a split without a validation part: nothing to validate on
            return None
        rows = np.intersect1d(tgt.nonempty(), hist.nonempty())
        if len(rows) == 0:
            return None
        if len(rows) > self.trainer.eval_max_users:
            rows = np.sort(np.random.default_rng(self.trainer.seed).choice(rows, self.trainer.eval_max_users, replace=False))
        return hist, tgt, rows

    # --- state and step -----------------------------------------------------------------------
    def init_state(self) -> dict[str, Any]:
        net = ProfileAutoencoder(self.config.model, self.n_items, nnx.Rngs(self.trainer.seed), scale=(self.scale.low, self.scale.high))
        net.counts[...] = jnp.asarray(self.counts)
        first = np.arange(min(self.loader.n, self.loader.batch_size))
        if self.wide_weights is not None:
            net.wide[...] = jnp.asarray(self.wide_weights)
        if self.loader.wide is not None:  # joint: learnt from here; stacked: fixed here
            net.wide_log_scale[...] = jnp.log(initial_wide_scale(self.loader.dense_batch(first)["presence"], self.loader.wide[first]))
        init_log_vars(net, self.loader.dense_batch(first), self.config)
        self.graphdef, params, buffers = nnx.split(net, nnx.Param, Buffer)
        tx = O.dense_transform(self.optim, params)
        self._step_fn = make_train_step(self.config, self.graphdef, self.total_steps)
        return {
            "params": params,
            "buffers": buffers,
            "opt": tx.init(params),
            "step": jnp.zeros((), jnp.int32),
            "key": jax.random.key_data(jax.random.key(self.trainer.seed + 1)),
        }

    def train_step(self, state: dict[str, Any], batch: dict[str, Any], lr_scale: jax.Array) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        return self._step_fn(state, batch, jnp.float32(lr_scale))

    # --- validation ---------------------------------------------------------------------------
    def recommender(self, network: ProfileAutoencoder) -> AutoencoderRecommender:
        rec = AutoencoderRecommender(self.config, self.vocab)
        rec.network = network
        return rec

    @property
    def validation_metrics(self) -> list[str] | None:
        """The names validate() reports (validation_metrics below), None without validation."""
        if self.vset is None:
            return None
        return [f"{m}@{k}" for k in EVAL_KS for m in ("ndcg", "recall")] + (["rmse"] if self.config.model.rating_head else [])

    def validate(self, state: dict[str, Any]) -> dict[str, float] | None:
        if self.vset is None:
            return None
        hist, tgt, rows = self.vset
        return validation_metrics(self.recommender(self.network(state)), hist, tgt, rows, self.trainer.eval_batch_size)

    def network(self, state: dict[str, Any], average: bool = False) -> ProfileAutoencoder:
        """The network of a state (no moving average is kept: `average` changes nothing)."""
        return nnx.merge(self.graphdef, state["params"], state["buffers"])

    def save_weights(self, network: ProfileAutoencoder, path: Path) -> None:
        save_weights(network, path)

    def load_weights(self, network: ProfileAutoencoder, path: Path) -> ProfileAutoencoder:
        return load_weights(network, path)


def init_log_vars(net: ProfileAutoencoder, batch: dict[str, np.ndarray], config: AutoencoderConfig) -> None:
    """s_t <- log L_t of the untrained network on one batch (no dropout or noise): the minimiser of
    exp(-s) L + s for that L. From s = 0 Adam would walk s for thousands of steps (the presence
    NLL starts near |profile| log n, ~600 nats on anime) before the weighting is balanced."""
    if config.loss.weighting != "uncertainty":
        return
    w = jnp.asarray(batch["weights"])
    logits, pred = net(jnp.asarray(batch["presence"]), jnp.asarray(batch["ratings"]))
    l_pres = AL.multinomial_nll(logits, jnp.asarray(batch["presence"]), w, config.loss.presence == "mean")
    l_rate = AL.masked_huber(pred, jnp.asarray(batch["ratings"]), jnp.asarray(batch["rated"]), w, config.loss.huber_delta) if config.model.rating_head else 1.0
    if config.model.rating_head and config.loss.rating_l2 > 0:
        l_rate = l_rate + config.loss.rating_l2 * net.rating_kernel_sq()
    net.log_vars[...] = jnp.log(jnp.maximum(jnp.stack([l_pres, jnp.asarray(l_rate, jnp.float32)]), 1e-3))


def presence_csr(offsets: np.ndarray, cols: np.ndarray, n_items: int) -> Any:
    """The profiles' presence x [n_profiles, n] as a scipy CSR matrix (float32 ones)."""
    import scipy.sparse as sp

    n_rows = len(offsets) - 1
    rows = np.repeat(np.arange(n_rows), np.diff(offsets))
    return sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(n_rows, n_items))


def wide_part(offsets: np.ndarray, cols: np.ndarray, n_items: int, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """EASE's item-item weights W [n, n] (zero diagonal, L2 `l2`) of the training profiles, and
    each profile's wide score x_u @ W [n_profiles, n] (segue.models.ease.ease_weights)."""
    from segue.models.ease import ease_weights

    x = presence_csr(offsets, cols, n_items)
    w = ease_weights(x, l2).astype(np.float32, copy=False)
    return w, np.asarray(x @ w, dtype=np.float32)


def out_of_fold_wide(offsets: np.ndarray, cols: np.ndarray, n_items: int, l2: float, folds: int, seed: int) -> np.ndarray:
    """Each profile's wide scores x_u @ W_f [n_profiles, n], W_f EASE's weights fitted on the
    profiles outside u's fold f (a seeded split into `folds` parts)."""
    from segue.models.ease import ease_weights

    x = presence_csr(offsets, cols, n_items)
    fold = np.random.default_rng(seed).permutation(x.shape[0]) % folds
    out = np.zeros(x.shape, np.float32)
    for f in range(folds):
        w = ease_weights(x[fold != f], l2).astype(np.float32, copy=False)
        mine = np.flatnonzero(fold == f)
        out[mine] = x[mine] @ w
    return out


def initial_wide_scale(presence: np.ndarray, wide: np.ndarray) -> float:
    """The a in [0.5, 200] (log grid) whose softmax(a * wide) has the least multinomial NLL of the
    batch: where the wide logits start, so the learnt log a need not walk there from 0."""
    grid = np.geomspace(0.5, 200.0, 25)
    w = wide.astype(np.float64)
    nll = []
    for a in grid:
        lg = a * w
        m = lg.max(axis=1, keepdims=True)
        logp = lg - m - np.log(np.exp(lg - m).sum(axis=1, keepdims=True))
        nll.append(-(presence * logp).sum())
    return float(grid[int(np.argmin(nll))])


def make_train_step(config: AutoencoderConfig, graphdef: Any, n_total: int) -> Any:
    """step(state, batch, lr_scale) -> (state, metrics), batch as ProfileLoader.batch; see the module docstring."""
    mc, lc, oc = config.model, config.loss, config.optim
    per_entry = lc.presence == "mean"
    dropped = lc.target == "dropped"

    def step(state: dict[str, Any], batch: dict[str, jax.Array], lr_scale: jax.Array):
        params, buffers = state["params"], state["buffers"]
        tx = O.dense_transform(oc, params)
        t = state["step"]
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), t)
        k_drop, k_noise = jax.random.split(key)
        row, col, valid, weights = batch["row"], batch["col"], batch["valid"], batch["weights"]
        n_rows = weights.shape[0]
        keep = jax.random.bernoulli(k_drop, 1.0 - mc.input_dropout, valid.shape).astype(valid.dtype)
        x_in = valid * keep
        y_in = batch["value"] * x_in
        rated = batch["rated"] * valid
        target = valid * (1.0 - keep) if dropped else valid  # the entries the losses read

        def loss_fn(p: nnx.State) -> tuple[jax.Array, jax.Array]:
            net = nnx.merge(graphdef, p, buffers)
            z = net.encode_entries(row, col, x_in, y_in, n_rows)
            if mc.bottleneck_noise > 0:
                z = z + mc.bottleneck_noise * jax.random.normal(k_noise, z.shape, z.dtype)
            logits = net.presence_logits(z)
            if net.wide is not None and mc.wide_mode == "joint":
                logits = logits + jnp.exp(net.wide_log_scale[...]) * batch["wide"]
            elif net.wide is not None and mc.wide_mode == "stacked":  # a fixed at its starting value
                logits = logits + jnp.exp(jax.lax.stop_gradient(net.wide_log_scale[...])) * batch["wide"]
            if dropped:  # the kept entries leave the softmax (fold-in scoring excludes them)
                l_pres = AL.held_out_nll_entries(logits, row, col, x_in, target, weights, per_entry)
            else:
                logp = jax.nn.log_softmax(logits, axis=-1)
                l_pres = AL.multinomial_nll_entries(logp[row, col], row, valid, weights, per_entry)
            if mc.rating_head:
                pred = net.rating_at(z, row, col)
                l_rate = AL.masked_huber_entries(pred, batch["value"], rated * target, lc.huber_delta)
                if lc.rating_l2 > 0:
                    l_rate = l_rate + lc.rating_l2 * net.rating_kernel_sq()
                losses = jnp.stack([l_pres, l_rate])
            else:
                losses = l_pres[None]
            s = net.log_vars[...][: losses.shape[0]]
            if lc.weighting == "uncertainty":
                total = AL.uncertainty_weighted(losses, s)
            else:
                w = jnp.asarray([lc.presence_weight, lc.rating_weight][: losses.shape[0]], jnp.float32)
                total = AL.fixed_weighted(losses, w)
            return total, losses

        (loss, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        norm = O.global_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(norm)
        scale = O.clip_scale(norm, oc.clip_norm)
        grads = jax.tree_util.tree_map(lambda g: g * scale, grads)
        lr = O.lr_at(oc, t, n_total) * lr_scale
        updates, opt = tx.update(grads, state["opt"], params)
        new_params = optax.apply_updates(params, jax.tree_util.tree_map(lambda u: -lr * u, updates))

        def keep_if_ok(new: Any, old: Any) -> Any:
            return jax.tree_util.tree_map(lambda a, c: jnp.where(ok, a, c), new, old)

        new = {
            "params": keep_if_ok(new_params, params),
            "buffers": buffers,
            "opt": keep_if_ok(opt, state["opt"]),
            "step": t + 1,
            "key": state["key"],
        }
        metrics = {"loss": loss, "grad_norm": norm, "skipped": ~ok, "lr": lr, "count": jnp.sum(weights), "loss_presence": losses[0]}
        if mc.rating_head:
            metrics["loss_rating"] = losses[1]
        return new, metrics

    return jax.jit(step, donate_argnums=(0,))


def validation_metrics(rec: AutoencoderRecommender, hist: SequenceArrays, tgt: SequenceArrays, rows: np.ndarray, batch_size: int = 256) -> dict[str, float]:
    """NDCG and Recall at EVAL_KS (recall normalised by min(k, |targets|)) and rating RMSE on `rows`.

    Ranking: full catalogue, history items excluded; targets are the row's distinct VALID items
    (an <unk> target counts in |targets| but cannot be hit)."""
    k_max = max(EVAL_KS)
    sums = {f"{m}@{k}": 0.0 for k in EVAL_KS for m in ("ndcg", "recall")}
    sq, n_rated = 0.0, 0
    disc = 1.0 / np.log2(np.arange(2, k_max + 2))
    for s in range(0, len(rows), batch_size):
        sel = rows[s : s + batch_size]
        logp, rating, norm = rec.forward(hist, sel)
        scores = np.empty((len(sel), logp.shape[1] + N_SPECIAL), np.float32)
        scores[:, N_SPECIAL:] = rec.item_scores(logp, rating, norm)
        ranked, _ = top_k(scores, k_max, hist, sel)
        for i, r in enumerate(sel):
            targets = np.unique(np.asarray(tgt.row(r)))
            hits = np.zeros(k_max, bool)  # a catalogue smaller than k_max leaves misses at the end
            hits[: ranked.shape[1]] = np.isin(ranked[i], targets[targets >= N_SPECIAL]) & (ranked[i] >= 0)
            n_rel = len(targets)
            for k in EVAL_KS:
                sums[f"ndcg@{k}"] += float(hits[:k] @ disc[:k]) / float(disc[: min(k, n_rel)].sum())
                sums[f"recall@{k}"] += float(hits[:k].sum()) / min(k, n_rel)
        if rec.config.model.rating_head and tgt.rating is not None:
            from segue.data.ratings import denormalise

            offsets = np.asarray(tgt.offsets)
            for i, r in enumerate(sel):
                lo, hi = offsets[r], offsets[r + 1]
                tok = np.asarray(tgt.tokens[lo:hi], dtype=np.int64) - N_SPECIAL
                given = np.asarray(tgt.rating[lo:hi], dtype=np.float64)
                ok = (tok >= 0) & (tok < logp.shape[1]) & ~np.isnan(given)
                if ok.any():
                    rows_i = np.full(int(ok.sum()), i)
                    pred = denormalise(rating[i, tok[ok]], norm, rec.scale, rows_i)
                    sq += float(np.sum((pred - given[ok]) ** 2))
                    n_rated += int(ok.sum())
    out = {k: v / max(1, len(rows)) for k, v in sums.items()}
    if n_rated:
        out["rmse"] = math.sqrt(sq / n_rated)
    return out
