"""Operations: data validation between training and serving (and between imports), with drift
alerts. `validate_feature_log` is the entry point for the server's scheduled check."""

from segue.ops.drift import chebyshev
from segue.ops.eventset import EventSet, load, parse_spec
from segue.ops.thresholds import Thresholds, load_thresholds
from segue.ops.validation import FeatureCheck, Result, validate, validate_feature_log, write_result

__all__ = [
    "EventSet",
    "FeatureCheck",
    "Result",
    "Thresholds",
    "chebyshev",
    "load",
    "load_thresholds",
    "parse_spec",
    "validate",
    "validate_feature_log",
    "write_result",
]
