"""The autoencoder's training step on profile entries against the dense [B, 2n] form, same batch.

    python bench/autoencoder_step.py CONFIG [--reps 5]

Builds the task of a train config (its store and split), takes one batch, and times the loss and
gradient of the network both ways, alternating so that both see the same machine load:
    dense    x [B, 2n] @ W1, rating head [B, n], segue.training.autoencoder_losses dense forms
    entries  the profile's rows of W1 summed, rating head at the rated entries (what training runs)
and the full training step (entries, with AdamW). Prints ms per call and steps/s. Both forms
leave out a wide part (model.wide; added at scoring only), so the two losses are equal.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from segue.data.store import Store
from segue.training import autoencoder_losses as AL
from segue.training.task import task_factory
from segue.training.trainer import load_train_config, open_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    print(machine_line(), flush=True)  # the reference the figures below are read against
    cfg = load_train_config(args.config)
    with Store.open(cfg.resolve(cfg.data.store)) as store:
        task = task_factory(cfg.family)(cfg.family_config(), open_split(store, cfg.data.split))
    state = task.init_state()
    sel = np.arange(min(task.loader.n, task.loader.batch_size))
    dense, ent = task.loader.dense_batch(sel), task.loader.batch(sel)
    graphdef, params, buffers = task.graphdef, state["params"], state["buffers"]
    per_entry = task.config.loss.presence == "mean"

    def dense_loss(p, b):  # noqa: ANN001, ANN202
        net = nnx.merge(graphdef, p, buffers)
        # decode(encode()), not net(): __call__ adds a wide part's logits (model.wide = "ease"),
        # which the entries form (and training, wide_mode "score") leaves out: unlike losses.
        logits, pred = net.decode(net.encode(b["presence"], b["ratings"]))
        return AL.multinomial_nll(logits, b["presence"], b["weights"], per_entry) + AL.masked_huber(pred, b["ratings"], b["rated"], b["weights"])

    def entry_loss(p, b):  # noqa: ANN001, ANN202
        net = nnx.merge(graphdef, p, buffers)
        z = net.encode_entries(b["row"], b["col"], b["valid"], b["value"] * b["valid"], b["weights"].shape[0])
        logp = jax.nn.log_softmax(net.presence_logits(z), axis=-1)
        l_pres = AL.multinomial_nll_entries(logp[b["row"], b["col"]], b["row"], b["valid"], b["weights"], per_entry)
        return l_pres + AL.masked_huber_entries(net.rating_at(z, b["row"], b["col"]), b["value"], b["rated"] * b["valid"])

    runs = {"dense": (jax.jit(jax.value_and_grad(dense_loss)), {k: jnp.asarray(v) for k, v in dense.items()}), "entries": (jax.jit(jax.value_and_grad(entry_loss)), {k: jnp.asarray(v) for k, v in ent.items() if k != "wide"})}
    times: dict[str, list[float]] = {k: [] for k in runs}
    vals = {}
    for name, (fn, b) in runs.items():
        vals[name] = float(jax.block_until_ready(fn(params, b))[0])  # compile
    for _ in range(args.reps):
        for name, (fn, b) in runs.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(params, b))
            times[name].append(time.perf_counter() - t)
    print(f"batch {len(sel)} profiles, {int(ent['valid'].sum())} entries, {task.n_items} items; loss dense {vals['dense']:.4f} entries {vals['entries']:.4f} (no dropout)")
    for name, ts in times.items():
        print(f"{name:8s} loss+grad: median {1000 * np.median(ts):.0f} ms ({1 / np.median(ts):.2f} /s)")
    ts = []
    for _ in range(args.reps):
        t = time.perf_counter()
        state, m = task.train_step(state, ent, 1.0)
        jax.block_until_ready(m["loss"])
        ts.append(time.perf_counter() - t)
    print(f"training step (entries, AdamW): median {1000 * np.median(ts[1:] or ts):.0f} ms ({1 / np.median(ts[1:] or ts):.2f} steps/s)")


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
