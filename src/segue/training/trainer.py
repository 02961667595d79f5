"""The training loop: steps, validation, early stopping, checkpoints, logging, exact resume.

One loop for every neural family: `Trainer` runs a `TrainTask` (segue.training.task), which holds
the family's state, step, batches and validation (segue.training.transformer_task,
segue.training.autoencoder_task).

A run folder (`train()` writes it; `segue.models.base.load_model(run)` reads it as a model):
    config.toml          the full TrainConfig (reproduces the run)
    model.toml           the family + its typed config (the model-folder header)
    vocab.json           the vocabulary of the split
    item_names.json      [name, creator] of each token (for printing continuations)
    weights.npz          the best parameters so far (by the validation metric; the last if none)
    store_checksum.txt   content checksum of the store trained on
    checkpoints/<step>/  Orbax: train state (params, optimiser, moments, RNG, step) and the
                         loader's iterator state + loop state (best metric, patience, plateau)
    tensorboard/         tensorboardX scalars
    metrics.json         summary: best step/metric, validation history, time, throughput
    curves.png           training loss and validation metrics against steps

Resuming (the default when checkpoints exist) restores the newest checkpoint and continues
exactly: N steps, kill -9, resume, N more steps gives bit-identical parameters to 2N steps.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from pydantic import Field, field_validator

from segue.config import Config
from segue.data.arrays import SplitData
from segue.data.loader import LoaderConfig
from segue.data.store import Store
from segue.errors import ConfigError, SegueError
from segue.io import atomic_write_text, require_writable
from segue.models.base import BaseRecommender, model_class, write_model_header
from segue.models.transformer import TransformerConfig
from segue.training.optim import PlateauState, plateau_update
from segue.training.task import TASKS, TrainTask, task_factory
from segue.training.transformer_task import training_arrays  # noqa: F401  (re-exported)


class DataConfig(Config):
    store: str  # path of the store (relative paths: to the config file's folder)
    split: str = "random"


class RunConfig(Config):
    """The run's own fields of a `segue train --config` file; the family's sections sit beside them."""

    name: str = "transformer"
    runs_dir: str = "runs"  # run folder = runs_dir / name (relative: to the config file's folder)
    family: str = "transformer"
    data: DataConfig
    base_dir: str | None = Field(None, exclude=True)  # the config file's folder (not saved)
    source: str | None = Field(None, exclude=True)  # the config file, for messages (not saved)

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, name: str) -> str:
        # the run folder is runs_dir / name: "" trained into runs_dir itself, "../../x" outside it
        if not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0"):
            raise ValueError(f"got {name!r}; expected one folder name (not empty, no '/', not '.' or '..'), e.g. name = \"sasrec-ml\"")
        return name

    def family_config(self) -> Config:
        """The model's typed config (the sections of the family's config class)."""
        cls = model_class(self.family).config_class
        return cls.model_validate({k: getattr(self, k) for k in cls.model_fields})

    def resolve(self, path: str) -> Path:
        """`path`, relative to the config file's folder; normalised, so that messages and run
        records read /x/runs, not /x/configs/../runs."""
        p = Path(path)
        return p if p.is_absolute() or self.base_dir is None else Path(os.path.normpath(Path(self.base_dir) / p))

    @property
    def run_dir(self) -> Path:
        return self.resolve(self.runs_dir) / self.name

    def with_trainer(self, **update: Any) -> RunConfig:
        """A copy with trainer fields replaced (validated)."""
        trainer = self.trainer.model_copy(update=update)  # type: ignore[attr-defined]
        type(trainer).model_validate(trainer.model_dump())
        return self.model_copy(update={"trainer": trainer})


class TrainConfig(RunConfig, TransformerConfig):
    """A transformer's `segue train --config` file: data, run folder, and its TransformerConfig sections."""

    def transformer_config(self) -> TransformerConfig:
        return TransformerConfig.model_validate({k: getattr(self, k) for k in TransformerConfig.model_fields})


@functools.cache
def train_config_class(family: str) -> type[RunConfig]:
    """The TrainConfig class of a trainable family: RunConfig fields plus the family's sections."""
    if family == "transformer":
        return TrainConfig
    if family not in TASKS:
        raise ConfigError(f"field 'family': '{family}' cannot be trained (trainable: {', '.join(sorted(TASKS))})")
    base = model_class(family).config_class
    return type(f"{base.__name__}TrainConfig", (RunConfig, base), {"__doc__": f"A {family} run's config file."})


def parse_train_config(data: dict[str, Any], *, source: str = "<dict>") -> RunConfig:
    """A TrainConfig of the family the data names (`family`, default transformer)."""
    family = data.get("family", "transformer")
    if not isinstance(family, str):
        raise ConfigError(f"{source}: field 'family': expected a family name, got {family!r}")
    cls = train_config_class(family)
    data = data if "name" in data else {**data, "name": family}
    return cls.from_dict(data, source=source)


class Trainer:
    """Runs a family's `TrainTask`: the loop, validation, early stopping, checkpoints, resume."""

    def __init__(
        self,
        task: TrainTask,
        run_dir: Path | None = None,
        *,
        progress_callback: Callable[[str, int, int], None] | None = None,
        on_step: Callable[[int], None] | None = None,
        console: Any = None,
    ) -> None:
        self.task = task
        self.config = task.trainer
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress_callback = progress_callback
        self.on_step = on_step
        self.loader = task.loader
        self.total_steps = task.total_steps
        self.state = task.init_state()
        self.history: list[dict[str, float]] = []  # validation results
        self.train_log: list[dict[str, float]] = []  # training scalars every log_every steps
        # the loop keeps sign * metric, so higher is better for minimised metrics too (rmse, ce)
        self.sign = -1.0 if lower_is_better(self.config.metric) else 1.0
        self.tie_sign = -1.0 if self.config.tiebreak and lower_is_better(self.config.tiebreak) else 1.0
        self.best: float = -math.inf  # the best sign * metric so far
        self.best_step: int = -1  # the kept parameters' step (weights.npz)
        self.kept: float = -math.inf  # their sign * metric (= best without a tiebreak)
        self.kept_tie: float = -math.inf  # their tie_sign * tiebreak
        self.bad_evals = 0
        self.plateau = PlateauState(-math.inf, 0, 1.0)
        self.skipped = 0
        self.elapsed = 0.0
        self.units = 0
        self._best_params: Any = None
        self.console = console
        self.stop_reason: str | None = None
        self.resumed_from = 0
        self.saved_horizon: int | None = None  # the step limit the restored checkpoint was written under
        self.manager = None
        if self.run_dir is not None:
            import orbax.checkpoint as ocp

            self.manager = ocp.CheckpointManager(
                (self.run_dir / "checkpoints").absolute(),
                options=ocp.CheckpointManagerOptions(max_to_keep=self.config.keep_checkpoints, create=True),
            )

    @property
    def limit(self) -> str:
        """The setting that sets the step limit: max_steps or max_epochs."""
        return getattr(self.task, "limit", "max_steps")

    # --- checkpoints --------------------------------------------------------------------------
    def _loop_state(self) -> dict[str, Any]:
        return {
            "loader": self.loader.get_state(),
            "history": self.history,
            "train_log": self.train_log,
            "best": self.best if math.isfinite(self.best) else None,
            "best_step": self.best_step,
            "kept": [x if math.isfinite(x) else None for x in (self.kept, self.kept_tie)],
            "bad_evals": self.bad_evals,
            "plateau": list(self.plateau) if math.isfinite(self.plateau.best) else [None, *self.plateau[1:]],
            "skipped": self.skipped,
            "elapsed": self.elapsed,
            "tokens": self.units,
            "stop_reason": self.stop_reason,
            "total_steps": self.total_steps,  # the schedule's horizon, so a resume can say it moved
        }

    def save_checkpoint(self) -> None:
        import orbax.checkpoint as ocp

        step = int(self.state["step"])
        items: dict[str, Any] = {
            # A host copy: the next step donates (overwrites) the device buffers while the
            # asynchronous save may still be writing.
            "state": ocp.args.StandardSave(jax.tree_util.tree_map(_snapshot, self.state)),
            "loop": ocp.args.JsonSave(self._loop_state()),
        }
        if self._best_params is not None:
            # The kept (best) parameters as of this step: weights.npz may already hold a later
            # best when a run is killed before its next checkpoint, so resuming reads these.
            items[BEST_ITEM] = ocp.args.StandardSave(jax.tree_util.tree_map(np.asarray, self._best_params))
        self.manager.save(step, args=ocp.args.Composite(**items))

    def restore_latest(self) -> int | None:
        """Restore the newest checkpoint, if any; returns its step."""
        import orbax.checkpoint as ocp

        if self.manager is None:
            return None
        step = self.manager.latest_step()
        if step is None:
            return None
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, self.state)
        items: dict[str, Any] = {"state": ocp.args.StandardRestore(target), "loop": ocp.args.JsonRestore()}
        has_best = (self.manager.directory / str(step) / BEST_ITEM).exists()  # checkpoints before it: none
        if has_best:
            best = nnx.state(self.task.network(self.state, average=True), nnx.Param)
            items[BEST_ITEM] = ocp.args.StandardRestore(jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, best))
        got = self.manager.restore(step, args=ocp.args.Composite(**items))
        self.state = got["state"]
        if has_best:
            self._best_params = jax.tree_util.tree_map(np.asarray, got[BEST_ITEM])
        loop = got["loop"]
        self.loader.set_state(loop["loader"])
        self.history = loop["history"]
        self.train_log = loop["train_log"]
        self.best = -math.inf if loop["best"] is None else loop["best"]
        self.best_step = loop["best_step"]
        kept, kept_tie = loop.get("kept", [loop["best"], None])  # checkpoints before tiebreaks
        self.kept = -math.inf if kept is None else kept
        self.kept_tie = -math.inf if kept_tie is None else kept_tie
        self.bad_evals = loop["bad_evals"]
        pb, pbad, pscale = loop["plateau"]
        self.plateau = PlateauState(-math.inf if pb is None else pb, pbad, pscale)
        self.skipped = loop["skipped"]
        self.elapsed = loop["elapsed"]
        self.units = loop["tokens"]
        self.stop_reason = loop.get("stop_reason")
        self.saved_horizon = loop.get("total_steps")  # None in checkpoints written before it
        return step

    # --- validation ---------------------------------------------------------------------------
    def validate(self) -> dict[str, float] | None:
        res = self.task.validate(self.state)
        if res is not None:
            res["step"] = int(self.state["step"])
        return res

    def best_network(self) -> Any:
        """The network with the best validation parameters (the current ones if never validated)."""
        net = self.task.network(self.state, average=True)
        if self._best_params is not None:
            nnx.update(net, self._best_params)
        return net

    # --- the loop -----------------------------------------------------------------------------
    def fit(self, resume: bool = True) -> dict[str, Any]:
        tc = self.config
        start = (self.restore_latest() if resume else None) or 0
        if start and self._best_params is None and self.run_dir is not None and (self.run_dir / "weights.npz").exists():
            # A checkpoint written before checkpoints carried the best parameters: weights.npz is
            # the best known (possibly of a later step). Loaded into a copy of the state, never
            # into the training state itself, which must stay the checkpoint's.
            copy = jax.tree_util.tree_map(lambda x: x, self.state)
            net = self.task.load_weights(self.task.network(copy), self.run_dir / "weights.npz")
            self._best_params = jax.tree_util.tree_map(np.array, nnx.state(net, nnx.Param))
        self.resumed_from = start
        if start and start < self.total_steps:
            self._say_horizon(start)
        early_stopped = self.stop_reason == "early_stopping" and tc.patience is not None and self.bad_evals >= tc.patience
        if start >= self.total_steps or early_stopped:
            # Nothing left to do: say which limit holds, instead of running zero steps.
            self.stop_reason = "early_stopping" if early_stopped else self.limit
            if self._best_params is None:
                self._keep_best()
            return self.summary()
        writer = None
        # One writer per run folder: in a multi-process run every process holds the same (replicated)
        # scalars, and processes on one host would write the same events file name.
        if self.run_dir is not None and jax.process_index() == 0:
            from tensorboardX import SummaryWriter

            writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        progress = Progress(
            tc.progress, self.total_steps, start, self.console, unit=self.task.unit, max_minutes=tc.max_minutes, elapsed=self.elapsed
        )
        step = start
        t_start = time.perf_counter() - self.elapsed
        stop = _GracefulInterrupt(self.say) if jax.process_count() == 1 else contextlib.nullcontext(None)
        try:
            with stop as interrupt:
                step, stop_reason = self._loop(step, start, interrupt, writer, progress, t_start)
        finally:
            progress.close()
            if self.manager is not None:
                self.manager.wait_until_finished()
            if writer is not None:
                writer.close()
        if stop_reason == "interrupted":
            kept = f"checkpoint {step} written" if self.manager is not None else "nothing kept (no run folder)"
            self.say(f"interrupted at step {step}: {kept}; run the same command to resume from it")
            raise KeyboardInterrupt
        if self._best_params is None:
            self._keep_best()
        self.stop_reason = stop_reason
        return self.summary()

    def say(self, text: str) -> None:
        """A message to the user (the interrupt's, a moved horizon's); a caller that runs training
        as one step of something else (segue retrain) rewords it by overriding this."""
        if self.console is not None:
            self.console.print(f"[yellow]{text}", highlight=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def _loop(self, step: int, start: int, interrupt: Any, writer: Any, progress: Progress, t_start: float) -> tuple[int, str]:
        """The training steps from `step` to the limit; returns (the last step, why it stopped)."""
        tc = self.config
        pending: list[dict[str, jax.Array]] = []
        t_last = time.perf_counter()
        compile_units = 0
        stop_reason = self.limit
        last_rec: dict[str, float] = {}
        while step < self.total_steps:
            batch = next(self.loader)
            self.state, met = self.task.train_step(self.state, batch, self.plateau.scale)
            step += 1
            pending.append(met)
            if step == start + 1:
                # The first step of a session compiles: keep it out of the throughput window.
                jax.block_until_ready(self.state)
                t_last = time.perf_counter()
                compile_units = int(met["count"])
            if self.on_step is not None:
                self.on_step(step)
            self.elapsed = time.perf_counter() - t_start
            last = step == self.total_steps
            if tc.max_minutes is not None and self.elapsed > 60 * tc.max_minutes:
                stop_reason, last = "max_minutes", True  # validate and checkpoint, then stop
            interrupted = interrupt is not None and interrupt.requested and not last
            # Validation points are log points too, so each progress line carries a fresh loss; so
            # is any stop (a max_minutes stop between log points printed loss nan, 0 tokens/s).
            at_eval = step % tc.eval_every == 0
            if pending and (step % tc.log_every == 0 or last or interrupted or at_eval):
                got = jax.device_get(pending)
                pending = []
                now = time.perf_counter()
                units = int(sum(int(m["count"]) for m in got))
                self.units += units
                skipped = [m for m in got if bool(m["skipped"])]
                if skipped:
                    self.skipped += len(skipped)
                    progress.warn(f"skipped {len(skipped)} step(s) with a non-finite loss or gradient (up to step {step})")
                finite = [float(m["loss"]) for m in got if not bool(m["skipped"])]
                rate = (units - compile_units) / max(1e-9, now - t_last)
                compile_units = 0
                rec = {"step": step, "loss": float(np.mean(finite)) if finite else float("nan")}
                for k, v in got[-1].items():
                    if k not in ("loss", "skipped", "count") and np.ndim(v) == 0:
                        rec[k] = float(v)
                rec[f"{self.task.unit}_per_s"] = rate
                self.train_log.append(rec)
                last_rec = rec
                t_last = now
                if writer is not None:
                    for k, v in rec.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}", v, step)
                progress.update(step, rec["loss"], rate, time.perf_counter() - t_start)
                if self.progress_callback is not None:
                    self.progress_callback("train", step, self.total_steps)
            if interrupted:
                # Checkpoint this step without validating it (a validation an uninterrupted run
                # would not make would change the history, the plateau and the kept best), so
                # resuming goes on exactly as if never stopped.
                self.stop_reason = "interrupted"
                if self.manager is not None:
                    self.save_checkpoint()
                return step, "interrupted"
            if step % tc.eval_every == 0 or last:
                res = self.validate()
                if res is None:
                    progress.validation(step, last_rec.get("loss", float("nan")), tc.metric, None, self.sign * self.best, None, self.elapsed)
                else:
                    self.history.append(res)
                    if writer is not None:
                        for k, v in res.items():
                            if k != "step":
                                writer.add_scalar(f"valid/{k.replace('@', '_at_')}", v, step)
                    metric = res.get(tc.metric)
                    for field, name in (("metric", tc.metric), ("tiebreak", tc.tiebreak)):
                        if name is not None and res.get(name) is None:
                            raise metric_error(None, field, name, (k for k in res if "@" in k or lower_is_better(k)))
                    assert metric is not None
                    tie = None if tc.tiebreak is None else self.tie_sign * res[tc.tiebreak]
                    keep, improved = select(self.sign * metric, tie, self.best, self.kept, self.kept_tie, tc.tolerance)
                    self.best = max(self.best, self.sign * metric)
                    if keep:
                        self.best_step, self.kept = step, self.sign * metric
                        self.kept_tie = -math.inf if tie is None else tie
                        self._keep_best()
                    if improved:
                        self.bad_evals = 0
                    else:
                        self.bad_evals += 1
                    kept = (self.best_step, tc.tiebreak) if tc.tiebreak is not None else None
                    progress.validation(step, last_rec.get("loss", float("nan")), tc.metric, metric, self.sign * self.best, res, self.elapsed, kept)
                    self.plateau = plateau_update(self.plateau, self.sign * metric, self.task.optim)
                    if tc.patience is not None and self.bad_evals >= tc.patience:
                        stop_reason = "early_stopping"
                        last = True
            if last:
                self.stop_reason = stop_reason
            if self.manager is not None and (step % tc.checkpoint_every == 0 or last):
                self.save_checkpoint()
            if last:
                break
        return step, stop_reason

    def _say_horizon(self, start: int) -> None:
        """A resumed run whose step limit moved (--max-steps, max_epochs) under a cosine schedule:
        the learning rate follows the new horizon from here, so the run differs from an
        uninterrupted one of either length. Said, not silently done."""
        old = self.saved_horizon
        if old is None or old == self.total_steps or self.task.optim.schedule == "constant":
            return
        from segue.training.optim import lr_at

        was, now = float(lr_at(self.task.optim, start, old)), float(lr_at(self.task.optim, start, self.total_steps))
        text = (
            f"warning: the cosine schedule's horizon moves from {old} to {self.total_steps} steps on resuming "
            f"at step {start}: the learning rate goes from {was:.3g} to {now:.3g}, so this run will not equal "
            f"an uninterrupted {self.total_steps}-step run (schedule = \"constant\" resumes to any length exactly)"
        )
        self.say(text)

    def _keep_best(self) -> None:
        net = self.task.network(self.state, average=True)
        self._best_params = jax.tree_util.tree_map(lambda x: np.array(x), nnx.state(net, nnx.Param))
        if self.run_dir is not None and jax.process_index() == 0:  # the same parameters in every process
            self.task.save_weights(net, self.run_dir / "weights.npz")

    def summary(self) -> dict[str, Any]:
        log = self.train_log
        key = f"{self.task.unit}_per_s"
        rates = [r[key] for r in log[1:] if key in r] or [r[key] for r in log if key in r]
        return {
            "steps": int(self.state["step"]),
            "total_steps": self.total_steps,
            "limit": self.limit,
            "stop_reason": self.stop_reason,
            "resumed_from": self.resumed_from,
            "best_step": self.best_step,
            "best_metric": self.sign * self.kept if math.isfinite(self.kept) else None,
            "metric": self.config.metric,
            "best_valid": next((h for h in self.history if h["step"] == self.best_step), None),
            "skipped_steps": self.skipped,
            "train_seconds": self.elapsed,
            "unit": self.task.unit,
            self.task.unit: self.units,
            key: float(np.median(rates)) if rates else None,
            "final_train_loss": log[-1]["loss"] if log else None,
            "epochs": int(self.state["step"]) / self.loader.batches_per_epoch,
            "history": self.history,
        }


