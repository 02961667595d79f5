"""One trial: fit a family's config on the training part, score the validation part with the
harness, measure what it cost. And the split a trial sees, which cannot reach the test part.

A trial returns a record (a plain dict, stored as a flow artifact):
    number, round, params, config (TOML text), status ("ok", "failed", "pruned", "skipped"),
    value (the space's metric on validation), metrics (every validation mean), intermediate
    ({step: value} of an iterative family's validations), seconds, peak_rss_mb, error, parts
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from segue.data.arrays import SequenceArrays, SplitData
from segue.data.splits import Part
from segue.errors import SegueError
from segue.tuning.space import SearchSpace, Value, family_config


class TrialPruned(Exception):
    """Raised inside a trial's training loop when the median pruner stops it."""


@dataclass
class ValidationOnly(SplitData):
    """A split whose test part cannot be read: what every trial fits and validates on.

    The test part is read once, by the flow's last step, for the best config (and the defaults)."""

    def history(self, target: Part | int) -> SequenceArrays:
        _refuse_test(target)
        return super().history(target)

    def targets(self, target: Part | int) -> SequenceArrays:
        _refuse_test(target)
        return super().targets(target)

    @classmethod
    def of(cls, data: SplitData) -> ValidationOnly:
        return cls(store=data.store, split=data.split, vocab=data.vocab, train=data.train)


def _refuse_test(target: Part | int) -> None:
    if int(target) == int(Part.TEST):
        raise SegueError("a tuning trial may not read the test part (only the best config is tested, once)")


# ---------------------------------------------------------------------------------------------
# cost


class PeakRSS:
    """Peak resident memory (MiB) of this process while the block runs, sampled every 20 ms
    (ru_maxrss would give the peak since the process started, not the block's)."""

    def __init__(self, every: float = 0.02) -> None:
        self.every = every
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:  # not Linux: the process's peak so far
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRSS:
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


@contextlib.contextmanager
def measured() -> Iterator[dict[str, float]]:
    """{"seconds", "peak_rss_mb"} of the block, filled in when it ends (also when it raises)."""
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    rss = PeakRSS().__enter__()
    try:
        yield out
    finally:
        rss.__exit__()
        out["seconds"] = round(time.perf_counter() - t0, 3)
        out["peak_rss_mb"] = round(rss.peak, 1)


# ---------------------------------------------------------------------------------------------
# fitting and validating


def is_iterative(family: str) -> bool:
    """Families trained by segue's loop (validated as they train, so they can be pruned)."""
    from segue.models.base import model_class
    from segue.models.neural import NeuralRecommender

    return issubclass(model_class(family), NeuralRecommender)


def fit_family(
    family: str,
    config: Any,
    data: SplitData,
    report: Callable[[int, float], bool] | None = None,
    metric: str = "ndcg@10",
    intermediate: dict[int, float] | None = None,
    source: str | None = None,
) -> Any:
    """A fitted model of `family`. Iterative families run segue's loop here (not through
    model.fit) so each validation is reported: `report(step, value)` returning True prunes.
    Their trainer.metric / tiebreak are checked before training (else: at the first validation)."""
    from segue.models.base import model_class

    cls = model_class(family)
    if not is_iterative(family):
        return cls(config).fit(data)
    from segue.training.task import task_factory
    from segue.training.trainer import Trainer

    config = config.model_copy(update={"trainer": config.trainer.model_copy(update={"progress": False})})
    task = task_factory(family)(config, data)
    check_trainer_metrics(task, [("metric", config.trainer.metric), ("tiebreak", config.trainer.tiebreak)], source)
    holder: dict[str, Any] = {}
    seen = [0]

    def on_step(step: int) -> None:
        trainer = holder["trainer"]
        for rec in trainer.history[seen[0] :]:
            value = float(rec.get(metric, rec.get(config.trainer.metric, float("nan"))))
            if intermediate is not None:
                intermediate[int(rec["step"])] = value
            if report is not None and report(int(rec["step"]), value):
                raise TrialPruned(f"pruned at step {rec['step']}: validation {metric} {value:.4f} below the median")
        seen[0] = len(trainer.history)

    trainer = Trainer(task, run_dir=None, on_step=on_step)
    holder["trainer"] = trainer
    trainer.fit()
    on_step(-1)  # the last validation is reported too
    model = cls(config, data.vocab)
    model.network = trainer.best_network()
    model.meta = {"train": trainer.summary()}
    return model


