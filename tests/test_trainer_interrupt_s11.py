"""Ctrl-C during training: the step running finishes, a checkpoint of it is written, one line says
where it stopped, and the resumed run is the uninterrupted one exactly (a KeyboardInterrupt raised
inside XLA or Orbax's async save printed library tracebacks and, now and then, crashed)."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import jax
import numpy as np
import pytest
from rich.console import Console

from segue.training.trainer import train
from test_trainer import _config, _final_state, store  # noqa: F401  (the module-scoped store fixture)


def test_ctrl_c_checkpoints_the_running_step_and_the_resume_is_exact(store: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = _config(store)
    cfg.trainer = cfg.trainer.model_copy(update={"max_steps": 12, "eval_every": 4, "checkpoint_every": 4, "keep_checkpoints": 10})
    cfg.optim = cfg.optim.model_copy(update={"plateau_patience": 100})
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    train(cfg, run_dir=run_a, console=Console(file=io.StringIO()))

    def press_ctrl_c(step: int) -> None:
        if step == 6:
            os.kill(os.getpid(), signal.SIGINT)

    out = io.StringIO()
    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # xdist workers ignore SIGINT
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, run_dir=run_b, console=Console(file=out, width=400), on_step=press_ctrl_c)
    finally:
        signal.signal(signal.SIGINT, old)
    text = out.getvalue()
    assert "stopping after this step" in text and "interrupted at step 6: checkpoint 6 written" in text, text
    assert "Traceback" not in text
    assert sorted(int(p.name) for p in (run_b / "checkpoints").iterdir() if p.name.isdigit()) == [4, 6]
    assert not (run_b / "metrics.json").exists()
    train(cfg, run_dir=run_b, console=Console(file=io.StringIO()))
    ma, mb = json.loads((run_a / "metrics.json").read_text()), json.loads((run_b / "metrics.json").read_text())
    assert mb["resumed_from"] == 6 and mb["history"] == ma["history"] and mb["best_step"] == ma["best_step"]
    for x, y in zip(jax.tree_util.tree_leaves(_final_state(run_a, 12)), jax.tree_util.tree_leaves(_final_state(run_b, 12)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_second_ctrl_c_stops_at_once_and_an_ignored_sigint_is_left_alone(store: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = _config(store)
    cfg.trainer = cfg.trainer.model_copy(update={"max_steps": 6, "eval_every": 3, "checkpoint_every": 3})

    def press_twice(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # raises here, inside the step

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, run_dir=tmp_path / "c", console=Console(file=io.StringIO()), on_step=press_twice)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, old)
    assert not (tmp_path / "c" / "checkpoints" / "3").exists()
    # a caller that ignores SIGINT keeps doing so: the trainer installs nothing
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        train(cfg, run_dir=tmp_path / "d", console=Console(file=io.StringIO()), on_step=lambda s: os.kill(os.getpid(), signal.SIGINT) if s == 2 else None)
    finally:
        signal.signal(signal.SIGINT, old)
    assert json.loads((tmp_path / "d" / "metrics.json").read_text())["steps"] == 6


def test_a_max_minutes_stop_between_log_points_reports_the_steps_it_trained(store: Path, tmp_path: Path) -> None:  # noqa: F811
    # The steps since the last log point were trained but never counted: loss nan, 0 tokens/s,
    # "tokens": 0 and final_train_loss null in metrics.json.
    cfg = _config(store)
    cfg.trainer = cfg.trainer.model_copy(update={"max_steps": 50, "eval_every": 50, "checkpoint_every": 50, "log_every": 50, "max_minutes": 1e-6})
    out = io.StringIO()
    train(cfg, run_dir=tmp_path / "m", console=Console(file=out, width=400))
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert m["stop_reason"] == "max_minutes" and m["steps"] == 1, m
    assert m["tokens"] > 0 and m["final_train_loss"] is not None and np.isfinite(m["final_train_loss"]), m
    assert "loss nan" not in out.getvalue(), out.getvalue()
