"""What the training loop needs from a neural family: its state, its step, its batches, its checks.

segue.training.trainer.Trainer runs any `TrainTask`: it owns the loop (steps, logging, validation
cadence, early stopping, reduce-on-plateau, best weights, Orbax checkpoints, exact resume), and the
task owns everything family-specific. The transformer's task is segue.training.transformer_task;
the autoencoder's is segue.training.autoencoder_task. `TASKS` maps a family to its task factory,
so a model's `fit()` (segue.models.neural) reaches the loop by family name without the models
layer importing this one.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jax

from segue.data.arrays import SplitData
from segue.errors import SegueError
from segue.models.train_config import OptimConfig, TrainerConfig


class BatchLoader(Protocol):
    """An endless, checkpointable iterator of host batches (segue.data.loader.TrainLoader is one)."""

    @property
    def batches_per_epoch(self) -> int: ...

    def __next__(self) -> dict[str, Any]: ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class TrainTask(Protocol):
    """One family's training program.

    `train_step(state, batch, lr_scale)` returns the new state and metrics that include at least
    `loss`, `grad_norm`, `skipped` (bool: a non-finite step left the state unchanged), `lr` and
    `count` (training units in the batch: tokens, profiles; throughput is count per second). Any
    other scalar metric is logged as it is. The state is a pytree of arrays holding an int32
    `step`; everything in it is checkpointed.
    """

    trainer: TrainerConfig
    optim: OptimConfig  # reduce-on-plateau settings
    loader: BatchLoader
    total_steps: int  # the step limit: trainer.max_steps, or fewer when max_epochs binds
    unit: str  # what `count` counts ("tokens", "profiles"), for progress lines

    def init_state(self) -> dict[str, Any]: ...

    def train_step(self, state: dict[str, Any], batch: dict[str, Any], lr_scale: jax.Array) -> tuple[dict[str, Any], dict[str, jax.Array]]: ...

    def validate(self, state: dict[str, Any]) -> dict[str, float] | None:
        """Validation metrics (higher-is-better ranking metrics like 'ndcg@10' among them), or
        None when there is nothing to validate on."""
        ...

    # Optional: `validation_metrics` (list[str] | None), the names validate() reports, so that
    # trainer.metric and tiebreak are checked before the run folder is written.

    def network(self, state: dict[str, Any], average: bool = False) -> Any:
        """The nnx module of a state (with `average`, its moving-average weights if it keeps them)."""
        ...

    def save_weights(self, network: Any, path: Path) -> None: ...

    def load_weights(self, network: Any, path: Path) -> Any: ...


def total_steps(trainer: TrainerConfig, batches_per_epoch: int) -> tuple[int, str]:
    """The step limit and the setting that sets it: max_steps, lifted to min_epochs passes when
    that is more, then capped at max_epochs passes ('max_steps', 'min_epochs' or 'max_epochs')."""
    steps, binds = trainer.max_steps, "max_steps"
    if trainer.min_epochs is not None:
        at_least = max(1, math.ceil(trainer.min_epochs * batches_per_epoch))
        if at_least > steps:
            steps, binds = at_least, "min_epochs"
    if trainer.max_epochs is not None:
        by_epochs = max(1, math.ceil(trainer.max_epochs * batches_per_epoch))
        if by_epochs < steps:
            steps, binds = by_epochs, "max_epochs"
    return steps, binds


# family -> "module:function" making its task: fn(config, data) -> TrainTask
TASKS: dict[str, str] = {
    # next-item training, or pairwise fine-tuning when the config has a [pairwise] section
    "transformer": "segue.training.pairwise:transformer_task",
    "autoencoder": "segue.training.autoencoder_task:AutoencoderTask",
}


def task_factory(family: str) -> Callable[[Any, SplitData], TrainTask]:
    if family not in TASKS:
        raise SegueError(f"no training task for family '{family}' (trainable: {', '.join(sorted(TASKS))})")
    module, name = TASKS[family].split(":")
    return getattr(importlib.import_module(module), name)
