"""Item2vec / prod2vec: gensim Word2Vec over the training sequences, items as words.

Every training sequence is a sentence of its item tokens (as strings); Word2Vec (skip-gram or
CBOW, negative sampling) learns a vector e_i for every item seen at least `min_count` times.
A history h = (i_1 .. i_L) becomes the query

    q(h) = sum_{j in S} w_j e_j / sum_{j in S} w_j,   w_j = decay ** a_j,

S the distinct items of h that *have* a vector and a_j the age of item j's most recent occurrence
(L - k for its last position k; age 0 = the last event): a repeated item counts once, at its most
recent position, as in the other classic families (`_interactions.history_matrix`). The decay is
chosen from the split at fit time unless set (`_interactions.resolve_decay`). Items unknown to the
embedding are skipped, never replaced by a random guess. score(h, j) = q . v_j with v_j = e_j (`item_vectors="input"`) or the
output (negative-sampling) vector of j (`"output"`), and with `similarity="cosine"` both q and v are
L2-normalised first. Items without a vector score -inf; a history with no known item gets training
popularity scores in [-1, 0) over the items that have vectors.

Retrieval: `item_embeddings()` [V, d] and `query_embeddings(histories, rows)` [B, d] return exactly
the vectors whose dot product is `score` (normalised under cosine), so an ANN index over the item
embeddings retrieves the model's top items; rows of special tokens and of items without a vector
are zero and must be masked with `has_vector` [V].

Defaults (chosen on the validation parts of ml-100k and Amazon Beauty, bench/quality.py): skip-gram,
64 dimensions, window 5, 30 epochs, no frequent-item downsampling, *uniform* negatives
(ns_exponent 0: the output vectors then also learn popularity, which full ranking rewards), and
scoring against the output vectors with a dot product ("in-out" similarity). Input-input cosine,
the classic item2vec similarity, ranked below popularity on both datasets; it remains available
(`item_vectors="input"`, `similarity="cosine"`) for similar-item lists.

Determinism: with `workers=1` and a fixed `seed`, training is reproducible; with more workers
gensim's thread scheduling makes it vary slightly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, Self

import numpy as np
from gensim.models import Word2Vec
from gensim.models.callbacks import CallbackAny2Vec
from pydantic import Field

from segue.config import Config
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.vocab import N_SPECIAL
from segue.models._interactions import (
    history_matrix,
    item_counts,
    pad_scores,
    popularity_backfill,
    resolve_decay,
    select_rows,
)
from segue.models.base import NEG_INF, BaseRecommender

GENSIM_MAX_SENTENCE = 10_000  # gensim silently truncates longer sentences; we split them instead


SEQUENTIAL_DECAY = 0.9


class Item2VecConfig(Config):
    vector_size: int = Field(64, ge=1)
    window: int = Field(5, ge=1)
    min_count: int = Field(1, ge=1)
    sg: Literal[0, 1] = 1  # 1 = skip-gram, 0 = CBOW
    negative: int = Field(10, ge=1)
    ns_exponent: float = 0.0  # negatives drawn ~ count**ns_exponent (0 = uniform over items)
    sample: float = Field(0.0, ge=0)  # frequent-item downsampling threshold (0 = off)
    alpha: float = Field(0.025, gt=0)  # initial learning rate
    epochs: int = Field(30, ge=1)
    workers: int = Field(2, ge=1)
    seed: int = 0
    # Recency weight of the query mean; None = auto: SEQUENTIAL_DECAY where the split's targets
    # follow the history in time, 1 (plain mean) for random within-user holdouts.
    decay: float | None = Field(None, gt=0, le=1)
    similarity: Literal["dot", "cosine"] = "dot"
    item_vectors: Literal["input", "output"] = "output"


class _Sentences:
    """A restartable iterable over the training rows as lists of token strings."""

    def __init__(self, train: SequenceArrays, n_vocab: int) -> None:
        self.train = train
        self.n_vocab = n_vocab

    def __iter__(self) -> Iterator[list[str]]:
        offsets, tokens = self.train.offsets, self.train.tokens
        for r in range(len(self.train)):
            row = np.asarray(tokens[offsets[r] : offsets[r + 1]])
            row = row[(row >= N_SPECIAL) & (row < self.n_vocab)]
            for lo in range(0, len(row), GENSIM_MAX_SENTENCE):
                part = row[lo : lo + GENSIM_MAX_SENTENCE]
                if len(part):
                    yield [str(t) for t in part.tolist()]


class Item2Vec(BaseRecommender):
    """Item2vec recommender (see the module docstring for the query and scoring formulas)."""

    family = "item2vec"
    meta_fields, state_shapes = ("decay",), {"input_vectors.npy": ("input_vectors", ("V", None)), "output_vectors.npy": ("output_vectors", ("V", None)), "has_vector.npy": ("has_vector", ("V",)), "counts.npy": ("counts", ("n",))}
    config_class = Item2VecConfig
    config: Item2VecConfig

    def fit(self, data: SplitData, *, progress: Callable[[str, int, int], None] | None = None) -> Self:
        c = self.config
        self.vocab = data.vocab
        n_vocab = len(data.vocab)
        callbacks = []
        if progress is not None:
            callbacks.append(_Progress(progress, c.epochs))
        w2v = Word2Vec(
            sentences=_Sentences(data.train, n_vocab),
            vector_size=c.vector_size,
            window=c.window,
            min_count=c.min_count,
            sg=c.sg,
            hs=0,
            negative=c.negative,
            ns_exponent=c.ns_exponent,
            sample=c.sample,
            alpha=c.alpha,
            epochs=c.epochs,
            workers=c.workers,
            seed=c.seed,
            callbacks=callbacks,
        )
        d = c.vector_size
        self.input_vectors = np.zeros((n_vocab, d), dtype=np.float32)
        self.output_vectors = np.zeros((n_vocab, d), dtype=np.float32)
        self.has_vector = np.zeros(n_vocab, dtype=bool)
        keys = np.array([int(k) for k in w2v.wv.index_to_key], dtype=np.int64)
        if len(keys):
            self.input_vectors[keys] = w2v.wv.vectors
            self.output_vectors[keys] = w2v.syn1neg
            self.has_vector[keys] = True
        self.counts = item_counts(data.train, data.vocab.n_items)
        self.meta["decay"] = resolve_decay(c.decay, data, SEQUENTIAL_DECAY)
        return self

    # --- embeddings -----------------------------------------------------------------------------
    def _scoring_vectors(self) -> np.ndarray:
        v = self.input_vectors if self.config.item_vectors == "input" else self.output_vectors
        return _normalise(v) if self.config.similarity == "cosine" else v

    def item_embeddings(self) -> np.ndarray:
        """[V, d] float32: score = query_embeddings @ item_embeddings.T (zero rows: see has_vector)."""
        self._check_fitted()
        return self._scoring_vectors()

    def query_embeddings(self, histories: SequenceArrays, rows: np.ndarray | None = None) -> np.ndarray:
        """[B, d] float32 recency-weighted mean of the known history items' input vectors (each
        distinct item once, weighted by its most recent occurrence: the module docstring's q(h))."""
        self._check_fitted()
        rows = select_rows(histories, rows)
        n_items = len(self.has_vector) - N_SPECIAL
        h = history_matrix(histories, rows, n_items, decay=self.meta["decay"])
        h = h.multiply(self.has_vector[N_SPECIAL:][None, :]).tocsr()  # skip items without a vector
        total = np.asarray(h.sum(axis=1)).ravel()
        q = np.asarray(h @ self.input_vectors[N_SPECIAL:], dtype=np.float32)
        q /= np.maximum(total, 1e-30)[:, None]
        return _normalise(q) if self.config.similarity == "cosine" else q

    def score(self, histories: SequenceArrays, rows: np.ndarray | None = None) -> np.ndarray:
        rows = select_rows(histories, rows)
        q = self.query_embeddings(histories, rows)
        s = q @ self._scoring_vectors()[N_SPECIAL:].T  # [B, n_items]
        cold = ~q.any(axis=1)
        if cold.any():
            s[cold] = popularity_backfill(self.counts)
        s[:, ~self.has_vector[N_SPECIAL:]] = NEG_INF
        return pad_scores(s)

    def _save_state(self, folder: Path) -> None:
        np.save(folder / "input_vectors.npy", self.input_vectors)
        np.save(folder / "output_vectors.npy", self.output_vectors)
        np.save(folder / "has_vector.npy", self.has_vector)
        np.save(folder / "counts.npy", self.counts)

    def _load_state(self, folder: Path) -> None:
        self.input_vectors = np.load(folder / "input_vectors.npy")
        self.output_vectors = np.load(folder / "output_vectors.npy")
        self.has_vector = np.load(folder / "has_vector.npy")
        self.counts = np.load(folder / "counts.npy")


def _normalise(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(norm > 0, norm, 1)).astype(np.float32, copy=False)


class _Progress(CallbackAny2Vec):
    """gensim callback reporting finished epochs."""

    def __init__(self, report: Callable[[str, int, int], None], epochs: int) -> None:
        self.report, self.epochs, self.done = report, epochs, 0

    def on_epoch_end(self, model: object) -> None:
        self.done += 1
        self.report("item2vec", self.done, self.epochs)
