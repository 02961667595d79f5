"""Input formats. Each module turns one format into `Chunk`s of the same columns (see base.py).

    open_source("mpd", "spotify_million_playlist_dataset.zip")
    open_source("movielens", "ml-100k")
    open_source("seqtext", "Beauty.txt", format="sequences")
    open_source("tabular", "ratings.csv", user="userId", item="movieId", rating="rating")
    open_source("synthetic", None, n_playlists=3000)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segue.data.sources.base import Source
from segue.errors import ConfigError

SOURCE_KINDS = ("mpd", "movielens", "seqtext", "tabular", "synthetic")
# Friendlier names for the generic table reader.
ALIASES = {"csv": "tabular", "tsv": "tabular", "parquet": "tabular", "sequences": "seqtext"}


def open_source(kind: str, path: str | Path | None = None, **options: Any) -> Source:
    """The source of `kind` reading `path`; `options` are the keyword arguments of its class
    (for "synthetic": the fields of SyntheticConfig, and `path` is ignored)."""
    kind = ALIASES.get(kind, kind)
    if kind not in SOURCE_KINDS:
        known = ", ".join([*SOURCE_KINDS, *ALIASES])
        raise ConfigError(f"unknown source kind '{kind}' (expected one of {known})")
    if kind == "synthetic":
        from segue.data.sources.synthetic import SyntheticConfig, SyntheticSource

        return SyntheticSource(SyntheticConfig.from_dict(options, source="synthetic source options"))
    if path is None:
        raise ConfigError(f"source '{kind}' needs a path")
    if kind == "mpd":
        from segue.data.sources.mpd import MPDSource as cls
    elif kind == "movielens":
        from segue.data.sources.movielens import MovieLensSource as cls
    elif kind == "seqtext":
        from segue.data.sources.seqtext import SeqTextSource as cls
    else:
        from segue.data.sources.tabular import TabularSource as cls
    try:
        return cls(path, **options)
    except TypeError as e:
        raise ConfigError(f"source '{kind}': {e}") from None


__all__ = ["SOURCE_KINDS", "open_source"]
