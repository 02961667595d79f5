"""A report folder locates its inputs by itself and runs again (walk s12 lib F2): evaluate.toml
and store.json name the store and model folders absolutely, `segue evaluate --config` reruns
the saved evaluation from anywhere, and an experiment's copied file reruns with
`segue experiment REPORT/experiment.toml`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segue.cli import app
from segue.data.arrays import SplitData
from segue.data.store import Store
from segue.models.base import model_class
from test_cli import _write_sequences

runner = CliRunner()


def _metrics(folder: Path) -> dict:
    d = json.loads((folder / "results.json").read_text())
    return {"summary": d["summary"], "intervals": d["intervals"], "comparisons": d["comparisons"]}


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    src = tmp_path / "seq.txt"
    _write_sequences(src, n_users=60)
    res = runner.invoke(app, ["data", "build", "seqtext", str(src), "-o", str(tmp_path / "s.duckdb"), "-s", "leave_last_out"])
    assert res.exit_code == 0, res.output
    with Store.open(tmp_path / "s.duckdb") as st:
        model_class("popularity")(model_class("popularity").config_class()).fit(SplitData.load(st, "loo")).save(tmp_path / "m" / "pop")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # relative paths below are relative to this folder
    return tmp_path


def test_evaluate_config_reruns_from_another_folder(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = runner.invoke(app, ["evaluate", "../m/pop", "ease", "--store", "../s.duckdb", "--n-boot", "20", "--out", "r1"])
    assert res.exit_code == 0, res.output
    saved = tomllib.loads((work / "cwd" / "r1" / "evaluate.toml").read_text())
    assert saved["store"] == str(work / "s.duckdb")
    assert saved["models"] == [str(work / "m" / "pop"), "ease"]
    assert json.loads((work / "cwd" / "r1" / "store.json").read_text())["path"] == str(work / "s.duckdb")
    monkeypatch.chdir(work)  # elsewhere: the relative paths of the first run would not resolve here
    res = runner.invoke(app, ["evaluate", "--config", "cwd/r1/evaluate.toml"])
    assert res.exit_code == 0, res.output
    again = work / "cwd" / "r1-again"  # never over the report being checked
    assert _metrics(again) == _metrics(work / "cwd" / "r1")
    res = runner.invoke(app, ["evaluate", "--config", "cwd/r1/evaluate.toml", "--ks", "5"])
    assert res.exit_code == 2 and "--ks" in res.output


def test_experiment_copy_reruns(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = work / "exp"
    exp.mkdir()
    (exp / "EXP.toml").write_text(
        'store = "../s.duckdb"\nsplit = "loo"\nn_boot = 20\n[[models]]\nname = "pop"\nfolder = "../m/pop"\n'
        '[[models]]\nname = "ease"\nfamily = "ease"\n'
    )
    res = runner.invoke(app, ["experiment", str(exp / "EXP.toml"), "-o", "first"])
    assert res.exit_code == 0, res.output
    monkeypatch.chdir(work)
    res = runner.invoke(app, ["experiment", "cwd/first/experiment.toml", "-o", "second"])
    assert res.exit_code == 0, res.output
    assert _metrics(work / "second") == _metrics(work / "cwd" / "first")


def test_random_holdout_split_added_by_evaluate_is_announced(work: Path) -> None:
    """segue evaluate -p random_holdout on a store without such a split adds one: the store (and
    its checksum) changes, so the command says so (walk s12 lib F5)."""
    args = ["evaluate", "popularity", "--store", str(work / "s.duckdb"), "-p", "random_holdout", "--no-report", "--n-boot", "0"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "added split 'holdout'" in " ".join(res.output.split())
    with Store.open(work / "s.duckdb") as st:
        assert "holdout" in st.split_names()
    res = runner.invoke(app, args)  # found now, not added again
    assert res.exit_code == 0 and "added split" not in res.output


def test_a_label_given_twice_is_refused_before_fitting(work: Path) -> None:
    """segue evaluate a=ease a=popularity renamed the second to a-2 without a word (walk s12 lib F3)."""
    res = runner.invoke(app, ["evaluate", "a=ease", "a=popularity", "--store", str(work / "s.duckdb"), "--no-report", "--n-boot", "0"])
    assert res.exit_code == 2
    assert "'a' given to more than one model" in " ".join(res.output.split())
    assert "fitting" not in res.output