class _GracefulInterrupt:
    """Ctrl-C during training: the first press asks the loop to stop after the running step (it
    then writes a checkpoint and raises KeyboardInterrupt); a second press stops at once. A
    KeyboardInterrupt raised inside XLA's compile or Orbax's async save instead printed library
    tracebacks and, now and then, crashed the process. Installed only in the main thread and only
    over Python's own handler (a caller's handler, or an ignored SIGINT, is left alone)."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.requested = False
        self._old: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.say("stopping after this step and writing a checkpoint to resume from (Ctrl-C again stops at once)")

    def __enter__(self) -> _GracefulInterrupt | None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return None
        self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def fit_network(model: BaseRecommender, data: SplitData, progress: Callable[[str, int, int], None] | None = None) -> tuple[Any, dict[str, Any]]:
    """Train `model`'s network on `data` without a run folder: (best network, summary).

    segue.models.neural.NeuralRecommender.fit() reaches this by name."""
    task = task_factory(model.family)(model.config, data)
    trainer = Trainer(task, run_dir=None, progress_callback=progress)
    trainer.fit()
    return trainer.best_network(), trainer.summary()


class Progress:
    """Training progress for people: a rich bar on a terminal, plain lines elsewhere.

    The bar's total is the step limit, or the steps that fit in `max_minutes` at the measured
    rate when that comes first. Every validation prints one line (step, loss, validation metric,
    throughput, ETA), unwrapped, so a log file shows progress too.
    """

    def __init__(
        self,
        enabled: bool,
        total: int,
        start: int,
        console: Any = None,
        *,
        unit: str = "tokens",
        max_minutes: float | None = None,
        elapsed: float = 0.0,
        tty: bool | None = None,
    ) -> None:
        from rich.console import Console

        self.console = console if console is not None else Console()
        self.tty = self.console.is_terminal if tty is None else tty
        self.total, self.start, self.unit = total, start, unit
        self.max_seconds = None if max_minutes is None else 60.0 * max_minutes
        self.t0, self.step0 = time.perf_counter() - elapsed, start
        self.elapsed0 = elapsed
        self.rate = 0.0  # units per second
        self.bar = None
        if enabled and self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.3f}  {task.fields[rate]:,.0f} " + unit + "/s  ETA {task.fields[eta]}"),
                console=self.console,
                transient=False,
            )
            self.task = self.bar.add_task("train", total=total, completed=start, loss=float("nan"), rate=0.0, eta="?")
            self.bar.start()

    def eta_seconds(self, step: int, elapsed: float) -> float | None:
        """Seconds left: by the step rate so far in this session, capped by max_minutes."""
        steps_done = step - self.step0
        spent = elapsed - self.elapsed0
        left: float | None = None
        if steps_done > 0 and spent > 0:
            left = (self.total - step) * spent / steps_done
        if self.max_seconds is not None:
            by_time = max(0.0, self.max_seconds - elapsed)
            left = by_time if left is None else min(left, by_time)
        return left

    def expected_total(self, step: int, elapsed: float) -> int:
        """The step the run will stop at: the limit, or where max_minutes ends it at this rate."""
        left = self.eta_seconds(step, elapsed)
        steps_done, spent = step - self.step0, elapsed - self.elapsed0
        if self.max_seconds is None or left is None or steps_done <= 0 or spent <= 0:
            return self.total
        return min(self.total, step + int(left * steps_done / spent))

    def update(self, step: int, loss: float, rate: float, elapsed: float) -> None:
        self.rate = rate
        if self.bar is not None:
            total = self.expected_total(step, elapsed)
            self.bar.update(self.task, completed=step, total=total, loss=loss, rate=rate, eta=_clock(self.eta_seconds(step, elapsed)))

    def validation(
        self,
        step: int,
        loss: float,
        metric: str,
        value: float | None,
        best: float,
        res: dict[str, Any] | None,
        elapsed: float,
        kept: tuple[int, str] | None = None,
    ) -> None:
        """One line per validation (or per eval_every steps when nothing is validated); with a
        tiebreak, `kept` = (the kept checkpoint's step, the tiebreak metric), which may not be
        the best metric's step."""
        total = self.expected_total(step, elapsed)
        parts = [f"step {step}/{total}", f"loss {loss:.4f}"]
        if value is not None:
            keep = f", kept step {kept[0]} by {kept[1]}" if kept is not None else ""
            parts.append(f"valid {metric} {value:.4f} (best {best:.4f}{keep})")
            if res is not None and "exact_ce" in res:
                parts.append(f"exact CE {res['exact_ce']:.3f}")
        else:
            parts.append("not validated")
        parts += [f"{self.rate:,.0f} {self.unit}/s", f"elapsed {_clock(elapsed)}", f"ETA {_clock(self.eta_seconds(step, elapsed))}"]
        self.print("  ".join(parts))

    def print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, highlight=False, soft_wrap=True)
        else:
            # Plain text, never wrapped: log files and CI read one line per event.
            print(text, file=self.console.file, flush=True)

    def warn(self, text: str) -> None:
        """Always shown (on stderr when the bar is off)."""
        if self.bar is not None:
            self.bar.console.print(f"[yellow]{text}", soft_wrap=True)
        else:
            print(f"warning: {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


# ---------------------------------------------------------------------------------------------


def quick_config(store: str | Path, split: str, *, name: str = "transformer", runs_dir: str | Path = "runs", minutes: float = 2.0) -> TrainConfig:
    """A small, fast transformer (2 layers, width 64, sampled logQ softmax) trained for at most
    `minutes` of loop wall time (compiles included): the demo's setting."""
    return TrainConfig.from_dict(
        {
            "name": name,
            "runs_dir": str(runs_dir),
            "data": {"store": str(store), "split": split},
            "model": {"n_layers": 2, "n_heads": 2, "d_model": 64, "d_ff": 128, "dropout": 0.1, "context_length": 50},
            "loss": {"kind": "logq", "n_negatives": 512, "n_inbatch": 128},
            "optim": {"lr": 2e-3, "warmup_steps": 50, "schedule": "constant"},
            "trainer": {
                "max_steps": 100_000,
                "max_minutes": minutes,
                "eval_every": 200,
                "eval_max_users": 1000,
                "patience": 4,
                "checkpoint_every": 1000,
                "keep_checkpoints": 1,
                "loader": {"batch_size": 64, "bucket_lengths": [16, 32, 50]},
            },
        }
    )


def load_train_config(config: str | Path | RunConfig) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    from segue.config import read_toml

    path = Path(config)
    cfg = parse_train_config(read_toml(path), source=str(path))
    return cfg.model_copy(update={"base_dir": str(path.parent.resolve()), "source": str(path)})


def open_split(store: Store, split: str, *, source: str = "data.split") -> SplitData:
    """SplitData of `split`, or an error that lists the store's splits with their kinds."""
    names = store.split_names()
    if split not in names:
        listed = ", ".join(f"'{n}' ({store.split_info(n)['kind']})" for n in names) or "none"
        raise ConfigError(f"{source}: the store {store.path} has no split '{split}'; its splits are: {listed}")
    return SplitData.load(store, split)


def data_warnings(cfg: RunConfig, task: TrainTask, data: SplitData) -> list[str]:
    """Where the data contradicts a setting's stated assumption (the run still goes ahead)."""
    out: list[str] = []
    tc = cfg.trainer  # type: ignore[attr-defined]
    n_rows = int(len(data.train.nonempty()))
    batch = tc.loader.batch_size
    if n_rows < batch:
        out.append(
            f"trainer.loader.batch_size is {batch} but the training part has {n_rows} sequences: every batch is "
            "mostly padding (lower batch_size)"
        )
    loss = getattr(cfg, "loss", None)
    if getattr(loss, "mask_seen", False):
        # mask_seen assumes an item does not come back later in a sequence (each film rated once).
        # Repeats are still targets, but each repeat leaves the partition function of the rest.
        share = repeat_share(data.train)
        if share > 0.05:
            out.append(
                f"loss.mask_seen assumes items rarely repeat within a sequence, but {share:.0%} of training "
                "events repeat an earlier item of their sequence (consider mask_seen = false)"
            )
    if task.total_steps < tc.eval_every and getattr(task, "vset", None) is not None:
        out.append(
            f"trainer.eval_every is {tc.eval_every} but the run stops at step {task.total_steps} "
            f"({task.limit}): it is validated only at its last step"  # type: ignore[attr-defined]
        )
    return out


def metric_error(source: str | None, field: str, name: str, known: Iterable[str]) -> ConfigError:
    """The error for a trainer.metric / tiebreak that validation does not report (`source`: the
    config file, when known)."""
    where = f"{source}: " if source else ""
    return ConfigError(f"{where}trainer: field '{field}' is '{name}' (this family validates: {', '.join(known)})")


def check_validation_metric(cfg: RunConfig, task: TrainTask) -> None:
    """trainer.metric and trainer.tiebreak checked against the task's validation_metrics, before
    any run folder is written (a task without the list is checked at its first validation)."""
    known = getattr(task, "validation_metrics", None)
    if known is None:
        return
    tc = cfg.trainer  # type: ignore[attr-defined]
    for field, name in (("metric", tc.metric), ("tiebreak", tc.tiebreak)):
        if name is not None and name not in known:
            raise metric_error(cfg.source, field, name, known)


def check_same_store(run: Path, store: Store, resume: bool) -> None:
    """A run folder with checkpoints resumes only on the store it was trained on: another store's
    events (a rebuilt store) would meet the checkpoint's vocabulary and loader position, and fail
    deep inside the restore or train on data the folder does not record."""
    recorded = run / "store_checksum.txt"
    if not resume or not recorded.is_file() or not (run / "checkpoints").is_dir() or not any((run / "checkpoints").iterdir()):
        return
    was = recorded.read_text().strip()
    if was and was != store.checksum:
        raise ConfigError(
            f"{run}: was trained on a store with content checksum {was}, but {store.path} now has {store.checksum} "
            "(rebuilt or another store): resume on the same store, or start over with --fresh or another runs_dir"
        )


def repeat_share(arrays: Any) -> float:
    """Share of events whose item already occurred earlier in the same sequence."""
    tokens = np.asarray(arrays.tokens, dtype=np.int64)
    if len(tokens) == 0:
        return 0.0
    rows = np.repeat(np.arange(len(arrays)), np.diff(np.asarray(arrays.offsets)))
    pairs = rows * (int(tokens.max()) + 1) + tokens
    _, first = np.unique(pairs, return_index=True)
    return 1.0 - len(first) / len(tokens)


def train(
    config: str | Path | RunConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = True,
    on_step: Callable[[int], None] | None = None,
    console: Any = None,
) -> Path:
    """Train the model a TrainConfig (or its TOML file) describes; return the run folder.

    The run folder is `run_dir` if given, else runs_dir/name. With resume (default) a run folder
    holding checkpoints continues from the newest one; its config.toml must match. Every check
    of the config against the store runs before anything is written.
    """
    from rich.console import Console

    from segue.training import mesh as M

    M.init_distributed()  # several processes (multi-host): JAX's runtime joins them before any computation
    console = console if console is not None else Console()
    # Every process must train the same config: one started with another (a batch size, a
    # --max-steps) would meet collectives of another shape and abort inside gloo after the run
    # folder is written. Compared before anything is written; ConfigError in every process.
    cfg = M.same_everywhere(lambda: load_train_config(config), _fingerprint)
    run = Path(run_dir) if run_dir is not None else cfg.run_dir
    store_path = cfg.resolve(cfg.data.store)
    saved = run / "config.toml"
    if saved.exists() and resume:
        try:
            old = load_train_config(saved)
        except ConfigError as e:  # said as such: "another config" sent users to --fresh for a readable run
            raise ConfigError(
                f"{run}: its saved config.toml does not load, so the run cannot be resumed ({e}); fix that file, "
                "or start over with --fresh"
            ) from None
        if _comparable(old) != _comparable(cfg):
            raise ConfigError(
                f"{run}: holds a run with another config; choose another name or runs_dir, delete it, or "
                "start over with --fresh"
            )
    store = Store.open(store_path)  # a missing or unreadable store fails before anything is written
    try:
        check_same_store(run, store, resume)
        data = open_split(store, cfg.data.split)
        family_config = cfg.family_config()
        # The task checks its data as it is built (an autoencoder's ratings against its scale, its
        # validation input among them), so every data error comes before the run folder is written.
        task = task_factory(cfg.family)(family_config, data)
        # A check that would otherwise fail at the first validation.
        check_validation_metric(cfg, task)
        for text in data_warnings(cfg, task, data):
            console.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True)
        require_writable(run / "config.toml")  # makes the run folder; one line (not a traceback) where it cannot
        if not resume:  # a fresh start: nothing of an earlier run may be mistaken for this one
            import shutil

            for name in ("checkpoints", "tensorboard"):
                shutil.rmtree(run / name, ignore_errors=True)
            for name in ("weights.npz", "metrics.json", "curves.png", "model.toml"):
                (run / name).unlink(missing_ok=True)
        cfg.save(saved)
        data.vocab.save(run / "vocab.json")
        from segue.training.continuation import ITEM_NAMES_FILE, save_item_names

        save_item_names(store, data.vocab, run / ITEM_NAMES_FILE)
        atomic_write_text(run / "store_checksum.txt", store.checksum + "\n")
        done: list[int] = []

        def stepped(step: int) -> None:
            done[:] = [step]
            if on_step is not None:
                on_step(step)

        trainer = Trainer(task, run, on_step=stepped, console=console)
        try:
            summary = trainer.fit(resume=resume)
        except Exception as e:
            if not M.peer_lost(e):
                raise
            # Another process died: its half of a collective is gone. One message (which process,
            # what the run folder keeps), not the collective's traceback.
            raise M.PeerLost(M.lost_text(run, done[0] if done else None, e)) from None
        if summary["steps"] == trainer.resumed_from and trainer.resumed_from:
            console.print(
                f"[yellow]nothing to train:[/] the run already stopped at step {summary['steps']} by "
                f"{_stop_text(summary, cfg)}",
                highlight=False,
                soft_wrap=True,
            )
        rec = model_class(cfg.family)(family_config, data.vocab)
        rec.meta = {"run": str(run), "best_step": summary["best_step"], "store_checksum": store.checksum}
        write_model_header(rec, run)
        atomic_write_text(run / "metrics.json", json.dumps(summary | {"store_checksum": store.checksum}, indent=2, default=float))
        plot_curves(trainer.train_log, trainer.history, run / "curves.png", metric=cfg.trainer.metric)  # type: ignore[attr-defined]
    finally:
        store.close()
    return run


