"""biasedmf against scikit-surprise's SVD (and mean baselines) on ml-100k ratings, plus PairAccuracy.

On MovieLens 100K (../shared/data/ml-100k), for the store's `temporal` split (one global cut time)
and its `random_holdout` split (each user's ratings 80/10/10 at random), every model is fitted on
the same training ratings (the train part) and predicts the ratings of the scored part (test by
default). Printed per model: RMSE and MAE with 95% bootstrap CIs over users, the paired bootstrap
of RMSE against surprise's SVD, and fit seconds, all measured in the same run:

  global mean, user mean, item mean   means of the training ratings (global mean where unknown)
  surprise SVD                        scikit-surprise 1.1 `SVD` (biased MF by SGD), its defaults
  biasedmf (train history)            biasedmf, each user folded in from its training ratings:
                                      exactly its trained factors, the same information as SVD
  biasedmf (part history)             biasedmf folded in from the history the ranking protocols give
                                      (train + valid when scoring test): the evaluator's path

Then PairAccuracy on the temporal split's scored part (pairs of a user's held-out items rated
differently, at most 200 per user): popularity, EASE and biasedmf through score(), each user's
history being its input part, with CIs over users and paired differences against biasedmf, for
all users (cold-start ones included) and for users with a history (as the ranking protocols).

    pip install -e '.[bench]'   # scikit-surprise
    .venv/bin/python bench/biasedmf_surprise.py                  # test part
    .venv/bin/python bench/biasedmf_surprise.py --part valid --set reg=10 --set reg=20   # tuning

The store is built once under --work (default /tmp/segue-bench), as
`segue data build movielens ml-100k -s temporal -s random_holdout` would.

Measured (test part, 2 shared cores under load, 2026-11-29; RMSE [95% CI], fit seconds):
  temporal  surprise SVD 1.0325 [0.979, 1.089] 1.5 s; biasedmf (train history) 1.0278 (-0.45%,
            paired CI of the difference [-0.0076, -0.0017]) 2.9 s; biasedmf (part history) 1.0215;
            item mean 1.0468, global mean 1.1399, user mean 1.1512 (most test users are new)
  holdout   surprise SVD 0.9331 [0.912, 0.953] 2.2 s; biasedmf (train history) 0.9089 (-2.6%,
            [-0.0290, -0.0193]) 2.0 s; (part history) 0.9065; item mean 1.0235, user mean 1.0437
  PairAccuracy, temporal test, all 147 users with pairs (per-user mean [95% CI]): biasedmf 0.689
  [0.662, 0.717], popularity 0.593 [0.560, 0.623], EASE 0.563 [0.533, 0.595]; the 71 users with a
  history: biasedmf 0.714, popularity 0.627, EASE 0.566 (both below biasedmf, p <= 0.03)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.sources.movielens import MovieLensSource
from segue.data.store import BuildConfig, Store, build_store
from segue.evaluation.ratings import build_pairs, evaluate_errors, evaluate_pairs, rated_targets
from segue.models.base import model_class
from segue.models.biasedmf import BiasedMF, BiasedMFConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SPLITS = [{"kind": "temporal", "name": "temporal"}, {"kind": "random_holdout", "name": "holdout"}]


def store_for(data: Path, work: Path) -> Path:
    path = work / "ml-100k-ratings.duckdb"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        build_store(MovieLensSource(data / "ml-100k"), path, BuildConfig(splits=SPLITS))
    return path


def training_ratings(data: SplitData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user row, store item id, rating) of every rated training event."""
    tr = data.train
    users = np.repeat(np.arange(len(tr), dtype=np.int64), tr.lengths)
    r = np.asarray(tr.rating, np.float64)
    ok = ~np.isnan(r)
    return users[ok], np.asarray(tr.item_ids, np.int64)[ok], r[ok]


# --- the other models, as RatingPredictors -----------------------------------------------------


