"""`segue tune` and `segue experiment`: the command functions (registered lazily in segue.commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


# Help texts are rich markup: a TOML table name such as [params.*] is escaped, or rich drops it as a tag.
def tune(
    space: Annotated[Path, typer.Argument(help="The search-space TOML (family, store, split, metric, budget, \\[params.*]).")],
    root: Annotated[Path, typer.Option("--root", help="Folder of Metaflow's local datastore and of the session's results.")] = Path("tune-runs"),
    max_workers: Annotated[int, typer.Option("--max-workers", min=1, help="Trials run at once (Metaflow's --max-workers; >= 1).")] = 2,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed or failed session (finished trials are not rerun).")] = False,
    user: Annotated[str | None, typer.Option("--user", help="Metaflow user (namespace); default METAFLOW_USER or the login name (Metaflow refuses root: it runs as segue).")] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples of the test CIs.")] = 1000,
    mlflow: Annotated[
        str | None,
        typer.Option("--mlflow", help="Also log the session to MLflow (a parent run, one nested run per trial): a registry folder or a tracking URI."),
    ] = None,
) -> None:
    """Tune a family's hyper-parameters on validation with a Metaflow flow; test the best once.

    Grid, seeded random or Optuna TPE (in rounds of parallel trials, median pruning for iterative
    families). Results land in ROOT/<space>-<user>/: trials.json, best-model/, report/ (tuned vs
    defaults on test, with CIs), card.html (the Metaflow card) and tune.html (sortable trials)."""
    import json

    from rich.console import Console

    from segue.tuning.launch import tune as run

    console = Console()
    if mlflow is not None:
        check_mlflow(mlflow)  # a typo found now, not after the whole budget (then minutes of retries)
    session = run(space, root, user=user, max_workers=max_workers, resume=resume, n_boot=n_boot,
                  echo=lambda s: console.print(s, highlight=False))
    print_summary(session, console)
    if not json.loads((session / "summary.json").read_text()).get("best"):
        # nothing to test or keep: not a success (the errors are in trials.json and tune.html)
        from segue.errors import SegueError

        raise SegueError(f"{session}: no trial finished, so there is no best model (each trial's error: trials.json, tune.html)")
    if mlflow is not None:
        from segue.ops.registry import log_tuning_session

        rid = log_tuning_session(mlflow, session)
        console.print(f"logged to MLflow ({mlflow}): run {rid}, one nested run per trial", highlight=False)


def check_mlflow(location: str, timeout: float = 5.0) -> None:
    """A SegueError naming --mlflow when the location is unusable: a file where a registry folder
    belongs, or an http(s) tracking server that does not answer one short request."""
    import urllib.error
    import urllib.request

    from segue.errors import SegueError
    from segue.ops.registry import Registry

    try:
        reg = Registry(location)
    except SegueError as e:
        raise SegueError(f"--mlflow {location}: {e}") from None
    if not reg.uri.startswith(("http://", "https://")):
        return  # a folder (SQLite) or another scheme: nothing to reach yet
    try:
        urllib.request.urlopen(reg.uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # it answered (a proxy or an older server without /health): reachable
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SegueError(
            f"--mlflow {location}: the tracking server does not answer ({reason}); start it, fix the URI, "
            "or leave it out (`segue tune ... --resume --mlflow URI` logs the finished session later)"
        ) from None


def print_summary(session: Path, console: object) -> None:
    import json

    from rich.table import Table

    s = json.loads((session / "summary.json").read_text())
    trials = json.loads((session / "trials.json").read_text())
    counts = {k: sum(t["status"] == k for t in trials) for k in ("ok", "pruned", "failed", "skipped")}
    best = s["best"]
    console.print(  # type: ignore[attr-defined]
        f"{len(trials)} trials: {counts['ok']} finished, {counts['pruned']} pruned, {counts['failed']} failed, "
        f"{counts['skipped']} skipped"
    )
    if best:
        console.print(f"best: trial {best['number']} {best['params']} (validation {best['value']:.4f})", highlight=False)  # type: ignore[attr-defined]
    test = s.get("test")
    if test:
        t = Table(title=f"test part ({test['queries']} queries), mean [95% CI]", title_justify="left")
        t.add_column("model")
        for c in test["columns"]:
            t.add_column(c, justify="right")
        for m, per in test["intervals"].items():
            t.add_row(m, *(f"{per[c]['mean']:.4f} [{per[c]['low']:.4f}, {per[c]['high']:.4f}]" for c in test["columns"]))
        for m, per in test["comparisons"].items():
            t.add_row(f"{m} - {test['reference']}", *(f"{per[c]['diff']:+.4f} (p {per[c]['p_value']:.3f})" for c in test["columns"]))
        console.print(t)  # type: ignore[attr-defined]
        if test.get("defaults_error"):
            console.print(f"no comparison with the defaults: {test['defaults_error']}", highlight=False, markup=False)  # type: ignore[attr-defined]
    # only what was written: a session whose trials all failed has no best-model/ nor report/
    written = [n for n in ("card.html", "tune.html", "best-model/", "report/", "trials.json") if (session / n.rstrip("/")).exists()]
    console.print(f"results in {session}: {', '.join(written)}")  # type: ignore[attr-defined]


def experiment(
    config: Annotated[Path, typer.Argument(help="The experiment TOML (store, split, protocol, \\[\\[models]] with family+config or folder).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Report folder (default: the file's `out`, else reports/experiment-<name>).")] = None,
) -> None:
    """Compare several models (fitted with their configs, or model folders) on one split: one report.

    The report has CIs, paired significance against a reference, the cost of each model (fit
    seconds, peak memory, model size) and experiment.md, a Markdown table for a paper or a PR."""
    from rich.console import Console

    from segue.tuning.experiment import run_experiment

    console = Console()
    folder, table = run_experiment(config, out=out, console=console)
    print(table)  # unwrapped: it is meant to be copied
    console.print(f"report written to {folder}/experiment.md and {folder}/report.html", highlight=False)
