"""Where one training step of a transformer config goes, on the real data, on one core.

Run through bench/time_to_quality.py (--profile / --profile-only) or alone:

    taskset -c 0 env XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        .venv/bin/python bench/step_profile.py --config configs/beauty.toml --store stores/beauty.duckdb

It draws one epoch of real batches from the config's loader (its bucket lengths and padding), and
times, per batch and summed over the epoch (compiles excluded; CPU seconds of this process):
  step            the real jitted training step (segue.training.step)
  attention       LN + qkv + scores + softmax + mixing + projection of every block, forward and backward
  feed-forward    LN + W1 + ReLU + W2 of every block, forward and backward
  output/softmax  the loss head on the hidden states (full softmax over the table, or the
                  configured sampled loss), forward and backward
  optimizer       AdamW on the dense parameters and the table's row Adam
  data loading    assembling the batch from the arrays (the loader's map)
  evaluation      one validation pass / eval_every (its per-step share)
  checkpointing   one Orbax save / checkpoint_every
The parts are timed in isolation, so their sum differs from the step (fusion, dropout, the
embedding gather): the rest is printed as "other". Shares are of step + loading + evaluation +
checkpointing. Model FLOPs (segue.models.transformer.count_flops_per_token over the padded
positions, output over every class for the full softmax) are set against a float32 matmul peak
measured in the same process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from train_throughput import matmul_peak  # bench/ is the script's folder, so on sys.path


def cpu() -> float:
    return time.process_time()


def _timed(fn: Any, *args: Any) -> float:
    jax.block_until_ready(fn(*args))  # compile / warm
    t = cpu()
    jax.block_until_ready(fn(*args))
    return cpu() - t


def profile(config: Path, store: Path, split: str = "loo", overrides: dict | None = None, max_batches: int | None = None) -> dict[str, Any]:
    from segue.data.arrays import SplitData
    from segue.data.store import Store
    from segue.models.transformer import count_flops_per_token
    from segue.training import optim as O
    from segue.training.step import per_position_loss, table_of
    from segue.training.trainer import Trainer, load_train_config, parse_train_config
    from segue.training.transformer_task import TransformerTask

    cfg = load_train_config(config)
    if overrides:
        d = cfg.model_dump(mode="json", exclude={"base_dir"})
        for sec, vals in overrides.items():
            if isinstance(vals, dict) and isinstance(d.get(sec), dict):
                for k, v in vals.items():
                    if isinstance(v, dict) and isinstance(d[sec].get(k), dict):
                        d[sec][k].update(v)
                    else:
                        d[sec][k] = v
            else:
                d[sec] = vals
        cfg = parse_train_config(d)
    out: dict[str, Any] = {"peak_gflops": matmul_peak(reps=10, clock=cpu)}
    with Store.open(store) as s:
        data = SplitData.load(s, split)
        task = TransformerTask(cfg.transformer_config(), data)
        tmp = Path(tempfile.mkdtemp(prefix="segue-profile-"))
        trainer = Trainer(task, tmp)
        state = trainer.state
        spec = task.spec
        n = task.loader.batches_per_epoch if max_batches is None else min(max_batches, task.loader.batches_per_epoch)
        # data loading: the loader's batch assembly, per batch
        t = cpu()
        batches = [task.loader.dataset[i] for i in range(n)]
        out["data loading"] = (cpu() - t) / n
        shapes = sorted({b["inputs"].shape[1] for b in batches})
        first: dict[int, dict[str, np.ndarray]] = {}
        for b in batches:
            first.setdefault(b["inputs"].shape[1], b)
        for b in first.values():  # compile every bucket's step outside the timed epoch
            state, _ = task.train_step(state, b, 1.0)
        jax.block_until_ready(state)
        t = cpu()
        for b in batches:
            state, m = task.train_step(state, b, 1.0)
        jax.block_until_ready(state)
        out["step"] = (cpu() - t) / n
        net = task.network(state)
        graphdef, rest = nnx.split(net)
        table = table_of(state["items"])
        key = jax.random.key(0)
        d_model = cfg.model.d_model

        @jax.jit
        def attn(x: jax.Array) -> jax.Array:
            def f(x: jax.Array) -> jax.Array:
                m = nnx.merge(graphdef, rest)
                t_ = x.shape[1]
                bias = jnp.where(jnp.tril(jnp.ones((t_, t_), bool)), 0.0, -1e9)[None, None]
                for blk in m.blocks:
                    b_, t2, dd = x.shape
                    h, dh = blk.n_heads, dd // blk.n_heads
                    qkv = blk.qkv(blk.ln1(x)).reshape(b_, t2, 3, h, dh)
                    a = jnp.einsum("bqhd,bkhd->bhqk", qkv[:, :, 0], qkv[:, :, 1]) * dh**-0.5 + bias
                    y = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(a, -1), qkv[:, :, 2]).reshape(b_, t2, dd)
                    x = x + blk.proj(y)
                return jnp.sum(x)

            return jax.grad(f)(x)

        @jax.jit
        def ffn(x: jax.Array) -> jax.Array:
            def f(x: jax.Array) -> jax.Array:
                m = nnx.merge(graphdef, rest)
                for blk in m.blocks:
                    x = x + blk.ff2(blk.act(blk.ff1(blk.ln2(x))))
                return jnp.sum(x)

            return jax.grad(f)(x)

        @jax.jit
        def head(h: jax.Array, tgt: jax.Array, msk: jax.Array, k: jax.Array, inp: jax.Array) -> tuple[jax.Array, jax.Array]:
            def f(h: jax.Array, rows: jax.Array) -> jax.Array:
                from segue.training import losses as L
                from segue.training.step import _candidates

                cands = None if spec.loss.kind == "full" else _candidates(spec, k, tgt, msk)
                # the batch's inputs: a full softmax with loss.mask_seen masks each prefix's items
                per = per_position_loss(spec, h, rows, tgt, tgt, msk, cands, cands, jnp.float32(0.0), inp)
                return L.masked_mean(per, msk)

            return jax.grad(f, argnums=(0, 1))(h, table)

        tx = O.dense_transform(spec.optim, state["rest"])

        @jax.jit
        def optimizer(st: dict[str, Any]) -> Any:
            g_rest = jax.tree_util.tree_map(jnp.ones_like, st["rest"])
            upd, opt = tx.update(g_rest, st["opt"], st["rest"])
            tab = table_of(st["items"])
            rows, mm, vv = O.row_adam_update(tab, jnp.ones_like(tab), st["item_m"], st["item_v"], st["applied"] + 1, 1e-3, spec.optim)
            return upd, opt, rows, mm, vv

        sums = {"attention": 0.0, "feed-forward": 0.0, "output/softmax": 0.0}
        positions = 0
        flops = 0.0
        n_cand = (spec.vocab_size if spec.loss.kind == "full" else spec.loss.n_negatives + 1)
        by_t: dict[int, list[dict[str, np.ndarray]]] = {}
        for b in batches:
            by_t.setdefault(b["inputs"].shape[1], []).append(b)
        for t_len, bs in by_t.items():
            b = bs[0]
            x = jax.random.normal(key, (b["inputs"].shape[0], t_len, d_model))
            h = jax.random.normal(key, (b["inputs"].size, d_model)) * 0.1
            tgt = jnp.asarray(b["targets"].reshape(-1))
            msk = jnp.asarray(b["mask"].reshape(-1))
            sums["attention"] += _timed(attn, x) * len(bs)
            sums["feed-forward"] += _timed(ffn, x) * len(bs)
            sums["output/softmax"] += _timed(head, h, tgt, msk, key, jnp.asarray(b["inputs"])) * len(bs)
            positions += b["inputs"].size * len(bs)
            flops += count_flops_per_token(cfg.model, n_cand, t_len) * b["inputs"].size * len(bs)
        for k_, v in sums.items():
            out[k_] = v / n
        out["optimizer"] = _timed(optimizer, state)
        out["real share"] = float(sum(int(b["mask"].sum()) for b in batches) / positions)
        out["positions per step"] = positions / n
        out["model GFLOP/s"] = flops / n / out["step"] / 1e9
        tc = task.trainer
        t = cpu()
        task.validate(state)  # compiles
        t1 = cpu()
        task.validate(state)
        out["evaluation pass"] = cpu() - t1
        out["evaluation compile"] = t1 - t - out["evaluation pass"]
        out["evaluation"] = out["evaluation pass"] / tc.eval_every
        trainer.state = state
        t = cpu()
        trainer.save_checkpoint()
        trainer.manager.wait_until_finished()
        out["checkpoint save"] = cpu() - t
        out["checkpointing"] = out["checkpoint save"] / tc.checkpoint_every
        out["batches"] = n
        out["buckets"] = shapes
    return out


def print_profile(config: Path, store: Path, split: str = "loo", overrides: dict | None = None, max_batches: int | None = None) -> dict[str, Any]:
    import os

    p = profile(config, store, split, overrides, max_batches)
    total = p["step"] + p["data loading"] + p["evaluation"] + p["checkpointing"]
    other = p["step"] - p["attention"] - p["feed-forward"] - p["output/softmax"] - p["optimizer"]
    print(f"step profile of {config} ({p['batches']} batches of one epoch, buckets {p['buckets']}; load average {os.getloadavg()[0]:.2f})")
    print(f"  {'part':16} {'ms/step':>9} {'share':>7}")
    for k in ("attention", "feed-forward", "output/softmax", "optimizer"):
        print(f"  {k:16} {1e3 * p[k]:9.1f} {p[k] / total:7.1%}")
    print(f"  {'other (fusion)':16} {1e3 * other:9.1f} {other / total:7.1%}")
    for k in ("data loading", "evaluation", "checkpointing"):
        print(f"  {k:16} {1e3 * p[k]:9.1f} {p[k] / total:7.1%}")
    print(f"  {'step (measured)':16} {1e3 * p['step']:9.1f} {p['step'] / total:7.1%}")
    print(
        f"  positions/step {p['positions per step']:.0f} (real {p['real share']:.0%}); evaluation pass {p['evaluation pass']:.1f} s "
        f"(+{p['evaluation compile']:.1f} s compile); checkpoint {p['checkpoint save']:.2f} s"
    )
    print(f"  model {p['model GFLOP/s']:.1f} GFLOP/s against a float32 matmul peak of {p['peak_gflops']:.1f} GFLOP/s ({p['model GFLOP/s'] / p['peak_gflops']:.0%})")
    return p


def main() -> None:
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--split", default="loo")
    ap.add_argument("--overrides", default="{}")
    ap.add_argument("--max-batches", type=int, default=None)
    a = ap.parse_args()
    print(machine_line(), flush=True)  # the reference the figures below are read against
    print_profile(a.config, a.store, a.split, json.loads(a.overrides), a.max_batches)


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
