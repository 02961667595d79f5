"""`segue registry ...` (list, show, register, promote, rollback) and `segue rollback`: command
functions over segue.ops.registry, registered lazily by segue.commands."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

registry_app = typer.Typer(
    help="The model registry (MLflow): list, show, register, promote and roll back versions.",
    no_args_is_help=True,
    add_completion=False,
)

RegistryOpt = Annotated[
    str | None,
    typer.Option("--registry", "-r", help="Registry folder (embedded SQLite) or MLflow tracking URI (default: $SEGUE_REGISTRY)."),
]
ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="A running server's URL to reload after the change (e.g. http://127.0.0.1:8000; with several "
        "workers, the supervisor's --admin-port URL).",
    ),
]
KeyOpt = Annotated[str | None, typer.Option("--admin-key", help="The server's admin key (default: $SEGUE_ADMIN_KEY).")]


def _open(registry: str | None, *, create: bool = True):  # noqa: ANN202 (imports deferred: --help stays fast)
    """The registry; read-only commands pass create=False, so a mistyped path is an error, not a new registry."""
    from segue.ops.registry import Registry

    return Registry(registry, create=create)


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _headline(tags: dict[str, str]) -> str:
    ev = json.loads(tags.get("evaluation") or "{}")
    # ndcg@100 is recorded only for held-out users (the strong protocol), where it is the headline.
    key = next((k for k in ("ndcg@100", "ndcg@10", "recall@10") if k in ev), next(iter(ev), None))
    if key is None:
        return "-"
    mean, low, high = ev[key]
    return f"{key} {mean:.4f} [{low:.4f}, {high:.4f}]"


@registry_app.command("list")
def list_versions(
    name: Annotated[str | None, typer.Argument(help="Model name (default: every model).")] = None,
    registry: RegistryOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Versions with their aliases, parent, store checksum and headline metric."""
    reg = _open(registry, create=False)
    console = Console()
    models = [name] if name else reg.names()
    if as_json:
        print(json.dumps({m: [v.to_dict() for v in reg.versions(m)] for m in models}, indent=2, default=str))
        return
    for model in models:
        rows = [
            (
                v.version,
                "\n".join(v.aliases),  # one a line: the column is as wide as the longest alias
                _when(v.created_ms),
                v.parent or "-",
                (v.tags.get("store_checksum") or "")[:12],
                v.tags.get("split", ""),
                _headline(v.tags),
                json.loads(v.tags.get("decision") or "{}").get("verdict", "-"),
            )
            for v in reg.versions(model)
        ]
        t = _versions_table(f"{model}  ({reg.location})", rows, gap=2)
        if console.measure(t, options=console.options.update_width(10_000)).maximum > console.width:
            t = _versions_table(f"{model}  ({reg.location})", rows, gap=1)  # 80 columns: every one counts
        console.print(t)


def _versions_table(title: str, rows: list[tuple[str, ...]], gap: int) -> Any:
    """The table of `segue registry list`, `gap` spaces between columns.

    Eight columns do not fit 80 (a pipe, CliRunner) in a boxed table: no vertical rules, and what
    must read whole (version, aliases, parent, decision) never wraps; dates and figures wrap at
    their spaces and long names fold, so nothing is cut (aliases had read "candid…")."""
    from rich import box
    from rich.table import Table

    t = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, gap - 1, 0, 0)
    )
    for col in ("version", "aliases", "created (UTC)", "parent", "store", "split", "evaluation", "decision"):
        t.add_column(col, no_wrap=col in ("version", "aliases", "parent", "decision"), overflow="fold")
    for r in rows:
        t.add_row(*r)
    return t


