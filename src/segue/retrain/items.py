"""`segue items add models:/NAME@ALIAS items.parquet`: items added to a registered (served) model.

A registered version is never changed in place (its artifact is what was evaluated and promoted).
Adding items makes a new version instead: the version the URI names is downloaded, copied, the new
items are appended to the copy's items_added.parquet (segue.serving.items.add_items: checked first,
nothing written on a bad row), and the copy is registered with `parent` = that version and tags
saying what was added. Then:
  - an alias URI moves that alias to the new version; for `production` this is a promotion
    (segue.ops.registry.switch_production): the alias moves, then with `server` the running
    server reloads the new version (a refusal puts the alias back);
  - a version-number URI leaves the aliases alone (the new version is the `candidate`); with
    `server`, the server is still told to reload the new version.
The parent's evaluation is not copied: the new version ranks a larger catalogue.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from segue.ops.registry import (
    PRODUCTION,
    SKIP_IN_ARTIFACT,
    Registry,
    default_cache,
    notify_reload,
    parse_model_uri,
    switch_production,
)


def add_items_registered(
    registry: Registry,
    uri: str,
    parquet: str | Path,
    *,
    server: str | None = None,
    admin_key: str | None = None,
    cache: str | Path | None = None,
) -> dict[str, Any]:
    """Register a copy of the version `uri` names with the items of `parquet` added (see the
    module docstring). Returns add_items' counts with "name", "parent", "version", "alias" (the
    alias moved, or None) and "served" (the server's model after its reload, or None)."""
    from segue.retrain.loop import registry_config
    from segue.serving.items import add_items

    name, number, alias = parse_model_uri(uri)
    parent = registry.version(name, number or alias or "")
    cache = Path(cache) if cache is not None else default_cache(registry)
    folder = registry.download(name, parent.version, cache)
    parquet = Path(parquet)
    with tempfile.TemporaryDirectory(prefix="segue-items-") as tmp:
        staged = Path(tmp) / folder.name
        shutil.copytree(folder, staged, ignore=shutil.ignore_patterns(*SKIP_IN_ARTIFACT))
        out = add_items(staged, parquet)  # a bad file raises here: nothing is registered
        info = registry.register(
            name,
            staged,
            store_checksum=parent.tags.get("store_checksum", ""),
            split=parent.tags.get("split", ""),
            config=registry_config(staged),
            parent=parent.version,
            tags={
                "items_added": json.dumps({"file": str(parquet.resolve()), "added": out["added"], "total_added": out["total_added"]}),
                "model_folder": f"models:/{name}/{parent.version} + {parquet.name}",
            },
            description=f"version {parent.version} with {out['added']} item(s) added from {parquet.name}",
        )
    served = None
    if alias == PRODUCTION:
        served = switch_production(registry, name, info.version, server=server, admin_key=admin_key, reason="items add", cache=cache)["served"]
    else:
        if server:
            served = notify_reload(server, admin_key, registry.download(name, info.version, cache))["model"]
        if alias:
            registry.client.set_registered_model_alias(name, alias, info.version)
    return out | {"name": name, "parent": parent.version, "version": info.version, "alias": alias, "served": served}


items_app = typer.Typer(help="Add items to a trained model without retraining.", no_args_is_help=True, add_completion=False)


@items_app.callback()
def _items_group() -> None:
    # A callback keeps `items` a group (`segue items add ...`) though it has one command so far.
    pass


@items_app.command("add")
def items_add(
    run: Annotated[str, typer.Argument(help="Run folder of a model trained with item features, or models:/NAME@ALIAS (or models:/NAME/VERSION) from the registry.")],
    parquet: Annotated[Path, typer.Argument(help="Parquet of new items: item, name, artist, album, genre, type, meta, vector.")],
    registry: Annotated[str | None, typer.Option("--registry", "-r", help="Registry folder or MLflow tracking URI, for a models:/ RUN (default: $SEGUE_REGISTRY).")] = None,
    server: Annotated[str | None, typer.Option("--server", help="A running server's URL to reload afterwards (several workers: the supervisor's --admin-port URL).")] = None,
    admin_key: Annotated[str | None, typer.Option("--admin-key", help="The server's admin key (default: $SEGUE_ADMIN_KEY).")] = None,
) -> None:
    """Add new items to a trained model: features-only vectors, served after the next (re)load.

    For a registry URI, a new version holds the added items (its parent: the version named); an
    alias moves to it (production: a promotion), and --server reloads the running server."""
    from rich.console import Console
    from rich.markup import escape

    from segue.serving.items import add_items

    console = Console()
    if run.startswith("models:/"):
        out = add_items_registered(Registry(registry), run, parquet, server=server, admin_key=admin_key)
        where = f"version {out['version']} of {out['name']} (parent {out['parent']})" + (f", now @{out['alias']}" if out["alias"] else "")
    else:
        out = add_items(run, parquet)
        where = run
        if server:
            out["served"] = notify_reload(server, admin_key, run)["model"]
    if out.get("ignored_columns"):
        console.print(
            f"[yellow]warning:[/] {escape(str(parquet))}: column(s) {escape(', '.join(out['ignored_columns']))} "
            "not read by this run (not among its features); ignored",
            highlight=False, soft_wrap=True,
        )
    blank = out.get("blank_rows") or []
    if blank:
        shown = ", ".join(f"row {i}: {e}" for i, e in blank[:3]) + (", ..." if len(blank) > 3 else "")
        console.print(
            f"[yellow]warning:[/] {escape(str(parquet))}: {len(blank)} item(s) with no feature value at all ({escape(shown)}): "
            "their vectors are the same features-only default, so nothing tells them apart",
            highlight=False, soft_wrap=True,
        )
    unk = ", ".join(f"{n} {c}" for n, c in out["unknown_values"].items() if c)
    examples = out.get("known_examples", {})
    if unk and examples:  # the form of a value the run knows: an artist name where it keeps creator keys matches nothing
        seen = ", ".join(f"{n} values are like '{v}'" for n, v in examples.items())
        keys = " (artist reads artist_key / creator_key first, album album_key)" if {"artist", "album"} & set(examples) else ""
        unk += f", composed as the feature's <unk>: the run's {seen}{keys}"
    after = f"; server {server} reloaded" if out.get("served") else "; POST /admin/reload (or restart) serves them"
    console.print(
        f"[green]added[/] {out['added']} item(s) to {escape(where)} ({out['total_added']} added in all)"
        + (f"; items with only unseen values: {escape(unk)}" if unk else "")
        + escape(after),
        highlight=False,
        soft_wrap=True,
    )


__all__ = ["add_items_registered", "items_app"]
