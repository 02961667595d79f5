"""The ranker's tree lookup tables (segue.models.tree_lookup) against LightGBM's Booster.predict.

Real LightGBM LambdaRank models trained here on seeded synthetic queries whose features have
NaNs (NaN-type splits, both default directions), features never missing in training (None-type
splits, fed NaN at predict time), zeros, values within LightGBM's zero threshold, infinities;
the scores must be equal bit for bit. Models the tables cannot reproduce (categorical splits,
zero-as-missing, more than 8 splits a tree) are refused with a reason, and the Ranker keeps
Booster.predict for them.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from segue.errors import SegueError
from segue.models.ranker import Ranker, RankerConfig
from segue.models.tree_lookup import TreeLookup, UnsupportedTrees

N_FEATURES = 6
NAMES = [f"f{i}" for i in range(N_FEATURES)]


def queries(seed: int, n_queries: int = 120, per_query: int = 25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows [N, F], graded labels and group sizes. f0, f1 are missing (NaN) at random, f2 is 0 a
    third of the time; f3..f5 are never missing: their splits get missing_type None."""
    rng = np.random.default_rng(seed)
    n = n_queries * per_query
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    x[:, 3] = rng.integers(0, 4, n)  # few distinct values: thresholds between integers
    signal = x[:, 0] + 0.5 * x[:, 1] - np.abs(x[:, 2]) + 0.3 * x[:, 3] + rng.normal(scale=0.5, size=n)
    x[rng.random(n) < 0.3, 0] = np.nan
    x[rng.random(n) < 0.15, 1] = np.nan
    x[rng.random(n) < 0.3, 2] = 0.0
    y = np.digitize(signal, np.quantile(signal, [0.6, 0.85, 0.95])).astype(np.float32)
    return x, y, np.full(n_queries, per_query, np.int64)


def awkward_rows(x: np.ndarray, seed: int) -> np.ndarray:
    """Rows mixing real feature values with NaN in every column, zeros, -0.0, values inside
    LightGBM's zero threshold (1e-35), infinities and huge values."""
    rng = np.random.default_rng(seed)
    out = x[rng.integers(0, len(x), 4000)].copy()
    for value, share in ((np.nan, 0.12), (0.0, 0.08), (-0.0, 0.03), (1e-36, 0.03), (-1e-36, 0.03), (np.inf, 0.01), (-np.inf, 0.01), (3e38, 0.01)):
        out[rng.random(out.shape) < share] = value
    return out


def split_kinds(booster: lgb.Booster) -> Counter:
    kinds: Counter = Counter()

    def walk(node: dict) -> None:
        if "split_index" in node:
            kinds[(node["missing_type"], node["default_left"])] += 1
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return kinds


@pytest.fixture(scope="module")
def trained() -> dict[str, object]:
    x, y, groups = queries(0)
    out: dict[str, object] = {"x": x}
    for leaves in (7, 9):  # 6 splits a tree (the default ranker), and 8: every bit of the code
        cfg = RankerConfig(n_estimators=60, num_leaves=leaves, min_child_samples=20, learning_rate=0.1, holdout_fraction=0.0)
        out[leaves] = Ranker.fit(x, y, groups, NAMES, cfg)[0]
    return out


@pytest.mark.parametrize("leaves", [7, 9])
def test_lookup_equals_booster_predict_bit_for_bit(trained, leaves) -> None:
    ranker: Ranker = trained[leaves]  # type: ignore[assignment]
    x: np.ndarray = trained["x"]  # type: ignore[assignment]
    assert ranker.lookup is not None and ranker.lookup_refused is None
    kinds = split_kinds(ranker.booster)
    # The model exercises every decision the tables reproduce.
    assert kinds[("NaN", True)] and kinds[("NaN", False)] and kinds[("None", False)] + kinds[("None", True)]
    assert ranker.lookup.n_trees == ranker.booster.num_trees() > 20
    assert len(ranker.lookup.columns) == leaves - 1
    for seed, rows in enumerate([x[:1], x[:2], x[:9], x[:300], awkward_rows(x, 1), awkward_rows(x, 2)]):
        want = ranker.booster.predict(rows, num_threads=1)
        got = ranker.lookup.predict(rows)
        assert got.dtype == np.float64 and np.array_equal(got, want), f"case {seed}: max diff {np.abs(got - want).max()}"
        assert np.array_equal(ranker.predict(rows), ranker.predict_reference(rows))
    assert ranker.predict(x[:0]).shape == (0,)


def test_lookup_survives_save_and_load(trained, tmp_path: Path) -> None:
    ranker: Ranker = trained[7]  # type: ignore[assignment]
    x: np.ndarray = trained["x"]  # type: ignore[assignment]
    ranker.save(tmp_path / "ranker.txt")
    again = Ranker.load(tmp_path / "ranker.txt", NAMES)
    assert again.lookup is not None
    rows = awkward_rows(x, 3)
    assert np.array_equal(again.predict(rows), ranker.predict(rows))
    with pytest.raises(SegueError, match="expected rows of 6 features"):
        again.lookup.predict(rows[:, :5])


def _train(params: dict, x: np.ndarray, y: np.ndarray, groups: np.ndarray, **data: object) -> lgb.Booster:
    base = {"objective": "lambdarank", "num_threads": 1, "verbosity": -1, "deterministic": True, "min_data_in_leaf": 20}
    return lgb.train(base | params, lgb.Dataset(x, y, group=groups, **data), num_boost_round=15)


@pytest.mark.parametrize(
    ("params", "data", "reason"),
    [
        ({"num_leaves": 7}, {"categorical_feature": [3]}, "categorical split on feature 3"),
        ({"num_leaves": 7, "zero_as_missing": True}, {}, "missing_type 'Zero'"),
        ({"num_leaves": 15}, {}, r"more than 8 splits \(num_leaves > 9\)"),
        ({"num_leaves": 7, "objective": "binary"}, {}, "objective 'binary sigmoid:1'"),
    ],
)
def test_unsupported_models_are_refused_and_keep_booster_predict(params, data, reason) -> None:
    x, y, groups = queries(1, n_queries=60)
    if params.get("objective") == "binary":
        y = (y > 0).astype(np.float32)
    booster = _train(params, x, y, groups, **data)
    with pytest.raises(UnsupportedTrees, match=reason):
        TreeLookup.from_booster(booster)
    ranker = Ranker(booster, NAMES)
    assert ranker.lookup is None and re.search(reason, ranker.lookup_refused or "")
    rows = awkward_rows(x, 4)
    want = np.asarray(booster.predict(rows, num_threads=1), np.float32)
    assert np.array_equal(ranker.predict(rows), want)
