"""Generic interaction tables: CSV/TSV (any one-character delimiter, or '::') and Parquet, with a
column mapping.

    TabularSource("ratings.csv", user="userId", item="movieId", timestamp="ts", rating="rating",
                  feedback=["listened_fraction"], context=["device"])

`user` (the sequence) and `item` are required; `timestamp` (unix seconds, or milliseconds with
timestamp_unit="ms", or ISO-8601 text, UTC unless it says otherwise), `rating` and `position` (order inside the sequence) are optional.
Each `feedback` column becomes a float event column `fb_<name>`, each `context` column a text
column `ctx_<name>` (a dict maps new names to source columns). A feedback column may hold
true/false (yes/no; any case), stored as 1/0 (a skipped flag), and a feedback source may be the
ratio of two columns, `listened=ms_played/duration` (null where the denominator is 0 or missing),
so a listening log keeps its fraction listened. Events of one user are ordered by
position, then timestamp, then file order. CSV is streamed in blocks by pyarrow, Parquet by row
group; a bad value is reported with file, line (CSV) or row (Parquet), and column.

An item table (`items`: CSV/TSV or Parquet, one item a row) gives the items their names and
metadata: its id column (`items_id`, found by name) joins the events' item ids, its name column
(`items_name`, found by name) names them, and every other column is kept in the item's meta (so
`genre` and `type` become side features, segue.data.item_features).

Columns named by convention are mapped without options (`CONVENTIONS`, matched case-insensitively;
an explicit option wins, and an empty one, e.g. timestamp=, maps nothing). `notes()` says what was
mapped and warns when a time-like column is left unmapped (events would follow file order).
"""

from __future__ import annotations

import codecs
import html
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from segue.data.sources.base import Chunk, SourceFile
from segue.data.sources.common import (
    ColumnReader,
    first_undecodable_line,
    iter_text_batches,
    read_header,
    require_file,
    sniff_delimiter,
)
from segue.errors import InputError

Columns = Sequence[str] | Mapping[str, str]
_UNITS = {"s": 1, "ms": 1000, "us": 1_000_000}  # numeric timestamps: units per second

SUMMARY = "an interaction table, CSV/TSV (any one-character delimiter, or `::`) or Parquet, one event a row."
EXAMPLE = "segue data build csv ratings.csv --option user=userId --option item=movieId --option timestamp_unit=ms"
# Column names mapped without an option, in order of preference (matched case-insensitively).
CONVENTIONS: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userId", "session_id"),
    "item": ("item", "item_id", "itemId", "track_uri"),
    "timestamp": ("timestamp", "time", "ts", "datetime"),
    "rating": ("rating", "score"),
}
# The item table's columns, found by name in this order (besides the events' own item column name).
ITEM_CONVENTIONS: dict[str, tuple[str, ...]] = {
    "items_id": ("item", "item_id", "itemId", "id"),
    "items_name": ("name", "title"),
}
# Columns that look like times: left unmapped, they deserve a warning (order would be file order).
_TIME_LIKE = re.compile(r"(time|date|when|epoch|^ts$|_ts$|^ts_|_at$)", re.IGNORECASE)
OPTIONS: dict[str, str] = {
    "user": "column of the user/session id, one sequence per value (found by name: user, user_id, userId, session_id)",
    "item": "column of the item id (found by name: item, item_id, itemId, track_uri)",
    "timestamp": "column of event times: unix time or ISO-8601 text, UTC unless it says; orders each user's events "
    "(found by name: timestamp, time, ts, datetime; `timestamp=` maps none)",
    "rating": "column of numeric ratings (found by name: rating, score; `rating=` maps none)",
    "position": "column of whole numbers giving the order inside a sequence (before timestamp)",
    "feedback": "comma-separated numeric or true/false columns, stored as event columns `fb_<name>`; "
    "`name=a/b` stores the ratio of columns a and b (e.g. listened=ms_played/duration)",
    "context": "comma-separated text columns, stored as event columns `ctx_<name>`",
    "delimiter": "field separator (default: sniffed from the first line: tab, `::`, `,`, `;`, `|`, else spaces; `\\t` or `tab` for a tab)",
    "header": "false when the first line is data (then give column_names); default true",
    "column_names": "comma-separated names for the columns (replaces the header, or names a headerless file)",
    "encoding": "text encoding of a CSV file (default utf-8)",
    "format": "csv or parquet (default: parquet for .parquet/.pq files, else csv)",
    "timestamp_unit": "unit of numeric timestamps: s (default), ms or us",
    "items": "an item table (CSV/TSV or Parquet, one item a row): names and metadata of the items; "
    "its columns other than id and name are kept as item metadata (e.g. genre, type: side features)",
    "items_id": "the item table's id column, holding the events' item ids (found by name: the events' item "
    "column, item, item_id, itemId, id)",
    "items_name": "the item table's name column (found by name: name, title; `items_name=` maps none)",
    "items_delimiter": "the item table's field separator (default: sniffed from its first line)",
    "items_unescape": "decode HTML entities in the item table's text (&#039; &amp; &quot;), as scraped tables "
    "hold them (true/false, default false; a note says when names look escaped)",
}
_ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|amp|quot|lt|gt|apos);")


