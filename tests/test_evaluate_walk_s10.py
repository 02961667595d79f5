"""Walk s10 (segue evaluate): --batch-size range, --n-boot 0 differences, `pipeline` as a model
name, and the reason given when no query is left to score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from evalhelp import eval_store
from segue.cli import app
from segue.errors import ConfigError
from segue.evaluation.cli import run_evaluation
from segue.evaluation.significance import summarize_difference

runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return eval_store(tmp_path_factory.mktemp("evalwalk") / "s.duckdb", splits=[{"kind": "leave_last_out", "name": "loo"}])


@pytest.mark.parametrize("size", ["-5", "0"])
def test_batch_size_below_one_is_a_usage_error(store: Path, tmp_path: Path, size: str) -> None:
    # F17: -5 scored nothing (range(0, n, -5) is empty) and wrote every metric as 0 into a report.
    out = tmp_path / "rep"
    res = runner.invoke(app, ["evaluate", "popularity", "--store", str(store), "--batch-size", size, "-o", str(out), "--n-boot", "10"])
    assert res.exit_code == 2, res.output
    assert "--batch-size" in res.output and "fitting" not in res.output and not out.exists()


def test_run_evaluation_refuses_a_negative_batch_size(store: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size is -5: expected at least 1"):
        run_evaluation(["popularity"], store, "loo", batch_size=-5, report=False, n_boot=0)


def test_difference_without_resamples_is_the_plain_mean() -> None:
    # F10: with n_boot 0 the difference printed as +nan; it needs no resampling.
    c = summarize_difference(np.array([0.5, -0.25, np.nan, 0.0]), np.empty(0), 0.95)
    assert c.diff == pytest.approx(0.25 / 3) and c.n == 3
    assert np.isnan(c.low) and np.isnan(c.high) and np.isnan(c.p_value)


def test_n_boot_zero_prints_differences_and_says_no_ci(store: Path) -> None:
    res = runner.invoke(app, ["evaluate", "popularity", "ease", "--store", str(store), "--ks", "10", "--no-report", "--n-boot", "0"])
    assert res.exit_code == 0, res.output
    text = flat(res.output)
    assert "nan" not in text
    assert "no CIs (--n-boot 0)" in text and "± = half" not in text
    assert "--n-boot 0: no CI or p computed" in text
    row = next(line for line in res.output.splitlines() if "│" in line and line.count("│") == 5 and "NDCG" not in line and "model" not in line)
    assert row.split("│")[2].strip().startswith(("+", "-"))  # the point difference, not a dash


def test_pipeline_as_a_model_name_says_how_to_fit_one(store: Path) -> None:
    # F18: a pydantic ValidationError traceback (a pipeline's default config has no generators).
    res = runner.invoke(app, ["evaluate", "pipeline", "--store", str(store), "--no-report", "--n-boot", "10"])
    assert res.exit_code == 2, res.output
    text = flat(res.output)
    assert "segue pipeline --config" in text and "pass the model folder" in text
    assert "Traceback" not in res.output and "ValidationError" not in text
    res = runner.invoke(app, ["evaluate", "popularty", "--store", str(store), "--no-report"])
    assert "baselines:" in flat(res.output) and "pipeline" not in flat(res.output).split("baselines:")[1]


def test_no_query_to_score_names_min_history(store: Path) -> None:
    res = runner.invoke(app, ["evaluate", "popularity", "--store", str(store), "--no-report", "--min-history", "100000"])
    assert res.exit_code == 2, res.output
    assert "has no query to score:" in flat(res.output) and "fewer than 100000 history event(s) left out" in flat(res.output)
