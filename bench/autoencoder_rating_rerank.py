"""Is there any (nonlinear) presence signal in a profile's ratings? A LightGBM reranker with and
without rating features, cross-fitted over the part's users.

Candidates: each user's top `--candidates` items of the presence-only base (PRESENCE_RUN's presence
log-probabilities + a * EASE logits, log-softmaxed: the "presence only + EASE" setting), fold-in
items excluded. Features per (user, candidate i):
  presence  the base score and rank, EASE's (x @ W)_i, the presence network's log p_i, the item's
            log training count, the profile size
  ratings   (added for "with ratings") the rating-aware network's (BOTH_RUN) log p_i and its
            predicted rating of i on the original scale; rating-weighted EASE (h @ W)_i with h the
            hybrid-normalised ratings; (x_low @ W)_i and (x_high @ W)_i with x_low/high the
            profile's items rated <= `--low` / >= `--high`; the user's mean rating and sd; the
            item's mean training rating
Label: i is held out. LightGBM lambdarank, trained on the other folds' users (`--folds`, seeded)
and scoring each user once; NDCG@100 / Recall@20 / Recall@50 of the reranked list (items outside
the candidates rank below them), paired against the base and between the two rerankers. If the
reranker with ratings does not beat the one without, the ratings carry no presence signal that
these features expose.

    python bench/autoencoder_rating_rerank.py BOTH_RUN PRESENCE_RUN --store STORE [--part valid]
        [--a 30] [--l2 250] [--candidates 200] [--folds 5] [--second PRESENCE_RUN_2]
"""

from __future__ import annotations

import argparse
import time

import lightgbm as lgb
import numpy as np
import scipy.sparse as sp
from scipy.special import log_softmax

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from autoencoder_vs_multvae import ci, evaluate  # bench/ is the script's folder, so on sys.path
from segue.data.arrays import SplitData
from segue.data.ratings import denormalise, normalise
from segue.data.splits import Part
from segue.data.store import Store
from segue.data.vocab import N_SPECIAL
from segue.models.autoencoder import AutoencoderRecommender, profile_entries
from segue.models.base import load_model
from segue.training.autoencoder_task import wide_part

METRICS = ("ndcg@100", "recall@20", "recall@50")


