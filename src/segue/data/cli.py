"""`segue data ...`: build, inspect and split stores (registered lazily by segue.commands).

The help of `data build` and `data add-split` is generated from the option tables kept beside
each source (`OPTIONS` in segue/data/sources/*.py) and split kind (`SPLIT_DOCS` in splits.py), the
same tables that check the keys, so what is documented is what is accepted. README.md carries the
same text (`python -m segue.data.cli` prints it; a test keeps the two equal).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from segue.data.sources import SHOWN_KINDS, open_source, sources_help
from segue.data.splits import parse_spec, split_help
from segue.errors import ConfigError, SegueError

# Markdown: the generated option lists wrap with a hanging indent.
data_app = typer.Typer(
    help="Build, inspect and split stores.", no_args_is_help=True, add_completion=False, rich_markup_mode="markdown"
)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


def parse_kv(pairs: list[str] | None, what: str) -> dict[str, Any]:
    """'key=value' strings -> dict; values parsed as JSON when they can be (numbers, true/false).
    A key given twice is refused: the last one silently won."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"{what} '{pair}': expected key=value")
        k, v = pair.split("=", 1)
        k = k.strip()
        if k in out:
            raise ConfigError(f"{what} '{k}' is given twice ({k}={json.dumps(out[k])} and {pair.strip()}); give it once")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def parse_split(text: str) -> dict[str, Any]:
    """'kind' or 'kind:key=value,key=value' -> split spec dict."""
    kind, _, rest = text.partition(":")
    spec: dict[str, Any] = {"kind": kind.strip()}
    if rest:
        spec |= parse_kv(rest.split(","), f"split '{text}': parameter")
    return spec


BUILD_HELP = f"""Import a source into a new store (atomically), with splits and vocabularies.

Source options are given as `--option key=value` (repeatable); values are read as JSON when they parse (numbers, true/false), else as text. The columns of a CSV/Parquet table named by convention are mapped without options, and the command says what it mapped. An existing store is replaced only with `--force`.

{sources_help()}

**Split specs** (`--split`, repeatable): `kind[:key=value,...]`

{split_help()}
"""

ADD_SPLIT_HELP = f"""Add a split (and its vocabulary) to an existing store, atomically.

Split specs: `kind[:key=value,...]`, for example `leave_last_out:min_length=5`.

{split_help()}
"""


