"""Latency of the profile autoencoder for one profile: the bare forward pass and score() (fold-in).

    python bench/autoencoder_latency.py RUN_FOLDER --store STORE [--split strong] [--rounds 300]

Times, per held-out profile of the split's TEST part (one at a time, after a warm-up):
  bare forward   the jitted network on prebuilt dense inputs (presence, ratings) -> log p, ratings
                 (with a wide part, as score() does it: a (x @ W) from the profile's rows of W, then
                 the network; and, beside it, the network's dense [1, n] x [n, n] product)
  score()        the whole fold-in: building the profile vectors, hybrid normalisation, the forward
                 pass, the unified score over the catalogue
and, as a reference measured in the same run, numpy's product of the same dense input with the
encoder's first weight matrix (the largest single operation of the forward pass). p50 / p99 in
milliseconds. The machine is shared: the reference shows what it gave in this run.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from flax import nnx

from segue.data.arrays import SplitData
from segue.data.splits import Part
from segue.data.store import Store
from segue.models.autoencoder import Profiles, _forward, _forward_given_wide, sparse_wide_logits
from segue.models.base import load_model


def pct(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"p50 {np.percentile(a, 50):7.3f} ms   p99 {np.percentile(a, 99):7.3f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--store", required=True)
    ap.add_argument("--split", default="strong")
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()
    model = load_model(args.run)
    net = model.network
    with Store.open(args.store) as store:
        data = SplitData.load(store, args.split)
        hist = data.history(Part.TEST)
        rows = hist.nonempty()
        rng = np.random.default_rng(0)
        pick = rng.choice(rows, args.rounds)
        graphdef, state = nnx.split(net)
        fwd = jax.jit(lambda s, p, r: _forward(graphdef, s, p, r))
        fwd_given = jax.jit(lambda s, p, r, w: _forward_given_wide(graphdef, s, p, r, w))
        wide = None if net.wide is None else (np.asarray(net.wide[...]), float(np.exp(np.asarray(net.wide_log_scale[...]))))
        w0 = np.asarray(net.encoder[0].kernel[...])
        bare, full, ref, dense = [], [], [], []
        for i, r in enumerate(np.concatenate([pick[:20], pick])):
            prof = Profiles(hist, np.array([r]), net.n_items, model.scale, model.config.model)
            x = np.concatenate([prof.presence, prof.ratings], axis=1) if net.with_ratings else prof.presence
            if wide is not None:  # the dense wide product, as the network's __call__ does it
                t0 = time.perf_counter()
                jax.block_until_ready(fwd(state, prof.presence, prof.ratings))
                if i >= 20:
                    dense.append(1e3 * (time.perf_counter() - t0))
            t0 = time.perf_counter()
            if wide is None:
                out = fwd(state, prof.presence, prof.ratings)
            else:
                out = fwd_given(state, prof.presence, prof.ratings, sparse_wide_logits(prof.presence, *wide))
            jax.block_until_ready(out)
            t1 = time.perf_counter()
            model.score(hist, np.array([r]))
            t2 = time.perf_counter()
            x @ w0
            t3 = time.perf_counter()
            if i >= 20:  # warm-up: compiles and caches
                bare.append(1e3 * (t1 - t0))
                full.append(1e3 * (t2 - t1))
                ref.append(1e3 * (t3 - t2))
    n_params = sum(int(np.prod(v[...].shape)) for _, v in nnx.to_flat_state(nnx.state(net, nnx.Param)))
    print(f"{args.run}: {net.n_items} items, {n_params / 1e6:.1f} M parameters, {args.rounds} single-profile calls")
    print(f"bare forward pass   {pct(bare)}" + ("   (wide logits from the profile's rows of W)" if wide else ""))
    if wide:
        print(f"  dense wide product {pct(dense)}   (the network's [1, n] x [n, n] product instead)")
    print(f"score() (fold-in)   {pct(full)}")
    print(f"reference: numpy x @ W_enc1 [{w0.shape[0]} x {w0.shape[1]}]   {pct(ref)}")


if __name__ == "__main__":
    main()