class SurpriseSVD:
    """scikit-surprise's SVD on the training ratings; users are store rows, items store item ids."""

    def __init__(self, data: SplitData, seed: int) -> None:
        import pandas as pd
        from surprise import SVD, Dataset, Reader

        u, i, r = training_ratings(data)
        frame = pd.DataFrame({"u": u, "i": i, "r": r})
        scale = (float(r.min()), float(r.max()))
        trainset = Dataset.load_from_df(frame, Reader(rating_scale=scale)).build_full_trainset()
        t0 = time.perf_counter()
        self.algo = SVD(random_state=seed).fit(trainset)
        self.fit_seconds = time.perf_counter() - t0
        self.item_ids = np.asarray(data.vocab.item_ids, np.int64)  # token -> store item id (specials, <unk>: -1, unknown to SVD)

    def predict(self, histories: SequenceArrays, rows: np.ndarray, tokens: np.ndarray, ratings: Any = None) -> np.ndarray:
        iids = self.item_ids[np.asarray(tokens, np.int64)]
        return np.array([self.algo.predict(int(u), int(i)).est for u, i in zip(rows, iids, strict=True)], np.float32)


class MeanModel:
    """Mean training rating of the row's user ("user"), of the item ("item"), or overall."""

    def __init__(self, data: SplitData, by: str) -> None:
        t0 = time.perf_counter()
        u, _, r = training_ratings(data)
        tokens = np.asarray(data.train.tokens, np.int64)[~np.isnan(np.asarray(data.train.rating))]
        self.mu = float(r.mean())
        key, n = (u, len(data.train)) if by == "user" else (tokens, len(data.vocab))
        total, count = np.bincount(key, r, n), np.bincount(key, None, n)
        self.means = np.where(count > 0, total / np.maximum(count, 1), self.mu) if by != "global" else np.full(n, self.mu)
        self.by = by
        self.fit_seconds = time.perf_counter() - t0

    def predict(self, histories: SequenceArrays, rows: np.ndarray, tokens: np.ndarray, ratings: Any = None) -> np.ndarray:
        return self.means[np.asarray(rows if self.by == "user" else tokens, np.int64)].astype(np.float32)


class FixedHistory:
    """A rating predictor that folds users in from `histories` whatever it is given."""

    def __init__(self, model: BiasedMF, histories: SequenceArrays) -> None:
        self.model, self.histories = model, histories

    def predict(self, histories: SequenceArrays, rows: np.ndarray, tokens: np.ndarray, ratings: Any = None) -> np.ndarray:
        return self.model.predict(self.histories, rows, tokens)


# --- runs --------------------------------------------------------------------------------------


def rating_table(data: SplitData, part: str, configs: list[BiasedMFConfig], seed: int, n_boot: int) -> None:
    targets = rated_targets(data, part)
    models: dict[str, Any] = {}
    fit: dict[str, float] = {}
    svd = SurpriseSVD(data, seed)
    models["surprise SVD"], fit["surprise SVD"] = svd, svd.fit_seconds
    for by in ("global", "user", "item"):
        m = MeanModel(data, by)
        models[f"{by} mean"], fit[f"{by} mean"] = m, m.fit_seconds
    for cfg in configs:
        t0 = time.perf_counter()
        bmf = BiasedMF(cfg).fit(data)
        seconds = time.perf_counter() - t0
        tag = "" if len(configs) == 1 else f" f={cfg.factors} reg={cfg.reg} breg={cfg.bias_reg} it={cfg.iterations}"
        models[f"biasedmf{tag} (train history)"] = FixedHistory(bmf, data.train)
        models[f"biasedmf{tag} (part history)"] = bmf
        fit[f"biasedmf{tag} (train history)"] = fit[f"biasedmf{tag} (part history)"] = seconds
    rep = evaluate_errors(models, targets, reference="surprise SVD", n_boot=n_boot, seed=seed)
    print(f"\n== ml-100k split '{data.split}', {part} part: {'; '.join(targets.notes)}")
    print(f"{'model':44s} {'RMSE':>7s} {'95% CI':>17s} {'MAE':>7s} {'95% CI':>17s}  {'RMSE - SVD [95% CI]':>28s} {'fit s':>6s}")
    for name in models:
        r, a = rep.rmse[name], rep.mae[name]
        d = rep.rmse_diff.get(name)
        diff = f"{d.diff:+.4f} [{d.low:+.4f}, {d.high:+.4f}]" if d else ""
        print(
            f"{name:44s} {r.mean:7.4f} [{r.low:.4f}, {r.high:.4f}] {a.mean:7.4f} [{a.low:.4f}, {a.high:.4f}]"
            f"  {diff:>28s} {fit[name]:6.2f}"
        )
    base = rep.rmse["surprise SVD"].mean
    for name in models:
        if name.startswith("biasedmf"):
            print(f"  {name}: RMSE {100 * (rep.rmse[name].mean / base - 1):+.2f}% relative to surprise SVD")


