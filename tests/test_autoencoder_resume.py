"""The autoencoder through the shared Trainer with a run folder: kill -9 and resume is bit-identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from datahelp import kill_after_checkpoint, make_store
from segue.data.arrays import SequenceArrays
from segue.models.base import load_model

N = 6  # steps between checkpoints; the runs take 2N steps

CHILD = textwrap.dedent(
    """
    import sys, time
    from segue.training.trainer import train
    n, mode, run = int(sys.argv[2]), sys.argv[3], sys.argv[4]

    def on_step(step):
        if mode == "stall" and step > n:  # checkpoint n is being written; wait here to be killed
            time.sleep(3600)

    train(sys.argv[1], run_dir=run, on_step=on_step)
    """
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    seqs = [[int(x) for x in rng.choice(30, int(rng.integers(5, 10)), replace=False)] for _ in range(50)]
    ratings = [[float(rng.integers(1, 11)) for _ in s] for s in seqs]
    path = tmp_path_factory.mktemp("store") / "s.duckdb"
    return make_store(path, seqs, [{"kind": "strong", "name": "strong", "valid_users": 6, "test_users": 6}], rating=ratings)


def _config(store: Path) -> dict:
    return {
        "family": "autoencoder",
        "name": "ae",
        "data": {"store": str(store), "split": "strong"},
        "model": {"hidden": [16], "bottleneck": 8, "input_dropout": 0.3, "bottleneck_noise": 0.2},
        "loss": {"weighting": "uncertainty"},  # the learnable log-variances resume too
        # patience 1: the plateau scale changes the learning rate, so loop state must resume too
        "optim": {"lr": 1e-2, "warmup_steps": 0, "schedule": "constant", "plateau_patience": 1, "plateau_factor": 0.5},
        "trainer": {
            "max_steps": 2 * N,
            "eval_every": N,
            "checkpoint_every": N,
            "log_every": 3,
            "metric": "ndcg@100",
            "progress": False,
            "loader": {"batch_size": 16},
        },
    }


def _child(tmp: Path, cfg_path: Path, mode: str, run: Path) -> subprocess.Popen:
    script = tmp / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp / "jax-cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return subprocess.Popen(
        [sys.executable, str(script), str(cfg_path), str(N), mode, str(run)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _state(run: Path, step: int) -> dict:
    import orbax.checkpoint as ocp

    mgr = ocp.CheckpointManager((run / "checkpoints").absolute(), options=ocp.CheckpointManagerOptions(read_only=True))
    return mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


@pytest.mark.slow
def test_kill_and_resume_is_bit_identical(store: Path, tmp_path: Path) -> None:
    cfg_path = tmp_path / "ae.toml"
    cfg_path.write_text(tomli_w.dumps(_config(store)))
    run_a, run_b = tmp_path / "a", tmp_path / "b"

    a = _child(tmp_path, cfg_path, "run", run_a)  # 2N uninterrupted steps
    out, _ = a.communicate(timeout=600)
    assert a.returncode == 0, out

    b = _child(tmp_path, cfg_path, "stall", run_b)
    kill_after_checkpoint(b, run_b, N)

    c = _child(tmp_path, cfg_path, "run", run_b)  # resume from checkpoint N, N more steps
    out, _ = c.communicate(timeout=600)
    assert c.returncode == 0, out
    metrics = json.loads((run_b / "metrics.json").read_text())
    assert metrics["resumed_from"] == N and metrics["steps"] == 2 * N

    import jax

    leaves_a, tree_a = jax.tree_util.tree_flatten(_state(run_a, 2 * N))
    leaves_b, tree_b = jax.tree_util.tree_flatten(_state(run_b, 2 * N))
    assert tree_a == tree_b and len(leaves_a) > 8
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bit-identical
    sn = jax.tree_util.tree_leaves(_state(run_b, N))
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(sn, leaves_b, strict=True))
    ma = json.loads((run_a / "metrics.json").read_text())
    assert ma["history"] == metrics["history"] and "ndcg@100" in ma["history"][0]

    # the run folder loads as a model that folds in new profiles
    assert (run_a / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = load_model(run_a)
    assert model.family == "autoencoder"
    hist = SequenceArrays.from_lists([[5, 6, 7]])
    hist.rating = np.array([9, 3, 7], np.float32)
    scores = model.score(hist)
    assert scores.shape == (1, len(model.vocab)) and np.isfinite(scores[0, 4:]).all()
    np.testing.assert_array_equal(load_model(run_b).score(hist), scores)
