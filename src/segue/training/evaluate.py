"""Validation inside training: exact and sampled cross-entropy, and full-ranking HR/NDCG@K.

For each validation example (a history h and its next item y):
    scores s_c = <q(h), E[c]> over every token; special tokens never compete.
    exact CE          = logsumexp_{c in classes} s_c - s_y              (the model's real loss)
    sampled CE        = label-in-denominator estimate with uniform negatives (see losses.py)
    corrected CE      = bias_corrected_log_z - s_y  (first-order correction, trecs' appendix)
    rank              = #{c not in h, c not special : s_c > s_y}  (history items never count)
    HR@K = [rank < K],  NDCG@K = [rank < K] / log2(rank + 2)
A target outside the vocabulary (<unk>) is a miss and carries no cross-entropy.

Examples: rows whose validation targets are nonempty. When the row has a known history, the
example is (history, first target). A row without history (held-out whole sequences) gives the
example (first k target items, item k+1) with k = min(5, n // 2), n >= 2 (playlist continuation).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from segue.data.arrays import SequenceArrays, SplitData
from segue.data.loader import pad_histories
from segue.data.splits import Part
from segue.data.vocab import N_SPECIAL, UNK
from segue.training import losses as L


class ValidationSet:
    """Fixed validation examples: histories (CSR) and next-item targets [n]."""

    def __init__(self, histories: SequenceArrays, targets: np.ndarray) -> None:
        self.histories = histories
        self.targets = targets.astype(np.int32)

    def __len__(self) -> int:
        return len(self.targets)

    @classmethod
    def from_split(cls, data: SplitData, max_users: int, seed: int = 0) -> ValidationSet | None:
        try:
            hist = data.history(Part.VALID)
            tgt = data.targets(Part.VALID)
        except Exception:  # a split without a validation part: no validation
            return None
        rows = tgt.nonempty()
        if len(rows) > max_users:
            rows = np.sort(np.random.default_rng(seed).choice(rows, max_users, replace=False))
        lists, targets = [], []
        for r in rows:
            h, t = np.asarray(hist.row(r)), np.asarray(tgt.row(r))
            if len(h):
                lists.append(h)
                targets.append(t[0])
            elif len(t) >= 2:
                k = min(5, len(t) // 2)
                lists.append(t[:k])
                targets.append(t[k])
        if not targets:
            return None
        return cls(SequenceArrays.from_lists(lists), np.asarray(targets))


@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _eval_batch(
    graphdef: Any,
    k: int,
    n_neg: int,
    eop_class: bool,
    state: Any,
    inputs: jax.Array,
    positions: jax.Array,
    last: jax.Array,
    targets: jax.Array,
    key: jax.Array,
) -> dict[str, jax.Array]:
    net = nnx.merge(graphdef, state)
    table = net.item_emb[...]
    v = table.shape[0]
    h = net.hidden(inputs, positions=positions)
    q = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]  # [B, D]
    s = q @ table.T  # [B, V]
    tokens = jnp.arange(v)
    classes = (tokens >= N_SPECIAL) | ((tokens == 2) & eop_class)
    s_y = jnp.take_along_axis(s, targets[:, None], axis=1)[:, 0]
    exact = jax.nn.logsumexp(jnp.where(classes[None], s, -jnp.inf), axis=-1) - s_y
    n_classes = v - N_SPECIAL + int(eop_class)
    negs = jax.random.randint(key, (n_neg,), N_SPECIAL, v)
    neg = s[:, negs]
    hit = negs[None, :] == targets[:, None]
    sampled = L.label_in_denominator_ce(s_y, neg, hit, n_classes)
    corrected = L.bias_corrected_log_z(s_y, neg, hit, n_classes) - s_y
    # ranking: items only, history excluded
    ranked = jnp.where(tokens[None] >= N_SPECIAL, s, -jnp.inf)
    rows = jnp.arange(s.shape[0])[:, None]
    ranked = ranked.at[rows, inputs].set(-jnp.inf)
    rank = jnp.sum(ranked > s_y[:, None], axis=-1)
    seen = jnp.any(inputs == targets[:, None], axis=-1)
    valid = targets != UNK
    hit_k = (rank < k) & valid & ~seen
    ndcg = jnp.where(hit_k, 1.0 / jnp.log2(rank + 2.0), 0.0)
    return {"exact_ce": exact, "sampled_ce": sampled, "corrected_ce": corrected, "hr": hit_k, "ndcg": ndcg, "valid": valid}


def evaluate(
    graphdef: Any,
    state: Any,
    vset: ValidationSet,
    *,
    context_length: int,
    batch_size: int,
    n_negatives: int,
    eop_class: bool,
    k: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Mean metrics over the validation set (keys: exact_ce, sampled_ce, corrected_ce, hr@k, ndcg@k)."""
    sums: dict[str, float] = {"exact_ce": 0.0, "sampled_ce": 0.0, "corrected_ce": 0.0, "hr": 0.0, "ndcg": 0.0}
    n_valid = 0
    n = len(vset)
    key = jax.random.key(seed)
    for s in range(0, n, batch_size):
        sel = np.arange(s, min(n, s + batch_size))
        ev = pad_histories(vset.histories, sel, context_length=context_length, pad_to=context_length)
        tg = vset.targets[sel]
        m = len(sel)
        pad = batch_size - m
        inputs, positions, last = ev.inputs, ev.positions, ev.last
        if pad:
            inputs = np.concatenate([inputs, np.repeat(inputs[:1], pad, 0)])
            positions = np.concatenate([positions, np.repeat(positions[:1], pad, 0)])
            last = np.concatenate([last, np.repeat(last[:1], pad)])
            tg = np.concatenate([tg, np.repeat(tg[:1], pad)])
        out = jax.device_get(
            _eval_batch(graphdef, k, n_negatives, eop_class, state, inputs, positions, last, tg, jax.random.fold_in(key, s))
        )
        valid = out["valid"][:m]
        n_valid += int(valid.sum())
        for name in ("exact_ce", "sampled_ce", "corrected_ce"):
            sums[name] += float(np.where(valid, out[name][:m], 0.0).sum())
        sums["hr"] += float(out["hr"][:m].sum())
        sums["ndcg"] += float(out["ndcg"][:m].sum())
    res = {name: sums[name] / max(1, n_valid) for name in ("exact_ce", "sampled_ce", "corrected_ce")}
    res[f"hr@{k}"] = sums["hr"] / max(1, n)
    res[f"ndcg@{k}"] = sums["ndcg"] / max(1, n)
    return res
