"""`segue items add models:/NAME@ALIAS items.parquet`: items added to a registered (served) model.

A registered version is never changed in place (its artifact is what was evaluated and promoted).
Adding items makes a new version instead: the version the URI names is downloaded, copied, the new
items are appended to the copy's items_added.parquet (segue.serving.items.add_items: checked first,
nothing written on a bad row), and the copy is registered with `parent` = that version and tags
saying what was added. Then:
  - an alias URI moves that alias to the new version; for `production` this is a promotion
    (segue.ops.registry.switch_production): with `server`, the running server reloads the new
    version first and the alias moves only once it serves it;
  - a version-number URI leaves the aliases alone (the new version is the `candidate`); with
    `server`, the server is still told to reload the new version.
The parent's evaluation is not copied: the new version ranks a larger catalogue.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

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
    from segue.ops.retrain import registry_config
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


__all__ = ["add_items_registered"]
