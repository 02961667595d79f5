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

A model that reads feedback and context (TransformerConfig.events) is validated on histories that
keep their per-event columns, with the target event's context as the next-item head's input
(`ValidationSet.from_split(..., with_events=True)`; the examples are the same, histories first).
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
from segue.models import events as EV
from segue.training import losses as L


class ValidationSet:
    """Fixed validation examples: histories (CSR) and next-item targets [n]; with events, also
    `next_events` (row i's first event is example i's target event, with its columns)."""

    def __init__(self, histories: SequenceArrays, targets: np.ndarray, next_events: SequenceArrays | None = None) -> None:
        self.histories = histories
        self.targets = targets.astype(np.int32)
        self.next_events = next_events

    def __len__(self) -> int:
        return len(self.targets)

    @classmethod
    def from_split(cls, data: SplitData, max_users: int, seed: int = 0, *, with_events: bool = False) -> ValidationSet | None:
        try:
            hist = data.history(Part.VALID)
            tgt = data.targets(Part.VALID)
        except Exception:  # a split without a validation part: no validation
            return None
        rows = tgt.nonempty()
        if len(rows) > max_users:
            rows = np.sort(np.random.default_rng(seed).choice(rows, max_users, replace=False))
        if with_events:
            return cls._with_events(hist, tgt, rows)
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

    @classmethod
    def _with_events(cls, hist: SequenceArrays, tgt: SequenceArrays, rows: np.ndarray) -> ValidationSet | None:
        """The examples of `from_split` as slices of the compiled arrays (per-event columns kept)."""
        h_len, t_len = hist.lengths[rows], tgt.lengths[rows]
        with_h = rows[h_len > 0]
        cont = rows[(h_len == 0) & (t_len >= 2)]
        k = np.minimum(5, tgt.lengths[cont] // 2)
        zeros = np.zeros(len(with_h), np.int64)
        histories = concat_arrays([hist.take(with_h), tgt.take(cont, np.zeros(len(cont), np.int64), k)])
        nxt = concat_arrays([tgt.take(with_h, zeros, zeros + 1), tgt.take(cont, k, np.ones(len(cont), np.int64))])
        if not len(histories):
            return None
        return cls(histories, np.asarray(nxt.tokens), nxt)


def concat_arrays(parts: list[SequenceArrays]) -> SequenceArrays:
    """Rows of `parts` one after the other; context codes recoded to one category list per column
    (parts compiled separately code their categories in their own order)."""
    lengths = np.concatenate([p.lengths for p in parts])
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])

    def cat(get: Any) -> np.ndarray | None:
        vals = [get(p) for p in parts]
        return None if any(v is None for v in vals) else np.concatenate([np.asarray(v) for v in vals])

    context, categories = {}, {}
    for name in parts[0].context:
        union: list[str] = []
        codes = []
        for p in parts:
            cats = list(p.context_categories.get(name, []))
            union += [c for c in cats if c not in union]
            lut = np.array([union.index(c) for c in cats] + [-1], np.int32)
            c = np.asarray(p.context[name])
            codes.append(np.where(c >= 0, lut[np.where(c >= 0, c, len(cats))], -1))
        context[name], categories[name] = np.concatenate(codes).astype(np.int32), union
    return SequenceArrays(
        offsets=offsets,
        tokens=cat(lambda p: p.tokens),
        item_ids=cat(lambda p: p.item_ids),
        ts=cat(lambda p: p.ts),
        rating=cat(lambda p: p.rating),
        feedback={n: cat(lambda p, n=n: p.feedback.get(n)) for n in parts[0].feedback},
        context=context,
        context_categories=categories,
    )


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
    events: dict[str, jax.Array] | None = None,
) -> dict[str, jax.Array]:
    net = nnx.merge(graphdef, state)
    table = net.item_emb[...]
    v = table.shape[0]
    fb_pred = None
    if events is None:
        h = net.hidden(inputs, positions=positions)
    else:  # the next-item head joins the target event's context
        hid = net.hidden(inputs, positions=positions, events=events)
        nxt = events.get("next_ctx")
        h = net.next_query(hid, nxt)
        if net.feedback_head is not None:  # the feedback head on the target item
            at = last[:, None, None]
            nxt_last = None if nxt is None else jnp.take_along_axis(nxt, at, axis=1)[:, 0]
            fb_pred = net.predict_feedback(jnp.take_along_axis(hid, at, axis=1)[:, 0], table[targets], nxt_last, events.get("fold_user"), targets)
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
    out = {"exact_ce": exact, "sampled_ce": sampled, "corrected_ce": corrected, "hr": hit_k, "ndcg": ndcg, "valid": valid}
    if fb_pred is not None:
        out["fb_pred"] = fb_pred
    return out


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
    events: tuple[EV.EventsConfig, EV.Categories, tuple[float, float] | None, np.ndarray | None] | None = None,
) -> dict[str, float]:
    """Mean metrics over the validation set (keys: exact_ce, sampled_ce, corrected_ce, hr@k, ndcg@k).

    `events` (the model's events config, training categories, rating prior and item biases) validates a network that reads
    feedback and context; `vset` must then come from `from_split(..., with_events=True)`. A
    feedback head adds <name>_rmse per predicted column: the root mean squared error, on the
    column's own scale (segue.models.events.to_scale), over the target events that carry it."""
    sums: dict[str, float] = {"exact_ce": 0.0, "sampled_ce": 0.0, "corrected_ce": 0.0, "hr": 0.0, "ndcg": 0.0}
    n_valid = 0
    n = len(vset)
    fb_sq: dict[str, float] = {}
    fb_n: dict[str, int] = {}
    key = jax.random.key(seed)
    # the ridge fold-in's item vectors, once per validation pass (history_events reads them per batch)
    fold = nnx.merge(graphdef, state).fold_table() if events is not None and events[0].rating_ridge > 0 else None
    # Batches of similar lengths, each padded to the next power of two (at least 8, at most the
    # context): inputs are left-aligned and attention is causal, so the columns past `last`
    # change nothing, and short histories (Beauty's median is 6) stop paying for 50 columns.
    offsets = np.asarray(vset.histories.offsets, dtype=np.int64)
    eff = np.minimum(np.diff(offsets) + 1, context_length)
    order = np.argsort(eff, kind="stable")
    for s in range(0, n, batch_size):
        sel = order[s : s + batch_size]
        width = int(min(context_length, max(8, 1 << (int(eff[sel].max()) - 1).bit_length())))
        ev = pad_histories(vset.histories, sel, context_length=context_length, pad_to=width)
        tg = vset.targets[sel]
        m = len(sel)
        pad = batch_size - m
        inputs, positions, last = ev.inputs, ev.positions, ev.last
        if pad:
            inputs = np.concatenate([inputs, np.repeat(inputs[:1], pad, 0)])
            positions = np.concatenate([positions, np.repeat(positions[:1], pad, 0)])
            last = np.concatenate([last, np.repeat(last[:1], pad)])
            tg = np.concatenate([tg, np.repeat(tg[:1], pad)])
        ev = None
        if events is not None:
            ev, mu, sd = EV.history_events(
                events[0], events[1], vset.histories, sel, context_length, width, next_events=vset.next_events, prior=events[2],
                item_bias=events[3], fold_table=fold,
            )
            if pad:
                ev = {n: np.concatenate([a, np.repeat(a[:1], pad, 0)]) for n, a in ev.items()}
        out = jax.device_get(
            _eval_batch(graphdef, k, n_negatives, eop_class, state, inputs, positions, last, tg, jax.random.fold_in(key, s), ev)
        )
        valid = out["valid"][:m]
        n_valid += int(valid.sum())
        for name in ("exact_ce", "sampled_ce", "corrected_ce"):
            sums[name] += float(np.where(valid, out[name][:m], 0.0).sum())
        sums["hr"] += float(out["hr"][:m].sum())
        sums["ndcg"] += float(out["ndcg"][:m].sum())
        if "fb_pred" in out and events is not None and vset.next_events is not None:
            for i, (name, kind, _) in enumerate(events[0].targets()):
                off = None if events[3] is None or kind != "rating" else EV.bias_of(events[3], vset.targets[sel])[:, None]
                pred = EV.to_scale(events[0], kind, out["fb_pred"][:m, i : i + 1], mu, sd, off)[:, 0]
                col = vset.next_events.rating if name == "rating" else vset.next_events.feedback.get(name)
                if col is None:
                    continue
                truth = np.asarray(col, dtype=np.float64)[sel]
                ok = np.isfinite(truth)
                fb_sq[name] = fb_sq.get(name, 0.0) + float(((pred[ok] - truth[ok]) ** 2).sum())
                fb_n[name] = fb_n.get(name, 0) + int(ok.sum())
    res = {name: sums[name] / max(1, n_valid) for name in ("exact_ce", "sampled_ce", "corrected_ce")}
    res[f"hr@{k}"] = sums["hr"] / max(1, n)
    res[f"ndcg@{k}"] = sums["ndcg"] / max(1, n)
    for name, sq in fb_sq.items():
        res[f"{name}_rmse"] = float(np.sqrt(sq / max(1, fb_n[name])))
    return res
