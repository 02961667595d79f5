"""The training loop: steps, validation, early stopping, checkpoints, logging, exact resume.

A run folder (`train()` writes it; `segue.models.base.load_model(run)` reads it as a model):
    config.toml          the full TrainConfig (reproduces the run)
    model.toml           family "transformer" + its TransformerConfig (the model-folder header)
    vocab.json           the vocabulary of the split
    item_names.json      [name, creator] of each token (for printing continuations)
    weights.npz          the best parameters so far (by the validation metric; the last if none)
    store_checksum.txt   content checksum of the store trained on
    checkpoints/<step>/  Orbax: train state (params, optimiser, item moments, RNG, step) and the
                         loader's iterator state + loop state (best metric, patience, plateau)
    tensorboard/         tensorboardX scalars
    metrics.json         summary: best step/metric, validation history, time, throughput
    curves.png           training loss and validation metrics against steps

Resuming (the default when checkpoints exist) restores the newest checkpoint and continues
exactly: N steps, kill -9, resume, N more steps gives bit-identical parameters to 2N steps.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from pydantic import Field, model_validator

from segue.config import Config
from segue.data.arrays import SequenceArrays, SplitData, compile_split
from segue.data.loader import LoaderConfig, make_train_loader
from segue.data.splits import Part
from segue.data.store import Store
from segue.errors import ConfigError, SegueError
from segue.io import atomic_write_text
from segue.models.base import write_model_header
from segue.models.transformer import (
    ModelConfig,
    SequenceTransformer,
    TransformerConfig,
    TransformerRecommender,
    check_sections,
    save_weights,
)
from segue.training.config import TrainerConfig
from segue.training.evaluate import ValidationSet, evaluate
from segue.training.losses import LossConfig
from segue.training.optim import OptimConfig, PlateauState, plateau_update
from segue.training.step import StepSpec, init_state, make_train_step, network_of


class DataConfig(Config):
    store: str  # path of the store (relative paths: to the config file's folder)
    split: str = "random"


class TrainConfig(Config):
    """A `segue train --config` file: data, run folder, and the model's TransformerConfig sections."""

    name: str = "transformer"
    runs_dir: str = "runs"  # run folder = runs_dir / name (relative: to the config file's folder)
    data: DataConfig
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    base_dir: str | None = Field(None, exclude=True)  # the config file's folder (not saved)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        check_sections(self.loss, self.optim)
        return self

    def transformer_config(self) -> TransformerConfig:
        return TransformerConfig(model=self.model, loss=self.loss, optim=self.optim, trainer=self.trainer)

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() or self.base_dir is None else Path(self.base_dir) / p

    @property
    def run_dir(self) -> Path:
        return self.resolve(self.runs_dir) / self.name


# ---------------------------------------------------------------------------------------------


def training_arrays(data: SplitData, fit_on: str) -> SequenceArrays:
    """The sequences trained on: the split's TRAIN part, or TRAIN with the validation users'
    inputs and VALID targets joined in (each sequence in its time order)."""
    if fit_on == "train":
        return data.train
    parts = (Part.TRAIN, Part.VALID_INPUT, Part.VALID)
    return compile_split(data.store, data.split, parts, vocab=data.vocab)


