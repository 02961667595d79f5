"""The profile autoencoder against an established Mult-VAE (Cornac's VAECF) on the same split.

    pip install -e '.[bench]'      # cornac, and torch as a CPU wheel (never a CUDA one)
    python bench/autoencoder_vs_multvae.py [[LABEL=]RUN_FOLDER | BASELINE ...] --store STORE
        [--split strong] [--part test] [--epochs 100] [--cache vaecf.npz] [--reference LABEL]

Both see the same data: VAECF is fitted on the split's TRAIN profiles (binarised, as it does
itself); each held-out user's fold-in profile is encoded by VAECF's own encoder (the mean of
q(z|x)) and decoded, which is the fold-in of Liang et al. 2018, and each run folder's model (or
baseline name, e.g. ease popularity, fitted on TRAIN as segue evaluate does) scores the same users
through `score()`. Ranking over the whole catalogue with the fold-in items excluded; NDCG@100,
Recall@20, Recall@50 (recall normalised by min(k, |held-out|)) per user, with 95% bootstrap CIs,
and the paired NDCG@100 difference of every model against the reference (default: the first
model given) and against VAECF. --cache keeps VAECF's top-100 lists of both the VALID and the
TEST part, so a later run with other models reuses its fit; with no model given, the bench only
fits VAECF (and fills the cache). Relevant sets are counted as `segue evaluate` counts them.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from segue.data.arrays import SplitData
from segue.data.splits import Part
from segue.data.store import Store
from segue.data.vocab import N_SPECIAL
from segue.evaluation.cli import resolve_models
from segue.evaluation.metrics import per_user_metrics
from segue.evaluation.protocols import relevant_sets
from segue.evaluation.significance import mean_ci
from segue.models.base import top_k

KS = (20, 50, 100)
METRICS = ("ndcg@100", "recall@20", "recall@50")


def rank(score_fn, hist, rows) -> np.ndarray:  # noqa: ANN001
    """Top-max(KS) tokens [len(rows), 100] of token scores score_fn(rows) [B, V], fold-in items excluded."""
    ranked = []
    for s in range(0, len(rows), 256):
        sel = rows[s : s + 256]
        ranked.append(top_k(score_fn(sel), max(KS), hist, sel)[0])
    return np.concatenate(ranked)


def metrics(ranked: np.ndarray, tgt, rows) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Per-user metrics of ranked lists against the held-out items, counted as `segue evaluate`
    counts them (each distinct unseen item is relevant and never hit)."""
    offsets, keys, _ = relevant_sets(tgt, rows)
    return per_user_metrics(ranked, offsets, keys, KS)


