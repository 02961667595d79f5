"""Latency of the profile autoencoder for one profile: the bare forward pass and score() (fold-in).

    python bench/autoencoder_latency.py RUN_FOLDER --store STORE [--split strong] [--rounds 300]

Times, per held-out profile of the split's TEST part (one at a time, after a warm-up):
  bare forward   the forward pass as score() runs it, on prebuilt profile inputs: the encoder's
                 first layer and the wide logits (if any) from the profile's rows of their weights
                 (first_layer, sparse_wide_logits), then the jitted rest of the network
  dense network  beside it, the network's own dense pass on [1, n] inputs (the [1, 2n] x [2n, h]
                 first layer, and with a wide part the [1, n] x [n, n] product)
  score()        the whole fold-in: building the profile vectors, hybrid normalisation, the forward
                 pass, the rating correction, the unified score over the catalogue
and, as a reference measured in the same run, numpy's product of the same dense input with the
encoder's first weight matrix (the largest single operation of the dense pass). p50 / p99 in
milliseconds. The machine is shared: the reference shows what it gave in this run.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from flax import nnx

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from segue.data.arrays import SplitData
from segue.data.splits import Part
from segue.data.store import Store
from segue.models.autoencoder import (
    Profiles,
    _forward,
    _forward_after_first,
    first_layer,
    sparse_wide_logits,
)
from segue.models.base import load_model

WARMUP = 20  # untimed calls first: compiles and caches


def pct(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"p50 {np.percentile(a, 50):7.3f} ms   p99 {np.percentile(a, 99):7.3f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--store", required=True)
    ap.add_argument("--split", default="strong")
    ap.add_argument("--rounds", type=int, default=300, help="timed calls, after a separate warm-up of up to 20")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    print(machine_line(), flush=True)  # the reference the figures below are read against
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
        rest = jax.jit(lambda s, h, w: _forward_after_first(graphdef, s, h, w))
        wide = None if net.wide is None else (np.asarray(net.wide[...]), float(np.exp(np.asarray(net.wide_log_scale[...]))))
        w0 = np.asarray(net.encoder[0].kernel[...])
        first = (w0, np.asarray(net.encoder[0].bias[...]))
        bare, full, ref, dense = [], [], [], []
        warm = pick[:WARMUP]  # fewer than --rounds: with --rounds < 20 it timed 2R - 20 calls (none below 10)
        for i, r in enumerate(np.concatenate([warm, pick])):
            prof = Profiles(hist, np.array([r]), net.n_items, model.scale, model.config.model)
            x_dense = np.concatenate([prof.presence, prof.ratings], axis=1) if net.with_ratings else prof.presence
            x, presence = prof.rows_input(0, 1, 1)
            t0 = time.perf_counter()
            jax.block_until_ready(fwd(state, prof.presence, prof.ratings))
            t1 = time.perf_counter()
            out = rest(state, first_layer(x, *first), None if wide is None else sparse_wide_logits(presence, *wide))
            jax.block_until_ready(out)
            t2 = time.perf_counter()
            model.score(hist, np.array([r]))
            t3 = time.perf_counter()
            x_dense @ w0
            t4 = time.perf_counter()
            if i >= len(warm):  # warm-up: compiles and caches
                dense.append(1e3 * (t1 - t0))
                bare.append(1e3 * (t2 - t1))
                full.append(1e3 * (t3 - t2))
                ref.append(1e3 * (t4 - t3))
    n_params = sum(int(np.prod(v[...].shape)) for _, v in nnx.to_flat_state(nnx.state(net, nnx.Param)))
    print(f"{args.run}: {net.n_items} items, {n_params / 1e6:.1f} M parameters, {len(bare)} single-profile calls (after {len(warm)} untimed)")
    print(f"bare forward pass   {pct(bare)}   (first layer" + (" and wide logits" if wide else "") + " from the profile's rows)")
    print(f"  dense network      {pct(dense)}   (the network's own [1, n] inputs" + (", the [n, n] wide product" if wide else "") + ")")
    print(f"score() (fold-in)   {pct(full)}")
    print(f"reference: numpy x @ W_enc1 [{w0.shape[0]} x {w0.shape[1]}]   {pct(ref)}")


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
