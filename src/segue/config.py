"""Typed configs: pydantic models read from and written to TOML, saved beside every result."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Self

import tomli_w
from pydantic import BaseModel, ConfigDict, ValidationError

from segue.errors import ConfigError, SegueError
from segue.io import atomic_write_text


class Config(BaseModel):
    """Base of every config: unknown keys are errors (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def to_toml(self) -> str:
        return tomli_w.dumps(_drop_none(self.model_dump(mode="json")))

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_toml())

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<dict>", within: tuple[str, ...] = ()) -> Self:
        """Validate `data`; errors name `source` and the key's place in it, `within` being the
        table that holds `data` there (("config",) for a model.toml's [config])."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            lines = []
            for err in e.errors():
                if err["type"] == "extra_forbidden" and err["loc"]:
                    lines.append(f"{source}: {_unknown_key(cls, err['loc'], within)}")
                    continue
                loc = ".".join(str(p) for p in (*within, *err["loc"])) or "<root>"
                lines.append(f"{source}: field '{loc}': {err['msg']}")
            raise ConfigError("\n".join(lines)) from None

    @classmethod
    def load(cls, path: str | Path) -> Self:
        return cls.from_dict(read_toml(path), source=str(path))


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's table, or a ConfigError naming the file (missing, a folder, unreadable, not
    UTF-8, or not valid TOML)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    text = read_utf8(path, "a config .toml file")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def read_utf8(path: Path, what: str, error: type[SegueError] = ConfigError) -> str:
    """The UTF-8 text of file `path` (TOML is UTF-8), or `error` naming it: a folder, an unreadable
    file, or bytes that are not UTF-8 (the line of the first, e.g. a Latin-1 file a Windows editor saved)."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise error(f"{path}: is a folder (expected {what})") from None
    except PermissionError:
        raise error(f"{path}: cannot read the file (permission denied; expected {what})") from None
    except OSError as e:
        raise error(f"{path}: cannot read the file ({e.strerror or e}; expected {what})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(f"{path}:{line}: not UTF-8 text ({e.reason}); save the file as UTF-8 (expected {what})") from None


def _unknown_key(cls: type[BaseModel], loc: tuple[int | str, ...], within: tuple[str, ...] = ()) -> str:
    """A misspelt key in words, with the keys its table takes and the closest one (pydantic says
    only 'Extra inputs are not permitted'); `within`: the table of the file that holds cls's data."""
    import difflib

    key, where = str(loc[-1]), loc[:-1]
    table = (*within, *where)
    section = f"in [{'.'.join(str(p) for p in table)}]" if table else "at the top level"
    fields = _fields_at(cls, where)
    if not fields:
        return f"unknown key '{key}' {section}"
    close = difflib.get_close_matches(key, fields, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown key '{key}' {section} (expected one of: {', '.join(fields)}{hint})"


def _fields_at(cls: type[BaseModel], loc: tuple[int | str, ...]) -> list[str] | None:
    """The keys of the table at `loc` inside config class `cls` (None when it cannot be followed)."""
    import typing

    def unwrap(tp: Any) -> tuple[list[type[BaseModel]], bool]:
        # (config classes a field's type holds, whether inside a list/dict: then the next part of
        # loc is an index or a key, not a field)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return [tp], False
        inner = [unwrap(a) for a in typing.get_args(tp)]
        classes = [c for cs, _ in inner for c in cs]
        return classes, typing.get_origin(tp) in (list, dict, tuple) or any(k for _, k in inner)

    node: list[type[BaseModel]] = [cls]
    keyed = False
    for part in loc:
        if keyed:
            keyed = False
            continue
        found: list[type[BaseModel]] = []
        for m in node:
            field = m.model_fields.get(str(part))
            if field is not None:
                classes, k = unwrap(field.annotation)
                found += classes
                keyed = keyed or k
        if not found:
            return None
        node = found
    if keyed:
        return None
    return list(dict.fromkeys(k for m in node for k, f in m.model_fields.items() if not f.exclude))


def _drop_none(obj: Any) -> Any:
    # TOML has no null: a missing key means "default" when read back.
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj
