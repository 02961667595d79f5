"""Multi-host training on localhost: two real processes joined by JAX's distributed runtime.

Each process is started with only the environment a launcher gives (SEGUE_COORDINATOR on
127.0.0.1, SEGUE_NUM_PROCESSES=2, SEGUE_PROCESS_ID) and goes through segue's own start
(segue.training.mesh.init_distributed); each has one CPU device, so the mesh is 2 devices over 2
processes, the gradient all-reduce crosses processes (JAX's CPU collectives, gloo), and each
process's loader reads only its half of every batch (Grain ShardByJaxProcess).

Launch 1 trains 2N steps uninterrupted ("full"), then trains the same config in another run
folder and dies (os._exit) one step after its checkpoint N is on disk ("killed"); both processes
write every checkpoint (Orbax). Launch 2 resumes "killed" in two fresh processes to 2N steps.
This pytest process trains the same config on one device ("one"). The tests compare the three.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from datahelp import make_store, tiny_train_config

N = 3  # steps between checkpoints; runs take 2N steps
# One device against two: float sums in another order (the cross-process all-reduce), as in
# test_sharding (1 vs 4 simulated devices).
PARAM_TOL = 1e-5
LOSS_TOL = 1e-5

CHILD = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from segue.training import mesh as M

    started = M.init_distributed()  # from SEGUE_COORDINATOR / SEGUE_NUM_PROCESSES / SEGUE_PROCESS_ID
    import jax
    from segue.data.store import Store
    from segue.training.trainer import TrainConfig, Trainer, open_split
    from segue.training.transformer_task import TransformerTask

    tmp, store_path, n, mode = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[5]
    cfg = TrainConfig.from_dict(json.loads(sys.argv[4]))

    live = {}

    def fit(name, on_step=None):
        with Store.open(store_path) as store:
            task = TransformerTask(cfg.transformer_config(), open_split(store, "loo"))
            trainer = live["trainer"] = Trainer(task, tmp / name, on_step=on_step)
            trainer.fit()
            rows = int(next(task.loader)["inputs"].shape[0])  # this process's rows of a batch (after the run)
        return {"steps": int(trainer.state["step"]), "resumed_from": trainer.resumed_from,
                "losses": [r["loss"] for r in trainer.train_log], "rows": rows,
                "mesh": dict(task.mesh.shape)}

    out = {"started": started, "process": jax.process_index(), "processes": jax.process_count(),
           "devices": jax.device_count(), "local_devices": jax.local_device_count()}
    if mode == "first":
        out["full"] = fit("full")

        def die(step):  # a crash one step after checkpoint n, once that (asynchronous) save is complete
            if step == n + 1:
                live["trainer"].manager.wait_until_finished()
                print("RESULT " + json.dumps(out), flush=True)
                os._exit(17)

        fit("killed", on_step=die)
    else:
        out["resumed"] = fit("killed")
        print("RESULT " + json.dumps(out), flush=True)
    """
)


def _config(store: Path) -> dict:
    return tiny_train_config(store, N, prefetch_threads=0)