class Trainer:
    """Trains a SequenceTransformer on `data.train` (or train+valid), validating on VALID."""

    def __init__(
        self,
        config: TransformerConfig,
        data: SplitData,
        run_dir: Path | None = None,
        *,
        progress_callback: Callable[[str, int, int], None] | None = None,
        on_step: Callable[[int], None] | None = None,
        console: Any = None,
    ) -> None:
        self.config = config
        self.data = data
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress_callback = progress_callback
        self.on_step = on_step
        tc = config.trainer
        lc = tc.loader.model_copy(update={"context_length": config.model.context_length})
        self.loader = make_train_loader(training_arrays(data, tc.fit_on), lc, seed=tc.seed)
        steps = tc.max_steps
        if tc.max_epochs is not None:
            steps = min(steps, max(1, math.ceil(tc.max_epochs * self.loader.batches_per_epoch)))
        self.total_steps = steps
        self.spec = StepSpec(
            model=config.model,
            loss=config.loss,
            optim=config.optim,
            vocab_size=len(data.vocab),
            total_steps=steps,
            eop_target=lc.eop_target,
        )
        self.graphdef, self.state = init_state(self.spec, tc.seed)
        self.step_fn = make_train_step(self.spec, self.graphdef)
        # Refitting on train+valid leaves nothing to validate on.
        self.vset = ValidationSet.from_split(data, tc.eval_max_users, seed=tc.seed) if tc.fit_on == "train" else None
        self.history: list[dict[str, float]] = []  # validation results
        self.train_log: list[dict[str, float]] = []  # training scalars every log_every steps
        self.best: float = -math.inf
        self.best_step: int = -1
        self.bad_evals = 0
        self.plateau = PlateauState(-math.inf, 0, 1.0)
        self.skipped = 0
        self.elapsed = 0.0
        self.tokens = 0
        self._best_params: Any = None
        self.console = console
        self.manager = None
        if self.run_dir is not None:
            import orbax.checkpoint as ocp

            self.manager = ocp.CheckpointManager(
                (self.run_dir / "checkpoints").absolute(),
                options=ocp.CheckpointManagerOptions(max_to_keep=tc.keep_checkpoints, create=True),
            )

    # --- checkpoints --------------------------------------------------------------------------
    def _loop_state(self) -> dict[str, Any]:
        return {
            "loader": self.loader.get_state(),
            "history": self.history,
            "train_log": self.train_log,
            "best": self.best if math.isfinite(self.best) else None,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
            "plateau": list(self.plateau) if math.isfinite(self.plateau.best) else [None, *self.plateau[1:]],
            "skipped": self.skipped,
            "elapsed": self.elapsed,
            "tokens": self.tokens,
        }

    def save_checkpoint(self) -> None:
        import orbax.checkpoint as ocp

        step = int(self.state["step"])
        self.manager.save(
            step,
            args=ocp.args.Composite(
                # A host copy: the next step donates (overwrites) the device buffers while the
                # asynchronous save may still be writing.
                state=ocp.args.StandardSave(jax.tree_util.tree_map(np.array, self.state)),
                loop=ocp.args.JsonSave(self._loop_state()),
            ),
        )

    def restore_latest(self) -> int | None:
        """Restore the newest checkpoint, if any; returns its step."""
        import orbax.checkpoint as ocp

        if self.manager is None:
            return None
        step = self.manager.latest_step()
        if step is None:
            return None
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, self.state)
        got = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), loop=ocp.args.JsonRestore())
        )
        self.state = got["state"]
        loop = got["loop"]
        self.loader.set_state(loop["loader"])
        self.history = loop["history"]
        self.train_log = loop["train_log"]
        self.best = -math.inf if loop["best"] is None else loop["best"]
        self.best_step = loop["best_step"]
        self.bad_evals = loop["bad_evals"]
        pb, pbad, pscale = loop["plateau"]
        self.plateau = PlateauState(-math.inf if pb is None else pb, pbad, pscale)
        self.skipped = loop["skipped"]
        self.elapsed = loop["elapsed"]
        self.tokens = loop["tokens"]
        return step

    # --- validation ---------------------------------------------------------------------------
    def validate(self) -> dict[str, float] | None:
        if self.vset is None:
            return None
        net = network_of(self.graphdef, self.state, average=True)
        graphdef, state = nnx.split(net)
        tc = self.config.trainer
        res = evaluate(
            graphdef,
            state,
            self.vset,
            context_length=self.config.model.context_length,
            batch_size=tc.eval_batch_size,
            n_negatives=self.config.loss.n_negatives,
            eop_class=self.spec.eop_target,
            seed=tc.seed,
        )
        res["step"] = int(self.state["step"])
        return res

    def best_network(self) -> SequenceTransformer:
        """The network with the best validation parameters (the current ones if never validated)."""
        net = network_of(self.graphdef, self.state, average=True)
        if self._best_params is not None:
            nnx.update(net, self._best_params)
        return net

    # --- the loop -----------------------------------------------------------------------------
    def fit(self, resume: bool = True) -> dict[str, Any]:
        tc = self.config.trainer
        start = (self.restore_latest() if resume else None) or 0
        if start and self.run_dir is not None and (self.run_dir / "weights.npz").exists():
            from segue.models.transformer import load_weights

            self._best_params = nnx.state(load_weights(network_of(self.graphdef, self.state), self.run_dir / "weights.npz"), nnx.Param)
        self.resumed_from = start
        writer = None
        if self.run_dir is not None:
            from tensorboardX import SummaryWriter

            writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        progress = _Progress(tc.progress, self.total_steps, start, self.console)
        step = start
        pending: list[dict[str, jax.Array]] = []
        t_last = time.perf_counter()
        t_start = time.perf_counter() - self.elapsed
        stop_reason = "max_steps"
        try:
            while step < self.total_steps:
                batch = next(self.loader)
                self.state, met = self.step_fn(
                    self.state, batch["inputs"], batch["targets"], batch["mask"], jnp.float32(self.plateau.scale)
                )
                step += 1
                pending.append(met)
                if self.on_step is not None:
                    self.on_step(step)
                if step % tc.log_every == 0 or step == self.total_steps:
                    got = jax.device_get(pending)
                    pending = []
                    now = time.perf_counter()
                    toks = int(sum(int(m["tokens"]) for m in got))
                    self.tokens += toks
                    skipped = [m for m in got if bool(m["skipped"])]
                    if skipped:
                        self.skipped += len(skipped)
                        progress.warn(f"skipped {len(skipped)} step(s) with a non-finite loss or gradient (up to step {step})")
                    finite = [float(m["loss"]) for m in got if not bool(m["skipped"])]
                    rate = toks / max(1e-9, now - t_last)
                    rec = {
                        "step": step,
                        "loss": float(np.mean(finite)) if finite else float("nan"),
                        "lr": float(got[-1]["lr"]),
                        "grad_norm": float(got[-1]["grad_norm"]),
                        "tokens_per_s": rate,
                        "temperature": float(got[-1]["temperature"]),
                    }
                    self.train_log.append(rec)
                    t_last = now
                    if writer is not None:
                        for k, v in rec.items():
                            if k != "step":
                                writer.add_scalar(f"train/{k}", v, step)
                    progress.update(step, rec["loss"], rate)
                    if self.progress_callback is not None:
                        self.progress_callback("train", step, self.total_steps)
                self.elapsed = time.perf_counter() - t_start
                last = step == self.total_steps
                if tc.max_minutes is not None and self.elapsed > 60 * tc.max_minutes:
                    stop_reason, last = "max_minutes", True  # validate and checkpoint, then stop
                if step % tc.eval_every == 0 or last:
                    res = self.validate()
                    if res is not None:
                        self.history.append(res)
                        if writer is not None:
                            for k, v in res.items():
                                if k != "step":
                                    writer.add_scalar(f"valid/{k.replace('@', '_at_')}", v, step)
                        metric = res.get(tc.metric)
                        if metric is None:
                            raise ConfigError(f"trainer: field 'metric' is '{tc.metric}' (expected hr@10 or ndcg@10)")
                        progress.print(
                            f"step {step}: valid {tc.metric} {metric:.4f}  exact CE {res['exact_ce']:.3f}  "
                            f"sampled CE {res['sampled_ce']:.3f}  corrected CE {res['corrected_ce']:.3f}"
                        )
                        if metric > self.best:
                            self.best, self.best_step, self.bad_evals = metric, step, 0
                            self._keep_best()
                        else:
                            self.bad_evals += 1
                        self.plateau = plateau_update(self.plateau, metric, self.config.optim)
                        if tc.patience is not None and self.bad_evals >= tc.patience:
                            stop_reason = "early_stopping"
                            last = True
                if self.manager is not None and (step % tc.checkpoint_every == 0 or last):
                    self.save_checkpoint()
                if last:
                    break
        finally:
            progress.close()
            if self.manager is not None:
                self.manager.wait_until_finished()
            if writer is not None:
                writer.close()
        if self._best_params is None:
            self._keep_best()
        self.stop_reason = stop_reason
        return self.summary()

    def _keep_best(self) -> None:
        net = network_of(self.graphdef, self.state, average=True)
        self._best_params = jax.tree_util.tree_map(lambda x: np.array(x), nnx.state(net, nnx.Param))
        if self.run_dir is not None:
            save_weights(net, self.run_dir / "weights.npz")

    def summary(self) -> dict[str, Any]:
        log = self.train_log
        rates = [r["tokens_per_s"] for r in log[1:]] or [r["tokens_per_s"] for r in log]
        return {
            "steps": int(self.state["step"]),
            "total_steps": self.total_steps,
            "stop_reason": getattr(self, "stop_reason", None),
            "resumed_from": getattr(self, "resumed_from", 0),
            "best_step": self.best_step,
            "best_metric": self.best if math.isfinite(self.best) else None,
            "metric": self.config.trainer.metric,
            "best_valid": next((h for h in self.history if h["step"] == self.best_step), None),
            "skipped_steps": self.skipped,
            "train_seconds": self.elapsed,
            "tokens": self.tokens,
            "tokens_per_s": float(np.median(rates)) if rates else None,
            "final_train_loss": log[-1]["loss"] if log else None,
            "epochs": int(self.state["step"]) / self.loader.batches_per_epoch,
            "history": self.history,
        }


