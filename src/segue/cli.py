"""The `segue` command: thin typer wrappers over the Python API.

Only typer is imported here: the commands' modules (and numpy, DuckDB, JAX behind them) are
imported when a command runs (see segue.commands), so `segue --help` starts in a fraction of a
second. Errors segue raises on purpose (SegueError) print as one message without a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from segue.commands import RootGroup, SegueCommand, SegueGroup
from segue.errors import SegueError

F = TypeVar("F", bound=Callable[..., Any])


def print_error(e: SegueError) -> None:
    from rich.console import Console
    from rich.markup import escape

    # escaped: a message may quote input such as "[x]" or "[/b]", which is not markup
    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)


def friendly_errors(fn: F) -> F:
    """Print segue's own errors as one clear message and exit non-zero (no traceback for bad input)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SegueError as e:
            print_error(e)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


# Libraries that log at INFO: orbax through absl on every checkpoint, gensim on every epoch, JAX on
# its backend. Once the root logger is at INFO (`segue validate`, the demo's validate step), they
# made ~400 of the demo's 650 lines. segue's own loggers ("segue.*") are left as they are.
QUIET_LOGGERS = ("absl", "orbax", "jax", "gensim", "smart_open")


def quiet_third_party_logs() -> None:
    """Raise the loggers of QUIET_LOGGERS to WARNING (warnings and errors still show); one set
    quieter on purpose stays so."""
    import logging

    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:  # NOTSET (0) included: it would follow the root logger
            logger.setLevel(logging.WARNING)


class _Root(RootGroup):
    """The root group: every command under it reports SegueError as one message and exit status 2,
    with third-party INFO logs quieted (quiet_third_party_logs)."""

    def invoke(self, ctx: Any) -> Any:
        quiet_third_party_logs()
        try:
            return super().invoke(ctx)
        except SegueError as e:
            print_error(e)
            raise typer.Exit(2) from None


app = typer.Typer(cls=_Root, no_args_is_help=True, rich_markup_mode=None)


@app.callback()
def main() -> None:
    """segue: interaction logs -> trained, evaluated and served recommenders."""


@app.command("demo", cls=SegueCommand)
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


def __getattr__(name: str) -> Any:
    # segue.demo imports these helpers from here; they live with the data commands.
    if name in ("print_stats", "build_progress", "parse_kv", "parse_split"):
        from segue.data import cli as data_cli

        return getattr(data_cli, name)
    raise AttributeError(f"module 'segue.cli' has no attribute '{name}'")


__all__ = ["SegueGroup", "app", "friendly_errors"]


if __name__ == "__main__":  # pragma: no cover
    app()
