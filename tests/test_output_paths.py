"""Output paths: a command replaces its -o path only when it is new or an earlier output of the
same command; anyone else's file or folder is refused (exit 2) and left untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from evalhelp import eval_store
from rankhelp import feedback_store, untrained
from segue.cli import app
from segue.errors import SegueError
from segue.io import check_output

runner = CliRunner()


def victims(root: Path) -> tuple[Path, Path]:
    """An ordinary file and a folder holding one: neither is a segue output."""
    f = root / "victim.txt"
    f.write_text("precious\n")
    d = root / "victimdir"
    d.mkdir()
    (d / "precious.txt").write_text("precious\n")
    return f, d


def untouched(f: Path, d: Path) -> bool:
    return f.read_text() == "precious\n" and sorted(p.name for p in d.iterdir()) == ["precious.txt"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("outputs")
    return eval_store(d / "s.duckdb", n_seq=60, n_items=25, splits=[{"kind": "leave_last_out", "name": "loo"}])


def test_check_output_allows_new_empty_and_earlier_outputs_only(tmp_path: Path) -> None:
    assert check_output(tmp_path / "new", "report", "results.json") is False
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", "report", "results.json") is False
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text("{}")
    assert check_output(tmp_path / "old", "report", "results.json") is True
    f, d = victims(tmp_path)
    for p in (f, d):
        with pytest.raises(SegueError, match=rf"{p.name} exists and is not a segue report \(expected a new path or an earlier report\)"):
            check_output(p, "report", "results.json")


def test_evaluate_refuses_a_file_or_foreign_folder_and_replaces_an_earlier_report(store: Path, tmp_path: Path) -> None:
    f, d = victims(tmp_path)
    for victim in (f, d):
        res = runner.invoke(app, ["evaluate", "popularity", "--store", str(store), "-o", str(victim), "--n-boot", "20"])
        assert res.exit_code == 2, res.output
        assert f"{victim} exists and is not a segue report" in " ".join(res.output.split())
        assert "fitting" not in res.output  # refused before any work
    assert untouched(f, d)
    out = tmp_path / "rep"
    for _ in range(2):
        res = runner.invoke(app, ["evaluate", "popularity", "--store", str(store), "-o", str(out), "--n-boot", "20"])
        assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    # --out was passed: the hint to pass it would be wrong
    assert f"replaced the previous report in {out}" in text and "pass --out" not in text
    assert (out / "results.json").is_file()


def test_export_refuses_a_file_or_foreign_folder(tmp_path: Path) -> None:
    store = feedback_store(tmp_path / "f.duckdb")
    folder = untrained(store).save(tmp_path / "model")
    f, d = victims(tmp_path)
    for victim in (f, d):
        res = runner.invoke(app, ["export", str(folder), "--store", str(store), "--split", "loo", "-o", str(victim)])
        assert res.exit_code == 2, res.output
        assert f"{victim} exists and is not a segue export" in " ".join(res.output.split())
    assert untouched(f, d)
    out = tmp_path / "tt"
    for _ in range(2):  # an earlier export is replaced
        res = runner.invoke(app, ["export", str(folder), "--store", str(store), "--split", "loo", "-o", str(out)])
        assert res.exit_code == 0, res.output


def test_pipeline_refuses_a_file_or_foreign_folder(store: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "pl.toml"
    cfg.write_text(
        f'name = "pl"\n[data]\nstore = "{store}"\nsplit = "loo"\n[pipeline]\n'
        '[[pipeline.generators]]\nname = "popularity"\nfamily = "popularity"\nn = 20\n'
    )
    f, d = victims(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model.toml").write_text('family = "ease"\n')  # a model, but not a pipeline
    for victim in (f, d, tmp_path / "other"):
        res = runner.invoke(app, ["pipeline", "-c", str(cfg), "-o", str(victim)])
        assert res.exit_code == 2, res.output
        assert f"{victim} exists and is not a segue pipeline model" in " ".join(res.output.split())
    assert untouched(f, d) and (tmp_path / "other" / "model.toml").is_file()
    # a pipeline folder save() did not write (no saved.json: an older segue's) is refused before
    # the fit, not after it at save time; a pipeline written by this segue is replaced
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.toml").write_text('family = "pipeline"\n')
    (tmp_path / "old" / "notes.txt").write_text("mine")
    res = runner.invoke(app, ["pipeline", "-c", str(cfg), "-o", str(tmp_path / "old")])
    assert res.exit_code == 2 and "saved.json" in res.output and "fitting" not in res.output.lower(), res.output
    assert (tmp_path / "old" / "notes.txt").read_text() == "mine"
    for _ in range(2):
        res = runner.invoke(app, ["pipeline", "-c", str(cfg), "-o", str(tmp_path / "new")])
        assert res.exit_code == 0, res.output


def test_experiment_refuses_a_foreign_folder_and_an_evaluate_report(store: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "exp.toml"
    cfg.write_text(f'store = "{store}"\nsplit = "loo"\nn_boot = 20\n[[models]]\nname = "pop"\nfamily = "popularity"\n')
    f, d = victims(tmp_path)
    for victim in (f, d):
        res = runner.invoke(app, ["experiment", str(cfg), "-o", str(victim)])
        assert res.exit_code == 2, res.output
        assert f"{victim} exists and is not a segue experiment report" in " ".join(res.output.split())
    assert untouched(f, d)
    out = tmp_path / "exp"
    for _ in range(2):  # an earlier experiment is replaced, with its experiment.md
        res = runner.invoke(app, ["experiment", str(cfg), "-o", str(out)])
        assert res.exit_code == 0, res.output
    assert (out / "experiment.md").is_file() and (out / "experiment.toml").is_file() and (out / "results.json").is_file()


def test_validate_refuses_a_file_with_exit_2_and_writes_beside_a_folders_files(store: Path, tmp_path: Path) -> None:
    f, d = victims(tmp_path)
    res = runner.invoke(app, ["validate", str(store), str(store), "-o", str(f)])
    assert res.exit_code == 2, res.output
    assert f"{f} is a file (expected a folder for validation.json" in " ".join(res.output.split())
    assert f.read_text() == "precious\n"
    # validate writes its two files into a folder and replaces nothing there
    res = runner.invoke(app, ["validate", str(store), str(store), "-o", str(d)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in d.iterdir()) == ["precious.txt", "validation.html", "validation.json"]


def test_data_build_refuses_a_folder_even_with_force(tmp_path: Path) -> None:
    src = tmp_path / "e.csv"
    src.write_text("user,item\nu1,a\nu1,b\nu2,a\nu2,c\n")
    _, d = victims(tmp_path)
    for extra in ([], ["--force"]):
        res = runner.invoke(app, ["data", "build", "csv", str(src), "-o", str(d), *extra])
        assert res.exit_code == 2, res.output
        assert f"{d} is a folder (expected a store file path)" in " ".join(res.output.split())
    assert sorted(p.name for p in d.iterdir()) == ["precious.txt"]


def test_data_build_force_replaces_only_a_store_never_another_file_or_its_source(tmp_path: Path) -> None:
    src = tmp_path / "e.csv"
    src.write_text("user,item\nu1,a\nu1,b\nu2,a\nu2,c\n")
    f, _ = victims(tmp_path)
    other = tmp_path / "other.duckdb"  # a DuckDB file segue did not write
    import duckdb

    with duckdb.connect(str(other)) as con:
        con.execute("CREATE TABLE mine AS SELECT 42 AS answer")
    for victim in (f, other):
        before = victim.read_bytes()
        res = runner.invoke(app, ["data", "build", "csv", str(src), "-o", str(victim), "--force"])
        assert res.exit_code == 2, res.output
        assert f"{victim} exists and is not a segue store" in " ".join(res.output.split())
        assert victim.read_bytes() == before
    before = src.read_bytes()
    res = runner.invoke(app, ["data", "build", "csv", str(src), "-o", str(src), "--force"])
    assert res.exit_code == 2, res.output
    assert f"{src} is the source file itself" in " ".join(res.output.split())
    assert src.read_bytes() == before
    store = tmp_path / "s.duckdb"
    for _ in range(2):  # a store it wrote is replaced
        res = runner.invoke(app, ["data", "build", "csv", str(src), "-o", str(store), "--force"])
        assert res.exit_code == 0, res.output