class _Progress:
    """A rich progress bar showing loss and tokens/s (or nothing when disabled)."""

    def __init__(self, enabled: bool, total: int, start: int, console: Any = None) -> None:
        self.bar = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.3f}  {task.fields[rate]:,.0f} tok/s"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self.task = self.bar.add_task("train", total=total, completed=start, loss=float("nan"), rate=0.0)
            self.bar.start()

    def update(self, step: int, loss: float, rate: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=loss, rate=rate)

    def print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text)

    def warn(self, text: str) -> None:
        """Always shown (on stderr when the bar is off)."""
        if self.bar is not None:
            self.bar.console.print(f"[yellow]{text}")
        else:
            from rich.console import Console

            Console(stderr=True).print(f"[yellow]warning:[/] {text}", highlight=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


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


def load_train_config(config: str | Path | TrainConfig) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    path = Path(config)
    cfg = TrainConfig.load(path)
    return cfg.model_copy(update={"base_dir": str(path.parent.resolve())})


def train(
    config: str | Path | TrainConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = True,
    on_step: Callable[[int], None] | None = None,
    console: Any = None,
) -> Path:
    """Train the transformer described by a TrainConfig (or its TOML file); return the run folder.

    The run folder is `run_dir` if given, else runs_dir/name. With resume (default) a run folder
    holding checkpoints continues from the newest one; its config.toml must match.
    """
    cfg = load_train_config(config)
    run = Path(run_dir) if run_dir is not None else cfg.run_dir
    store_path = cfg.resolve(cfg.data.store)
    saved = run / "config.toml"
    if saved.exists() and resume:
        old = TrainConfig.load(saved)
        if _comparable(old) != _comparable(cfg):
            raise ConfigError(
                f"{run}: holds a run with another config; choose another name or runs_dir, or delete it"
            )
    Store.open(store_path).close()  # a missing or unreadable store fails before anything is written
    run.mkdir(parents=True, exist_ok=True)
    if not resume:  # a fresh start: nothing of an earlier run may be mistaken for this one
        import shutil

        for name in ("checkpoints", "tensorboard"):
            shutil.rmtree(run / name, ignore_errors=True)
        for name in ("weights.npz", "metrics.json", "curves.png", "model.toml"):
            (run / name).unlink(missing_ok=True)
    cfg.save(saved)
    store = Store.open(store_path)
    try:
        data = SplitData.load(store, cfg.data.split)
        data.vocab.save(run / "vocab.json")
        from segue.training.continuation import ITEM_NAMES_FILE, save_item_names

        save_item_names(store, data.vocab, run / ITEM_NAMES_FILE)
        atomic_write_text(run / "store_checksum.txt", store.checksum + "\n")
        tcfg = cfg.transformer_config()
        trainer = Trainer(tcfg, data, run, on_step=on_step, console=console)
        summary = trainer.fit(resume=resume)
        rec = TransformerRecommender(tcfg, data.vocab)
        rec.meta = {"run": str(run), "best_step": summary["best_step"], "store_checksum": store.checksum}
        write_model_header(rec, run)
        atomic_write_text(run / "metrics.json", json.dumps(summary | {"store_checksum": store.checksum}, indent=2, default=float))
        plot_curves(trainer.train_log, trainer.history, run / "curves.png", metric=tcfg.trainer.metric)
    finally:
        store.close()
    return run


def _comparable(cfg: TrainConfig) -> dict[str, Any]:
    d = cfg.model_dump(mode="json", exclude={"base_dir"})
    # A longer or shorter budget is a legitimate change on resume.
    for k in ("max_steps", "max_epochs", "max_minutes", "progress", "patience"):
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
        ax.plot(s, [h["exact_ce"] for h in history], "o-", label="valid exact CE")
        ax.plot(s, [h["corrected_ce"] for h in history], "x--", label="valid corrected sampled CE")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.legend()
    ax = axes[1]
    if history:
        s = [h["step"] for h in history]
        for key in sorted(k for k in history[0] if "@" in k):
            ax.plot(s, [h[key] for h in history], "o-", label=f"valid {key}")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_title(f"validation ({metric} selects the best checkpoint)")
    fig.tight_layout()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


__all__ = ["TrainConfig", "DataConfig", "Trainer", "train", "quick_config", "load_train_config", "plot_curves", "SegueError", "LoaderConfig"]
