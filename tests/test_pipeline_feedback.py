"""A transformer's feedback head inside a two-stage pipeline: its predicted feedback of each
candidate as ranker features, and `ranker = "feedback_head"` ordering the pool by it.

A tiny transformer with random weights and a feedback head (rating, skip, listened; rankhelp) is a
generator next to popularity and item-kNN on a small leave-last-out store with feedback. What is
tested is the path from the head to features and scores, not quality.
"""

from __future__ import annotations

import numpy as np
import pytest

from rankhelp import feedback_store, untrained
from segue.data.arrays import SplitData
from segue.data.splits import Part
from segue.data.store import Store
from segue.errors import ConfigError
from segue.models.base import load_model
from segue.models.pipeline import PipelineConfig, PipelineRecommender

FAST_RANKER = {"n_estimators": 30, "early_stopping_rounds": 10}


def config(ranker: object, tf: dict | None = None, **extra: object) -> PipelineConfig:
    gens = [{"name": "pop", "family": "popularity", "n": 20}, {"name": "knn", "family": "itemknn", "n": 20}]
    gens += [tf] if tf else []
    return PipelineConfig.from_dict({"generators": gens, "name_candidates": 0, "ranker": ranker} | extra)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("pipefb")
    store = feedback_store(root / "store.duckdb")
    tf_folder = untrained(store).save(root / "tf")
    tf = {"name": "tf", "folder": str(tf_folder), "n": 20}
    with Store.open(store) as s:
        data = SplitData.load(s, "loo")
        out = {"root": root, "store": store, "tf": load_model(tf_folder)}
        head = {"kind": "feedback_head", "feedback_column": "skip", "feedback_order": "low_first"}
        for key, ranker in (("lgbm", FAST_RANKER), ("head", head)):
            out[key] = PipelineRecommender(config(ranker, tf)).fit(data).save(root / key)
        hist = data.history(Part.TEST)
        rows = hist.nonempty()[:16]
        out["hist"] = hist.take(rows)
    return out


def predicted(setup: dict, pools: list) -> list[np.ndarray]:
    """The transformer's own predictions [C, 3] (columns: its feedback_targets) for each pool's
    candidates: one call with every pool padded to 100 by the last item (the pipeline pads to a
    power of two with the first: each candidate's prediction must not depend on the padding)."""
    tf, hist = setup["tf"], setup["hist"]
    cands = np.full((len(pools), 100), len(tf.vocab) - 1, np.int64)
    for b, p in enumerate(pools):
        cands[b, : len(p.tokens)] = p.tokens
    got = tf.predict_feedback(hist, np.arange(len(pools)), cands)
    cols = np.stack([got[c] for c in tf.feedback_targets], axis=-1)
    return [cols[b, : len(p.tokens)] for b, p in enumerate(pools)]


def test_feedback_head_predictions_are_ranker_features(setup) -> None:
    model = load_model(setup["lgbm"])
    hist = setup["hist"]
    rows = np.arange(len(hist))
    fb = [f"tf_fb_{c}" for c in setup["tf"].feedback_targets]
    assert sorted(fb) == ["tf_fb_listened", "tf_fb_rating", "tf_fb_skip"]
    assert model.config.feedback == "tf" and model.state.names[-3:] == fb
    assert model.ranker.booster.feature_name()[-3:] == fb  # the ranker was trained with them
    pools = model.pools(hist, rows)
    feats = model.features_of(hist, rows, pools)
    for f, want in zip(feats, predicted(setup, pools), strict=True):
        assert f.shape[1] == len(model.state.names)
        np.testing.assert_allclose(f[:, -3:], want, rtol=1e-4, atol=1e-5)
    # Different candidates get different predictions: the columns carry information.
    assert min(np.ptp(np.concatenate([f[:, j] for f in feats])) for j in (-3, -2, -1)) > 1e-3
    # One query's features (the serving path) equal the batch's.
    np.testing.assert_allclose(model.pool_features(hist, 3, pools[3]), feats[3], rtol=1e-5, atol=1e-6)
    assert np.array_equal(model.score(hist, rows), load_model(setup["lgbm"]).score(hist, rows))


def test_feedback_head_ranker_orders_the_pool_by_predicted_feedback(setup) -> None:
    model = load_model(setup["head"])
    hist = setup["hist"]
    rows = np.arange(len(hist))
    assert model.ranker is None and not (setup["head"] / "ranker.txt").exists()
    assert model.meta["ranker_training"] == {"kind": "feedback_head", "feature": "tf_fb_skip"}
    scores = model.score(hist, rows)
    pools = model.pools(hist, rows)
    skip = setup["tf"].feedback_targets.index("skip")
    for b, (p, want) in enumerate(zip(pools, predicted(setup, pools), strict=True)):
        # low_first on skip: the score is minus the predicted skip probability.
        np.testing.assert_allclose(scores[b, p.tokens], -want[:, skip], rtol=1e-4, atol=1e-5)
        outside = np.setdiff1d(np.arange(4, scores.shape[1]), p.tokens)
        assert scores[b, outside].max() < scores[b, p.tokens].min()


def test_feedback_head_ranker_needs_a_head(setup) -> None:
    with Store.open(setup["store"]) as s:
        data = SplitData.load(s, "loo")
        with pytest.raises(ConfigError, match="feedback_head' needs a generator with a feedback head"):
            PipelineRecommender(config("feedback_head")).fit(data)
        with pytest.raises(ConfigError, match="feedback = 'knn' names no generator with a feedback head"):
            PipelineRecommender(config(FAST_RANKER, feedback="knn")).fit(data)


def test_short_form_of_the_ranker_option() -> None:
    cfg = PipelineConfig.from_dict({"generators": [{"name": "p", "family": "popularity"}], "ranker": "feedback_head"})
    assert cfg.ranker.kind == "feedback_head"
    with pytest.raises(ConfigError):
        PipelineConfig.from_dict({"generators": [{"name": "p", "family": "popularity"}], "ranker": "xgboost"})


def test_served_pipelines_pass_the_request_ratings_to_the_feedback_head(setup) -> None:
    from segue.serving.engine import Engine

    engine = Engine.load(setup["lgbm"], store=setup["store"])
    model = engine.model
    col = model.state.names.index(f"tf_fb_{model.generators['tf'].feedback_targets[0]}")
    history = np.array([5, 9, 12, 20], np.int64)
    served = {}
    for r in (1.0, 5.0):
        ratings = np.full(len(history), r, np.float32)
        ranked = engine.rank([history], 10, ratings=[ratings])[0]
        # Offline: the same history with the same ratings through the pipeline's own code.
        arrays = engine.encoder.arrays([history], None, [ratings], None)
        arrays.meta["seq_names"] = [None]
        pool = model.pools(arrays, np.array([0]))[0]
        offline = model.features_of(arrays, np.array([0]), [pool])[0]
        where = np.searchsorted(pool.tokens, ranked.tokens)
        assert np.array_equal(pool.tokens[where], ranked.tokens)
        np.testing.assert_allclose(ranked.features, offline[where], rtol=1e-5, atol=1e-6)
        served[r] = dict(zip(ranked.tokens.tolist(), ranked.features[:, col].tolist(), strict=True))
    # The ratings reached the transformer: its predictions for the same items moved.
    both = set(served[1.0]) & set(served[5.0])
    assert both and max(abs(served[1.0][t] - served[5.0][t]) for t in both) > 1e-4
