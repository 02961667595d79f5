"""Bad input around models: an unreadable model folder, out-of-range evaluate options, and an
export against a store the model was not trained on, each one clear error with exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from evalhelp import eval_store
from rankhelp import feedback_store, untrained
from segue.cli import app

runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("badmodel")
    store = feedback_store(root / "s.duckdb")
    return store, untrained(store).save(root / "model")


def test_evaluate_a_model_with_truncated_weights_names_the_file(trained: tuple[Path, Path], tmp_path: Path) -> None:
    store, folder = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "weights.npz"
    weights.write_bytes(weights.read_bytes()[:100])  # a copy cut short
    res = runner.invoke(app, ["evaluate", str(broken), "--store", str(store), "--split", "loo", "--no-report"])
    assert res.exit_code == 2, res.output
    text = flat(res.output)
    assert f"{broken}: the model could not be loaded (BadZipFile" in text and str(weights) in text
    assert "Traceback" not in res.output


@pytest.mark.parametrize(
    ("args", "option"),
    [(["--n-boot", "0"], "--n-boot"), (["--n-boot", "-1", "--no-report"], "--n-boot"), (["--min-history", "-1"], "--min-history"),
     (["--seed", "-1"], "--seed")],  # a numpy traceback after the fits
)
def test_evaluate_options_out_of_range_are_usage_errors(trained: tuple[Path, Path], tmp_path: Path, args: list[str], option: str) -> None:
    store, _ = trained
    out = tmp_path / "rep"
    res = runner.invoke(app, ["evaluate", "popularity", "--store", str(store), "--split", "loo", "-o", str(out), *args])
    assert res.exit_code == 2, res.output
    assert option in res.output and "Traceback" not in res.output
    assert "fitting" not in res.output and not out.exists()  # refused before any work


def test_export_refuses_a_store_the_model_was_not_trained_on(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, folder = trained
    other = eval_store(tmp_path / "other.duckdb", n_seq=40, n_items=20, splits=[{"kind": "leave_last_out", "name": "loo"}])
    out = tmp_path / "tt"
    res = runner.invoke(app, ["export", str(folder), "--store", str(other), "--split", "loo", "-o", str(out)])
    assert res.exit_code == 2, res.output
    assert "its vocabulary differs" in flat(res.output) and "export it on the store and split it was trained on" in flat(res.output)
    assert not out.exists()


def test_a_model_toml_cut_inside_its_config_is_refused_not_loaded_with_defaults(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from segue.errors import SegueError
    from segue.models.base import END_MARKER, load_model

    _, folder = trained
    text = (folder / "model.toml").read_text()
    assert text.rstrip().endswith(END_MARKER)
    lines = text.rstrip().splitlines()
    cut_at = next(i for i, line in enumerate(lines) if line.startswith("[config")) + 2  # still parses
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.toml").write_text("\n".join(lines[:cut_at]) + "\n")
    with pytest.raises(SegueError, match="lacks the line '# end of model.toml' that segue writes last"):
        load_model(broken)
    # a hand edit that keeps the marker (or an older folder without ends_with_marker) still loads
    (broken / "model.toml").write_text(text.replace("ends_with_marker = true\n", ""))
    assert load_model(broken).family == load_model(folder).family