class TabularSource:
    name = "tabular"

    def __init__(
        self,
        path: str | Path,
        *,
        user: str | None = None,
        item: str | None = None,
        timestamp: str | None = None,
        rating: str | None = None,
        position: str | None = None,
        feedback: Columns | str = (),
        context: Columns | str = (),
        delimiter: str | None = None,
        header: bool = True,
        column_names: Sequence[str] | None = None,
        encoding: str = "utf-8",
        format: str | None = None,
        timestamp_unit: str = "s",
        items: str | Path | None = None,
        items_id: str | None = None,
        items_name: str | None = None,
        items_delimiter: str | None = None,
        items_unescape: bool = False,
    ) -> None:
        self.path = Path(path)
        self.items = Path(items) if items else None
        if (items_id is not None or items_name is not None or items_delimiter) and self.items is None:
            raise InputError("items_id, items_name and items_delimiter describe an item table", field="items", expected="--option items=<path of the item table>")
        self.items_given = {k: str(v).strip() for k, v in (("items_id", items_id), ("items_name", items_name)) if v is not None}
        self.items_delimiter = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(items_delimiter, items_delimiter) if items_delimiter else None
        self.items_mapping: dict[str, str | None] | None = None  # items_id / items_name -> column, once read
        self._items_table: pa.Table | None = None
        self.items_unescape = items_unescape
        given = {"user": user, "item": item, "timestamp": timestamp, "rating": rating, "position": position}
        # Column names may arrive as numbers from a command line (user=0 for a headerless file);
        # "" says "map nothing" (no detection for that target).
        self.given = {k: str(v).strip() for k, v in given.items() if v is not None}
        self.mapping: dict[str, str | None] = {k: self.given.get(k) or None for k in given}
        _check_distinct(self.mapping)
        self.detected: list[str] = []  # targets mapped by CONVENTIONS
        self.available: list[str] | None = None  # the file's columns, once read
        self.feedback = _named(feedback, "fb_")
        self.context = _named(context, "ctx_")
        # a tab is hard to type into a shell option: `\t` and `tab` name it too
        self.delimiter = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(delimiter, delimiter) if delimiter else delimiter
        for key, d in (("delimiter", self.delimiter), ("items_delimiter", self.items_delimiter)):
            if d and not (len(d) == 1 or (len(d) == 2 and d[0] == d[1])):  # checked before the header is split on it
                raise InputError(f"unsupported delimiter {d!r}", field=key, expected="one character, '\\t', or a doubled one such as '::'")
        self.header = header
        if isinstance(column_names, str):  # "a,b,c" (as from a command line)
            column_names = [c.strip() for c in column_names.split(",")]
        self.column_names = list(column_names) if column_names else None
        self.encoding = encoding
        if timestamp_unit not in _UNITS:
            raise InputError(f"unknown timestamp unit '{timestamp_unit}'", field="timestamp_unit", expected=", ".join(_UNITS))
        self.timestamp_unit = timestamp_unit
        self.format = format or ("parquet" if self.path.suffix.lower() in (".parquet", ".pq") else "csv")
        if self.format not in ("csv", "parquet"):
            raise InputError(f"unknown format '{self.format}'", path=self.path, expected="csv or parquet")

    def wanted(self) -> dict[str, str]:
        """Target name -> source column."""
        out = {k: v for k, v in self.mapping.items() if v is not None}
        return out | self.feedback | self.context

    def resolve(self) -> dict[str, str | None]:
        """Read the column names and complete the mapping by CONVENTIONS (once); target -> column."""
        if self.available is not None:
            return self.mapping
        require_file(self.path, "an interaction table")
        how = ""
        if self.format == "parquet":
            self.available = self._parquet_columns()
        else:
            self.available, delimiter = self._csv_columns()
            how = f" (read with delimiter {delimiter!r})" if len(self.available) < 3 else ""
        used = set(self.source_columns())
        by_lower = {}
        for c in self.available:
            by_lower.setdefault(c.lower(), c)
        for target, names in CONVENTIONS.items():
            if target in self.given:
                continue
            for name in names:
                column = by_lower.get(name.lower())
                if column is not None and column not in used:
                    self.mapping[target] = column
                    self.detected.append(target)
                    used.add(column)
                    break
        for target in ("user", "item"):
            if self.mapping[target] is None and target in self.given:  # user= / item=
                raise InputError(
                    f"option '{target}' is empty, but {target} cannot be left unmapped",
                    path=self.path,
                    field=target,
                    expected=f"--option {target}=<column> (the file has: {', '.join(self.available)})",
                )
            if self.mapping[target] is None:
                taken = [
                    f"column '{c}' is mapped to {t}"
                    for t, c in self.mapping.items()
                    if c is not None and c.lower() in {n.lower() for n in CONVENTIONS[target]}
                ]
                if taken:
                    how = f"{how}; {', '.join(taken)}"
                raise InputError(
                    f"no {target} column found; the file has: {', '.join(self.available)}{how}",
                    path=self.path,
                    expected=f"a column named {' / '.join(CONVENTIONS[target])}, or --option {target}=<column>",
                )
        self._check_columns(self.available, str(self.path))
        return self.mapping

    def source_columns(self) -> list[str]:
        """The file's columns the mapping reads (both columns of a ratio `a/b`)."""
        return [c for column in self.wanted().values() for c in column.split("/")]

    def notes(self) -> list[str]:
        """What was mapped (and whether found by name), the columns left out, and a warning when no
        timestamp (nor position) is mapped although a column looks like a time."""
        self.resolve()
        assert self.available is not None
        parts = [
            f"{target} <- {column}" + (" (found by name)" if target in self.detected else "")
            for target, column in self.wanted().items()
        ]
        out = ["columns: " + ", ".join(parts)]
        used = set(self.source_columns())
        unused = [c for c in self.available if c not in used]
        if unused:
            out.append("not imported: " + ", ".join(unused))
        if self.mapping["timestamp"] is None and self.mapping["position"] is None:
            timelike = [c for c in unused if _TIME_LIKE.search(c)]
            if timelike:
                out.append(
                    f"warning: column '{timelike[0]}' looks like a time but is not mapped, so each user's events "
                    f"keep file order and have no timestamp (map it with --option timestamp={timelike[0]})"
                )
            else:
                out.append("note: no timestamp column, so each user's events keep file order")
        if self.items is not None:
            table = self._read_items()
            m = self._resolve_items(table.column_names)
            rest = [c for c in table.column_names if c not in m.values()]
            out.append(
                f"items: {self.items}: id <- {m['items_id']}, name <- {m['items_name'] or '(none)'}"
                + (f", meta <- {', '.join(rest)}" if rest else "")
            )
            if m["items_name"] and not self.items_unescape:
                names = [n for n in table.column(m["items_name"]).to_pylist() if isinstance(n, str) and _ENTITY.search(n)]
                if names:
                    out.append(
                        f"note: {len(names)} item names hold HTML entities (e.g. {names[0]!r}); "
                        "--option items_unescape=true decodes them"
                    )
        return out

    def chunks(self) -> Iterator[Chunk]:
        self.resolve()
        if self.items is not None:
            yield Chunk(items=self._item_table())
        if self.format == "parquet":
            yield from self._parquet()
        else:
            yield from self._csv()

    def _check_columns(self, available: list[str], where: str) -> None:
        for target, spec in self.wanted().items():
            for column in spec.split("/"):
                if column in available:
                    continue
                raise InputError(
                    f"no column '{column}' (mapped to {target}); the file has: {', '.join(available)}",
                    path=where,
                    field=column,
                    expected="an existing column name",
                )

    def _csv_columns(self) -> tuple[list[str], str]:
        """The CSV's column names and delimiter."""
        first = read_header(self.path, self.encoding)
        delimiter = self.delimiter or sniff_delimiter(first)
        if self.column_names:
            names = self.column_names
        elif self.header:
            names = _header_names(first, delimiter)
        else:
            raise InputError("a file without header needs column_names", path=self.path, expected="column_names=a,b,c")
        if len(set(names)) != len(names):
            raise InputError(f"repeated column names: {names}", path=self.path, line=1, expected="distinct names")
        return names, delimiter

    def _csv(self) -> Iterator[Chunk]:
        names, delimiter = self._csv_columns()
        skip = 1 if self.header else 0
        reader = ColumnReader(self.path, skip_lines=skip, encoding=self.encoding)
        try:
            for batch in iter_text_batches(self.path, delimiter=delimiter, names=names, skip_lines=skip, encoding=self.encoding):
                yield Chunk(events=self._events(batch, reader))
                reader.row_offset += batch.num_rows
        except InputError as e:
            # pyarrow says "invalid UTF8 data" without a line: find the first undecodable one
            if "invalid UTF8" in str(e) and codecs.lookup(self.encoding).name == "utf-8":
                raise self._not_utf8() from None
            raise
        self._require_rows(reader.row_offset, "after its header" if self.header else "")

    def _not_utf8(self) -> InputError:
        """The error for a CSV that is not UTF-8: its first undecodable line and the encoding option
        (error path only: reads the file once more, line by line)."""
        line, text = first_undecodable_line(self.path)
        return InputError(
            f"not UTF-8 text{f' ({text[:80]!r})' if text else ''}",
            path=self.path,
            line=line,
            expected="UTF-8; for another encoding pass the source option encoding=<codec>, e.g. --option encoding=latin-1",
        )

    def _require_rows(self, rows: int, where: str) -> None:
        # named here: the store's own "no events were found" cannot tell which file was empty
        if rows == 0:
            raise InputError(
                f"no events were found: the file has no rows{' ' + where if where else ''}",
                path=self.path,
                expected="at least one interaction",
            )

    def _parquet_columns(self) -> list[str]:
        import pyarrow.parquet as pq

        try:
            return list(pq.ParquetFile(self.path).schema_arrow.names)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"not a readable Parquet file ({e})", path=self.path) from None

    def _parquet(self) -> Iterator[Chunk]:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"not a readable Parquet file ({e})", path=self.path) from None
        reader = ColumnReader(self.path, lines=False)
        columns = sorted(set(self.source_columns()))
        schema = pf.schema_arrow
        for name in columns:  # refused before any row is read
            _check_scalar(schema.field(name).type, self.path, name)
        for batch in pf.iter_batches(columns=columns, batch_size=1 << 20):
            text = pa.record_batch(
                [_parquet_text(c, self.path, n, reader.row_offset) for c, n in zip(batch.columns, batch.schema.names, strict=True)],
                names=batch.schema.names,
            )
            yield Chunk(events=self._events(text, reader))
            reader.row_offset += batch.num_rows
        self._require_rows(reader.row_offset, "")

    def _events(self, batch: pa.RecordBatch, reader: ColumnReader) -> pa.Table:
        m = self.mapping
        assert m["user"] is not None and m["item"] is not None  # resolve() ran
        user = pc.utf8_trim_whitespace(_text(batch.column(m["user"])))
        item = pc.utf8_trim_whitespace(_text(batch.column(m["item"])))
        reader.missing(user, m["user"], "a user/sequence id")
        reader.missing(item, m["item"], "an item id")
        cols: dict[str, pa.Array] = {"seq_key": user, "item_key": item}
        if m["position"]:
            cols["position"] = pc.cast(reader.number(_text(batch.column(m["position"])), m["position"], integer=True, limit=2**31), pa.int32())
        if m["timestamp"]:
            cols["ts"] = reader.timestamp(_text(batch.column(m["timestamp"])), m["timestamp"], per_second=_UNITS[self.timestamp_unit])
        if m["rating"]:
            cols["rating"] = reader.number(_text(batch.column(m["rating"])), m["rating"])
        for target, column in self.feedback.items():
            parts = [reader.number(_flags(_text(batch.column(c))), c) for c in column.split("/")]
            if len(parts) == 2:  # a ratio a/b: null where b is 0 or missing
                num, den = parts
                cols[target] = pc.if_else(pc.equal(den, 0.0), None, pc.divide(num, den))
            else:
                cols[target] = parts[0]
        for target, column in self.context.items():
            cols[target] = _text(batch.column(column))
        return pa.table(cols)

    # --- the item table --------------------------------------------------------------------------

    def _read_items(self) -> pa.Table:
        """The item table (read once): text columns from CSV/TSV, Parquet's own types (a list of
        genres stays a list in the meta)."""
        if self._items_table is not None:
            return self._items_table
        assert self.items is not None
        path = require_file(self.items, "an item table")
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except (pa.ArrowInvalid, OSError) as e:
                raise InputError(f"not a readable Parquet file ({e})", path=path) from None
        else:
            first = read_header(path, self.encoding)
            delimiter = self.items_delimiter or sniff_delimiter(first)
            names = _header_names(first, delimiter)
            if len(set(names)) != len(names):
                raise InputError(f"repeated column names: {names}", path=path, line=1, expected="distinct names")
            batches = list(iter_text_batches(path, delimiter=delimiter, names=names, skip_lines=1, encoding=self.encoding))
            table = pa.Table.from_batches(batches) if batches else pa.table({n: pa.array([], pa.string()) for n in names})
        self._items_table = table
        return table

    def _resolve_items(self, columns: list[str]) -> dict[str, str | None]:
        """items_id / items_name -> the item table's column (given, else found by name)."""
        if self.items_mapping is not None:
            return self.items_mapping
        by_lower: dict[str, str] = {}
        for c in columns:
            by_lower.setdefault(c.lower(), c)
        out: dict[str, str | None] = {}
        for target, names in ITEM_CONVENTIONS.items():
            given = self.items_given.get(target)
            if given is not None:
                if given and given not in columns:
                    raise InputError(
                        f"no column '{given}' (mapped to {target}); the item table has: {', '.join(columns)}",
                        path=self.items,
                        field=given,
                        expected="an existing column name",
                    )
                out[target] = given or None
                continue
            if target == "items_id":
                names = (self.mapping["item"] or "", *names)
            out[target] = next((by_lower[n.lower()] for n in names if n and n.lower() in by_lower), None)
        if out["items_id"] is None:
            raise InputError(
                f"no item id column found; the item table has: {', '.join(columns)}",
                path=self.items,
                expected=f"a column named {' / '.join(ITEM_CONVENTIONS['items_id'])}, or --option items_id=<column>",
            )
        self.items_mapping = out
        return out

    def _item_table(self) -> pa.Table:
        """item_key, name and meta (JSON of the other columns; empty values left out)."""
        import json

        assert self.items is not None
        table = self._read_items()
        m = self._resolve_items(table.column_names)
        assert m["items_id"] is not None
        id_col = table.column(m["items_id"]).combine_chunks()
        if self.items.suffix.lower() in (".parquet", ".pq"):
            _check_scalar(id_col.type, self.items, m["items_id"])
            id_col = _parquet_text(id_col, self.items, m["items_id"], 0)
        ids = pc.utf8_trim_whitespace(_text(id_col))
        missing = pc.or_(pc.is_null(ids), pc.equal(ids, "")).to_numpy(zero_copy_only=False)
        if missing.any():
            row = int(missing.argmax())  # data row; a CSV's line counts its header too
            where = {"record": f"row {row + 1}"} if self.items.suffix.lower() in (".parquet", ".pq") else {"line": row + 2}
            raise InputError("an item without an id", path=self.items, field=m["items_id"], expected="an item id in every row", **where)

        def clean(v: Any) -> Any:
            """Text trimmed (and unescaped on request), lists element-wise; '' and None are dropped."""
            if isinstance(v, str):
                v = v.strip()
                return (html.unescape(v) if self.items_unescape else v) or None
            if isinstance(v, list):
                return [x for x in map(clean, v) if x is not None] or None
            return v

        rest = [c for c in table.column_names if c not in m.values()]
        cols = {c: table.column(c).to_pylist() for c in rest}
        meta = [
            json.dumps({c: v for c in rest if (v := clean(cols[c][i])) is not None}, ensure_ascii=False, default=str)
            for i in range(table.num_rows)
        ]
        names = table.column(m["items_name"]).to_pylist() if m["items_name"] else [None] * table.num_rows
        name = pa.array([None if n is None else clean(str(n)) for n in names], pa.string())
        return pa.table({"item_key": ids, "name": name, "meta": pa.array(meta, pa.string())})

    def files(self) -> list[SourceFile]:
        return [SourceFile(self.path)] + ([SourceFile(self.items)] if self.items is not None else [])

    def params(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "format": self.format,
            "columns": self.wanted(),
            "timestamp_unit": self.timestamp_unit,
        } | ({"items": str(self.items), "items_columns": self.items_mapping} if self.items is not None else {})