def _free_port() -> int:
    """A free port of this project's range for multi-host tests (18200-18299), else any."""
    for port in range(18200, 18300):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp: Path, script: Path, store: Path, cfg: dict, mode: str) -> list[tuple[int, str, str]]:
    """Start the two processes as a launcher would (same command, own env) and wait for both."""
    port = _free_port()
    procs = []
    for i in range(2):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {
            "SEGUE_COORDINATOR": f"127.0.0.1:{port}",
            "SEGUE_NUM_PROCESSES": "2",
            "SEGUE_PROCESS_ID": str(i),
            "JAX_PLATFORMS": "cpu",
            "JAX_COMPILATION_CACHE_DIR": str(tmp / "jax-cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        }
        cmd = [sys.executable, str(script), str(tmp), str(store), str(N), json.dumps(cfg), mode]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    try:
        for p in procs:
            so, se = p.communicate(timeout=300)
            out.append((p.returncode, so, se))
    finally:
        for p in procs:  # never leave a half of the job waiting for the other
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def _result(rc_out: tuple[int, str, str]) -> dict:
    rc, so, se = rc_out
    lines = [ln for ln in so.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"exit {rc}\n{so[-3000:]}\n{se[-5000:]}"
    return json.loads(lines[-1][len("RESULT ") :]) | {"rc": rc}


def _leaves(run: Path, step: int, like: dict) -> list[np.ndarray]:
    """The train state of checkpoint `step` of `run`, restored onto this process's one device
    (`like`: a state of the same structure; a 2-process checkpoint names devices this process lacks)."""
    import jax
    import orbax.checkpoint as ocp

    target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    mgr = ocp.CheckpointManager((run / "checkpoints").absolute(), options=ocp.CheckpointManagerOptions(read_only=True))
    got = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(got)]


def _maxdiff(a: Path, b: Path, step: int, like: dict) -> float:
    x, y = _leaves(a, step, like), _leaves(b, step, like)
    assert len(x) == len(y) > 10
    return max(float(np.max(np.abs(p - q))) for p, q in zip(x, y, strict=True))


@pytest.fixture(scope="module")
def multihost(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from segue.data.store import Store
    from segue.training.trainer import TrainConfig, Trainer, open_split
    from segue.training.transformer_task import TransformerTask

    tmp = tmp_path_factory.mktemp("multihost")
    rng = np.random.default_rng(0)
    seqs = [[int(x) for x in (rng.integers(0, 21) + np.arange(rng.integers(4, 10))) % 40] for _ in range(60)]
    store = make_store(tmp / "s.duckdb", seqs, [{"kind": "leave_last_out", "name": "loo"}])
    cfg = _config(store)
    # One device, in this process (it also compiles the split's arrays once, before the children read them).
    with Store.open(store) as s:
        task = TransformerTask(TrainConfig.from_dict(cfg).transformer_config(), open_split(s, "loo"))
        one = Trainer(task, tmp / "one")
        one.fit()
    script = tmp / "child.py"
    script.write_text(CHILD)
    first = [_result(r) for r in _launch(tmp, script, store, cfg, "first")]
    left = sorted(p.name for p in (tmp / "killed" / "checkpoints").iterdir())  # what the crash left
    second = [_result(r) for r in _launch(tmp, script, store, cfg, "second")]
    got = {
        "first": first,
        "second": second,
        "one_losses": [r["loss"] for r in one.train_log],
        "diff": {
            "full-resumed": _maxdiff(tmp / "full", tmp / "killed", 2 * N, one.state),
            "one-full": _maxdiff(tmp / "one", tmp / "full", 2 * N, one.state),
        },
        "left_by_kill": left,
        "weights": (tmp / "full" / "weights.npz").exists(),
        "checkpoints": {run: sorted(p.name for p in (tmp / run / "checkpoints").iterdir() if p.name.isdigit()) for run in ("full", "killed")},
    }
    print("max parameter differences after", 2 * N, "steps:", got["diff"])
    return got


@pytest.mark.slow
def test_two_processes_join_through_segues_start_and_share_each_batch(multihost: dict) -> None:
    for launch in ("first", "second"):
        procs = multihost[launch]
        assert [p["process"] for p in procs] == [0, 1]
        for p in procs:
            assert p["started"] is True and p["processes"] == 2 and p["devices"] == 2 and p["local_devices"] == 1
    full = [p["full"] for p in multihost["first"]]
    for f in full:
        assert f["mesh"] == {"data": 2, "model": 1}
        assert f["rows"] == 4  # each process reads half of the batch of 8
        assert f["steps"] == 2 * N and f["resumed_from"] == 0
    # the loss is computed over the global batch: both processes see the same value
    assert full[0]["losses"] == full[1]["losses"]
    assert multihost["weights"]  # written by process 0


@pytest.mark.slow
def test_killed_two_process_run_resumes_to_the_uninterrupted_parameters(multihost: dict) -> None:
    assert [p["rc"] for p in multihost["first"]] == [17, 17]  # both died after checkpoint N
    assert multihost["checkpoints"]["full"] == [str(N), str(2 * N)]
    assert multihost["left_by_kill"] == [str(N)]  # the crash left checkpoint N only
    for p in multihost["second"]:
        assert p["rc"] == 0
        assert p["resumed"]["resumed_from"] == N and p["resumed"]["steps"] == 2 * N
    assert multihost["diff"]["full-resumed"] == 0.0
    full = multihost["first"][0]["full"]["losses"]
    assert multihost["second"][0]["resumed"]["losses"][-N:] == full[-N:]


@pytest.mark.slow
def test_two_processes_match_one_device(multihost: dict) -> None:
    d = multihost["diff"]["one-full"]
    assert d <= PARAM_TOL, f"max |param(1 process) - param(2 processes)| = {d}"
    np.testing.assert_allclose(multihost["first"][0]["full"]["losses"], multihost["one_losses"], rtol=0, atol=LOSS_TOL)
    assert multihost["one_losses"][0] != multihost["one_losses"][-1]
