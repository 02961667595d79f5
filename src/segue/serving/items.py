"""Items added to a trained run without retraining: `segue items add RUN items.parquet` (RUN may
also be a registry URI, models:/NAME@ALIAS: segue.retrain.items makes a new version).

A run trained with an `items` section (segue.models.item_encoder) composes the vector of an item it
never saw from its features, with the feature vocabularies saved in the run. `add_items` checks a
Parquet of new items and appends it to the run's `items_added.parquet` (written atomically). Every
load of the run for serving (`Engine.load`, so also `POST /admin/reload`) composes those items'
vectors, appends them to the vocabulary as tokens V, V + 1, ... (training count 0) and to the
catalogue, so they are recommendable and usable in histories; answers mark them features_only.

The Parquet: `item` (external id, required, not already in the run), then any of `name`,
`creator` / `artist` (the artist feature reads creator_key / artist_key first, as the store keeps
creator keys), `album` / `album_key`, `genre` (text, comma-separated text or a list), `type`,
`meta` (JSON text with more keys, for meta.<key> features), and `vector` (the content vector, for
runs trained with content vectors). A value the run never saw maps to the feature's <unk>: on a
store whose items carry creator keys (MPD: artist URIs) the artist values are those keys, so an
artist name alone matches nothing there (the command names a value the run knows, to show the form).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segue.data.item_features import ADDED_FILE, read_new_items
from segue.data.item_features import new_item_rows as _rows
from segue.errors import InputError, SegueError

NAME_COLUMNS = ("name", "creator", "album")


def _apply(model: Any, table: Any, path: Path) -> list[int]:
    """Compose and add the items of `table` to `model`; returns their tokens."""
    from segue.models.item_encoder import add_new_items  # deferred: jax

    return add_new_items(model, table, path)


def _check_model(model: Any, run: Path) -> None:
    if getattr(model, "item_features", None) is None:
        raise SegueError(f"{run}: this model cannot add items (train it with an items section: features or content vectors)")


def add_items(run: str | Path, parquet: str | Path) -> dict[str, Any]:
    """Check the new items of `parquet` against the run and append them to its items_added.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from segue.data.item_features import raw_features
    from segue.io import atomic_path
    from segue.models.base import load_model

    run, parquet = Path(run), Path(parquet)
    model = load_model(run)
    _check_model(model, run)
    new = read_new_items(parquet)
    old = pq.read_table(run / ADDED_FILE) if (run / ADDED_FILE).exists() else None
    known = {e for e in model._check_fitted().external_ids if e is not None}
    if old is not None:
        known |= {str(x) for x in old.column("item").to_pylist()}
    rows = _rows(new, parquet)
    seen: dict[str, int] = {}
    for i, r in enumerate(rows):
        if r["external_id"] in known:
            raise InputError(f"item '{r['external_id']}' is already in the run", path=parquet, record=f"row {i + 1}",
                             field="item", expected="an item the run does not have")
        if r["external_id"] in seen:
            raise InputError(f"item '{r['external_id']}' is repeated (first in row {seen[r['external_id']] + 1})", path=parquet,
                             record=f"row {i + 1}", field="item", expected="each new item once")
        seen[r["external_id"]] = i
    _apply(model, new, parquet)  # composes: a bad row fails before anything is written
    feats = model.item_features
    raw = raw_features(feats.names, rows)
    unknown = {n: sum(1 for vals in raw[n] if vals and not any(feats.vocabs[n].knows(v) for v in vals)) for n in feats.names}
    # rows with no feature value at all (and no content vector): their vectors tell them apart from nothing
    has_vector = "vector" in new.column_names and feats.content_dim
    vectors = new.column("vector").to_pylist() if has_vector else [None] * len(rows)
    blank = [(i + 1, r["external_id"]) for i, r in enumerate(rows) if not any(raw[n][i] for n in feats.names) and vectors[i] is None]
    # ids are text, whatever the file's column type: an integer column merges with earlier text ids
    new = new.set_column(new.column_names.index("item"), "item", pa.array([str(x) for x in new.column("item").to_pylist()], pa.string()))
    table = new if old is None else _merged(old, new, parquet)
    with atomic_path(run / ADDED_FILE) as tmp:
        pq.write_table(table, tmp)
    # A value the run knows in another form (an artist's name where the run keeps the store's
    # creator keys, as MPD's artist URIs) is unseen too: a value the run knows shows the form.
    examples = {n: feats.vocabs[n].values[0] for n in feats.names if unknown[n] and feats.vocabs[n].values}
    return {"added": len(rows), "total_added": table.num_rows, "unknown_values": unknown, "known_examples": examples, "blank_rows": blank,
            "ignored_columns": ignored_columns(new.column_names, feats.names, feats.content_dim)}


def _merged(old: Any, new: Any, path: Path) -> Any:
    """The run's added items and the new ones as one table; a column typed differently is named."""
    import pyarrow as pa

    try:
        return pa.concat_tables([old, new], promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        clash = [f.name for f in new.schema if f.name in old.schema.names and old.schema.field(f.name).type != f.type]
        name = clash[0] if clash else new.column_names[0]
        got = new.schema.field(name).type
        want = old.schema.field(name).type if name in old.schema.names else "?"
        raise InputError(f"column '{name}' holds {got}, but the run's added items hold {want}", path=path, field=name,
                         expected=f"{want} values, as in the items added before") from None


# Columns the catalogue or the composition reads whatever the run's features (names are shown).
READ_ALWAYS = frozenset({"item", "name", "creator", "artist", "album", "creator_key", "artist_key", "album_key", "meta"})


def ignored_columns(columns: list[str], features: list[str], content_dim: int) -> list[str]:
    """Columns of a new-items table the run reads nothing from: a feature it was not trained with
    (or a misspelt one: 'artsit'), or `vector` for a run without content vectors."""
    read = set(READ_ALWAYS)
    if "genre" in features:
        read |= {"genre", "genres"}
    if "type" in features:
        read.add("type")
    read |= {f[5:] for f in features if f.startswith("meta.")}
    if content_dim:
        read.add("vector")
    return [c for c in columns if c not in read]


def apply_added_items(model: Any, folder: str | Path) -> list[int]:
    """Add the run's items_added.parquet to a loaded model (vocabulary extended); their tokens
    (segue.models.item_encoder.apply_added_items: `segue continue` and `segue export` apply them too)."""
    from segue.models.item_encoder import apply_added_items as apply

    return apply(model, folder)


def with_added_names(catalogue: Any, folder: str | Path) -> Any:
    """The catalogue with the added items' names, creators and albums."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from segue.data.item_features import added_item_table
    from segue.serving.catalogue import Catalogue

    t = added_item_table(folder)
    if t is None:
        return catalogue
    t = t.rename_columns(["external_id", "name", "creator", "album"])
    # The base table already has (nameless) rows for the added tokens: the added rows replace them.
    base = catalogue.table.filter(pc.invert(pc.is_in(catalogue.table.column("external_id"), value_set=t.column("external_id"))))
    return Catalogue(catalogue.vocab, pa.concat_tables([base, t]))


__all__ = ["ADDED_FILE", "add_items", "apply_added_items", "ignored_columns", "with_added_names"]
