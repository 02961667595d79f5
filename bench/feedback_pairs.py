"""The must-show tables of issue 14: PairAccuracy of pairwise fine-tuned transformers against the
baselines, and rating RMSE of the feedback head against biasedmf, with bootstrap CIs.

For one store and split (ml-100k: the global `temporal` split; anime: the within-user
`holdout`), on the scored part (test, or valid while tuning):

  PairAccuracy   every two held-out items of a user rated differently (at most 200 pairs per
                 user, seeded), ordered by each model from the user's history of that part; the
                 mean over users of each user's share of correct pairs, 95% bootstrap CI over
                 users, and the paired bootstrap of each fine-tuned model minus the best baseline.
                 Baselines: popularity and EASE through score(), biasedmf through predict(), the
                 pretrained transformer through its next-item logit (score()) and its feedback
                 head (predict()). Fine-tuned runs are scored through score() (their rank score).
                 Printed for all users with pairs (cold-start users too: min_history 0) and for
                 users with a history (min_history 1, as `segue evaluate` defaults).
  Rating RMSE    every held-out rating, and those of users with a history; biasedmf (the
                 reference), the feedback heads, and the user / item mean, with CIs and the paired
                 RMSE difference.

    .venv/bin/python bench/feedback_pairs.py --store stores/ml100k.duckdb --split temporal \\
        --pretrained runs/ml100k-temporal-feedback --finetuned runs/ml100k-pairwise [--part valid]

Baselines are fitted here on the split's training part (biasedmf: its defaults; EASE: l2 250).
Results measured with this script are in the README section "Feedback pairs" and the configs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from segue.data.arrays import SplitData
from segue.data.store import Store
from segue.evaluation.ratings import (
    RatedTargets,
    build_pairs,
    evaluate_errors,
    evaluate_pairs,
    rated_targets,
)
from segue.evaluation.significance import compare_many
from segue.models.base import load_model
from segue.models.biasedmf import BiasedMF
from segue.models.ease import EASE
from segue.models.popularity import Popularity


class MeanRating:
    """The mean training rating of the row's user ('user') or of the item ('item'), else global."""

    def __init__(self, data: SplitData, by: str) -> None:
        tr = data.train
        r = np.asarray(tr.rating, np.float64)
        ok = ~np.isnan(r)
        key = np.repeat(np.arange(len(tr)), tr.lengths) if by == "user" else np.asarray(tr.tokens, np.int64)
        n = len(tr) if by == "user" else len(data.vocab)
        mu = float(r[ok].mean())
        total, count = np.bincount(key[ok], r[ok], n), np.bincount(key[ok], None, n)
        self.means = np.where(count > 0, total / np.maximum(count, 1), mu)
        self.by = by

    def predict(self, histories: Any, rows: np.ndarray, tokens: np.ndarray, ratings: Any = None) -> np.ndarray:
        idx = np.asarray(rows if self.by == "user" else tokens, np.int64)
        return self.means[np.clip(idx, 0, len(self.means) - 1)].astype(np.float32)


def fmt(iv: Any) -> str:
    return f"{iv.mean:.4f} [{iv.low:.4f}, {iv.high:.4f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--split", required=True)
    ap.add_argument("--part", default="test")
    ap.add_argument("--pretrained", type=Path, required=True, help="run folder: transformer with a rating head")
    ap.add_argument("--finetuned", type=Path, nargs="*", default=[], help="pairwise fine-tuned run folders")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ease", action="store_true", help="skip EASE (large catalogues)")
    args = ap.parse_args()
    print(machine_line(), flush=True)  # the reference the figures below are read against

    with Store.open(args.store) as st:
        data = SplitData.load(st, args.split)
        t0 = time.perf_counter()
        base: dict[str, Any] = {"popularity": Popularity().fit(data)}
        if not args.no_ease:
            base["EASE"] = EASE().fit(data)
        bmf = BiasedMF().fit(data)
        print(f"baselines fitted on '{args.split}' train in {time.perf_counter() - t0:.1f} s")
        pre = load_model(args.pretrained)
        tuned = {p.name: load_model(p) for p in args.finetuned}
        entries = {**base, "biasedmf (predicted rating)": bmf, "transformer logit": pre, "transformer rating head": pre, **tuned}
        via = {n: "score" for n in entries}
        via["biasedmf (predicted rating)"] = via["transformer rating head"] = "predict"
        baselines = [n for n in entries if n not in tuned]
        for min_history in (0, 1):
            pairs = build_pairs(data, args.part, min_history=min_history, seed=args.seed)
            t0 = time.perf_counter()
            rep = evaluate_pairs(entries, pairs, via=via, n_boot=args.n_boot, seed=args.seed)  # type: ignore[arg-type]
            best = max(baselines, key=lambda n: rep.per_user[n].mean())
            comp = compare_many(rep.per_user, best, n_boot=args.n_boot, seed=args.seed)
            who = "all users with pairs" if min_history == 0 else f"users with >= {min_history} history event"
            print(f"\nPairAccuracy, {args.split} {args.part} part, {who}: {len(rep.users)} users, {rep.n_pairs} pairs "
                  f"({time.perf_counter() - t0:.0f} s); mean over users [95% CI]; difference to the best baseline '{best}'")
            for n in entries:
                c = comp.get(n)
                diff = "(best baseline)" if c is None else f"{c.diff:+.4f} [{c.low:+.4f}, {c.high:+.4f}] p={c.p_value:.3f}"
                print(f"  {n:<34} {fmt(rep.intervals[n])}   {diff}")
            # The issue's baselines leave the pretrained rating head out (it is the fine-tuning's start).
            issue_best = max((n for n in baselines if n != "transformer rating head"), key=lambda n: rep.per_user[n].mean())
            if tuned and issue_best != best:
                comp2 = compare_many({n: rep.per_user[n] for n in (issue_best, *tuned)}, issue_best, n_boot=args.n_boot, seed=args.seed)
                for n in tuned:
                    c = comp2[n]
                    print(f"  {n} minus {issue_best}: {c.diff:+.4f} [{c.low:+.4f}, {c.high:+.4f}] p={c.p_value:.3f}")
        targets = rated_targets(data, args.part)
        raters: dict[str, Any] = {"biasedmf": bmf, "transformer rating head": pre}
        raters |= {f"{n} rating head": m for n, m in tuned.items() if "rating" in m.feedback_targets}
        raters |= {"user mean": MeanRating(data, "user"), "item mean": MeanRating(data, "item")}
        with_history = targets.histories.lengths[targets.rows] > 0
        subsets = {"every held-out rating": targets}
        subsets["ratings of users with a history"] = RatedTargets(
            targets.histories, targets.rows[with_history], targets.tokens[with_history], targets.ratings[with_history]
        )
        for label, sub in subsets.items():
            err = evaluate_errors(raters, sub, reference="biasedmf", n_boot=args.n_boot, seed=args.seed)
            print(f"\nRating error, {args.split} {args.part} part, {label}: {err.n_ratings} ratings; RMSE and MAE [95% CI]; RMSE minus biasedmf")
            for n in raters:
                c = err.rmse_diff.get(n)
                diff = "(reference)" if c is None else f"{c.diff:+.4f} [{c.low:+.4f}, {c.high:+.4f}]"
                print(f"  {n:<34} RMSE {fmt(err.rmse[n])}  MAE {fmt(err.mae[n])}  {diff}")


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
