"""Validation thresholds: a typed config read from TOML (defaults: configs/validation.toml).

The drift defaults were chosen from bench/drift_thresholds.py: each lies above the largest distance
measured between two random halves of the same data (synthetic corpus, ml-100k, beauty; 20 seeds)
and below the distance of a deliberately shifted copy.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from segue.config import Config


class SchemaThresholds(Config):
    max_null_rate_diff: float = Field(0.05, ge=0, le=1)  # |null rate difference| per column
    max_format_mismatch: float = Field(0.01, ge=0, le=1)  # share of values in formats the reference lacks
    ts_max_ratio: float = Field(100.0, ge=1)  # medians of |ts| may differ this many times (s vs ms: 1000)


class DriftThresholds(Config):
    """Largest tolerated Chebyshev distance per feature (see segue.ops.drift.chebyshev)."""

    popularity: float = Field(0.03, ge=0, le=1)
    history_length: float = Field(0.08, ge=0, le=1)
    rating: float = Field(0.05, ge=0, le=1)
    context: float = Field(0.07, ge=0, le=1)  # each context column, unless named in context_columns
    unknown_items: float = Field(0.02, ge=0, le=1)
    new_items: float = Field(0.2, ge=0, le=1)
    events_per_day: float = Field(0.12, ge=0, le=1)
    context_columns: dict[str, float] = {}  # ctx column name (e.g. ctx_device) -> threshold

    def for_feature(self, name: str) -> float:
        if name.startswith("context:"):
            column = name.split(":", 1)[1]
            return self.context_columns.get(column, self.context)
        return float(getattr(self, name))


class Thresholds(Config):
    top_n: int = Field(100, ge=1)  # popularity: the reference's top-N items plus one other bucket
    context_top_n: int = Field(50, ge=1)  # context: the reference's top-N categories plus other
    # Small samples differ by chance: a feature fails only past max(threshold, noise_z x the
    # sampling standard error of its largest bin difference).
    noise_z: float = Field(4.0, ge=0)
    schema_checks: SchemaThresholds = Field(default_factory=SchemaThresholds)
    drift: DriftThresholds = Field(default_factory=DriftThresholds)


def load_thresholds(path: str | Path | None) -> Thresholds:
    """Thresholds from a TOML file, or the defaults when `path` is None."""
    return Thresholds() if path is None else Thresholds.load(path)
