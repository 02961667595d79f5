"""Typed configs of neural training (loss, optimiser, loop), shared by every neural family.

They are plain data, so they live in the models layer: a model's config (saved in model.toml) names
its loss, optimiser and loop sections without the models importing the training code that reads
them (segue.training.losses / optim / trainer re-export them).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from segue.config import Config
from segue.data.loader import LoaderConfig

LossKind = Literal["full", "sampled", "label_in_denominator", "logq"]
TAU_MIN, TAU_MAX = 0.01, 100.0


class LossConfig(Config):
    """Which loss trains the model and how candidates are drawn."""

    kind: LossKind = "label_in_denominator"  # trecs' default
    n_negatives: int = Field(256, ge=1)  # uniform negatives shared by the batch
    n_inbatch: int = Field(256, ge=0)  # logq only: candidates drawn from the batch's own targets
    learn_temperature: bool = True  # logq only
    init_temperature: float = Field(1.0, ge=TAU_MIN, le=TAU_MAX)
    # full only: target mass spread uniformly over the V classes (Szegedy et al. 2016); keeps an
    # overfitting model from growing ever more confident on small catalogues.
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # full only: each position's earlier input items leave its partition function (unless one is
    # its target), as they leave the ranking at evaluation and serving (exclude_seen).
    mask_seen: bool = False

    @model_validator(mode="after")
    def _full_only_options(self) -> LossConfig:
        for name in ("label_smoothing", "mask_seen"):
            if getattr(self, name) and self.kind != "full":
                raise ValueError(f"{name} applies to kind 'full' only, not '{self.kind}'")
        if self.label_smoothing and self.mask_seen:
            raise ValueError("label_smoothing and mask_seen do not combine (smoothing mass would fall on masked items)")
        return self



class OptimConfig(Config):
    lr: float = Field(1e-3, gt=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(200, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine: final lr / base lr
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-8
    weight_decay: float = Field(0.01, ge=0)  # dense weight matrices only (not norms, biases, tables)
    clip_norm: float | None = Field(1.0, gt=0)
    sparse_items: Literal["auto", "on", "off"] = "auto"  # auto: on for sampled losses
    plateau_patience: int | None = Field(None, ge=1)  # evaluations without improvement
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    min_plateau_scale: float = Field(1e-2, gt=0)
    # Polyak averaging: validation, the kept best weights and serving use the moving average
    #   a_t = d_t a_{t-1} + (1 - d_t) x_t,  d_t = min(ema_decay, (1 + t) / (10 + t))
    # (the ramp keeps early averages from being dominated by the random init). Dense item updates
    # only: averaging a 2M-row table every step would undo the lazy row-sparse Adam.
    ema_decay: float | None = Field(None, gt=0, lt=1)



class MeshConfig(Config):
    """Devices a run trains on (segue.training.mesh): a ("data", "model") mesh over every process's devices.

    Batches are split over `data`; the item table, its Adam moments and its moving average are
    split by rows over `model` (for catalogues beyond one device's memory); everything else is
    replicated. data x model = 1 (one device) trains exactly as without a mesh."""

    data: int | None = Field(None, ge=1)  # devices on the data axis; None: every device not on the model axis
    model: int = Field(1, ge=1)  # devices the item table's rows are split over


class TrainerConfig(Config):
    """The loop: how long, how often to validate and checkpoint, when to stop."""

    max_steps: int = Field(10_000, ge=1)
    max_epochs: float | None = Field(None, gt=0)  # stop after this many passes (whichever first)
    # Train at least this many passes: lifts max_steps on larger data, so that a step budget tuned
    # on one dataset does not silently under-train a bigger one (max_epochs still caps it).
    min_epochs: float | None = Field(None, gt=0)
    max_minutes: float | None = Field(None, gt=0)  # wall-clock budget
    seed: int = Field(0, ge=0)  # numpy generators take no negative seed (a traceback after the checks)
    loader: LoaderConfig = LoaderConfig()
    eval_every: int = Field(500, ge=1)  # steps between validations
    eval_max_users: int = Field(5_000, ge=1)  # validation rows scored (a fixed seeded sample)
    eval_batch_size: int = Field(256, ge=1)
    # early stopping and best checkpoint: ndcg@10 or hr@10 (higher is better), or an error or
    # cross-entropy the family validates (rating_rmse, exact_ce: lower is better)
    metric: str = "ndcg@10"
    # A second validation metric that breaks ties of the first: of the validations whose `metric`
    # lies within `tolerance` of the best so far, the best by `tiebreak` is kept (e.g. the
    # autoencoder's rmse: its ratings keep improving on a flat ranking plateau), and a validation
    # that changes the kept one counts as an improvement for `patience`.
    tiebreak: str | None = None
    tolerance: float = Field(0.0, ge=0)  # in `metric`'s units
    patience: int | None = Field(10, ge=1)  # evaluations without improvement before stopping
    checkpoint_every: int = Field(1_000, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    log_every: int = Field(50, ge=1)  # tensorboard scalars
    progress: bool = True  # rich progress bar
    # "train+valid": refit once settings and step count are chosen on a train-only run. The
    # validation part joins the training sequences (the most recent interaction of each history
    # under leave-last-out), so nothing is validated: no early stopping, the last step is kept.
    fit_on: Literal["train", "train+valid"] = "train"
    mesh: MeshConfig = MeshConfig()  # devices and hosts (segue.training.mesh)

    @model_validator(mode="after")
    def _epoch_bounds(self) -> TrainerConfig:
        if self.min_epochs is not None and self.max_epochs is not None and self.min_epochs > self.max_epochs:
            raise ValueError(f"min_epochs ({self.min_epochs}) is above max_epochs ({self.max_epochs})")
        if self.tiebreak is not None and self.tiebreak == self.metric:
            raise ValueError(f"tiebreak '{self.tiebreak}' is the metric itself (expected another validation metric)")
        if self.tolerance > 0 and self.tiebreak is None:
            raise ValueError("tolerance needs a tiebreak metric (trainer.tiebreak, e.g. rmse)")
        return self
