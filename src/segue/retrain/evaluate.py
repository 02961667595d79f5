"""Evaluating candidate and production on the same newest window, and the gate.

Production was trained on an older store, so its vocabulary differs from the candidate's;
`Revocabulary` puts it on the new store's vocabulary (histories re-encoded by external id, its
scores moved to the new tokens, items it never saw scored -inf), so both models are ranked on the
same queries in one evaluation run, with paired bootstrap CIs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from segue.config import Config
from segue.data.arrays import SequenceArrays
from segue.data.vocab import UNK, Vocabulary
from segue.retrain.train import row_map


class Revocabulary:
    """A fitted model seen through another vocabulary (see the module docstring)."""

    def __init__(self, model: Any, vocab: Vocabulary) -> None:
        self.model = model
        self.vocab = vocab
        self.family = getattr(model, "family", "?")
        self.meta = getattr(model, "meta", {})
        self.old_of_new = row_map(model.vocab, vocab)  # new token -> old token, -1: unseen item
        self._known = np.flatnonzero(self.old_of_new >= 0)

    def score(self, histories: SequenceArrays, rows: np.ndarray | None = None) -> np.ndarray:
        old = self.old_of_new[np.asarray(histories.tokens, dtype=np.int64)]
        mapped = dataclasses.replace(histories, tokens=np.where(old >= 0, old, UNK).astype(np.int32))
        s = np.asarray(self.model.score(mapped, rows))
        out = np.full((s.shape[0], len(self.vocab)), -np.inf, dtype=s.dtype)
        out[:, self._known] = s[:, self.old_of_new[self._known]]
        return out


class GateConfig(Config):
    """Promote a candidate only if metric >= production's - tolerance and >= floor."""

    metric: str = "ndcg@10"
    tolerance: float = Field(0.005, ge=0)
    floor: float = Field(0.0, ge=0)


@dataclass
class Decision:
    promote: bool
    verdict: str  # "promote" or "keep"
    metric: str
    candidate: float
    production: float | None
    tolerance: float
    floor: float
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def gate(candidate: float, production: float | None, config: GateConfig) -> Decision:
    """The evaluation gate, a pure function of the two scores:

        promote  <=>  candidate >= floor  and  (production is None or candidate >= production - tolerance)

    A NaN candidate (nothing could be scored) is never promoted; a NaN production counts as none.
    `reasons` says which condition decided, with the figures."""
    m, tol, floor = config.metric, config.tolerance, config.floor
    reasons = []
    ok = True
    if candidate is None or math.isnan(candidate):
        return Decision(False, "keep", m, float("nan"), production, tol, floor, [f"the candidate's {m} is undefined (no scored query)"])
    if candidate < floor:
        ok = False
        reasons.append(f"candidate {m} {candidate:.4f} is below the floor {floor:.4f}")
    if production is not None and not math.isnan(production):
        bar = production - tol
        if candidate < bar:
            ok = False
            reasons.append(f"candidate {m} {candidate:.4f} < production {production:.4f} - tolerance {tol:.4f} = {bar:.4f}")
        else:
            reasons.append(f"candidate {m} {candidate:.4f} >= production {production:.4f} - tolerance {tol:.4f}")
    else:
        production = None
        reasons.append("no production model to compare with")
    if ok and candidate >= floor:
        reasons.append(f"candidate {m} {candidate:.4f} >= floor {floor:.4f}")
    return Decision(ok, "promote" if ok else "keep", m, candidate, production, tol, floor, reasons)


PROTOCOL_OF_SPLIT = {
    "temporal": "temporal",
    "leave_last_out": "leave_last_out",
    "random_sequence": "playlist_continuation",
    "strong": "strong",
    "random_holdout": "random_holdout",
}


def eval_ks(protocol: str) -> tuple[int, ...]:
    """The cut-offs evaluate_models measures under `protocol`."""
    # Held-out users are judged at Liang et al.'s cut-offs too (NDCG@100, Recall@20 and @50).
    return (10, 20, 50, 100) if protocol == "strong" else (10, 20)


def measured_metrics(protocol: str) -> list[str]:
    """The metrics evaluate_models reports under `protocol` (segue.evaluation.metrics.per_user_metrics)."""
    from segue.evaluation.metrics import metric_names

    return metric_names(eval_ks(protocol))


def evaluate_models(
    models: Mapping[str, Any], store: str | Path, split: str, *, protocol: str | None = None, reference: str | None = None
) -> dict[str, Any]:
    """Evaluate `models` on `split` in one run; returns {model: {metric: [mean, low, high]}} plus
    "_comparison": {metric: [diff, low, high, p]} of the first model against `reference`, and
    "_queries": the number of queries."""
    from segue.data.store import Store
    from segue.evaluation.evaluator import evaluate
    from segue.evaluation.report import compute_stats

    if protocol is None:
        with Store.open(store) as s:
            s.require_split(split)
            protocol = PROTOCOL_OF_SPLIT.get(s.split_info(split)["kind"], "leave_last_out")
    ks = eval_ks(protocol)
    result = evaluate(models, store, split, protocol=protocol, ks=ks)
    stats = compute_stats(result, n_boot=500, reference=reference or next(iter(models)))
    out: dict[str, Any] = {
        name: {k: [iv.mean, iv.low, iv.high] for k, iv in per.items()} for name, per in stats.intervals.items()
    }
    out["_queries"] = len(result.seq_ids)
    if reference is not None:
        first = next(n for n in models if n != reference)
        out["_comparison"] = {
            k: [c.diff, c.low, c.high, c.p_value] for k, c in stats.comparisons.get(first, {}).items()
        }
    return out
