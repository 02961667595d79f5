"""Typed configs: pydantic models read from and written to TOML, saved beside every result."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Self

import tomli_w
from pydantic import BaseModel, ConfigDict, ValidationError

from segue.errors import ConfigError
from segue.io import atomic_write_text


class Config(BaseModel):
    """Base of every config: unknown keys are errors (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def to_toml(self) -> str:
        return tomli_w.dumps(_drop_none(self.model_dump(mode="json")))

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_toml())

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<dict>") -> Self:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            lines = []
            for err in e.errors():
                loc = ".".join(str(p) for p in err["loc"]) or "<root>"
                lines.append(f"{source}: field '{loc}': {err['msg']}")
            raise ConfigError("\n".join(lines)) from None

    @classmethod
    def load(cls, path: str | Path) -> Self:
        return cls.from_dict(read_toml(path), source=str(path))


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's table, or a ConfigError naming the file (missing, or not valid TOML)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def _drop_none(obj: Any) -> Any:
    # TOML has no null: a missing key means "default" when read back.
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj
