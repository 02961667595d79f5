"""Pairwise fine-tuning (ARGUS): a pretrained transformer learns to order one user's items as the
user's feedback does.

A config with a `pairwise` section (segue.models.pairwise_config.PairwiseConfig) is trained by
`PairwiseTask` instead of the next-item task: the shared Trainer runs it (checkpoints, exact
resume, validation, best weights), starting from the weights of the run folder `init_from`.

Pairs (`batch_pairs`, on the host, per training batch): in one sequence's window, two target
events i < j with known feedback y_i != y_j (|y_i - y_j| > min_gap), at most `window` seconds
apart, form the pair (a, b) = the better against the worse. Both are scored from the same
history: the hidden state at the anchor column c(i) = the last input column whose event is at
least `lag` seconds before event i (lag 0: column i, the history just before the earlier event),
so neither item, nor anything after the lagged cut, is seen (prefix "random": a column drawn
uniformly from 0 to c(i), an earlier prefix still). At most `max_pairs` pairs per
sequence are kept (a seeded draw from the batch's own content: resume-safe).

One transformer pass per sequence scores all its pairs: h = hidden(inputs) [B, T, D] once, then
s = rank_score(h[anchor], E[item]) for both items of every pair (SequenceTransformer.rank_score:
the next-item logit, the feedback head's prediction, or their learned mix).

Loss (`pairwise_logistic`), over pairs k with mask m_k and weight w_k (the feedback gap or 1):
    L = sum_k m_k w_k log(1 + exp(-(s_a,k - s_b,k))) / sum_k m_k w_k      (0 without pairs)

Validation: PairAccuracy on the split's VALID part (`validation_pairs`): every two validation
items of a user rated differently, scored after the user's validation history; the mean over
users of each user's share of correctly ordered pairs (ties count 1/2), as
segue.evaluation.ratings reports it.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from segue.data.arrays import SplitData
from segue.data.loader import make_train_loader
from segue.data.splits import Part
from segue.data.vocab import N_SPECIAL, Vocabulary
from segue.errors import ConfigError
from segue.models import events as EV
from segue.models.pairwise_config import PairwiseConfig
from segue.models.transformer import (
    SequenceTransformer,
    TransformerConfig,
    TransformerRecommender,
    load_weights,
    save_weights,
)
from segue.training import optim as O
from segue.training.task import total_steps
from segue.training.transformer_task import TransformerTask, event_lookups, training_arrays

# ---------------------------------------------------------------------------------------------
# the loss


def pairwise_logistic(s_a: jax.Array, s_b: jax.Array, weight: jax.Array, mask: jax.Array) -> jax.Array:
    """L = sum_k m_k w_k softplus(s_b,k - s_a,k) / sum_k m_k w_k (0 when no pair counts).

    softplus(s_b - s_a) = log(1 + exp(-(s_a - s_b))) = -log sigma(s_a - s_b): the logistic loss of
    ranking a (the better item) above b."""
    w = weight * mask.astype(s_a.dtype)
    den = jnp.sum(w)
    num = jnp.sum(w * jax.nn.softplus(s_b - s_a))
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


# ---------------------------------------------------------------------------------------------
# pairs of a training batch


def batch_pairs(
    cfg: PairwiseConfig,
    targets: np.ndarray,
    mask: np.ndarray,
    value: np.ndarray,
    target_ts: np.ndarray | None,
    input_ts: np.ndarray | None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Pairs of each row of a batch [B, T] (see the module docstring), padded to P = max_pairs:
    anchor int32, tok_a / tok_b int32, weight float32, pair_mask bool, each [B, P].

    `value` [B, T] is the feedback of each target event (NaN = none); `target_ts` / `input_ts` the
    unix seconds of the target / input events (needed by `window` and `lag`)."""
    b, _ = targets.shape
    p = cfg.max_pairs
    out = {
        "anchor": np.zeros((b, p), np.int32),
        "tok_a": np.zeros((b, p), np.int32),
        "tok_b": np.zeros((b, p), np.int32),
        "weight": np.zeros((b, p), np.float32),
        "pair_mask": np.zeros((b, p), bool),
    }
    if (cfg.window is not None or cfg.lag > 0) and (target_ts is None or input_ts is None):
        raise ConfigError("pairwise.window / pairwise.lag need event timestamps, and the training data has none")
    value = np.asarray(value, np.float64)
    ok = np.asarray(mask, bool) & (targets >= N_SPECIAL) & np.isfinite(value)
    rng = np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(targets).tobytes())])
    for r in range(b):
        cols = np.flatnonzero(ok[r])
        if len(cols) < 2:
            continue
        i, j = np.triu_indices(len(cols), 1)
        ci, cj = cols[i], cols[j]
        gap = value[r, ci] - value[r, cj]
        keep = (np.abs(gap) > cfg.min_gap) & (gap != 0) & (targets[r, ci] != targets[r, cj])
        if cfg.window is not None:
            keep &= np.abs(target_ts[r, cj].astype(np.int64) - target_ts[r, ci].astype(np.int64)) <= cfg.window
        ci, cj, gap = ci[keep], cj[keep], gap[keep]
        if cfg.lag > 0:
            # the last input column c <= i whose event is at least `lag` before event i
            cut = target_ts[r, ci].astype(np.float64) - cfg.lag
            # (an input without a time, <start>, is older than any cut: the empty history)
            its = np.where(input_ts[r] > 0, input_ts[r].astype(np.float64), -np.inf)
            anchor = np.searchsorted(its, cut, side="right") - 1
            anchor = np.minimum(anchor, ci)
            # none (even column 0 is later): no history that old is in the window
            good = anchor >= 0
            ci, cj, gap, anchor = ci[good], cj[good], gap[good], anchor[good]
        else:
            anchor = ci
        n = len(ci)
        if n == 0:
            continue
        if cfg.prefix == "random":
            anchor = np.floor(rng.random(n) * (anchor + 1)).astype(np.int64)
        if n > p:
            pick = np.sort(rng.choice(n, p, replace=False))
            ci, cj, gap, anchor = ci[pick], cj[pick], gap[pick], anchor[pick]
            n = p
        better_i = gap > 0
        out["anchor"][r, :n] = anchor
        out["tok_a"][r, :n] = np.where(better_i, targets[r, ci], targets[r, cj])
        out["tok_b"][r, :n] = np.where(better_i, targets[r, cj], targets[r, ci])
        out["weight"][r, :n] = np.abs(gap) if cfg.weight == "gap" else 1.0
        out["pair_mask"][r, :n] = True
    return out


def pair_values(cfg: PairwiseConfig, batch: dict[str, np.ndarray]) -> np.ndarray:
    """The feedback that orders pairs, per target event [B, T] (NaN where none)."""
    key = "target_rating" if cfg.by == "rating" else f"target_fb_{cfg.by}"
    if key not in batch:
        raise ConfigError(f"pairwise.by: the training data has no '{cfg.by}' feedback to order pairs by")
    return np.asarray(batch[key], np.float64)


# ---------------------------------------------------------------------------------------------
# validation pairs


def validation_pairs(
    data: SplitData, max_pairs_per_user: int = 200, seed: int = 0, max_users: int | None = None, by: str = "rating"
) -> dict[str, np.ndarray] | None:
    """Every two VALID items of a user with different feedback `by` (a rating or an fb_ column) (a seeded sample of at most
    `max_pairs_per_user`; of at most `max_users` users, a seeded sample): rows [P] (history rows
    of data.history(VALID)), tok_a / tok_b [P] (better first). None without a validation part or
    pairs."""
    tgt = data.targets(Part.VALID)  # empty for a split without a validation part
    values = tgt.rating if by == "rating" else tgt.feedback.get(by)
    if values is None:
        return None
    off = np.asarray(tgt.offsets, np.int64)
    toks = np.asarray(tgt.tokens, np.int64)
    rat = np.asarray(values, np.float64)
    rows, ta, tb = [], [], []
    users = tgt.nonempty()
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    for u in users:
        t, r = toks[off[u] : off[u + 1]], rat[off[u] : off[u + 1]]
        good = (t >= N_SPECIAL) & np.isfinite(r)
        t, r = t[good], r[good]
        i, j = np.triu_indices(len(t), 1)
        keep = (r[i] != r[j]) & (t[i] != t[j])
        i, j = i[keep], j[keep]
        if len(i) > max_pairs_per_user:
            pick = np.sort(np.random.default_rng([seed, u]).choice(len(i), max_pairs_per_user, replace=False))
            i, j = i[pick], j[pick]
        better = r[i] > r[j]
        rows.append(np.full(len(i), u, np.int64))
        ta.append(np.where(better, t[i], t[j]))
        tb.append(np.where(better, t[j], t[i]))
    if not rows or sum(len(x) for x in rows) == 0:
        return None
    return {"rows": np.concatenate(rows), "tok_a": np.concatenate(ta), "tok_b": np.concatenate(tb)}


def mean_user_pair_accuracy(s_a: np.ndarray, s_b: np.ndarray, rows: np.ndarray) -> float:
    """Mean over users of sum_k (1[s_a > s_b] + 1/2 1[s_a = s_b]) / n_u over each user's pairs."""
    c = (s_a > s_b) + 0.5 * (s_a == s_b)
    _, inv = np.unique(rows, return_inverse=True)
    return float(np.mean(np.bincount(inv, weights=c) / np.bincount(inv)))


# ---------------------------------------------------------------------------------------------
# the task


def _read_pretrained(folder: Path) -> tuple[TransformerConfig, Vocabulary]:
    from segue.models.base import read_model_header

    if not folder.is_dir():
        raise ConfigError(f"pairwise.init_from: {folder} is not a run folder")
    header = read_model_header(folder)
    if header.get("family") != "transformer":
        raise ConfigError(f"pairwise.init_from: {folder} holds a '{header.get('family')}' model, not a transformer")
    rec = TransformerRecommender.load(folder)
    return rec.config, rec.vocab


def check_pretrained(config: TransformerConfig, pre: TransformerConfig, pre_vocab: Vocabulary, data: SplitData, folder: Path) -> None:
    """ConfigError naming the section when the pretrained run cannot be fine-tuned by this config."""
    for section in ("model", "events"):
        mine, theirs = getattr(config, section), getattr(pre, section)
        if mine != theirs:
            diff = [
                f"{k} {getattr(mine, k)!r} (run: {getattr(theirs, k)!r})"
                for k in type(mine).model_fields
                if getattr(mine, k) != getattr(theirs, k)
            ]
            raise ConfigError(f"pairwise.init_from: [{section}] must match the pretrained run {folder}: " + "; ".join(diff))
    if len(pre_vocab) != len(data.vocab) or not np.array_equal(np.asarray(pre_vocab.item_ids), np.asarray(data.vocab.item_ids)):
        raise ConfigError(
            f"pairwise.init_from: {folder} was trained on split '{pre_vocab.split}' ({len(pre_vocab)} tokens), "
            f"not on this config's split '{data.split}' ({len(data.vocab)} tokens)"
        )


