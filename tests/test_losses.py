"""Each loss against a small hand-computed case; logQ against a direct computation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segue.training import losses as L

# One query: label logit 1; candidates with logits 0, 2, 1 where the third candidate *is* the label.
POS = jnp.array([1.0])
NEG = jnp.array([[0.0, 2.0, 1.0]])
HIT = jnp.array([[False, False, True]])
e = math.e


def test_full_softmax_by_hand() -> None:
    logits = jnp.array([[1.0, 0.0, 2.0, 5.0]])
    valid = jnp.array([True, True, True, False])  # the last class never competes
    got = L.full_softmax_ce(logits, jnp.array([0]), valid)
    assert float(got[0]) == pytest.approx(-1 + math.log(e + 1 + e**2), rel=1e-6)
    # without the class mask the fourth logit counts
    got = L.full_softmax_ce(logits, jnp.array([0]))
    assert float(got[0]) == pytest.approx(-1 + math.log(e + 1 + e**2 + e**5), rel=1e-6)


def test_label_smoothing_by_hand() -> None:
    # Targets 0.9 on class 0 plus 0.1 / 3 on each of the 3 valid classes; the masked class has none.
    logits = jnp.array([[1.0, 0.0, 2.0, 5.0]])
    valid = jnp.array([True, True, True, False])
    got = L.full_softmax_ce(logits, jnp.array([0]), valid, label_smoothing=0.1)
    log_z = math.log(e + 1 + e**2)
    want = -(0.9 + 0.1 / 3) * (1 - log_z) - 0.1 / 3 * (0 - log_z) - 0.1 / 3 * (2 - log_z)
    assert float(got[0]) == pytest.approx(want, rel=1e-6)
    # eps = 0 is the plain cross-entropy
    plain = L.full_softmax_ce(logits, jnp.array([0]), valid, label_smoothing=0.0)
    assert float(plain[0]) == pytest.approx(-1 + log_z, rel=1e-6)


def test_label_smoothing_is_refused_for_sampled_losses() -> None:
    with pytest.raises(ValueError, match="label_smoothing applies to kind 'full' only"):
        L.LossConfig(kind="logq", label_smoothing=0.1)
    assert L.LossConfig(kind="full", label_smoothing=0.1).label_smoothing == 0.1


def test_sampled_softmax_by_hand_removes_accidental_hit() -> None:
    got = L.sampled_softmax_ce(POS, NEG, HIT)
    assert float(got[0]) == pytest.approx(-1 + math.log(e + 1 + e**2), rel=1e-6)


def test_label_in_denominator_by_hand() -> None:
    # V = 11 classes; 2 non-hit negatives estimate the 10 other classes: scale 10 / 2 = 5.
    got = L.label_in_denominator_ce(POS, NEG, HIT, n_classes=11)
    assert float(got[0]) == pytest.approx(-1 + math.log(e + 5 * (1 + e**2)), rel=1e-6)
    # all negatives are hits: only the label is left, the loss is 0
    got = L.label_in_denominator_ce(POS, NEG, jnp.ones_like(HIT), n_classes=11)
    assert float(got[0]) == pytest.approx(0.0, abs=1e-6)


def test_logq_by_hand() -> None:
    lq_pos = jnp.log(jnp.array([0.5]))
    lq_neg = jnp.log(jnp.array([0.25, 0.5, 0.5]))
    got = L.logq_ce(POS, NEG, HIT, lq_pos, lq_neg, temperature=2.0)
    z_pos = 0.5 - math.log(0.5)
    z0, z1 = 0.0 - math.log(0.25), 1.0 - math.log(0.5)
    want = -z_pos + math.log(math.exp(z_pos) + math.exp(z0) + math.exp(z1))
    assert float(got[0]) == pytest.approx(want, rel=1e-6)


def test_temperature_is_clipped() -> None:
    assert float(L.clip_temperature(jnp.log(jnp.array(1e-5)))) == pytest.approx(0.01)
    assert float(L.clip_temperature(jnp.log(jnp.array(1e5)))) == pytest.approx(100.0)
    assert float(L.clip_temperature(jnp.log(jnp.array(3.0)))) == pytest.approx(3.0, rel=1e-6)


def test_masked_mean_ignores_masked_positions() -> None:
    got = L.masked_mean(jnp.array([1.0, 100.0, 3.0]), jnp.array([True, False, True]))
    assert float(got) == pytest.approx(2.0)
    assert float(L.masked_mean(jnp.array([5.0]), jnp.array([False]))) == 0.0


def test_mixed_log_q_and_logq_loss_against_direct_computation() -> None:
    rng = np.random.default_rng(0)
    n, v, n_in, n_uni, d = 40, 30, 6, 5, 4
    targets = rng.integers(4, 4 + v, n)
    mask = rng.random(n) < 0.8
    cands = np.concatenate([targets[rng.choice(np.flatnonzero(mask), n_in)], rng.integers(4, 4 + v, n_uni)])
    h = rng.standard_normal((n, d))
    table = rng.standard_normal((4 + v, d))
    tau = 0.7
    lq_pos, lq_neg = L.mixed_log_q(jnp.array(cands), jnp.array(targets), jnp.array(mask), n_in, n_uni, v)

    # direct: expected count of c among candidates = n_in * (count of c in masked targets) / #masked + n_uni / v
    valid_t = targets[mask]

    def q(c: int) -> float:
        return n_in * np.sum(valid_t == c) / len(valid_t) + n_uni / v

    np.testing.assert_allclose(np.exp(np.asarray(lq_neg)), [q(c) for c in cands], rtol=1e-5)
    np.testing.assert_allclose(np.exp(np.asarray(lq_pos))[mask], [q(t) for t in valid_t], rtol=1e-5)

    pos = jnp.array(np.sum(h * table[targets], axis=1))
    neg = jnp.array(h @ table[cands].T)
    hit = jnp.array(cands[None, :] == targets[:, None])
    got = np.asarray(L.logq_ce(pos, neg, hit, lq_pos, lq_neg, tau))
    for i in np.flatnonzero(mask):
        z_y = h[i] @ table[targets[i]] / tau - math.log(q(targets[i]))
        terms = [math.exp(z_y)]
        for c in cands:
            if c != targets[i]:  # accidental hits of the label are not negatives
                terms.append(math.exp(h[i] @ table[c] / tau - math.log(q(c))))
        assert got[i] == pytest.approx(-z_y + math.log(sum(terms)), rel=1e-4)


def test_bias_corrected_log_z_by_hand() -> None:
    # label logit 0 (e^0 = 1); negatives e^0 = 1 and e^{log 3} = 3; V = 5 (4 other classes).
    # X = 1 + 4/2 * (1 + 3) = 9; sample variance of (1, 3) = 2; Var X = 4^2 * 2 / 2 = 16.
    got = L.bias_corrected_log_z(jnp.array([0.0]), jnp.array([[0.0, math.log(3.0)]]), jnp.array([[False, False]]), 5)
    assert float(got[0]) == pytest.approx(math.log(9) + 16 / (2 * 81), rel=1e-5)


def test_bias_correction_reduces_the_bias_of_the_sampled_estimate() -> None:
    rng = np.random.default_rng(1)
    v, k, reps = 2000, 16, 4000
    logits = rng.standard_normal(v) * 1.5
    y = 0
    true = float(np.log(np.sum(np.exp(logits))))  # log Z over all classes, label included
    others = np.arange(1, v)
    idx = rng.choice(others, (reps, k))
    pos = jnp.full((reps,), logits[y])
    neg = jnp.array(logits[idx])
    hit = jnp.zeros((reps, k), bool)
    plain = np.asarray(L.label_in_denominator_ce(pos, neg, hit, v) + pos)  # log X
    corrected = np.asarray(L.bias_corrected_log_z(pos, neg, hit, v))
    bias_plain = plain.mean() - true
    bias_corr = corrected.mean() - true
    assert bias_plain < 0  # Jensen: log of an unbiased estimate underestimates on average
    assert abs(bias_corr) < 0.7 * abs(bias_plain)  # first order: a partial correction


def test_mask_seen_logits_by_hand() -> None:
    # inputs [0, 4, 5] -> targets [4, 5, 4]: position t sees inputs[0..t]; a seen item that is the
    # position's own target (4 at t = 2) stays in.
    logits = jnp.arange(18, dtype=jnp.float32).reshape(1, 3, 6) / 10.0
    inputs = jnp.array([[0, 4, 5]])
    targets = jnp.array([[4, 5, 4]])
    out = L.mask_seen_logits(logits, inputs, targets)
    masked = np.isneginf(np.asarray(out[0]))
    expect = np.zeros((3, 6), bool)
    expect[0, [0]] = True
    expect[1, [0, 4]] = True
    expect[2, [0, 5]] = True
    np.testing.assert_array_equal(masked, expect)
    np.testing.assert_array_equal(np.asarray(out)[~np.isneginf(np.asarray(out))], np.asarray(logits)[~expect[None]])
    # The loss at t = 2 by hand: log sum over c in {1, 2, 3, 4} of exp(s_c), minus s_4.
    s = np.asarray(logits[0, 2], dtype=np.float64)
    by_hand = np.log(np.exp(s[[1, 2, 3, 4]]).sum()) - s[4]
    got = L.full_softmax_ce(out[0], targets[0])[2]
    np.testing.assert_allclose(float(got), by_hand, rtol=1e-6)


def test_mask_seen_gradient_skips_masked_items() -> None:
    logits = jax.random.normal(jax.random.key(0), (2, 4, 7))
    inputs = jnp.array([[0, 3, 3, 6], [2, 5, 1, 1]])
    targets = jnp.array([[3, 4, 6, 2], [5, 1, 6, 3]])

    def loss(x: jax.Array) -> jax.Array:
        return jnp.mean(L.full_softmax_ce(L.mask_seen_logits(x, inputs, targets).reshape(8, 7), targets.reshape(8)))

    g = np.asarray(jax.grad(loss)(logits))
    assert np.isfinite(g).all()
    masked = np.isneginf(np.asarray(L.mask_seen_logits(logits, inputs, targets)))
    assert masked.sum() > 0
    assert (g[masked] == 0).all() and (g[~masked] != 0).all()


def test_mask_seen_is_refused_where_it_cannot_apply() -> None:
    with pytest.raises(ValueError, match="mask_seen applies to kind 'full' only"):
        L.LossConfig(kind="sampled", mask_seen=True)
    with pytest.raises(ValueError, match="do not combine"):
        L.LossConfig(kind="full", mask_seen=True, label_smoothing=0.1)
    assert L.LossConfig(kind="full", mask_seen=True).mask_seen
