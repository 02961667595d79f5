"""Walk 2 leftovers (fixer M): retrain's gone files, splits, save guard, continue past the catalogue."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from segue.errors import SegueError
from segue.retrain.loop import Retrain, RetrainConfig
from test_retrain import _quiet, _setup, weeks  # noqa: F401 (weeks: the module's fixture)


def test_retrain_gone_batch_is_named_gone_not_blamed_on_pattern(tmp_path: Path, weeks: Path) -> None:  # noqa: F811
    # R5: a file production was trained on, archived away, was reported as one `pattern` "misses".
    cfg_path = _setup(tmp_path, weeks, 1)
    assert Retrain(RetrainConfig.load(cfg_path), console=_quiet()).run()["promoted"]
    inc = tmp_path / "incoming"
    shutil.move(inc / "week-00.csv", tmp_path / "week-00.csv.bak")
    shutil.copy(weeks / "normal" / "week-01.csv", inc)
    with pytest.raises(SegueError, match=r"files production was trained on are gone: .*week-00\.csv \(restore them"):
        Retrain(RetrainConfig.load(cfg_path), console=_quiet()).run()


def test_temporal_with_only_test_cut_takes_valid_before_it(tmp_path: Path) -> None:
    # R4: with only test_cut, the valid cut was the quantile 1 - test_fraction - valid_fraction of
    # all times, ignoring test_cut: an early test_cut failed naming a valid_cut never given, and the
    # unused test_fraction counted in the sum check.
    from datahelp import make_store
    from segue.data.store import Store
    from segue.errors import ConfigError
    from test_splits import parts_frame

    seqs = [[f"i{j}" for j in range(10)] for _ in range(10)]
    ts = [[10 * s + j for j in range(10)] for s in range(10)]  # 100 events at times 0..99
    spec = {"kind": "temporal", "name": "t", "test_cut": 30, "valid_fraction": 0.1, "test_fraction": 0.95}
    p = make_store(tmp_path / "a.duckdb", seqs, [spec], ts=ts)
    with Store.open(p) as s:
        f = parts_frame(s.con, "t")
        params = s.split_info("t")["params"]
    counts = dict(enumerate(np.bincount(f["part"], minlength=3).tolist()))
    assert params["test_cut"] == 30 and params["valid_cut"] == 20
    assert counts == {0: 20, 1: 10, 2: 70}  # validation: 10% of all events, ending at test_cut
    with pytest.raises(ConfigError, match=r"valid_fraction 0\.5 asks for 50 of the 100 events, but only 30 lie before test_cut"):
        make_store(tmp_path / "b.duckdb", seqs, [spec | {"valid_fraction": 0.5}], ts=ts)
    assert not (tmp_path / "b.duckdb").exists()
    # Neither cut given: the sum of the fractions is still checked.
    with pytest.raises(Exception, match="valid_fraction \\+ test_fraction"):
        make_store(tmp_path / "c.duckdb", seqs, [{"kind": "temporal", "test_fraction": 0.95}], ts=ts)


def test_save_refuses_a_training_run_folder_and_keeps_derived_files(tmp_path: Path) -> None:
    # R6: a training run folder holds model.toml, so save() took it for an earlier model folder and
    # replaced it whole: the run's checkpoints, metrics, curves and TensorBoard logs were deleted.
    from datahelp import make_store
    from segue.data.arrays import SplitData
    from segue.data.store import Store
    from segue.models.base import load_model
    from segue.models.popularity import Popularity

    path = make_store(tmp_path / "s.duckdb", [[0, 1, 2], [1, 2], [2, 3, 0]], [{"kind": "leave_last_out"}])
    with Store.open(path) as s:
        model = Popularity().fit(SplitData.load(s, "loo"))
    saved = model.save(tmp_path / "saved")
    # A run folder: model files (no saved.json: the trainer wrote them) beside the run's own.
    run = tmp_path / "run"
    shutil.copytree(saved, run)
    (run / "saved.json").unlink()
    (run / "checkpoints" / "100").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(SegueError, match=r"run: holds model\.toml but no saved\.json, so save\(\) did not write it \(a training run folder.*would delete checkpoints, .*metrics\.json"):
        model.save(run)
    assert sorted(p.name for p in run.iterdir()) == before
    # saved.json there too (say, copied over): the run's own entries are named, nothing deleted.
    shutil.copy(saved / "saved.json", run)
    with pytest.raises(SegueError, match=r"run: holds checkpoints, metrics\.json, which save\(\) did not write"):
        model.save(run)
    assert (run / "checkpoints" / "100").is_dir() and (run / "metrics.json").read_text() == "{}"
    # What serving derives beside a saved model does not stand in the way of a re-save.
    (saved / "items.parquet").write_bytes(b"x")
    (saved / "serving").mkdir()
    model.save(saved)
    assert (saved / "saved.json").is_file() and np.array_equal(load_model(saved).counts, model.counts)


def test_continue_past_the_catalogue_prints_what_it_could(tmp_path: Path) -> None:
    # R10: `segue continue -n N` past the catalogue printed nothing and exited 2 ("the catalogue is
    # exhausted"), while /v1/continue answers the items it could with a warning.
    from typer.testing import CliRunner

    from segue.cli import app
    from segue.data.vocab import N_SPECIAL
    from segue.training.continuation import continue_tokens
    from test_continuation import V, _rec

    rec = _rec()
    res = continue_tokens(rec, [5], n=50, greedy=True)
    assert res.ran_out and len(res.tokens) == V - N_SPECIAL - 1 and 5 not in res.tokens
    assert not continue_tokens(rec, [5], n=3, greedy=True).ran_out
    folder = rec.save(tmp_path / "m")
    out = CliRunner().invoke(app, ["continue", "--model", str(folder), "--seed", "spotify:track:1", "-n", "50", "--greedy"])
    assert out.exit_code == 0, out.output
    assert f"{V - N_SPECIAL - 1:>3}. spotify:track:" in out.output
    assert f"only {V - N_SPECIAL - 1} items could be continued (the catalogue ran out)" in out.output
    # p has one meaning, said under the list: --greedy and --top-k 1 print different numbers for
    # the same pick because the softmax runs over different candidate sets
    text = " ".join(out.output.split())
    assert "p: each pick's probability under the softmax over the 50 best items left, at temperature 1 (greedy takes the most probable)" in text
    one = CliRunner().invoke(app, ["continue", "--model", str(folder), "--seed", "spotify:track:1", "-n", "1", "--top-k", "1"])
    assert "p=1.000" in one.output and "softmax over the 1 best items left" in " ".join(one.output.split())
