"""`segue validate`: the command function (registered on the main app by segue.commands)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from segue.errors import SegueError
from segue.ops.eventset import SPEC_HELP

console = Console()


def validate(
    reference: Annotated[str, typer.Argument(help=f"Reference event set: {SPEC_HELP}.")],
    candidate: Annotated[str, typer.Argument(help="Candidate event set, same forms as the reference.")],
    thresholds: Annotated[
        Path | None, typer.Option("--thresholds", "-t", help="Thresholds TOML (default: built-in, as configs/validation.toml).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for validation.json and validation.html.")] = Path(
        "validation"
    ),
    webhook: Annotated[
        str | None, typer.Option(help="POST the JSON result here (a failure is reported, not fatal).")
    ] = None,
) -> None:
    """Compare two event sets (schema, drift per feature); exit 1 when a check fails.

    Training against serving: segue validate store:s.duckdb#random/train log:serving/features

    Last week's import against this week's: segue validate last.duckdb this.duckdb

    A new file against the store it will join: segue validate s.duckdb 'csv:new.csv?user=u&item=i'
    """
    from segue.ops.alerts import check_webhook_url, post_webhook
    from segue.ops.eventset import parse_spec
    from segue.ops.thresholds import load_thresholds
    from segue.ops.validation import validate as run_validation
    from segue.ops.validation import write_result

    # Before any reading (exit 2, not validate's 1): a file there made write_result fail with a
    # traceback. A folder is fine whatever it holds: validate writes its two files into it and
    # replaces nothing else (unlike the commands that replace a whole output folder, check_output).
    if out.exists() and not out.is_dir():
        raise SegueError(f"{out} is a file (expected a folder for validation.json and validation.html); choose another --out")
    if webhook is not None:  # a malformed URL is a usage error (exit 2), not a crash after the work
        check_webhook_url(webhook, "--webhook")
    limits = load_thresholds(thresholds)
    ref_spec, cand_spec = parse_spec(reference), parse_spec(candidate)  # bad specs fail before any reading
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    result = run_validation(ref_spec, cand_spec, limits)
    if webhook:
        result.webhook = post_webhook(webhook, result.to_dict())
        if not result.webhook["ok"]:
            logging.getLogger("segue.validate").warning(
                "webhook %s failed: %s (the result is still written)", webhook, result.webhook["error"]
            )
    write_result(result, out / "validation.json", out / "validation.html")
    for f in result.features:
        status = "skipped" if f.skipped else ("pass" if f.passed else "[red]FAIL[/]")
        extra = f" ({escape(f.skipped)})" if f.skipped else f"  distance {f.distance:.4f}  limit {f.limit:.4f}"
        console.print(f"  {escape(f.name):<24} {status}{extra}", highlight=False)
    for x in result.schema:
        console.print(f"  schema {x.severity}: {escape(x.message())}", highlight=False)
    console.print(f"[{'green' if result.passed else 'red'}]{'PASS' if result.passed else 'FAIL'}[/] written: {out}/validation.json, {out}/validation.html")
    if not result.passed:
        raise typer.Exit(1)
