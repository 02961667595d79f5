"""Optuna TPE in rounds, and median pruning, rebuilt from the trial records of earlier rounds.

Nothing of Optuna is stored: the records (params, status, value, intermediate values) that the
flow keeps as artifacts are the study. Each round rebuilds an in-memory study from them
(`optuna.trial.create_trial` + `add_trial`), asks `n` new configs at once (TPE with the
constant-liar heuristic, so configs asked together spread out instead of piling on one optimum),
and the next round is told their results by finding them among the records. A trial process
rebuilds the same study to ask Optuna's MedianPruner whether its intermediate validation value is
below the median of the finished trials at the same step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from segue.tuning.space import Param, SearchSpace, Value

STATES = {"ok": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}


def distribution(p: Param) -> Any:
    """The Optuna distribution of a parameter."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.type == "choice":
        return CategoricalDistribution(list(p.choices or []))
    if p.type == "int":
        step = 1 if p.log else int(p.step or 1)
        return IntDistribution(int(p.low), int(p.high), log=p.log, step=step)  # type: ignore[arg-type]
    return FloatDistribution(float(p.low), float(p.high), log=p.log)  # type: ignore[arg-type]


def rebuild_study(space: SearchSpace, records: list[dict[str, Any]], *, sampler: Any = None, pruner: Any = None) -> Any:
    """An in-memory study holding every finished, pruned or failed record (skipped ones, and
    records whose params the space no longer holds, are left out)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    for r in records:
        state = STATES.get(r["status"])
        if state is None or not space.valid(r["params"]):  # skipped, or from an edited space
            continue
        params = r["params"]
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: distribution(space.params[k]) for k in params},
                value=r["value"] if state == "COMPLETE" else None,
                intermediate_values={int(k): float(v) for k, v in (r.get("intermediate") or {}).items()},
                state=getattr(optuna.trial.TrialState, state),
            )
        )
    return study


def suggest(trial: Any, space: SearchSpace) -> dict[str, Value]:
    """Define-by-run: each parameter in file order, only while its condition holds."""
    chosen: dict[str, Value] = {}
    for name, p in space.params.items():
        if not space.active(name, chosen):
            continue
        if p.type == "choice":
            chosen[name] = trial.suggest_categorical(name, list(p.choices or []))
        elif p.type == "int":
            step = 1 if p.log else int(p.step or 1)
            chosen[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log, step=step)  # type: ignore[arg-type]
        else:
            chosen[name] = trial.suggest_float(name, float(p.low), float(p.high), log=p.log)  # type: ignore[arg-type]
    return chosen


def tpe_ask(space: SearchSpace, records: list[dict[str, Any]], n: int, *, round_index: int = 0) -> list[dict[str, Value]]:
    """`n` configs from TPE told every record so far (seeded by the space's seed and the round)."""
    import optuna

    sampler = optuna.samplers.TPESampler(
        seed=space.seed * 1000 + round_index,
        n_startup_trials=max(space.budget.parallel, min(10, space.budget.trials // 3)),
        constant_liar=True,
    )
    study = rebuild_study(space, records, sampler=sampler)
    return [suggest(study.ask(), space) for _ in range(n)]


def median_pruner(space: SearchSpace, records: list[dict[str, Any]]) -> Callable[[int, float], bool]:
    """report(step, value) -> True when Optuna's MedianPruner would stop this trial, judged
    against the finished trials of earlier rounds (never prunes while pruning is off)."""
    if not space.pruning.enabled or space.strategy != "tpe":
        return lambda step, value: False
    import optuna

    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=space.pruning.startup_trials, n_warmup_steps=space.pruning.warmup_steps
    )
    study = rebuild_study(space, records, sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner)
    trial = study.ask()

    def report(step: int, value: float) -> bool:
        trial.report(value, step)
        return bool(trial.should_prune())

    return report


def propose(space: SearchSpace, records: list[dict[str, Any]], round_index: int) -> list[dict[str, Value]]:
    """The configs of round `round_index`: grid and random give all their trials in round 0;
    TPE gives budget.parallel (fewer in the last round), told every earlier record."""
    from segue.tuning.space import grid_configs, random_configs

    if space.strategy == "grid":
        return grid_configs(space) if round_index == 0 else []
    if space.strategy == "random":
        return random_configs(space) if round_index == 0 else []
    left = space.budget.trials - len(records)
    return tpe_ask(space, records, min(space.budget.parallel, left), round_index=round_index) if left > 0 else []


def n_rounds(space: SearchSpace) -> int:
    """Flow runs a strategy needs: one for grid and random, ceil(trials / parallel) for TPE."""
    if space.strategy != "tpe":
        return 1
    return -(-space.budget.trials // space.budget.parallel)