class PairwiseTask:
    """Fine-tunes a pretrained SequenceTransformer on feedback pairs (see the module docstring)."""

    unit = "pairs"

    def __init__(self, config: TransformerConfig, data: SplitData) -> None:
        if config.pairwise is None:
            raise ConfigError("PairwiseTask needs a [pairwise] section")
        self.config = config
        self.pcfg = pc = config.pairwise
        self.trainer = tc = config.trainer
        self.optim = config.optim
        self.init_from = Path(pc.init_from)
        pre, pre_vocab = _read_pretrained(self.init_from)
        check_pretrained(config, pre, pre_vocab, data, self.init_from)
        if pc.by != "rating" and pc.by not in data.train.feedback:
            raise ConfigError(f"pairwise.by: the training data has no feedback column '{pc.by}'")
        if pc.by == "rating" and data.train.rating is None:
            raise ConfigError("pairwise.by: the training data has no ratings")
        if (pc.window is not None or pc.lag > 0) and data.train.ts is None:
            raise ConfigError("pairwise.window / pairwise.lag: the training data has no timestamps")
        lc = tc.loader.model_copy(update={"context_length": config.model.context_length, "extras": True})
        arrays = training_arrays(data, tc.fit_on)
        self.events = ev = config.events
        self.categories, self.luts = event_lookups(ev, arrays)
        self.loader = make_train_loader(arrays, lc, seed=tc.seed)
        self.total_steps, self.limit = total_steps(tc, self.loader.batches_per_epoch)
        self.vocab = data.vocab
        self.vpairs = validation_pairs(data, seed=tc.seed, max_users=tc.eval_max_users, by=pc.by) if tc.fit_on == "train" else None
        self.vhist = data.history(Part.VALID) if self.vpairs is not None else None
        self.graphdef: Any = None
        self._step: Any = None
        # the pretrained run's rating prior and item biases (set by init_state): the ridge
        # fold-in's residuals are read over them
        self.prior: tuple[float, float] | None = None
        self.item_bias: np.ndarray | None = None

    # --- state ------------------------------------------------------------------------------
    def _network(self) -> SequenceTransformer:
        rec = TransformerRecommender(self.config, self.vocab)
        return rec.build(len(self.vocab), self.trainer.seed, categories=self.categories or None)

    def init_state(self) -> dict[str, Any]:
        net = self._network()
        # the pretrained weights: every parameter but the new mix weights (a, b)
        pre = TransformerRecommender(self.config.model_copy(update={"pairwise": None}), self.vocab)
        pre_net = load_weights(pre.build(len(self.vocab), categories=self.categories or None), self.init_from / "weights.npz")
        nnx.update(net, nnx.state(pre_net, nnx.Param))
        if self.events.enabled:  # the pretrained run's training statistics travel with its weights
            net.categories_json = pre_net.categories_json
            net.rating_prior_json = pre_net.rating_prior_json
            net.item_bias_json = pre_net.item_bias_json
            self.prior, self.item_bias = net.rating_prior, net.rating_item_bias
        self.graphdef, params = nnx.split(net, nnx.Param)
        tx = O.dense_transform(self.optim, params)
        self._step = make_pair_step(self.graphdef, self.optim, self.total_steps)
        return {
            "params": params,
            "opt": tx.init(params),
            "step": jnp.zeros((), jnp.int32),
            "key": jax.random.key_data(jax.random.key(self.trainer.seed + 1)),
        }

    def train_step(self, state: dict[str, Any], batch: dict[str, Any], lr_scale: jax.Array) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        pairs = batch_pairs(
            self.pcfg, batch["targets"], batch["mask"], pair_values(self.pcfg, batch), batch.get("target_ts"), batch.get("ts"), self.trainer.seed
        )
        ev = EV.batch_events(self.events, batch, self.luts, self.prior, self.item_bias) if self.events.enabled else None
        # the feedback-head targets are not trained here: only what the network reads
        if ev is not None:
            ev = {k: v for k, v in ev.items() if k not in ("fb_target", "fb_mask")}
        return self._step(state, batch["inputs"], jnp.float32(lr_scale), pairs, ev)

    def validate(self, state: dict[str, Any]) -> dict[str, float] | None:
        if self.vpairs is None:
            return None
        rec = TransformerRecommender(self.config, self.vocab)
        rec.network = self.network(state)
        vp = self.vpairs
        users, inv = np.unique(vp["rows"], return_inverse=True)
        sa, sb = np.empty(len(inv)), np.empty(len(inv))
        for lo in range(0, len(users), 128):
            s = rec.score(self.vhist, users[lo : lo + 128])
            sel = np.flatnonzero((inv >= lo) & (inv < lo + 128))
            sa[sel] = s[inv[sel] - lo, vp["tok_a"][sel]]
            sb[sel] = s[inv[sel] - lo, vp["tok_b"][sel]]
        return {"pair_accuracy": mean_user_pair_accuracy(sa, sb, vp["rows"])}

    def network(self, state: dict[str, Any], average: bool = False) -> SequenceTransformer:
        return nnx.merge(self.graphdef, state["params"])

    def save_weights(self, network: SequenceTransformer, path: Path) -> None:
        save_weights(network, path)

    def load_weights(self, network: SequenceTransformer, path: Path) -> SequenceTransformer:
        return load_weights(network, path)


