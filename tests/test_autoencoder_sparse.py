"""The autoencoder's sparse training path (profile batches as entries) against the dense forms,
and the optional wide (EASE) part."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from flax import nnx

from segue.models.autoencoder import AutoencoderModelConfig, ProfileAutoencoder
from segue.models.ease import ease_weights
from segue.training import autoencoder_losses as AL
from segue.training.autoencoder_task import ProfileLoader, initial_wide_scale, wide_part


def _loader(wide: bool = False) -> ProfileLoader:
    """5 profiles over 9 items, some entries unrated (NaN), batch 4 (one padded row in the second)."""
    offsets = np.array([0, 3, 5, 9, 10, 13])
    cols = np.array([0, 4, 7, 1, 2, 0, 3, 5, 8, 6, 2, 4, 8])
    values = np.array([0.5, np.nan, -1.0, 1.2, 0.1, np.nan, 0.3, -0.7, 2.0, np.nan, 0.0, 1.0, -0.2])
    loader = ProfileLoader(offsets, cols, values, 9, 4, seed=0)
    if wide:
        _, loader.wide = wide_part(offsets, cols, 9, 2.0)
    return loader


@pytest.mark.parametrize("per_entry", [False, True])
def test_entry_losses_equal_the_dense_ones(per_entry: bool) -> None:
    loader = _loader()
    sel = np.array([4, 1, 2])  # 3 rows of 4: the last is padding
    dense, ent = loader.dense_batch(sel), loader.batch(sel)
    assert ent["row"].shape[0] >= 9 and ent["valid"].sum() == 9 and ent["weights"].tolist() == [1, 1, 1, 0]
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 9)).astype(np.float32))
    logp = np.asarray(jnp.log(jnp.exp(logits) / jnp.exp(logits).sum(axis=1, keepdims=True)))
    want = AL.multinomial_nll(logits, jnp.asarray(dense["presence"]), jnp.asarray(dense["weights"]), per_entry)
    got = AL.multinomial_nll_entries(jnp.asarray(logp[ent["row"], ent["col"]]), jnp.asarray(ent["row"]), jnp.asarray(ent["valid"]), jnp.asarray(ent["weights"]), per_entry)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    # by hand: rows (4: cols 2, 4, 8), (1: 1, 2), (2: 0, 3, 5, 8)
    rows = [-logp[0, [2, 4, 8]].sum() / (3 if per_entry else 1), -logp[1, [1, 2]].sum() / (2 if per_entry else 1), -logp[2, [0, 3, 5, 8]].sum() / (4 if per_entry else 1)]
    assert float(got) == pytest.approx(sum(rows) / 3, rel=1e-5)
    pred = jnp.asarray(np.random.default_rng(1).normal(size=(4, 9)).astype(np.float32) * 2)
    want_r = AL.masked_huber(pred, jnp.asarray(dense["ratings"]), jnp.asarray(dense["rated"]), jnp.asarray(dense["weights"]))
    got_r = AL.masked_huber_entries(pred[ent["row"], ent["col"]], jnp.asarray(ent["value"]), jnp.asarray(ent["rated"] * ent["valid"]))
    assert float(got_r) == pytest.approx(float(want_r), rel=1e-5)


def test_encode_entries_and_rating_at_equal_the_dense_network() -> None:
    loader = _loader()
    sel = np.array([0, 2, 3, 1])
    dense, ent = loader.dense_batch(sel), loader.batch(sel)
    cfg = AutoencoderModelConfig(hidden=[6], bottleneck=4, decoder_hidden=[5])
    net = ProfileAutoencoder(cfg, 9, nnx.Rngs(3))
    keep = np.array([1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1] + [1] * (len(ent["row"]) - 13), np.float32)[: len(ent["row"])]
    x = ent["valid"] * keep
    real = ent["valid"] > 0  # padding entries sit at (0, 0) with x = 0: they must add nothing
    dense_x = np.zeros((4, 9), np.float32)
    dense_x[ent["row"][real], ent["col"][real]] = x[real]
    dense_y = np.zeros((4, 9), np.float32)
    dense_y[ent["row"][real], ent["col"][real]] = (ent["value"] * x)[real]
    assert (dense_x <= dense["presence"]).all()
    z_dense = net.encode(jnp.asarray(dense_x), jnp.asarray(dense_y))
    z_ent = net.encode_entries(jnp.asarray(ent["row"]), jnp.asarray(ent["col"]), jnp.asarray(x), jnp.asarray(ent["value"] * x), 4)
    np.testing.assert_allclose(np.asarray(z_ent), np.asarray(z_dense), rtol=1e-5, atol=1e-6)
    _, rating = net.decode(z_dense)
    at = np.asarray(net.rating_at(z_dense, jnp.asarray(ent["row"]), jnp.asarray(ent["col"])))
    np.testing.assert_allclose(at, np.asarray(rating)[ent["row"], ent["col"]], rtol=1e-5, atol=1e-6)


def test_wide_part_is_ease_of_the_training_profiles_and_adds_to_the_logits() -> None:
    loader = _loader(wide=True)
    dense = loader.dense_batch(np.arange(4))
    x5 = np.concatenate([dense["presence"], loader.dense_batch(np.array([4]))["presence"][:1]])
    w, scores = wide_part(loader.offsets, loader.cols, 9, 2.0)
    np.testing.assert_allclose(w, ease_weights(sp.csr_matrix(x5), 2.0), rtol=1e-5, atol=1e-6)
    assert np.all(np.diag(w) == 0)
    np.testing.assert_allclose(scores, x5 @ w, rtol=1e-5, atol=1e-6)
    # the batch carries each profile's wide scores, zeros for the padding row
    b = loader.batch(np.array([3, 0, 4]))
    np.testing.assert_allclose(b["wide"][:3], scores[[3, 0, 4]])
    assert not b["wide"][3].any()
    # the network adds a * (x @ W) to its presence logits
    net = ProfileAutoencoder(AutoencoderModelConfig(hidden=[6], bottleneck=4, wide="ease"), 9, nnx.Rngs(0))
    net.wide[...] = jnp.asarray(w)
    net.wide_log_scale[...] = jnp.log(3.0)
    logits, _ = net(jnp.asarray(dense["presence"]), jnp.asarray(dense["ratings"]))
    deep = net.presence_logits(net.encode(jnp.asarray(dense["presence"]), jnp.asarray(dense["ratings"])))
    assert not np.asarray(deep).any()  # an untrained wide model ranks exactly as EASE
    np.testing.assert_allclose(np.asarray(logits), 3.0 * (dense["presence"] @ w), rtol=1e-5, atol=1e-5)
    # the starting scale is the grid point of least NLL: sharper wide scores need a smaller a
    a = initial_wide_scale(dense["presence"], scores[:4])
    assert 0.5 <= a <= 200
    assert initial_wide_scale(dense["presence"], 10 * scores[:4]) < a


def test_wide_score_mode_adds_a_fixed_scale_to_a_trained_network() -> None:
    loader = _loader()
    dense = loader.dense_batch(np.arange(4))
    w, _ = wide_part(loader.offsets, loader.cols, 9, 2.0)
    cfg = AutoencoderModelConfig(hidden=[6], bottleneck=4, wide="ease", wide_mode="score", wide_scale=3.0)
    net = ProfileAutoencoder(cfg, 9, nnx.Rngs(0))
    net.wide[...] = jnp.asarray(w)
    assert float(jnp.exp(net.wide_log_scale[...])) == pytest.approx(3.0)  # the configured a
    x, y = jnp.asarray(dense["presence"]), jnp.asarray(dense["ratings"])
    deep = np.asarray(net.presence_logits(net.encode(x, y)))
    assert np.abs(deep).max() > 1e-3  # the deep head is not zeroed: it is trained alone
    logits, _ = net(x, y)
    np.testing.assert_allclose(np.asarray(logits), deep + 3.0 * (dense["presence"] @ w), rtol=1e-5, atol=1e-5)


def test_stacked_wide_scores_are_out_of_fold() -> None:
    from segue.training.autoencoder_task import out_of_fold_wide

    loader = _loader()
    x = np.zeros((5, 9), np.float32)
    for r in range(5):
        x[r, loader.cols[loader.offsets[r] : loader.offsets[r + 1]]] = 1.0
    scores = out_of_fold_wide(loader.offsets, loader.cols, 9, 2.0, 2, seed=0)
    fold = np.random.default_rng(0).permutation(5) % 2
    for r in range(5):
        w = ease_weights(sp.csr_matrix(x[fold != fold[r]]), 2.0)  # fitted without r's fold
        np.testing.assert_allclose(scores[r], x[r] @ w, rtol=1e-4, atol=1e-5)
    _, full = wide_part(loader.offsets, loader.cols, 9, 2.0)
    assert not np.allclose(scores, full, atol=1e-3)  # not the in-sample fit
