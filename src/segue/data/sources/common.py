"""Helpers shared by the file importers: digests computed while reading, input checks, messages."""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from segue.data.sources.base import SourceFile
from segue.errors import InputError


@dataclass
class HashedFile(SourceFile):
    """A source file whose size and sha256 were computed while it was read.

    The store builder records these instead of reading the file a second time (for the MPD,
    33 GB that no longer fit in the page cache). `label` replaces the path in the store's
    `source_files` table (e.g. `archive.zip!data/mpd.slice.0-999.json` for a zip member).
    """

    size: int = 0
    sha256: str = ""
    label: str | None = None


def read_md5sums(text: str, where: str) -> dict[str, str]:
    """Parse `md5sum` output (`<hex>  <name>` or `<hex> *<name>`) into {file base name: hex}."""
    sums: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 32 or any(c not in "0123456789abcdefABCDEF" for c in parts[0]):
            raise InputError("not an md5sum line", path=where, line=n, expected="'<32 hex digits>  <file name>'")
        sums[Path(parts[1].lstrip("*").strip()).name] = parts[0].lower()
    return sums


def require_file(path: Path, what: str) -> Path:
    """`path` if it is a readable, non-empty, uncompressed file; else an InputError naming it."""
    if not path.exists():
        raise InputError(f"{what} not found", path=path)
    if path.is_dir():
        raise InputError(f"{what} is a folder", path=path, expected="a file")
    if path.stat().st_size == 0:
        raise InputError("the file is empty", path=path, expected=what)
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except PermissionError:
        raise InputError("cannot read the file (permission denied)", path=path, expected=f"{what} this user may read") from None
    except OSError as e:
        raise InputError(f"cannot read the file ({e.strerror or e})", path=path, expected=what) from None
    if magic == b"\x1f\x8b":  # read as text it showed binary garbage as "column names"
        raise InputError(
            "the file is gzip-compressed", path=path, expected=f"{what}, uncompressed: decompress it first (gunzip -k {path})"
        )
    return path


def text_encoding(encoding: str) -> str:
    """The codec to read text in `encoding` with: UTF-8 as utf-8-sig, so that a byte-order mark
    (Excel's "CSV UTF-8") is not read into the first column's name or the first user id."""
    try:
        return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    except LookupError:
        return encoding


_ERROR_FIELDS = ("path", "line", "record", "field", "expected")


def error_state(e: InputError) -> dict[str, object]:
    """An InputError as a plain dict, to cross a process boundary with its attributes intact."""
    return {"text": str(e)} | {k: getattr(e, k) for k in _ERROR_FIELDS}


def rebuild_error(state: dict[str, object]) -> InputError:
    err = InputError(str(state["text"]))  # the text already names file, record and field
    for k in _ERROR_FIELDS:
        setattr(err, k, state.get(k))
    return err


# ---------------------------------------------------------------------------------------------
# delimited text files, read with pyarrow (multi-threaded C++), every column as text first so that
# a bad value can be reported with its file, line and column.

_NUMBER_RE = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
MAX_NUMBER = 1e15  # ratings and feedback: far beyond any scale, and their squares stay finite
MAX_SECONDS = 9_223_372_036_854  # |unix seconds| that DuckDB's microsecond timestamps hold (year 294247)
_INTEGER_RE = r"^[-+]?\d+$"


def line_of_row(path: Path, row: int, skip_lines: int, encoding: str = "utf-8") -> int:
    """1-based line number of data row `row` (0-based), skipping `skip_lines` header lines and
    blank lines the way the CSV reader does (only called on the error path)."""
    seen = -1
    with open(path, encoding=text_encoding(encoding), errors="replace") as f:
        for n, line in enumerate(f, 1):
            if n <= skip_lines or not line.strip():
                continue
            seen += 1
            if seen == row:
                return n
    return skip_lines + row + 1


