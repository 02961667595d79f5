"""Sequence text files.

format "sequences": one user a line, `user item item ...`, items in time order (the S3Rec/ICLRec
  files such as Amazon Beauty); each item's place on the line is its position. A user on two
  lines is an error.
format "pairs": `user item` lines, in time order per user (line order is position order).
format "auto": "sequences" if any line has more than two fields, else "pairs" (with two fields a
  line, both readings give the same events when every user appears once).

Fields are separated by whitespace unless `delimiter` is given. Blank lines are skipped. Lines are
streamed and emitted in chunks of about `chunk_events` events.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from segue.data.sources.base import Chunk, SourceFile
from segue.data.sources.common import first_undecodable_line, require_file, text_encoding
from segue.errors import InputError

FORMATS = ("auto", "sequences", "pairs")

SUMMARY = "sequence text: 'user item item ...' lines (Amazon Beauty style) or 'user item' lines in time order."
EXAMPLE = "segue data build seqtext Beauty.txt --option format=sequences -s leave_last_out"
OPTIONS: dict[str, str] = {
    "format": "sequences (one user a line), pairs ('user item' lines) or auto (default: sequences if a line has 3+ fields)",
    "delimiter": "field separator (default: any whitespace)",
    "encoding": "text encoding (default utf-8)",
    "chunk_events": "events per chunk handed to the store (memory bound; default 524288)",
}
OPTION_MIN: dict[str, int] = {"chunk_events": 1}  # checked by open_source


class SeqTextSource:
    name = "seqtext"

    def __init__(
        self,
        path: str | Path,
        *,
        format: str = "auto",
        delimiter: str | None = None,
        encoding: str = "utf-8",
        chunk_events: int = 1 << 19,
    ) -> None:
        if format not in FORMATS:
            raise InputError(f"unknown format '{format}'", path=path, expected=" or ".join(FORMATS))
        self.path = Path(path)
        self.format = format
        self.delimiter = delimiter
        self.encoding = encoding
        self.chunk_events = chunk_events
        self.detected: str | None = None

    def _lines(self) -> Iterator[tuple[int, list[str]]]:
        n = 0
        try:
            with open(self.path, encoding=text_encoding(self.encoding)) as f:
                for n, line in enumerate(f, 1):
                    fields = line.split(self.delimiter) if self.delimiter else line.split()
                    fields = [x.strip() for x in fields] if self.delimiter else fields
                    if fields and any(fields):
                        yield n, fields
        except UnicodeDecodeError as e:
            raise self._not_decodable(e, n) from None

    def _not_decodable(self, e: UnicodeDecodeError, decoded: int) -> InputError:
        """The error for a file not in self.encoding, naming its first undecodable line (e.start is
        an offset inside the decoder's buffer, not the file's: the lines are read again in bytes;
        error path only). `decoded`: lines decoded before the error."""
        line, text = None, ""
        if text_encoding(self.encoding) == "utf-8-sig":  # lines split in bytes only for UTF-8
            line, text = first_undecodable_line(self.path, after=decoded)
        return InputError(
            f"not {self.encoding} text ({e.reason}{f': {text[:80]!r}' if text else ''})",
            path=self.path,
            line=line,
            expected=f"{self.encoding} text; for another encoding pass the source option encoding=<codec>, e.g. --option encoding=latin-1",
        )

    def detect(self) -> str:
        if self.format != "auto":
            return self.format
        for _, fields in self._lines():
            if len(fields) > 2:
                return "sequences"
        return "pairs"

    def chunks(self) -> Iterator[Chunk]:
        require_file(self.path, "a sequence text file")
        fmt = self.detected = self.detect()
        users: list[str] = []
        items: list[str] = []
        lengths: list[int] = []
        seen: dict[str, int] = {}  # sequences format: user -> line
        n_lines = 0
        for n, fields in self._lines():
            n_lines += 1
            if "" in fields:
                raise InputError("an empty field", path=self.path, line=n, expected="no empty fields between delimiters")
            if fmt == "pairs":
                if len(fields) != 2:
                    raise InputError(f"{len(fields)} fields", path=self.path, line=n, expected="'user item' (2 fields)")
                users.append(fields[0])
                items.append(fields[1])
                lengths.append(1)
            else:
                if len(fields) < 2:
                    raise InputError("a user without items", path=self.path, line=n, expected="'user item item ...'")
                user = fields[0]
                if user in seen:
                    raise InputError(
                        f"user '{user}' again (first on line {seen[user]})",
                        path=self.path,
                        line=n,
                        field="user",
                        expected="each user on one line",
                    )
                seen[user] = n
                users.append(user)
                items.extend(fields[1:])
                lengths.append(len(fields) - 1)
            if len(items) >= self.chunk_events:
                yield self._chunk(users, items, lengths, fmt)
                users, items, lengths = [], [], []
        if n_lines == 0:
            raise InputError("no data lines", path=self.path, expected="'user item item ...' or 'user item' lines")
        if items:
            yield self._chunk(users, items, lengths, fmt)

    @staticmethod
    def _chunk(users: list[str], items: list[str], lengths: list[int], fmt: str) -> Chunk:
        lens = np.asarray(lengths, dtype=np.int64)
        owner = np.repeat(np.arange(len(users)), lens)
        user_col = pa.array(users, pa.string()).take(pa.array(owner))
        cols = {"seq_key": user_col, "item_key": pa.array(items, pa.string())}
        if fmt == "sequences":
            starts = np.cumsum(lens) - lens
            cols["position"] = pa.array((np.arange(len(items)) - np.repeat(starts, lens)).astype(np.int32))
        return Chunk(events=pa.table(cols))

    def files(self) -> list[SourceFile]:
        return [SourceFile(self.path)]

    def params(self) -> dict[str, object]:
        return {"path": str(self.path), "format": self.format, "detected": self.detected, "delimiter": self.delimiter}


__all__ = ["SeqTextSource", "FORMATS"]
