"""The transformer's training program (a `TrainTask`): sequence batches, the row-sparse step of
segue.training.step, and next-item validation (segue.training.evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from segue.data.arrays import SequenceArrays, SplitData, compile_split
from segue.data.loader import make_train_loader
from segue.data.splits import Part
from segue.models.transformer import (
    SequenceTransformer,
    TransformerConfig,
    load_weights,
    save_weights,
)
from segue.training.evaluate import ValidationSet, evaluate
from segue.training.step import StepSpec, init_state, make_train_step, network_of
from segue.training.task import total_steps


def training_arrays(data: SplitData, fit_on: str) -> SequenceArrays:
    """The sequences trained on: the split's TRAIN part, or TRAIN with the validation users'
    inputs and VALID targets joined in (each sequence in its time order)."""
    if fit_on == "train":
        return data.train
    parts = (Part.TRAIN, Part.VALID_INPUT, Part.VALID)
    return compile_split(data.store, data.split, parts, vocab=data.vocab)


class TransformerTask:
    """Trains a SequenceTransformer on `data.train` (or train+valid), validating on VALID."""

    unit = "tokens"

    def __init__(self, config: TransformerConfig, data: SplitData) -> None:
        self.config = config
        self.trainer = tc = config.trainer
        self.optim = config.optim
        lc = tc.loader.model_copy(update={"context_length": config.model.context_length})
        self.loader = make_train_loader(training_arrays(data, tc.fit_on), lc, seed=tc.seed)
        self.total_steps, self.limit = total_steps(tc, self.loader.batches_per_epoch)
        self.spec = StepSpec(
            model=config.model,
            loss=config.loss,
            optim=config.optim,
            vocab_size=len(data.vocab),
            total_steps=self.total_steps,
            eop_target=lc.eop_target,
        )
        self.graphdef: Any = None
        self._step_fn: Any = None
        # Refitting on train+valid leaves nothing to validate on.
        self.vset = ValidationSet.from_split(data, tc.eval_max_users, seed=tc.seed) if tc.fit_on == "train" else None

    def init_state(self) -> dict[str, Any]:
        self.graphdef, state = init_state(self.spec, self.trainer.seed)
        self._step_fn = make_train_step(self.spec, self.graphdef)
        return state

    def train_step(self, state: dict[str, Any], batch: dict[str, Any], lr_scale: jax.Array) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        return self._step_fn(state, batch["inputs"], batch["targets"], batch["mask"], jnp.float32(lr_scale))

    def validate(self, state: dict[str, Any]) -> dict[str, float] | None:
        if self.vset is None:
            return None
        graphdef, params = nnx.split(self.network(state, average=True))
        tc = self.trainer
        return evaluate(
            graphdef,
            params,
            self.vset,
            context_length=self.config.model.context_length,
            batch_size=tc.eval_batch_size,
            n_negatives=self.config.loss.n_negatives,
            eop_class=self.spec.eop_target,
            seed=tc.seed,
        )

    def network(self, state: dict[str, Any], average: bool = False) -> SequenceTransformer:
        return network_of(self.graphdef, state, average=average)

    def save_weights(self, network: SequenceTransformer, path: Path) -> None:
        save_weights(network, path)

    def load_weights(self, network: SequenceTransformer, path: Path) -> SequenceTransformer:
        return load_weights(network, path)
