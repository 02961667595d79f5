"""Schema checks between a reference and a candidate event set: columns, types, null rates, id
formats, rating scale and timestamp units. Each problem is a `Finding` naming the column, what was
expected (from the reference) and what was found."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from segue.ops.eventset import ITEM, EventSet

_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_URI = re.compile(r"([A-Za-z][\w+.-]*:)+")


@dataclass(frozen=True)
class Finding:
    """A schema difference. severity 'error' fails the validation; 'note' is reported only."""

    column: str
    check: str
    expected: str
    found: str
    severity: str = "error"

    def message(self) -> str:
        return f"column '{self.column}': {self.check}: expected {self.expected}, found {self.found}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self) | {"message": self.message()}


def value_format(text: str) -> str:
    """The format of one id or context value: 'integer', 'number', 'uri <prefix:...:>' or 'text'."""
    if _INTEGER.fullmatch(text):
        return "integer"
    if _NUMBER.fullmatch(text):
        return "number"
    m = _URI.match(text)
    if m and m.end() < len(text):
        return f"uri {m.group(0)}"
    return "text"


def format_shares(values: Iterable[str]) -> dict[str, float]:
    """Share of the values in each format, most common first."""
    counts = Counter(value_format(v) for v in values)
    total = sum(counts.values())
    return {k: c / total for k, c in counts.most_common()} if total else {}


def _describe(shares: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in list(shares.items())[:3]) or "no values"


def check_formats(
    column: str, ref: dict[str, float], cand: dict[str, float], max_mismatch: float
) -> list[Finding]:
    """The candidate's values must be in the reference's formats (up to `max_mismatch` of them)."""
    if not ref or not cand:
        return []
    outside = sum(v for k, v in cand.items() if k not in ref)
    if outside <= max_mismatch:
        return []
    return [Finding(column, "value format", _describe(ref), _describe(cand))]


def check_schema(
    ref: EventSet,
    cand: EventSet,
    *,
    max_null_rate_diff: float,
    max_format_mismatch: float,
    ts_max_ratio: float,
) -> list[Finding]:
    """All schema findings of `cand` against `ref` (see the module docstring)."""
    out: list[Finding] = []
    for name, info in ref.columns.items():
        c = cand.columns.get(name)
        if c is None:
            carried = cand.can_carry(name)
            out.append(
                Finding(
                    name,
                    "column",
                    f"present ({1 - info.null_rate:.0%} non-null in the reference)",
                    "absent" if carried else "absent (this kind of data cannot hold it)",
                    "error" if carried else "note",
                )
            )
            continue
        if c.type != info.type:
            out.append(Finding(name, "type", info.type, c.type))
        if abs(c.null_rate - info.null_rate) > max_null_rate_diff:
            out.append(
                Finding(name, "null rate", f"{info.null_rate:.1%} (+-{max_null_rate_diff:.1%})", f"{c.null_rate:.1%}")
            )
    for name in cand.columns:
        if name not in ref.columns:
            # A feature log stamps each request with its time: not data the reference could hold.
            stamped = name == "ts" and not cand.event_times
            out.append(
                Finding(
                    name,
                    "column",
                    "absent (the reference has no such column)",
                    "present (request times)" if stamped else "present",
                    "note" if stamped else "error",
                )
            )
    out += check_formats(
        ITEM, format_shares(ref.item_id_sample()), format_shares(cand.item_id_sample()), max_format_mismatch
    )
    for name in ref.context:
        if name in cand.context:
            out += check_formats(
                name,
                format_shares(ref.category_counts(name)),
                format_shares(cand.category_counts(name)),
                max_format_mismatch,
            )
    if ref.rating is not None and cand.rating is not None:
        out += check_rating_scale(ref.rating, cand.rating)
    if ref.ts is not None and cand.ts is not None:
        out += check_time_scale(ref.ts, cand.ts, ts_max_ratio)
    return out


def check_rating_scale(ref: np.ndarray, cand: np.ndarray) -> list[Finding]:
    """Candidate ratings must lie within the reference's [min, max] and be whole numbers if the
    reference's are."""
    r, c = ref[~np.isnan(ref)], cand[~np.isnan(cand)]
    if not len(r) or not len(c):
        return []
    out = []
    lo, hi = float(r.min()), float(r.max())
    if c.min() < lo or c.max() > hi:
        out.append(Finding("rating", "scale", f"values in [{lo:g}, {hi:g}]", f"values in [{c.min():g}, {c.max():g}]"))
    r_int = bool(np.all(r == np.round(r)))
    if r_int and not np.all(c == np.round(c)):
        share = float(np.mean(c != np.round(c)))
        out.append(Finding("rating", "integrality", "whole numbers", f"{share:.1%} fractional values"))
    return out


def check_time_scale(ref: np.ndarray, cand: np.ndarray, max_ratio: float) -> list[Finding]:
    """Timestamps in the same unit: the medians of |ts| may differ by at most `max_ratio` times
    (seconds against milliseconds differ by 1000)."""
    r, c = np.abs(ref[~np.isnan(ref)]), np.abs(cand[~np.isnan(cand)])
    if not len(r) or not len(c):
        return []
    mr, mc = float(np.median(r)), float(np.median(c))
    if mr <= 0 or mc <= 0:
        return []
    ratio = max(mr, mc) / min(mr, mc)
    if ratio <= max_ratio:
        return []
    return [
        Finding(
            "ts",
            "unit",
            f"unix seconds like the reference (median {mr:.4g})",
            f"median {mc:.4g} ({ratio:.0f} times {'larger' if mc > mr else 'smaller'})",
        )
    ]
