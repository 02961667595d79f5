"""Event sets to validate: a store (whole or one split part), a source about to be imported, or a
serving feature log, all read into one in-memory form (`EventSet`).

An event set keeps what the checks need and nothing else: per event its sequence and item codes,
timestamp and rating; per context column its observations; per column its type and null count.
Items are compared across sets by their external ids.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from segue.errors import ConfigError, InputError
from segue.ops import drift

ITEM = "item"  # the item id column, as findings name it


@dataclass(frozen=True)
class ColumnInfo:
    """An event column: its logical type and how many of its `total` values are non-null."""

    type: str
    non_null: int
    total: int

    @property
    def null_rate(self) -> float:
        return 1.0 - self.non_null / self.total if self.total else 0.0


@dataclass
class EventSet:
    """One side of a comparison.

    seq, item: int64 codes per event (item codes index `item_ids`, the external ids).
    ts, rating: float64 per event (NaN = null), or None when the set has none at all.
    context: ctx column name -> string observations (None = null): per event for stores and
    sources, per request for a feature log (where context belongs to the request).
    columns: every column the set has, with type and null count (ITEM for the item id).
    carries: the columns this kind of set can hold at all, names or prefixes ending in '_'
    (None: any); a reference column the candidate cannot carry is noted, not flagged (a feature
    log holds ratings only where its clients sent some, but may hold any ctx_ column).
    event_times: whether ts is a per-event time (a feature log stamps a whole history at once).
    context_per_event: whether context observations align with events (else one per request).
    """

    label: str
    seq: np.ndarray
    item: np.ndarray
    item_ids: np.ndarray
    ts: np.ndarray | None = None
    rating: np.ndarray | None = None
    context: dict[str, pa.Array] = field(default_factory=dict)
    columns: dict[str, ColumnInfo] = field(default_factory=dict)
    carries: frozenset[str] | None = None
    event_times: bool = True
    context_per_event: bool = True

    def can_carry(self, column: str) -> bool:
        if self.carries is None:
            return True
        return any(column == c or (c.endswith("_") and column.startswith(c)) for c in self.carries)

    @property
    def n_events(self) -> int:
        return len(self.item)

    @functools.cached_property
    def item_count_array(self) -> np.ndarray:
        """Events per item code (a bincount: hash-based np.unique is ~10x slower on millions)."""
        return np.bincount(self.item, minlength=len(self.item_ids))

    def item_counts(self) -> dict[str, int]:
        """External item id -> events, for items with at least one event."""
        counts = self.item_count_array
        nz = np.flatnonzero(counts)
        return dict(zip(self.item_ids[nz].tolist(), counts[nz].tolist(), strict=True))

    def sequence_lengths(self) -> np.ndarray:
        counts = np.bincount(self.seq)
        return counts[counts > 0]

    def events_per_sequence_day(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Events of each (sequence, UTC day) pair that has any, and each pair's sequence; None
        without per-event times."""
        if self.ts is None or not self.event_times:
            return None
        ok = ~np.isnan(self.ts)
        if not ok.any():
            return None
        day = np.floor(self.ts[ok] / 86400).astype(np.int64)
        span = int(day.max() - day.min() + 1)
        seq = self.seq[ok].astype(np.int64)
        pairs, counts = np.unique(seq * span + (day - day.min()), return_counts=True)
        return counts, pairs // span

    def context_codes(self, name: str, top: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Per non-null observation of context column `name`: its index in `top` (len(top) when
        absent: the other bin), and its cluster (the sequence; None when observations are per
        request and independent)."""
        obs = self.context[name]
        enc = pc.dictionary_encode(obs)
        valid = ~np.asarray(obs.is_null().to_numpy(zero_copy_only=False))
        lookup = drift.top_codes([str(x) for x in enc.dictionary.to_pylist()], top)
        codes = lookup[enc.indices.fill_null(0).to_numpy(zero_copy_only=False)[valid]] if len(lookup) else np.zeros(0, np.int64)
        clusters = self.seq[valid] if self.context_per_event else None
        return codes, clusters

    def category_counts(self, name: str) -> dict[str, int]:
        """Non-null observations of context column `name` per category."""
        vc = pc.value_counts(self.context[name].drop_null())
        return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True))

    def item_id_sample(self, limit: int = 100_000, seed: int = 0) -> list[str]:
        """External ids of the items with events (a seeded sample of `limit` when there are more)."""
        ids = self.item_ids[self.item_count_array > 0]
        if len(ids) > limit:
            ids = np.random.default_rng(seed).choice(ids, limit, replace=False)
        return [str(x) for x in ids.tolist()]


def logical_type(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "string"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "timestamp"
    return str(t)


def _float_or_none(col: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    if col.null_count == len(col):
        return None
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def _codes(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Dictionary codes (int64) and the dictionary (object array of strings) of a string column."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    enc = pc.dictionary_encode(pc.cast(arr, pa.string()))
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), np.array(
        enc.dictionary.to_pylist(), dtype=object
    )


def from_table(
    events: pa.Table,
    label: str,
    *,
    item_ids: np.ndarray | None = None,
    context: dict[str, pa.Array] | None = None,
    carries: Iterable[str] | None = None,
    event_times: bool = True,
) -> EventSet:
    """An event set from an events table: seq (codes or keys), item (codes into `item_ids`, or
    external keys), optional ts, rating, fb_* and ctx_* columns. `context` overrides the ctx_*
    columns (per-request observations)."""
    if events.num_rows == 0:
        raise InputError("no events", record=label, expected="at least one interaction")
    seq_col = "seq_id" if "seq_id" in events.column_names else "seq_key"
    item_col = "item_id" if "item_id" in events.column_names else "item_key"
    if seq_col == "seq_id":
        seq = events.column(seq_col).to_numpy().astype(np.int64)
    else:
        seq, _ = _codes(events.column(seq_col))
    if item_ids is None:
        item, item_ids = _codes(events.column(item_col))
    else:
        item = events.column(item_col).to_numpy().astype(np.int64)
    n = events.num_rows
    columns = {ITEM: ColumnInfo("string", n, n)}
    ctx = dict(context or {})
    for name in events.column_names:
        if name in ("seq_id", "seq_key", "item_id", "item_key", "position"):
            continue
        col = events.column(name)
        if col.null_count == n and name in ("ts", "rating"):
            continue  # every store has these columns; all-null means the data has none
        if context is None and name.startswith("ctx_"):
            ctx[name] = pc.cast(col.combine_chunks(), pa.string())
            continue
        if name.startswith("ctx_"):
            continue
        columns[name] = ColumnInfo(logical_type(col.type), n - col.null_count, n)
    for name, obs in ctx.items():
        columns[name] = ColumnInfo("string", len(obs) - obs.null_count, len(obs))
    return EventSet(
        label=label,
        seq=seq,
        item=item,
        item_ids=item_ids,
        ts=_float_or_none(events.column("ts")) if "ts" in columns else None,
        rating=_float_or_none(events.column("rating")) if "rating" in columns else None,
        context=ctx,
        columns=columns,
        carries=frozenset(carries) if carries is not None else None,
        event_times=event_times,
        context_per_event=context is None,
    )


# --- readers -----------------------------------------------------------------------------------


def from_store(path: str | Path, split: str | None = None, part: str | int | None = None) -> EventSet:
    """The events of a store: all of them, or those of one part of `split` (default part: train)."""
    from segue.data.splits import parse_part
    from segue.data.store import Store

    with Store.open(path) as store:
        extras = "".join(f', e."{c}"' for c in store.extra_columns)
        select = f"SELECT e.seq_id, e.item_id, e.ts, e.rating{extras} FROM events e"
        if split is None:
            label = f"store {path}"
            table = store.con.execute(select + " ORDER BY e.seq_id, e.position").to_arrow_table()
        else:
            store.require_split(split)
            p = parse_part("train" if part is None else part)
            label = f"store {path} split {split} part {p.name.lower()}"
            table = store.con.execute(
                select + " JOIN split_events s USING (seq_id, position)"
                " WHERE s.split = ? AND s.part = ? ORDER BY e.seq_id, e.position",
                [split, int(p)],
            ).to_arrow_table()
        ids = np.array(
            [r[0] for r in store.con.execute("SELECT external_id FROM items ORDER BY item_id").fetchall()],
            dtype=object,
        )
    return from_table(table, label, item_ids=ids)


def read_source(kind: str, path: str | Path | None, options: dict[str, Any] | None = None) -> tuple[pa.Table, str]:
    """The events table a `segue data build` source would import (read with open_source, in the
    builder's column schema, nothing stored) and a label naming the source."""
    from segue.data.sources import open_source
    from segue.data.sources.base import EVENT_SCHEMA, conform

    source = open_source(kind, path, **(options or {}))
    tables = []
    chunks = source.chunks()
    try:
        for chunk in chunks:
            if chunk.events is not None and chunk.events.num_rows:
                tables.append(conform(chunk.events, EVENT_SCHEMA, "events"))
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
    opts = ", ".join(f"{k}={v}" for k, v in (options or {}).items())
    label = " ".join(x for x in (f"source {source.name}", str(path) if path is not None else "", f"({opts})" if opts else "") if x)
    if not tables:
        raise InputError("no events were found", record=label, expected="at least one interaction")
    return pa.concat_tables(tables, promote_options="default"), label


def from_source(kind: str, path: str | Path | None, options: dict[str, Any] | None = None) -> EventSet:
    """The events a source would import (see read_source)."""
    table, label = read_source(kind, path, options)
    return from_table(table, label)


def from_feature_log(folder: str | Path) -> EventSet:
    """A serving feature log: each request's history is a sequence; its context (one value per
    request and key) becomes the ctx_<key> observations; ts is the request time."""
    from segue.data.sources.feature_log import FeatureLogSource

    source = FeatureLogSource(folder)
    events, metas = [], []
    for chunk in source.chunks():
        events.append(chunk.events)
        metas.extend(chunk.sequences.column("meta").to_pylist())
    label = f"feature log {folder}"
    if not events:
        raise InputError(
            "no logged request has a history", path=folder, expected="requests with inputs.history"
        )
    contexts = [(json.loads(m) or {}).get("context") or {} for m in metas]
    keys = sorted({k for c in contexts for k in c})
    context = {
        f"ctx_{k}": pa.array([None if c.get(k) is None else str(c[k]) for c in contexts], pa.string())
        for k in keys
    }
    table = pa.concat_tables(events)
    # Ratings come only from clients that send them; a log with none notes the reference's
    # ratings rather than failing on them (a transformer's requests never carry any).
    carries = {ITEM, "ts", "ctx_"} | ({"rating"} if table.column("rating").null_count < table.num_rows else set())
    return from_table(table, label, context=context, carries=carries, event_times=False)


# --- specs -------------------------------------------------------------------------------------

SPEC_HELP = (
    "store:PATH (a whole store), store:PATH#SPLIT/PART (one part of a split; #SPLIT alone means "
    "its train part), log:FOLDER (a serving feature log), KIND:PATH?key=value&key=value (a source "
    "file as `segue data build` reads it, KIND one of mpd, movielens, seqtext, csv, tsv, parquet, "
    "tabular, synthetic; options optional); a bare PATH ending in .duckdb is a store, a bare folder "
    "holding features.jsonl a feature log"
)


@dataclass(frozen=True)
class Spec:
    """A parsed event-set spec (see SPEC_HELP)."""

    kind: str  # "store", "log" or a source kind
    path: str | None
    split: str | None = None
    part: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def parse_spec(text: str) -> Spec:
    """Parse an event-set spec string; an unreadable one is a ConfigError that quotes it."""
    from segue.data.sources import ALIASES, SOURCE_KINDS

    kinds = ("store", "log", *SOURCE_KINDS, *ALIASES)
    head, sep, rest = text.partition(":")
    if sep and head in kinds:
        kind, location = head, rest
    else:
        kind, location = _infer_kind(text), text
    location, _, query = location.partition("?")
    options: dict[str, Any] = {}
    for pair in filter(None, query.split("&")):
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ConfigError(f"event set '{text}': option '{pair}' is not key=value")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    split = part = None
    if kind == "store":
        location, _, frag = location.partition("#")
        if frag:
            split, _, part_text = frag.partition("/")
            part = part_text or None
    if options and kind in ("store", "log"):
        raise ConfigError(f"event set '{text}': a {kind} takes no ?options")
    if not location and kind != "synthetic":
        raise ConfigError(f"event set '{text}': no path (expected {SPEC_HELP})")
    return Spec(kind=kind, path=location or None, split=split or None, part=part, options=options)


def _infer_kind(text: str) -> str:
    path = Path(text.partition("#")[0])
    if path.suffix == ".duckdb":
        return "store"
    if path.is_dir() and any(path.glob("features.jsonl*")):
        return "log"
    raise ConfigError(f"event set '{text}': say what it is (expected {SPEC_HELP})")


def load(spec: Spec | str) -> EventSet:
    """Read the event set a spec names."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    if spec.kind == "store":
        return from_store(spec.path or "", spec.split, spec.part)
    if spec.kind == "log":
        return from_feature_log(spec.path or "")
    return from_source(spec.kind, spec.path, spec.options)
