"""`segue validate`: compare two event sets (schema and per-feature drift) and say which differ.

    result = validate(load("store:train.duckdb#random/train"), load("log:serving/features"))
    result.passed, result.failures()

Features (each a Chebyshev distance between normalised histograms, with its own threshold):
popularity (the reference's top-N items + other, over events), history_length (log-spaced bins,
over sequences), rating (per value, over rated events), context:<ctx column> (the reference's
top-N categories + other, over observations), unknown_items (share of candidate events whose item
the reference lacks, i.e. <unk>), new_items (share of the candidate's distinct items the reference
lacks), events_per_day (events per sequence per UTC day, log-spaced; needs per-event times).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segue.io import atomic_write_text
from segue.ops import drift
from segue.ops.drift import Histogram
from segue.ops.eventset import EventSet, Spec, load
from segue.ops.schema import Finding, check_schema
from segue.ops.thresholds import Thresholds, load_thresholds

log = logging.getLogger("segue.validate")

# Features whose reference side is zero by construction: no sampling allowance applies.
_NO_ALLOWANCE = ("unknown_items", "new_items")


@dataclass
class FeatureCheck:
    """One feature's comparison. `limit` = max(threshold, allowance) is what the distance must not
    pass; `allowance` is noise_z times the sampling standard error (drift.sampling_noise)."""

    name: str
    distance: float
    threshold: float
    allowance: float
    n_reference: float
    n_candidate: float
    reference: dict[str, float]
    candidate: dict[str, float]
    skipped: str | None = None

    @property
    def limit(self) -> float:
        return max(self.threshold, self.allowance)

    @property
    def passed(self) -> bool:
        return self.skipped is not None or self.distance <= self.limit

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reference"] = {k: round(v, 6) for k, v in self.reference.items()}
        d["candidate"] = {k: round(v, 6) for k, v in self.candidate.items()}
        return d | {"limit": self.limit, "passed": self.passed}


@dataclass
class Result:
    reference: str
    candidate: str
    features: list[FeatureCheck]
    schema: list[Finding]
    thresholds: dict[str, Any]
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    webhook: dict[str, Any] | None = None

    @property
    def schema_errors(self) -> list[Finding]:
        return [f for f in self.schema if f.severity == "error"]

    def failures(self) -> list[FeatureCheck]:
        return [f for f in self.features if not f.passed]

    @property
    def passed(self) -> bool:
        return not self.failures() and not self.schema_errors

    def feature(self, name: str) -> FeatureCheck:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature '{name}' (have: {', '.join(f.name for f in self.features)})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reference": self.reference,
            "candidate": self.candidate,
            "created_at": self.created_at,
            "failed_features": [f.name for f in self.failures()],
            "schema_errors": len(self.schema_errors),
            "features": [f.to_dict() for f in self.features],
            "schema": [f.to_dict() for f in self.schema],
            "thresholds": self.thresholds,
            "webhook": self.webhook,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        """One line: verdict, each failing feature (distance > limit), each schema error."""
        head = f"validate {'PASS' if self.passed else 'FAIL'}: {self.candidate} against {self.reference}"
        parts = [f"{f.name} {f.distance:.4f} > {f.limit:.4f}" for f in self.failures()]
        parts += [f.message() for f in self.schema_errors]
        checked = sum(f.skipped is None for f in self.features)
        tail = f"{checked} features checked, {len(self.failures())} drifted, {len(self.schema_errors)} schema errors"
        return head + f" ({tail})" + (": " + "; ".join(parts) if parts else "")


# --- features --------------------------------------------------------------------------------


def feature_histograms(
    ref: EventSet, cand: EventSet, thresholds: Thresholds
) -> list[tuple[str, Histogram | None, Histogram | None, str | None]]:
    """(name, reference histogram, candidate histogram, reason skipped) for every feature.
    Event-level features cluster their events by sequence (for the sampling allowance)."""
    out: list[tuple[str, Histogram | None, Histogram | None, str | None]] = []
    ref_items, cand_items = ref.item_counts(), cand.item_counts()
    top = drift.top_items(ref_items, thresholds.top_n)
    names = [*top, drift.OTHER]
    out.append(("popularity", *(_popularity(s, top, names) for s in (ref, cand)), None))
    out.append(
        (
            "history_length",
            drift.log_histogram(ref.sequence_lengths()),
            drift.log_histogram(cand.sequence_lengths()),
            None,
        )
    )
    if ref.rating is None or cand.rating is None:
        side = "reference" if ref.rating is None else "candidate"
        out.append(("rating", None, None, f"the {side} has no ratings"))
    else:
        out.append(
            ("rating", drift.value_histogram(ref.rating, ref.seq), drift.value_histogram(cand.rating, cand.seq), None)
        )
    for name in ref.context:
        feature = f"context:{name}"
        if name not in cand.context:
            out.append((feature, None, None, "the candidate has no such column"))
            continue
        counts = ref.category_counts(name)
        cats = drift.top_items(counts, thresholds.context_top_n)
        # Few categories: every candidate category is a bin of its own (a renamed one shows up).
        extra = [] if len(counts) > thresholds.context_top_n else sorted(set(cand.category_counts(name)) - set(cats))
        bins = [*cats, *extra]
        labels = [*bins, drift.OTHER]
        out.append((feature, *(_context(s, name, bins, labels) for s in (ref, cand)), None))
    unknown = sum(c for k, c in cand_items.items() if k not in ref_items)
    out.append(
        (
            "unknown_items",
            drift.share_histogram(0, ref.n_events, drift.UNKNOWN, drift.KNOWN),
            drift.share_histogram(unknown, cand.n_events, drift.UNKNOWN, drift.KNOWN),
            None,
        )
    )
    new = sum(1 for k in cand_items if k not in ref_items)
    out.append(
        (
            "new_items",
            drift.share_histogram(0, len(ref_items), drift.NEW, drift.KNOWN),
            drift.share_histogram(new, len(cand_items), drift.NEW, drift.KNOWN),
            None,
        )
    )
    ref_days, cand_days = ref.events_per_sequence_day(), cand.events_per_sequence_day()
    if ref_days is None or cand_days is None:
        side = "reference" if ref_days is None else "candidate"
        out.append(("events_per_day", None, None, f"the {side} has no per-event timestamps"))
    else:
        out.append(("events_per_day", drift.log_histogram(*ref_days), drift.log_histogram(*cand_days), None))
    return out


def _popularity(s: EventSet, top: list[str], names: list[str]) -> Histogram:
    lookup = drift.top_codes([str(x) for x in s.item_ids.tolist()], top)
    return drift.histogram(lookup[s.item], names, s.seq)


def _context(s: EventSet, name: str, bins: list[str], labels: list[str]) -> Histogram:
    codes, clusters = s.context_codes(name, bins)
    return _drop_other(drift.histogram(codes, labels, clusters))


def _drop_other(h: Histogram) -> Histogram:
    """Without an other bin when nothing fell in it (few categories: all are bins)."""
    if h.counts.get(drift.OTHER, 0.0) > 0:
        return h
    keep = [k for k in h.counts if k != drift.OTHER]
    return Histogram({k: h.counts[k] for k in keep}, {k: h.s2[k] for k in keep}, {k: h.sxn[k] for k in keep}, h.q, h.clusters)


def compare_features(ref: EventSet, cand: EventSet, thresholds: Thresholds) -> list[FeatureCheck]:
    checks = []
    for name, h_ref, h_cand, skipped in feature_histograms(ref, cand, thresholds):
        threshold = thresholds.drift.for_feature(name)
        if skipped is not None or h_ref is None or h_cand is None:
            checks.append(FeatureCheck(name, 0.0, threshold, 0.0, 0, 0, {}, {}, skipped=skipped or "no data"))
            continue
        p, q = h_ref.probabilities(), h_cand.probabilities()
        allowance = 0.0
        if name not in _NO_ALLOWANCE:
            allowance = thresholds.noise_z * drift.sampling_noise(h_ref, h_cand)
        keys, a, b = drift.align(p, q)
        checks.append(
            FeatureCheck(
                name,
                drift.chebyshev(p, q),
                threshold,
                allowance,
                h_ref.n,
                h_cand.n,
                dict(zip(keys, a.tolist(), strict=True)),
                dict(zip(keys, b.tolist(), strict=True)),
            )
        )
    return checks


# --- entry points ----------------------------------------------------------------------------


def validate(
    reference: EventSet | Spec | str,
    candidate: EventSet | Spec | str,
    thresholds: Thresholds | str | Path | None = None,
    *,
    log_summary: bool = True,
) -> Result:
    """Compare `candidate` against `reference` (event sets or specs; see eventset.SPEC_HELP) and
    log the one-line summary (a warning when anything failed) unless `log_summary` is False (the
    server's drift check logs its own alert, once for all workers)."""
    if not isinstance(thresholds, Thresholds):
        thresholds = load_thresholds(thresholds)
    ref = reference if isinstance(reference, EventSet) else load(reference)
    cand = candidate if isinstance(candidate, EventSet) else load(candidate)
    s = thresholds.schema_checks
    result = Result(
        reference=ref.label,
        candidate=cand.label,
        features=compare_features(ref, cand, thresholds),
        schema=check_schema(
            ref,
            cand,
            max_null_rate_diff=s.max_null_rate_diff,
            max_format_mismatch=s.max_format_mismatch,
            ts_max_ratio=s.ts_max_ratio,
        ),
        thresholds=thresholds.model_dump(mode="json"),
    )
    if log_summary:
        log.log(logging.INFO if result.passed else logging.WARNING, result.summary())
    return result


def validate_feature_log(
    reference: EventSet | Spec | str,
    log_folder: str | Path,
    thresholds: Thresholds | str | Path | None = None,
) -> Result:
    """Validate the serving feature log in `log_folder` against `reference` (e.g. the training
    part of the split the served model was trained on). For the server's scheduled check."""
    from segue.ops.eventset import from_feature_log

    return validate(reference, from_feature_log(log_folder), thresholds)


def write_result(result: Result, json_path: str | Path | None = None, html_path: str | Path | None = None) -> None:
    """Write the JSON result and/or the HTML report, each atomically."""
    if json_path is not None:
        atomic_write_text(json_path, result.to_json() + "\n")
    if html_path is not None:
        from segue.ops.report import render_html

        atomic_write_text(html_path, render_html(result))
