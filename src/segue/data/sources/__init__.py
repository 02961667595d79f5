"""Input formats. Each module turns one format into `Chunk`s of the same columns (see base.py).

    open_source("mpd", "spotify_million_playlist_dataset.zip")
    open_source("movielens", "ml-100k")
    open_source("seqtext", "Beauty.txt", format="sequences")
    open_source("csv", "ratings.csv", user="userId", item="movieId", rating="rating")
    open_source("synthetic", None, n_playlists=3000)

Each source module keeps `OPTIONS` (option key -> one line on what it does), `SUMMARY` and
`EXAMPLE` beside its class. `open_source` checks the keys against that table before building the
source, and `segue data build --help` and README.md are generated from it, so the documented
options are the accepted ones (tests/test_source_options.py checks them against each class).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

from segue.data.sources.base import Source
from segue.errors import ConfigError

# kind -> (module, class); the module holds OPTIONS, SUMMARY and EXAMPLE.
_MODULES: dict[str, tuple[str, str]] = {
    "mpd": ("segue.data.sources.mpd", "MPDSource"),
    "movielens": ("segue.data.sources.movielens", "MovieLensSource"),
    "seqtext": ("segue.data.sources.seqtext", "SeqTextSource"),
    "tabular": ("segue.data.sources.tabular", "TabularSource"),
    "synthetic": ("segue.data.sources.synthetic", "SyntheticSource"),
}
SOURCE_KINDS = tuple(_MODULES)
# Friendlier names for the generic table reader.
ALIASES = {"csv": "tabular", "tsv": "tabular", "parquet": "tabular", "sequences": "seqtext"}
# The names shown to users, in the order of the help text (tabular is shown as csv/tsv/parquet).
SHOWN_KINDS = ("csv", "tsv", "parquet", "movielens", "seqtext", "mpd", "synthetic")
HELP_ORDER = ("tabular", "movielens", "seqtext", "mpd", "synthetic")


def canonical_kind(kind: str) -> str:
    """The source kind behind a name the user typed (csv -> tabular); ConfigError listing the names if unknown."""
    canonical = ALIASES.get(kind, kind)
    if canonical not in _MODULES:
        known = ", ".join([*SOURCE_KINDS, *ALIASES])
        raise ConfigError(f"unknown source kind '{kind}' (expected one of {known})")
    return canonical


def source_module(kind: str) -> ModuleType:
    return importlib.import_module(_MODULES[canonical_kind(kind)][0])


def source_options(kind: str) -> dict[str, str]:
    """Option key -> one-line description, for source `kind` (aliases accepted)."""
    return dict(source_module(kind).OPTIONS)


def required_options(kind: str) -> list[str]:
    """Keyword-only arguments of the source class without a default."""
    module, cls_name = _MODULES[canonical_kind(kind)]
    if cls_name == "SyntheticSource":
        return []
    params = inspect.signature(getattr(importlib.import_module(module), cls_name).__init__).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]


def options_text(kind: str, indent: str = "  ") -> str:
    """The valid option keys of `kind`, one line each ('key  what it does')."""
    opts = source_options(kind)
    width = max(map(len, opts), default=0)
    return "\n".join(f"{indent}{k.ljust(width)}  {v}" for k, v in opts.items())


def source_help(kind: str) -> str:
    """Markdown on source `kind`: what it reads, each option, an example command."""
    mod = source_module(kind)
    canonical = canonical_kind(kind)
    names = [k for k in SHOWN_KINDS if canonical_kind(k) == canonical] or [kind]
    lines = [f"**{' / '.join(names)}**: {mod.SUMMARY}", ""]
    lines += [f"- `{k}`: {v}" for k, v in mod.OPTIONS.items()]
    lines += ["", f"Example: `{mod.EXAMPLE}`"]
    return "\n".join(lines)


def sources_help() -> str:
    """Markdown on every source kind (the reference in `segue data build --help` and README.md)."""
    return "\n\n".join(source_help(kind) for kind in HELP_ORDER)


def check_options(kind: str, options: dict[str, Any]) -> None:
    """ConfigError naming unknown or missing option keys of source `kind` (as typed), with the valid
    keys and what each does."""
    valid = source_options(kind)
    unknown = [k for k in options if k not in valid]
    missing = [k for k in required_options(kind) if k not in options]
    problems = []
    if unknown:
        problems.append("unknown option" + ("s " if len(unknown) > 1 else " ") + ", ".join(f"'{k}'" for k in unknown))
    if missing:
        problems.append("missing option" + ("s " if len(missing) > 1 else " ") + ", ".join(f"'{k}'" for k in missing))
    if problems:
        raise ConfigError(
            f"source '{kind}': {'; '.join(problems)}. Valid options (--option key=value):\n{options_text(kind)}"
        )


def check_values(kind: str, options: dict[str, Any]) -> None:
    """ConfigError for an option value of the wrong type (true/false for a bool, a whole number for
    an int), as a command line gives text for whatever does not parse as JSON, or below the
    module's `OPTION_MIN` (option key -> lowest value) where it keeps one."""
    module, cls_name = _MODULES[canonical_kind(kind)]
    if cls_name == "SyntheticSource":
        return  # SyntheticConfig checks its own fields
    params = inspect.signature(getattr(importlib.import_module(module), cls_name).__init__).parameters
    for key, value in options.items():
        annotation = str(params[key].annotation).replace(" ", "")  # a string: `from __future__ import annotations`
        if value is None and "None" in annotation.split("|"):
            continue
        first = annotation.split("|")[0]
        lowest = getattr(source_module(kind), "OPTION_MIN", {}).get(key)
        if first == "bool" and not isinstance(value, bool):
            expected = "true or false"
        elif first == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            expected = "a whole number"
        elif lowest is not None and value < lowest:  # chunk_events=-5 built one line per chunk
            expected = f"a whole number of at least {lowest}"
        else:
            continue
        raise ConfigError(
            f"source '{kind}': option '{key}' is {value!r} (expected {expected}): {source_options(kind)[key]}"
        )


def open_source(kind: str, path: str | Path | None = None, **options: Any) -> Source:
    """The source of `kind` reading `path`; `options` are the keys of the module's OPTIONS table
    (for "synthetic": the fields of SyntheticConfig, and no `path`)."""
    canonical = canonical_kind(kind)
    check_options(kind, options)
    check_values(kind, options)
    if canonical == "synthetic":
        if path is not None:  # `segue data build synthetic out.duckdb` would otherwise write segue.duckdb
            raise ConfigError(f"source 'synthetic' reads no input, but was given '{path}' (for the store, use -o {path})")
        from segue.data.sources.synthetic import SyntheticConfig, SyntheticSource

        return SyntheticSource(SyntheticConfig.from_dict(options, source="synthetic source options"))
    if path is None:
        raise ConfigError(f"source '{kind}' needs a path (the input file or folder)")
    module, cls_name = _MODULES[canonical]
    cls = getattr(importlib.import_module(module), cls_name)
    if kind == "parquet" and "format" not in options:
        options = options | {"format": "parquet"}
    try:
        return cls(path, **options)
    except TypeError as e:  # a value of the wrong shape reached the class
        raise ConfigError(f"source '{kind}': {e}. Valid options (--option key=value):\n{options_text(kind)}") from None


__all__ = ["SOURCE_KINDS", "SHOWN_KINDS", "check_options", "open_source", "options_text", "source_help", "source_options", "sources_help"]
