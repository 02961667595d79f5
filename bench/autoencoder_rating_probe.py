"""How much rating signal does a trained autoencoder's bottleneck carry? Its rating head against a
per-item ridge refit of that head on the same codes, and against simple baselines.

For a run folder with a rating head, on the VALID (or TEST) part of a strong split, every rated
held-out entry is predicted by:

  head              the trained rating head (without the fold-in correction of model.rating_foldin)
  user mean         the mean of the profile's fold-in ratings (training mean if it rated nothing)
  + item offset     user mean + o_j, o_j = sum_u (r_uj - mean_u) / (n_j + lam_o) over TRAIN ratings
  ridge lam         a refit of the head on fixed codes: each TRAIN profile is split at random as in
                    training (input dropout; `--reps` draws), z = encode(input half), and for every
                    item j a ridge regression h_uj ~ [z_u, 1] . w_j over the rated held-out entries
                    (w_j = (Z_j'Z_j + lam I)^-1 Z_j'h_j, the bias nearly unpenalised), then
                    denormalised as the head's output is
  fold-in lam       the head plus model.rating_foldin's correction at lam (rating_correction): its errors
                    e_k on the profile's own rated fold-in entries, ridge-regressed on [1, w_k] (w_k
                    the head's last-layer column of item k: the same item space), c = (Q'Q +
                    diag(1, lam, ..., lam))^-1 Q'e, and c . [1, w_j] added to item j's prediction
                    (biased MF's user step, with the head's item vectors and its errors as targets)

The refit is the best linear rating decoder the codes allow at each lam: when it only reaches the
user mean + item offset baseline, the bottleneck holds no rating signal beyond item offsets, and no
training of the rating head on it can do better.

    python bench/autoencoder_rating_probe.py RUN_FOLDER --store STORE [--split strong]
        [--part valid] [--lams 10,100,1000] [--reps 2] [--foldin-lams 0.03,0.1,0.3]
"""

from __future__ import annotations

import argparse
import math
import time

import jax.numpy as jnp
import numpy as np

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from autoencoder_quality import rated_targets  # bench/ is the script's folder, so on sys.path
from segue.data.arrays import SplitData
from segue.data.ratings import denormalise
from segue.data.splits import Part
from segue.data.store import Store
from segue.data.vocab import N_SPECIAL
from segue.models.autoencoder import (
    AutoencoderRecommender,
    Profiles,
    head_item_features,
    rating_correction,
)
from segue.models.base import load_model


def item_offsets(train, n_tok: int, lam: float) -> tuple[np.ndarray, float]:  # noqa: ANN001
    """(shrunk mean deviation of each token's TRAIN ratings from their user's mean [n_tok], global mean)."""
    offs, tok = np.asarray(train.offsets), np.asarray(train.tokens, np.int64)
    r = np.asarray(train.rating, np.float64)
    users = np.repeat(np.arange(len(offs) - 1), np.diff(offs))
    ok = ~np.isnan(r)
    us = np.bincount(users[ok], weights=r[ok], minlength=len(offs) - 1)
    uc = np.bincount(users[ok], minlength=len(offs) - 1)
    dev = r[ok] - (us / np.maximum(uc, 1))[users[ok]]
    s = np.bincount(tok[ok], weights=dev, minlength=n_tok)
    c = np.bincount(tok[ok], minlength=n_tok)
    return s / (c + lam), float(r[ok].mean())


