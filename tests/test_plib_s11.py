"""Two-stage pipeline, library and evaluation side (walk wpipe faults 2, 3, 6, 7, 8).

A real leave-last-out store with repeat consumption (built through build_store), a real pipeline
(popularity + itemknn generators, a LightGBM ranker), the real evaluator and a real HTTP server.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from datahelp import make_store
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.store import Store
from segue.errors import ConfigError, SegueError
from segue.evaluation.evaluator import evaluate
from segue.evaluation.protocols import ProtocolConfig
from segue.models.pipeline import OUTSIDE_POOL, PipelineConfig, PipelineRecommender, outside_pool

RANKER = {"n_estimators": 30, "min_child_samples": 20, "early_stopping_rounds": 10}


def repeat_store(path: Path, n_users: int = 300, seed: int = 0) -> Path:
    """Users who mostly replay 4 favourites of 40 items (so most test targets are in the history)."""
    rng = np.random.default_rng(seed)
    seqs, ts = [], []
    for u in range(n_users):
        fav = rng.choice(40, 4, replace=False)
        n = int(rng.integers(8, 16))
        seqs.append([int(rng.choice(fav)) if rng.random() < 0.7 else int(rng.integers(0, 40)) for _ in range(n)])
        ts.append([1_000_000 + u * 100 + p for p in range(n)])
    return make_store(path, seqs, [{"kind": "leave_last_out", "name": "loo"}], ts=ts)


def config(**extra: object) -> PipelineConfig:
    return PipelineConfig.from_dict(
        {
            "generators": [{"name": "pop", "family": "popularity", "n": 20}, {"name": "knn", "family": "itemknn", "n": 20}],
            "name_candidates": 0,
            "ranker": RANKER,
        }
        | extra
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("plib")
    store = repeat_store(root / "rep.duckdb")
    with Store.open(store) as s:
        model = PipelineRecommender(config()).fit(SplitData.load(s, "loo"))
    return {"root": root, "store": store, "model": model, "folder": model.save(root / "r1")}


def _hits(model: PipelineRecommender, store: Path, *, exclude_seen: bool) -> float:
    """HR@10 on the test part by hand, through recommend()."""
    with Store.open(store) as s:
        data = SplitData.load(s, "loo")
        h, t = data.history(2), data.targets(2)
    rows = np.flatnonzero((t.lengths > 0) & (h.lengths > 0))
    rec, _ = model.recommend(h, 10, rows, exclude_seen=exclude_seen)
    return float(np.mean([np.isin(np.asarray(t.row(r)), rec[i]).any() for i, r in enumerate(rows)]))


# --- fault 8: --keep-seen reaches the pipeline's pools ---------------------------------------------


def test_keep_seen_evaluation_lets_history_items_into_a_pipelines_pools(fitted) -> None:
    model, store = fitted["model"], fitted["store"]
    kept = evaluate({"p": model}, store, "loo", ProtocolConfig(exclude_seen=False), ks=[10], n_boot=0)
    default = evaluate({"p": model}, store, "loo", ProtocolConfig(), ks=[10], n_boot=0)
    by_hand = _hits(model, store, exclude_seen=False)
    assert kept.models["p"].mean("hr@10") == pytest.approx(by_hand, abs=1e-9)
    # repeat consumption: most targets are history items, so keeping them in must help a lot
    assert kept.models["p"].mean("hr@10") > default.models["p"].mean("hr@10") + 0.1
    assert default.models["p"].mean("hr@10") == pytest.approx(_hits(model, store, exclude_seen=True), abs=1e-9)
    # the pool recall the report shows is measured on the pools that were ranked
    assert kept.models["p"].info["pool_recall@50"]["pool"] > default.models["p"].info["pool_recall@50"]["pool"]


# --- fault 2: evaluating on the ranker's training part is said ------------------------------------


def test_evaluating_a_pipeline_on_the_part_its_ranker_learned_from_is_noted(fitted) -> None:
    from segue.models.base import load_model

    model = load_model(fitted["folder"])  # the part is read back from model.toml's meta
    valid = evaluate({"p": model}, fitted["store"], "loo", ProtocolConfig(part="valid"), ks=[10], n_boot=0)
    test = evaluate({"p": model}, fitted["store"], "loo", ProtocolConfig(part="test"), ks=[10], n_boot=0)
    said = [n for n in valid.notes if "ranker" in n and "valid" in n]
    assert len(said) == 1 and "'p'" in said[0]
    assert not [n for n in test.notes if "ranker" in n]


# --- fault 6: recommend(allow=) builds its pools with allow, as the server does -------------------


def test_recommend_with_allow_ranks_pools_built_from_the_allow_list_as_served(fitted) -> None:
    from segue.serving.app import create_app
    from segue.serving.cli import serve_in_thread

    model = fitted["model"]
    v = model.vocab
    counts = np.asarray(v.counts, np.int64)
    order = 4 + np.argsort(-counts[4:], kind="stable")
    hist_tokens = order[:2]
    # the two least popular items among the rest: outside the unrestricted pool of 20 + 20
    allow = np.concatenate([order[2:4], order[-2:]]).astype(np.int64)
    hist = SequenceArrays.from_lists([hist_tokens.astype(np.int32)])
    rec, sc = model.recommend(hist, 4, allow=allow)
    assert not outside_pool(sc[sc > -np.inf]).any() and (sc[sc > -np.inf] > OUTSIDE_POOL / 2).all()
    ids = [v.external_ids[t] for t in hist_tokens]
    app = create_app(fitted["folder"], store=fitted["store"], use_env_admin_key=False)
    with serve_in_thread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        body = c.post("/v1/recommend", json={"history": ids, "n": 4, "allow": [v.external_ids[t] for t in allow]}).json()
    served = [(i["id"], i["score"]) for i in body["items"]]
    mine = [(v.external_ids[t], float(s)) for t, s in zip(rec[0], sc[0], strict=True) if t >= 0]
    assert [i for i, _ in mine] == [i for i, _ in served] and len(mine) == 4
    np.testing.assert_allclose([s for _, s in mine], [s for _, s in served], rtol=1e-5, atol=1e-6)


def test_recommend_never_returns_the_backfill_offset_as_a_score(fitted) -> None:
    model = fitted["model"]
    hist = SequenceArrays.from_lists([[5, 6, 7]])
    pool = model.pools(hist)[0]
    k = len(pool.tokens) + 5  # more than the pool holds
    rec, sc = model.recommend(hist, k)
    assert set(rec[0][rec[0] >= 0].tolist()) == set(pool.tokens.tolist())
    assert (rec[0][len(pool.tokens) :] == -1).all() and np.isneginf(sc[0][len(pool.tokens) :]).all()


# --- fault 7: a ranker that learned nothing ----------------------------------------------------------


def test_a_ranker_whose_queries_hold_one_candidate_each_is_refused_at_fit(fitted) -> None:
    one = PipelineConfig.from_dict(
        {"generators": [{"name": "pop", "family": "popularity", "n": 1}], "name_candidates": 0, "ranker": {"n_estimators": 5}}
    )
    with Store.open(fitted["store"]) as s:
        data = SplitData.load(s, "loo")
        with pytest.raises(SegueError, match="one candidate") as e:
            PipelineRecommender(one).fit(data)
    assert "pop" in str(e.value) and "n" in str(e.value)


def test_a_ranker_whose_trees_have_no_split_is_refused_at_fit(fitted) -> None:
    big = config(ranker=RANKER | {"min_child_samples": 100_000})
    with Store.open(fitted["store"]) as s, pytest.raises(SegueError, match="min_child_samples"):
        PipelineRecommender(big).fit(SplitData.load(s, "loo"))


def test_tree_lookup_predicts_split_less_trees_as_booster_predict() -> None:
    import lightgbm as lgb

    from segue.models.ranker import Ranker

    rng = np.random.default_rng(0)
    x = rng.random((40, 3)).astype(np.float32)
    y = (rng.random(40) < 0.3).astype(np.float32)
    params = {"objective": "lambdarank", "min_child_samples": 1000, "verbosity": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, y, group=[10, 10, 10, 10]), num_boost_round=3)
    assert all("split_index" not in t["tree_structure"] for t in booster.dump_model()["tree_info"])
    ranker = Ranker(booster, ["a", "b", "c"])
    assert ranker.lookup is not None or ranker.lookup_refused
    np.testing.assert_array_equal(ranker.predict(x), ranker.predict_reference(x))


# --- fault 3: generators checked before any fit ------------------------------------------------------


def test_an_unknown_generator_family_or_config_key_is_refused_by_the_config_naming_the_generator() -> None:
    gens = [{"name": "knn", "family": "itemknn"}, {"name": "popularity", "family": "popularty"}]
    with pytest.raises(ConfigError) as e:
        PipelineConfig.from_dict({"generators": gens}, source="p.toml [pipeline]")
    msg = str(e.value)
    assert "p.toml [pipeline]" in msg and "generators.1" in msg and "'popularity'" in msg and "popularty" in msg
    gens[1] = {"name": "pop", "family": "popularity", "config": {"nope": 3}}
    with pytest.raises(ConfigError) as e:
        PipelineConfig.from_dict({"generators": gens}, source="p.toml [pipeline]")
    assert "p.toml [pipeline]" in str(e.value) and "generators.1" in str(e.value) and "unknown key 'nope' in [config]" in str(e.value)


def test_a_missing_generator_folder_is_found_before_any_generator_is_fitted(fitted, tmp_path: Path) -> None:
    from segue.training.pipeline_cli import fit_pipeline

    missing = tmp_path / "no-such-run"
    cfg = config(generators=[{"name": "knn", "family": "itemknn", "n": 5}, {"name": "tf", "folder": str(missing), "n": 5}])
    model = PipelineRecommender(cfg)
    with Store.open(fitted["store"]) as s:
        data = SplitData.load(s, "loo")
        with pytest.raises(SegueError, match="'tf'"):
            model.fit(data)
    assert model.generators == {}  # itemknn, first in the list, was not fitted
    # the CLI says so before it opens the store (which does not exist here either)
    toml = tmp_path / "p.toml"
    toml.write_text(
        'name = "x"\n[data]\nstore = "nowhere.duckdb"\nsplit = "loo"\n[pipeline]\n'
        '[[pipeline.generators]]\nname = "knn"\nfamily = "itemknn"\n'
        '[[pipeline.generators]]\nname = "tf"\nfolder = "no-such-run"\n'
    )
    with pytest.raises(SegueError) as e:
        fit_pipeline(toml, tmp_path / "out")
    assert str(toml) in str(e.value) and "'tf'" in str(e.value) and "no such model folder" in str(e.value)


# --- fault 13: a split without a validation part ----------------------------------------------------


def test_a_split_without_validation_events_is_refused_before_any_generator_is_fitted(tmp_path: Path) -> None:
    store = make_store(
        tmp_path / "allin.duckdb", [[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]], [{"kind": "leave_last_out", "name": "allin", "min_length": 1000}]
    )
    model = PipelineRecommender(config())
    with Store.open(store) as s:
        data = SplitData.load(s, "allin")
        with pytest.raises(SegueError, match="'allin' has no validation events"):
            model.fit(data)
    assert model.generators == {}