def _header_names(first: str, delimiter: str) -> list[str]:
    """Column names of a header line; an unnamed column (Excel's empty trailing columns) is named
    column<N> (its 1-based place), so that it is only left out, not a 'repeated name' error."""
    names = [n.strip().strip('"') for n in (first.split(delimiter) if delimiter != " " else first.split())]
    return [n or f"column{i + 1}" for i, n in enumerate(names)]


def _check_distinct(mapping: dict[str, str | None]) -> None:
    """Each column feeds one of user, item, timestamp, rating and position: user=item=User_ID had
    built one sequence per user of its own id repeated."""
    by_column: dict[str, str] = {}
    for target, column in mapping.items():
        if column is None:
            continue
        if column in by_column:
            raise InputError(
                f"options '{by_column[column]}' and '{target}' both map column '{column}'",
                field=target,
                expected=f"a column of its own for each of {', '.join(mapping)}",
            )
        by_column[column] = target


def _flags(col: pa.Array) -> pa.Array:
    """true/false and yes/no (any case) as 1/0, other text unchanged (a feedback flag)."""
    low = pc.utf8_lower(pc.utf8_trim_whitespace(col))
    one = pc.or_(pc.equal(low, "true"), pc.equal(low, "yes"))
    zero = pc.or_(pc.equal(low, "false"), pc.equal(low, "no"))
    return pc.if_else(one, "1", pc.if_else(zero, "0", col))


