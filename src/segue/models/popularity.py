"""Most popular items of the training split: the floor every model must clear."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Self

import numpy as np

from segue.config import Config
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.vocab import N_SPECIAL
from segue.models.base import NEG_INF, BaseRecommender


class PopularityConfig(Config):
    pass


class Popularity(BaseRecommender):
    """score(t) = number of training events of token t, the same for every history."""

    family = "popularity"
    state_shapes = {"counts.npy": ("counts", ("V",))}
    config_class = PopularityConfig
    history_independent = True

    def fit(self, data: SplitData, *, progress: Callable[[str, int, int], None] | None = None) -> Self:
        self.vocab = data.vocab
        counts = np.bincount(np.asarray(data.train.tokens), minlength=len(data.vocab)).astype(np.float32)
        counts[:N_SPECIAL] = NEG_INF
        self.counts = counts
        return self

    def score(self, histories: SequenceArrays, rows: np.ndarray | None = None) -> np.ndarray:
        self._check_fitted()
        n = len(histories) if rows is None else len(rows)
        return np.tile(self.counts, (n, 1))

    def _save_state(self, folder: Path) -> None:
        np.save(folder / "counts.npy", self.counts)

    def _load_state(self, folder: Path) -> None:
        self.counts = np.load(folder / "counts.npy")
