"""Which collectives XLA's SPMD partitioner puts in the row-sparse train step when the item table is
split by rows (segue.training.mesh): compiles the step on a 2 x 2 mesh of simulated CPU devices
over a 4096-row table and lists every collective with its shape, then the table-sized ones (none
expected: only the |U| gathered rows and their ids travel).

    XLA_FLAGS=--xla_force_host_platform_device_count=4 .venv/bin/python bench/sharding_collectives.py
"""

from __future__ import annotations

import argparse
import collections
import sys

import jax
import jax.numpy as jnp
import numpy as np

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from segue.data.vocab import N_SPECIAL
from segue.models.train_config import MeshConfig
from segue.models.transformer import ModelConfig
from segue.training import mesh as M
from segue.training.losses import LossConfig
from segue.training.optim import OptimConfig
from segue.training.step import StepSpec, init_state, make_train_step, table_of

OPS = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")


DEVICES = 4  # the 2 x 2 mesh


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.parse_args()
    # Before any config: make_mesh raises ConfigError (a traceback) on too few devices, never None.
    if jax.device_count() < DEVICES:
        print(
            f"needs {DEVICES} devices, found {jax.device_count()}: set XLA_FLAGS=--xla_force_host_platform_device_count={DEVICES}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    print(machine_line(), flush=True)  # the reference the figures below are read against
    V, D = 4096, 32
    spec = StepSpec(
        ModelConfig(n_layers=1, d_model=D, d_ff=2 * D, context_length=8),
        LossConfig(kind="sampled", n_negatives=16),
        OptimConfig(),
        vocab_size=V,
        total_steps=100,
    )
    graphdef, state = init_state(spec, 0)
    mesh = M.make_mesh(MeshConfig(data=2, model=2))
    assert mesh is not None  # 4 devices, checked above
    state = M.place_state(mesh, state)
    step = make_train_step(spec, graphdef, M.state_shardings(mesh, state), M.replicated(mesh))
    seq = np.random.default_rng(0).integers(N_SPECIAL, V, (8, 9)).astype(np.int32)
    b = M.global_batch(mesh, {"i": seq[:, :-1], "t": seq[:, 1:], "m": np.ones((8, 8), bool)})
    hlo = step.lower(state, b["i"], b["t"], b["m"], jnp.float32(1)).compile().as_text()
    found: collections.Counter = collections.Counter()
    for line in hlo.splitlines():
        for op in OPS:
            if f" {op}(" in line or f" {op}-start(" in line:
                found[(op, line.split("=", 1)[1].split(op)[0].strip()[:90])] += 1
    t = table_of(state["items"])
    print(f"table {t.shape}, each device holds {t.addressable_shards[0].data.shape}; |U| = {8 * 8 * 2 + 16} gathered ids")
    for (op, shape), n in sorted(found.items()):
        print(f"{n} x {op:<19} {shape}")
    big = [k for k in found if f"{V},{D}" in k[1] or f"{V // 2},{D}" in k[1]]
    print("table-sized collectives:", big or "none")


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
