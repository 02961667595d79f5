"""Do a profile's ratings carry presence signal beyond the items themselves? EASE variants, numpy only.

Each variant scores the part's fold-in profiles with EASE (L2 `--l2`) and is compared, per user and
paired, with binary EASE (the wide part of the autoencoder); NDCG@100 / Recall@20 / Recall@50 over
the whole catalogue with the fold-in items excluded (bench/autoencoder_vs_multvae.evaluate). h is
the autoencoder's own normalisation of each profile's ratings (segue.data.ratings.normalise; hybrid
by default), computed per profile as at fold-in:

  input g       x_uj = 1 + g h_uj at scoring, W binary EASE (g < 0 turns the sign of the signal)
  drop t / w    x_uj = w where the raw rating r_uj <= t, else 1 (w = 0 drops the item)
  fit g         W fitted on a rating-weighted TRAIN input X_g = X + g H against the binary
                target X (B = argmin ||X - X_g B||^2 + l2 ||B||^2, diag(B) = 0; closed form
                B = P C - P diag(gamma), P = (X_g'X_g + l2 I)^-1, C = X_g'X, gamma_j = (PC)_jj / P_jj)
                and the same weighting of the fold-in input; "fit g sym" also weights the target
                (plain EASE on X_g).
  split f ly    a second block of input features F = X o f (f = h, or low t = 1[r <= t], or high t
                = 1[r >= t]) beside X: B [2n, n] = argmin ||X - [X, F] B||^2 + l2 ||B_X||^2 +
                ly ||B_F||^2 with B[j, j] = B[n + j, j] = 0 (F_j is a function of X_j): each item
                gets a second set of weights for how it was rated (e.g. a low-rated first season
                predicting its sequel less); ly -> infinity is binary EASE.

    python bench/autoencoder_rating_signal.py --store STORE [--split strong] [--part valid]
        [--l2 250] [--inputs -0.5,-0.25,0.25,0.5,1] [--drops 3,4,5] [--fits -0.25,0.25,0.5]
        [--sym 0.25] [--splits h:1000,low5:1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from autoencoder_vs_multvae import ci, evaluate  # bench/ is the script's folder, so on sys.path
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.ratings import RatingScale, normalise
from segue.data.splits import Part
from segue.data.store import Store
from segue.data.vocab import N_SPECIAL
from segue.models.autoencoder import profile_entries
from segue.models.ease import ease_weights

METRICS = ("ndcg@100", "recall@20", "recall@50")


def entries(arrays: SequenceArrays, rows: np.ndarray, n: int, scale: RatingScale, mode: str) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """(presence X, normalised ratings H, raw ratings R) of the profiles `rows` as CSR [B, n]
    with the same sparsity (every anime entry is rated; an unrated entry gets h = 0, r = NaN)."""
    b, col, rating, _ = profile_entries(arrays, rows, n)
    offsets = np.searchsorted(b, np.arange(len(rows) + 1))
    h, _ = normalise(offsets, rating, scale, mode=mode, tau=1.0)  # type: ignore[arg-type]
    h = np.where(np.isnan(h), 0.0, h)
    shape = (len(rows), n)
    mk = lambda v: sp.csr_matrix((np.asarray(v, np.float64), (b, col)), shape=shape)  # noqa: E731
    return mk(np.ones(len(b))), mk(h), mk(rating)


def constrained_weights(xin: sp.csr_matrix, xout: sp.csr_matrix, l2: float) -> np.ndarray:
    """B = argmin ||xout - xin B||^2 + l2 ||B||^2 with diag(B) = 0 (float64)."""
    n = xin.shape[1]
    g = (xin.T @ xin).toarray()
    g[np.diag_indices(n)] += l2
    p = np.linalg.inv(g)
    c = (xin.T @ xout).toarray()
    pc = p @ c
    gamma = np.diag(pc) / np.diag(p)
    pc -= p * gamma[None, :]
    pc[np.diag_indices(n)] = 0.0
    return pc


def split_weights(x: sp.csr_matrix, f: sp.csr_matrix, l2: float, ly: float) -> np.ndarray:
    """B [2n, n] of the split-feature fit (module docstring), float32: per column j the two
    equality constraints b_j = b_{n+j} = 0 by a 2 x 2 solve, B = PC - P[:, j] mu0_j - P[:, n+j] mu1_j."""
    n = x.shape[1]
    z = sp.hstack([x, f]).tocsr()
    g = (z.T @ z).toarray().astype(np.float32)
    g[np.arange(n), np.arange(n)] += l2
    g[np.arange(n, 2 * n), np.arange(n, 2 * n)] += ly
    p = np.linalg.inv(g)
    del g
    pc = p @ (z.T @ x).toarray().astype(np.float32)  # [2n, n]
    j = np.arange(n)
    a, b, d = p[j, j], p[j, n + j], p[n + j, n + j]
    v0, v1 = pc[j, j], pc[n + j, j]
    det = a * d - b * b
    mu0, mu1 = (d * v0 - b * v1) / det, (a * v1 - b * v0) / det
    pc -= p[:, :n] * mu0[None, :]
    pc -= p[:, n:] * mu1[None, :]
    pc[j, j] = 0.0
    pc[n + j, j] = 0.0
    return pc


def feature(kind: str, xv: sp.csr_matrix, hv: sp.csr_matrix, rv: sp.csr_matrix) -> sp.csr_matrix:
    """F = X o f of split features: 'h', 'low<t>' (r <= t) or 'high<t>' (r >= t)."""
    if kind == "h":
        return hv
    r = rv.copy()
    t = float(kind[3:] if kind.startswith("low") else kind[4:])
    r.data = ((r.data <= t) if kind.startswith("low") else (r.data >= t)).astype(np.float64)
    r.eliminate_zeros()
    return r


def tokens(s: np.ndarray) -> np.ndarray:
    out = np.full((s.shape[0], s.shape[1] + N_SPECIAL), -np.inf, np.float32)
    out[:, N_SPECIAL:] = s
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--split", default="strong")
    ap.add_argument("--part", default="valid", choices=["valid", "test"])
    ap.add_argument("--l2", type=float, default=250.0)
    ap.add_argument("--normalisation", default="hybrid", choices=["hybrid", "zscore", "raw"])
    ap.add_argument("--inputs", default="-0.5,-0.25,0.25,0.5,1")
    ap.add_argument("--drops", default="3,4,5")
    ap.add_argument("--drop-weights", default="0,0.5")
    ap.add_argument("--fits", default="-0.25,0.25,0.5")
    ap.add_argument("--sym", default="0.25")
    ap.add_argument("--splits", default="", help="f:ly,... e.g. h:1000,low5:1000")
    args = ap.parse_args()
    print(machine_line(), flush=True)  # the reference the figures below are read against
    fl = lambda s: [float(v) for v in s.split(",") if v]  # noqa: E731
    with Store.open(args.store) as store:
        data = SplitData.load(store, args.split)
        n = data.vocab.n_items
        tr = data.train
        r = np.asarray(tr.rating, np.float64)
        scale = RatingScale(float(np.nanmin(r)), float(np.nanmax(r)))
        X, H, R = entries(tr, tr.nonempty(), n, scale, args.normalisation)
        part = Part.VALID if args.part == "valid" else Part.TEST
        hist, tgt = data.history(part), data.targets(part)
        rows = np.intersect1d(tgt.nonempty(), hist.nonempty())
        Xv, Hv, Rv = entries(hist, rows, n, scale, args.normalisation)
    print(f"{args.part}: {len(rows)} users, scale {scale}, normalisation {args.normalisation}, l2 {args.l2:g}")
    results: dict[str, dict[str, np.ndarray]] = {}

    def run(name: str, s: np.ndarray) -> None:
        res = evaluate(lambda sel: tokens(s[np.searchsorted(rows, sel)]), hist, tgt, rows)
        results[name] = res
        line = "  ".join(f"{m} {res[m].mean():.4f}" for m in METRICS)
        if "EASE" in results and name != "EASE":
            d = res["ndcg@100"] - results["EASE"]["ndcg@100"]
            lo, hi = ci(d)
            line += f"   minus EASE {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]"
        print(f"  {name:<22} {line}", flush=True)

    t = time.perf_counter()
    W = ease_weights(X, args.l2, dtype="float64")
    print(f"binary EASE weights: {time.perf_counter() - t:.1f} s")
    run("EASE", np.asarray(Xv @ W))
    for g in fl(args.inputs):
        run(f"input g {g:g}", np.asarray((Xv + g * Hv) @ W))
    rv = Rv.toarray()
    for thr in fl(args.drops):
        for w in fl(args.drop_weights):
            x = Xv.toarray()
            x[(rv <= thr) & (x > 0)] = w
            run(f"drop r<={thr:g} w {w:g}", x @ W)
    del W
    for g in fl(args.fits):
        t = time.perf_counter()
        B = constrained_weights(X + g * H, X, args.l2)
        print(f"fit g {g:g}: {time.perf_counter() - t:.1f} s")
        run(f"fit g {g:g}", np.asarray((Xv + g * Hv) @ B))
        run(f"fit g {g:g}, binary in", np.asarray(Xv @ B))
    for g in fl(args.sym):
        B = ease_weights(X + g * H, args.l2, dtype="float64")
        run(f"fit g {g:g} sym", np.asarray((Xv + g * Hv) @ B))
    for spec in (s for s in args.splits.split(",") if s):
        kind, _, ly = spec.partition(":")
        t = time.perf_counter()
        B = split_weights(X, feature(kind, X, H, R), args.l2, float(ly))
        print(f"split {kind} ly {float(ly):g}: {time.perf_counter() - t:.1f} s")
        zv = sp.hstack([Xv, feature(kind, Xv, Hv, Rv)]).tocsr()
        run(f"split {kind} ly {float(ly):g}", np.asarray(zv @ B))
        del B


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
