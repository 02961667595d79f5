"""The `segue` command: thin typer wrappers over the Python API."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from segue.errors import SegueError

app = typer.Typer(help="segue: interaction logs -> trained, evaluated and served recommenders.", no_args_is_help=True)
data_app = typer.Typer(help="Build and inspect stores.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Print segue's own errors as one clear line and exit non-zero (no traceback for bad input)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SegueError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def parse_kv(pairs: list[str] | None, what: str) -> dict[str, Any]:
    """'key=value' strings -> dict; values parsed as JSON when they can be (numbers, true/false)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SegueError(f"{what} '{pair}': expected key=value")
        k, v = pair.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def parse_split(text: str) -> dict[str, Any]:
    """'kind' or 'kind:key=value,key=value' -> split spec dict."""
    kind, _, rest = text.partition(":")
    spec: dict[str, Any] = {"kind": kind.strip()}
    if rest:
        spec |= parse_kv(rest.split(","), "split option")
    return spec


# ---------------------------------------------------------------------------------------------
# data


@data_app.command("build")
@friendly_errors
def data_build(
    kind: Annotated[str, typer.Argument(help="Source format: mpd, movielens, seqtext, csv, parquet, synthetic.")],
    path: Annotated[Path | None, typer.Argument(help="Input file or folder (none for synthetic).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Store file to write.")] = Path("segue.duckdb"),
    split: Annotated[
        list[str] | None,
        typer.Option("--split", "-s", help="Split spec, repeatable: kind[:key=value,...]. Default: random_sequence."),
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Source option key=value, repeatable (e.g. user=userId).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for splits.")] = 0,
    min_count: Annotated[int, typer.Option(help="Minimum training count for the vocabulary.")] = 1,
) -> None:
    """Import a source into a new store (atomically), with splits and vocabularies."""
    from segue.data.sources import open_source
    from segue.data.store import BuildConfig, build_store

    source = open_source(kind, path, **parse_kv(option, "source option"))
    config = BuildConfig(
        seed=seed,
        splits=[parse_split(s) for s in split] if split else [{"kind": "random_sequence"}],
        vocab_min_count=min_count,
    )
    with build_progress() as progress:
        build_store(source, out, config, progress=progress)
    console.print(f"[green]built[/] {out}")
    print_stats(out)


@data_app.command("stats")
@friendly_errors
def data_stats(
    store: Annotated[Path, typer.Argument(help="Store file.")],
    plot: Annotated[Path | None, typer.Option(help="PNG to write (default: beside the store).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Counts, per-split parts, unknown-item rates, length and popularity distributions, and a plot."""
    print_stats(store, plot=plot, as_json=as_json)


@data_app.command("add-split")
@friendly_errors
def data_add_split(
    store: Annotated[Path, typer.Argument(help="Store file.")],
    split: Annotated[str, typer.Argument(help="Split spec: kind[:key=value,...].")],
) -> None:
    """Add a split (and its vocabulary) to an existing store, atomically."""
    from segue.data.splits import add_split

    name = add_split(str(store), parse_split(split))
    console.print(f"[green]added split[/] {name} to {store}")


def print_stats(store_path: Path, *, plot: Path | None = None, as_json: bool = False) -> dict[str, Any]:
    from segue.data.stats import plot_stats, store_stats
    from segue.data.store import Store

    with Store.open(store_path) as store:
        stats = store_stats(store)
        plot = plot or store_path.with_suffix(".stats.png")
        plot_stats(store, plot)
    if as_json:
        print(json.dumps(stats, indent=2, default=str))
        return stats
    c = stats["counts"]
    console.print(f"[bold]{store_path}[/]  content checksum {stats['checksum']}")
    t = Table()
    for col in ("sequences", "items", "events", "rated events"):
        t.add_column(col, justify="right")
    t.add_row(f"{c['sequences']:,}", f"{c['items']:,}", f"{c['events']:,}", f"{c['rated_events']:,}")
    console.print(t)
    q = stats["sequence_length"]
    p = stats["popularity"]
    console.print(
        f"length: min {q['min']:.0f}, median {q['median']:.0f}, mean {q['mean']:.1f}, p95 {q['p95']:.0f}, "
        f"max {q['max']:.0f}   popularity: top 1% of items hold {p['top_1pct_share']:.1%} of events, "
        f"gini {p['gini']:.3f}, {p['singletons']:,} items seen once"
    )
    for name, s in stats["splits"].items():
        st = Table(title=f"split {name} ({s['kind']}), vocabulary {s['vocab_size']:,} tokens")
        for col in ("part", "sequences", "events", "items", "unknown-item rate"):
            st.add_column(col, justify="right")
        for part, v in s["parts"].items():
            st.add_row(part, f"{v['sequences']:,}", f"{v['events']:,}", f"{v['items']:,}", f"{v['unknown_rate']:.2%}")
        console.print(st)
    console.print(f"plot: {plot}")
    return stats


def build_progress() -> Any:
    """A rich progress display usable as build_store's progress callback."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    class _P:
        def __enter__(self) -> _P:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:,} {task.fields[unit]}"),
                TimeElapsedColumn(),
                console=err_console,
                transient=False,
                disable=not sys.stderr.isatty(),
            )
            self.progress.__enter__()
            self.tasks: dict[str, Any] = {}
            return self

        def __call__(self, stage: str, done: int, total: int | None) -> None:
            if stage not in self.tasks:
                unit = "events" if stage == "import" else "steps"
                self.tasks[stage] = self.progress.add_task(stage, total=total, unit=unit)
            self.progress.update(self.tasks[stage], completed=done, total=total)

        def __exit__(self, *exc: object) -> None:
            self.progress.__exit__(*exc)

    return _P()


# ---------------------------------------------------------------------------------------------
# demo


@app.command("demo")
@friendly_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Folder for the demo's store, runs and reports.")] = Path("segue-demo"),
    steps: Annotated[str | None, typer.Option(help="Comma-separated subset of steps to run.")] = None,
    serve: Annotated[bool, typer.Option(help="End by serving the demo model (blocks until Ctrl-C).")] = True,
    port: Annotated[int, typer.Option(help="Port for the demo server.")] = 8000,
    seed: Annotated[int, typer.Option(help="Seed for the synthetic corpus and splits.")] = 0,
) -> None:
    """Generate a synthetic playlist corpus and run the whole pipeline on it."""
    from segue.demo import DemoOptions, run_demo

    run_demo(DemoOptions(workdir=workdir, steps=steps.split(",") if steps else None, serve=serve, port=port, seed=seed))


def _register_optional_commands() -> None:
    """Commands whose modules carry heavy imports register lazily (their imports run inside them)."""
    from segue.commands import register_all

    register_all(app)


_register_optional_commands()


if __name__ == "__main__":  # pragma: no cover
    app()