def evaluate(score_fn, hist, tgt, rows) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Per-user metrics of token scores score_fn(rows) [B, V]."""
    return metrics(rank(score_fn, hist, rows), tgt, rows)


def ci(x: np.ndarray) -> tuple[float, float]:
    """95% percentile bootstrap CI of the mean (the harness's resampler, 1,000 resamples)."""
    got = mean_ci(x)
    return got.low, got.high


def vaecf_scores(data: SplitData, epochs: int, seed: int):  # noqa: ANN201
    import cornac
    import torch

    torch.set_num_threads(2)
    n_items = len(data.vocab) - N_SPECIAL
    train = data.train
    rows = train.nonempty()
    triples = []
    for r in rows:
        for t in np.unique(np.asarray(train.row(r))):
            if t >= N_SPECIAL:
                triples.append((str(r), str(int(t) - N_SPECIAL), 1.0))
    ds = cornac.data.Dataset.from_uir(triples, seed=seed)
    model = cornac.models.VAECF(k=200, autoencoder_structure=[600], act_fn="tanh", likelihood="mult", n_epochs=epochs, batch_size=500, learning_rate=1e-3, beta=0.2, seed=seed, verbose=False)
    t0 = time.perf_counter()
    model.fit(ds)
    fit_s = time.perf_counter() - t0
    # column of each of our item columns in cornac's item index (-1: never in training)
    cmap = np.full(n_items, -1, np.int64)
    for iid, idx in ds.iid_map.items():
        cmap[int(iid)] = idx

    def score(hist, sel):  # noqa: ANN001, ANN202
        x = np.zeros((len(sel), ds.num_items), np.float32)
        for i, r in enumerate(sel):
            cols = np.asarray(hist.row(r), dtype=np.int64) - N_SPECIAL
            cols = cols[(cols >= 0) & (cols < n_items)]
            c = cmap[cols]
            x[i, c[c >= 0]] = 1.0
        with torch.no_grad():
            mu, _ = model.vae.encode(torch.from_numpy(x))
            out = model.vae.decode(mu).numpy()
        scores = np.full((len(sel), N_SPECIAL + n_items), -np.inf, np.float32)
        known = cmap >= 0
        scores[:, N_SPECIAL + np.flatnonzero(known)] = out[:, cmap[known]]
        return scores

    return score, fit_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="[label=]run folder, or a baseline name (ease, popularity, ...)")
    ap.add_argument("--store", required=True)
    ap.add_argument("--split", default="strong")
    ap.add_argument("--part", default="test", choices=["valid", "test"])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", help="an .npz keeping VAECF's per-user metrics, reused when it exists")
    ap.add_argument("--reference", help="the label the paired differences are taken against (default: the first model)")
    args = ap.parse_args()
    if not (args.cache and Path(args.cache).exists()):  # VAECF is fitted: Cornac and torch are needed
        missing = [m for m in ("cornac", "torch") if importlib.util.find_spec(m) is None]
        if missing:
            print(f"{' and '.join(missing)} not installed (VAECF needs them): pip install -e '.[bench]'", file=sys.stderr)
            raise SystemExit(2)
    print(machine_line(), flush=True)  # the reference the figures below are read against
    part = Part.VALID if args.part == "valid" else Part.TEST
    with Store.open(args.store) as store:
        data = SplitData.load(store, args.split)
        hist, tgt = data.history(part), data.targets(part)
        rows = np.intersect1d(tgt.nonempty(), hist.nonempty())
        results: dict[str, dict[str, np.ndarray]] = {}
        name = f"cornac VAECF (Mult-VAE, {args.epochs} epochs)"
        cache = Path(args.cache) if args.cache else None
        if cache is not None and cache.exists():  # VAECF's ranked lists from an earlier run of this bench
            got = np.load(cache)
            if f"{args.part}:ranked" not in got.files:
                raise SystemExit(f"{cache}: a cache of an older version of this bench (no ranked lists); delete it to refit VAECF")
            results[name] = metrics(got[f"{args.part}:ranked"], tgt, rows)
            fit_s = float(got["fit_s"])
        else:
            vae_score, fit_s = vaecf_scores(data, args.epochs, args.seed)
            saved = {}
            for p in (Part.VALID, Part.TEST):  # both parts: one fit serves VALID and TEST comparisons
                h, t = data.history(p), data.targets(p)
                r = np.intersect1d(t.nonempty(), h.nonempty())
                saved[f"{p.name.lower()}:ranked"] = rank(lambda sel, h=h: vae_score(h, sel), h, r)
            results[name] = metrics(saved[f"{args.part}:ranked"], tgt, rows)
            if cache is not None:
                np.savez(cache, fit_s=fit_s, **saved)
        print(f"VAECF fitted in {fit_s:.0f} s (this shared machine)")
        models, _ = resolve_models(args.runs, store, args.split) if args.runs else ({}, {})
        for label, model in models.items():
            t0 = time.perf_counter()
            results[label] = evaluate(lambda sel, m=model: m.score(hist, sel), hist, tgt, rows)
            print(f"{label}: scored in {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"{len(rows)} {args.part} users of split '{args.split}' (strong generalisation: profiles folded in)")
    vae = next(iter(results))
    ref = args.reference or (next(iter(models)) if models else vae)
    if ref not in results:
        raise SystemExit(f"--reference {ref}: not one of {', '.join(results)}")
    for label, res in results.items():
        parts = []
        for m in METRICS:
            lo, hi = ci(res[m])
            parts.append(f"{m} {res[m].mean():.4f} [{lo:.4f}, {hi:.4f}]")
        print(f"{label}: " + "  ".join(parts))
    print(f"paired NDCG@100 differences, {ref} minus each (95% bootstrap CI):")
    for label, res in results.items():
        if label != ref:
            d = results[ref]["ndcg@100"] - res["ndcg@100"]
            lo, hi = ci(d)
            print(f"    {ref} - {label}: {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]")
    if ref != vae:
        print("paired NDCG@100 differences, each minus VAECF:")
        for label, res in results.items():
            if label not in (ref, vae):
                d = res["ndcg@100"] - results[vae]["ndcg@100"]
                lo, hi = ci(d)
                print(f"    {label} - VAECF: {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]")


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
