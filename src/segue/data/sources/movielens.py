"""MovieLens ratings: 100K (`u.data`, `u.item`), 1M/10M (`ratings.dat`, `movies.dat`) and
20M/25M/32M/latest (`ratings.csv`, `movies.csv`). The variant is detected from the folder contents.

Every rating becomes an event (user -> sequence, movie -> item) with its rating and unix
timestamp; a user's events are ordered by time (ties by file order). Movie titles become item
names, genres (and for 100K the release date and IMDb URL) go into the item's JSON metadata.
Ratings are read by pyarrow's CSV reader in blocks, so memory stays bounded on 25M ratings.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from segue.data.sources.base import Chunk, SourceFile
from segue.data.sources.common import ColumnReader, iter_text_batches, require_file
from segue.errors import InputError

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip

VARIANTS = {
    # variant: (ratings file, movies file, delimiter, header lines)
    "100k": ("u.data", "u.item", "\t", 0),
    "dat": ("ratings.dat", "movies.dat", "::", 0),
    "csv": ("ratings.csv", "movies.csv", ",", 1),
}

SUMMARY = "a MovieLens folder (100K u.data, 1M/10M ratings.dat, 20M+ ratings.csv), with movie titles and genres."
EXAMPLE = "segue data build movielens ml-100k -s leave_last_out"
OPTIONS: dict[str, str] = {
    "variant": "layout: 100k, dat (1M/10M) or csv (20M and later); default: detected from the files",
    "with_items": "read movie titles and genres from u.item/movies.dat/movies.csv (true/false, default true)",
}


def detect_variant(folder: Path) -> str:
    """Which MovieLens layout `folder` holds: '100k', 'dat' (1M/10M) or 'csv' (20M and later)."""
    if not folder.is_dir():
        raise InputError("not a folder", path=folder, expected="a MovieLens folder (u.data, ratings.dat or ratings.csv)")
    for variant, (ratings, _, _, _) in VARIANTS.items():
        if (folder / ratings).is_file():
            return variant
    raise InputError(
        "no MovieLens ratings file here", path=folder, expected="u.data (100K), ratings.dat (1M/10M) or ratings.csv"
    )


class MovieLensSource:
    name = "movielens"

    def __init__(self, path: str | Path, *, variant: str | None = None, with_items: bool = True) -> None:
        self.path = Path(path)
        self.variant = variant or detect_variant(self.path)
        if self.variant not in VARIANTS:
            raise InputError(f"unknown MovieLens variant '{self.variant}'", expected="100k, dat or csv")
        self.with_items = with_items
        self._files: list[SourceFile] = []

    def chunks(self) -> Iterator[Chunk]:
        ratings_name, movies_name, delimiter, header = VARIANTS[self.variant]
        ratings = require_file(self.path / ratings_name, "a MovieLens ratings file")
        movies = self.path / movies_name
        self._files = [SourceFile(ratings)]
        if self.with_items and movies.is_file():
            require_file(movies, "a MovieLens movies file")
            self._files.append(SourceFile(movies))
            yield Chunk(items=read_movies(movies, self.variant))
        names = ["user", "item", "rating", "ts"]
        reader = ColumnReader(ratings, skip_lines=header)
        for batch in iter_text_batches(ratings, delimiter=delimiter, names=names, skip_lines=header):
            yield Chunk(events=ratings_events(batch, reader, names))
            reader.row_offset += batch.num_rows

    def files(self) -> list[SourceFile]:
        return list(self._files)

    def params(self) -> dict[str, object]:
        return {"path": str(self.path), "variant": self.variant}


def ratings_events(batch: pa.RecordBatch, reader: ColumnReader, names: list[str]) -> pa.Table:
    """Events from text columns `names` = [user, item, rating, ts] (rating/ts may be None)."""
    user, item, rating, ts = names
    cols = {
        "seq_key": pc.utf8_trim_whitespace(batch.column(user)),
        "item_key": pc.utf8_trim_whitespace(batch.column(item)),
    }
    reader.missing(cols["seq_key"], user, "a user id")
    reader.missing(cols["item_key"], item, "an item id")
    if rating is not None:
        cols["rating"] = reader.number(batch.column(rating), rating)
    if ts is not None:
        cols["ts"] = reader.timestamp(batch.column(ts), ts)
    return pa.table(cols)


def read_movies(path: Path, variant: str) -> pa.Table:
    """Item table (item_key, name, meta) from u.item / movies.dat / movies.csv."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # 100K and 1M are latin-1
    keys, titles, metas = [], [], []
    if variant == "csv":
        rows = csv.reader(io.StringIO(text))
        next(rows, None)
        for n, row in enumerate(rows, 2):
            if not row:
                continue
            if len(row) < 3:
                raise InputError(f"{len(row)} fields", path=path, line=n, expected="movieId,title,genres")
            keys.append(row[0].strip())
            titles.append(row[1])
            metas.append(json.dumps({"genres": _genres(row[2])}))
    else:
        sep = "|" if variant == "100k" else "::"
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split(sep)
            if variant == "100k":
                if len(parts) < 5 + len(ML100K_GENRES):
                    raise InputError(
                        f"{len(parts)} fields", path=path, line=n, expected="24 '|'-separated fields (id|title|...|19 genre flags)"
                    )
                flags = parts[5 : 5 + len(ML100K_GENRES)]
                genres = [g for g, f in zip(ML100K_GENRES, flags, strict=True) if f.strip() == "1"]
                meta = {"genres": genres, "release_date": parts[2] or None, "imdb_url": parts[4] or None}
            else:
                if len(parts) < 3:
                    raise InputError(f"{len(parts)} fields", path=path, line=n, expected="MovieID::Title::Genres")
                parts = [parts[0], sep.join(parts[1:-1]), parts[-1]]  # a title may contain '::'
                meta = {"genres": _genres(parts[2])}
            keys.append(parts[0].strip())
            titles.append(parts[1])
            metas.append(json.dumps(meta))
    if not keys:
        raise InputError("no movies", path=path, expected="one movie a line")
    return pa.table(
        {"item_key": pa.array(keys, pa.string()), "name": pa.array(titles, pa.string()), "meta": pa.array(metas, pa.string())}
    )


def _genres(field: str) -> list[str]:
    field = field.strip()
    return [] if field in ("", "(no genres listed)") else field.split("|")


__all__ = ["MovieLensSource", "detect_variant", "read_movies", "ratings_events"]