def _check_scalar(t: pa.DataType, path: Path, field: str) -> None:
    """A Parquet column segue reads as text must hold one value a row (a list of items is not an item id)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_nested(t) or pa.types.is_null(t):
        raise InputError(f"a {t} column", path=path, field=field, expected="text or numbers, one value a row")


def _parquet_text(col: pa.Array, path: Path, field: str, row_offset: int) -> pa.Array:
    """A Parquet column as text; bytes that are not UTF-8 are refused by row (pyarrow said only
    'Invalid UTF8 payload'), a type with no text form by name."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col
    try:
        return pc.cast(col, pa.string())
    except pa.ArrowInvalid:
        if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type) or pa.types.is_fixed_size_binary(col.type):
            for i, v in enumerate(col.to_pylist()):  # error path only
                try:
                    (v or b"").decode("utf-8")
                except UnicodeDecodeError:
                    raise InputError(
                        f"not UTF-8 text ({v[:40]!r})", path=path, record=f"row {row_offset + i + 1}", field=field, expected="UTF-8 text"
                    ) from None
        raise
    except pa.ArrowNotImplementedError:
        raise InputError(f"a {col.type} column", path=path, field=field, expected="text or numbers") from None


def _text(col: pa.Array) -> pa.Array:
    return col if pa.types.is_string(col.type) else pc.cast(col, pa.string())


def _named(cols: Columns | str, prefix: str) -> dict[str, str]:
    if isinstance(cols, str):  # "a,b" (as from a command line)
        cols = [c.strip() for c in cols.split(",") if c.strip()]
    items = list(cols.items()) if isinstance(cols, Mapping) else [(c, c) for c in cols]
    out = {}
    for name, column in items:
        if "=" in name and isinstance(cols, str | list | tuple):  # "listened=ms_played/duration"
            name, column = (x.strip() for x in name.split("=", 1))
        if "/" in column and (prefix != "fb_" or column.count("/") != 1 or not all(column.split("/"))):
            raise InputError(f"column '{column}' cannot be used", field=name, expected="a column, or a ratio a/b of two feedback columns")
        target = name if name.startswith(prefix) else prefix + name
        if not target[len(prefix) :].replace("_", "").isalnum():
            raise InputError(f"column name '{name}' cannot be used", field=name, expected="letters, digits and _")
        out[target] = column
    return out


__all__ = ["TabularSource"]
