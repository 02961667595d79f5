"""Evaluation: protocols (which histories, which targets), per-user metrics, bootstrap
significance, and reports. Models are only reached through `segue.models.base.Recommender`."""

__all__ = [
    "PROTOCOLS",
    "EvalResult",
    "ModelResult",
    "ProtocolConfig",
    "Task",
    "build_task",
    "evaluate",
    "evaluate_task",
    "resolve_split",
]


def __getattr__(name: str) -> object:
    # Loaded on first use, so `segue evaluate --help` imports none of the harness.
    if name in ("EvalResult", "ModelResult", "evaluate", "evaluate_task"):
        from segue.evaluation import evaluator

        return getattr(evaluator, name)
    if name in __all__:
        from segue.evaluation import protocols

        return getattr(protocols, name)
    raise AttributeError(name)
