"""Typed configs of the training loop (the model's, loss's and optimiser's live beside their code)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from segue.config import Config
from segue.data.loader import LoaderConfig


class TrainerConfig(Config):
    """The loop: how long, how often to validate and checkpoint, when to stop."""

    max_steps: int = Field(10_000, ge=1)
    max_epochs: float | None = Field(None, gt=0)  # stop after this many passes (whichever first)
    max_minutes: float | None = Field(None, gt=0)  # wall-clock budget
    seed: int = 0
    loader: LoaderConfig = LoaderConfig()
    eval_every: int = Field(500, ge=1)  # steps between validations
    eval_max_users: int = Field(5_000, ge=1)  # validation rows scored (a fixed seeded sample)
    eval_batch_size: int = Field(256, ge=1)
    metric: str = "ndcg@10"  # early stopping and best checkpoint: ndcg@10 or hr@10 (higher is better)
    patience: int | None = Field(10, ge=1)  # evaluations without improvement before stopping
    checkpoint_every: int = Field(1_000, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    log_every: int = Field(50, ge=1)  # tensorboard scalars
    progress: bool = True  # rich progress bar
    # "train+valid": refit once settings and step count are chosen on a train-only run. The
    # validation part joins the training sequences (the most recent interaction of each history
    # under leave-last-out), so nothing is validated: no early stopping, the last step is kept.
    fit_on: Literal["train", "train+valid"] = "train"