def pair_table(data: SplitData, part: str, config: BiasedMFConfig, seed: int, n_boot: int) -> None:
    models: dict[str, Any] = {}
    for family in ("biasedmf", "popularity", "ease"):
        t0 = time.perf_counter()
        models[family] = (BiasedMF(config) if family == "biasedmf" else model_class(family)()).fit(data)
        print(f"fit {family}: {time.perf_counter() - t0:.2f} s")
    for min_history in (0, 1):
        pairs = build_pairs(data, part, seed=seed, min_history=min_history)
        for weighted in (False, True):
            t0 = time.perf_counter()
            rep = evaluate_pairs(models, pairs, weighted=weighted, reference="biasedmf", n_boot=n_boot, seed=seed)
            what = "gap-weighted" if weighted else "unweighted"
            print(f"\n== PairAccuracy ({what}), split '{data.split}', {part} part, min_history {min_history}: "
                  f"{'; '.join(pairs.notes)} ({time.perf_counter() - t0:.1f} s)")
            print(f"{'model':12s} {'per-user mean':>13s} {'95% CI':>17s} {'pooled':>7s}  {'minus biasedmf [95% CI], p':>36s}")
            for name in models:
                iv, c = rep.intervals[name], rep.comparisons.get(name)
                diff = f"{c.diff:+.4f} [{c.low:+.4f}, {c.high:+.4f}], p={c.p_value:.3f}" if c else ""
                print(f"{name:12s} {iv.mean:13.4f} [{iv.low:.4f}, {iv.high:.4f}] {rep.pooled[name]:7.4f}  {diff:>36s}")


def parse_sets(sets: list[str]) -> list[BiasedMFConfig]:
    """--set k=v[,k=v...] -> one biasedmf config each (none: the defaults)."""
    configs = []
    for text in sets or [""]:
        kv = dict(item.split("=", 1) for item in text.split(",") if item)
        configs.append(BiasedMFConfig.from_dict(kv, source=f"--set {text}"))
    return configs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=Path("/tmp/segue-bench"))
    ap.add_argument("--part", default="test", choices=["valid", "test"])
    ap.add_argument("--splits", nargs="+", default=["temporal", "holdout"])
    ap.add_argument("--set", action="append", default=[], help="biasedmf config, e.g. factors=32,reg=15 (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--no-pairs", action="store_true", help="skip the PairAccuracy table")
    args = ap.parse_args(argv)
    try:
        import surprise
    except ImportError:
        print("scikit-surprise is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    print(machine_line(), flush=True)  # the reference the figures below are read against
    configs = parse_sets(args.set)
    path = store_for(args.data, args.work)
    print(f"store {path}; scikit-surprise {surprise.__version__}; biasedmf {configs[0].model_dump()}")
    with Store.open(path) as store:
        for split in args.splits:
            rating_table(SplitData.load(store, split), args.part, configs, args.seed, args.n_boot)
        if not args.no_pairs:
            pair_table(SplitData.load(store, "temporal"), args.part, configs[0], args.seed, args.n_boot)
    return 0


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