def training_codes(
    model: AutoencoderRecommender, train, reps: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: ANN001
    """(codes [E, d], item column [E], hybrid rating [E]) of the rated entries hidden from the input
    when each TRAIN profile is split as in training, `reps` times."""
    net, mc = model._net(), model.config.model
    rng = np.random.default_rng(seed)
    rows = train.nonempty()
    zs, js, hs = [], [], []
    for _ in range(reps):
        for s in range(0, len(rows), 256):
            prof = Profiles(train, rows[s : s + 256], net.n_items, model.scale, mc)
            has = prof.presence > 0
            keep = (rng.random(has.shape) < 1.0 - mc.input_dropout) & has
            z = np.asarray(
                net.encode(jnp.asarray(prof.presence * keep), jnp.asarray(prof.ratings * keep))
            )
            b, j = np.nonzero(
                has & ~keep & (prof.ratings != 0)
            )  # h = 0 exactly: unrated (or the user's mean)
            zs.append(z[b])
            js.append(j)
            hs.append(prof.ratings[b, j])
    return (
        np.concatenate(zs).astype(np.float64),
        np.concatenate(js),
        np.concatenate(hs).astype(np.float64),
    )


def ridge_decoder(z: np.ndarray, col: np.ndarray, h: np.ndarray, n: int, lam: float) -> np.ndarray:
    """Per-item ridge weights [n, d + 1] of h ~ [z, 1] . w_j (bias penalised by 1e-3 only)."""
    x = np.concatenate([z, np.ones((len(z), 1))], axis=1)
    order = np.argsort(col, kind="stable")
    x, col, h = x[order], col[order], h[order]
    bounds = np.searchsorted(col, np.arange(n + 1))
    reg = lam * np.eye(x.shape[1])
    reg[-1, -1] = 1e-3
    w = np.zeros((n, x.shape[1]))
    for j in range(n):
        a, b = bounds[j], bounds[j + 1]
        if b > a:
            xj = x[a:b]
            w[j] = np.linalg.solve(xj.T @ xj + reg, xj.T @ h[a:b])
    return w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--store", required=True)
    ap.add_argument("--split", default="strong")
    ap.add_argument("--part", default="valid", choices=["valid", "test"])
    ap.add_argument("--lams", default="10,100,1000")
    ap.add_argument("--offset-lam", type=float, default=5.0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--foldin-lams", default="", help="e.g. 0.03,0.1,0.3: the fold-in correction at these lam")
    args = ap.parse_args()
    print(machine_line(), flush=True)  # the reference the figures below are read against
    model = load_model(args.run)
    if not isinstance(model, AutoencoderRecommender) or not model.config.model.rating_head:
        raise SystemExit(f"{args.run}: not an autoencoder with a rating head")
    # the head as trained: the run's own fold-in correction (model.rating_foldin) is what the
    # fold-in rows below vary
    model.config.model = model.config.model.model_copy(update={"rating_foldin": 0.0})
    net = model._net()
    n = net.n_items
    with Store.open(args.store) as store:
        data = SplitData.load(store, args.split)
        part = Part.VALID if args.part == "valid" else Part.TEST
        hist, tgt = data.history(part), data.targets(part)
        rows = np.intersect1d(tgt.nonempty(), hist.nonempty())
        offsets, global_mean = item_offsets(data.train, len(model.vocab), args.offset_lam)
        # the rated held-out entries: (profile index b, item column j, rating y)
        toks, gs, umean = rated_targets(hist, tgt, rows, global_mean)
        b = np.concatenate([np.full(len(t), i) for i, t in enumerate(toks)])
        j, y = np.concatenate(toks) - N_SPECIAL, np.concatenate(gs)
        _, head_h, norm = model.forward(hist, rows)
        prof = Profiles(hist, rows, n, model.scale, model.config.model)
        z_part = np.asarray(
            net.encode(jnp.asarray(prof.presence), jnp.asarray(prof.ratings))
        ).astype(np.float64)
        preds = {
            "head": denormalise(head_h, norm, model.scale)[b, j],
            "user mean": umean[b],
            "user mean + item offset": np.clip(
                umean[b] + offsets[j + N_SPECIAL], model.scale.low, model.scale.high
            ),
        }
        t0 = time.perf_counter()
        z, col, h = training_codes(model, data.train, args.reps, args.seed)
        print(
            f"{args.run}: {len(rows)} {args.part} profiles, {len(y)} rated held-out entries; {len(col)} TRAIN entries for the refit ({time.perf_counter() - t0:.0f} s)"
        )
        for lam in (float(v) for v in args.lams.split(",")):
            w = ridge_decoder(z, col, h, n, lam)
            hp = np.zeros((len(rows), n))
            hp[b, j] = np.einsum("ed,ed->e", z_part[b], w[j, :-1]) + w[j, -1]
            preds[f"ridge refit, lam {lam:g}"] = denormalise(hp, norm, model.scale)[b, j]
        for lam in (float(v) for v in args.foldin_lams.split(",") if v):
            hp = head_h + rating_correction(np.asarray(head_h, np.float64), prof.ratings, prof.rated, head_item_features(net), lam)
            preds[f"fold-in, lam {lam:g}"] = denormalise(hp, norm, model.scale)[b, j]
    for name, p in preds.items():
        e = np.asarray(p, np.float64) - y
        print(
            f"  {name:<26} RMSE {math.sqrt(float(np.mean(e**2))):.4f}  MAE {float(np.mean(np.abs(e))):.4f}"
        )


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
