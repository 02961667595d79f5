"""Profile autoencoder: losses against hand computations, fold-in, predictions, bad ratings,
save/load, and training through the shared loop."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datahelp import make_store
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.ratings import RatingScale, denormalise, normalise
from segue.data.store import Store
from segue.data.vocab import N_SPECIAL
from segue.errors import ConfigError, InputError, SegueError
from segue.models.autoencoder import (
    AutoencoderConfig,
    AutoencoderRecommender,
    Profiles,
    rating_unit,
)
from segue.models.base import load_model
from segue.training import autoencoder_losses as AL

# --- losses -----------------------------------------------------------------------------------


def test_multinomial_nll_by_hand() -> None:
    logits = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    x = np.array([[1, 1, 0], [0, 0, 1]], np.float32)
    w = np.array([1.0, 1.0], np.float32)
    z0 = math.log(math.e + math.e**2 + 1)
    row0 = -((1 - z0) + (2 - z0))
    row1 = math.log(3)
    assert float(AL.multinomial_nll(jnp.asarray(logits), jnp.asarray(x), jnp.asarray(w))) == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # a zero-weight (padding) row does not count
    w2 = np.array([1.0, 0.0], np.float32)
    assert float(AL.multinomial_nll(jnp.asarray(logits), jnp.asarray(x), jnp.asarray(w2))) == pytest.approx(row0, rel=1e-5)


def test_held_out_nll_by_hand() -> None:
    # row 0: profile {0, 1, 2} of 5 items, 0 kept in the input, 1 and 2 hidden; row 1: {4}, hidden
    logits = jnp.asarray([[3.0, 1.0, 2.0, 0.0, -1.0], [0.5, 0.0, 0.0, 0.0, 1.0]])
    row, col = jnp.asarray([0, 0, 0, 1]), jnp.asarray([0, 1, 2, 4])
    kept, target = jnp.asarray([1.0, 0.0, 0.0, 0.0]), jnp.asarray([0.0, 1.0, 1.0, 1.0])
    w = jnp.asarray([1.0, 1.0])
    z0 = math.log(math.e + math.e**2 + 1 + math.e**-1)  # item 0 (kept) is out of row 0's softmax
    row0 = -((1 - z0) + (2 - z0))
    row1 = -(1 - math.log(math.exp(0.5) + 3 + math.e))
    got = float(AL.held_out_nll_entries(logits, row, col, kept, target, w))
    assert got == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # per entry: each row's sum over its 2 and 1 hidden entries
    got = float(AL.held_out_nll_entries(logits, row, col, kept, target, w, per_entry=True))
    assert got == pytest.approx((row0 / 2 + row1) / 2, rel=1e-5)


def test_huber_by_hand() -> None:
    e = jnp.asarray([0.5, -1.0, 3.0, -2.5])
    np.testing.assert_allclose(np.asarray(AL.huber(e, 1.0)), [0.125, 0.5, 2.5, 2.0], rtol=1e-6)
    pred = jnp.asarray([[1.0, 2.0, 9.0], [0.0, 0.0, 0.0]])
    target = jnp.asarray([[0.5, 0.0, 0.0], [3.0, 0.0, 0.0]])
    rated = jnp.asarray([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # the 9 is unrated: ignored
    w = jnp.asarray([1.0, 1.0])
    want = (0.125 + 1.5 + 2.5) / 3
    assert float(AL.masked_huber(pred, target, rated, w, 1.0)) == pytest.approx(want, rel=1e-6)


def test_uncertainty_weighting_against_a_direct_computation() -> None:
    losses = np.array([600.0, 0.3])
    s = np.array([6.0, -1.2])
    direct = sum(math.exp(-si) * li + si for li, si in zip(losses, s, strict=True))
    assert float(AL.uncertainty_weighted(jnp.asarray(losses), jnp.asarray(s))) == pytest.approx(direct, rel=1e-6)
    # its minimum over s is at s = log L
    grid = np.linspace(5.0, 8.0, 3001)
    best = grid[np.argmin(np.exp(-grid) * 600.0 + grid)]
    assert best == pytest.approx(math.log(600.0), abs=2e-3)
    assert float(AL.fixed_weighted(jnp.asarray(losses), jnp.asarray([1.0, 10.0]))) == pytest.approx(603.0)


# --- a tiny rated store -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    seqs, ratings = [], []
    for u in range(80):
        group = u % 2  # two tastes: items 0-11 or 12-23, rated high within the taste
        items = rng.choice(np.arange(12) + 12 * group, size=int(rng.integers(5, 10)), replace=False)
        seqs.append([int(i) for i in items])
        ratings.append([float(rng.integers(6, 11)) for _ in items])
    path = tmp_path_factory.mktemp("ae") / "s.duckdb"
    return make_store(path, seqs, [{"kind": "strong", "name": "strong", "valid_users": 10, "test_users": 10}], rating=ratings)


def _config(**trainer: object) -> AutoencoderConfig:
    return AutoencoderConfig.from_dict(
        {
            "model": {"hidden": [16], "bottleneck": 8, "input_dropout": 0.3, "bottleneck_noise": 0.1},
            "optim": {"lr": 1e-2, "warmup_steps": 0, "schedule": "constant", "plateau_patience": 1},
            "trainer": {"max_steps": 150, "eval_every": 75, "metric": "ndcg@100", "progress": False, "patience": None, "loader": {"batch_size": 16}}
            | trainer,
        }
    )


@pytest.fixture(scope="module")
def fitted(store: Path) -> AutoencoderRecommender:
    with Store.open(store) as s:
        data = SplitData.load(s, "strong")
        model = AutoencoderRecommender(_config()).fit(data)
    return model


def test_fit_trains_and_validates(fitted: AutoencoderRecommender) -> None:
    summary = fitted.meta["train"]
    assert summary["steps"] == 150 and summary["best_step"] in (75, 150)
    first, last = summary["history"][0], summary["history"][-1]
    assert 0 < last["ndcg@100"] <= 1 and "rmse" in first and "recall@20" in first
    assert fitted.scale == RatingScale(6.0, 10.0)  # inferred from the training ratings


def _with_correction(pred: np.ndarray, prof: Profiles, net: object, lam: float) -> np.ndarray:
    """The head's hybrid predictions plus the fold-in correction, written out per profile: the
    ridge c = argmin sum_k (e_k - c . [1, w_k])^2 + c_0^2 + lam ||c_1:||^2 over the rated entries,
    by least squares on the stacked system (not the normal equations rating_correction solves)."""
    w = np.asarray(net.rating_head[-1].kernel[...], np.float64)  # type: ignore[attr-defined]
    q_all = np.concatenate([np.ones((1, w.shape[1])), w])
    out = np.asarray(pred, np.float64).copy()
    for i in range(len(out)):
        k = np.flatnonzero(prof.rated[i])
        a = np.concatenate([q_all[:, k].T, np.diag(np.sqrt([1.0] + [lam] * w.shape[0]))])
        e = np.concatenate([prof.ratings[i, k] - pred[i, k], np.zeros(w.shape[0] + 1)])
        c = np.linalg.lstsq(a, e, rcond=None)[0]
        out[i] += c @ q_all
    return out


def test_rating_correction_fits_the_profiles_own_ratings(fitted: AutoencoderRecommender) -> None:
    """model.rating_foldin: the correction moves the head's predictions of the profile's own rated
    items toward the given ratings (it is fitted on them), is off at 0, and leaves a profile
    without ratings as it was."""
    rng = np.random.default_rng(4)
    hist = SequenceArrays.from_lists([list(rng.choice(np.arange(12) + N_SPECIAL, 8, replace=False)) for _ in range(2)])
    hist.rating = rng.integers(6, 11, len(hist.tokens)).astype(np.float32)
    hist.rating[8:] = np.nan  # the second profile is unrated
    off = AutoencoderRecommender(fitted.config.model_copy(update={"model": fitted.config.model.model_copy(update={"rating_foldin": 0.0})}, deep=True), fitted.vocab)
    off.network = fitted.network
    _, with_fix, _ = fitted.forward(hist)
    _, without, _ = off.forward(hist)
    prof = Profiles(hist, np.arange(2), fitted.network.n_items, fitted.scale, fitted.config.model)
    k = np.flatnonzero(prof.rated[0])
    assert len(k) == 8 and not prof.rated[1].any()
    err_with = np.abs(with_fix[0, k] - prof.ratings[0, k]).mean()
    err_without = np.abs(without[0, k] - prof.ratings[0, k]).mean()
    assert err_with < err_without
    np.testing.assert_allclose(with_fix[1], without[1], rtol=1e-6, atol=1e-6)
    assert np.abs(with_fix[0] - without[0]).max() > 1e-3  # unseen items move too (user bias and vector)


def test_fold_in_equals_score_and_the_network(fitted: AutoencoderRecommender) -> None:
    rng = np.random.default_rng(1)
    rows = [list(rng.choice(np.arange(12) + N_SPECIAL, 6, replace=False)) for _ in range(3)]
    hist = SequenceArrays.from_lists(rows)
    hist.rating = np.array([7, 9, 10, 6, 8, 8, 10, 10, 9, 6, 6, 7, 8, 9, 10, 7, 6, 8], np.float32)
    all_scores = fitted.score(hist)
    one = fitted.score(hist, np.array([1]))
    np.testing.assert_allclose(one[0], all_scores[1], rtol=1e-5, atol=1e-5)
    assert np.isneginf(all_scores[:, :N_SPECIAL]).all()
    # the same numbers straight from the network, outside the jitted batch path
    net = fitted.network
    prof = Profiles(hist, np.arange(3), net.n_items, fitted.scale, fitted.config.model)
    logits, pred = net(jnp.asarray(prof.presence), jnp.asarray(prof.ratings))
    logp = np.asarray(logits) - np.log(np.exp(np.asarray(logits, np.float64)).sum(axis=1, keepdims=True))
    pred = _with_correction(np.asarray(pred), prof, net, fitted.config.model.rating_foldin)
    q = rating_unit(denormalise(pred, prof.norm, fitted.scale), fitted.scale)
    a = fitted.config.model.alpha
    np.testing.assert_allclose(all_scores[:, N_SPECIAL:], a * logp + (1 - a) * np.log(q), rtol=1e-4, atol=1e-4)
    # the profile's own normalisation was used: h of its ratings matches normalise()
    h, _ = normalise(hist.offsets, hist.rating, fitted.scale)
    assert prof.ratings[0, rows[0][0] - N_SPECIAL] == pytest.approx(h[0])


def test_fold_in_with_a_wide_part_equals_the_dense_network(fitted: AutoencoderRecommender) -> None:
    """score() adds the wide logits from the profile's rows of W (sparse_wide_logits), not from the
    network's dense [B, n] x [n, n] product: the same numbers."""
    from flax import nnx

    from segue.models.autoencoder import SAVED

    config = fitted.config.model_copy(deep=True)
    config.model.wide, config.model.wide_mode, config.model.wide_scale = "ease", "score", 3.0
    rec = AutoencoderRecommender(config, fitted.vocab)
    n = fitted.network.n_items
    net = rec.build(n)
    nnx.update(net, nnx.state(fitted.network, SAVED))
    w = np.random.default_rng(2).normal(size=(n, n)).astype(np.float32)
    np.fill_diagonal(w, 0.0)
    net.wide[...] = jnp.asarray(w)
    rec.network = net
    rng = np.random.default_rng(3)
    hist = SequenceArrays.from_lists([list(rng.choice(np.arange(24) + N_SPECIAL, k, replace=False)) for k in (3, 7, 5)])
    hist.rating = rng.integers(6, 11, len(hist.tokens)).astype(np.float32)
    got = rec.score(hist)[:, N_SPECIAL:]
    prof = Profiles(hist, np.arange(3), n, rec.scale, config.model)
    logits, pred = net(jnp.asarray(prof.presence), jnp.asarray(prof.ratings))  # the dense product
    wide = 3.0 * prof.presence @ w
    np.testing.assert_allclose(np.asarray(logits) - np.asarray(net.presence_logits(net.encode(jnp.asarray(prof.presence), jnp.asarray(prof.ratings)))), wide, rtol=1e-4, atol=1e-4)
    logp = np.asarray(logits, np.float64)
    logp = logp - logp.max(axis=1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    pred = _with_correction(np.asarray(pred), prof, net, config.model.rating_foldin)
    q = rating_unit(denormalise(pred, prof.norm, rec.scale), rec.scale)
    a = config.model.alpha
    np.testing.assert_allclose(got, a * logp + (1 - a) * np.log(q), rtol=1e-4, atol=1e-4)
    assert np.abs(got - fitted.score(hist)[:, N_SPECIAL:]).max() > 0.1  # the wide part moved the scores


def test_score_modes_and_a_learned_taste(fitted: AutoencoderRecommender) -> None:
    tokens, _ = fitted.vocab.encode_external([f"i{i}" for i in range(24)])
    hist = SequenceArrays.from_lists([tokens[:6]])  # taste 0, unrated
    for mode in ("presence", "rating", "unified"):
        s = fitted.score(hist, mode=mode)[0]
        assert np.isfinite(s[N_SPECIAL:]).all()
    presence = fitted.score(hist, mode="presence")[0]
    # the unseen items of the same taste outrank the other taste's items
    assert presence[tokens[6:12]].min() > presence[tokens[12:24]].max()


def test_predict_is_on_the_original_scale(fitted: AutoencoderRecommender) -> None:
    hist = SequenceArrays.from_lists([[N_SPECIAL + 0, N_SPECIAL + 1, N_SPECIAL + 2]])
    hist.rating = np.array([10, 9, 8], np.float32)
    tokens = np.array([[N_SPECIAL + 3, N_SPECIAL + 20, 1]])
    got = fitted.predict(hist, None, tokens)
    assert got.shape == (1, 3) and got.dtype == np.float32
    assert 6.0 <= got[0, 0] <= 10.0 and 6.0 <= got[0, 1] <= 10.0
    _, rating, norm = fitted.forward(hist)
    assert got[0, 0] == pytest.approx(denormalise(rating[:, [3]], norm, fitted.scale)[0, 0])
    # a special token is not in the catalogue: the profile's neutral rating (hybrid 0)
    assert got[0, 2] == pytest.approx(denormalise(np.zeros((1, 1)), norm, fitted.scale)[0, 0])


def test_pairs_predict_and_scale_meet_the_rating_protocol(fitted: AutoencoderRecommender) -> None:
    """RatingPredictor's pair form gives the grid's values; the server reads the scale from it."""
    from segue.models.rating import ScaledRatingPredictor

    assert isinstance(fitted, ScaledRatingPredictor)
    assert fitted.rating_range() == (6.0, 10.0)
    hist = SequenceArrays.from_lists([[N_SPECIAL + 0, N_SPECIAL + 1], [N_SPECIAL + 12, N_SPECIAL + 13]])
    hist.rating = np.array([10, 9, 6, 7], np.float32)
    grid = fitted.predict(hist, None, np.array([[N_SPECIAL + 3, N_SPECIAL + 14], [N_SPECIAL + 3, N_SPECIAL + 14]]))
    pairs = fitted.predict(hist, np.array([1, 0, 1]), np.array([N_SPECIAL + 14, N_SPECIAL + 3, N_SPECIAL + 3]))
    np.testing.assert_array_equal(pairs, [grid[1, 1], grid[0, 0], grid[1, 0]])
    # ratings= replaces the history's own: flipping them moves the prediction
    flipped = fitted.predict(hist, np.array([0]), np.array([N_SPECIAL + 3]), ratings=np.array([6, 6, 6, 7], np.float32))
    assert flipped[0] != pairs[1]


def test_rating_outside_the_scale_is_an_input_error(fitted: AutoencoderRecommender) -> None:
    hist = SequenceArrays.from_lists([[N_SPECIAL + 0, N_SPECIAL + 5]])
    hist.rating = np.array([8, 42], np.float32)
    with pytest.raises(InputError, match=rf"rating 42 of item {N_SPECIAL + 5} is outside the rating scale \[6, 10\]"):
        fitted.score(hist)


def test_save_and_load_score_the_same(fitted: AutoencoderRecommender, tmp_path: Path) -> None:
    fitted.save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    hist = SequenceArrays.from_lists([[N_SPECIAL + 1, N_SPECIAL + 4]])
    np.testing.assert_array_equal(again.score(hist), fitted.score(hist))
    np.testing.assert_array_equal(again.item_counts(), fitted.item_counts())


def test_presence_only_is_mult_dae(store: Path) -> None:
    cfg = _config(max_steps=10, eval_every=10)
    cfg.model = cfg.model.model_copy(update={"rating_head": False, "score": "presence"})
    with Store.open(store) as s:
        model = AutoencoderRecommender(cfg).fit(SplitData.load(s, "strong"))
    assert model.network.rating_head is None and model.network.encoder[0].in_features == model.network.n_items
    with pytest.raises(SegueError, match="no rating head"):
        model.predict(SequenceArrays.from_lists([[N_SPECIAL]]), None, np.array([[N_SPECIAL + 1]]))
    # it reads no ratings (rating_range says so), so history ratings of any value are ignored
    with pytest.raises(SegueError, match="reads no ratings"):
        model.rating_range()
    hist = SequenceArrays.from_lists([[N_SPECIAL, N_SPECIAL + 5]])
    plain = model.score(hist)
    for bad in (42.0, np.inf, -1.0):
        hist.rating = np.array([8, bad], np.float32)
        np.testing.assert_array_equal(model.score(hist), plain)
    # rating_head = false alone is the Mult-DAE, scored by presence; another score is refused
    assert AutoencoderConfig.from_dict({"model": {"rating_head": False}}).model.score == "presence"
    assert AutoencoderConfig.from_dict({}).model.score == "unified"
    for score in ("unified", "rating"):
        with pytest.raises(ConfigError, match=f"score '{score}' needs the rating head"):
            AutoencoderConfig.from_dict({"model": {"rating_head": False, "score": score}})


@pytest.mark.parametrize(("head", "reads"), [(True, False), (False, True)])
def test_rating_input_is_separate_from_the_rating_head(store: Path, head: bool, reads: bool) -> None:
    cfg = _config(max_steps=4, eval_every=4)
    cfg.model = cfg.model.model_copy(update={"rating_head": head, "rating_input": reads, "score": "unified" if head else "presence"})
    with Store.open(store) as s:
        model = AutoencoderRecommender(cfg).fit(SplitData.load(s, "strong"))
    net = model.network
    assert net.encoder[0].in_features == net.n_items * (2 if reads else 1)
    assert (net.rating_head is not None) == head
    hist = SequenceArrays.from_lists([[N_SPECIAL, N_SPECIAL + 1, N_SPECIAL + 2]] * 2)
    hist.rating = np.array([6, 8, 10, 10, 8, 6], np.float32)  # the same items, the ratings reversed
    logp, _, _ = model.forward(hist)
    # the presence logits see the ratings only through the input
    assert np.abs(logp[0] - logp[1]).max() > 1e-6 if reads else np.allclose(logp[0], logp[1], atol=1e-6)
    # forward's sparse first layer (an [n] or [2n] input) gives the dense network's numbers
    prof = Profiles(hist, np.arange(2), net.n_items, model.scale, cfg.model)
    logits, _ = net(jnp.asarray(prof.presence), jnp.asarray(prof.ratings))
    np.testing.assert_allclose(logp, np.asarray(jax.nn.log_softmax(logits, axis=-1)), rtol=1e-5, atol=1e-5)


def test_partial_trainer_and_optim_tables_keep_the_family_defaults() -> None:
    from segue.training.trainer import parse_train_config

    family = AutoencoderConfig()
    for cfg in (
        AutoencoderConfig.from_dict({"trainer": {"progress": False}, "optim": {"lr": 0.01}}),
        parse_train_config({"family": "autoencoder", "data": {"store": "s", "split": "x"}, "trainer": {"progress": False}, "optim": {"lr": 0.01}}),
    ):
        assert cfg.trainer.progress is False and cfg.optim.lr == 0.01
        assert cfg.trainer.model_copy(update={"progress": True}) == family.trainer  # ndcg@100, 20,000 steps, ...
        assert cfg.optim.model_copy(update={"lr": family.optim.lr}) == family.optim  # no warmup, constant
    assert family.trainer.metric == "ndcg@100" and family.optim.schedule == "constant"
    # a field given still wins, nested tables included
    cfg = AutoencoderConfig.from_dict({"trainer": {"metric": "hr@10", "loader": {"batch_size": 8}}})
    assert (cfg.trainer.metric, cfg.trainer.loader.batch_size, cfg.trainer.max_steps) == ("hr@10", 8, 20_000)


def test_training_ratings_outside_a_configured_scale_are_named(store: Path) -> None:
    cfg = _config(max_steps=1)
    cfg.model = cfg.model.model_copy(update={"rating_scale": [1.0, 9.0]})
    # fit() through the library names the user and the item as the store spells them, as `segue train` does
    with Store.open(store) as s, pytest.raises(InputError, match=r"rating 10 of user '[^']+', item '[^']+' is outside the rating scale \[1, 9\]") as err:
        AutoencoderRecommender(cfg).fit(SplitData.load(s, "strong"))
    assert f"store {store}" in str(err.value) and "training part" in str(err.value)


def test_uncertainty_weighting_starts_at_the_log_losses(store: Path) -> None:
    from segue.training.autoencoder_task import AutoencoderTask

    cfg = _config(max_steps=1)
    cfg.loss = cfg.loss.model_copy(update={"weighting": "uncertainty", "rating_l2": 0.0})  # the penalty: the test below
    with Store.open(store) as s:
        task = AutoencoderTask(cfg, SplitData.load(s, "strong"))
        state = task.init_state()
    net = task.network(state)
    batch = task.loader.dense_batch(np.arange(min(task.loader.n, task.loader.batch_size)))
    logits, pred = net(jnp.asarray(batch["presence"]), jnp.asarray(batch["ratings"]))
    w = jnp.asarray(batch["weights"])
    want = [float(AL.multinomial_nll(logits, jnp.asarray(batch["presence"]), w)), float(AL.masked_huber(pred, jnp.asarray(batch["ratings"]), jnp.asarray(batch["rated"]), w))]
    np.testing.assert_allclose(np.exp(np.asarray(net.log_vars[...])), want, rtol=1e-5)


def test_niche_boost_divides_the_positive_transform_by_popularity() -> None:
    from segue.models.filters import niche_boost, niche_boost_tokens

    s = np.array([[2.0, 1.5, -np.inf, -3.0]], np.float32)
    counts = np.array([100.0, 1.0, 5.0, 0.0])
    np.testing.assert_array_equal(niche_boost(s, counts, 0.0), s)
    got = niche_boost(s, counts, 0.5)
    # exp(s') = exp(s) / (count + 1)^b, so s' = s - b log(count + 1); -inf stays -inf
    np.testing.assert_allclose(np.exp(got[0, [0, 1, 3]]), np.exp(s[0, [0, 1, 3]]) / (counts[[0, 1, 3]] + 1) ** 0.5, rtol=1e-6)
    assert np.isneginf(got[0, 2])
    assert np.argmax(got[0]) == 1  # the rarely seen item overtakes the popular one
    tok = niche_boost_tokens(np.concatenate([np.full((1, N_SPECIAL), -np.inf, np.float32), s], axis=1), np.concatenate([np.zeros(N_SPECIAL), counts]), 0.5)
    np.testing.assert_allclose(tok[0, N_SPECIAL:], got[0])
    with pytest.raises(InputError, match=">= 0"):
        niche_boost(s, counts, -1.0)


def test_rating_l2_adds_the_ridge_penalty_of_the_rating_head(store: Path) -> None:
    """loss.rating_l2 = lam: L_rate = huber + lam * sum ||W||^2 over the rating head's kernels, in
    the training step (same state, same batch, same dropout draw) and in uncertainty weighting's
    start (s_rating = log L_rate)."""
    from segue.training.autoencoder_task import AutoencoderTask

    lam = 0.05
    reported, kernels = {}, {}
    with Store.open(store) as s:
        data = SplitData.load(s, "strong")
        for l2 in (0.0, lam):
            cfg = _config(max_steps=1)
            cfg.loss = cfg.loss.model_copy(update={"rating_l2": l2})
            task = AutoencoderTask(cfg, data)
            state = task.init_state()
            net = task.network(state)
            kernels[l2] = sum(float(np.sum(np.asarray(layer.kernel[...], np.float64) ** 2)) for layer in net.rating_head)
            batch = next(iter(task.loader))
            _, metrics = task.train_step(state, batch, 1.0)
            reported[l2] = float(metrics["loss_rating"])
        assert kernels[0.0] == pytest.approx(kernels[lam]) and kernels[lam] > 0  # same seed, same init
        assert reported[lam] - reported[0.0] == pytest.approx(lam * kernels[lam], rel=1e-4)
        cfg = _config(max_steps=1)
        cfg.loss = cfg.loss.model_copy(update={"weighting": "uncertainty", "rating_l2": lam})
        task = AutoencoderTask(cfg, data)
        net = task.network(task.init_state())
    batch = task.loader.dense_batch(np.arange(min(task.loader.n, task.loader.batch_size)))
    _, pred = net(jnp.asarray(batch["presence"]), jnp.asarray(batch["ratings"]))
    huber = float(AL.masked_huber(pred, jnp.asarray(batch["ratings"]), jnp.asarray(batch["rated"]), jnp.asarray(batch["weights"])))
    assert float(np.exp(np.asarray(net.log_vars[...]))[1]) == pytest.approx(huber + lam * float(net.rating_kernel_sq()), rel=1e-5)


def _normal_equations(q: np.ndarray, pred: np.ndarray, given: np.ndarray, rated: np.ndarray, lam: float) -> np.ndarray:
    """One profile's correction [n] from its own normal equations: (Q_k'Q_k + diag(1, lam, ...))^-1
    Q_k'(given - pred) over its rated items k, times every item's features (0 without ratings)."""
    k = np.flatnonzero(rated)
    if len(k) == 0:
        return np.zeros(len(q))
    reg = lam * np.eye(q.shape[1])
    reg[0, 0] = 1.0
    return np.linalg.solve(q[k].T @ q[k] + reg, q[k].T @ (given[k] - pred[k])) @ q.T


def test_rating_correction_equals_the_ridge_solve_for_short_and_long_profiles() -> None:
    """rating_correction against the normal equations solved per profile: profiles with fewer
    ratings than features (its m x m form), more (the (d + 1) x (d + 1) form), mixed in one call,
    and none (0)."""
    from segue.models.autoencoder import rating_correction

    rng = np.random.default_rng(0)
    n, d, lam = 500, 40, 0.1
    q = np.concatenate([np.ones((n, 1)), rng.normal(size=(n, d)) * 0.1], axis=1)  # [n, d + 1]
    sizes = [3, 10, 41, 80, 0, 200]
    pred, given = rng.normal(size=(len(sizes), n)), rng.normal(size=(len(sizes), n))
    rated = np.zeros((len(sizes), n), bool)
    for i, m in enumerate(sizes):
        rated[i, rng.choice(n, m, replace=False)] = True
    got = rating_correction(pred, given, rated, q, lam)
    for i in range(len(sizes)):
        np.testing.assert_allclose(got[i], _normal_equations(q, pred[i], given[i], rated[i], lam), rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="lam > 0"):
        rating_correction(pred, given, rated, q, 0.0)


@pytest.mark.parametrize("m", [30, 60])  # d + 1 = 41 features: the dual form below, the primal above
def test_rating_correction_of_leave_one_out_rows_equals_each_rows_solve(m: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """/v1/explain's rows (a profile, then the profile less each of its items, one listed unrated)
    share one factored system (ridge_all_but_one): each row's correction still equals its own
    normal equations, also beside an unrelated profile in the same call."""
    from segue.models import autoencoder as AE
    from segue.models.autoencoder import rating_correction

    shared_rows: list[int] = []
    real = AE.ridge_all_but_one

    def counted(f: np.ndarray, e: np.ndarray, drop: np.ndarray, penalty: np.ndarray) -> np.ndarray:
        shared_rows.append(len(e))
        return real(f, e, drop, penalty)

    monkeypatch.setattr(AE, "ridge_all_but_one", counted)  # a spy: the real solve runs

    rng = np.random.default_rng(m)
    n, d, lam = 300, 40, 0.1
    q = np.concatenate([np.ones((n, 1)), rng.normal(size=(n, d)) * 0.1], axis=1)
    items = rng.choice(n, m + 1, replace=False)  # the last one listed without a rating
    full = np.zeros(n, bool)
    full[items[:m]] = True
    rated = np.stack([full] + [full & (np.arange(n) != i) for i in items])
    other = np.zeros(n, bool)
    other[rng.choice(n, 5, replace=False)] = True
    rated = np.concatenate([rated, other[None]])  # the union grows: the shared rows must still be found
    pred, given = rng.normal(size=rated.shape), rng.normal(size=rated.shape)
    got = rating_correction(pred, given, rated, q, lam)
    for i in range(len(rated)):
        np.testing.assert_allclose(got[i], _normal_equations(q, pred[i], given[i], rated[i], lam), rtol=1e-8, atol=1e-10)
    assert shared_rows == [m + 2]  # the profile and its m + 1 leave-one-out rows, in one system


def test_a_rmse_tiebreak_keeps_the_best_rated_validation_on_the_ranking_plateau(store: Path) -> None:
    """trainer.tiebreak = "rmse": with a tolerance wide enough for every validation, the kept
    parameters are those of the lowest validation RMSE (rmse is minimised, not maximised); with
    none, those of the best NDCG@100."""
    runs = {}
    for tol in (0.0, 1.0):
        cfg = _config(max_steps=60, eval_every=10, patience=None, tiebreak="rmse", tolerance=tol)
        with Store.open(store) as s:
            runs[tol] = AutoencoderRecommender(cfg).fit(SplitData.load(s, "strong")).meta["train"]
    for tol, summary in runs.items():
        hist = summary["history"]
        by = (lambda h: -h["rmse"]) if tol else (lambda h: h["ndcg@100"])
        best = max(hist, key=by)  # the first of equals, as the loop keeps it
        assert summary["best_step"] == best["step"], (tol, [(h["step"], h["ndcg@100"], h["rmse"]) for h in hist])
        assert summary["best_metric"] == pytest.approx(best["ndcg@100"])
    assert {h["step"] for h in runs[0.0]["history"]} == {h["step"] for h in runs[1.0]["history"]}
    assert runs[0.0]["best_step"] != runs[1.0]["best_step"]  # the two rules pick apart here
