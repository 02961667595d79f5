"""The second stage: a LightGBM LambdaRank ranker over candidate pools.

LambdaRank optimises NDCG directly: for each pair (i, j) of candidates of one query with labels
y_i > y_j, the gradient on the scores is

    lambda_ij = -sigma / (1 + exp(sigma (s_i - s_j))) * |delta NDCG_ij|,

where delta NDCG_ij is the change of the query's NDCG@`eval_at` if i and j swapped places. Queries
without a positive candidate give no pair and are dropped before training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from segue.config import Config
from segue.errors import SegueError
from segue.models.tree_lookup import TreeLookup, UnsupportedTrees


class RankerConfig(Config):
    # "lightgbm": LambdaRank below. "feedback_head": no training; the pool is ordered by the
    # pipeline's `feedback` generator's predicted feedback (`feedback_column`, its first head
    # column by default; "low_first" for columns where less is better, such as skips).
    kind: Literal["lightgbm", "feedback_head"] = "lightgbm"
    feedback_column: str | None = None
    feedback_order: Literal["high_first", "low_first"] = "high_first"
    # Small, slow trees: on ml-100k's 805 validation queries (4-fold CV on them) 31 leaves at lr
    # 0.05 peaked at 27 trees with NDCG@10 0.266; 7 leaves, 100 samples a leaf, lr 0.02: 0.286.
    n_estimators: int = Field(500, ge=1)
    learning_rate: float = Field(0.02, gt=0)
    num_leaves: int = Field(7, ge=2)
    min_child_samples: int = Field(100, ge=1)
    feature_fraction: float = Field(0.9, gt=0, le=1)
    eval_at: int = Field(10, ge=1)  # the NDCG cut-off LambdaRank optimises
    early_stopping_rounds: int = Field(40, ge=1)
    holdout_fraction: float = Field(0.2, ge=0, lt=1)  # validation queries kept for early stopping
    negatives_per_query: int = Field(100, ge=1)  # sampled non-target candidates per training query
    max_queries: int = Field(20_000, ge=1)  # validation queries used to train (sampled)
    threads: int = Field(1, ge=1)  # OpenMP threads: 2 on 2 busy cores took 13x longer (5.2 vs 0.4 s)
    seed: int = 0


class Ranker:
    """A fitted LightGBM booster with its feature names.

    `predict` evaluates the trees as lookup tables (segue.models.tree_lookup: the same scores as
    `Booster.predict`, ~3x faster on a request's few hundred candidates); a model those cannot
    reproduce keeps `Booster.predict` (`lookup_refused` says why). `predict_reference` is always
    `Booster.predict`."""

    def __init__(self, booster: Any, names: list[str]) -> None:
        self.booster = booster
        self.names = names
        self.lookup: TreeLookup | None = None
        self.lookup_refused: str | None = None
        try:
            self.lookup = TreeLookup.from_booster(booster)
        except UnsupportedTrees as e:
            self.lookup_refused = str(e)

    @classmethod
    def fit(
        cls, x: np.ndarray, y: np.ndarray, groups: np.ndarray, names: list[str], config: RankerConfig
    ) -> tuple[Ranker, dict[str, Any]]:
        """Train on rows x [N, F] with labels y [N] in query groups of sizes `groups` (consecutive).

        The last `holdout_fraction` of the queries decides when to stop (best NDCG@eval_at); the
        final booster is then refitted on every query with that many trees. A SegueError when
        there is nothing to learn: no query with a target and a non-target (no pair), or no
        tree with a split (min_child_samples above what the rows allow)."""
        import lightgbm as lgb

        if len(groups) == 0 or y.sum() == 0:
            raise SegueError("ranker: no training query has a target among its candidates (pools too small?)")
        starts = np.concatenate([[0], np.cumsum(groups)[:-1]]).astype(np.int64)
        positives = np.add.reduceat(np.asarray(y, np.float64), starts)
        if not ((positives > 0) & (positives < groups)).any():  # LambdaRank learns from pairs only
            alone = int((groups == 1).sum())
            raise SegueError(
                f"ranker: none of the {len(groups)} training queries holds a target and a non-target candidate "
                f"({alone} of them hold one candidate each), so LambdaRank has no pair to learn from: "
                "give the candidate generators a larger n"
            )
        n_hold = int(len(groups) * config.holdout_fraction) if len(groups) >= 10 else 0
        cut = int(groups[: len(groups) - n_hold].sum())
        params = {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [config.eval_at],
            "learning_rate": config.learning_rate,
            "num_leaves": config.num_leaves,
            "min_child_samples": config.min_child_samples,
            "feature_fraction": config.feature_fraction,
            "num_threads": config.threads,
            "seed": config.seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }
        train = lgb.Dataset(x[:cut], y[:cut], group=groups[: len(groups) - n_hold], feature_name=names, free_raw_data=False)
        sets, callbacks = [], []
        if n_hold:
            hold = lgb.Dataset(x[cut:], y[cut:], group=groups[len(groups) - n_hold :], reference=train)
            sets = [hold]
            callbacks = [lgb.early_stopping(config.early_stopping_rounds, verbose=False)]
        booster = lgb.train(params, train, num_boost_round=config.n_estimators, valid_sets=sets, callbacks=callbacks)
        info: dict[str, Any] = {"trees": booster.current_iteration(), "rows": int(len(y)), "queries": int(len(groups))}
        if n_hold and booster.best_iteration > 0:
            info["trees"] = booster.best_iteration
            info[f"holdout_ndcg@{config.eval_at}"] = round(float(booster.best_score["valid_0"][f"ndcg@{config.eval_at}"]), 4)
            everything = lgb.Dataset(x, y, group=groups, feature_name=names)
            booster = lgb.train(params, everything, num_boost_round=booster.best_iteration)
        if int(np.sum(booster.feature_importance("split"))) == 0:
            # single-leaf trees: every candidate would get the same score (ranked by token only)
            raise SegueError(
                f"ranker: none of its {booster.current_iteration()} trees has a split ({len(y)} rows in "
                f"{len(groups)} queries, min_child_samples {config.min_child_samples}), so it would score every "
                "candidate the same: lower ranker.min_child_samples or train on more validation queries"
            )
        return cls(booster, names), info

    def predict(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros(0, np.float32)
        if self.lookup is not None:
            return self.lookup.predict(x).astype(np.float32)
        return self.predict_reference(x)

    def predict_reference(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros(0, np.float32)
        # num_iteration=None: the best iteration when early stopping found one (a saved booster
        # holds only those trees), else every tree.
        return np.asarray(self.booster.predict(x, num_threads=1), dtype=np.float32)

    def importance(self) -> dict[str, float]:
        """Share of the total split gain of each feature (sums to 1), largest first."""
        gain = np.asarray(self.booster.feature_importance("gain"), dtype=np.float64)
        total = gain.sum() or 1.0
        pairs = sorted(zip(self.names, gain / total, strict=True), key=lambda p: -p[1])
        return {k: round(float(v), 4) for k, v in pairs}

    def save(self, path: Path) -> None:
        self.booster.save_model(str(path))

    @classmethod
    def load(cls, path: Path, names: list[str]) -> Ranker:
        import lightgbm as lgb

        booster = lgb.Booster(model_file=str(path))
        if list(booster.feature_name()) != list(names):
            raise SegueError(f"{path}: the ranker's features {booster.feature_name()} differ from the pipeline's {names}")
        return cls(booster, names)
