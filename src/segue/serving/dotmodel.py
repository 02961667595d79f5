"""A fixed-embedding dot-product recommender: the serving tests' and benchmarks' stand-in.

score(h)[t] = <query(h), E[t]>, with query(h) the recency-weighted mean of the history's item
vectors, sum_j w_j E[h_j] / sum_j w_j with w_j = decay^(L-1-j) (empty history: the zero vector).
It offers `item_embeddings()` and `query_embeddings(histories, rows)`, the optional pair the server
uses for ANN retrieval, so it exercises the same path a trained transformer takes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Self

import numpy as np

from segue.config import Config
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.vocab import N_SPECIAL, Vocabulary
from segue.models.base import NEG_INF, BaseRecommender, families, register


class DotProductConfig(Config):
    dim: int = 32
    decay: float = 0.9
    seed: int = 0
    norm_spread: float = 0.3  # log-normal spread of item norms (random init)


class DotProductModel(BaseRecommender):
    family = "dot"
    config_class = DotProductConfig

    @classmethod
    def random(
        cls, vocab: Vocabulary, config: DotProductConfig | None = None, clusters: int = 256
    ) -> Self:
        """Clustered random embeddings with log-normal norms (closer to trained tables than N(0, I))."""
        config = config or DotProductConfig()
        rng = np.random.default_rng(config.seed)
        v, d = len(vocab), config.dim
        centres = rng.standard_normal((clusters, d)).astype(np.float32)
        e = centres[rng.integers(0, clusters, v)] + 0.7 * rng.standard_normal((v, d)).astype(
            np.float32
        )
        e *= (np.exp(config.norm_spread * rng.standard_normal(v)) / np.sqrt(d)).astype(np.float32)[
            :, None
        ]
        model = cls(config, vocab)
        model.embeddings = e.astype(np.float32)
        return model

    def fit(
        self, data: SplitData, *, progress: Callable[[str, int, int], None] | None = None
    ) -> Self:
        self.vocab = data.vocab
        fresh = type(self).random(data.vocab, self.config)  # type: ignore[arg-type]
        self.embeddings = fresh.embeddings
        return self

    def item_embeddings(self) -> np.ndarray:
        """[V, d] float32 (rows of special tokens exist but are never retrieved)."""
        return self.embeddings

    def query_embeddings(
        self, histories: SequenceArrays, rows: np.ndarray | None = None
    ) -> np.ndarray:
        rows = np.arange(len(histories)) if rows is None else np.asarray(rows)
        out = np.zeros((len(rows), self.embeddings.shape[1]), dtype=np.float32)
        decay = self.config.decay  # type: ignore[attr-defined]
        for b, r in enumerate(rows):
            toks = np.asarray(histories.row(int(r)))
            if len(toks):
                w = decay ** np.arange(len(toks) - 1, -1, -1, dtype=np.float32)
                out[b] = (w[:, None] * self.embeddings[toks]).sum(0) / w.sum()
        return out

    def score(self, histories: SequenceArrays, rows: np.ndarray | None = None) -> np.ndarray:
        self._check_fitted()
        s = self.query_embeddings(histories, rows) @ self.embeddings.T
        s[:, :N_SPECIAL] = NEG_INF
        return s

    def _save_state(self, folder: Path) -> None:
        np.save(folder / "embeddings.npy", self.embeddings)

    def _load_state(self, folder: Path) -> None:
        self.embeddings = np.load(folder / "embeddings.npy")


def register_dot_family() -> None:
    """Make `load_model` know the "dot" family (builtins are registered first, see models.base)."""
    if "dot" not in families():
        register("dot", lambda: DotProductModel)


def synthetic_vocab(n_items: int, prefix: str = "item") -> Vocabulary:
    """A vocabulary of `n_items` items named f"{prefix}{i}", with Zipf-like training counts."""
    ids = np.concatenate([np.full(N_SPECIAL, -1), np.arange(n_items)]).astype(np.int64)
    counts = np.concatenate(
        [np.zeros(N_SPECIAL), 1 + (10 * n_items) // (1 + np.arange(n_items))]
    ).astype(np.int64)
    external: list[str | None] = [None] * N_SPECIAL + [f"{prefix}{i}" for i in range(n_items)]
    return Vocabulary(item_ids=ids, counts=counts, external_ids=external, split="synthetic")
