"""`segue experiment`: models fitted with their configs and a model folder, on one split, one report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evalhelp import eval_store
from segue.cli import app
from segue.data.arrays import SplitData
from segue.data.store import Store
from segue.errors import ConfigError
from segue.models.ease import EASE, EASEConfig
from segue.tuning.experiment import ExperimentConfig, run_experiment

EXPERIMENT = """
store = "s.duckdb"
split = "loo"
ks = [5, 10]
n_boot = 100
reference = "ease-250"
[[models]]
name = "ease-250"
family = "ease"
[[models]]
name = "ease-5"
family = "ease"
config = {{ l2 = 5.0 }}
[[models]]
name = "popularity"
family = "popularity"
[[models]]
name = "saved"
folder = "{folder}"
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("experiment")
    eval_store(d / "s.duckdb", n_seq=80, n_items=30, splits=[{"kind": "leave_last_out", "name": "loo"}])
    with Store.open(d / "s.duckdb") as store:
        EASE(EASEConfig(l2=5.0)).fit(SplitData.load(store, "loo")).save(d / "saved-ease")
    # what a training run folder holds beside its model (checkpoints, logs): no part of its size
    (d / "saved-ease" / "checkpoints").mkdir()
    (d / "saved-ease" / "checkpoints" / "state.bin").write_bytes(b"\0" * 2_000_000)
    (d / "exp.toml").write_text(EXPERIMENT.format(folder="saved-ease"))
    return d


def test_experiment_report_has_significance_cost_and_markdown(setup: Path) -> None:
    out, table = run_experiment(setup / "exp.toml", out=setup / "report")
    lines = table.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:2] == ["model", "family"] and header[-3:] == ["fit s", "fit peak +MiB", "size MB"]
    assert "Δ NDCG@10 vs ease-250 (p)" in header
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")] for r in lines[2:]}
    assert set(rows) == {"ease-250", "ease-5", "popularity", "saved"}
    assert rows["ease-250"][header.index("Δ NDCG@10 vs ease-250 (p)")] == "reference"
    # a folder's model is the same EASE as the one fitted with its config: no difference at all
    assert rows["saved"][header.index("Δ NDCG@10 vs ease-250 (p)")] == rows["ease-5"][header.index("Δ NDCG@10 vs ease-250 (p)")]
    assert rows["saved"][header.index("fit s")] == "–"  # loaded, not fitted here
    assert float(rows["ease-5"][header.index("fit s")]) >= 0
    assert float(rows["ease-5"][header.index("size MB")]) > float(rows["popularity"][header.index("size MB")])
    # the folder's model is measured as saved, like the one fitted here (it counted checkpoints)
    assert rows["saved"][header.index("size MB")] == rows["ease-5"][header.index("size MB")]
    assert (out / "experiment.md").read_text().count("\n|") >= 5
    results = json.loads((out / "results.json").read_text())
    assert results["reference"] == "ease-250" and set(results["comparisons"]) == {"ease-5", "popularity", "saved"}
    assert results["part"] == "test"


def test_experiment_command_and_bad_files(setup: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["experiment", str(setup / "exp.toml"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "| popularity | popularity |" in res.output
    bad = setup / "bad.toml"
    bad.write_text('store = "s.duckdb"\nsplit = "loo"\n[[models]]\nname = "x"\nfamily = "ease"\nfolder = "y"\n')
    with pytest.raises(ConfigError, match="either `family`"):
        ExperimentConfig.load(bad)
    bad.write_text('store = "s.duckdb"\nsplit = "loo"\nreference = "z"\n[[models]]\nname = "x"\nfamily = "ease"\n')
    with pytest.raises(ConfigError, match="reference 'z' is not one of the models"):
        ExperimentConfig.load(bad)
    bad.write_text('store = "s.duckdb"\nsplit = "loo"\n[[models]]\nname = "x"\nfamily = "ease"\nconfig = { lambda = 3 }\n')
    res = CliRunner().invoke(app, ["experiment", str(bad)])
    assert res.exit_code != 0 and "models 'x'.config" in res.output and "lambda" in res.output


@pytest.mark.parametrize(("command", "words"), [("tune", "[params.*]"), ("experiment", "[[models]]")])
def test_help_shows_toml_table_names_verbatim(command: str, words: str) -> None:
    # rich had read "[params.*]" and "[[models]]" as markup tags and dropped them
    res = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert words in res.output
