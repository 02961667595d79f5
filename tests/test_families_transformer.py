"""The transformer's reading of awkward histories: all empty, and tokens outside its table."""

from __future__ import annotations

import numpy as np

from segue.data.arrays import SequenceArrays
from segue.data.vocab import N_SPECIAL, Vocabulary
from segue.models.transformer import ModelConfig, TransformerConfig, TransformerRecommender

V = 20


def _rec() -> TransformerRecommender:
    vocab = Vocabulary(
        item_ids=np.array([-1, -1, -1, -1, *range(V - N_SPECIAL)]),
        counts=np.zeros(V, np.int64),
        external_ids=[None] * N_SPECIAL + [f"item{i}" for i in range(V - N_SPECIAL)],
        split="s",
    )
    model = ModelConfig(n_layers=1, n_heads=2, d_model=8, d_ff=16, dropout=0.0, context_length=6)
    rec = TransformerRecommender(TransformerConfig(model=model), vocab)
    rec.network = rec.build(V, seed=0)
    return rec


def test_a_batch_of_empty_histories_scores_like_an_empty_row_among_others() -> None:
    rec = _rec()
    mixed = rec.score(SequenceArrays.from_lists([[5, 6], []]))
    alone = rec.score(SequenceArrays.from_lists([[], []]))
    assert alone.shape == (2, V)
    np.testing.assert_allclose(alone[0], mixed[1], rtol=1e-6)
    np.testing.assert_allclose(alone[1], mixed[1], rtol=1e-6)
    tokens, _ = rec.recommend(SequenceArrays.from_lists([[]]), 3)
    assert tokens.shape == (1, 3) and np.all(tokens >= N_SPECIAL)


def test_history_tokens_outside_the_table_are_skipped_not_read_as_the_last_item() -> None:
    rec = _rec()
    known = rec.score(SequenceArrays.from_lists([[5, 6]]))[0]
    for bad in (V, V + 5, -1, -V):
        got = rec.score(SequenceArrays.from_lists([[5, bad, 6]]))[0]
        np.testing.assert_allclose(got, known, rtol=1e-6, err_msg=f"token {bad}")
    # the last item itself is read (it is no unknown token), so it changes the scores
    assert not np.allclose(rec.score(SequenceArrays.from_lists([[5, 6, V - 1]]))[0], known)
    # a history of unknown tokens only is an empty history; rows select after the skip
    empty = rec.score(SequenceArrays.from_lists([[]]))[0]
    hist = SequenceArrays.from_lists([[V + 1, -3], [5, V + 2, 6]])
    np.testing.assert_allclose(rec.score(hist)[0], empty, rtol=1e-6)
    np.testing.assert_allclose(rec.score(hist, np.array([1]))[0], known, rtol=1e-6)
    np.testing.assert_allclose(rec.query_embeddings(hist, np.array([1, 0]))[1], rec.query_embeddings(SequenceArrays.from_lists([[]]))[0], rtol=1e-6)
