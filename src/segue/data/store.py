"""The store: one DuckDB file holding items, sequences, events, splits, vocabularies and metadata.

Schema (version `SCHEMA_VERSION`):

items          item_id INTEGER (0..n-1, by first appearance), external_id, name, creator,
               creator_id, album, album_id, meta (JSON text)
sequences      seq_id INTEGER (0..n-1, by first appearance), external_id, name, created_at,
               modified_at (unix seconds), length, meta
events         seq_id, position (0..len-1, in time order), item_id, ts (unix seconds), rating,
               then extra feedback (fb_*, DOUBLE) and context (ctx_*, VARCHAR) columns
split_events   split, seq_id, position, part (see `segue.data.splits.Part`)
splits         split, kind, params (JSON), checks (JSON)
vocab          split, token, item_id (NULL for special tokens), count (training occurrences)
source_files   source, path, bytes, sha256, md5_verified
meta           key, value (schema_version, built_at, build config, content checksum, ...)

A build writes everything into a temporary file beside the target and renames it into place only
once complete, so a failed build leaves no store behind and an existing store untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from segue import __version__
from segue.config import Config
from segue.data.sources.base import (
    EVENT_SCHEMA,
    ITEM_SCHEMA,
    SEQUENCE_SCHEMA,
    Chunk,
    Source,
    SourceFile,
    conform,
)
from segue.errors import InputError, SegueError, StoreError
from segue.io import atomic_path, file_digest

SCHEMA_VERSION = 1


class BuildConfig(Config):
    """How a store is built from its sources (saved in the store's metadata)."""

    seed: int = 0
    splits: list[dict[str, Any]] = [{"kind": "random_sequence"}]  # see segue.data.splits
    vocab_min_count: int = 1
    memory_limit: str = "2GB"
    threads: int = 2


# ---------------------------------------------------------------------------------------------
# building


def build_store(
    sources: Source | Sequence[Source],
    path: str | Path,
    config: BuildConfig | None = None,
    *,
    progress: Any | None = None,
) -> Path:
    """Import `sources` into a new store at `path` (atomically) and return the path.

    `progress`, if given, is called as progress(stage: str, done: int, total: int | None).
    """
    from segue.data import splits as splits_mod
    from segue.data import vocab as vocab_mod

    config = config or BuildConfig()
    if isinstance(sources, Source):
        sources = [sources]
    path = Path(path)
    report = progress or (lambda *a, **k: None)
    with atomic_path(path) as tmp:
        con = duckdb.connect(str(tmp))
        try:
            _configure(con, config, tmp)
            _create_staging(con)
            extras: dict[str, str] = {}
            ordinal = 0
            file_rows: list[tuple[str, str, int, str, bool | None]] = []
            for src_index, source in enumerate(sources):
                for chunk in source.chunks():
                    ordinal = _stage_chunk(con, chunk, src_index, ordinal, extras)
                    report("import", ordinal, None)
                file_rows.extend(_file_row(source.name, f) for f in source.files())
            if ordinal == 0:
                names = ", ".join(s.name for s in sources)
                raise InputError("no events were found", record=f"source {names}", expected="at least one interaction")
            report("resolve", 0, None)
            _finalise(con, extras)
            report("splits", 0, len(config.splits))
            for i, spec in enumerate(config.splits):
                splits_mod.apply_split(con, spec, seed=config.seed)
                report("splits", i + 1, len(config.splits))
            for (split,) in con.execute("SELECT split FROM splits ORDER BY split").fetchall():
                vocab_mod.fit_vocab(con, split, min_count=config.vocab_min_count)
            _write_meta(con, sources, config, file_rows, extras)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        # DuckDB may leave a write-ahead log beside the temporary file.
        wal = Path(str(tmp) + ".wal")
        if wal.exists():
            wal.unlink()
    return path


def _file_row(source: str, f: SourceFile) -> tuple[str, str, int, str, bool | None]:
    # Importers that hashed the bytes while parsing them hand the digest over (no second read).
    sha256 = getattr(f, "sha256", None)
    if sha256:
        return (source, getattr(f, "label", None) or str(f.path), int(getattr(f, "size", 0)), sha256, f.md5_verified)
    return (source, str(f.path), f.path.stat().st_size, file_digest(f.path), f.md5_verified)


def _configure(con: duckdb.DuckDBPyConnection, config: BuildConfig, tmp: Path) -> None:
    con.execute(f"SET memory_limit='{config.memory_limit}'")
    con.execute(f"SET threads={int(config.threads)}")
    con.execute("SET preserve_insertion_order=false")
    spill = tmp.parent / (tmp.name + ".spill")
    con.execute(f"SET temp_directory='{spill}'")


def _create_staging(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        CREATE TEMP TABLE raw_events (seq_key VARCHAR, item_key VARCHAR, position INTEGER,
            ts BIGINT, rating DOUBLE, _ord BIGINT, _src INTEGER);
        CREATE TEMP TABLE raw_items (item_key VARCHAR, name VARCHAR, creator VARCHAR,
            creator_key VARCHAR, album VARCHAR, album_key VARCHAR, meta VARCHAR, _ord BIGINT);
        CREATE TEMP TABLE raw_sequences (seq_key VARCHAR, name VARCHAR, created_at BIGINT,
            modified_at BIGINT, meta VARCHAR, origin VARCHAR, _ord BIGINT);
        """
    )


def _stage_chunk(
    con: duckdb.DuckDBPyConnection, chunk: Chunk, src_index: int, ordinal: int, extras: dict[str, str]
) -> int:
    if chunk.sequences is not None and chunk.sequences.num_rows:
        t = conform(chunk.sequences, SEQUENCE_SCHEMA, "sequences")
        t = t.append_column("_ord", pa.array(np.arange(ordinal, ordinal + t.num_rows, dtype=np.int64)))
        con.register("_chunk", t)
        con.execute("INSERT INTO raw_sequences BY NAME SELECT * FROM _chunk")
        con.unregister("_chunk")
    if chunk.items is not None and chunk.items.num_rows:
        t = conform(chunk.items, ITEM_SCHEMA, "items")
        t = t.append_column("_ord", pa.array(np.arange(ordinal, ordinal + t.num_rows, dtype=np.int64)))
        con.register("_chunk", t)
        con.execute("INSERT INTO raw_items BY NAME SELECT * FROM _chunk")
        con.unregister("_chunk")
    if chunk.events is not None and chunk.events.num_rows:
        t = conform(chunk.events, EVENT_SCHEMA, "events")
        for name in t.column_names:
            if name in EVENT_SCHEMA.names or name in extras:
                continue
            sql_type = "DOUBLE" if name.startswith("fb_") else "VARCHAR"
            extras[name] = sql_type
            con.execute(f'ALTER TABLE raw_events ADD COLUMN "{name}" {sql_type}')
        n = t.num_rows
        t = t.append_column("_ord", pa.array(np.arange(ordinal, ordinal + n, dtype=np.int64)))
        t = t.append_column("_src", pa.array(np.full(n, src_index, dtype=np.int32)))
        con.register("_chunk", t)
        con.execute("INSERT INTO raw_events BY NAME SELECT * FROM _chunk")
        con.unregister("_chunk")
        ordinal += n
    return ordinal


def _finalise(con: duckdb.DuckDBPyConnection, extras: dict[str, str]) -> None:
    missing = con.execute(
        "SELECT _ord, seq_key IS NULL FROM raw_events WHERE seq_key IS NULL OR item_key IS NULL LIMIT 1"
    ).fetchone()
    if missing:
        field = "sequence/user id" if missing[1] else "item id"
        raise InputError("an event has no value", record=f"event #{missing[0] + 1}", field=field, expected="a non-empty id")
    dup = con.execute(
        """SELECT seq_key, list(origin ORDER BY _ord) FROM raw_sequences
           GROUP BY seq_key HAVING count(*) > 1 ORDER BY min(_ord) LIMIT 1"""
    ).fetchone()
    if dup:
        where = " and ".join(o for o in dup[1] if o) or "the input"
        raise InputError(f"duplicate sequence id '{dup[0]}' (in {where})", expected="each playlist/user id once")

    # Sequences: declared ones in declaration order, then any only seen in events.
    con.execute(
        """
        CREATE TABLE sequences AS
        WITH keys AS (
            SELECT seq_key, min(_ord) AS o, 0 AS declared FROM raw_sequences GROUP BY seq_key
            UNION ALL
            SELECT seq_key, min(_ord), 1 FROM raw_events
            WHERE seq_key NOT IN (SELECT seq_key FROM raw_sequences) GROUP BY seq_key
        ), ranked AS (
            SELECT seq_key, (row_number() OVER (ORDER BY declared, o) - 1)::INTEGER AS seq_id FROM keys
        )
        SELECT r.seq_id, r.seq_key AS external_id, s.name, s.created_at, s.modified_at,
               0::INTEGER AS length, s.meta
        FROM ranked r LEFT JOIN raw_sequences s USING (seq_key)
        ORDER BY r.seq_id
        """
    )
    con.execute(
        """
        CREATE TABLE items AS
        WITH keys AS (SELECT item_key, min(_ord) AS o FROM raw_events GROUP BY item_key),
        ranked AS (SELECT item_key, (row_number() OVER (ORDER BY o) - 1)::INTEGER AS item_id FROM keys),
        meta AS (SELECT * FROM raw_items QUALIFY row_number() OVER (PARTITION BY item_key ORDER BY _ord) = 1)
        SELECT r.item_id, r.item_key AS external_id, m.name, m.creator, m.creator_key AS creator_id,
               m.album, m.album_key AS album_id, m.meta
        FROM ranked r LEFT JOIN meta m USING (item_key)
        ORDER BY r.item_id
        """
    )
    extra_cols = "".join(f', e."{c}"' for c in extras)
    con.execute(
        f"""
        CREATE TABLE events AS
        SELECT s.seq_id,
               (row_number() OVER (PARTITION BY s.seq_id
                    ORDER BY e.position NULLS LAST, e.ts NULLS LAST, e._ord) - 1)::INTEGER AS position,
               i.item_id, e.ts, e.rating{extra_cols}
        FROM raw_events e
        JOIN sequences s ON s.external_id = e.seq_key
        JOIN items i ON i.external_id = e.item_key
        ORDER BY s.seq_id, position
        """
    )
    con.execute(
        """
        UPDATE sequences SET length = l.n
        FROM (SELECT seq_id, count(*)::INTEGER AS n FROM events GROUP BY seq_id) l
        WHERE sequences.seq_id = l.seq_id
        """
    )
    empty = con.execute("SELECT external_id FROM sequences WHERE length = 0 LIMIT 1").fetchone()
    if empty:
        # A declared playlist with no tracks carries nothing to learn from; keep it out.
        con.execute("DELETE FROM sequences WHERE length = 0")
        con.execute(
            """CREATE TEMP TABLE _renum AS SELECT seq_id, (row_number() OVER (ORDER BY seq_id) - 1)::INTEGER AS new_id
               FROM sequences"""
        )
        con.execute("UPDATE sequences SET seq_id = r.new_id FROM _renum r WHERE sequences.seq_id = r.seq_id")
        con.execute("UPDATE events SET seq_id = r.new_id FROM _renum r WHERE events.seq_id = r.seq_id")
        con.execute("DROP TABLE _renum")
    con.execute("DROP TABLE raw_events; DROP TABLE raw_items; DROP TABLE raw_sequences")
    con.execute(
        """
        CREATE TABLE split_events (split VARCHAR, seq_id INTEGER, position INTEGER, part UTINYINT);
        CREATE TABLE splits (split VARCHAR PRIMARY KEY, kind VARCHAR, params VARCHAR, checks VARCHAR);
        CREATE TABLE vocab (split VARCHAR, token INTEGER, item_id INTEGER, count BIGINT);
        CREATE TABLE source_files (source VARCHAR, path VARCHAR, bytes BIGINT, sha256 VARCHAR, md5_verified BOOLEAN);
        CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR);
        """
    )


def _write_meta(
    con: duckdb.DuckDBPyConnection,
    sources: Sequence[Source],
    config: BuildConfig,
    file_rows: list[tuple[str, str, int, str, bool | None]],
    extras: dict[str, str],
) -> None:
    if file_rows:
        con.executemany("INSERT INTO source_files VALUES (?, ?, ?, ?, ?)", file_rows)
    meta = {
        "schema_version": str(SCHEMA_VERSION),
        "segue_version": __version__,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_config": json.dumps(config.model_dump(mode="json"), sort_keys=True),
        "sources": json.dumps([{"name": s.name, "params": s.params()} for s in sources], sort_keys=True, default=str),
        "extra_columns": json.dumps(extras, sort_keys=True),
    }
    meta["content_checksum"] = content_checksum(con)
    con.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))


def content_checksum(con: duckdb.DuckDBPyConnection) -> str:
    """A digest of the store's content (not its file bytes): equal inputs and seed give equal digests."""
    h = hashlib.sha256()
    for table in ("items", "sequences", "events", "split_events", "splits", "vocab"):
        # bit_xor of row hashes is order-free; every row has a unique key so nothing cancels out.
        row = con.execute(f"SELECT count(*), bit_xor(hash({table})) FROM {table}").fetchone()
        h.update(f"{table}:{row[0]}:{row[1]};".encode())
    return h.hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# reading


class Store:
    """Read access to a built store. Open with `Store.open(path)`; use as a context manager."""

    def __init__(self, path: Path, con: duckdb.DuckDBPyConnection) -> None:
        self.path = path
        self.con = con
        self.meta = dict(con.execute("SELECT key, value FROM meta").fetchall())

    @classmethod
    def open(cls, path: str | Path, *, read_only: bool = True) -> Store:
        path = Path(path)
        if not path.exists():
            raise StoreError(f"{path}: no store here (build one with `segue data build`)")
        try:
            con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as e:
            raise StoreError(f"{path}: not a readable segue store ({e})") from None
        try:
            version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except duckdb.Error:
            con.close()
            raise StoreError(f"{path}: not a segue store (no meta table)") from None
        if version is None or int(version[0]) != SCHEMA_VERSION:
            con.close()
            raise StoreError(
                f"{path}: store schema version {version[0] if version else '?'}, this segue reads {SCHEMA_VERSION}; rebuild it"
            )
        return cls(path, con)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- facts -------------------------------------------------------------------------------
    @property
    def checksum(self) -> str:
        return self.meta["content_checksum"]

    @property
    def extra_columns(self) -> dict[str, str]:
        return json.loads(self.meta.get("extra_columns", "{}"))

    def split_names(self) -> list[str]:
        return [r[0] for r in self.con.execute("SELECT split FROM splits ORDER BY split").fetchall()]

    def split_info(self, split: str) -> dict[str, Any]:
        row = self.con.execute("SELECT kind, params, checks FROM splits WHERE split = ?", [split]).fetchone()
        if row is None:
            raise StoreError(
                f"{self.path}: the store has no split '{split}' (it has: {', '.join(self.split_names()) or 'none'})"
            )
        return {"split": split, "kind": row[0], "params": json.loads(row[1]), "checks": json.loads(row[2])}

    def require_split(self, split: str) -> None:
        self.split_info(split)

    def counts(self) -> dict[str, int]:
        row = self.con.execute(
            """SELECT (SELECT count(*) FROM sequences), (SELECT count(*) FROM items),
                      (SELECT count(*) FROM events), (SELECT count(rating) FROM events)"""
        ).fetchone()
        return {"sequences": row[0], "items": row[1], "events": row[2], "rated_events": row[3]}

    # --- bulk reads ----------------------------------------------------------------------------
    def split_event_batches(
        self,
        split: str,
        parts: Iterable[int],
        columns: Sequence[str] = ("item_id",),
        batch_rows: int = 1 << 20,
    ) -> Iterator[pa.RecordBatch]:
        """Stream the events of `split` whose part is in `parts`, ordered by (seq_id, position).

        Every batch has seq_id and position first, then `columns` (any events column).
        """
        self.require_split(split)
        parts = [int(p) for p in parts]
        cols = "".join(f', e."{c}"' for c in columns if c not in ("seq_id", "position"))
        sql = f"""
            SELECT e.seq_id, e.position{cols}
            FROM events e JOIN split_events s USING (seq_id, position)
            WHERE s.split = ? AND s.part IN ({",".join("?" * len(parts))})
            ORDER BY e.seq_id, e.position
        """
        reader = self.con.execute(sql, [split, *parts]).fetch_record_batch(batch_rows)
        yield from reader

    def items_table(self) -> pa.Table:
        return self.con.execute("SELECT * FROM items ORDER BY item_id").fetch_arrow_table()

    def sequence_items(self, seq_id: int) -> list[int]:
        return [r[0] for r in self.con.execute(
            "SELECT item_id FROM events WHERE seq_id = ? ORDER BY position", [seq_id]
        ).fetchall()]


@contextlib.contextmanager
def modify_store(path: str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """Change an existing store atomically: work on a copy, rename it over the original on success."""
    import shutil

    path = Path(path)
    Store.open(path).close()  # validates
    with atomic_path(path) as tmp:
        shutil.copyfile(path, tmp)
        con = duckdb.connect(str(tmp))
        try:
            yield con
            con.execute("DELETE FROM meta WHERE key = 'content_checksum'")
            con.execute("INSERT INTO meta VALUES ('content_checksum', ?)", [content_checksum(con)])
            con.execute("CHECKPOINT")
        finally:
            con.close()


__all__ = ["BuildConfig", "Store", "build_store", "modify_store", "content_checksum", "SegueError"]
