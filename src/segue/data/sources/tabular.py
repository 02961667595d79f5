"""Generic interaction tables: CSV/TSV (any one-character delimiter, or '::') and Parquet, with a
column mapping.

    TabularSource("ratings.csv", user="userId", item="movieId", timestamp="ts", rating="rating",
                  feedback=["listened_fraction"], context=["device"])

`user` (the sequence) and `item` are required; `timestamp` (unix seconds, or milliseconds with
timestamp_unit="ms", or ISO-8601 text, UTC unless it says otherwise), `rating` and `position` (order inside the sequence) are optional.
Each `feedback` column becomes a float event column `fb_<name>`, each `context` column a text
column `ctx_<name>` (a dict maps new names to source columns). Events of one user are ordered by
position, then timestamp, then file order. CSV is streamed in blocks by pyarrow, Parquet by row
group; a bad value is reported with file, line (CSV) or row (Parquet), and column.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from segue.data.sources.base import Chunk, SourceFile
from segue.data.sources.common import (
    ColumnReader,
    iter_text_batches,
    read_header,
    require_file,
    sniff_delimiter,
)
from segue.errors import InputError

Columns = Sequence[str] | Mapping[str, str]
_UNITS = {"s": 1, "ms": 1000, "us": 1_000_000}  # numeric timestamps: units per second


class TabularSource:
    name = "tabular"

    def __init__(
        self,
        path: str | Path,
        *,
        user: str,
        item: str,
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
    ) -> None:
        self.path = Path(path)
        given = {"user": user, "item": item, "timestamp": timestamp, "rating": rating, "position": position}
        # Column names may arrive as numbers from a command line (user=0 for a headerless file).
        self.mapping = {k: None if v is None else str(v) for k, v in given.items()}
        self.feedback = _named(feedback, "fb_")
        self.context = _named(context, "ctx_")
        self.delimiter = delimiter
        self.header = header
        self.column_names = list(column_names) if column_names else None
        self.encoding = encoding
        if timestamp_unit not in _UNITS:
            raise InputError(f"unknown timestamp unit '{timestamp_unit}'", expected=" or ".join(_UNITS))
        self.timestamp_unit = timestamp_unit
        self.format = format or ("parquet" if self.path.suffix.lower() in (".parquet", ".pq") else "csv")
        if self.format not in ("csv", "parquet"):
            raise InputError(f"unknown format '{self.format}'", path=self.path, expected="csv or parquet")

    def wanted(self) -> dict[str, str]:
        """Target name -> source column."""
        out = {k: v for k, v in self.mapping.items() if v is not None}
        return out | self.feedback | self.context

    def chunks(self) -> Iterator[Chunk]:
        require_file(self.path, "an interaction table")
        if self.format == "parquet":
            yield from self._parquet()
        else:
            yield from self._csv()

    def _check_columns(self, available: list[str], where: str) -> None:
        for target, column in self.wanted().items():
            if column not in available:
                raise InputError(
                    f"no column '{column}' (mapped to {target}); the file has: {', '.join(available)}",
                    path=where,
                    field=column,
                    expected="an existing column name",
                )

    def _csv(self) -> Iterator[Chunk]:
        first = read_header(self.path, self.encoding)
        delimiter = self.delimiter or sniff_delimiter(first)
        if self.column_names:
            names = self.column_names
        elif self.header:
            names = [n.strip().strip('"') for n in (first.split(delimiter) if delimiter != " " else first.split())]
        else:
            raise InputError("a file without header needs column_names", path=self.path, expected="column_names=[...]")
        if len(set(names)) != len(names):
            raise InputError(f"repeated column names: {names}", path=self.path, line=1, expected="distinct names")
        self._check_columns(names, str(self.path))
        skip = 1 if self.header else 0
        reader = ColumnReader(self.path, skip_lines=skip, encoding=self.encoding)
        for batch in iter_text_batches(self.path, delimiter=delimiter, names=names, skip_lines=skip, encoding=self.encoding):
            yield Chunk(events=self._events(batch, reader))
            reader.row_offset += batch.num_rows

    def _parquet(self) -> Iterator[Chunk]:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"not a readable Parquet file ({e})", path=self.path) from None
        self._check_columns(pf.schema_arrow.names, str(self.path))
        reader = ColumnReader(self.path, lines=False)
        columns = sorted(set(self.wanted().values()))
        for batch in pf.iter_batches(columns=columns, batch_size=1 << 20):
            text = pa.record_batch(
                [c if pa.types.is_string(c.type) else pc.cast(c, pa.string()) for c in batch.columns], names=batch.schema.names
            )
            yield Chunk(events=self._events(text, reader))
            reader.row_offset += batch.num_rows

    def _events(self, batch: pa.RecordBatch, reader: ColumnReader) -> pa.Table:
        m = self.mapping
        user = pc.utf8_trim_whitespace(_text(batch.column(m["user"])))
        item = pc.utf8_trim_whitespace(_text(batch.column(m["item"])))
        reader.missing(user, m["user"], "a user/sequence id")
        reader.missing(item, m["item"], "an item id")
        cols: dict[str, pa.Array] = {"seq_key": user, "item_key": item}
        if m["position"]:
            cols["position"] = pc.cast(reader.number(_text(batch.column(m["position"])), m["position"], integer=True), pa.int32())
        if m["timestamp"]:
            cols["ts"] = reader.timestamp(_text(batch.column(m["timestamp"])), m["timestamp"], per_second=_UNITS[self.timestamp_unit])
        if m["rating"]:
            cols["rating"] = reader.number(_text(batch.column(m["rating"])), m["rating"])
        for target, column in self.feedback.items():
            cols[target] = reader.number(_text(batch.column(column)), column)
        for target, column in self.context.items():
            cols[target] = _text(batch.column(column))
        return pa.table(cols)

    def files(self) -> list[SourceFile]:
        return [SourceFile(self.path)]

    def params(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "format": self.format,
            "columns": self.wanted(),
            "timestamp_unit": self.timestamp_unit,
        }


def _text(col: pa.Array) -> pa.Array:
    return col if pa.types.is_string(col.type) else pc.cast(col, pa.string())


def _named(cols: Columns | str, prefix: str) -> dict[str, str]:
    if isinstance(cols, str):  # "a,b" (as from a command line)
        cols = [c.strip() for c in cols.split(",") if c.strip()]
    items = list(cols.items()) if isinstance(cols, Mapping) else [(c, c) for c in cols]
    out = {}
    for name, column in items:
        target = name if name.startswith(prefix) else prefix + name
        if not target[len(prefix) :].replace("_", "").isalnum():
            raise InputError(f"column name '{name}' cannot be used", field=name, expected="letters, digits and _")
        out[target] = column
    return out


__all__ = ["TabularSource"]
