"""The transformer's training program (a `TrainTask`): sequence batches, the row-sparse step of
segue.training.step, and next-item validation (segue.training.evaluate).

With an `events` section the task checks that the training data has the configured columns, takes
the training context categories as the model's (saved with its weights), and turns each batch's
rating / fb_* / ctx_* columns into the network's event arrays (segue.models.events) on the host.

With an `items` section the task fits the feature vocabularies on the split's training items
(segue.data.item_features), hands the per-token arrays to every step, validates the network with
its composed item vectors, and saves the features beside the weights (item_features.json/.npz)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from segue.data.arrays import SequenceArrays, SplitData, compile_split
from segue.data.loader import make_train_loader
from segue.data.splits import Part
from segue.data.vocab import N_SPECIAL
from segue.errors import ConfigError
from segue.models import events as EV
from segue.models.biasedmf import BiasedMFConfig, fit_als, rated_events
from segue.models.item_encoder import fit_features
from segue.models.transformer import (
    SequenceTransformer,
    TransformerConfig,
    load_weights,
    save_weights,
    with_composed_items,
)
from segue.training import mesh as M
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


def als_token_vectors(ev: EV.EventsConfig, arrays: SequenceArrays, n_vocab: int) -> np.ndarray:
    """float32 [n_vocab, rating_rank]: the item factors of biased MF fitted by ALS on the rated
    events of `arrays` (reg rating_ridge, bias_reg rating_ridge_bias), by token (specials and
    unrated items 0): the start of the fold-in table with events.rating_ridge_start = "als"."""
    n_items = n_vocab - N_SPECIAL
    rows = arrays.nonempty()
    b, item, r = rated_events(arrays, rows, n_items)
    if len(r) == 0:
        raise ConfigError("events.rating_ridge_start = 'als': the training part has no rated event")
    _, u = np.unique(b, return_inverse=True)
    cfg = BiasedMFConfig(factors=ev.rating_rank, reg=ev.rating_ridge, bias_reg=ev.rating_ridge_bias)
    out = np.zeros((n_vocab, ev.rating_rank), np.float32)
    out[N_SPECIAL:] = fit_als(u, item, r, int(u.max()) + 1, n_items, cfg)[4]  # an unrated item's factor is 0
    return out


def event_lookups(ev: EV.EventsConfig, arrays: SequenceArrays) -> tuple[EV.Categories, dict[str, np.ndarray]]:
    """The training category lists of the events' context columns, and per column the lookup from
    the arrays' own category codes to the model's (empty when the events section is off)."""
    if not ev.enabled:
        return {}, {}
    categories = check_event_columns(ev, arrays)
    luts = {n: EV.context_lut(categories[n], list(arrays.context_categories.get(n, []))) for n in ev.context}
    return categories, luts


class TransformerTask:
    """Trains a SequenceTransformer on `data.train` (or train+valid), validating on VALID."""

    unit = "tokens"

    def __init__(self, config: TransformerConfig, data: SplitData) -> None:
        self.config = config
        self.trainer = tc = config.trainer
        self.optim = config.optim
        lc = tc.loader.model_copy(update={"context_length": config.model.context_length})
        arrays = training_arrays(data, tc.fit_on)
        self.events = ev = config.events
        self.categories, self.luts = event_lookups(ev, arrays)
        users = np.repeat(np.arange(len(arrays)), arrays.lengths) if ev.rating_item_bias > 0 else None
        self.item_bias = EV.fit_item_bias(ev, arrays.tokens, arrays.rating, len(data.vocab), users) if ev.enabled else None
        offset = None if self.item_bias is None else EV.bias_of(self.item_bias, arrays.tokens)
        self.prior = EV.fit_rating_prior(ev, arrays.rating, offset) if ev.enabled else None
        self.ridge_start = als_token_vectors(ev, arrays, len(data.vocab)) if ev.enabled and ev.rating_ridge_start == "als" else None
        if ev.enabled and not lc.extras:
            raise ConfigError("trainer.loader.extras is false, but the events section reads the batches' extra columns")
        self.mesh = M.make_mesh(tc.mesh)
        if self.mesh is not None:
            M.check_fit(self.mesh, lc.batch_size, len(data.vocab))
        # Each process reads its own rows of every batch (one process: all of them).
        shard = M.process_shard() if jax.process_count() > 1 else None
        self.loader = make_train_loader(arrays, lc, seed=tc.seed, shard=shard)
        self.total_steps, self.limit = total_steps(tc, self.loader.batches_per_epoch)
        self.item_features: Any = None
        self.feats: dict[str, Any] | None = None
        if config.items.enabled:
            self.item_features = fit_features(data.store, data.vocab, config.items)
            self.feats = {k: jnp.asarray(v) for k, v in self.item_features.arrays().items()}
        self.spec = StepSpec(
            model=config.model,
            loss=config.loss,
            optim=config.optim,
            vocab_size=len(data.vocab),
            total_steps=self.total_steps,
            eop_target=lc.eop_target,
            events=ev,
            categories_json=json.dumps(self.categories, sort_keys=True),
            rating_prior=self.prior,
            rating_item_bias=None if self.item_bias is None else tuple(float(x) for x in self.item_bias),
            items=config.items,
            item_shapes=self.item_features.shapes() if self.item_features is not None else (),
            content_dim=self.item_features.content_dim if self.item_features is not None else 0,
        )
        self.graphdef: Any = None
        self._step_fn: Any = None
        # Refitting on train+valid leaves nothing to validate on.
        self.vset = ValidationSet.from_split(data, tc.eval_max_users, seed=tc.seed, with_events=self.events.enabled) if tc.fit_on == "train" else None

    def init_state(self) -> dict[str, Any]:
        self.graphdef, state = init_state(self.spec, self.trainer.seed, self.ridge_start)
        if self.mesh is None:
            self._step_fn = make_train_step(self.spec, self.graphdef)
            return state
        state = M.place_state(self.mesh, state)
        self._step_fn = make_train_step(self.spec, self.graphdef, M.state_shardings(self.mesh, state), M.replicated(self.mesh))
        return state

    def train_step(self, state: dict[str, Any], batch: dict[str, Any], lr_scale: jax.Array) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        arrays = {k: batch[k] for k in ("inputs", "targets", "mask")}
        events = EV.batch_events(self.events, batch, self.luts, self.prior, self.item_bias) if self.events.enabled else None
        if self.mesh is not None:  # this process's rows -> global arrays split over the data axis
            arrays = M.global_batch(self.mesh, arrays)
            events = None if events is None else M.global_batch(self.mesh, events)
        args = (state, arrays["inputs"], arrays["targets"], arrays["mask"], jnp.float32(lr_scale))
        if self.feats is not None:
            return self._step_fn(*args, events, self.feats)
        if events is None:
            return self._step_fn(*args)
        return self._step_fn(*args, events)

    @property
    def validation_metrics(self) -> list[str] | None:
        """The names validate() reports (segue.training.evaluate.evaluate), None without validation."""
        if self.vset is None:
            return None
        out = ["exact_ce", "sampled_ce", "corrected_ce", "hr@10", "ndcg@10"]
        return out + ([f"{name}_rmse" for name, _, _ in self.events.targets()] if self.events.enabled else [])

    def validate(self, state: dict[str, Any]) -> dict[str, float] | None:
        if self.vset is None:
            return None
        net = self.network(state, average=True)
        if self.feats is not None:  # score with the composed item vectors
            net = with_composed_items(net, self.feats)
        graphdef, params = nnx.split(net)
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
            events=(self.events, self.categories, self.prior, self.item_bias) if self.events.enabled else None,
        )

    def network(self, state: dict[str, Any], average: bool = False) -> SequenceTransformer:
        return network_of(self.graphdef, state, average=average)

    def save_weights(self, network: SequenceTransformer, path: Path) -> None:
        save_weights(network, path)
        if self.item_features is not None:  # everything needed to compose new items' vectors
            self.item_features.save(path.parent)

    def load_weights(self, network: SequenceTransformer, path: Path) -> SequenceTransformer:
        return load_weights(network, path)


def check_event_columns(ev: EV.EventsConfig, arrays: SequenceArrays) -> EV.Categories:
    """The model's context categories; ConfigError naming the field when the training data lacks a
    configured column (or has too many categories)."""
    if (ev.rating or "rating" in ev.predict) and arrays.rating is None:
        field = "events.rating" if ev.rating else "events.predict"
        raise ConfigError(f"{field}: the training data has no ratings")
    if ev.time and arrays.ts is None:
        raise ConfigError("events.time: the training data has no timestamps")
    for name in ev.feedback:
        if name not in arrays.feedback:
            have = ", ".join(sorted(arrays.feedback)) or "none"
            raise ConfigError(f"events.feedback: the training data has no feedback column '{name}' (it has: {have})")
    try:
        return EV.model_categories(ev, arrays)
    except ValueError as e:
        raise ConfigError(str(e)) from None
