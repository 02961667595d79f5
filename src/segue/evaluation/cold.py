"""Cold and warm targets: items outside the training vocabulary, scorable by feature models.

A model that composes item vectors from side features (segue.models.item_encoder) can score items
it never trained on. Such a model offers `with_store_items(store)`: a copy of it in which the store's
items outside its vocabulary become tokens V, V + 1, ... (features-only vectors; their features are item metadata,
encoded with the vocabularies fitted on the training items, so nothing after the cut is fitted),
listed by store item id in `model.extra_item_ids`. For that model the evaluator then
  - ranks V + n tokens (score() returns them all),
  - reads history events of those items as their tokens (so they are masked as seen, and the model
    reads them as features-only inputs), and
  - counts a relevant <unk> item (key -(1 + item id)) as a hit when it ranks its token.
Other models are unchanged: for them cold targets stay unhittable.

The temporal protocol also reports the share of relevant items that are cold (absent from the
training vocabulary) and hr / ndcg on the cold and the warm relevant sets separately
(`cold_hr@10`, `warm_ndcg@10`, ...): each query's ranking is measured against its cold (warm)
targets only; a query without any is NaN there (left out of that mean and its CI).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from segue.data.arrays import SequenceArrays
from segue.data.vocab import UNK
from segue.evaluation import metrics as M

SUBSET_METRICS = ("hr", "ndcg")


def extra_item_ids(model: Any) -> np.ndarray:
    """Store item ids of the model's tokens past its vocabulary (empty for most models)."""
    return np.asarray(getattr(model, "extra_item_ids", None) or [], dtype=np.int64)


def prepare_models(models: Mapping[str, Any], store: Any) -> dict[str, Any]:
    """The models, each one that can score unseen items replaced by a copy that also scores the
    store's items outside its vocabulary (`with_store_items`); the caller's models are unchanged."""
    out = {}
    for name, model in models.items():
        extend = getattr(model, "with_store_items", None)
        out[name] = extend(store) if callable(extend) else model
    return out


def _token_of(extra: np.ndarray, n_vocab: int, item_ids: np.ndarray) -> np.ndarray:
    """Token of each store item id among the extra items (-1 where it is not one)."""
    if len(extra) == 0:
        return np.full(item_ids.shape, -1, np.int64)
    order = np.argsort(extra, kind="stable")
    pos = np.searchsorted(extra[order], item_ids).clip(0, len(extra) - 1)
    found = extra[order][pos] == item_ids
    return np.where(found, n_vocab + order[pos], -1)


def remap_histories(histories: SequenceArrays, n_vocab: int, extra: np.ndarray) -> SequenceArrays:
    """The histories with <unk> events of extra items as their tokens (a copy; same arrays otherwise)."""
    if len(extra) == 0:
        return histories
    tokens = np.asarray(histories.tokens)
    unk = tokens == UNK
    if not unk.any():
        return histories
    ext = _token_of(extra, n_vocab, np.asarray(histories.item_ids, np.int64)[unk])
    out = tokens.astype(np.int32, copy=True)
    out[np.flatnonzero(unk)[ext >= 0]] = ext[ext >= 0]
    return replace(histories, tokens=out)


def remap_keys(keys: np.ndarray, n_vocab: int, extra: np.ndarray) -> np.ndarray:
    """Relevant keys with <unk> items (-(1 + item id)) among the extra items as their tokens."""
    keys = np.asarray(keys, np.int64)
    if len(extra) == 0:
        return keys
    unk = keys < 0
    tok = _token_of(extra, n_vocab, -keys[unk] - 1)
    out = keys.copy()
    out[np.flatnonzero(unk)[tok >= 0]] = tok[tok >= 0]
    return out


def cold_share(keys: np.ndarray) -> float:
    """Share of relevant items outside the training vocabulary (keys < 0 before remapping)."""
    keys = np.asarray(keys)
    return float((keys < 0).mean()) if len(keys) else float("nan")


def subset_metrics(
    ranked: np.ndarray, offsets: np.ndarray, keys: np.ndarray, select: np.ndarray, ks: tuple[int, ...], prefix: str
) -> dict[str, np.ndarray]:
    """hr@k and ndcg@k [Q] of `ranked` against the relevant keys where `select` holds (per
    query; NaN for a query with none), named <prefix>_hr@k, <prefix>_ndcg@k."""
    q = len(offsets) - 1
    owner = np.repeat(np.arange(q), np.diff(offsets))
    n_sel = np.bincount(owner[select], minlength=q)
    have = np.flatnonzero(n_sel > 0)
    out = {f"{prefix}_{m}@{k}": np.full(q, np.nan) for m in SUBSET_METRICS for k in ks}
    if len(have) == 0:
        return out
    sub_off = np.zeros(len(have) + 1, np.int64)
    np.cumsum(n_sel[have], out=sub_off[1:])
    keep = select & np.isin(owner, have)
    vals = M.per_user_metrics(ranked[have], sub_off, keys[keep], ks)
    for m in SUBSET_METRICS:
        for k in ks:
            out[f"{prefix}_{m}@{k}"][have] = vals[f"{m}@{k}"]
    return out


def cold_warm_metrics(ranked: np.ndarray, offsets: np.ndarray, original_keys: np.ndarray, keys: np.ndarray, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """cold_* and warm_* subset metrics; cold = outside the training vocabulary (original key < 0)."""
    cold = np.asarray(original_keys) < 0
    return subset_metrics(ranked, offsets, keys, cold, ks, "cold") | subset_metrics(ranked, offsets, keys, ~cold, ks, "warm")


__all__ = ["cold_share", "cold_warm_metrics", "extra_item_ids", "prepare_models", "remap_histories", "remap_keys"]
