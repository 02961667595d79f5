"""Feedback and context in the transformer (ARGUS' two heads): losses, masks, causality, the plain
model's parameters, train steps, resume, scoring by category name and feedback prediction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from datahelp import kill_after_checkpoint, make_store
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.splits import Part
from segue.data.store import Store
from segue.data.vocab import N_SPECIAL
from segue.errors import ConfigError
from segue.models import events as EV
from segue.models.base import load_model
from segue.models.events import EventsConfig
from segue.models.transformer import ModelConfig, SequenceTransformer, TransformerConfig
from segue.training import feedback_losses as FL

TINY = ModelConfig(n_layers=1, n_heads=2, d_model=8, d_ff=16, dropout=0.0, context_length=6)
FULL_EVENTS = EventsConfig(
    rating=True,
    feedback={"skip": "flag", "listened": "fraction"},
    context=["platform"],
    predict={"rating": 1.0, "skip": 0.5, "listened": 0.5},
)
TRAIN_EVENTS = FULL_EVENTS.model_copy(update={"time": True})  # + gap / hour / day of week
PLATFORMS = ["mobile", "web", "tv"]


# ---------------------------------------------------------------------------------------------
# losses against hand-computed values


def test_huber_by_hand() -> None:
    pred = jnp.array([0.5, 3.0, -2.0])
    target = jnp.array([0.0, 0.0, 0.0])
    # |d| = 0.5 <= 1: 0.125; |d| = 3: 1 * (3 - 0.5) = 2.5; |d| = 2 with delta 1: 1.5
    np.testing.assert_allclose(np.asarray(FL.huber(pred, target, 1.0)), [0.125, 2.5, 1.5], rtol=1e-6)
    # delta 2: |d| = 2 is quadratic (2.0), |d| = 3 linear: 2 (3 - 1) = 4
    np.testing.assert_allclose(np.asarray(FL.huber(pred, target, 2.0)), [0.125, 4.0, 2.0], rtol=1e-6)


def test_binary_ce_by_hand_for_flags_and_fractions() -> None:
    logit = jnp.array([0.0, 2.0, 2.0, np.log(3.0)])
    target = jnp.array([1.0, 0.0, 1.0, 0.75])
    s = 1 / (1 + np.exp(-2.0))
    want = [np.log(2.0), -np.log(1 - s), -np.log(s), -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))]
    np.testing.assert_allclose(np.asarray(FL.binary_ce(logit, target)), want, rtol=1e-5)
    # a fraction's loss is smallest where sigma(logit) equals the fraction
    grid = jnp.linspace(-3, 3, 601)
    best = float(grid[jnp.argmin(FL.binary_ce(grid, jnp.full_like(grid, 0.75)))])
    assert best == pytest.approx(np.log(3.0), abs=0.01)


def test_feedback_loss_weights_masked_means_by_hand() -> None:
    pred = jnp.array([[0.5, 0.0], [3.0, 2.0], [9.0, -9.0]])  # [N=3, K=2]
    target = jnp.array([[0.0, 1.0], [0.0, 0.0], [100.0, 1.0]])
    mask = jnp.array([[True, True], [True, True], [False, False]])  # the third event has no feedback
    total, cols = FL.feedback_loss(pred, target, mask, ["rating", "flag"], [2.0, 0.5], delta=1.0)
    huber = (0.125 + 2.5) / 2
    bce = (np.log(2.0) + np.log1p(np.exp(2.0))) / 2
    np.testing.assert_allclose(np.asarray(cols), [huber, bce], rtol=1e-5)
    assert float(total) == pytest.approx(2.0 * huber + 0.5 * bce, rel=1e-5)


def test_events_without_feedback_carry_no_loss_and_no_gradient() -> None:
    pred = jnp.array([[0.3, 0.1], [2.0, -1.0], [5.0, 4.0]])
    target = jnp.array([[1.0, 0.0], [0.5, 1.0], [jnp.inf, jnp.nan]])  # masked targets may be anything
    mask = jnp.array([[True, False], [True, True], [False, False]])

    def f(p: jax.Array) -> jax.Array:
        return FL.feedback_loss(p, target, mask, ["numeric", "flag"], [1.0, 1.0])[0]

    g = np.asarray(jax.grad(f)(pred))
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[~np.asarray(mask)], 0.0)
    assert np.all(g[np.asarray(mask)] != 0.0)
    # and with no feedback at all, the head's parameters get no gradient
    net = SequenceTransformer(TINY, 20, nnx.Rngs(0), events=FULL_EVENTS)
    ev = _events(np.random.default_rng(0), 2, 6)
    ev["fb_mask"] = np.zeros_like(ev["fb_mask"])
    gd, rest = nnx.split(net, nnx.Param)

    def loss(params: nnx.State) -> jax.Array:
        m = nnx.merge(gd, params)
        h = m.hidden(jnp.asarray(ev["tokens"]), events=ev)
        p = m.predict_feedback(h, h, jnp.asarray(ev["next_ctx"]))
        return FL.feedback_loss(p, jnp.asarray(ev["fb_target"]), jnp.asarray(ev["fb_mask"]), ["rating", "flag", "fraction"], [1, 1, 1])[0]

    grads = jax.tree_util.tree_leaves(jax.grad(loss)(rest))
    assert all(float(jnp.abs(x).max()) == 0.0 for x in grads)


# ---------------------------------------------------------------------------------------------
# the network


def _events(rng: np.random.Generator, b: int, t: int) -> dict[str, np.ndarray]:
    """Random event arrays for FULL_EVENTS (plus 'tokens' [B, T])."""
    return {
        "tokens": np.concatenate([np.ones((b, 1), np.int32), rng.integers(N_SPECIAL, 20, (b, t - 1))], 1).astype(np.int32),
        "rating_bucket": rng.integers(0, 6, (b, t)).astype(np.int32),
        "fb": rng.random((b, t, 2)).astype(np.float32),
        "fb_missing": (rng.random((b, t, 2)) < 0.2).astype(np.float32),
        "ctx": rng.integers(0, 4, (b, t, 1)).astype(np.int32),
        "next_ctx": rng.integers(0, 4, (b, t, 1)).astype(np.int32),
        "fb_target": rng.random((b, t, 3)).astype(np.float32),
        "fb_mask": np.ones((b, t, 3), bool),
    }


PLAIN_PATHS = {
    "item_emb", "pos_emb", "log_temperature", "ln_f/scale", "ln_f/bias",
    *(f"blocks/0/{m}/{p}" for m in ("qkv", "proj", "ff1", "ff2") for p in ("kernel", "bias")),
    *(f"blocks/0/{m}/{p}" for m in ("ln1", "ln2") for p in ("scale", "bias")),
}  # fmt: skip


def _flat(net: SequenceTransformer) -> dict[str, np.ndarray]:
    return {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(net, nnx.Param))}


def test_plain_config_builds_todays_parameter_tree() -> None:
    today = _flat(SequenceTransformer(TINY, 20, nnx.Rngs(0)))
    assert set(today) == PLAIN_PATHS
    plain = _flat(SequenceTransformer(TINY, 20, nnx.Rngs(0), events=EventsConfig()))
    assert plain.keys() == today.keys() and all(np.array_equal(plain[k], today[k]) for k in today)
    assert TransformerConfig().events == EventsConfig() and not EventsConfig().enabled
    # with events, today's parameters keep their values and the new ones come on top
    full = _flat(SequenceTransformer(TINY, 20, nnx.Rngs(0), events=FULL_EVENTS))
    assert all(np.array_equal(full[k], today[k]) for k in today)
    assert {k.split("/")[0] for k in set(full) - set(today)} == {"encoder", "next_head", "feedback_head"}


def test_next_item_head_is_the_identity_at_init_and_without_context() -> None:
    no_ctx = EventsConfig(rating=True, predict={"rating": 1.0})
    net = SequenceTransformer(TINY, 20, nnx.Rngs(0), events=no_ctx)
    h = jnp.ones((2, 3, 8))
    assert net.next_query(h) is h
    net = SequenceTransformer(TINY, 20, nnx.Rngs(0), events=FULL_EVENTS)
    np.testing.assert_array_equal(np.asarray(net.next_query(h, jnp.ones((2, 3, 1), jnp.int32))), np.asarray(h))


def test_context_of_the_next_event_changes_the_output_its_item_and_feedback_do_not() -> None:
    net = SequenceTransformer(TINY, 20, nnx.Rngs(0), events=FULL_EVENTS)
    # move the next-item head off its zero init so the context join matters
    net.next_head.fc2.kernel[...] = jax.random.normal(jax.random.key(3), net.next_head.fc2.kernel[...].shape) * 0.5
    ev = _events(np.random.default_rng(1), 1, 6)

    def outputs(e: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        h = net.hidden(jnp.asarray(e["tokens"]), events=e)
        q = net.next_query(h, jnp.asarray(e["next_ctx"]))
        tokens = jnp.asarray(e["tokens"])
        nxt_items = net.item_emb[...][jnp.concatenate([tokens[:, 1:], tokens[:, :1]], 1)]  # E[x_{t+1}]
        return np.asarray(q), np.asarray(net.predict_feedback(h, nxt_items, jnp.asarray(e["next_ctx"])))

    q0, f0 = outputs(ev)
    t = 2  # position t; event t+1 sits at input column t + 1
    item = {k: v.copy() for k, v in ev.items()}
    item["tokens"][0, t + 1] = 19 if item["tokens"][0, t + 1] != 19 else 18
    feedback = {k: v.copy() for k, v in ev.items()}
    feedback["rating_bucket"][0, t + 1] = (feedback["rating_bucket"][0, t + 1] + 2) % 6
    feedback["fb"][0, t + 1] = 1.0 - feedback["fb"][0, t + 1]
    for changed in (item, feedback):
        q1, _ = outputs(changed)
        np.testing.assert_allclose(q1[0, : t + 1], q0[0, : t + 1], rtol=1e-6, atol=1e-7)  # up to t: same
        assert not np.allclose(q1[0, t + 1], q0[0, t + 1])  # the event itself is seen from t + 1 on
    # the context of event t+1 is the next-item head's input at t, and an input at t + 1
    ctx = {k: v.copy() for k, v in ev.items()}
    ctx["next_ctx"][0, t, 0] = (ctx["next_ctx"][0, t, 0] + 1) % 4
    ctx["ctx"][0, t + 1, 0] = ctx["next_ctx"][0, t, 0]
    q2, f2 = outputs(ctx)
    np.testing.assert_allclose(q2[0, :t], q0[0, :t], rtol=1e-6, atol=1e-7)
    assert not np.allclose(q2[0, t], q0[0, t])
    assert not np.allclose(f2[0, t], f0[0, t])  # the feedback head reads it as well
    # the feedback head at t reads the item of t+1 (it is the candidate whose feedback is predicted)
    _, f1 = outputs(item)
    assert not np.allclose(f1[0, t], f0[0, t])


def test_a_network_with_events_needs_them() -> None:
    net = SequenceTransformer(TINY, 20, nnx.Rngs(0), events=FULL_EVENTS)
    with pytest.raises(ValueError, match="pass `events`"):
        net.hidden(jnp.ones((1, 4), jnp.int32))
    # a head-only config (predict ratings without reading them) adds nothing to the inputs
    head_only = SequenceTransformer(TINY, 20, nnx.Rngs(0), events=EventsConfig(predict={"rating": 1.0}))
    plain = SequenceTransformer(TINY, 20, nnx.Rngs(0))
    x = jnp.array([[1, 5, 6, 7]])
    h = head_only.hidden(x, events={})
    np.testing.assert_array_equal(np.asarray(h), np.asarray(plain.hidden(x)))
    assert head_only.predict_feedback(h, h).shape == (1, 4, 1)


def test_rating_encoding_and_per_row_normalisation() -> None:
    cfg = EventsConfig(rating=True, rating_scale=(1.0, 5.0), rating_buckets=5, rating_std_floor=0.5)
    r = np.array([[np.nan, 1.0, 3.0, 5.0, 2.4, 0.0]], np.float32)
    present = np.array([[False, True, True, True, True, False]])
    np.testing.assert_array_equal(EV.rating_buckets(cfg, r, present), [[0, 1, 3, 5, 2, 0]])
    mu, s = EV.row_rating_stats(cfg, r, present)
    vals = np.array([1.0, 3.0, 5.0, 2.4])
    assert mu[0] == pytest.approx(vals.mean()) and s[0] == pytest.approx(vals.std())
    mu, s = EV.row_rating_stats(cfg, np.array([[4.0, np.nan]]), np.array([[True, True]]))
    assert (mu[0], s[0]) == (4.0, 0.5)  # one rating: the floor
    mu, _ = EV.row_rating_stats(cfg, np.array([[np.nan]]), np.array([[True]]))
    assert mu[0] == 3.0  # none: the scale's midpoint
    np.testing.assert_allclose(EV.to_scale(cfg, "rating", np.array([[1.0, 9.0]]), np.array([3.0]), np.array([0.5])), [[3.5, 5.0]])


def test_rating_prior_shrinks_row_statistics_by_hand() -> None:
    # k = 2 pseudo-ratings at the prior (m0 3.5, s0 1): mu = (sum r + k m0) / (n + k),
    # sd^2 = (sum (r - mu)^2 + k s0^2) / (n + k)
    cfg = EventsConfig(rating=True, predict={"rating": 1.0}, rating_prior_weight=2.0, rating_std_floor=0.1)
    r = np.array([[5.0, 5.0, np.nan], [np.nan, np.nan, np.nan]])
    present = np.array([[True, True, True], [True, False, False]])
    mu, s = EV.row_rating_stats(cfg, r, present, (3.5, 1.0))
    m = (10.0 + 2 * 3.5) / 4
    assert mu[0] == pytest.approx(m) and s[0] == pytest.approx(np.sqrt((2 * (5 - m) ** 2 + 2 * 1.0) / 4))
    assert (mu[1], s[1]) == (pytest.approx(3.5), pytest.approx(1.0))  # a new user: the prior itself
    assert EV.fit_rating_prior(cfg, np.array([1.0, 3.0, np.nan])) == (2.0, 1.0)
    assert EV.fit_rating_prior(cfg.model_copy(update={"rating_prior_weight": 0.0}), np.array([1.0])) is None
    assert EV.fit_rating_prior(EventsConfig(rating=True), np.array([1.0])) is None  # no rating head


def test_item_bias_residual_by_hand() -> None:
    # b_i = sum (r - m) / (n_i + lambda), m the mean of all training ratings (here 3)
    cfg = EventsConfig(rating=True, predict={"rating": 1.0}, rating_item_bias=1.0, rating_prior_weight=1.0, rating_std_floor=0.1)
    tokens = np.array([4, 4, 5, 6, 4])
    r = np.array([5.0, 4.0, 1.0, np.nan, 5.0])  # m = 15 / 4 = 3.75
    b = EV.fit_item_bias(cfg, tokens, r, 8)
    np.testing.assert_allclose(b, [0, 0, 0, 0, (1.25 + 0.25 + 1.25) / (3 + 1), -2.75 / (1 + 1), 0, 0], rtol=1e-6)
    assert EV.fit_item_bias(cfg.model_copy(update={"rating_item_bias": 0.0}), tokens, r, 8) is None
    np.testing.assert_array_equal(EV.bias_of(b, np.array([[5, 99, -1]])), [[b[5], 0, 0]])
    # with each event's user: the ridge baseline m + b_u + b_i, against a direct least-squares solve
    users = np.array([0, 1, 1, 2, 2])
    got = EV.fit_item_bias(cfg, tokens, r, 8, users)
    ok = np.isfinite(r)
    x = np.zeros((ok.sum(), 3 + 8))
    x[np.arange(ok.sum()), users[ok]] = 1.0
    x[np.arange(ok.sum()), 3 + tokens[ok]] = 1.0
    a = np.vstack([x, np.eye(11)])  # lambda = 1: one pseudo-rating of 0 per bias
    sol = np.linalg.lstsq(a, np.concatenate([r[ok] - r[ok].mean(), np.zeros(11)]), rcond=None)[0]
    np.testing.assert_allclose(got[4:6], sol[3 + 4 : 3 + 6], atol=1e-3)
    # the prior is fitted on the residuals r - b_i
    off = EV.bias_of(b, tokens)
    res = (r - off)[np.isfinite(r)]
    assert EV.fit_rating_prior(cfg, r, off) == pytest.approx((res.mean(), res.std()))
    # a training batch: statistics of the inputs' residuals, target z = (r - b_t - mu) / s
    batch = {
        "inputs": np.array([[1, 4, 5]]),  # <start>, then two rated items
        "targets": np.array([[4, 5, 4]]),
        "mask": np.array([[True, True, True]]),
        "rating": np.array([[np.nan, 5.0, 1.0]], np.float32),
        "target_rating": np.array([[5.0, 1.0, 4.0]], np.float32),
    }
    prior = (3.0, 1.0)
    ev = EV.batch_events(cfg, batch, {}, prior, b)
    e = np.array([5.0 - b[4], 1.0 - b[5]])
    mu = (e.sum() + 3.0) / 3
    s = np.sqrt((((e - mu) ** 2).sum() + 1.0) / 3)
    want = (batch["target_rating"][0] - b[[4, 5, 4]] - mu) / s
    np.testing.assert_allclose(ev["fb_target"][0, :, 0], want, rtol=1e-5)
    np.testing.assert_array_equal(ev["rating_bucket"], [[0, 5, 1]])  # the inputs' buckets read raw ratings
    # prefix statistics: the target at column t is normalised by the inputs up to t only
    pre = EV.batch_events(cfg.model_copy(update={"rating_stats": "prefix"}), batch, {}, prior, b)
    mu1 = (e[0] + 3.0) / 2
    s1 = np.sqrt(((e[0] - mu1) ** 2 + 1.0) / 2)
    mus, ss = np.array([3.0, mu1, mu]), np.array([1.0, s1, s])  # column 0: no rating yet, the prior
    np.testing.assert_allclose(pre["fb_target"][0, :, 0], (batch["target_rating"][0] - b[[4, 5, 4]] - mus) / ss, rtol=1e-5)
    rr = np.array([[np.nan, 2.0, 5.0, np.nan, 4.0]])
    pr = np.array([[True, True, True, True, False]])
    pm, ps = EV.prefix_rating_stats(cfg, rr, pr, prior)
    for t in range(5):
        wm, ws = EV.row_rating_stats(cfg, rr[:, : t + 1], pr[:, : t + 1], prior)
        assert (pm[0, t], ps[0, t]) == (pytest.approx(wm[0]), pytest.approx(ws[0]))
    # back on the scale: mu + b_c + s z, clipped
    got = EV.to_scale(cfg, "rating", np.array([[0.5, 9.0]]), np.array([mu], np.float32), np.array([s], np.float32), b[[[4, 5]]])
    np.testing.assert_allclose(got, [[mu + b[4] + s * 0.5, 5.0]], rtol=1e-5)


def test_low_rank_rating_term_against_a_direct_computation() -> None:
    ev = EventsConfig(rating=True, feedback={"skip": "flag"}, predict={"rating": 1.0, "skip": 1.0}, rating_rank=3)
    net = SequenceTransformer(TINY, 20, nnx.Rngs(0), events=ev)
    h = jax.random.normal(jax.random.key(1), (2, 5, 8))
    e = jax.random.normal(jax.random.key(2), (2, 5, 8))
    mlp = np.asarray(net.feedback_head(jnp.concatenate([h, e], axis=-1)))
    np.testing.assert_array_equal(np.asarray(net.predict_feedback(h, e)), mlp)  # P starts at zero
    p = np.asarray(jax.random.normal(jax.random.key(3), (8, 3)))
    net.rating_p.kernel[...] = jnp.asarray(p)
    q = np.asarray(net.rating_q.kernel[...])
    got = np.asarray(net.predict_feedback(h, e))
    hn, en = np.asarray(h, np.float64), np.asarray(e, np.float64)
    bilinear = np.einsum("btd,dk,bte,ek->bt", hn, p, en, q)  # <P h, Q e> with x @ kernel as nnx.Linear
    assert np.abs(bilinear).max() > 0.1
    col = [n for n, _, _ in ev.targets()].index("rating")
    np.testing.assert_allclose(got[..., col], mlp[..., col] + bilinear, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got[..., 1 - col], mlp[..., 1 - col])  # the other column untouched
    with pytest.raises(ValueError, match="rating_rank"):
        EventsConfig(rating=True, rating_rank=2)
    # rating_mlp = false: the rating column is the bilinear term alone
    alone = SequenceTransformer(TINY, 20, nnx.Rngs(0), events=ev.model_copy(update={"rating_mlp": False}))
    nnx.update(alone, nnx.state(net, nnx.Param))
    got_alone = np.asarray(alone.predict_feedback(h, e))
    np.testing.assert_allclose(got_alone[..., col], bilinear, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got_alone[..., 1 - col], mlp[..., 1 - col])


def test_rating_fold_against_a_direct_computation_and_causal() -> None:
    ev = EventsConfig(rating=True, predict={"rating": 1.0}, rating_fold=True)
    net = SequenceTransformer(TINY, 20, nnx.Rngs(0), events=ev)
    tokens = jnp.asarray([[1, 5, 7, 9, 11, 6]], jnp.int32)
    buckets = np.array([[0, 5, 0, 1, 3, 4]], np.int32)  # <start>, then rated and unrated items
    e = {"rating_bucket": jnp.asarray(buckets)}
    h0 = np.asarray(net.hidden(tokens, events=e))
    w = np.asarray(jax.random.normal(jax.random.key(4), (8, 8)))
    net.fold_proj.kernel[...] = jnp.asarray(w)
    h = np.asarray(net.hidden(tokens, events=e))
    table = np.asarray(net.item_emb[...], np.float64)
    rho = np.array([0, -1, -0.5, 0, 0.5, 1])[buckets[0]]  # the initial weights per bucket
    u = np.cumsum(rho[:, None] * table[np.asarray(tokens[0])], axis=0) / np.sqrt(np.maximum(np.cumsum(buckets[0] > 0), 1))[:, None]
    np.testing.assert_allclose(h[0] - h0[0], u @ w, rtol=1e-4, atol=1e-6)
    # causal: the last event's item and rating change nothing before it
    e2 = {"rating_bucket": jnp.asarray(buckets).at[0, 5].set(1)}
    h2 = np.asarray(net.hidden(tokens.at[0, 5].set(13), events=e2))
    np.testing.assert_allclose(h2[0, :5], h[0, :5], rtol=1e-6, atol=1e-6)
    assert np.abs(h2[0, 5] - h[0, 5]).max() > 1e-3
    with pytest.raises(ValueError, match="rating_fold"):
        EventsConfig(predict={"rating": 1.0}, rating_fold=True)


def _ridge_direct(q: np.ndarray, e: np.ndarray, lam: float, lam_b: float) -> np.ndarray:
    """[b_u, p_u] = argmin sum_j (e_j - b - p . q_j)^2 + lam_b b^2 + lam |p|^2, by a direct solve."""
    f = np.concatenate([np.ones((len(q), 1)), q], axis=1)
    return np.linalg.solve(f.T @ f + np.diag([lam_b] + [lam] * q.shape[1]), f.T @ e)


def test_ridge_fold_against_a_direct_numpy_solve_and_causal() -> None:
    ev = EventsConfig(
        rating=True, predict={"rating": 1.0}, rating_rank=3, rating_mlp=False, rating_item_bias=1.0, rating_ridge=2.0, rating_ridge_bias=3.0
    )
    prior = (0.2, 1.25)
    net = SequenceTransformer(TINY, 20, nnx.Rngs(0), events=ev, rating_prior=prior)
    for init in (0.5, 0.05):  # the learned gain starts the item vectors at |q| ~ rating_ridge_init
        q0 = SequenceTransformer(TINY, 200, nnx.Rngs(0), events=ev.model_copy(update={"rating_ridge_init": init}), rating_prior=prior).fold_table()
        assert np.sqrt((q0[N_SPECIAL:] ** 2).sum(axis=1).mean()) == pytest.approx(init, rel=0.25)
    net.ridge_log_gain[...] = jnp.asarray(np.log(40.0), jnp.float32)  # item vectors of norm ~1: the fold matters
    tokens = np.array([[1, 5, 7, 9, 11, 6], [1, 8, 4, 0, 0, 0]])
    rated = np.array([[0, 1, 0, 1, 1, 1], [0, 1, 1, 0, 0, 0]], np.float32)  # <start>, unrated items, padding
    value = np.array([[0, 1.5, 0, -2.0, 0.5, 1.0], [0, -1.0, 0.75, 0, 0, 0]], np.float32)
    emb = net.item_emb[...][jnp.asarray(tokens)]
    user = np.asarray(net.ridge_user(emb, jnp.asarray(value), jnp.asarray(rated)))
    assert user.shape == (2, 6, 4)
    q = np.asarray(net.fold_vectors(emb), np.float64)
    assert np.abs(q).max() > 0.3
    for b in range(2):
        for t in range(6):
            keep = rated[b, : t + 1] > 0
            want = _ridge_direct(q[b, : t + 1][keep], value[b, : t + 1][keep], 2.0, 3.0) / prior[1]
            np.testing.assert_allclose(user[b, t], want, rtol=1e-4, atol=1e-5)
    assert np.abs(user[0, 5, 1:]).max() > 0.05
    # the host form (scoring) is the same solve at the last column
    host = EV.ridge_fold(ev, net.fold_table(), tokens, value, rated > 0)
    np.testing.assert_allclose(host / prior[1], user[:, -1], rtol=1e-4, atol=1e-5)
    # causal: the last event's item and residual change nothing before it
    tok2, val2 = tokens.copy(), value.copy()
    tok2[0, 5], val2[0, 5] = 13, -3.0
    user2 = np.asarray(net.ridge_user(net.item_emb[...][jnp.asarray(tok2)], jnp.asarray(val2), jnp.asarray(rated)))
    np.testing.assert_array_equal(user2[:, :5], user[:, :5])
    assert np.abs(user2[0, 5] - user[0, 5]).max() > 1e-3
    # the rating column: <P h, Q e> + b_u + <p_u, g Q e> (P at zero: the fold alone)
    h = jax.random.normal(jax.random.key(1), (2, 6, 8))
    e_next = net.item_emb[...][jnp.asarray(tokens[:, ::-1].copy())]
    got = np.asarray(net.predict_feedback(h, e_next, None, jnp.asarray(user)))[..., 0]
    qn = np.asarray(net.fold_vectors(e_next), np.float64)
    np.testing.assert_allclose(got, user[..., 0] + np.einsum("btk,btk->bt", user[..., 1:], qn), rtol=1e-4, atol=1e-5)
    net.rating_p.kernel[...] = jax.random.normal(jax.random.key(3), (8, 3))
    bilinear = np.einsum("btd,dk,bte,ek->bt", np.asarray(h), np.asarray(net.rating_p.kernel[...]), np.asarray(e_next), np.asarray(net.rating_q.kernel[...]))
    got_h = np.asarray(net.predict_feedback(h, e_next, None, jnp.asarray(user)))[..., 0]
    np.testing.assert_allclose(got_h, got + bilinear, rtol=1e-4, atol=1e-4)
    alone = SequenceTransformer(TINY, 20, nnx.Rngs(0), events=ev.model_copy(update={"rating_hidden": False}), rating_prior=prior)
    nnx.update(alone, nnx.state(net, nnx.Param))
    np.testing.assert_allclose(np.asarray(alone.predict_feedback(h, e_next, None, jnp.asarray(user)))[..., 0], got, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pass `user`"):
        net.predict_feedback(h, e_next)
    # rating_ridge_table: the fold-in vectors are g T[tokens], a table of their own
    tab = SequenceTransformer(TINY, 20, nnx.Rngs(0), events=ev.model_copy(update={"rating_ridge_table": True}), rating_prior=prior)
    tab.ridge_log_gain[...] = jnp.asarray(np.log(40.0), jnp.float32)
    got_t = np.asarray(tab.ridge_user(emb, jnp.asarray(value), jnp.asarray(rated), jnp.asarray(tokens)))
    q_t = 40.0 * np.asarray(tab.ridge_table[...], np.float64)[tokens]
    keep = rated[0] > 0
    np.testing.assert_allclose(got_t[0, -1], _ridge_direct(q_t[0][keep], value[0][keep], 2.0, 3.0) / prior[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tab.fold_table(), 40.0 * np.asarray(tab.ridge_table[...]), rtol=1e-5)
    with pytest.raises(ValueError, match="pass `tokens`"):
        tab.ridge_user(emb, jnp.asarray(value), jnp.asarray(rated))
    with pytest.raises(ValueError, match="rating_ridge: the fold-in needs item vectors"):
        EventsConfig(rating=True, predict={"rating": 1.0}, rating_item_bias=1.0, rating_ridge=2.0)
    with pytest.raises(ValueError, match="rating_ridge: the fold-in reads residuals"):
        EventsConfig(rating=True, predict={"rating": 1.0}, rating_rank=2, rating_ridge=2.0)


def test_min_history_masks_targets_and_predicts_the_baseline() -> None:
    cfg = EventsConfig(rating=True, predict={"rating": 1.0}, rating_item_bias=1.0, rating_min_history=2, rating_stats="prefix")
    b = np.array([0, 0, 0, 0, 0.5, -1.0, 0.25], np.float32)
    batch = {
        "inputs": np.array([[1, 4, 5, 6], [1, 6, 0, 0]]),  # <start> then rated items; row 1: one event, padding
        "targets": np.array([[4, 5, 6, 4], [5, 0, 0, 0]]),
        "mask": np.array([[True, True, True, True], [True, False, False, False]]),
        "rating": np.array([[np.nan, 5.0, np.nan, 2.0], [np.nan, 3.0, np.nan, np.nan]], np.float32),
        "target_rating": np.array([[5.0, 1.0, 4.0, 3.0], [2.0, np.nan, np.nan, np.nan]], np.float32),
    }
    ev = EV.batch_events(cfg, batch, {}, (3.0, 1.0), b)
    # rated inputs up to each column: [0, 1, 1 (item 5 unrated), 2] and [0, ...]: only column 3 has two
    np.testing.assert_array_equal(ev["fb_mask"][..., 0], [[False, False, False, True], [False] * 4])
    off = EV.batch_events(cfg.model_copy(update={"rating_min_history": 0}), batch, {}, (3.0, 1.0), b)
    np.testing.assert_array_equal(off["fb_mask"][..., 0], batch["mask"] & (batch["targets"] >= N_SPECIAL))
    np.testing.assert_array_equal(off["fb_target"], ev["fb_target"])  # the targets themselves do not move
    # scoring: a history with fewer rated events than 2 gets s = 0, i.e. mu + b_i whatever the head says
    hist = SequenceArrays(
        offsets=np.array([0, 2, 3, 3], np.int64),
        tokens=np.array([4, 6, 5], np.int32),
        item_ids=np.array([0, 2, 1], np.int32),
        rating=np.array([5.0, 2.0, 4.0], np.float32),
    )
    _, mu, s = EV.history_events(cfg, {}, hist, np.arange(3), 6, 8, prior=(3.0, 1.0), item_bias=b)
    _, mu0, s0 = EV.history_events(cfg.model_copy(update={"rating_min_history": 0}), {}, hist, np.arange(3), 6, 8, prior=(3.0, 1.0), item_bias=b)
    np.testing.assert_array_equal(mu, mu0)
    assert s[0] == s0[0] > 0 and s[1] == s[2] == 0.0
    got = EV.to_scale(cfg, "rating", np.full((3, 1), 0.7, np.float32), mu, s, b[[[4], [4], [4]]])
    np.testing.assert_allclose(got[1:, 0], mu[1:] + b[4], rtol=1e-6)
    assert got[0, 0] == pytest.approx(min(5.0, mu[0] + b[4] + 0.7 * s[0]), rel=1e-6)


def test_history_scope_statistics_read_every_rated_event() -> None:
    cfg = EventsConfig(rating=True, predict={"rating": 1.0}, rating_stats_scope="history")
    hist = SequenceArrays(
        offsets=np.array([0, 5, 6], np.int64),
        tokens=np.array([4, 5, 6, 4, 5, 6], np.int32),
        item_ids=np.array([0, 1, 2, 0, 1, 2], np.int32),
        rating=np.array([1.0, 1.0, np.nan, 5.0, 4.0, 2.0], np.float32),
    )
    prior = (3.0, 1.0)
    # context 3: the network reads <start> and the last 2 events; the statistics read all 4 ratings
    _, mu, s = EV.history_events(cfg, {}, hist, np.arange(2), 3, 4, prior=prior)
    want = EV.row_rating_stats(cfg, np.array([[1.0, 1.0, np.nan, 5.0, 4.0], [2.0] + [np.nan] * 4]), np.array([[True] * 5, [True] + [False] * 4]), prior)
    np.testing.assert_allclose(mu, want[0], rtol=1e-6)
    np.testing.assert_allclose(s, want[1], rtol=1e-6)
    _, mu_w, _ = EV.history_events(cfg.model_copy(update={"rating_stats_scope": "window"}), {}, hist, np.arange(2), 3, 4, prior=prior)
    assert mu_w[0] == pytest.approx((5.0 + 4.0 + 2 * 3.0) / 4) and mu_w[1] == mu[1]


def test_time_slots_by_hand() -> None:
    monday_9h = 1_700_438_400 + 9 * 3600  # 2023-11-20 was a Monday
    ts = np.array([[0, monday_9h, monday_9h, monday_9h + 5, monday_9h + 86400 * 5 + 3600 * 14]])
    prev = np.array([[0, 0, monday_9h, monday_9h, monday_9h + 5]])
    ok = np.array([[False, True, True, True, True]])
    prev_ok = np.array([[False, False, True, True, True]])
    got = EV.time_slots(ts, prev, ok, prev_ok)
    # gap: none (no event / no earlier event), same second -> 1, 5 s -> 2 + 2, 5 days 14 h -> 2 + 18
    np.testing.assert_array_equal(got[0, :, 0], [0, 0, 1, 4, 2 + int(np.log2(5 * 86400 + 14 * 3600 - 5))])
    np.testing.assert_array_equal(got[0, :, 1], [0, 10, 10, 10, 24])  # 1 + hour (UTC)
    np.testing.assert_array_equal(got[0, :, 2], [0, 1, 1, 1, 6])  # Monday = 1, Saturday = 6


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="predict: 'plays'"):
        EventsConfig(predict={"plays": 1.0})
    with pytest.raises(ValueError, match="rating_scale"):
        EventsConfig(rating_scale=(5.0, 1.0))


# ---------------------------------------------------------------------------------------------
# training on a small store with feedback and context


def _corpus(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    seqs, rating, skip, listened, platform, ts = [], [], [], [], [], []
    for _ in range(60):
        n = int(rng.integers(4, 10))
        ts.append([int(x) for x in 1_700_000_000 + np.cumsum(rng.integers(0, 200_000, n))])
        start = int(rng.integers(0, 10))
        seqs.append([(start + i) % 24 for i in range(n)])
        rating.append([float(x) for x in rng.integers(1, 6, n)])
        skip.append([float(x) for x in rng.integers(0, 2, n)])
        listened.append([None if rng.random() < 0.2 else float(x) for x in rng.random(n)])
        platform.append([PLATFORMS[int(x)] for x in rng.integers(0, 3, n)])
    return {"seqs": seqs, "rating": rating, "ts": ts, "extra": {"fb_skip": skip, "fb_listened": listened, "ctx_platform": platform}}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    c = _corpus()
    path = tmp_path_factory.mktemp("fbstore") / "s.duckdb"
    return make_store(path, c["seqs"], [{"kind": "leave_last_out", "name": "loo"}], rating=c["rating"], ts=c["ts"], extra=c["extra"])


def _config(store: Path, loss: dict, events: EventsConfig = TRAIN_EVENTS, steps: int = 4) -> dict:
    return {
        "name": "fb",
        "data": {"store": str(store), "split": "loo"},
        "model": TINY.model_dump() | {"dropout": 0.1},
        "loss": loss,
        "optim": {"warmup_steps": 2},
        "events": events.model_dump(mode="json"),
        "trainer": {
            "max_steps": steps,
            "eval_every": 2,
            "checkpoint_every": 2,
            "log_every": 1,
            "progress": False,
            "patience": None,
            "loader": {"batch_size": 8, "bucketing": False, "prefetch_threads": 0},
        },
    }


@pytest.mark.parametrize("loss", [{"kind": "logq", "n_negatives": 6, "n_inbatch": 4}, {"kind": "full"}], ids=["sparse", "full"])
def test_train_steps_with_feedback_and_context(store: Path, loss: dict) -> None:
    from segue.training.trainer import TrainConfig
    from segue.training.transformer_task import TransformerTask

    cfg = TrainConfig.from_dict(_config(store, loss)).transformer_config()
    with Store.open(store) as st:
        data = SplitData.load(st, "loo")
        task = TransformerTask(cfg, data)
        assert task.spec.sparse == (loss["kind"] != "full")
        assert task.categories == {"platform": data.train.context_categories["platform"]}
        state = task.init_state()
        before = jax.tree_util.tree_map(np.asarray, state["rest"])
        for _ in range(3):
            state, m = task.train_step(state, next(task.loader), 1.0)
        m = jax.device_get(m)
        assert np.isfinite(m["loss"]) and not m["skipped"]
        assert m["loss"] == pytest.approx(m["item_loss"] + m["feedback_loss"], rel=1e-5)
        assert m["feedback_loss"] > 0 and {"fb_loss_rating", "fb_loss_skip", "fb_loss_listened"} <= set(m)
        after = jax.tree_util.tree_map(np.asarray, state["rest"])
        for part in ("encoder", "next_head", "feedback_head"):
            moved = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before[part]), jax.tree_util.tree_leaves(after[part]), strict=True)]
            assert all(moved), part
        res = task.validate(state)
        assert res is not None and np.isfinite(res["exact_ce"]) and 0 <= res["ndcg@10"] <= 1
        # the feedback head is validated on the target events, on each column's scale
        assert 0 < res["rating_rmse"] < 4 and 0 < res["skip_rmse"] < 1 and 0 < res["listened_rmse"] < 1


def test_missing_columns_are_config_errors(store: Path) -> None:
    from segue.training.trainer import TrainConfig
    from segue.training.transformer_task import TransformerTask

    bad = EventsConfig(feedback={"plays": "count"}, context=["platform"])
    cfg = TrainConfig.from_dict(_config(store, {"kind": "full"}, bad)).transformer_config()
    with Store.open(store) as st:
        data = SplitData.load(st, "loo")
        with pytest.raises(ConfigError, match="events.feedback: .* no feedback column 'plays' .*listened, skip"):
            TransformerTask(cfg, data)
        few = EventsConfig(context=["platform"], max_categories=2)
        cfg = TrainConfig.from_dict(_config(store, {"kind": "full"}, few)).transformer_config()
        with pytest.raises(ConfigError, match="'platform' has 3 categories .*events.max_categories = 2"):
            TransformerTask(cfg, data)


def test_fit_score_by_category_name_predict_and_reload(store: Path, tmp_path: Path) -> None:
    from segue.models.transformer import TransformerRecommender
    from segue.training.trainer import TrainConfig

    d = _config(store, {"kind": "logq", "n_negatives": 6, "n_inbatch": 4})
    d["trainer"]["metric"] = "rating_rmse"  # a minimised metric selects the best weights
    cfg = TrainConfig.from_dict(d).transformer_config()
    with Store.open(store) as st:
        data = SplitData.load(st, "loo")
        rec = TransformerRecommender(cfg).fit(data)
        hist = data.history(Part.TEST)  # the test histories, with their per-event columns
    summary = rec.meta["train"]
    rmse = [h["rating_rmse"] for h in summary["history"]]
    assert len(rmse) >= 2 and summary["best_metric"] == min(rmse)
    assert summary["best_step"] == summary["history"][int(np.argmin(rmse))]["step"]
    net = rec.network
    assert net.categories == {"platform": data.train.context_categories["platform"]}
    # make the context matter, then check it is read by name
    net.next_head.fc2.kernel[...] = jax.random.normal(jax.random.key(0), net.next_head.fc2.kernel[...].shape)
    rows = hist.nonempty()[:5]
    sub = hist.take(rows)
    base = rec.score(sub)
    assert base.shape == (5, len(rec.vocab)) and np.isfinite(base[:, N_SPECIAL:]).all()
    # the same histories coded with another category order score the same
    cats = list(sub.context_categories["platform"])
    perm = cats[::-1]
    recoded = SequenceArrays(
        offsets=sub.offsets, tokens=sub.tokens, item_ids=sub.item_ids, ts=sub.ts, rating=sub.rating, feedback=sub.feedback,
        context={"platform": np.array([perm.index(cats[c]) for c in sub.context["platform"]], np.int32)},
        context_categories={"platform": perm},
    )  # fmt: skip
    np.testing.assert_allclose(rec.score(recoded), base, rtol=1e-5, atol=1e-6)
    # the next event's context comes from next_events when given (a request's context)
    req = SequenceArrays.from_lists([[5]] * 5)
    for p in PLATFORMS:
        req.context["platform"] = np.full(5, cats.index(p) if p in cats else 0, np.int32)
        req.context_categories["platform"] = cats
        got = rec.score(sub, next_events=req)
        if p == PLATFORMS[0]:
            first = got
    assert not np.allclose(first, got)
    # feedback predictions on the columns' scales
    tokens = np.tile(np.arange(N_SPECIAL, N_SPECIAL + 3), (5, 1))
    fb = rec.predict_feedback(sub, None, tokens)
    assert set(fb) == {"rating", "skip", "listened"} and all(v.shape == (5, 3) for v in fb.values())
    assert np.all((fb["rating"] >= 1) & (fb["rating"] <= 5))
    assert np.all((fb["skip"] > 0) & (fb["skip"] < 1)) and np.all((fb["listened"] > 0) & (fb["listened"] < 1))
    np.testing.assert_array_equal(rec.predict(sub, None, tokens), fb["rating"])
    one = rec.predict_feedback(sub, np.array([2]), tokens[:1])
    np.testing.assert_allclose(one["rating"][0], fb["rating"][2], rtol=1e-5)
    # save / load keeps the weights and the training categories
    back = load_model(rec.save(tmp_path / "m"))
    assert json.loads(back.network.categories_json) == net.categories
    # ...and the rating prior: the training ratings' mean and sd
    r = data.train.rating[np.isfinite(data.train.rating)]
    assert net.rating_prior == pytest.approx((r.mean(), r.std()), rel=1e-5)
    assert back.network.rating_prior == net.rating_prior
    np.testing.assert_allclose(back.score(sub), base, rtol=1e-6)
    np.testing.assert_allclose(back.predict(sub, None, tokens), fb["rating"], rtol=1e-6)


def test_item_bias_head_fits_saves_and_predicts_the_baseline(store: Path, tmp_path: Path) -> None:
    from segue.models.transformer import TransformerRecommender
    from segue.training.trainer import TrainConfig

    ev = EventsConfig(rating=True, predict={"rating": 1.0}, rating_item_bias=2.0)
    cfg = TrainConfig.from_dict(_config(store, {"kind": "full"}, ev, steps=2)).transformer_config()
    with Store.open(store) as st:
        data = SplitData.load(st, "loo")
        rec = TransformerRecommender(cfg).fit(data)
        hist = data.history(Part.TEST)
    tr = data.train
    want = EV.fit_item_bias(ev, tr.tokens, tr.rating, len(data.vocab), np.repeat(np.arange(len(tr)), tr.lengths))
    net = rec.network
    np.testing.assert_allclose(net.rating_item_bias, want, rtol=1e-6)
    assert np.abs(want).max() > 0.05  # the corpus' items differ in mean rating
    res = (tr.rating - EV.bias_of(want, tr.tokens))[np.isfinite(tr.rating)]
    assert net.rating_prior == pytest.approx((res.mean(), res.std()), rel=1e-5)
    # with the head's output at zero, a prediction is the bias baseline mu_u + b_i
    net.feedback_head.fc2.kernel[...] = jnp.zeros_like(net.feedback_head.fc2.kernel[...])
    net.feedback_head.fc2.bias[...] = jnp.zeros_like(net.feedback_head.fc2.bias[...])
    rows = hist.nonempty()[:4]
    sub = hist.take(rows)
    tokens = np.tile(np.arange(N_SPECIAL, N_SPECIAL + 5), (len(rows), 1))
    got = rec.predict(sub, None, tokens)
    for i in range(len(rows)):
        seq, r = sub.row(i), sub.rating[sub.offsets[i] : sub.offsets[i + 1]]
        keep = slice(max(0, len(seq) - TINY.context_length), None)  # the window the model reads (cropped: no <start>)
        e = (r - EV.bias_of(want, seq))[keep]
        mu_u, _ = EV.row_rating_stats(ev, e[None], np.ones((1, len(e)), bool), net.rating_prior)
        np.testing.assert_allclose(got[i], np.clip(mu_u[0] + want[tokens[i]], 1, 5), rtol=1e-5)
    back = load_model(rec.save(tmp_path / "m"))
    np.testing.assert_array_equal(back.network.rating_item_bias, net.rating_item_bias)
    np.testing.assert_allclose(back.predict(sub, None, tokens), got, rtol=1e-6)


def test_ridge_head_trains_and_predicts_the_fold_in_of_every_rated_event(store: Path, tmp_path: Path) -> None:
    from segue.models.transformer import TransformerRecommender
    from segue.training.trainer import TrainConfig

    ev = EventsConfig(
        rating=True, predict={"rating": 1.0}, rating_item_bias=2.0, rating_rank=3, rating_mlp=False, rating_ridge=2.0,
        rating_min_history=1, rating_stats_scope="history", rating_ridge_table=True,
    )  # fmt: skip
    cfg = TrainConfig.from_dict(_config(store, {"kind": "full"}, ev, steps=2)).transformer_config()
    with Store.open(store) as st:
        data = SplitData.load(st, "loo")
        rec = TransformerRecommender(cfg).fit(data)
        hist = data.history(Part.TEST)
    net = rec.network
    assert np.isfinite(rec.meta["train"]["history"][-1]["rating_rmse"])
    m0, s0 = net.rating_prior
    b, table = net.rating_item_bias, net.fold_table()
    rows = hist.nonempty()[:4]
    sub = hist.take(rows)
    assert sub.lengths.max() > TINY.context_length  # histories beyond the window the network reads
    tokens = np.tile(np.arange(N_SPECIAL, N_SPECIAL + 5), (len(rows), 1))
    got = rec.predict(sub, None, tokens)
    for i in range(len(rows)):
        seq, r = sub.row(i), sub.rating[sub.offsets[i] : sub.offsets[i + 1]]
        ok = np.isfinite(r)
        x = _ridge_direct(table[seq[ok]].astype(np.float64), (r - EV.bias_of(b, seq))[ok] - m0, 2.0, ev.rating_ridge_bias)
        want = m0 + b[tokens[i]] + x[0] + table[tokens[i]] @ x[1:]  # every rated event, not the window
        np.testing.assert_allclose(got[i], np.clip(want, 1, 5), rtol=1e-4, atol=1e-4)
    back = load_model(rec.save(tmp_path / "m"))
    np.testing.assert_allclose(back.predict(sub, None, tokens), got, rtol=1e-6)
    # the scorer's cached fold-in vectors follow an in-place update of the network
    back.network.ridge_log_gain[...] = back.network.ridge_log_gain[...] + 1.0
    np.testing.assert_allclose(back.network.fold_table(), np.e * table, rtol=1e-5)
    assert np.abs(back.predict(sub, None, tokens) - got).max() > 1e-3


@pytest.mark.slow
def test_kill_and_resume_is_bit_identical_with_the_heads(store: Path, tmp_path: Path) -> None:
    import test_trainer as tt
    from segue.training.trainer import TrainConfig

    d = _config(store, {"kind": "logq", "n_negatives": 6, "n_inbatch": 4}, steps=2 * tt.N)
    d["trainer"].update(eval_every=tt.N, checkpoint_every=tt.N, log_every=3)
    d["optim"] = {"warmup_steps": 2, "plateau_patience": 1, "plateau_factor": 0.5}
    d["trainer"]["loader"].update(unk_rate=0.1, prefetch_threads=1)
    TrainConfig.from_dict(d).save(tmp_path / "cfg.toml")
    run_kill_and_resume(tt, tmp_path, tmp_path / "cfg.toml")


def run_kill_and_resume(tt: Any, tmp: Path, cfg_path: Path) -> None:
    """test_trainer's kill -9 protocol with another config: run 2N steps; run, kill after
    checkpoint N, resume; the final states are bit-identical."""

    run_a, run_b = tmp / "a", tmp / "b"
    a = tt._child(tmp, cfg_path, "run", run_a)
    out, _ = a.communicate(timeout=600)
    assert a.returncode == 0, out
    b = tt._child(tmp, cfg_path, "stall", run_b)
    kill_after_checkpoint(b, run_b, tt.N)
    c = tt._child(tmp, cfg_path, "run", run_b)
    out, _ = c.communicate(timeout=600)
    assert c.returncode == 0, out
    sa, sb = tt._final_state(run_a, 2 * tt.N), tt._final_state(run_b, 2 * tt.N)
    la, ta = jax.tree_util.tree_flatten(sa)
    lb, tb = jax.tree_util.tree_flatten(sb)
    assert ta == tb
    assert any("feedback_head" in str(p) for p, _ in jax.tree_util.tree_flatten_with_path(sa)[0])
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (run_a, run_b))
    assert ma["history"] == mb["history"] and mb["resumed_from"] == tt.N
    model = load_model(run_a)  # the run folder's weights carry the categories
    assert model.network.categories["platform"] and set(model.network.categories["platform"]) == set(PLATFORMS)


# ---------------------------------------------------------------------------------------------
# the synthetic corpus with feedback: where the feedback-aware model must win


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties count half."""
    pos, neg = score[label > 0.5], score[label <= 0.5]
    greater = (pos[:, None] > neg[None, :]).mean()
    return float(greater + 0.5 * (pos[:, None] == neg[None, :]).mean())