def check_trainer_metrics(task: Any, names: list[tuple[str, Any]], source: str | None) -> None:
    """ConfigError for a trainer field ("metric", "tiebreak") naming what the task never validates."""
    from segue.training.trainer import metric_error

    known = getattr(task, "validation_metrics", None)
    if known is None:  # no validation: nothing reads them
        return
    for field, name in names:
        if name is not None and name not in known:
            raise metric_error(source, field, name, known)


def validation_metrics(model: Any, data: SplitData, protocol: str, ks: list[int]) -> dict[str, float]:
    """Means of every metric of `model` on the validation part (the harness's full ranking)."""
    from segue.evaluation.evaluator import evaluate_task
    from segue.evaluation.protocols import ProtocolConfig, build_task

    task = build_task(data, ProtocolConfig(name=protocol, part="valid"))
    res = evaluate_task({"trial": model}, task, ks)["trial"]
    out = {k: res.mean(k) for k in res.per_user}
    out |= {f"coverage@{k}": float(v) for k, v in res.coverage.items()}
    return out


def run_trial(
    space: SearchSpace,
    data: SplitData,
    params: dict[str, Value],
    *,
    number: int,
    round_index: int = 0,
    report: Callable[[int, float], bool] | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Fit and validate one config; never raises for the trial's own failure (the record says
    'failed' with the error). `deadline` (epoch seconds): past it the trial is 'skipped'."""
    record: dict[str, Any] = {
        "number": number,
        "round": round_index,
        "params": dict(params),
        "config": "",
        "status": "ok",
        "value": None,
        "metrics": {},
        "intermediate": {},
        "seconds": 0.0,
        "peak_rss_mb": 0.0,
        "error": None,
        "parts": ["train", "valid"],
        "started_at": time.time(),
        "pid": os.getpid(),
    }
    if deadline is not None and time.time() > deadline:
        record |= {"status": "skipped", "error": "the time budget (budget.minutes) ran out before it started"}
        return record
    data = data if isinstance(data, ValidationOnly) else ValidationOnly.of(data)
    cost: dict[str, float] = {}
    try:
        with measured() as cost:
            config = family_config(space, params, source=f"trial {number}")
            record["config"] = config.to_toml()
            model = fit_family(space.family, config, data, report, space.metric, record["intermediate"], source=f"trial {number}")
            metrics = validation_metrics(model, data, space.protocol, space.ks)
        if space.metric not in metrics:
            raise SegueError(f"metric '{space.metric}' is not measured (measured: {', '.join(sorted(metrics))})")
        value = metrics[space.metric]
        if not np.isfinite(value):
            raise SegueError(f"validation {space.metric} is {value}")
        record |= {"metrics": metrics, "value": float(value)}
    except TrialPruned as e:
        record |= {"status": "pruned", "error": str(e)}
    except Exception as e:  # a bad combination, out of memory, a bug: recorded, the flow goes on
        record |= {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)}
    record |= cost
    record["intermediate"] = {str(k): v for k, v in record["intermediate"].items()}
    return record


def best_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The finished record with the highest validation value (the earliest on ties)."""
    ok = [r for r in records if r["status"] == "ok" and r["value"] is not None]
    return max(ok, key=lambda r: (r["value"], -r["number"])) if ok else None


def no_trial_finished(records: list[dict[str, Any]]) -> str | None:
    """Why there is no best (no record finished), with each distinct error; None when one did."""
    if best_record(records) is not None:
        return None
    counts = {s: sum(r["status"] == s for r in records) for s in ("failed", "pruned", "skipped")}
    errors = list(dict.fromkeys(r["error"] for r in records if r.get("error")))
    text = f"no trial finished ({len(records)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ")"
    return text + "".join(f"\n  {e}" for e in errors[:5])
