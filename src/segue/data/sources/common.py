"""Helpers shared by the file importers: digests computed while reading, input checks, messages."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

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


def hashed_file(path: Path, data: bytes, md5_verified: bool | None = None, label: str | None = None) -> HashedFile:
    return HashedFile(
        path=path, md5_verified=md5_verified, size=len(data), sha256=hashlib.sha256(data).hexdigest(), label=label
    )


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


def line_of(data: bytes, offset: int) -> int:
    """1-based line number of byte `offset` in `data`."""
    return data.count(b"\n", 0, max(0, min(offset, len(data)))) + 1


def require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputError(f"{what} not found", path=path)
    if path.is_dir():
        raise InputError(f"{what} is a folder", path=path, expected="a file")
    if path.stat().st_size == 0:
        raise InputError("the file is empty", path=path, expected=what)
    return path


_ERROR_FIELDS = ("path", "line", "record", "field", "expected")


def error_state(e: InputError) -> dict[str, object]:
    """An InputError as a plain dict, to cross a process boundary with its attributes intact."""
    return {"text": str(e)} | {k: getattr(e, k) for k in _ERROR_FIELDS}


def rebuild_error(state: dict[str, object]) -> InputError:
    err = InputError(str(state["text"]))  # the text already names file, record and field
    for k in _ERROR_FIELDS:
        setattr(err, k, state.get(k))
    return err
