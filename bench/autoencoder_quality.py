"""Profile autoencoder on a split's VALID or TEST part: ranking by score mode, and rating error.

    python bench/autoencoder_quality.py RUN_FOLDER --store STORE [--split strong] [--part valid]
        [--alphas 1,0.9,0.7,0.5] [--niche 0,0.05]

Prints, for each score setting (presence-only, unified at each alpha, rating-only, niche boost b),
NDCG@10/100 and Recall@20/50 of the held-out items (history folded in, history items excluded),
and the RMSE / MAE of the predicted ratings of the part's rated items on the original scale,
beside references computed on the same entries (--biasedmf adds biased MF folded in): the user's mean (of their fold-in ratings;
the training mean when they rated nothing) and the item's training mean rating (the user mean
where the item has no training rating). Tune on --part valid; report --part test once.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from segue.data.arrays import SplitData
from segue.data.splits import Part
from segue.data.store import Store
from segue.data.vocab import N_SPECIAL
from segue.models.base import load_model
from segue.training.autoencoder_task import validation_metrics


def rated_targets(hist, tgt, rows, global_mean: float) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:  # noqa: ANN001
    """For each of `rows`: its rated held-out tokens, their ratings, and the mean of the profile's
    fold-in ratings (`global_mean` where it rated nothing)."""
    off_t, off_h = np.asarray(tgt.offsets), np.asarray(hist.offsets)
    toks, gs, umeans = [], [], np.empty(len(rows))
    for i, row in enumerate(rows):
        t = np.asarray(tgt.tokens[off_t[row] : off_t[row + 1]], dtype=np.int64)
        g = np.asarray(tgt.rating[off_t[row] : off_t[row + 1]], dtype=np.float64)
        keep = (t >= N_SPECIAL) & ~np.isnan(g)
        toks.append(t[keep])
        gs.append(g[keep])
        hr = np.asarray(hist.rating[off_h[row] : off_h[row + 1]], dtype=np.float64)
        umeans[i] = float(np.nanmean(hr)) if np.isfinite(hr).any() else global_mean
    return toks, gs, umeans


def rating_errors(model, hist, tgt, rows, train, others=None) -> dict[str, tuple[float, float]]:  # noqa: ANN001
    """name -> (RMSE, MAE) over the rated target entries of `rows`; `others` maps names to fitted
    rating predictors (pairs predict(), fold-in of the same histories), e.g. biasedmf."""
    others = others or {}
    n_tok = len(model.vocab)
    tok = np.asarray(train.tokens, dtype=np.int64)
    r = np.asarray(train.rating, dtype=np.float64) if train.rating is not None else np.full(len(tok), np.nan)
    ok = ~np.isnan(r)
    s = np.bincount(tok[ok], weights=r[ok], minlength=n_tok)
    c = np.bincount(tok[ok], minlength=n_tok)
    global_mean = float(r[ok].mean())
    item_mean = np.where(c > 0, s / np.maximum(c, 1), np.nan)
    preds: dict[str, list[np.ndarray]] = {"autoencoder": [], "user mean": [], "item mean": [], **{k: [] for k in others}}
    given: list[np.ndarray] = []
    for start in range(0, len(rows), 256):
        sel = rows[start : start + 256]
        toks, gs, umeans = rated_targets(hist, tgt, sel, global_mean)
        width = max(1, max(len(t) for t in toks))
        pad = np.full((len(sel), width), N_SPECIAL, np.int64)
        for i, t in enumerate(toks):
            pad[i, : len(t)] = t
        pred = model.predict(hist, sel, pad)
        pair_rows = np.concatenate([np.full(len(t), r) for r, t in zip(sel, toks, strict=True)])
        pair_toks = np.concatenate(toks)
        for name, other in others.items():
            preds[name].append(np.asarray(other.predict(hist, pair_rows, pair_toks), dtype=np.float64))
        for i, t in enumerate(toks):
            n = len(t)
            preds["autoencoder"].append(pred[i, :n])
            preds["user mean"].append(np.full(n, umeans[i]))
            im = item_mean[t]
            preds["item mean"].append(np.where(np.isnan(im), umeans[i], im))
            given.append(gs[i])
    y = np.concatenate(given)
    out = {}
    for name, p in preds.items():
        e = np.concatenate(p) - y
        out[name] = (math.sqrt(float(np.mean(e**2))), float(np.mean(np.abs(e))))
    out["n"] = (float(len(y)), 0.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--store", required=True)
    ap.add_argument("--split", default="strong")
    ap.add_argument("--part", default="valid", choices=["valid", "test"])
    ap.add_argument("--alphas", default="1,0.9,0.8,0.7,0.5")
    ap.add_argument("--niche", default="0")
    ap.add_argument("--biasedmf", action="store_true", help="also fit biasedmf (its defaults) on the training part and compare its fold-in")
    args = ap.parse_args()
    print(machine_line(), flush=True)  # the reference the figures below are read against
    model = load_model(args.run)
    part = Part.VALID if args.part == "valid" else Part.TEST
    with Store.open(args.store) as store:
        data = SplitData.load(store, args.split)
        hist, tgt = data.history(part), data.targets(part)
        rows = np.intersect1d(tgt.nonempty(), hist.nonempty())
        print(f"{args.run}: {len(rows)} {args.part} users of split '{args.split}'")
        settings = [("presence", 1.0, 0.0)]
        if model.config.model.rating_head:
            settings += [("unified", float(a), 0.0) for a in args.alphas.split(",") if float(a) < 1.0] + [("rating", 0.0, 0.0)]
        settings += [("presence", 1.0, float(b)) for b in args.niche.split(",") if float(b) > 0]
        print(f"{'score':<22}{'ndcg@10':>9}{'ndcg@100':>10}{'recall@20':>11}{'recall@50':>11}")
        for mode, alpha, b in settings:
            model.config.model.score = mode
            model.config.model.alpha = alpha if mode == "unified" else model.config.model.alpha
            model.config.model.niche_boost = b
            t = time.perf_counter()
            m = validation_metrics(model, hist, tgt, rows)
            label = mode + (f" a={alpha:g}" if mode == "unified" else "") + (f" b={b:g}" if b else "")
            print(f"{label:<22}{m['ndcg@10']:>9.4f}{m['ndcg@100']:>10.4f}{m['recall@20']:>11.4f}{m['recall@50']:>11.4f}   ({time.perf_counter() - t:.1f} s)")
        if model.config.model.rating_head and tgt.rating is not None:
            others = {}
            if args.biasedmf:
                from segue.models.biasedmf import BiasedMF

                others["biasedmf"] = BiasedMF().fit(data)
            err = rating_errors(model, hist, tgt, rows, data.train, others)
            print(f"rating error on {int(err.pop('n')[0])} rated {args.part} entries (original scale):")
            for name, (rmse, mae) in err.items():
                print(f"  {name:<12} RMSE {rmse:.4f}  MAE {mae:.4f}")


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
