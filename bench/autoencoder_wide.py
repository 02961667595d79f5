"""A trained autoencoder with EASE's item-item weights added to its presence logits at scoring
(model.wide = "ease", wide_mode = "score"): softmax(l + a (x @ W)), W fitted in closed form on the
split's training profiles, the network unchanged. Prints, on the VALID (or TEST) part, NDCG@100
and Recall@20/50 for each EASE L2 and scale a; --out writes the best (VALID NDCG@100) as a model
folder, scored by segue evaluate and served like any autoencoder run.

    python bench/autoencoder_wide.py RUN --store STORE [--split strong] [--l2 250]
        [--scales 10,20,30,50] [--modes unified] [--part valid] [--out FOLDER]
"""

from __future__ import annotations

import argparse
import json
import time

import jax.numpy as jnp
import numpy as np
from flax import nnx

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from segue.data.arrays import SplitData
from segue.data.splits import Part
from segue.data.store import Store
from segue.models.autoencoder import SAVED, AutoencoderRecommender, profile_entries
from segue.models.base import load_model
from segue.training.autoencoder_task import validation_metrics, wide_part


def with_wide(model: AutoencoderRecommender, weights: np.ndarray, l2: float, scale: float) -> AutoencoderRecommender:
    """A copy of `model` whose network adds scale * (x @ weights) to the presence logits."""
    config = model.config.model_copy(deep=True)
    config.model.wide, config.model.wide_mode, config.model.wide_l2, config.model.wide_scale = "ease", "score", l2, scale
    rec = AutoencoderRecommender(config, model.vocab)
    net = rec.build(model.network.n_items)
    nnx.update(net, nnx.state(model.network, SAVED))
    net.wide[...] = jnp.asarray(weights)
    net.wide_log_scale[...] = jnp.log(jnp.float32(scale))
    rec.network, rec.meta = net, {**model.meta, "wide_of": model.meta.get("run"), "wide_l2": l2, "wide_scale": scale}
    return rec


def without_wide(model: AutoencoderRecommender) -> AutoencoderRecommender:
    """The network alone: a run trained with model.wide = "ease" keeps its wide logits in every score,
    so its base row measured the run's own EASE part (a = wide_scale), not "without the wide part"."""
    if model.network.wide is None:
        return model
    n = model.network.n_items
    return with_wide(model, np.zeros((n, n), np.float32), model.config.model.wide_l2, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--store", required=True)
    ap.add_argument("--split", default="strong")
    ap.add_argument("--l2", default="250")
    ap.add_argument("--scales", default="10,20,30,50")
    ap.add_argument("--modes", default="unified")
    ap.add_argument("--part", default="valid", choices=["valid", "test"])
    ap.add_argument("--out")
    args = ap.parse_args()
    print(machine_line(), flush=True)  # the reference the figures below are read against
    model = load_model(args.run)
    assert isinstance(model, AutoencoderRecommender) and model.network is not None
    n = model.network.n_items
    with Store.open(args.store) as store:
        data = SplitData.load(store, args.split)
        part = Part.VALID if args.part == "valid" else Part.TEST
        hist, tgt = data.history(part), data.targets(part)
        rows = np.intersect1d(tgt.nonempty(), hist.nonempty())
        train_rows = data.train.nonempty()
        b, cols, _, _ = profile_entries(data.train, train_rows, n)
        offsets = np.searchsorted(b, np.arange(len(train_rows) + 1))
        bare = without_wide(model)
        base = {m: validation_metrics(_mode(bare, m), hist, tgt, rows)["ndcg@100"] for m in args.modes.split(",")}
        print(f"{args.run} on {len(rows)} {args.part} users; without the wide part: " + ", ".join(f"{m} {v:.4f}" for m, v in base.items()))
        if bare is not model:  # the run has its own wide part: the row it was trained and validated with
            own = {m: validation_metrics(_mode(model, m), hist, tgt, rows)["ndcg@100"] for m in args.modes.split(",")}
            c = model.config.model
            print(
                f"  as trained, with its own wide part (EASE l2 {c.wide_l2:g}, a {float(np.exp(np.asarray(model.network.wide_log_scale[...]))):g}, "
                f"{c.wide_mode}): " + ", ".join(f"{m} {v:.4f}" for m, v in own.items())
            )
        best: tuple[float, AutoencoderRecommender] | None = None
        for l2 in (float(v) for v in args.l2.split(",")):
            t = time.perf_counter()
            weights, _ = wide_part(offsets, cols, n, l2)
            print(f"EASE weights, l2 {l2:g}: {time.perf_counter() - t:.1f} s")
            for a in (float(v) for v in args.scales.split(",")):
                rec = with_wide(model, weights, l2, a)
                for mode in args.modes.split(","):
                    m = validation_metrics(_mode(rec, mode), hist, tgt, rows)
                    print(f"  l2 {l2:g}  a {a:g}  {mode:<9} NDCG@100 {m['ndcg@100']:.4f}  Recall@20 {m['recall@20']:.4f}  Recall@50 {m['recall@50']:.4f}", flush=True)
                    if best is None or m["ndcg@100"] > best[0]:
                        best = (m["ndcg@100"], _mode(with_wide(model, weights, l2, a), mode))
    if args.out and best is not None:
        best[1].save(args.out)
        print(f"wrote {args.out}: {json.dumps(best[1].meta)} score {best[1].config.model.score} ({args.part} NDCG@100 {best[0]:.4f})")


def _mode(rec: AutoencoderRecommender, mode: str) -> AutoencoderRecommender:
    rec.config.model.score = mode  # type: ignore[assignment]
    rec._compiled = None
    return rec


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
