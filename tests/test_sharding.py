"""Sharded training on 4 simulated CPU devices (segue.training.mesh).

XLA's device count is fixed when jax is imported, and this pytest process has already imported
it, so the runs happen in one child process started with
XLA_FLAGS=--xla_force_host_platform_device_count=4. It trains the same config 2N steps on 1 device,
on 4 (data axis) and on 2 x 2 (item table rows split over the model axis), then resumes from
checkpoint N across device counts (4 -> 1, 1 -> 4) and on the same 4, and prints what it found as
JSON; the tests below judge it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from datahelp import make_store, tiny_train_config
from segue.errors import ConfigError
from segue.models.train_config import MeshConfig
from segue.training import mesh as M

N = 4  # steps between checkpoints; runs take 2N steps
# float32 sums in another order (the gradient all-reduce): differences stay ~1e-7 relative per step,
# Adam's normalisation can lift them to ~lr * a few ulps after 2N steps.
PARAM_TOL = 1e-5
LOSS_TOL = 1e-5

CHILD = textwrap.dedent(
    """
    import json, shutil, sys
    from pathlib import Path
    import jax, numpy as np
    import orbax.checkpoint as ocp
    from segue.data.store import Store
    from segue.training.trainer import TrainConfig, Trainer, open_split
    from segue.training.transformer_task import TransformerTask

    tmp, store_path, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    base = json.loads(sys.argv[4])

    def fit(name, mesh, start_from=None):
        cfg = TrainConfig.from_dict(base | {"trainer": base["trainer"] | {"mesh": mesh}})
        run = tmp / name
        if start_from is not None:  # a run killed after checkpoint n: only that checkpoint is left
            shutil.copytree(tmp / start_from / "checkpoints" / str(n), run / "checkpoints" / str(n))
        store = Store.open(store_path)
        task = TransformerTask(cfg.transformer_config(), open_split(store, "loo"))
        trainer = Trainer(task, run)
        trainer.fit()
        trainer.manager.wait_until_finished()
        store.close()
        shards = {k: str(getattr(v.sharding, "spec", None)) for k, v in trainer.state.items() if k in ("items", "item_m", "rest") for v in jax.tree_util.tree_leaves(v)[:1]}
        return trainer, shards

    def leaves(run, step):
        mgr = ocp.CheckpointManager((tmp / run / "checkpoints").absolute(), options=ocp.CheckpointManagerOptions(read_only=True))
        return jax.tree_util.tree_leaves(mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"])

    def maxdiff(a, b):
        a, b = leaves(a, 2 * n), leaves(b, 2 * n)
        assert len(a) == len(b) > 10
        return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in zip(a, b))

    out = {"devices": jax.device_count()}
    runs = {"one": ({"data": 1}, None), "four": ({}, None), "rows": ({"data": 2, "model": 2}, None),
            "one_from_four": ({"data": 1}, "four"), "four_from_one": ({}, "one"), "four_resumed": ({}, "four")}
    for name, (mesh, start) in runs.items():
        trainer, shards = fit(name, mesh, start)
        out[name] = {"steps": int(trainer.state["step"]), "resumed_from": trainer.resumed_from,
                     "losses": [r["loss"] for r in trainer.train_log], "shardings": shards,
                     "mesh": None if trainer.task.mesh is None else dict(trainer.task.mesh.shape)}
    out["diff"] = {f"{a}-{b}": maxdiff(a, b) for a, b in [("one", "four"), ("four", "rows"), ("one", "one_from_four"),
                   ("four", "four_from_one"), ("four", "four_resumed")]}
    print("RESULT " + json.dumps(out))
    """
)


def _config(store: Path) -> dict:
    return tiny_train_config(store, N, prefetch_threads=1)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("sharding")
    rng = np.random.default_rng(0)
    seqs = [[int(x) for x in (rng.integers(0, 21) + np.arange(rng.integers(4, 10))) % 40] for _ in range(60)]  # vocabulary of 30: even
    store = make_store(tmp / "s.duckdb", seqs, [{"kind": "leave_last_out", "name": "loo"}])
    script = tmp / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    # Runs of the same program on the same devices reuse its compiled executable.
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp / "jax-cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp), str(store), str(N), json.dumps(_config(store))],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    got = json.loads(lines[-1][len("RESULT ") :])
    print("max parameter differences after", 2 * N, "steps:", got["diff"])
    return got


@pytest.mark.slow
def test_the_child_ran_on_four_devices_with_the_asked_meshes(sharded: dict) -> None:
    assert sharded["devices"] == 4
    assert sharded["one"]["mesh"] is None  # one device: no mesh, today's path
    assert sharded["four"]["mesh"] == {"data": 4, "model": 1}
    assert sharded["rows"]["mesh"] == {"data": 2, "model": 2}
    assert sharded["rows"]["shardings"]["items"] == str(M.P("model", None))
    assert sharded["rows"]["shardings"]["item_m"] == str(M.P("model", None))
    assert sharded["four"]["shardings"]["rest"] == str(M.P())
    for run in ("one", "four", "rows"):
        assert sharded[run]["steps"] == 2 * N and sharded[run]["resumed_from"] == 0


@pytest.mark.slow
def test_four_devices_match_one_device(sharded: dict) -> None:
    d = sharded["diff"]["one-four"]
    assert d <= PARAM_TOL, f"max |param(1 device) - param(4 devices)| = {d}"
    np.testing.assert_allclose(sharded["four"]["losses"], sharded["one"]["losses"], rtol=0, atol=LOSS_TOL)
    # the runs learned: the loss moved
    assert sharded["one"]["losses"][0] != sharded["one"]["losses"][-1]


@pytest.mark.slow
def test_row_sharded_table_gives_the_replicated_losses(sharded: dict) -> None:
    np.testing.assert_allclose(sharded["rows"]["losses"], sharded["four"]["losses"], rtol=0, atol=LOSS_TOL)
    assert sharded["diff"]["four-rows"] <= PARAM_TOL


@pytest.mark.slow
def test_checkpoints_restore_across_device_counts(sharded: dict) -> None:
    for run, ref in (("one_from_four", "one"), ("four_from_one", "four")):
        assert sharded[run]["resumed_from"] == N and sharded[run]["steps"] == 2 * N
        assert sharded["diff"][f"{ref}-{run}"] <= PARAM_TOL


@pytest.mark.slow
def test_resume_on_four_devices_is_bit_identical(sharded: dict) -> None:
    assert sharded["four_resumed"]["resumed_from"] == N
    assert sharded["diff"]["four-four_resumed"] == 0.0


# --- pure parts, in this process ------------------------------------------------------------


def test_mesh_shape_defaults_to_all_devices_and_names_the_field_when_too_many() -> None:
    assert M.mesh_shape(MeshConfig(), 8) == (8, 1)
    assert M.mesh_shape(MeshConfig(model=2), 8) == (4, 2)
    assert M.mesh_shape(MeshConfig(data=2), 8) == (2, 1)
    with pytest.raises(ConfigError, match="trainer.mesh: data 4 x model 2"):
        M.mesh_shape(MeshConfig(data=4, model=2), 4)
    with pytest.raises(ConfigError, match="trainer.mesh.model"):
        M.mesh_shape(MeshConfig(model=3), 2)
    assert M.make_mesh(MeshConfig(), devices=[object()]) is None  # one device: no mesh


def test_distributed_args_from_explicit_kubernetes_and_slurm_variables() -> None:
    assert M.distributed_args({}) is None
    explicit = {"SEGUE_COORDINATOR": "10.0.0.1:1234", "SEGUE_NUM_PROCESSES": "4", "SEGUE_PROCESS_ID": "2"}
    assert M.distributed_args(explicit) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2}
    k8s = {"SEGUE_COORDINATOR": "job-0.svc:1234", "SEGUE_NUM_PROCESSES": "2", "JOB_COMPLETION_INDEX": "1"}
    assert M.distributed_args(k8s) == {"coordinator_address": "job-0.svc:1234", "num_processes": 2, "process_id": 1}
    assert M.distributed_args({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}) == {}  # JAX's own SLURM detection
    assert M.distributed_args({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    with pytest.raises(ConfigError, match="SEGUE_PROCESS_ID"):
        M.distributed_args({"SEGUE_COORDINATOR": "h:1", "SEGUE_NUM_PROCESSES": "2"})
    with pytest.raises(ConfigError, match="outside 0..1"):
        M.distributed_args(explicit | {"SEGUE_NUM_PROCESSES": "2", "SEGUE_PROCESS_ID": "5"})


def test_process_shards_of_a_batch_join_to_the_whole_batch(tmp_path: Path) -> None:
    import grain

    from segue.data.arrays import SequenceArrays
    from segue.data.loader import LoaderConfig, make_train_loader

    rng = np.random.default_rng(1)
    arrays = SequenceArrays.from_lists([list(rng.integers(5, 40, rng.integers(1, 9))) for _ in range(30)])
    cfg = LoaderConfig(batch_size=8, context_length=6, unk_rate=0.3, crop="random", bucketing=False, prefetch_threads=0)
    whole = make_train_loader(arrays, cfg, seed=3)
    parts = [make_train_loader(arrays, cfg, seed=3, shard=grain.sharding.ShardOptions(i, 2)) for i in range(2)]
    for _ in range(5):  # across an epoch boundary (4 batches an epoch)
        b = next(whole)
        p0, p1 = next(parts[0]), next(parts[1])
        for k in ("inputs", "targets", "mask", "rows"):
            np.testing.assert_array_equal(np.concatenate([p0[k], p1[k]]), b[k])
        assert p0["inputs"].shape[0] == 4
    with pytest.raises(ConfigError, match="batch_size: 8 does not split over 3 processes"):
        make_train_loader(arrays, cfg, seed=3, shard=grain.sharding.ShardOptions(0, 3))
