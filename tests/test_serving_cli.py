"""The `serve` command function as the CLI registers it."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from segue.serving.cli import serve


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(serve)

    @app.command()
    def other() -> None:  # a second command, so `serve` is addressed by name as in segue's CLI
        pass

    return app


def test_serve_help_lists_model_and_store() -> None:
    result = CliRunner().invoke(cli(), ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--store", "--port", "--feature-log", "--index"):
        assert option in result.output


def test_serve_a_missing_model_folder_is_a_clear_error(tmp_path) -> None:
    from segue.cli import app

    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "absent"), "--no-feature-log"])
    assert result.exit_code == 2  # the CLI's one-line error, as for every command
    out = " ".join(result.output.split())
    assert "no such model folder" in out and "Traceback" not in result.output


def test_serve_rejects_an_unknown_index_kind(tmp_path) -> None:
    result = CliRunner().invoke(cli(), ["serve", "--model", str(tmp_path), "--index", "magic"])
    assert result.exit_code != 0 and "auto, exact or hnsw" in result.output