@data_app.command("build", help=BUILD_HELP)
def data_build(
    kind: Annotated[str, typer.Argument(help=f"Source kind: {', '.join(SHOWN_KINDS)} (options above).")],
    path: Annotated[Path | None, typer.Argument(help="Input file or folder (none for synthetic).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Store file to write.")] = Path("segue.duckdb"),
    split: Annotated[
        list[str] | None,
        typer.Option("--split", "-s", metavar="SPEC", help="Split spec, repeatable: kind[:key=value,...] (kinds above). Default: random_sequence."),
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", metavar="KEY=VALUE", help="Source option key=value, repeatable (keys above, per source).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed for splits.")] = 0,
    min_count: Annotated[int, typer.Option(help="Minimum training count for the vocabulary.")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Replace the store if --out exists.")] = False,
) -> None:
    from segue.data.store import BuildConfig, build_store, is_segue_store

    if out.is_dir():  # checked first: --force cannot make a folder a store file
        raise ConfigError(f"{out} is a folder (expected a store file path); choose another --out")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to replace it, or choose another --out")
    if out.exists() and path.exists() and out.resolve() == path.resolve():
        raise ConfigError(f"{out} is the source file itself; choose another --out")
    if out.exists() and not is_segue_store(out):  # --force replaces a store, never someone's other file
        raise ConfigError(
            f"{out} exists and is not a segue store (--force replaces only a store that `segue data build` "
            "wrote); move it away yourself or choose another --out"
        )
    splits = [parse_split(s) for s in split] if split else [{"kind": "random_sequence"}]
    for spec in splits:
        parse_spec(spec)  # a bad spec fails now, not after the import
    source = open_source(kind, path, **parse_kv(option, "source option"))
    console = _console()
    notes = getattr(source, "notes", None)
    for line in notes() if notes else []:
        style = "yellow" if line.startswith("warning:") else "dim"
        console.print(f"[{style}]{escape(line)}[/]", soft_wrap=True)
    config = BuildConfig(seed=seed, splits=splits, vocab_min_count=min_count)
    existed = out.exists()
    with build_progress() as progress:
        build_store(source, out, config, progress=progress)
    console.print(f"[green]{'replaced the existing store' if existed else 'built'}[/] {escape(str(out))}")
    build_warnings(out, getattr(source, "timestamp_unit", None), getattr(source, "items", None))
    print_stats(out)


FAR_SECONDS = 10**11


def build_warnings(store_path: Path, unit: str | None, items_table: Path | None) -> None:
    """What a built store's content says went wrong, read in one look at it:
    - event times thousands of years away: epoch milliseconds read as seconds put events in year
      55,840 without a word, and every temporal split and cut date then misbehaves;
    - an item table (--option items=) that names none of the events' items: the usual sign of a
      wrong id column (e.g. renumbered ids), which left every item nameless without a word (only
      item table rows carry meta, so an item with meta was matched)."""
    from segue.data.store import Store

    with Store.open(store_path) as store:
        (far,) = store.con.execute("SELECT max(abs(ts)) FROM events").fetchone()
        total, matched = store.con.execute("SELECT count(*), count(meta) FROM items").fetchone()
        sample = [r[0] for r in store.con.execute("SELECT external_id FROM items ORDER BY item_id LIMIT 3").fetchall()]
    if far is not None and far >= FAR_SECONDS:
        hint = {"s": "--option timestamp_unit=ms (or us)", "ms": "--option timestamp_unit=us"}.get(unit or "", "")
        _console().print(
            f"[yellow]warning: event times reach {far:,} unix seconds (year {1970 + far // 31_556_952:,}): are they "
            f"milliseconds or microseconds read as {'seconds' if unit in (None, 's') else unit}?"
            f"{' Rebuild with ' + hint if hint else ''}[/]",
            soft_wrap=True,
        )
    if items_table is not None and total and not matched:
        _console().print(
            f"[yellow]warning: the item table {escape(str(items_table))} names none of the {total:,} items of the events "
            f"(whose ids look like: {escape(', '.join(sample))}); is its id column the right one? (--option items_id=<column>)[/]",
            soft_wrap=True,
        )


@data_app.command("stats")
def data_stats(
    store: Annotated[Path, typer.Argument(help="Store file.")],
    plot: Annotated[Path | None, typer.Option(help="PNG to write (default: beside the store).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Counts, per-split parts, unknown-item rates, length and popularity distributions, and a plot."""
    print_stats(store, plot=plot, as_json=as_json)


@data_app.command("add-split", help=ADD_SPLIT_HELP)
def data_add_split(
    store: Annotated[Path, typer.Argument(help="Store file.")],
    split: Annotated[str, typer.Argument(help="Split spec: kind[:key=value,...] (kinds above).")],
) -> None:
    from segue.data.splits import add_split

    if not store.exists():
        raise SegueError(f"{store}: no store here (build one with `segue data build`)")
    name = add_split(str(store), parse_split(split))
    _console().print(f"[green]added split[/] {escape(name)} to {escape(str(store))}")
    print_split(store, name)


def print_split(store_path: Path, name: str) -> None:
    """The parts of one split: sequences, events, items, unknown-item rate."""
    from segue.data.stats import store_stats
    from segue.data.store import Store

    with Store.open(store_path) as store:
        stats = store_stats(store)
    _print_split_table(name, stats["splits"][name])


def _print_split_table(name: str, s: dict[str, Any]) -> None:
    from rich.table import Table

    st = Table(title=f"split {name} ({s['kind']}), vocabulary {s['vocab_size']:,} tokens")
    for col in ("part", "sequences", "events", "items", "unknown-item rate"):
        st.add_column(col, justify="right")
    for part, v in s["parts"].items():
        st.add_row(part, f"{v['sequences']:,}", f"{v['events']:,}", f"{v['items']:,}", f"{v['unknown_rate']:.2%}")
    _console().print(st)
    empty = [p for p in ("valid", "test") if not s["parts"].get(p, {}).get("events")]
    if empty:  # said at build time, not first when `segue evaluate` finds no query to score
        parts = " or ".join(empty)
        _console().print(
            f"[yellow]warning: split {escape(name)} has no {parts} events, so nothing can be scored on "
            f"{'them' if len(empty) > 1 else 'it'}[/]",
            soft_wrap=True,
        )


def print_stats(store_path: Path, *, plot: Path | None = None, as_json: bool = False) -> dict[str, Any]:
    from rich.table import Table

    from segue.data.stats import plot_stats, store_stats
    from segue.data.store import Store

    with Store.open(store_path) as store:
        stats = store_stats(store)
        plot = plot or store_path.with_suffix(".stats.png")
        plot_stats(store, plot)
    if as_json:
        print(json.dumps(stats, indent=2, default=str))
        return stats
    console = _console()
    c = stats["counts"]
    console.print(f"[bold]{escape(str(store_path))}[/]  content checksum {stats['checksum']}")
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
        f"gini {p['gini']:.3f}, {p['singletons']:,} items seen once",
        soft_wrap=True,  # one line in a log, never cut inside a figure
    )
    if stats["ratings"] is not None:
        console.print(ratings_line(stats["ratings"]), soft_wrap=True)
    for name, s in stats["splits"].items():
        _print_split_table(name, s)
    console.print(f"plot: {escape(str(plot))}")
    return stats


def ratings_line(r: dict[str, Any]) -> str:
    """One line on a store's ratings (store_stats' "ratings"): scale, mean, each value's share and
    the per-user spread the hybrid normalisation reads."""
    line = f"ratings: {r['min']:g} to {r['max']:g}, mean {r['mean']:.2f}"
    if r["values"]:
        line += "; " + ", ".join(f"{v:g}: {share:.1%}" for v, share in r["values"].items())
    if r["user_sd_median"] is not None:
        line += (
            f"; per user (of {r['users_with_two_or_more']:,} with two or more): median sd "
            f"{r['user_sd_median']:.2f}, {r['low_variance_share']:.0%} with variance < 1 (the hybrid "
            "normalisation leans on the absolute scale for them)"
        )
    return line


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
                console=_console(stderr=True),
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


def readme_reference() -> str:
    """The source and split reference as Markdown, for README.md (the text of the --help pages)."""
    return (
        "### Sources: `segue data build KIND PATH --option key=value ...`\n\n"
        + sources_help()
        + "\n\n### Splits: `--split` and `segue data add-split`, `kind[:key=value,...]`\n\n"
        + split_help()
        + "\n"
    )


if __name__ == "__main__":  # python -m segue.data.cli: print the README section
    print(readme_reference(), end="")
