"""Operations: data validation between training and serving (and between imports), with drift
alerts. `validate_feature_log` is the entry point for the server's scheduled check."""

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

_HOMES = {
    "chebyshev": "drift",
    "EventSet": "eventset",
    "load": "eventset",
    "parse_spec": "eventset",
    "Thresholds": "thresholds",
    "load_thresholds": "thresholds",
}


def __getattr__(name: str) -> object:
    # Loaded on first use: `segue validate --help` needs none of numpy, pyarrow or pydantic.
    if name not in __all__:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"segue.ops.{_HOMES.get(name, 'validation')}"), name)
