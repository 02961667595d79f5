"""Scoring variants of trained autoencoders with EASE's logits at scoring, chosen on VALID: does the
rating head earn its place in the ranking?

For each run folder (`[label=]FOLDER`) one forward pass over the part's fold-in profiles gives the
presence log-probabilities log p [B, n] and the rating head's output; EASE's weights W (L2 `--l2`)
are fitted once on the split's TRAIN profiles. Every variant is then a numpy combination of these,
with no new forward pass:

    s = alpha * log softmax(log p + a * (x @ W)) + (1 - alpha) * log q

q the predicted rating mapped to (0, 1) (the model's unified score, segue.models.autoencoder);
alpha = 1 is presence-only scoring (the only one for a model without a rating head), a = 0 the
network alone. log p is the network's own: a run trained with a wide part (model.wide = "ease",
as the shipped configs) has its own EASE logits taken out first, so `a` is EASE's whole scale
(a run's own setting is the row with its wide_scale and wide_l2). Prints NDCG@100 / Recall@20 / Recall@50 for the grid, each run's best setting on
NDCG@100, and paired per-user differences with 95% bootstrap CIs between the runs' best settings
(and, for a rating-head run, its best unified setting against its own best presence-only one).
--out-dir writes each run's best setting as a model folder (served and evaluated as any run).

    python bench/autoencoder_blend.py both=RUN1 presence=RUN2 --store STORE [--split strong]
        [--part valid] [--l2 250] [--scales 0,20,30,50,75] [--alphas 1,0.7,0.5,0.3] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import numpy as np
from scipy.special import log_softmax

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from autoencoder_vs_multvae import ci, evaluate  # bench/ is the script's folder, so on sys.path
from autoencoder_wide import with_wide
from segue.data.arrays import SplitData
from segue.data.ratings import denormalise
from segue.data.splits import Part
from segue.data.store import Store
from segue.data.vocab import N_SPECIAL
from segue.models.autoencoder import AutoencoderRecommender, Profiles, profile_entries, rating_unit
from segue.models.base import load_model
from segue.training.autoencoder_task import wide_part

METRICS = ("ndcg@100", "recall@20", "recall@50")


def blend(logp: np.ndarray, log_q: np.ndarray | None, wide: np.ndarray | None, a: float, alpha: float) -> np.ndarray:
    """Token scores [B, V] of one setting (special tokens -inf)."""
    s = log_softmax(logp + a * wide, axis=1) if wide is not None and a > 0 else logp
    if log_q is not None and alpha < 1:
        s = alpha * s + (1 - alpha) * log_q
    out = np.full((s.shape[0], s.shape[1] + N_SPECIAL), -np.inf, np.float32)
    out[:, N_SPECIAL:] = s
    return out


def _pick(sel: np.ndarray, rows: np.ndarray, logp: np.ndarray, log_q: np.ndarray | None, wide: np.ndarray | None, a: float, alpha: float) -> np.ndarray:
    """blend() of the users `sel` (a subset of the sorted `rows` the arrays are indexed by)."""
    i = np.searchsorted(rows, sel)
    return blend(logp[i], None if log_q is None else log_q[i], None if wide is None else wide[i], a, alpha)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="[label=]run folder")
    ap.add_argument("--store", required=True)
    ap.add_argument("--split", default="strong")
    ap.add_argument("--part", default="valid", choices=["valid", "test"])
    ap.add_argument("--l2", default="250")
    ap.add_argument("--scales", default="0,20,30,50,75")
    ap.add_argument("--alphas", default="1,0.9,0.7,0.5,0.3")
    ap.add_argument("--out-dir", help="write each run's best setting here as a model folder")
    args = ap.parse_args()
    print(machine_line(), flush=True)  # the reference the figures below are read against
    specs = [s.partition("=") for s in args.runs]
    models = {(lab if sep else Path(tgt).name): load_model(tgt) for lab, sep, tgt in specs}
    with Store.open(args.store) as store:  # the split's arrays read from the store lazily
        _run(args, models, SplitData.load(store, args.split))


def _run(args: argparse.Namespace, models: dict, data: SplitData) -> None:  # noqa: C901
    scales = [float(v) for v in args.scales.split(",")]
    alphas = [float(v) for v in args.alphas.split(",")]
    part = Part.VALID if args.part == "valid" else Part.TEST
    hist, tgt = data.history(part), data.targets(part)
    rows = np.intersect1d(tgt.nonempty(), hist.nonempty())
    parts: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    first = next(iter(models.values()))
    assert isinstance(first, AutoencoderRecommender) and first.network is not None
    presence = Profiles(hist, rows, first.network.n_items, first.scale, first.config.model).presence
    for name, model in models.items():
        assert isinstance(model, AutoencoderRecommender) and model.network is not None
        t = time.perf_counter()
        logp, rating, norm = model.forward(hist, rows)
        if model.network.wide is not None:  # the network alone: its own EASE logits out
            own = float(np.exp(np.asarray(model.network.wide_log_scale[...])))
            logp = log_softmax(logp - own * (presence @ np.asarray(model.network.wide[...])), axis=1).astype(np.float32)
            print(f"{name}: its own wide part (scale {own:g}, l2 {model.config.model.wide_l2:g}) taken out: a is EASE's whole scale")
        log_q = None
        if model.config.model.rating_head:
            log_q = np.log(rating_unit(denormalise(rating, norm, model.scale), model.scale)).astype(np.float32)
        parts[name] = (logp, log_q)
        print(f"{name}: forward pass of {len(rows)} {args.part} profiles {time.perf_counter() - t:.1f} s", flush=True)
    n = next(iter(models.values())).network.n_items  # type: ignore[union-attr]
    train_rows = data.train.nonempty()
    b, cols, _, _ = profile_entries(data.train, train_rows, n)
    offsets = np.searchsorted(b, np.arange(len(train_rows) + 1))
    results: dict[tuple[str, float, float, float], dict[str, np.ndarray]] = {}
    weights: dict[float, np.ndarray] = {}
    for l2 in (float(v) for v in args.l2.split(",")):
        t = time.perf_counter()
        weights[l2], _ = wide_part(offsets, cols, n, l2)
        wide = presence @ weights[l2]
        print(f"EASE weights, l2 {l2:g}: {time.perf_counter() - t:.1f} s")
        ease = evaluate(partial(_pick, rows=rows, logp=wide, log_q=None, wide=None, a=0.0, alpha=1.0), hist, tgt, rows)
        results[("EASE", l2, 0.0, 1.0)] = ease
        print(f"  EASE alone (l2 {l2:g})  " + "  ".join(f"{m} {ease[m].mean():.4f}" for m in METRICS))
        for name, (logp, log_q) in parts.items():
            for alpha in alphas if log_q is not None else [1.0]:
                for a in scales:
                    key = (name, l2, a, alpha)
                    if a == 0 and any(k[0] == name and k[2] == 0 and k[3] == alpha for k in results):
                        continue  # the network alone does not depend on l2
                    res = evaluate(partial(_pick, rows=rows, logp=logp, log_q=log_q, wide=wide, a=a, alpha=alpha), hist, tgt, rows)
                    results[key] = res
                    print(f"  {name:<10} l2 {l2:g}  a {a:<5g} alpha {alpha:<4g} " + "  ".join(f"{m} {res[m].mean():.4f}" for m in METRICS), flush=True)
    best: dict[str, tuple[str, float, float, float]] = {}
    for key, res in results.items():
        if key[0] not in best or res["ndcg@100"].mean() > results[best[key[0]]]["ndcg@100"].mean():
            best[key[0]] = key
    print(f"\nbest setting of each run on {args.part} NDCG@100 (mean [95% bootstrap CI]), {len(rows)} users:")
    for name, key in best.items():
        res = results[key]
        print(f"  {name:<10} l2 {key[1]:g} a {key[2]:g} alpha {key[3]:g}: " + "  ".join(f"{m} {res[m].mean():.4f} [{ci(res[m])[0]:.4f}, {ci(res[m])[1]:.4f}]" for m in METRICS))
    names = list(best)
    print("paired NDCG@100 differences (row minus column's best setting):")
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            d = results[best[x]]["ndcg@100"] - results[best[y]]["ndcg@100"]
            lo, hi = ci(d)
            print(f"  {x} - {y}: {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]")
    for name, (_, log_q) in parts.items():
        if log_q is None:
            continue
        pres = max((k for k in results if k[0] == name and k[3] == 1.0), key=lambda k: results[k]["ndcg@100"].mean(), default=None)
        if pres is not None and pres != best[name]:
            d = results[best[name]]["ndcg@100"] - results[pres]["ndcg@100"]
            lo, hi = ci(d)
            print(f"  {name} best (alpha {best[name][3]:g}, a {best[name][2]:g}) - {name} presence-only scoring (a {pres[2]:g}): {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]")
    if args.out_dir:
        for name, (_, l2, a, alpha) in best.items():
            if name == "EASE":
                continue
            model = models[name]
            assert isinstance(model, AutoencoderRecommender)
            if a > 0:
                rec = with_wide(model, weights[l2], l2, a)  # replaces a wide part of its own
            elif model.network is not None and model.network.wide is not None:
                n_items = model.network.n_items  # the network alone: its own EASE weights zeroed
                rec = with_wide(model, np.zeros((n_items, n_items), np.float32), l2, 1.0)
            else:
                rec = model
            rec.config.model.score = "presence" if alpha == 1.0 else "unified"
            rec.config.model.alpha = alpha
            rec._compiled = None
            folder = Path(args.out_dir) / name
            rec.save(folder)
            print(f"wrote {folder} (l2 {l2:g}, a {a:g}, alpha {alpha:g})")


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