@pytest.mark.slow
def test_the_feedback_aware_model_beats_the_plain_one_on_the_synthetic_corpus(tmp_path: Path) -> None:
    """The next event's platform and hour say something about its genre and artist (by
    construction), so the context-aware next-item head must have a lower exact cross-entropy; and
    skips depend on the track's fit to the playlist, so the feedback head must rank them."""
    from segue.data.sources.synthetic import SyntheticConfig, SyntheticSource
    from segue.data.store import BuildConfig, build_store
    from segue.models.transformer import TransformerRecommender
    from segue.training.evaluate import ValidationSet

    syn = SyntheticConfig(n_playlists=500, n_items=250, mean_length=12, min_length=5, max_length=30, feedback=True)
    path = build_store(SyntheticSource(syn), tmp_path / "syn.duckdb", BuildConfig(splits=[{"kind": "leave_last_out", "name": "loo"}]))
    base = {
        "model": {"n_layers": 1, "n_heads": 2, "d_model": 32, "d_ff": 64, "dropout": 0.1, "context_length": 12},
        "loss": {"kind": "full"},
        "optim": {"warmup_steps": 20, "lr": 3e-3},
        "trainer": {
            "max_steps": 150, "eval_every": 150, "progress": False, "patience": None, "eval_max_users": 500,
            "loader": {"batch_size": 64, "bucketing": False, "prefetch_threads": 0},
        },
    }  # fmt: skip
    aware = EventsConfig(
        context=["platform", "hour"], feedback={"skip": "flag", "listened": "fraction"}, predict={"skip": 0.5, "listened": 0.5}
    )
    with Store.open(path) as st:
        data = SplitData.load(st, "loo")
        plain = TransformerRecommender(TransformerConfig.from_dict(base)).fit(data)
        rec = TransformerRecommender(TransformerConfig.from_dict(base | {"events": aware.model_dump(mode="json")})).fit(data)
        vset = ValidationSet.from_split(data, 500, with_events=True)
    p, a = plain.meta["train"]["history"][-1], rec.meta["train"]["history"][-1]
    assert a["exact_ce"] < p["exact_ce"] - 0.5, (p, a)
    assert a["ndcg@10"] > 0.5 * p["ndcg@10"], (p, a)  # and ranking did not collapse
    got = rec.predict_feedback(vset.histories, None, vset.targets[:, None], next_events=vset.next_events)
    truth = np.asarray(vset.next_events.feedback["skip"])
    assert 0.05 < truth.mean() < 0.5
    assert _auc(got["skip"][:, 0], truth) > 0.65
    listened = np.asarray(vset.next_events.feedback["listened"])
    assert np.corrcoef(got["listened"][:, 0], listened)[0, 1] > 0.3