def lower_is_better(metric: str) -> bool:
    """Errors and cross-entropies (rmse, rating_rmse, exact_ce, ...) are minimised; ranking metrics
    (ndcg@10, hr@10, ...) maximised."""
    return metric in ("rmse", "mae") or metric.endswith(("_rmse", "_mae", "_ce"))


def select(m: float, tie: float | None, best: float, kept: float, kept_tie: float, tolerance: float) -> tuple[bool, bool]:
    """(keep this validation's parameters, count it as an improvement) for a validation of sign *
    metric m (higher is better) and, with a tiebreak, tie_sign * tiebreak `tie`, given the best m so
    far, the kept parameters' m and tie, and the tolerance.

    Without a tiebreak: keep iff m > best. With one, let top = max(best, m); a validation is
    eligible while its m >= top - tolerance. Keep iff this one is eligible and the kept one no
    longer is, or its tie is better than the kept one's. Either a new best m or a new kept
    validation is an improvement (so patience waits while the tiebreak still improves)."""
    if tie is None:
        return m > best, m > best
    top = max(best, m)
    take = m >= top - tolerance and (kept < top - tolerance or tie > kept_tie)
    return take, take or m > best


def _stop_text(summary: dict[str, Any], cfg: RunConfig) -> str:
    """Which limit stopped a run, and how to raise it."""
    tc = cfg.trainer  # type: ignore[attr-defined]
    reason = summary.get("stop_reason")
    if reason == "max_epochs":
        return (
            f"max_epochs = {tc.max_epochs} (= {summary['total_steps']} steps; max_steps is {tc.max_steps}): "
            "raise it with --max-epochs, or pass --max-steps, which lifts max_epochs"
        )
    if reason == "max_steps":
        return f"max_steps = {tc.max_steps}: raise it with --max-steps"
    if reason == "min_epochs":
        return (
            f"min_epochs = {tc.min_epochs} (= {summary['total_steps']} steps, above max_steps = {tc.max_steps}): "
            "raise it, or pass --max-steps, which lifts min_epochs"
        )
    if reason == "early_stopping":
        return f"early stopping (patience {tc.patience} validations without improvement): raise trainer.patience"
    if reason == "max_minutes":
        return f"max_minutes = {tc.max_minutes}: raise it with --max-minutes"
    return str(reason)