def make_pair_step(graphdef: Any, ocfg: O.OptimConfig, n_steps: int) -> Any:
    """step(state, inputs [B, T], lr_scale, pairs, events) -> (state, metrics): one forward pass
    per sequence, every pair scored from it, dense AdamW on every parameter."""

    def step(state: dict[str, Any], inputs: jax.Array, lr_scale: jax.Array, pairs: dict[str, jax.Array], events: Any):
        tx = O.dense_transform(ocfg, state["params"])
        t = state["step"]
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), t)
        anchor = pairs["anchor"]

        def loss_fn(params: nnx.State) -> tuple[jax.Array, jax.Array]:
            net = nnx.merge(graphdef, params)
            h = net.hidden(inputs, key=key, events=events)  # [B, T, D]: one pass per sequence
            ha = jnp.take_along_axis(h, anchor[..., None], axis=1)  # [B, P, D]
            nxt = None if events is None else events.get("next_ctx")
            na = None if nxt is None else jnp.take_along_axis(nxt, anchor[..., None], axis=1)
            table = net.item_emb[...]
            ua = None
            if net.has_ridge:  # the fold-in of each anchor's rated prefix
                user = net.ridge_user(table[inputs], events["fold_value"], events["fold_rated"], inputs)
                ua = jnp.take_along_axis(user, anchor[..., None], axis=1)
            s_a = net.rank_score(ha, table[pairs["tok_a"]], na, pairs["tok_a"], ua)
            s_b = net.rank_score(ha, table[pairs["tok_b"]], na, pairs["tok_b"], ua)
            loss = pairwise_logistic(s_a, s_b, pairs["weight"], pairs["pair_mask"])
            m = pairs["pair_mask"]
            acc = jnp.sum(jnp.where(m, (s_a > s_b) + 0.5 * (s_a == s_b), 0.0)) / jnp.maximum(1, jnp.sum(m))
            return loss, acc

        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        norm = O.global_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(norm)
        scale = O.clip_scale(norm, ocfg.clip_norm)
        grads = jax.tree_util.tree_map(lambda g: g * scale, grads)
        lr = O.lr_at(ocfg, t, n_steps) * lr_scale
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], jax.tree_util.tree_map(lambda u: -lr * u, updates))
        params = jax.tree_util.tree_map(lambda a, c: jnp.where(ok, a, c), params, state["params"])
        opt = jax.tree_util.tree_map(lambda a, c: jnp.where(ok, a, c), opt, state["opt"])
        new = {"params": params, "opt": opt, "step": t + 1, "key": state["key"]}
        n_pairs = jnp.sum(pairs["pair_mask"])
        return new, {"loss": loss, "grad_norm": norm, "skipped": ~ok, "lr": lr, "count": n_pairs, "train_pair_accuracy": acc}

    return jax.jit(step, donate_argnums=(0,))


def transformer_task(config: TransformerConfig, data: SplitData) -> Any:
    """The transformer family's task: pairwise fine-tuning with a [pairwise] section, else next-item."""
    if config.pairwise is not None:
        return PairwiseTask(config, data)
    return TransformerTask(config, data)


def resolve_init_from(cfg: Any) -> Any:
    """A train config with pairwise.init_from resolved against the config file's folder."""
    pc = getattr(cfg, "pairwise", None)
    if pc is None:
        return cfg
    path = cfg.resolve(pc.init_from)
    return cfg.model_copy(update={"pairwise": pc.model_copy(update={"init_from": str(path.resolve())})})


__all__ = ["PairwiseConfig", "PairwiseTask", "batch_pairs", "pairwise_logistic", "validation_pairs", "transformer_task"]
