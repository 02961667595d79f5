"""Errors that carry where bad input was found, so users can fix their files."""

from __future__ import annotations

from pathlib import Path


class SegueError(Exception):
    """Base class: every error segue raises on purpose (the CLI prints these without a traceback)."""


class InputError(SegueError):
    """Bad input: names the file, the line or record, the field, and what was expected."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        record: str | None = None,
        field: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.record = record
        self.field = field
        self.expected = expected
        where = []
        if self.path is not None:
            where.append(self.path + (f":{line}" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        if record is not None:
            where.append(record)
        if field is not None:
            where.append(f"field '{field}'")
        text = (", ".join(where) + ": " if where else "") + message
        if expected is not None:
            text += f" (expected {expected})"
        super().__init__(text)


class StoreError(SegueError):
    """The store is missing, of another schema version, or lacks what was asked for."""


class ConfigError(SegueError):
    """A config file or option is invalid."""
