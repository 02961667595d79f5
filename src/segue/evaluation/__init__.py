"""Evaluation: protocols (which histories, which targets), per-user metrics, bootstrap
significance, and reports. Models are only reached through `segue.models.base.Recommender`."""

from segue.evaluation.evaluator import EvalResult, ModelResult, evaluate, evaluate_task
from segue.evaluation.protocols import PROTOCOLS, ProtocolConfig, Task, build_task, resolve_split

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
