"""Explanations for any family through its public methods (models layer: no serving imports).

Most impactful: for a recommended item c of profile h, the profile items j whose removal lowers
c's score most,
    drop(j, c) = score(h)[c] - score(h without j)[c]
(every occurrence of j is removed). All leave-one-out profiles of h go through `score()` as one
batch (one SequenceArrays of |distinct items of h| rows), so the drops are the model's own exact
score differences, whatever the family.

Most surprising (families with `predict`): the profile items whose given rating differs most
from the model's predicted rating for them given the whole profile, |given - predicted|.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from segue.data.arrays import SequenceArrays
from segue.errors import SegueError


@dataclass(frozen=True)
class Impact:
    item: int  # the recommended token
    because: int  # a profile token
    drop: float  # score(h)[item] - score(h without `because`)[item]


@dataclass(frozen=True)
class Surprise:
    item: int  # a profile token
    given: float
    predicted: float

    @property
    def difference(self) -> float:
        return self.given - self.predicted


def leave_one_out(histories: SequenceArrays, row: int) -> tuple[SequenceArrays, np.ndarray]:
    """(one row per distinct token t of history `row`: the history without any event of t, the tokens t)."""
    lo, hi = int(histories.offsets[row]), int(histories.offsets[row + 1])
    tokens = np.asarray(histories.tokens[lo:hi])
    distinct = np.unique(tokens)
    keep = tokens[None, :] != distinct[:, None]  # [L, n]
    idx = lo + np.nonzero(keep)[1]  # events kept, row after row
    out = histories.gather(idx, keep.sum(axis=1), {"rows": "leave-one-out"})
    return out, distinct.astype(np.int32)


def impact_matrix(model: Any, histories: SequenceArrays, row: int, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(profile tokens [L], drops [L, k]) with drops[j, c] = score(h)[items[c]] - score(h - j)[items[c]]."""
    items = np.asarray(items, dtype=np.int64)
    loo, removed = leave_one_out(histories, row)
    full = model.score(histories, np.asarray([row]))[0, items].astype(np.float64)
    if len(removed) == 0:
        return removed, np.zeros((0, len(items)))
    without = model.score(loo)[:, items].astype(np.float64)  # one batch of all leave-one-out profiles
    return removed, full[None, :] - without


def most_impactful(model: Any, histories: SequenceArrays, row: int, items: np.ndarray, top: int = 3) -> dict[int, list[Impact]]:
    """For each recommended token, the `top` profile items whose removal lowers its score most
    (largest drop first; only positive drops)."""
    removed, drops = impact_matrix(model, histories, row, items)
    out: dict[int, list[Impact]] = {}
    for c, item in enumerate(np.asarray(items).tolist()):
        order = np.argsort(-drops[:, c], kind="stable")[:top]
        out[int(item)] = [Impact(int(item), int(removed[j]), float(drops[j, c])) for j in order if drops[j, c] > 0]
    return out


def most_surprising(model: Any, histories: SequenceArrays, row: int, top: int = 3) -> list[Surprise]:
    """The `top` rated profile items with the largest |given - predicted| rating (needs `predict`)."""
    if not hasattr(model, "predict"):
        raise SegueError(f"{model.family}: the family predicts no ratings, so nothing can be surprising")
    if histories.rating is None:
        return []
    lo, hi = int(histories.offsets[row]), int(histories.offsets[row + 1])
    tokens = np.asarray(histories.tokens[lo:hi], dtype=np.int64)
    given = np.asarray(histories.rating[lo:hi], dtype=np.float64)
    # the last rating of a repeated item counts, as in the profile the model reads
    _, last = np.unique(tokens[::-1], return_index=True)
    sel = np.sort(len(tokens) - 1 - last)
    sel = sel[~np.isnan(given[sel])]
    if len(sel) == 0:
        return []
    pred = np.asarray(model.predict(histories, np.asarray([row]), tokens[sel][None, :])[0], dtype=np.float64)
    ok = ~np.isnan(pred)
    sel, pred = sel[ok], pred[ok]
    order = np.argsort(-np.abs(given[sel] - pred), kind="stable")[:top]
    return [Surprise(int(tokens[sel[i]]), float(given[sel[i]]), float(pred[i])) for i in order]