BEST_ITEM = "best"  # a checkpoint's item holding the kept parameters (nnx.Param state)


def _snapshot(x: Any) -> Any:
    """A copy of a state leaf that the next (donating) step cannot overwrite: on the host, or, for an
    array split over several processes (which no host holds whole), on its devices."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x.copy()
    return np.array(x)


def _fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """What every process of a multi-process run must agree on: the whole config (its folder aside,
    which may differ between hosts while relative paths in it stay the same)."""
    return cfg.model_dump(mode="json", exclude={"base_dir"})


def _comparable(cfg: RunConfig) -> dict[str, Any]:
    d = cfg.model_dump(mode="json", exclude={"base_dir"})
    # A longer or shorter budget is a legitimate change on resume, and so are the devices
    # (a checkpoint written on N devices restores on M).
    for k in ("max_steps", "max_epochs", "min_epochs", "max_minutes", "progress", "patience", "mesh"):
        d["trainer"].pop(k, None)
    return d


def plot_curves(train_log: list[dict], history: list[dict], path: Path, metric: str = "ndcg@10") -> None:
    """Training loss and validation metrics against steps, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segue.io import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    if train_log:
        ax.plot([r["step"] for r in train_log], [r["loss"] for r in train_log], label="train loss")
    if history:
        s = [h["step"] for h in history]
        # Families validate different losses (the autoencoder has no cross-entropy): plot those present.
        if "exact_ce" in history[0]:
            ax.plot(s, [h["exact_ce"] for h in history], "o-", label="valid exact CE")
        if "corrected_ce" in history[0]:
            ax.plot(s, [h["corrected_ce"] for h in history], "x--", label="valid corrected sampled CE")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    if ax.get_legend_handles_labels()[0]:  # a short run may have logged nothing yet
        ax.legend()
    ax = axes[1]
    if history:
        s = [h["step"] for h in history]
        for key in sorted(k for k in history[0] if "@" in k):
            ax.plot(s, [h[key] for h in history], "o-", label=f"valid {key}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    ax.set_xlabel("step")
    ax.set_title(f"validation ({metric} selects the best checkpoint)")
    fig.tight_layout()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


__all__ = ["TrainConfig", "DataConfig", "Trainer", "train", "quick_config", "load_train_config", "plot_curves", "SegueError", "LoaderConfig"]
