"""The training loop: kill -9 and resume gives bit-identical state; the run folder is complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from datahelp import kill_after_checkpoint, make_store
from segue.errors import ConfigError
from segue.models.base import load_model
from segue.training.trainer import TrainConfig, train

N = 6  # steps between checkpoints; the runs take 2N steps

CHILD = textwrap.dedent(
    """
    import sys, time
    from segue.training.trainer import TrainConfig, train
    cfg = TrainConfig.load(sys.argv[1])
    n, mode, run = int(sys.argv[2]), sys.argv[3], sys.argv[4]

    def on_step(step):
        if mode == "stall" and step > n:  # checkpoint n is being written; wait here to be killed
            print("stalled", flush=True)
            time.sleep(3600)

    train(cfg, run_dir=run, on_step=on_step)
    """
)


def _config(store: Path) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "name": "t",
            "data": {"store": str(store), "split": "loo"},
            "model": {"n_layers": 1, "n_heads": 2, "d_model": 8, "d_ff": 16, "dropout": 0.1, "context_length": 6},
            "loss": {"kind": "logq", "n_negatives": 6, "n_inbatch": 4},
            # patience 1: the plateau scale changes the learning rate, so loop state must resume too
            "optim": {"warmup_steps": 2, "plateau_patience": 1, "plateau_factor": 0.5},
            "trainer": {
                "max_steps": 2 * N,
                "eval_every": N,
                "checkpoint_every": N,
                "log_every": 3,
                "progress": False,
                "patience": None,
                "loader": {"batch_size": 8, "unk_rate": 0.1, "bucketing": False, "prefetch_threads": 1},
            },
        }
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    seqs = [[int(x) for x in (rng.integers(0, 10) + np.arange(rng.integers(4, 10))) % 24] for _ in range(60)]
    path = tmp_path_factory.mktemp("store") / "s.duckdb"
    return make_store(path, seqs, [{"kind": "leave_last_out", "name": "loo"}])


def _child(tmp: Path, cfg_path: Path, mode: str, run: Path) -> subprocess.Popen:
    script = tmp / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ)
    # Children share compiled executables (same programs, so the same results; only faster).
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp / "jax-cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return subprocess.Popen(
        [sys.executable, str(script), str(cfg_path), str(N), mode, str(run)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _final_state(run: Path, step: int) -> dict:
    import orbax.checkpoint as ocp

    mgr = ocp.CheckpointManager((run / "checkpoints").absolute(), options=ocp.CheckpointManagerOptions(read_only=True))
    got = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return got["state"]


@pytest.mark.slow
def test_kill_and_resume_is_bit_identical(store: Path, tmp_path: Path) -> None:
    cfg = _config(store)
    cfg_path = tmp_path / "train.toml"
    cfg.save(cfg_path)
    run_a, run_b = tmp_path / "a", tmp_path / "b"

    a = _child(tmp_path, cfg_path, "run", run_a)  # 2N uninterrupted steps
    out, _ = a.communicate(timeout=600)
    assert a.returncode == 0, out

    b = _child(tmp_path, cfg_path, "stall", run_b)
    kill_after_checkpoint(b, run_b, N)
    assert not (run_b / "checkpoints" / str(2 * N)).exists()

    c = _child(tmp_path, cfg_path, "run", run_b)  # resume from checkpoint N, N more steps
    out, _ = c.communicate(timeout=600)
    assert c.returncode == 0, out
    metrics = json.loads((run_b / "metrics.json").read_text())
    assert metrics["resumed_from"] == N and metrics["steps"] == 2 * N

    sa, sb = _final_state(run_a, 2 * N), _final_state(run_b, 2 * N)
    import jax

    leaves_a, tree_a = jax.tree_util.tree_flatten(sa)
    leaves_b, tree_b = jax.tree_util.tree_flatten(sb)
    assert tree_a == tree_b and len(leaves_a) > 10
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bit-identical
    # and the interrupted run did learn something: its state differs from the one at step N
    sn = jax.tree_util.tree_leaves(_final_state(run_b, N))
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(sn, leaves_b, strict=True))
    # validation history (and so the plateau scale) resumed as well
    ma = json.loads((run_a / "metrics.json").read_text())
    assert ma["history"] == metrics["history"]

    # the run folder is complete and loads as a model
    for name in ("config.toml", "model.toml", "vocab.json", "weights.npz", "store_checksum.txt", "metrics.json", "item_names.json"):
        assert (run_a / name).is_file(), name
    assert (run_a / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((run_a / "tensorboard").iterdir())
    model = load_model(run_a)
    from segue.data.arrays import SequenceArrays

    scores = model.score(SequenceArrays.from_lists([[5, 6]]))
    assert scores.shape == (1, len(model.vocab)) and np.isfinite(scores[0, 4:]).all()


def test_resume_with_another_config_is_refused(store: Path, tmp_path: Path) -> None:
    cfg = _config(store)
    run = tmp_path / "r"
    run.mkdir()
    cfg.save(run / "config.toml")
    other = cfg.model_copy(update={"model": cfg.model.model_copy(update={"d_model": 16})})
    with pytest.raises(ConfigError, match="another config"):
        train(other, run_dir=run)


def test_fit_through_the_recommender_protocol(store: Path) -> None:
    """fit() trains in memory (no run folder), keeps the best validated weights, then scores."""
    from segue.data.arrays import SequenceArrays, SplitData
    from segue.data.store import Store
    from segue.models.transformer import TransformerRecommender

    cfg = _config(store)
    tcfg = cfg.transformer_config()
    tcfg = tcfg.model_copy(update={"trainer": tcfg.trainer.model_copy(update={"max_steps": 4, "eval_every": 2})})
    calls: list[tuple[str, int, int]] = []
    with Store.open(store) as s:
        data = SplitData.load(s, "loo")
        rec = TransformerRecommender(tcfg).fit(data, progress=lambda *a: calls.append(a))
    summary = rec.meta["train"]
    assert summary["steps"] == 4 and len(summary["history"]) == 2
    assert summary["best_step"] in (2, 4)
    assert calls and calls[-1][1:] == (4, 4)
    scores = rec.score(SequenceArrays.from_lists([[5, 6, 7]]))
    assert scores.shape == (1, len(data.vocab)) and np.isfinite(scores[0, 4:]).all()


def test_missing_store_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    from segue.errors import StoreError

    cfg = _config(tmp_path / "nope.duckdb")
    with pytest.raises(StoreError, match="no store here"):
        train(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_refit_on_train_and_valid_trains_on_the_validation_items(store: Path) -> None:
    """fit_on train+valid: each training sequence gains its validation item at the end (leave-last-
    out), and nothing is validated (no history, no early stopping); the last step is kept."""
    from segue.data.arrays import SplitData
    from segue.data.splits import Part
    from segue.data.store import Store
    from segue.training.trainer import Trainer
    from segue.training.transformer_task import TransformerTask, training_arrays

    d = _config(store).model_dump(mode="json")
    d["trainer"].update(fit_on="train+valid", max_steps=4, eval_every=2)
    cfg = TrainConfig.from_dict(d)
    st = Store.open(store)
    try:
        data = SplitData.load(st, "loo")
        both, valid = training_arrays(data, "train+valid"), data.targets(Part.VALID)
        rows = valid.nonempty()
        assert len(rows) > 10
        for r in rows:
            assert list(both.row(r)) == list(data.train.row(r)) + list(valid.row(r))
        assert training_arrays(data, "train") is data.train
        task = TransformerTask(cfg.transformer_config(), data)
        assert task.vset is None
        trainer = Trainer(task, run_dir=None)
        summary = trainer.fit()
    finally:
        st.close()
    assert summary["steps"] == 4 and summary["history"] == [] and summary["best_step"] == -1


# --- which validation's parameters are kept ------------------------------------------------------


def test_select_without_a_tiebreak_keeps_each_new_best() -> None:
    from segue.training.trainer import select

    assert select(0.5, None, -np.inf, -np.inf, -np.inf, 0.0) == (True, True)
    assert select(0.49, None, 0.5, 0.5, -np.inf, 0.0) == (False, False)
    assert select(0.5, None, 0.5, 0.5, -np.inf, 0.0) == (False, False)  # a tie is no improvement


def test_select_with_a_tiebreak_prefers_the_better_tie_within_the_tolerance() -> None:
    """A ranking plateau (metric within 0.001 of its best) with ratings still improving (tie =
    -rmse): the later, better-rated validation is kept; one below the plateau is not, however
    good its tie; a new best metric that pushes the kept one off the plateau replaces it."""
    from segue.training.trainer import select

    tol = 0.001
    assert select(0.5205, -1.13, 0.5212, 0.5212, -1.15, tol) == (True, True)  # on the plateau, better rmse
    assert select(0.5205, -1.16, 0.5212, 0.5212, -1.15, tol) == (False, False)  # on it, worse rmse
    assert select(0.5190, -1.00, 0.5212, 0.5212, -1.15, tol) == (False, False)  # off it
    assert select(0.5230, -1.20, 0.5212, 0.5212, -1.15, tol) == (True, True)  # the kept one falls off
    assert select(0.5215, -1.20, 0.5212, 0.5210, -1.15, tol) == (False, True)  # a new best, the kept one stays


def test_a_tiebreak_of_the_same_metric_or_a_tolerance_without_one_is_refused() -> None:
    from segue.models.train_config import TrainerConfig

    with pytest.raises(ValueError, match="tiebreak 'ndcg@10' is the metric itself"):
        TrainerConfig(metric="ndcg@10", tiebreak="ndcg@10")
    with pytest.raises(ValueError, match="tolerance needs a tiebreak"):
        TrainerConfig(tolerance=0.01)


def test_paths_relative_to_the_config_file_are_normalised(tmp_path: Path) -> None:
    from segue.training.trainer import load_train_config

    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "t.toml"
    path.write_text(textwrap.dedent("""
        family = "transformer"
        name = "t"
        runs_dir = "../runs"
        [data]
        store = "../stores/s.duckdb"
        split = "loo"
    """))
    cfg = load_train_config(path)
    assert cfg.run_dir == tmp_path.resolve() / "runs" / "t"
    assert cfg.resolve(cfg.data.store) == tmp_path.resolve() / "stores" / "s.duckdb"


def test_the_metrics_checked_before_training_are_those_validation_reports(store: Path, tmp_path: Path) -> None:
    """A task's validation_metrics lists what trainer.metric may name before the run folder is
    written; it must match what the transformer's validation really reports, or a valid metric
    would be refused."""
    from segue.data.arrays import SplitData
    from segue.data.store import Store
    from segue.training.trainer import task_factory

    cfg = _config(store).with_trainer(max_steps=2, eval_every=2)
    run = train(cfg, run_dir=tmp_path / "run")
    reported = set(json.loads((run / "metrics.json").read_text())["best_valid"]) - {"step", "epoch", "seconds", "lr"}
    with Store.open(store) as s:
        task = task_factory("transformer")(cfg.family_config(), SplitData.load(s, "loo"))
    assert "ndcg@10" in reported and set(task.validation_metrics or []) == reported


def test_resume_after_a_newer_best_than_the_checkpoint_is_exact(store: Path, tmp_path: Path) -> None:
    # Killed between a new best validation (weights.npz written) and the next checkpoint: resuming
    # loaded weights.npz into the training state itself, so the run went on from the later best
    # parameters with the checkpoint's step, moments and loader position.
    import shutil

    import jax

    cfg = _config(store)
    cfg.trainer = cfg.trainer.model_copy(update={"max_steps": 12, "eval_every": 2, "checkpoint_every": 4, "keep_checkpoints": 10})
    cfg.optim = cfg.optim.model_copy(update={"plateau_patience": 100})
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    train(cfg, run_dir=run_a)
    ma = json.loads((run_a / "metrics.json").read_text())
    assert ma["best_step"] > 4, ma["best_step"]  # weights.npz holds a best newer than checkpoint 4
    shutil.copytree(run_a, run_b)
    for step in (8, 12):  # as if killed after step 4's checkpoint, weights.npz already later
        shutil.rmtree(run_b / "checkpoints" / str(step))
    train(cfg, run_dir=run_b)
    mb = json.loads((run_b / "metrics.json").read_text())
    assert mb["resumed_from"] == 4 and mb["history"] == ma["history"] and mb["best_step"] == ma["best_step"]
    for x, y in zip(jax.tree_util.tree_leaves(_final_state(run_a, 12)), jax.tree_util.tree_leaves(_final_state(run_b, 12)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    wa, wb = np.load(run_a / "weights.npz"), np.load(run_b / "weights.npz")
    assert sorted(wa.files) == sorted(wb.files)
    for k in wa.files:
        np.testing.assert_array_equal(wa[k], wb[k])


def test_a_resume_that_moves_the_cosine_horizon_says_so(store: Path, tmp_path: Path) -> None:
    # --max-steps on a resumed run re-stretched the cosine schedule without a word: the learning
    # rate jumped back up and the run no longer matched an uninterrupted one.
    import io

    from rich.console import Console

    cfg = _config(store)
    cfg.trainer = cfg.trainer.model_copy(update={"max_steps": 4, "eval_every": 4, "checkpoint_every": 4})
    train(cfg, run_dir=tmp_path / "r", console=Console(file=io.StringIO()))
    out = io.StringIO()
    longer = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"max_steps": 8})})
    train(longer, run_dir=tmp_path / "r", console=Console(file=out, width=400))
    text = out.getvalue()
    assert "horizon moves from 4 to 8 steps on resuming at step 4" in text, text
    # the same resume under a constant schedule is exact: nothing to say
    const = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"schedule": "constant"})})
    train(const, run_dir=tmp_path / "c", console=Console(file=io.StringIO()))
    out = io.StringIO()
    train(const.model_copy(update={"trainer": longer.trainer}), run_dir=tmp_path / "c", console=Console(file=out, width=400))
    assert "horizon" not in out.getvalue()


def test_resuming_on_a_rebuilt_store_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    # A store rebuilt with other events under the same path: a different vocabulary ended in a
    # 305-line Orbax traceback, the same size in a cryptic loader error, and each attempt first
    # rewrote the run folder's store_checksum.txt and config.toml.
    rng = np.random.default_rng(1)
    path = tmp_path / "s.duckdb"
    seqs = [[int(x) for x in (rng.integers(0, 10) + np.arange(rng.integers(4, 10))) % 24] for _ in range(60)]
    make_store(path, seqs, [{"kind": "leave_last_out", "name": "loo"}])
    cfg = _config(path)
    cfg.trainer = cfg.trainer.model_copy(update={"max_steps": 4, "eval_every": 4, "checkpoint_every": 4})
    run = tmp_path / "run"
    train(cfg, run_dir=run)
    before = {n: (run / n).read_bytes() for n in ("store_checksum.txt", "config.toml")}
    path.unlink()
    make_store(path, [s[::-1] + [30] for s in seqs], [{"kind": "leave_last_out", "name": "loo"}])
    longer = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"max_steps": 8})})
    with pytest.raises(ConfigError, match=r"was trained on a store with content checksum \w+, but .*s\.duckdb now has \w+"):
        train(longer, run_dir=run)
    assert {n: (run / n).read_bytes() for n in before} == before