def main() -> None:  # noqa: C901, PLR0915
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("both", help="run folder of the rating-aware autoencoder (rating head on)")
    ap.add_argument("presence", help="run folder of the presence-only autoencoder")
    ap.add_argument("--store", required=True)
    ap.add_argument("--split", default="strong")
    ap.add_argument("--part", default="valid", choices=["valid", "test"])
    ap.add_argument("--a", type=float, default=30.0)
    ap.add_argument("--l2", type=float, default=250.0)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--low", type=float, default=5.0)
    ap.add_argument("--high", type=float, default=9.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--second", help="a second presence-only run folder (another seed): its log p as a feature is the ensemble control for the rating-aware network's log p")
    args = ap.parse_args()
    print(machine_line(), flush=True)  # the reference the figures below are read against
    both, pres = load_model(args.both), load_model(args.presence)
    assert isinstance(both, AutoencoderRecommender) and isinstance(pres, AutoencoderRecommender)
    with Store.open(args.store) as store:
        data = SplitData.load(store, args.split)
        part = Part.VALID if args.part == "valid" else Part.TEST
        hist, tgt = data.history(part), data.targets(part)
        rows = np.intersect1d(tgt.nonempty(), hist.nonempty())
        n = pres.network.n_items
        t0 = time.perf_counter()
        tr = data.train.nonempty()
        b, cols, trat, _ = profile_entries(data.train, tr, n)
        W, _ = wide_part(np.searchsorted(b, np.arange(len(tr) + 1)), cols, n, args.l2)
        counts = np.bincount(cols, minlength=n).astype(np.float64)
        item_mean = np.bincount(cols, weights=np.nan_to_num(trat, nan=0.0), minlength=n) / np.maximum(np.bincount(cols, weights=~np.isnan(trat), minlength=n), 1)
        scale = both.scale
        logp_b, rat_b, norm_b = both.forward(hist, rows)
        logp_p, _, _ = pres.forward(hist, rows)
        logp_2 = load_model(args.second).forward(hist, rows)[0] if args.second else None  # type: ignore[attr-defined]
        pb, pc, pr, _ = profile_entries(hist, rows, n)
        off = np.searchsorted(pb, np.arange(len(rows) + 1))
        h, _ = normalise(off, pr, scale, mode=both.config.model.normalisation, tau=both.config.model.tau)
        shape = (len(rows), n)
        X = sp.csr_matrix((np.ones(len(pb), np.float32), (pb, pc)), shape=shape)
        Hm = sp.csr_matrix((np.nan_to_num(h, nan=0.0).astype(np.float32), (pb, pc)), shape=shape)
        low = ~np.isnan(pr) & (pr <= args.low)
        high = ~np.isnan(pr) & (pr >= args.high)
        Xlo = sp.csr_matrix((np.ones(low.sum(), np.float32), (pb[low], pc[low])), shape=shape)
        Xhi = sp.csr_matrix((np.ones(high.sum(), np.float32), (pb[high], pc[high])), shape=shape)
        ease = np.asarray(X @ W)
        base = log_softmax(logp_p + args.a * ease, axis=1)
        rated_in_both = denormalise(rat_b, norm_b, scale)
        hw, low_w, high_w = np.asarray(Hm @ W), np.asarray(Xlo @ W), np.asarray(Xhi @ W)
        size = np.diff(off).astype(np.float64)
        umean, usd = norm_b.mean, norm_b.sd
        print(f"{len(rows)} {args.part} users; scores and features {time.perf_counter() - t0:.1f} s", flush=True)

        # candidates: the base's top-k outside the profile
        masked = base.copy()
        masked[pb, pc] = -np.inf
        k = args.candidates
        cand = np.argpartition(-masked, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(masked, cand, 1), axis=1)
        cand = np.take_along_axis(cand, order, 1)  # [B, k] by base rank
        targets = [set(int(t) - N_SPECIAL for t in np.unique(np.asarray(tgt.row(r))) if t >= N_SPECIAL) for r in rows]
        U = np.repeat(np.arange(len(rows)), k)
        It = cand.ravel()
        take = lambda m: m[U, It]  # noqa: E731
        feats_p = np.column_stack([take(base), np.tile(np.arange(k), len(rows)), take(ease), take(logp_p), np.log1p(counts[It]), size[U]])
        f_both = take(logp_b)[:, None]
        f_second = take(logp_2)[:, None] if logp_2 is not None else None
        feats_r = np.column_stack([take(rated_in_both), take(hw), take(low_w), take(high_w), umean[U], usd[U], item_mean[It]])
        label = np.array([int(i in targets[u]) for u, i in zip(U, It, strict=True)], np.int32)
        fold = np.random.default_rng(args.seed).permutation(len(rows)) % args.folds

    names_p = ["base", "base rank", "EASE", "presence log p", "log count", "profile size"]
    names_r = ["predicted rating", "h @ W", "low @ W", "high @ W", "user mean", "user sd", "item mean rating"]

    def rerank(features: np.ndarray, names: list[str]) -> np.ndarray:
        """Out-of-fold ranker scores [B, k]; prints the features' share of the split gain."""
        out = np.zeros(len(U))
        gain = np.zeros(features.shape[1])
        for f in range(args.folds):
            tr_u, te_u = fold[U] != f, fold[U] == f
            ranker = lgb.LGBMRanker(objective="lambdarank", n_estimators=200, learning_rate=0.05, num_leaves=15, min_child_samples=50, subsample=0.8, subsample_freq=1, colsample_bytree=0.8, lambdarank_truncation_level=100, random_state=args.seed, n_jobs=1, verbose=-1)
            ranker.fit(features[tr_u], label[tr_u], group=np.full(int((fold != f).sum()), k))
            out[te_u] = ranker.predict(features[te_u])
            gain += ranker.booster_.feature_importance("gain")
        share = gain / gain.sum()
        print("    gain share: " + ", ".join(f"{nm} {v:.2f}" for nm, v in zip(names, share, strict=True)))
        return out.reshape(len(rows), k)

    def as_tokens(cand_scores: np.ndarray) -> np.ndarray:
        s = np.full((len(rows), n + N_SPECIAL), -np.inf, np.float32)
        np.put_along_axis(s, cand + N_SPECIAL, cand_scores.astype(np.float32), 1)
        return s

    t0 = time.perf_counter()
    sets = {
        "P: presence features": (feats_p, names_p),
        "P + ratings": (np.column_stack([feats_p, feats_r]), names_p + names_r),
        "P + both log p": (np.column_stack([feats_p, f_both]), [*names_p, "both log p"]),
        "P + both log p + ratings": (np.column_stack([feats_p, f_both, feats_r]), [*names_p, "both log p", *names_r]),
    }
    if f_second is not None:
        sets["P + second log p"] = (np.column_stack([feats_p, f_second]), [*names_p, "second log p"])
    variants = {"base (presence + EASE)": as_tokens(-np.arange(k, dtype=np.float64)[None, :].repeat(len(rows), 0))}
    for name, (fs, nm) in sets.items():
        print(f"  {name}:")
        variants[name] = as_tokens(rerank(fs, nm))
    print(f"rerankers ({args.folds} folds, {len(U)} candidate rows, {label.mean():.3f} positive): {time.perf_counter() - t0:.1f} s")
    res = {name: evaluate(lambda sel, s=s: s[np.searchsorted(rows, sel)].copy(), hist, tgt, rows) for name, s in variants.items()}
    for name, r in res.items():
        print(f"  {name:<26} " + "  ".join(f"{m} {r[m].mean():.4f}" for m in METRICS))
    pairs = [(x, "base (presence + EASE)") for x in sets] + [("P + ratings", "P: presence features"), ("P + both log p", "P: presence features"), ("P + both log p + ratings", "P + both log p")]
    if f_second is not None:
        pairs += [("P + second log p", "P: presence features"), ("P + both log p", "P + second log p")]
    for x, y in pairs:
        d = res[x]["ndcg@100"] - res[y]["ndcg@100"]
        lo, hi = ci(d)
        print(f"  {x} - {y}: NDCG@100 {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]")


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
