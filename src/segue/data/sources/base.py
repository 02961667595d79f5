"""What every source yields: column batches of sequences, items and events.

A source streams `Chunk`s so that ingest memory stays bounded whatever the input size; the store
builder appends them to staging tables and resolves ids and order in SQL (DuckDB spills to disk).

Columns (pyarrow tables; every column but the keys may be absent or null):

sequences  seq_key: string (external id, unique across the whole input), name: string,
           created_at: int64 (unix seconds), modified_at: int64 (unix seconds),
           meta: string (JSON), origin: string ("file:line" or "file:playlist N", for messages)
items      item_key: string (external id), name, creator, creator_key, album, album_key: string,
           meta: string (JSON). Repeats are allowed; the first occurrence wins.
events     seq_key: string, item_key: string, position: int32 (order inside the sequence, if the
           source knows it), ts: int64 (unix seconds), rating: float64, and any extra columns named
           `fb_<name>` (float64 feedback, e.g. fb_listened_fraction) or `ctx_<name>` (string
           context, e.g. ctx_device). Events of one sequence are ordered by position, then ts, then
           arrival order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import pyarrow as pa

SEQUENCE_SCHEMA = pa.schema(
    [
        ("seq_key", pa.string()),
        ("name", pa.string()),
        ("created_at", pa.int64()),
        ("modified_at", pa.int64()),
        ("meta", pa.string()),
        ("origin", pa.string()),
    ]
)
ITEM_SCHEMA = pa.schema(
    [
        ("item_key", pa.string()),
        ("name", pa.string()),
        ("creator", pa.string()),
        ("creator_key", pa.string()),
        ("album", pa.string()),
        ("album_key", pa.string()),
        ("meta", pa.string()),
    ]
)
EVENT_SCHEMA = pa.schema(
    [
        ("seq_key", pa.string()),
        ("item_key", pa.string()),
        ("position", pa.int32()),
        ("ts", pa.int64()),
        ("rating", pa.float64()),
    ]
)
EXTRA_PREFIXES = ("fb_", "ctx_")


@dataclass
class Chunk:
    """One batch from a source. Any of the three tables may be None."""

    events: pa.Table | None = None
    sequences: pa.Table | None = None
    items: pa.Table | None = None


@dataclass
class SourceFile:
    """A file a source read, recorded with its checksum in the store's metadata."""

    path: Path
    md5_verified: bool | None = None  # True/False when the input carried md5sums, else None


@runtime_checkable
class Source(Protocol):
    """An input format. `chunks()` may be called once; `files()` is valid after it has run.

    A source may also offer `notes() -> list[str]`: what it inferred from the input (e.g. which
    columns it mapped), lines starting with "warning:" for what looks wrong; `segue data build`
    prints them before importing."""

    name: str

    def chunks(self) -> Iterator[Chunk]: ...

    def files(self) -> list[SourceFile]: ...

    def params(self) -> dict[str, object]:
        """Parameters that shaped the import (recorded in the store metadata)."""
        ...


def conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Return `table` with every column of `schema` (missing ones null) in order, extras kept.

    Extra columns are only allowed on events and must be named fb_* or ctx_*.
    """
    cols = []
    names = []
    n = table.num_rows
    for f in schema:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(n, f.type))
        names.append(f.name)
    for name in table.column_names:
        if name in schema.names:
            continue
        if what != "events" or not name.startswith(EXTRA_PREFIXES):
            raise ValueError(
                f"{what} chunk has unknown column '{name}' (extra event columns are named fb_* or ctx_*)"
            )
        col = table.column(name)
        col = col.cast(pa.float64()) if name.startswith("fb_") else col.cast(pa.string())
        cols.append(col)
        names.append(name)
    return pa.table(cols, names=names)


@dataclass
class ListSource:
    """A source over in-memory chunks (tests, the serving feature log, programmatic use)."""

    chunk_list: list[Chunk]
    name: str = "memory"
    extra: dict[str, object] = field(default_factory=dict)

    def chunks(self) -> Iterator[Chunk]:
        yield from self.chunk_list

    def files(self) -> list[SourceFile]:
        return []

    def params(self) -> dict[str, object]:
        return dict(self.extra)
