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
import itertools
import json
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

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
from segue.io import atomic_path, file_digest, require_writable

SCHEMA_VERSION = 1


class BuildConfig(Config):
    """How a store is built from its sources (saved in the store's metadata)."""

    seed: int = Field(0, ge=0)  # numpy's generators take no negative seed
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

    `progress`, if given, is called as progress(stage: str, done: int, total: int | None) with
    stages import (done = events so far), resolve, splits, vocab, finish.

    Chunks are staged as Parquet files in a scratch folder beside the target (writing Parquet costs
    a quarter of inserting into DuckDB, and DuckDB then reads it in parallel); ids, order and
    lengths are resolved in SQL, spilling to disk past `memory_limit`. The scratch folder, DuckDB's
    spill folder and write-ahead log are removed whatever happens.
    """
    from segue.data import splits as splits_mod
    from segue.data import vocab as vocab_mod

    config = config or BuildConfig()
    if isinstance(sources, Source):
        sources = [sources]
    path = Path(path)
    report = progress or (lambda *a, **k: None)
    timings = BUILD_TIMINGS
    timings.clear()
    with atomic_path(path) as tmp:
        scratch = tmp.with_name(tmp.name + ".staging")
        con = None
        try:
            _remove_tree(scratch)
            scratch.mkdir()
            con = duckdb.connect(str(tmp))
            _configure(con, config, tmp)
            stager = _Stager(scratch)
            file_rows: list[tuple[str, str, int, str, bool | None]] = []
            with _timed(timings, "import"):
                for src_index, source in enumerate(sources):
                    chunks = source.chunks()
                    try:
                        for chunk in chunks:
                            stager.add(chunk, src_index)
                            report("import", stager.ordinal, None)
                    finally:
                        # A failed build stops the source now (e.g. its parse processes).
                        if hasattr(chunks, "close"):
                            chunks.close()
                    file_rows.extend(_file_row(source.name, f) for f in source.files())
                stager.close()
            if stager.ordinal == 0:
                names = ", ".join(s.name for s in sources)
                raise InputError(
                    "no events were found",
                    record=f"source {names}",
                    expected="at least one interaction",
                )
            report("resolve", 0, None)
            with _timed(timings, "resolve"):
                _finalise(con, stager)
            report("splits", 0, len(config.splits))
            with _timed(timings, "splits"):
                for i, spec in enumerate(config.splits):
                    splits_mod.apply_split(con, spec, seed=config.seed)
                    report("splits", i + 1, len(config.splits))
            report("vocab", 0, None)
            with _timed(timings, "vocab"):
                for (split,) in con.execute("SELECT split FROM splits ORDER BY split").fetchall():
                    vocab_mod.fit_vocab(con, split, min_count=config.vocab_min_count)
            report("finish", 0, None)
            with _timed(timings, "finish"):
                _write_meta(con, sources, config, file_rows, stager.extras)
                con.execute("CHECKPOINT")
        except (duckdb.InterruptException, RuntimeError) as e:
            if _interrupted(e):
                raise KeyboardInterrupt from None
            raise
        finally:
            if con is not None:
                con.close()
            _remove_tree(scratch)
            _remove_tree(tmp.with_name(tmp.name + ".spill"))
            # DuckDB may leave a write-ahead log beside the temporary file.
            wal = Path(str(tmp) + ".wal")
            if wal.exists():
                wal.unlink()
    return path


def _interrupted(e: Exception) -> bool:
    """Is `e` Ctrl-C inside a DuckDB query? It arrives as RuntimeError('Query interrupted') (or
    DuckDB's InterruptException), which build_store turns into the KeyboardInterrupt it is, so the
    CLI exits as on any other Ctrl-C (130, no traceback)."""
    return isinstance(e, duckdb.InterruptException) or (type(e) is RuntimeError and str(e) == "Query interrupted")


# Seconds per build stage of the last build_store call in this process (for bench/ingest.py).
BUILD_TIMINGS: dict[str, float] = {}


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t


def _remove_tree(p: Path) -> None:
    import shutil

    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


def _file_row(source: str, f: SourceFile) -> tuple[str, str, int, str, bool | None]:
    # Importers that hashed the bytes while parsing them hand the digest over (no second read).
    sha256 = getattr(f, "sha256", None)
    if sha256:
        return (
            source,
            getattr(f, "label", None) or str(f.path),
            int(getattr(f, "size", 0)),
            sha256,
            f.md5_verified,
        )
    return (source, str(f.path), f.path.stat().st_size, file_digest(f.path), f.md5_verified)


def _configure(con: duckdb.DuckDBPyConnection, config: BuildConfig, tmp: Path) -> None:
    con.execute(f"SET memory_limit='{config.memory_limit}'")
    con.execute(f"SET threads={int(config.threads)}")
    con.execute("SET preserve_insertion_order=false")
    spill = tmp.with_name(tmp.name + ".spill")
    con.execute(f"SET temp_directory='{spill}'")


class _KeyMap:
    """External id -> dense integer, by first appearance; per id: first event ordinal, event count."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.first = np.zeros(1024, dtype=np.int64)
        self.count = np.zeros(1024, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def _grow(self) -> None:
        n = len(self.ids)
        if n > len(self.first):
            size = max(n, 2 * len(self.first))
            self.first = np.resize(self.first, size)
            self.count = np.concatenate([self.count, np.zeros(size - len(self.count), np.int64)])

    def encode(self, col: pa.ChunkedArray, base: int | None = None) -> np.ndarray:
        """int64 ids of `col`'s values (new values get new ids); with `base`, counts them as events."""
        enc = pc.dictionary_encode(
            col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        )
        values = enc.dictionary.to_pylist()
        idx = enc.indices.to_numpy(zero_copy_only=False)
        ids = self.ids
        n0 = len(ids)
        # C-level lookups; new values (distinct: a dictionary) get the next ids in their order.
        codes = np.fromiter(map(ids.get, values, itertools.repeat(-1)), dtype=np.int64, count=len(values))
        new = np.flatnonzero(codes < 0)
        if len(new):
            codes[new] = np.arange(n0, n0 + len(new))
            ids.update(zip([values[j] for j in new.tolist()], range(n0, n0 + len(new)), strict=True))
        self._grow()
        if base is not None:
            # dictionary_encode orders the dictionary by first occurrence, so unique()'s first index
            # per code is that value's first row in the chunk.
            _, first_row = np.unique(idx, return_index=True)
            new = codes >= n0
            self.first[codes[new]] = base + first_row[new]
            self.count[codes] += np.bincount(idx, minlength=len(values))
        return codes[idx]


class _Stager:
    """Stages chunks as Parquet files with integer ids, resolved once all chunks are in.

    Item ids are final as soon as they are assigned (first appearance in events). Sequences get a
    provisional id by first appearance (declaration or event); the final order (declared ones in
    declaration order, then those only seen in events) is computed at the end from per-id facts,
    so no SQL pass over the events is needed for either. Item metadata keeps the first row per
    item; duplicate sequence declarations are caught here, with both origins named.

    `clean` stays True while every sequence arrives as one contiguous run of events with positions
    0..n-1 (the MPD): then positions are final and no window/sort over the events is needed.
    """

    ROW_GROUP = 1 << 19

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ordinal = 0  # events so far
        self.n_decl = 0  # sequence declarations so far
        self.extras: dict[str, str] = {}  # extra event column -> SQL type
        self.seqs = _KeyMap()
        self.items = _KeyMap()
        self.decl = np.full(1024, -1, dtype=np.int64)  # provisional seq id -> declaration ordinal
        self.item_meta_done = np.zeros(1024, dtype=bool)  # item id -> metadata row staged
        self.item_meta_early: set[str] = set()  # keys with metadata staged before any event
        self.clean = True
        self.files: dict[str, list[Path]] = {"events": [], "sequences": [], "items": []}
        self._writers: dict[str, Any] = {}
        self._buffers: dict[str, list[pa.Table]] = {"events": [], "sequences": [], "items": []}
        self._buffered: dict[str, int] = {"events": 0, "sequences": 0, "items": 0}

    def add(self, chunk: Chunk, src_index: int) -> None:
        if chunk.sequences is not None and chunk.sequences.num_rows:
            self._add_sequences(conform(chunk.sequences, SEQUENCE_SCHEMA, "sequences"))
        if chunk.events is not None and chunk.events.num_rows:
            self._add_events(conform(chunk.events, EVENT_SCHEMA, "events"))
        if chunk.items is not None and chunk.items.num_rows:
            self._add_items(conform(chunk.items, ITEM_SCHEMA, "items"))

    def _add_sequences(self, t: pa.Table) -> None:
        keys = t.column("seq_key")
        if keys.null_count:
            first = pc.index(pc.is_null(keys), True).as_py()
            origin = t.column("origin")[first].as_py()
            raise InputError(
                "a sequence has no id",
                record=origin or f"sequence #{self.n_decl + first + 1}",
                field="seq_key",
                expected="a non-empty id",
            )
        codes = self.seqs.encode(keys)
        if len(self.decl) < len(self.seqs):
            self.decl = np.concatenate(
                [self.decl, np.full(len(self.seqs) + len(self.decl), -1, np.int64)]
            )
        uniq, first_row, counts = np.unique(codes, return_index=True, return_counts=True)
        clash = self.decl[codes] >= 0
        if clash.any() or (counts > 1).any():
            row = (
                int(np.flatnonzero(clash)[0])
                if clash.any()
                else int(np.flatnonzero(codes == uniq[counts > 1][0])[1])
            )
            self._duplicate(t, row, int(codes[row]))
        self.decl[codes] = self.n_decl + np.arange(len(codes))
        t = t.drop(["seq_key"]).add_column(0, "seq_tmp", pa.array(codes.astype(np.int32)))
        self._put("sequences", t.append_column("_ord", _range(self.n_decl, t.num_rows)))
        self.n_decl += t.num_rows

    def _duplicate(self, t: pa.Table, row: int, code: int) -> None:
        key = t.column("seq_key")[row].as_py()
        origin = t.column("origin")[row].as_py()
        codes = np.asarray(self.seqs.encode(t.column("seq_key")))
        earlier = [t.column("origin")[i].as_py() for i in np.flatnonzero(codes == code) if i < row]
        if not earlier:  # declared in an earlier chunk: look it up in what is staged
            self.close()
            rel = self.relation("sequences")
            with duckdb.connect() as con:
                found = con.execute(
                    f"SELECT origin FROM {rel} WHERE seq_tmp = ? ORDER BY _ord LIMIT 1", [code]
                ).fetchone()
            earlier = [found[0] if found else None]
        where = " and ".join(o for o in [*earlier, origin] if o) or "the input"
        raise InputError(
            f"duplicate sequence id '{key}' (in {where})", expected="each playlist/user id once"
        )

    def _add_events(self, t: pa.Table) -> None:
        base, n = self.ordinal, t.num_rows
        for key, what in (("seq_key", "sequence/user id"), ("item_key", "item id")):
            col = t.column(key)
            if col.null_count:
                first = pc.index(pc.is_null(col), True).as_py()
                raise InputError(
                    "an event has no value",
                    record=f"event #{base + first + 1}",
                    field=what,
                    expected="a non-empty id",
                )
        for name in t.column_names:
            if name not in EVENT_SCHEMA.names and name not in self.extras:
                self.extras[name] = "DOUBLE" if name.startswith("fb_") else "VARCHAR"
        seq_before = self.seqs.count.copy() if self.clean else None
        seq = self.seqs.encode(t.column("seq_key"), base)
        item = self.items.encode(t.column("item_key"))
        if self.clean:
            self.clean = _runs_are_clean(seq, t.column("position"), seq_before)
        t = t.drop(["seq_key", "item_key"])
        t = t.add_column(0, "seq_tmp", pa.array(seq.astype(np.int32)))
        t = t.add_column(1, "item_id", pa.array(item.astype(np.int32)))
        self._put("events", t.append_column("_ord", _range(base, n)))
        self.ordinal += n

    def _add_items(self, t: pa.Table) -> None:
        # First row per item wins. Items already seen in events are tracked by id (a bit each);
        # only rows that arrive before any event of theirs need the key set.
        keys = t.column("item_key").to_pylist()
        ids = np.fromiter(map(self.items.ids.get, keys, itertools.repeat(-1)), dtype=np.int64, count=len(keys))
        if len(self.item_meta_done) < len(self.items):
            self.item_meta_done = np.concatenate(
                [self.item_meta_done, np.zeros(len(self.items) + len(self.item_meta_done), bool)]
            )
        done, pending = self.item_meta_done, self.item_meta_early
        keep = np.zeros(len(keys), dtype=bool)
        known = np.flatnonzero(ids >= 0)
        if len(known):
            uniq, first = np.unique(ids[known], return_index=True)
            rows = known[first][~done[uniq]]
            done[uniq] = True
            if pending:
                rows = np.array([j for j in rows.tolist() if keys[j] not in pending], dtype=np.int64)
            keep[rows] = True
        for j in np.flatnonzero(ids < 0).tolist():
            k = keys[j]
            if k is not None and k not in pending:
                pending.add(k)
                keep[j] = True
        if not keep.all():
            t = t.filter(pa.array(keep))
        if t.num_rows:
            self._put("items", t)

    def _put(self, kind: str, t: pa.Table) -> None:
        buf = self._buffers[kind]
        if buf and buf[0].schema != t.schema:
            self._flush(kind)
        buf.append(t)
        self._buffered[kind] += t.num_rows
        if self._buffered[kind] >= self.ROW_GROUP:
            self._flush(kind)

    def _flush(self, kind: str) -> None:
        import pyarrow.parquet as pq

        buf = self._buffers[kind]
        if not buf:
            return
        table = pa.concat_tables(buf)
        writer = self._writers.get(kind)
        if writer is not None and writer.schema != table.schema:
            writer.close()
            writer = None
        if writer is None:
            path = self.folder / f"{kind}-{len(self.files[kind]):05d}.parquet"
            # Snappy: as cheap to write as no compression, and fewer bytes to read back.
            writer = pq.ParquetWriter(path, table.schema, compression="snappy")
            self._writers[kind] = writer
            self.files[kind].append(path)
        writer.write_table(table, row_group_size=self.ROW_GROUP)
        buf.clear()
        self._buffered[kind] = 0

    def close(self) -> None:
        for kind in self._buffers:
            self._flush(kind)
        for w in self._writers.values():
            w.close()
        self._writers.clear()

    def relation(self, kind: str) -> str:
        """SQL for the staged rows of `kind` (an empty typed relation if there are none)."""
        files = self.files[kind]
        if files:
            listed = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
            return f"read_parquet([{listed}], union_by_name = true)"
        if kind == "items":
            return (
                "(SELECT NULL::VARCHAR AS item_key, NULL::VARCHAR AS name, NULL::VARCHAR AS creator, "
                "NULL::VARCHAR AS creator_key, NULL::VARCHAR AS album, NULL::VARCHAR AS album_key, "
                "NULL::VARCHAR AS meta WHERE false)"
            )
        if kind == "sequences":
            return (
                "(SELECT NULL::INTEGER AS seq_tmp, NULL::VARCHAR AS name, NULL::BIGINT AS created_at, "
                "NULL::BIGINT AS modified_at, NULL::VARCHAR AS meta, NULL::VARCHAR AS origin, "
                "NULL::BIGINT AS _ord WHERE false)"
            )
        raise InputError("no events were found", expected="at least one interaction")

    def seq_map(self) -> tuple[pa.Table, bool]:
        """(seq_tmp, seq_id, seq_key, length) of sequences with events; and whether seq_id == seq_tmp."""
        n = len(self.seqs)
        count = self.seqs.count[:n]
        decl = (
            self.decl[:n]
            if len(self.decl) >= n
            else np.concatenate([self.decl, np.full(n - len(self.decl), -1)])
        )
        tmp = np.flatnonzero(count > 0)
        declared = decl[tmp] >= 0
        order = np.lexsort((np.where(declared, decl[tmp], self.seqs.first[tmp]), ~declared))
        tmp = tmp[order]
        keys = np.array(list(self.seqs.ids.keys()), dtype=object)[tmp] if n else np.zeros(0, object)
        table = pa.table(
            {
                "seq_tmp": pa.array(tmp.astype(np.int32)),
                "seq_id": pa.array(np.arange(len(tmp), dtype=np.int32)),
                "seq_key": pa.array(keys, pa.string()),
                "length": pa.array(count[tmp].astype(np.int32)),
            }
        )
        return table, bool(np.array_equal(tmp, np.arange(len(tmp))))

    def item_map(self) -> pa.Table:
        keys = list(self.items.ids.keys())
        return pa.table(
            {
                "item_id": pa.array(np.arange(len(keys), dtype=np.int32)),
                "item_key": pa.array(keys, pa.string()),
            }
        )


def _runs_are_clean(seq: np.ndarray, position: pa.ChunkedArray, count_before: np.ndarray) -> bool:
    """True if each sequence in this chunk is one run, new, with positions exactly 0..len-1."""
    if position.null_count:
        return False
    n = len(seq)
    starts = np.flatnonzero(np.concatenate([[True], seq[1:] != seq[:-1]]))
    run_seq = seq[starts]
    if len(np.unique(run_seq)) != len(run_seq):
        return False
    if len(count_before) and (count_before[run_seq[run_seq < len(count_before)]] > 0).any():
        return False
    lengths = np.diff(np.append(starts, n))
    expected = np.arange(n) - np.repeat(starts, lengths)
    return bool(np.array_equal(position.to_numpy(), expected))


def _range(start: int, n: int) -> pa.Array:
    return pa.array(np.arange(start, start + n, dtype=np.int64))


def _finalise(con: duckdb.DuckDBPyConnection, stager: _Stager) -> None:
    seq_map, identity = stager.seq_map()
    con.register("_seq_map", seq_map)
    con.register("_item_map", stager.item_map())
    con.execute(f"CREATE TEMP VIEW raw_events AS SELECT * FROM {stager.relation('events')}")
    con.execute(f"CREATE TEMP VIEW raw_items AS SELECT * FROM {stager.relation('items')}")
    con.execute(f"CREATE TEMP VIEW raw_sequences AS SELECT * FROM {stager.relation('sequences')}")
    _sql(
        con,
        "resolve: sequences",
        """
        CREATE TABLE sequences AS
        SELECT m.seq_id, m.seq_key AS external_id, s.name, s.created_at, s.modified_at, m.length, s.meta
        FROM _seq_map m LEFT JOIN raw_sequences s USING (seq_tmp)
        ORDER BY m.seq_id
        """,
    )
    _sql(
        con,
        "resolve: items",
        """
        CREATE TABLE items AS
        SELECT m.item_id, m.item_key AS external_id, r.name, r.creator, r.creator_key AS creator_id,
               r.album, r.album_key AS album_id, r.meta
        FROM _item_map m LEFT JOIN raw_items r USING (item_key)
        ORDER BY m.item_id
        """,
    )
    extra_cols = "".join(f', e."{c}"' for c in stager.extras)
    if stager.clean and identity:
        # Positions are final and the files are in (seq_id, position) order: a straight copy.
        con.execute("SET preserve_insertion_order = true")
        _sql(
            con,
            "resolve: events (copy)",
            f"""CREATE TABLE events AS
                SELECT e.seq_tmp AS seq_id, e.position, e.item_id, e.ts, e.rating{extra_cols}
                FROM raw_events e""",
        )
        con.execute("SET preserve_insertion_order = false")
    elif stager.clean:
        _sql(
            con,
            "resolve: events (join)",
            f"""CREATE TABLE events AS
                SELECT m.seq_id, e.position, e.item_id, e.ts, e.rating{extra_cols}
                FROM raw_events e JOIN _seq_map m USING (seq_tmp)
                ORDER BY m.seq_id, e.position""",
        )
    else:
        _sql(
            con,
            "resolve: events (order)",
            f"""CREATE TABLE events AS
                SELECT m.seq_id,
                       (row_number() OVER (PARTITION BY m.seq_id
                            ORDER BY e.position NULLS LAST, e.ts NULLS LAST, e._ord) - 1)::INTEGER AS position,
                       e.item_id, e.ts, e.rating{extra_cols}
                FROM raw_events e JOIN _seq_map m USING (seq_tmp)
                ORDER BY m.seq_id, position""",
        )
    con.unregister("_seq_map")
    con.unregister("_item_map")
    con.execute(
        """
        DROP VIEW raw_events; DROP VIEW raw_items; DROP VIEW raw_sequences;
        CREATE TABLE split_events (split VARCHAR, seq_id INTEGER, position INTEGER, part UTINYINT);
        CREATE TABLE splits (split VARCHAR PRIMARY KEY, kind VARCHAR, params VARCHAR, checks VARCHAR);
        CREATE TABLE vocab (split VARCHAR, token INTEGER, item_id INTEGER, count BIGINT);
        CREATE TABLE source_files (source VARCHAR, path VARCHAR, bytes BIGINT, sha256 VARCHAR, md5_verified BOOLEAN);
        CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR);
        """
    )


def _sql(con: duckdb.DuckDBPyConnection, name: str, sql: str) -> None:
    with _timed(BUILD_TIMINGS, name):
        con.execute(sql)


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


def _is_duckdb_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(12)[8:12] == b"DUCK"  # DuckDB's magic bytes, after the 8-byte checksum


def is_segue_store(path: str | Path) -> bool:
    """Whether `path` is a file that `segue data build` wrote (any schema version): a DuckDB file
    with a meta table naming its schema version. What `--force` may replace."""
    path = Path(path)
    if not path.is_file() or not _is_duckdb_file(path):
        return False
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return False
    try:
        return con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() is not None
    except duckdb.Error:
        return False
    finally:
        con.close()


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
        if path.is_dir() or not _is_duckdb_file(path):  # e.g. the CSV itself given as the store
            raise StoreError(f"{path}: not a segue store (expected the .duckdb file written by `segue data build`)")
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
        seq_chunk: int = 1 << 16,
    ) -> Iterator[pa.RecordBatch]:
        """Stream the events of `split` whose part is in `parts`, ordered by (seq_id, position).

        Every batch has seq_id and position first, then `columns` (any events column). The query
        runs over ranges of `seq_chunk` sequences, so DuckDB sorts one range at a time: memory
        stays bounded by the range, not the corpus (a single ORDER BY over 66M events held them all).
        """
        self.require_split(split)
        parts = [int(p) for p in parts]
        cols = "".join(f', e."{c}"' for c in columns if c not in ("seq_id", "position"))
        sql = f"""
            SELECT e.seq_id, e.position{cols}
            FROM events e JOIN split_events s USING (seq_id, position)
            WHERE s.split = ? AND s.part IN ({",".join("?" * len(parts))}) AND e.seq_id >= ? AND e.seq_id < ?
              AND s.seq_id >= ? AND s.seq_id < ?
            ORDER BY e.seq_id, e.position
        """
        (n_seq,) = self.con.execute("SELECT coalesce(max(seq_id) + 1, 0) FROM sequences").fetchone()
        for lo in range(0, max(int(n_seq), 1), seq_chunk):
            hi = lo + seq_chunk
            yield from self.con.execute(sql, [split, *parts, lo, hi, lo, hi]).to_arrow_reader(batch_rows)

    def items_table(self) -> pa.Table:
        return self.con.execute("SELECT * FROM items ORDER BY item_id").to_arrow_table()

    def sequence_items(self, seq_id: int) -> list[int]:
        return [r[0] for r in self.con.execute(
            "SELECT item_id FROM events WHERE seq_id = ? ORDER BY position", [seq_id]
        ).fetchall()]


@contextlib.contextmanager
def modify_store(path: str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """Change an existing store atomically: work on a copy, rename it over the original on success.

    Changes of one store run one at a time (an flock on `.NAME.lock` beside it; a second waits,
    saying so): two `data add-split` at once both said "added", and the last rename dropped the
    other's split. Ctrl-C stops the change and leaves the store as it was (DuckDB swallowed it
    inside some statements, and the split was added anyway)."""
    import shutil

    path = Path(path)
    require_writable(path)  # the lock file and the copy go beside the store
    with _store_lock(path):
        Store.open(path).close()  # validates (after the lock: the store another change left)
        with atomic_path(path) as tmp:
            shutil.copyfile(path, tmp)
            con = duckdb.connect(str(tmp))
            try:
                with _ctrl_c_interrupts(con) as pressed:
                    try:
                        yield con
                        con.execute("DELETE FROM meta WHERE key = 'content_checksum'")
                        con.execute("INSERT INTO meta VALUES ('content_checksum', ?)", [content_checksum(con)])
                        con.execute("CHECKPOINT")
                    except (duckdb.InterruptException, RuntimeError) as e:
                        if pressed.is_set() or _interrupted(e):
                            raise KeyboardInterrupt from None
                        raise
                    if pressed.is_set():  # pressed between statements, or swallowed by one
                        raise KeyboardInterrupt
            finally:
                con.close()


@contextlib.contextmanager
def _store_lock(path: Path) -> Iterator[None]:
    import fcntl
    import sys

    with open(path.with_name(f".{path.name}.lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"note: waiting for another change to {path} to finish", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file drops the lock (so does the process's end)


@contextlib.contextmanager
def _ctrl_c_interrupts(con: duckdb.DuckDBPyConnection) -> Iterator[threading.Event]:
    """While inside: Ctrl-C sets the yielded event and interrupts `con`'s running statement
    (main thread only, over Python's own handler: a caller's handler, or an ignored SIGINT, is left alone)."""
    import signal

    pressed = threading.Event()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield pressed
        return

    def on_sigint(signum: int, frame: Any) -> None:
        pressed.set()
        with contextlib.suppress(Exception):
            con.interrupt()

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, old)


__all__ = ["BuildConfig", "Store", "build_store", "modify_store", "content_checksum", "SegueError"]