@registry_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version number or alias.")] = "production",
    registry: RegistryOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Everything a version records: tags, evaluation with CIs, decision, run metrics and params."""
    info = _open(registry, create=False).version(name, version, with_run=True)
    d = info.to_dict() | {"params": info.params}
    if as_json:
        print(json.dumps(d, indent=2, default=str))
        return
    console = Console()
    console.print(f"[bold]{escape(name)}[/] version {info.version}  aliases: {', '.join(info.aliases) or '-'}  created {_when(info.created_ms)} UTC")
    console.print(f"source {escape(info.source)}  run {info.run_id}", highlight=False)
    for k in sorted(info.tags):
        if k in ("evaluation", "decision"):
            continue
        console.print(f"  {k:<20} {escape(info.tags[k])}", highlight=False, soft_wrap=True)
    ev = info.evaluation()
    if ev:
        console.print(f"evaluation on {escape(info.tags.get('eval_split') or '?')} (mean [95% CI]):")
        for k, (m, lo, hi) in ev.items():
            console.print(f"  {k:<20} {m:.4f} [{lo:.4f}, {hi:.4f}]", highlight=False)
    if info.tags.get("decision"):
        console.print("decision: " + escape(info.tags["decision"]), soft_wrap=True, highlight=False)
    console.print(f"{len(info.params)} params, {len(info.metrics)} metrics in the run")


@registry_app.command("register")
def register(
    name: Annotated[str, typer.Argument(help="Model name.")],
    model: Annotated[Path, typer.Argument(help="Model folder (a run folder of segue train).")],
    store: Annotated[Path, typer.Option(help="The store it was trained on (its checksum is recorded).")],
    split: Annotated[str, typer.Option(help="The split it was trained on.")],
    eval_split: Annotated[str | None, typer.Option(help="Evaluate on this split (by its kind's protocol: temporal, leave_last_out, strong, ...) and record the metrics with CIs.")] = None,
    promote: Annotated[bool, typer.Option("--promote", help="Also make it the production version.")] = False,
    registry: RegistryOpt = None,
    server: ServerOpt = None,
    admin_key: KeyOpt = None,
) -> None:
    """Record a trained model folder as a new version (optionally evaluated and promoted)."""
    from segue.data.store import Store
    from segue.errors import ConfigError
    from segue.models.base import load_model
    from segue.retrain.evaluate import evaluate_models
    from segue.retrain.loop import registry_config

    with Store.open(store) as s:
        s.require_split(split)  # a version must name a split the store has (it was recorded as given)
        checksum = s.checksum
    trained = trained_checksum(model)
    if trained is not None and trained != checksum:
        # the recorded checksum would claim a store the model never saw (and retrain reads it as such)
        raise ConfigError(
            f"{model}: was trained on another store (checksum {trained}, its store_checksum.txt) than --store {store} "
            f"(checksum {checksum}); pass the store it was trained on"
        )
    reg = _open(registry)  # after the checks: a refused registration creates no registry
    evaluation: dict[str, list[float]] = {}
    if eval_split:
        figures = evaluate_models({"model": load_model(model)}, store, eval_split)
        evaluation = figures["model"]
    info = reg.register(
        name,
        model,
        store_checksum=checksum,
        split=split,
        config=registry_config(model),
        evaluation=evaluation,
        eval_split=eval_split,
        parent=reg.alias(name, "production"),
    )
    console = Console()
    console.print(f"registered [bold]{escape(name)}[/] version {info.version} ({_headline(info.tags)})", highlight=False)
    if promote:
        _switch(registry, name, info.version, server, admin_key, reason="manual (register --promote)")


def trained_checksum(model: Path) -> str | None:
    """The checksum of the store a model folder was trained on: store_checksum.txt (segue train),
    else model.toml's meta; None when neither records one."""
    path = model / "store_checksum.txt"
    if path.is_file():
        return path.read_text().strip() or None
    if (model / "model.toml").is_file():
        from segue.models.base import model_meta, read_model_header

        got = model_meta(read_model_header(model)).get("store_checksum")
        return str(got) if got else None
    return None


def _switch(registry: str | None, name: str, version: str | None, server: str | None, key: str | None, reason: str = "manual") -> None:
    from segue.ops.registry import switch_production

    # create=False: promoting needs a registered version, so a mistyped path is an error, not a new registry
    out = switch_production(_open(registry, create=False), name, version, server=server, admin_key=key, reason=reason)
    console = Console()
    what = "rolled back" if version is None else "promoted"
    console.print(f"production: {escape(name)} version {out['from'] or '-'} -> {out['to']} ({what})", highlight=False)
    if out["served"]:
        console.print(f"server {escape(server or '')} reloaded: now {out['served']['run_id']} ({out['served']['version']})", highlight=False)
    if out.get("warning"):
        Console(stderr=True).print(f"[yellow]warning:[/] {escape(out['warning'])}", highlight=False, soft_wrap=True)


@registry_app.command("promote")
def promote_cmd(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version number or alias (e.g. candidate).")],
    registry: RegistryOpt = None,
    server: ServerOpt = None,
    admin_key: KeyOpt = None,
) -> None:
    """Make a version the production one (and reload a running server)."""
    _switch(registry, name, version, server, admin_key)


@registry_app.command("rollback")
def rollback_cmd(
    name: Annotated[str, typer.Argument(help="Model name.")],
    registry: RegistryOpt = None,
    server: ServerOpt = None,
    admin_key: KeyOpt = None,
) -> None:
    """Restore the production version that the current one replaced (and reload a running server)."""
    rollback(name, registry, server, admin_key)


def rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    registry: RegistryOpt = None,
    server: ServerOpt = None,
    admin_key: KeyOpt = None,
) -> None:
    """Restore the previous production version of a registered model and reload the server."""
    _switch(registry, name, None, server, admin_key)
