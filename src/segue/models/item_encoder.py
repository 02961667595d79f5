"""Item vectors composed from an id embedding and side features (ItemEncoderConfig: the `items`
section of a transformer's config; off by default, and then nothing here exists in the model).

For an item t with per-feature value rows r_f(t) (segue.data.item_features):
    parts(t) = [ a(t) E[t],  mean_{r in r_f(t), r > 0} T_f[r]  for each feature f,  has_c(t) W_c c(t) ]
    vec(t)   = sum(parts)                       combine = "sum"
    vec(t)   = W_p concat(parts)                combine = "project"
E is the id table (the model's item_emb, updated row-sparsely), T_f a small table per feature
(row 1 = the feature's <unk>, initialised at zero), c(t) the standardised content vector and W_c its projection.
a(t) is the id's weight: 0 for items with fewer than `id_min_count` training events (and every
item outside the vocabulary: a features-only vector), else 1; in training it is dropped to 0 at
rate `id_dropout` per item and step (special tokens keep their ids). At rate 1 the id is never
used, in training or after (a features-only model). The output head scores against the same
composed vectors (tied), so an unseen item with known features is scorable without retraining.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from pydantic import Field, model_validator

from segue.config import Config
from segue.data.item_features import UNK_ROW
from segue.data.vocab import N_SPECIAL, Vocabulary


class ItemEncoderConfig(Config):
    """How items are encoded beyond their ids (no features and no content: the plain model)."""

    features: list[str] = []  # artist, album, genre, type, title_words, meta.<key>
    content: str | None = None  # Parquet of content vectors (item, vector), imported at training
    use_id: bool = True  # False: every item is its features only
    id_min_count: int = Field(1, ge=1)  # fewer training events: no id embedding
    id_dropout: float = Field(0.0, ge=0, le=1)  # training: drop an item's id at this rate
    combine: Literal["sum", "project"] = "sum"
    max_values: int = Field(16, ge=1)  # values kept per item of a multi-valued feature
    min_items: int = Field(1, ge=1)  # training items a value needs to get its own row

    @model_validator(mode="after")
    def _check(self) -> ItemEncoderConfig:
        from segue.data.item_features import check_feature_name

        for f in self.features:
            check_feature_name(f)
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"items.features lists a feature twice: {self.features}")
        if not self.use_id and not self.enabled:
            raise ValueError("items.use_id is false but no feature or content is given: items would have no vector")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.features or self.content)

    def id_weight_at_eval(self) -> float:
        return 0.0 if (not self.use_id or self.id_dropout >= 1.0) else 1.0


Shapes = tuple[tuple[str, int, int], ...]  # (feature, table rows, width)


class ItemEncoder(nnx.Module):
    """The feature tables and projections; `compose` builds item vectors from the id rows."""

    def __init__(self, cfg: ItemEncoderConfig, shapes: Shapes, content_dim: int, d: int, std: float, rngs: nnx.Rngs) -> None:
        init = nnx.initializers.normal(std)
        self.names = tuple(n for n, _, _ in shapes)  # plain values: the graphdef stays hashable
        # <unk> starts at zero: with min_items 1 no training item uses it, so it would keep its random
        # init and pour noise into every unseen value (a new film's unseen title words); at zero an
        # unseen value adds nothing until training items below min_items teach it something.
        self.tables = nnx.List([nnx.Param(init(rngs.params(), (rows, d)).at[UNK_ROW].set(0.0)) for _, rows, _ in shapes])
        self.content_proj = nnx.Linear(content_dim, d, use_bias=False, kernel_init=init, rngs=rngs) if content_dim else None
        n_parts = 1 + len(shapes) + int(content_dim > 0)
        self.project = nnx.Linear(n_parts * d, d, use_bias=False, kernel_init=init, rngs=rngs) if cfg.combine == "project" else None
        self.use_id = cfg.use_id
        self.min_count = cfg.id_min_count
        self.rate = cfg.id_dropout

    def id_weight(self, tokens: jax.Array, feats: dict[str, jax.Array], key: jax.Array | None) -> jax.Array:
        """a(t) [N] (see the module docstring); `key` None = evaluation."""
        special = tokens < N_SPECIAL
        if not self.use_id or self.rate >= 1.0:
            return special.astype(jnp.float32)
        w = feats["id_count"] >= self.min_count
        if key is not None and self.rate > 0:
            w = w & (jax.random.uniform(key, tokens.shape) >= self.rate)
        return (w | special).astype(jnp.float32)

    def compose(self, id_rows: jax.Array, tokens: jax.Array, feats: dict[str, jax.Array], key: jax.Array | None = None) -> jax.Array:
        """Item vectors [N, D] of `tokens` [N] from their id rows [N, D] and feature arrays
        (each indexed like `tokens`: f_<name> [N, width], id_count [N], content [N, C], has_content [N])."""
        parts = [id_rows * self.id_weight(tokens, feats, key)[:, None]]
        for name, table in zip(self.names, self.tables, strict=True):
            idx = feats[f"f_{name}"]
            m = (idx > 0).astype(jnp.float32)
            pooled = jnp.einsum("nw,nwd->nd", m, table[...][idx]) / jnp.maximum(m.sum(-1, keepdims=True), 1.0)
            parts.append(pooled)
        if self.content_proj is not None:
            parts.append(self.content_proj(feats["content"]) * feats["has_content"][:, None])
        if self.project is not None:
            return self.project(jnp.concatenate(parts, axis=-1))
        return sum(parts[1:], parts[0])


def gather_features(feats: dict[str, jax.Array], tokens: jax.Array) -> dict[str, jax.Array]:
    """Feature arrays at `tokens` (tokens past the end, the step's padding, gather zeros)."""
    return {k: v.at[tokens].get(mode="fill", fill_value=0) for k, v in feats.items()}


@partial(jax.jit, static_argnums=(1,))
def _compose_all(enc_state: nnx.State, graphdef: Any, table: jax.Array, feats: dict[str, jax.Array]) -> jax.Array:
    enc = nnx.merge(graphdef, enc_state)
    return enc.compose(table, jnp.arange(table.shape[0]), feats)


def compose_table(encoder: ItemEncoder, id_table: jax.Array, feats: dict[str, jax.Array]) -> jax.Array:
    """Evaluation-time vectors [V', D] of every token whose arrays `feats` holds (V' may exceed
    the id table: the rows past it are items outside the vocabulary, features-only)."""
    n = len(feats["id_count"])
    table = jnp.asarray(id_table)
    if n > table.shape[0]:
        table = jnp.concatenate([table, jnp.zeros((n - table.shape[0], table.shape[1]), table.dtype)])
    graphdef, state = nnx.split(encoder)
    return _compose_all(state, graphdef, table[:n], {k: jnp.asarray(v) for k, v in feats.items()})


def fit_features(store: Any, vocab: Vocabulary, cfg: ItemEncoderConfig) -> Any:
    """The feature vocabularies and arrays of `vocab`'s training items (segue.data.item_features)."""
    from segue.data.item_features import fit_item_features

    return fit_item_features(store, vocab, cfg.features, max_width=cfg.max_values, min_items=cfg.min_items, content=cfg.content)


@dataclass
class ExtraItems:
    """Items added beyond a vocabulary (tokens V, V + 1, ...): features-only, id count 0."""

    external_ids: list[str] = field(default_factory=list)
    item_ids: list[int] = field(default_factory=list)  # store item ids (-1: not from the store)
    parts: list[dict[str, np.ndarray]] = field(default_factory=list)  # encode_new() outputs

    def __len__(self) -> int:
        return len(self.external_ids)

    def add(self, external_ids: list[str], arrays: dict[str, np.ndarray], item_ids: list[int] | None = None) -> None:
        self.external_ids += list(external_ids)
        self.item_ids += list(item_ids) if item_ids is not None else [-1] * len(external_ids)
        self.parts.append(arrays)

    def arrays(self, base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`base` (the vocabulary's arrays) with the added items' rows appended."""
        if not self.parts:
            return base
        return {k: np.concatenate([base[k], *(p[k] for p in self.parts)]) for k in base}

    def vocab(self, vocab: Vocabulary) -> Vocabulary:
        """`vocab` with the added items appended (store item id -1 keeps them out of store
        lookups; their external ids resolve to their tokens)."""
        if not self.external_ids:
            return vocab
        n = len(self.external_ids)
        return Vocabulary(
            item_ids=np.concatenate([vocab.item_ids, np.full(n, -1, np.int64)]),
            counts=np.concatenate([vocab.counts, np.zeros(n, np.int64)]),
            external_ids=[*vocab.external_ids, *self.external_ids],
            split=vocab.split,
            min_count=vocab.min_count,
        )


def add_store_items(model: Any, store: Any) -> None:
    """Add every item of `store` outside the model's vocabulary (and not added yet) to `model`
    (a recommender with `add_items`): features from the store's item metadata."""
    from segue.data.item_features import raw_features, store_item_rows

    vocab = model._check_fitted()
    known = set(int(i) for i in vocab.item_ids if i >= 0) | set(model.extra_item_ids)
    rows = store.con.execute("SELECT item_id, external_id FROM items ORDER BY item_id").fetchall()
    new = [(i, e) for i, e in rows if i not in known]
    if not new:
        return
    ids = np.array([i for i, _ in new], np.int64)
    raw = raw_features(model.item_features.names, store_item_rows(store, ids))
    vectors = None
    if model.item_features.content is not None and model.item_features.meta.get("content"):
        from segue.data.item_features import read_content_vectors

        ext, vecs = read_content_vectors(model.item_features.meta["content"])
        pos = {e: j for j, e in enumerate(ext)}
        vectors = np.full((len(new), vecs.shape[1]), np.nan, np.float32)
        for j, (_, e) in enumerate(new):
            if e in pos:
                vectors[j] = vecs[pos[e]]
    model.add_items([e for _, e in new], raw, vectors, ids.tolist())


def add_new_items(model: Any, table: Any, path: Path) -> list[int]:
    """Compose the items of a new-items table (segue.data.item_features.new_item_rows) and add them
    to `model` (a recommender with item features and `add_items`); returns their tokens."""
    from segue.data.item_features import new_item_rows, new_item_vectors, raw_features

    rows = new_item_rows(table, path)
    feats = model.item_features
    raw = raw_features(feats.names, rows)
    return model.add_items([r["external_id"] for r in rows], raw, new_item_vectors(table, feats.content_dim, path)).tolist()


def apply_added_items(model: Any, folder: str | Path) -> list[int]:
    """Add the run folder's items_added.parquet (`segue items add`) to a loaded model and extend its
    vocabulary with them (tokens V, V + 1, ...); returns their tokens. Every loader of a run for
    scoring applies them (the server, `segue continue`, `segue export`), so all answer alike. Items
    the model holds already are not added again (a second call changes nothing)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from segue.data.item_features import ADDED_FILE, read_new_items

    path = Path(folder) / ADDED_FILE
    if not path.exists() or getattr(model, "item_features", None) is None:
        return []
    table = read_new_items(path)
    ids = pa.array([str(x) for x in table.column("item").to_pylist()], pa.string())
    have = model.extended_vocab()
    new = pc.invert(pc.is_in(ids, value_set=pa.array([e for e in have.external_ids if e is not None], pa.string())))
    if not pc.all(new).as_py():
        table = table.filter(new)
    if table.num_rows:
        add_new_items(model, table, path)
    model.vocab = model.extended_vocab()
    # the tokens of every item of the file, those added by an earlier call included
    return [int(t) for t in model.vocab.encode_external(ids.to_pylist())[0]]


__all__ = ["ExtraItems", "ItemEncoder", "ItemEncoderConfig", "add_new_items", "add_store_items", "apply_added_items", "compose_table", "fit_features", "gather_features"]
