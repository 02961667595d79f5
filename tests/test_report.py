"""`segue evaluate`: the command, its report folder, and its errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from evalhelp import eval_store, random_model
from segue.data.arrays import SplitData
from segue.data.store import Store
from segue.evaluation.cli import evaluate as evaluate_command
from segue.evaluation.evaluator import evaluate
from segue.evaluation.report import EvaluateConfig, compute_stats, render_markdown, write_report
from segue.models.popularity import Popularity

app = typer.Typer()
app.command("evaluate")(evaluate_command)
app.command("noop")(lambda: None)  # two commands, so "evaluate" is addressed by name as in segue
runner = CliRunner()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return eval_store(tmp_path_factory.mktemp("report") / "r.duckdb", n_seq=100)


@pytest.fixture(scope="module")
def pop_folder(store_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    with Store.open(store_path) as s:
        return Popularity().fit(SplitData.load(s, "loo")).save(tmp_path_factory.mktemp("models") / "pop")


def test_cli_writes_a_complete_report(store_path: Path, pop_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    res = runner.invoke(
        app,
        ["evaluate", "popularity", f"saved_popularity_of_the_fixture={pop_folder}", "--store", str(store_path), "--split", "loo",
         "--ks", "1,5,10", "--out", str(out), "--n-boot", "200"],
    )
    assert res.exit_code == 0, res.output
    assert "popularity" in res.output and "saved" in res.output and "NDCG@10" in res.output
    # On an 80-column terminal (CliRunner's) the headline columns stay whole, K in the title.
    header = next(line for line in res.output.splitlines() if "model" in line and "NDCG" in line)
    assert "…" not in header and {"HR", "Recall", "NDCG", "MRR", "PopPct", "Cov"} <= set(header.replace("┃", " ").split())
    assert "every column at K = 10" in " ".join(res.output.split())
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"report.md", "report.html", "metrics_vs_k.png", "results.json", "per_user.npz", "evaluate.toml",
            "store.json", "models/popularity/model.toml", "models/saved_popularity_of_the_fixture/model.toml"} <= files
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<style>" in html
    assert "http://" not in html and "https://" not in html  # self-contained
    results = json.loads((out / "results.json").read_text())
    with Store.open(store_path) as s:
        assert results["store"]["checksum"] == s.checksum
        assert json.loads((out / "store.json").read_text())["content_checksum"] == s.checksum
    # the same model twice: identical per-user values, so the paired test finds nothing
    comp = results["comparisons"]
    (other,) = comp
    assert comp[other]["ndcg@10"]["diff"] == 0 and comp[other]["ndcg@10"]["p_value"] == 1.0
    per_user = np.load(out / "per_user.npz")
    assert len(per_user["popularity/ndcg@10"]) == results["n_queries"] == len(per_user["seq_ids"])
    cfg = EvaluateConfig.load(out / "evaluate.toml")
    assert cfg.split == "loo" and cfg.ks == [1, 5, 10] and cfg.protocol.name == "leave_last_out"
    assert 'family = "popularity"' in (out / "models/saved_popularity_of_the_fixture/model.toml").read_text()


def test_report_compares_against_the_best(store_path: Path, tmp_path: Path) -> None:
    with Store.open(store_path) as s:
        data = SplitData.load(s, "loo")
        models = {"random": random_model(data.vocab), "popularity": Popularity().fit(data)}
    result = evaluate(models, store_path, "loo", ks=[5, 10, 20])
    stats = compute_stats(result, n_boot=300)
    assert stats.reference == "popularity"  # the best on NDCG@10, although listed second
    c = stats.comparisons["random"]["ndcg@10"]
    assert c.diff < 0 and c.high < 0 and c.p_value < 0.05
    iv = stats.intervals["popularity"]["ndcg@10"]
    assert iv.low <= iv.mean <= iv.high
    md = render_markdown(result, stats)
    assert "Paired comparisons" in md and "NDCG@K" in md and "| random |" in md
    write_report(result, tmp_path / "r", stats)
    assert (tmp_path / "r" / "report.html").stat().st_size > 10_000  # the plot is inside


def test_playlist_continuation_report_has_groups(store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "pc"
    res = runner.invoke(
        app,
        ["evaluate", "popularity", "--store", str(store_path), "--protocol", "recsys2018", "--out", str(out),
         "--n-boot", "100"],
    )
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["headline_k"] == 500 and set(results["groups"]) >= {"K=1", "K=5"}
    assert "rprec" in results["summary"]["popularity"] and "clicks" in results["summary"]["popularity"]
    assert "Per group" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["no/such/model"], "model 'no/such/model': no such model folder, and not a baseline name"),
        (["popularity", "--split", "nope"], "no split 'nope'"),
        (["popularity", "--protocol", "sasrec"], "unknown protocol 'sasrec'"),
        (["popularity", "--split", "random", "--protocol", "strong"], "needs a split of kind strong"),
        (["popularity", "--ks", "10,x"], "--ks '10,x'"),
    ],
)
def test_bad_input_is_a_clear_error(store_path: Path, tmp_path: Path, args: list[str], expected: str) -> None:
    res = runner.invoke(app, ["evaluate", *args, "--store", str(store_path), "--out", str(tmp_path / "x")])
    assert res.exit_code != 0
    assert expected in " ".join(res.output.split())
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_folder_without_model_toml_and_missing_store(tmp_path: Path, store_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["evaluate", str(tmp_path / "empty"), "--store", str(store_path), "--no-report"])
    assert res.exit_code != 0 and "not a model folder (no model.toml)" in " ".join(res.output.split())
    res = runner.invoke(app, ["evaluate", "popularity", "--store", str(tmp_path / "none.duckdb"), "--no-report"])
    assert res.exit_code != 0 and "no store here" in " ".join(res.output.split())
