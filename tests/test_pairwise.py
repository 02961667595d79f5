"""Pairwise fine-tuning (ARGUS): the loss by hand, the pairs of a batch (window, lag, cap), and a
fine-tuning run from a pretrained run folder that learns to order items as their ratings do."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from datahelp import make_store
from segue.data.arrays import SplitData
from segue.data.splits import Part
from segue.data.store import Store
from segue.errors import ConfigError
from segue.models.pairwise_config import PairwiseConfig
from segue.training.pairwise import (
    batch_pairs,
    mean_user_pair_accuracy,
    pairwise_logistic,
    validation_pairs,
)


def test_pairwise_logistic_by_hand() -> None:
    s_a = jnp.array([2.0, 0.0, 1.0, 5.0])
    s_b = jnp.array([0.0, 0.0, 3.0, -5.0])
    w = jnp.array([1.0, 2.0, 4.0, 0.5])
    m = jnp.array([True, True, False, True])  # the third pair is padding
    # softplus(s_b - s_a): log(1 + e^-2), log 2, (masked), log(1 + e^-10); weighted mean over 3.5
    want = (np.log1p(np.exp(-2.0)) + 2 * np.log(2.0) + 0.5 * np.log1p(np.exp(-10.0))) / 3.5
    assert float(pairwise_logistic(s_a, s_b, w, m)) == pytest.approx(want, rel=1e-6)
    assert float(pairwise_logistic(s_a, s_b, w, jnp.zeros(4, bool))) == 0.0  # no pair: no loss
    # ordering a above b by a wider margin lowers the loss
    assert float(pairwise_logistic(s_a + 1, s_b, w, m)) < want


def _row() -> dict[str, np.ndarray]:
    # one sequence window: inputs [<start>, e1, e2, e3, e4], targets [e1 .. e5] (tokens 10..14)
    targets = np.array([[10, 11, 12, 13, 14]])
    rating = np.array([[5.0, 3.0, np.nan, 3.0, 1.0]])  # e3 unrated
    target_ts = np.array([[100, 200, 300, 10_000, 10_050]])
    input_ts = np.array([[0, 100, 200, 300, 10_000]])  # <start> has no time (0)
    return {"targets": targets, "mask": np.ones_like(targets, bool), "value": rating, "target_ts": target_ts, "input_ts": input_ts}


def _pairs(cfg: PairwiseConfig, r: dict[str, np.ndarray]) -> set[tuple[int, int, int, float]]:
    out = batch_pairs(cfg, r["targets"], r["mask"], r["value"], r["target_ts"], r["input_ts"])
    m = out["pair_mask"][0]
    return {(int(a), int(b), int(c), float(w)) for a, b, c, w in zip(out["tok_a"][0][m], out["tok_b"][0][m], out["anchor"][0][m], out["weight"][0][m], strict=True)}


def test_batch_pairs_by_hand() -> None:
    r = _row()
    cfg = PairwiseConfig(init_from="x", max_pairs=10)
    # rated targets at columns 0 (5), 1 (3), 3 (3), 4 (1); equal ratings (cols 1, 3) make no pair.
    # (better, worse, anchor = the earlier column: the history before both, gap)
    assert _pairs(cfg, r) == {(10, 11, 0, 2.0), (10, 13, 0, 2.0), (10, 14, 0, 4.0), (11, 14, 1, 2.0), (13, 14, 3, 2.0)}
    # uniform weights; a 1,000 s window keeps events close in time only
    near = _pairs(cfg.model_copy(update={"window": 1000.0, "weight": "uniform"}), r)
    assert near == {(10, 11, 0, 1.0), (13, 14, 3, 1.0)}
    # a lag of 150 s: the history ends 150 s before the earlier event. Event at 200 s (col 1):
    # inputs up to 50 s -> column 0 (<start>); event at 10,000 s (col 3): inputs up to 9,850 s ->
    # column 3 (its input is the event at 300 s)
    lagged = _pairs(cfg.model_copy(update={"lag": 150.0}), r)
    assert lagged == {(10, 11, 0, 2.0), (10, 13, 0, 2.0), (10, 14, 0, 4.0), (11, 14, 0, 2.0), (13, 14, 3, 2.0)}
    # a lag longer than the window's history: the first event's pairs have no history that old
    # (column 0 is a real event at 100 s once the window is cropped), so they are left out
    cropped = dict(r, input_ts=np.array([[50, 100, 200, 300, 10_000]]))
    assert {(a, b) for a, b, _, _ in _pairs(cfg.model_copy(update={"lag": 60.0}), cropped)} == {(11, 14), (13, 14)}
    # random prefixes: the same pairs, each from a column between 0 and its anchor
    rand = batch_pairs(cfg.model_copy(update={"prefix": "random"}), r["targets"], r["mask"], r["value"], None, None, seed=3)
    last = batch_pairs(cfg, r["targets"], r["mask"], r["value"], None, None)
    m = rand["pair_mask"][0]
    np.testing.assert_array_equal(rand["tok_a"][0][m], last["tok_a"][0][m])
    assert (rand["anchor"][0][m] <= last["anchor"][0][m]).all() and (rand["anchor"][0][m] >= 0).all()
    # the cap keeps a sample of max_pairs; padding is masked
    capped = batch_pairs(cfg.model_copy(update={"max_pairs": 2}), r["targets"], r["mask"], r["value"], None, None)
    assert capped["pair_mask"].sum() == 2 and capped["anchor"].shape == (1, 2)
    assert capped["weight"][0].min() > 0
    with pytest.raises(ConfigError, match="timestamps"):
        batch_pairs(cfg.model_copy(update={"lag": 1.0}), r["targets"], r["mask"], r["value"], None, None)


def test_mean_user_pair_accuracy_by_hand() -> None:
    s_a = np.array([1.0, 0.0, 2.0, 3.0])
    s_b = np.array([0.0, 1.0, 2.0, 4.0])
    rows = np.array([7, 7, 9, 9])
    # user 7: 1 + 0 over 2; user 9: 1/2 (tie) + 0 over 2
    assert mean_user_pair_accuracy(s_a, s_b, rows) == pytest.approx((0.5 + 0.25) / 2)


# ---------------------------------------------------------------------------------------------
# fine-tuning a pretrained run


def _corpus(seed: int = 0) -> dict:
    """Ratings driven by a per-item quality (what pairs can learn), next items by a cycle."""
    rng = np.random.default_rng(seed)
    quality = rng.uniform(1, 5, 24)
    seqs, rating, ts = [], [], []
    for _ in range(50):
        n = 14
        start = int(rng.integers(0, 24))
        items = [(start + 2 * i + int(rng.integers(0, 2))) % 24 for i in range(n)]
        seqs.append(items)
        rating.append([float(np.clip(np.rint(quality[x] + rng.normal(0, 0.5)), 1, 5)) for x in items])
        ts.append([int(x) for x in 1_700_000_000 + np.cumsum(rng.integers(1, 5_000, n))])
    return {"seqs": seqs, "rating": rating, "ts": ts}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    c = _corpus()
    path = tmp_path_factory.mktemp("pwstore") / "s.duckdb"
    split = {"kind": "random_holdout", "name": "holdout", "valid_fraction": 0.3, "test_fraction": 0.2}
    return make_store(path, c["seqs"], [split], rating=c["rating"], ts=c["ts"])


def _config(store: Path, runs: Path, name: str, steps: int, pairwise: dict | None = None) -> dict:
    cfg = {
        "name": name,
        "runs_dir": str(runs),
        "data": {"store": str(store), "split": "holdout"},
        "model": {"n_layers": 1, "n_heads": 2, "d_model": 16, "d_ff": 32, "dropout": 0.0, "context_length": 16},
        "loss": {"kind": "full"},
        "optim": {"warmup_steps": 0, "lr": 3e-3, "schedule": "constant"},
        "events": {"rating": True, "predict": {"rating": 1.0}},
        "trainer": {
            "max_steps": steps,
            "eval_every": steps,
            "checkpoint_every": steps,
            "log_every": 2,
            "progress": False,
            "patience": None,
            "loader": {"batch_size": 16, "bucketing": False, "prefetch_threads": 0},
        },
    }
    if pairwise is not None:
        cfg["pairwise"] = pairwise
        cfg["trainer"]["metric"] = "pair_accuracy"
    return cfg


def test_fine_tuning_from_a_pretrained_run(store: Path, tmp_path: Path) -> None:
    from segue.models.base import load_model
    from segue.training.pairwise import resolve_init_from
    from segue.training.trainer import TrainConfig, train

    pre = train(TrainConfig.from_dict(_config(store, tmp_path, "pre", 6)))
    with Store.open(store) as st:
        data = SplitData.load(st, "holdout")
        vp = validation_pairs(data)
        hist = data.history(Part.VALID)
    assert vp is not None and len(vp["rows"]) > 20

    def val_accuracy(model: object) -> float:
        users, inv = np.unique(vp["rows"], return_inverse=True)
        s = model.score(hist, users)
        return mean_user_pair_accuracy(s[inv, vp["tok_a"]], s[inv, vp["tok_b"]], vp["rows"])

    before = val_accuracy(load_model(pre))
    # the config names its pretrained run relative to its own folder
    ft = TrainConfig.from_dict(_config(store, tmp_path, "ft", 40, {"init_from": "pre", "score": "mix", "max_pairs": 32}))
    ft = resolve_init_from(ft.model_copy(update={"base_dir": str(tmp_path)}))
    assert ft.pairwise.init_from == str(pre.resolve())
    run = train(ft)
    m = json.loads((run / "metrics.json").read_text())
    assert m["unit"] == "pairs" and m["metric"] == "pair_accuracy"
    model = load_model(run)
    assert model.config.pairwise is not None and model.network.rank_mix[...].shape == (2,)
    after = val_accuracy(model)
    assert m["best_metric"] == pytest.approx(after)  # the trainer validated what the model scores
    # ratings follow item quality: the fine-tuned score orders held-out pairs far better than the
    # pretrained next-item logit
    assert after > before + 0.1 and after > 0.75, (before, after)
    # predict() takes RatingPredictor pairs (rows [P], tokens [P]) as well as a grid
    rows, toks = vp["rows"][:6], vp["tok_a"][:6]
    np.testing.assert_allclose(model.predict(hist, rows, toks), model.predict(hist, rows, toks[:, None])[:, 0], rtol=1e-5)
    # the saved score is the network's rank_score: a pair recomputed by hand agrees
    u, a = int(vp["rows"][0]), int(vp["tok_a"][0])
    from segue.models.transformer import _rank_fn  # noqa: F401  (the path score() takes)

    got = model.score(hist, np.array([u]))[0, a]
    net = model.network
    from segue.data.loader import pad_histories
    from segue.models import events as EV

    ev = pad_histories(hist, np.array([u]), context_length=16, pad_to=16)
    feats, _, _ = EV.history_events(model.config.events, {}, hist, np.array([u]), 16, 16)
    h = net.hidden(jnp.asarray(ev.inputs), positions=jnp.asarray(ev.positions), events={k: jnp.asarray(v) for k, v in feats.items()})
    h_last = h[0, int(ev.last[0])]
    want = float(net.rank_score(h_last, net.item_emb[...][a]))
    assert got == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_pretrained_run_must_match(store: Path, tmp_path: Path) -> None:
    from segue.training.trainer import TrainConfig, train

    pre = train(TrainConfig.from_dict(_config(store, tmp_path, "pre", 2)))
    bad = _config(store, tmp_path, "ft", 2, {"init_from": str(pre)})
    bad["model"]["d_model"] = 8
    bad["model"]["n_heads"] = 2
    with pytest.raises(ConfigError, match=r"\[model\] must match .*d_model 8 \(run: 16\)"):
        train(TrainConfig.from_dict(bad))
    with pytest.raises(ConfigError, match="not a run folder"):
        train(TrainConfig.from_dict(_config(store, tmp_path, "ft2", 2, {"init_from": str(tmp_path / "none")})))
    nohead = _config(store, tmp_path, "ft3", 2, {"init_from": str(pre), "score": "feedback", "feedback": "skip"})
    with pytest.raises(ConfigError, match="pairwise.feedback: 'skip' is not a column"):
        TrainConfig.from_dict(nohead)


def test_rank_score_adds_back_the_rating_heads_item_biases() -> None:
    # a head predicting a residual over item biases b: the mix ranks by a logit + b_mix (z + b_i / s0)
    from flax import nnx

    from segue.models.events import EventsConfig
    from segue.models.transformer import ModelConfig, SequenceTransformer, _rank_fn

    ev = EventsConfig(rating=True, predict={"rating": 1.0}, rating_item_bias=1.0)
    tiny = ModelConfig(n_layers=1, n_heads=2, d_model=8, d_ff=16, dropout=0.0, context_length=6)
    bias = np.linspace(-1.0, 1.0, 12).astype(np.float32)
    net = SequenceTransformer(tiny, 12, nnx.Rngs(0), events=ev, rating_prior=(3.5, 2.0), rating_item_bias=bias, rank=("mix", 0, 0.5))
    plain = SequenceTransformer(tiny, 12, nnx.Rngs(0), events=ev, rating_prior=(3.5, 2.0), rank=("mix", 0, 0.5))
    np.testing.assert_allclose(np.asarray(net.rank_offsets()), bias / 2.0, rtol=1e-6)
    assert plain.rank_offsets() is None
    inputs = jnp.array([[1, 5, 6, 0]])
    events = {"rating_bucket": jnp.array([[0, 3, 5, 0]], jnp.int32)}
    h = net.hidden(inputs, events=events)[:, 2]  # [1, D]
    toks = jnp.arange(4, 12)[None]
    e = net.item_emb[...][toks]
    hb = jnp.broadcast_to(h[:, None], e.shape)
    got = np.asarray(net.rank_score(hb, e, None, toks))
    want = np.asarray(net.rank_score(hb, e)) + 0.5 * bias[4:12] / 2.0  # b_mix starts at mix_init 0.5
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # score()'s path over the whole table adds them too
    graphdef, state = nnx.split(net)
    full = np.asarray(_rank_fn(graphdef, state, inputs, jnp.arange(4)[None], jnp.array([2]), events))
    np.testing.assert_allclose(full[:, 4:12], got, rtol=1e-5, atol=1e-6)


def test_fine_tuning_a_ridge_head_scores_its_predicted_ratings(store: Path, tmp_path: Path) -> None:
    # a head whose user factor is the ridge fold-in (events.rating_ridge): the pair step folds in
    # each anchor's prefix, and score() (score = "feedback") is the predicted rating in head units
    from segue.models.base import load_model
    from segue.training.trainer import TrainConfig, train

    events = {"rating": True, "predict": {"rating": 1.0}, "rating_item_bias": 2.0, "rating_rank": 4, "rating_mlp": False, "rating_ridge": 5.0}
    pre_cfg = _config(store, tmp_path, "pre", 2)
    pre_cfg["events"] = events
    pre = train(TrainConfig.from_dict(pre_cfg))
    ft_cfg = _config(store, tmp_path, "ft", 4, {"init_from": str(pre), "score": "feedback", "max_pairs": 16})
    ft_cfg["events"] = events
    model = load_model(train(TrainConfig.from_dict(ft_cfg)))
    before = load_model(pre).network.fold_table()
    assert np.abs(model.network.fold_table() - before).max() > 1e-4  # the pair steps moved the fold-in vectors
    with Store.open(store) as st:
        hist = SplitData.load(st, "holdout").history(Part.VALID)
    users = hist.nonempty()[:5]
    toks = np.tile(np.arange(4, 12), (len(users), 1))
    m0, s0 = model.network.rating_prior
    score = model.score(hist, users)[np.arange(len(users))[:, None], toks]
    pred = model.predict(hist, users, toks)
    inside = (pred > 1.0) & (pred < 5.0)
    assert inside.sum() > 20
    np.testing.assert_allclose((m0 + s0 * score)[inside], pred[inside], rtol=1e-4, atol=1e-4)