def first_undecodable_line(path: Path, after: int = 0) -> tuple[int | None, str]:
    """(line number, its text with bad bytes replaced) of the first line after line `after` that
    is not UTF-8, or (None, "") (error paths only: reads the file once more, line by line)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if n <= after:
                continue
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return n, raw.decode("utf-8", errors="replace").rstrip("\r\n")
    return None, ""


def first_false(mask: pa.Array) -> int | None:
    """Index of the first False (or null) in a boolean array, or None if all are True."""
    mask = pc.fill_null(mask, False)
    if pc.all(mask).as_py():
        return None
    return int(pc.index(mask, False).as_py())


@dataclass
class ColumnReader:
    """Converts text columns of one file to numbers/timestamps, naming file:line on bad values."""

    path: Path
    skip_lines: int = 0  # header lines before the first data row
    encoding: str = "utf-8"
    row_offset: int = 0  # data rows before the current batch
    lines: bool = True  # text file (report lines); False: Parquet (report 1-based rows)

    def bad(self, row: int, field: str, value: object, expected: str) -> InputError:
        shown = "nothing" if value is None or value == "" else repr(value)
        if not self.lines:
            record = f"row {self.row_offset + row + 1}"
            return InputError(f"got {shown}", path=self.path, record=record, field=field, expected=expected)
        line = line_of_row(self.path, self.row_offset + row, self.skip_lines, self.encoding)
        return InputError(f"got {shown}", path=self.path, line=line, field=field, expected=expected)

    def missing(self, col: pa.Array, field: str, what: str) -> None:
        if col.null_count or pc.any(pc.equal(pc.utf8_length(col), 0)).as_py():
            idx = first_false(pc.and_(pc.is_valid(col), pc.greater(pc.utf8_length(col), 0)))
            raise self.bad(idx, field, None, what)

    def number(self, col: pa.Array, field: str, *, integer: bool = False, limit: float = MAX_NUMBER) -> pa.Array:
        """float64 (or int64) from text; empty values become null. Magnitudes of `limit` or more are
        refused (1e300 was stored, then the stats' variance overflowed; a position must fit int32)."""
        col = pc.utf8_trim_whitespace(col)
        empty = pc.equal(pc.utf8_length(col), 0)
        ok = pc.or_(pc.match_substring_regex(col, _NUMBER_RE), empty)
        bad = first_false(ok)
        if bad is not None:
            raise self.bad(bad, field, col[bad].as_py(), "a number")
        values = pc.cast(pc.if_else(empty, None, col), pa.float64())
        bad = first_false(pc.or_kleene(pc.less(pc.abs(values), float(limit)), pc.is_null(values)))
        if bad is not None:
            raise self.bad(bad, field, col[bad].as_py(), f"a number of magnitude below {limit:.3g}")
        if integer:
            frac = first_false(pc.equal(pc.floor(values), values))
            if frac is not None and values[frac].is_valid:
                raise self.bad(frac, field, col[frac].as_py(), "a whole number")
            values = pc.cast(values, pa.int64())
        return values

    def timestamp(self, col: pa.Array, field: str, per_second: int = 1) -> pa.Array:
        """int64 unix seconds from numbers (unix time in 1/per_second units) or ISO-8601 text
        (UTC unless it says). Numbers beyond +-MAX_SECONDS (DuckDB's timestamp range) are refused."""
        col = pc.utf8_trim_whitespace(col)
        empty = pc.equal(pc.utf8_length(col), 0)
        numeric = pc.or_(pc.match_substring_regex(col, _NUMBER_RE), empty)
        expected = _unix_expected(per_second)
        if pc.all(numeric).as_py():
            text = pc.if_else(empty, None, col)
            values = pc.cast(text, pa.float64())
            in_range = pc.less(pc.abs(values), MAX_SECONDS * float(per_second))
            bad = first_false(pc.or_kleene(in_range, pc.is_null(values)))
            if bad is not None:
                raise self.bad(bad, field, col[bad].as_py(), expected)
            if pc.all(pc.or_kleene(pc.match_substring_regex(text, _INTEGER_RE), pc.is_null(text))).as_py():
                # whole numbers exactly (through float64, 12345678901234567890 ms lost its last digits)
                whole = pc.cast(pc.replace_substring_regex(text, r"^\+", ""), pa.int64())  # pyarrow reads no '+5' as int
                if per_second == 1:
                    return whole
                quotient = pc.divide(whole, per_second)  # truncates toward zero: floor below zero
                below = pc.and_(pc.less(whole, 0), pc.not_equal(pc.multiply(quotient, per_second), whole))
                return pc.if_else(below, pc.subtract(quotient, 1), quotient)
            return pc.cast(pc.floor(pc.divide(values, float(per_second))), pa.int64())
        text = pc.if_else(empty, None, col)
        for unit_type in (pa.timestamp("us", tz="UTC"), pa.timestamp("us")):
            try:
                ts = pc.cast(text, unit_type)
                return pc.cast(pc.divide(pc.cast(ts, pa.int64()), 1_000_000), pa.int64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
        # Mixed forms: parse the distinct values in Python (datetime.fromisoformat).
        import datetime as dt
        import math

        uniq = pc.unique(text).to_pylist()
        parsed = []
        for v in uniq:
            if v is None:
                parsed.append(None)
                continue
            try:
                d = dt.datetime.fromisoformat(v)
            except ValueError:
                if re.fullmatch(_NUMBER_RE, v):
                    # numbers in the column's unit, as in an all-numeric column
                    number = int(v) if re.fullmatch(_INTEGER_RE, v) else float(v)
                    if abs(number) < MAX_SECONDS * per_second:
                        parsed.append(number // per_second if isinstance(number, int) else math.floor(number / per_second))
                        continue
                    row = first_false(pc.invert(pc.equal(text, v)))
                    raise self.bad(row, field, v, expected) from None
                row = first_false(pc.invert(pc.equal(text, v)))
                raise self.bad(row, field, v, "unix seconds or an ISO-8601 date/time") from None
            if d.tzinfo is None:
                d = d.replace(tzinfo=dt.UTC)
            parsed.append(int(d.timestamp()))
        return pc.take(pa.array(parsed, pa.int64()), pc.index_in(text, value_set=pa.array(uniq, pa.string())))




def _unix_expected(per_second: int) -> str:
    unit = {1: "seconds", 1000: "milliseconds", 1_000_000: "microseconds"}.get(per_second, f"1/{per_second} s")
    return f"unix time in {unit}, within +-{MAX_SECONDS:.2e} s (year 294247)"


def read_header(path: Path, encoding: str = "utf-8") -> str:
    with open(path, encoding=text_encoding(encoding), errors="replace") as f:
        return f.readline().rstrip("\r\n")


def sniff_delimiter(line: str) -> str:
    for d in ("\t", "::", ",", ";", "|"):
        if d in line:
            return d
    return " "


def iter_text_batches(
    path: Path,
    *,
    delimiter: str,
    names: list[str],
    skip_lines: int = 0,
    encoding: str = "utf-8",
    block_size: int = 16 << 20,
) -> Iterator[pa.RecordBatch]:
    """Stream a delimited file as record batches of text columns named `names`.

    A two-character delimiter such as MovieLens' `::` is read as its first character, with the
    empty fields in between dropped (the fields themselves must not contain that character).
    """
    import pyarrow.csv as pv

    if delimiter == " ":  # runs of spaces are one separator, as in the header (pyarrow splits on each space)
        yield from _space_batches(path, names=names, skip_lines=skip_lines, encoding=encoding)
        return
    double = len(delimiter) == 2 and delimiter[0] == delimiter[1]
    if len(delimiter) != 1 and not double:
        raise InputError(f"unsupported delimiter {delimiter!r}", path=path, expected="one character or '::'")
    raw_names = [n for name in names for n in ((name, f"_gap{name}") if double else (name,))]
    if double:
        raw_names = raw_names[:-1]
    read = pv.ReadOptions(
        column_names=raw_names, skip_rows=skip_lines, encoding=encoding, block_size=block_size, use_threads=True
    )
    bad_rows: list[Any] = []

    def on_bad_row(row: Any) -> str:
        if not row.text.strip():  # a line of spaces, skipped as empty lines are
            return "skip"
        bad_rows.append(row)  # pyarrow then raises; the row's line is looked up below
        return "error"

    # Quotes as Excel and RFC 4180 write them whatever the delimiter ('"a;b"', '""' inside): with ';',
    # '|' or a tab they stayed in every id. Not for '::' (MovieLens titles hold bare quotes).
    parse = pv.ParseOptions(
        delimiter=delimiter[0], quote_char='"' if not double else False, invalid_row_handler=on_bad_row
    )
    convert = pv.ConvertOptions(column_types={n: pa.string() for n in raw_names}, strings_can_be_null=False)
    try:
        reader = pv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)
        for batch in reader:
            yield batch.select(names) if double else batch
    except pa.ArrowInvalid as e:
        if bad_rows:
            row = bad_rows[0]
            got = (row.actual_columns + 1) // 2 if double else row.actual_columns
            line = row.number or line_of_text(path, row.text, skip_lines, encoding)
            raise InputError(
                f"{got} field{'s' if got != 1 else ''} ({row.text!r})",
                path=path,
                line=line,
                expected=f"{len(names)} fields: {delimiter.join(names)}",
            ) from None
        raise InputError(f"cannot parse the file: {_arrow_message(e)}", path=path) from None


def _space_batches(
    path: Path, *, names: list[str], skip_lines: int, encoding: str, batch_rows: int = 1 << 16
) -> Iterator[pa.RecordBatch]:
    """A space-separated file, fields split on runs of whitespace (blank lines skipped)."""
    try:
        yield from _space_rows(path, names=names, skip_lines=skip_lines, encoding=encoding, batch_rows=batch_rows)
    except UnicodeDecodeError as e:  # worded as pyarrow's, which the importers turn into line and encoding
        raise InputError(f"cannot parse the file: invalid UTF8 data ({e.reason})", path=path) from None


def _space_rows(path: Path, *, names: list[str], skip_lines: int, encoding: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    columns: list[list[str]] = [[] for _ in names]
    with open(path, encoding=text_encoding(encoding), newline="") as f:
        for n, line in enumerate(f, 1):
            if n <= skip_lines:
                continue
            fields = line.split()
            if not fields:
                continue
            if len(fields) != len(names):
                got = len(fields)
                raise InputError(
                    f"{got} field{'s' if got != 1 else ''} ({line.rstrip(chr(13) + chr(10))!r})",
                    path=path,
                    line=n,
                    expected=f"{len(names)} fields: {' '.join(names)}",
                )
            for col, value in zip(columns, fields, strict=True):
                col.append(value)
            if len(columns[0]) >= batch_rows:
                yield pa.record_batch([pa.array(c, pa.string()) for c in columns], names=names)
                columns = [[] for _ in names]
    if columns[0]:
        yield pa.record_batch([pa.array(c, pa.string()) for c in columns], names=names)


def line_of_text(path: Path, text: str, skip_lines: int, encoding: str = "utf-8") -> int | None:
    """1-based number of the first line after `skip_lines` that reads `text` (error path only:
    pyarrow's multi-threaded reader does not report line numbers)."""
    with open(path, encoding=text_encoding(encoding), errors="replace") as f:
        for n, line in enumerate(f, 1):
            if n > skip_lines and line.rstrip("\r\n") == text:
                return n
    return None


def _arrow_message(e: Exception) -> str:
    text = str(e).strip()
    return text.replace("CSV parse error: ", "")
