"""The network's shapes and causality, and the Recommender protocol around it."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from segue.data.arrays import SequenceArrays
from segue.data.vocab import N_SPECIAL, Vocabulary
from segue.errors import SegueError
from segue.models.base import load_model
from segue.models.transformer import (
    ModelConfig,
    SequenceTransformer,
    TransformerConfig,
    TransformerRecommender,
    count_flops_per_token,
    dropout,
)

TINY = ModelConfig(n_layers=2, n_heads=2, d_model=8, d_ff=16, dropout=0.1, context_length=6)
V = 20


@pytest.fixture(scope="module")
def net() -> SequenceTransformer:
    return SequenceTransformer(TINY, V, nnx.Rngs(0))


def test_shapes(net: SequenceTransformer) -> None:
    x = jnp.array([[1, 5, 6, 7, 2, 2], [1, 9, 2, 2, 2, 2]])
    h = net.hidden(x)
    assert h.shape == (2, 6, 8)
    assert np.all(np.isfinite(np.asarray(h)))


def test_future_items_cannot_change_earlier_outputs(net: SequenceTransformer) -> None:
    a = jnp.array([[1, 5, 6, 7, 8, 9]])
    b = a.at[0, 3].set(15)  # change the item at position 3 only
    ha, hb = np.asarray(net.hidden(a)), np.asarray(net.hidden(b))
    np.testing.assert_array_equal(ha[0, :3], hb[0, :3])  # positions before it: identical
    assert not np.allclose(ha[0, 3:], hb[0, 3:])  # from it on: changed
    # also with dropout active (same key): earlier positions still do not see the future
    key = jax.random.key(1)
    da, db = np.asarray(net.hidden(a, key=key)), np.asarray(net.hidden(b, key=key))
    np.testing.assert_allclose(da[0, :3], db[0, :3], rtol=1e-6)


def test_dropout_rate_and_scale() -> None:
    x = jnp.ones((400, 64))
    y = np.asarray(dropout(x, 0.25, jax.random.key(0)))
    assert abs((y == 0).mean() - 0.25) < 0.02
    assert y.mean() == pytest.approx(1.0, abs=0.03)  # survivors are scaled up
    np.testing.assert_array_equal(np.asarray(dropout(x, 0.25, None)), np.asarray(x))


def test_flops_per_token_formula() -> None:
    cfg = ModelConfig(n_layers=1, d_model=4, d_ff=8, context_length=2, n_heads=1)
    # 3 x (2*3*16 + 2*16 + 2*2*4*8 + 2*2*2*4 + 2*4*10)
    assert count_flops_per_token(cfg, 10) == 3 * (96 + 32 + 128 + 32 + 80)


def _rec(model: ModelConfig = TINY) -> TransformerRecommender:
    vocab = Vocabulary(
        item_ids=np.array([-1, -1, -1, -1, *range(V - N_SPECIAL)]),
        counts=np.zeros(V, np.int64),
        external_ids=[None] * N_SPECIAL + [f"item{i}" for i in range(V - N_SPECIAL)],
        split="s",
    )
    rec = TransformerRecommender(TransformerConfig(model=model), vocab)
    rec.network = rec.build(V, seed=0)
    return rec


def test_score_recommend_and_reload(tmp_path: Path) -> None:
    rec = _rec()
    hist = SequenceArrays.from_lists([[5, 6, 7], [], [9] * 10])  # a long history is cropped
    s = rec.score(hist)
    assert s.shape == (3, V) and s.dtype == np.float32
    assert np.all(np.isneginf(s[:, :N_SPECIAL])) and np.all(np.isfinite(s[:, N_SPECIAL:]))
    # scores are the inner products of the query vectors with the item table
    q = rec.query_embeddings(hist)
    np.testing.assert_allclose(s[:, N_SPECIAL:], (q @ rec.item_embeddings().T)[:, N_SPECIAL:], rtol=1e-4, atol=1e-5)
    tokens, _ = rec.recommend(hist, 5)
    assert not set(tokens[0]) & {5, 6, 7} and 9 not in tokens[2]
    assert np.all(tokens >= N_SPECIAL)
    # row selection matches
    np.testing.assert_allclose(rec.score(hist, np.array([2]))[0], s[2], rtol=1e-6)
    folder = rec.save(tmp_path / "model")
    back = load_model(folder)
    assert isinstance(back, TransformerRecommender) and back.config == rec.config
    np.testing.assert_array_equal(back.score(hist), s)


def test_scoring_runs_short_inputs_narrow_and_sees_new_weights() -> None:
    from segue.data.loader import pad_histories

    rec = _rec(TINY.model_copy(update={"context_length": 24}))
    lists = [[5, 6], [7, 8, 9, 10, 11, 12, 13, 14, 15], [9] * 30]  # widths 8, 16 and the context 24
    hist = SequenceArrays.from_lists(lists)

    def direct(net: SequenceTransformer) -> np.ndarray:  # every row padded to the full context
        ev = pad_histories(hist, context_length=24, pad_to=24)
        h = net.hidden(jnp.asarray(ev.inputs), positions=jnp.asarray(ev.positions))
        return np.asarray(h[np.arange(3), ev.last])

    want = direct(rec.network)
    np.testing.assert_allclose(rec.query_embeddings(hist), want, rtol=1e-5, atol=1e-6)
    for i in range(3):  # one at a time: each row at its own width
        np.testing.assert_allclose(rec.query_embeddings(hist, np.array([i]))[0], want[i], rtol=1e-5, atol=1e-6)
    # The compiled scorer keeps the network's state: in-place updates and a new network are seen.
    rec.network.pos_emb[...] = rec.network.pos_emb[...] * 3.0
    np.testing.assert_allclose(rec.query_embeddings(hist), direct(rec.network), rtol=1e-5, atol=1e-6)
    rec.network = rec.build(V, seed=1)
    np.testing.assert_allclose(rec.query_embeddings(hist), direct(rec.network), rtol=1e-5, atol=1e-6)
    assert not np.allclose(direct(rec.network), want, atol=1e-3)


def test_unfitted_and_broken_folders(tmp_path: Path) -> None:
    with pytest.raises(SegueError, match="not fitted"):
        TransformerRecommender().score(SequenceArrays.from_lists([[5]]))
    rec = _rec()
    folder = rec.save(tmp_path / "model")
    (folder / "weights.npz").unlink()
    with pytest.raises(SegueError, match="no weights"):
        load_model(folder)


def test_scaled_input_embeddings_enter_as_sqrt_d_times_the_table() -> None:
    """scale_embeddings multiplies the input rows by sqrt(D), and only them (positions unscaled)."""
    cfg = TINY.model_copy(update={"scale_embeddings": True, "n_layers": 1})
    scaled, plain = SequenceTransformer(cfg, V, nnx.Rngs(0)), SequenceTransformer(TINY.model_copy(update={"n_layers": 1}), V, nnx.Rngs(0))
    x = jnp.array([[1, 5, 6, 7]])
    # Same weights; feeding the plain model a table scaled by sqrt(D) must give the scaled model's output.
    table = plain.item_emb[...]
    np.testing.assert_allclose(
        np.asarray(scaled.hidden(x)), np.asarray(plain.hidden(x, emb=table * np.sqrt(8.0))), rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(np.asarray(scaled.hidden(x)), np.asarray(plain.hidden(x)))