def test_ridge_table_starts_from_biasedmf_als_factors(store: Path) -> None:
    """rating_ridge_start = "als": the fold-in table starts as biasedmf's ALS item factors (same
    rank and regularisation, the same seed), by token, with the gain at 1."""
    from segue.models.biasedmf import BiasedMF, BiasedMFConfig
    from segue.training.trainer import TrainConfig
    from segue.training.transformer_task import TransformerTask

    ev = EventsConfig(
        rating=True, predict={"rating": 1.0}, rating_item_bias=2.0, rating_rank=3, rating_mlp=False, rating_ridge=2.0,
        rating_ridge_bias=1.5, rating_min_history=1, rating_stats_scope="history", rating_ridge_table=True, rating_ridge_start="als",
    )  # fmt: skip
    cfg = TrainConfig.from_dict(_config(store, {"kind": "full"}, ev, steps=2)).transformer_config()
    with Store.open(store) as st:
        data = SplitData.load(st, "loo")
        task = TransformerTask(cfg, data)
        net = task.network(task.init_state())
        mf = BiasedMF(BiasedMFConfig(factors=3, reg=2.0, bias_reg=1.5)).fit(data)
    table = np.asarray(net.ridge_table[...])
    assert float(net.ridge_log_gain[...]) == 0.0
    np.testing.assert_allclose(table[N_SPECIAL:], mf.item_factors, rtol=1e-5, atol=1e-6)
    assert np.abs(table[:N_SPECIAL]).max() == 0.0 and np.abs(table[N_SPECIAL:]).max() > 0.01
    np.testing.assert_allclose(net.fold_table(), table, rtol=1e-6)  # g = 1: the fold-in reads them as they are
    with pytest.raises(ValueError, match="rating_ridge_table"):
        EventsConfig(rating=True, predict={"rating": 1.0}, rating_item_bias=2.0, rating_rank=3, rating_ridge=2.0, rating_ridge_start="als")
