"""Item side features: feature vocabularies fitted on a split's training items, and the per-token
index arrays an item encoder reads (segue.models.item_encoder).

Features (names in ItemEncoderConfig.features), read from the store's items table:
    artist       creator_key (else creator)
    album        album_key (else album)
    genre        meta "genre" or "genres" (a string, a comma- or pipe-separated string, or a list)
    type         meta "type"
    title_words  lower-cased words of the item's name (a bag of words)
    meta.<key>   any other meta key (string, number or list)
Multi-valued features keep up to `width` values per item (pooled by their mean in the encoder).

Vocabulary of a feature (fitted on the training vocabulary's items only: every count is a count of
training items, so nothing after a temporal cut shapes it): row 0 = no value (contributes
nothing), row 1 = <unk> (a value never seen on a training item, or carried by fewer than
`min_items` of them), rows 2.. = values by descending count, ties by value.

Content vectors: a Parquet the user imports with columns `item` (external id) and `vector` (a
fixed-length list of floats). They are standardised with the mean and standard deviation of the
training items' vectors; an item without one gets zeros and has_content = 0.

A run folder keeps `item_features.json` (vocabularies, widths, content statistics) and
`item_features.npz` (the arrays of the training tokens): everything needed to compose the vector
of an item that is not in the vocabulary from its raw features, without the store.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segue.data.vocab import N_SPECIAL, Vocabulary
from segue.errors import ConfigError, InputError
from segue.io import atomic_path, atomic_write_text

if TYPE_CHECKING:
    import pyarrow as pa

NONE_ROW, UNK_ROW = 0, 1
FIXED = ("artist", "album", "genre", "type", "title_words")
FEATURES_JSON, FEATURES_NPZ = "item_features.json", "item_features.npz"
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_LIST_SEP = re.compile(r"[,|]")

RawFeatures = dict[str, list[list[str]]]  # feature -> per item, its values


def check_feature_name(name: str) -> None:
    if name not in FIXED and not (name.startswith("meta.") and len(name) > 5):
        raise ConfigError(f"items.features: unknown feature '{name}' (expected one of {', '.join(FIXED)}, or meta.<key>)")


def _values(v: Any, split_commas: bool) -> list[str]:
    """Text values of a meta entry: None -> [], list -> its items, 'a, b' and 'a|b' (MovieLens'
    genres in a CSV) -> ['a', 'b']."""
    if v is None:
        return []
    if isinstance(v, list | tuple):
        return [str(x).strip() for x in v if x is not None and str(x).strip()]
    s = str(v).strip()
    if not s:
        return []
    return [p.strip() for p in _LIST_SEP.split(s) if p.strip()] if split_commas else [s]


def title_words(name: str | None) -> list[str]:
    """Distinct lower-cased words of a name, in order ('Toy Story (1995)' -> toy, story, 1995)."""
    return list(dict.fromkeys(_WORD.findall((name or "").lower())))


def raw_features(features: list[str], rows: list[dict[str, Any]]) -> RawFeatures:
    """Raw values of `features` for item rows (dicts with name, creator, creator_key, album,
    album_key and meta: a JSON text or a dict)."""
    out: RawFeatures = {f: [] for f in features}
    for r in rows:
        meta = r.get("meta") or {}
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except json.JSONDecodeError:
                meta = {}
        if not isinstance(meta, dict):
            meta = {}
        for f in features:
            if f == "artist":
                vals = _values(r.get("creator_key") or r.get("creator"), False)
            elif f == "album":
                vals = _values(r.get("album_key") or r.get("album"), False)
            elif f == "genre":
                vals = _values(meta.get("genre", meta.get("genres")), True)
            elif f == "type":
                vals = _values(meta.get("type"), False)
            elif f == "title_words":
                vals = title_words(r.get("name"))
            else:
                vals = _values(meta.get(f[5:]), False)
            out[f].append(vals)
    return out


def store_item_rows(store: Any, item_ids: np.ndarray) -> list[dict[str, Any]]:
    """The store's item rows for `item_ids` (in that order; an id without a row gives {})."""
    t = store.con.execute("SELECT item_id, name, creator, creator_id, album, album_id, meta FROM items").fetchall()
    cols = ("item_id", "name", "creator", "creator_key", "album", "album_key", "meta")
    by_id = {r[0]: dict(zip(cols, r, strict=True)) for r in t}
    return [by_id.get(int(i), {}) for i in item_ids]


@dataclass
class FeatureVocab:
    """One feature's vocabulary: values[i] is row 2 + i; `width` values per item are kept."""

    name: str
    values: list[str]
    counts: list[int]  # training items carrying each value
    width: int

    def __post_init__(self) -> None:
        self._row = {v: i + 2 for i, v in enumerate(self.values)}

    @property
    def rows(self) -> int:
        return len(self.values) + 2

    def knows(self, value: str) -> bool:
        return value in self._row

    def encode(self, per_item: list[list[str]]) -> np.ndarray:
        """int32 [n, width]: rows of each item's values (<unk> = 1 for unseen ones), 0-padded."""
        out = np.zeros((len(per_item), self.width), np.int32)
        for i, vals in enumerate(per_item):
            rows = [self._row.get(v, UNK_ROW) for v in vals[: self.width]]
            out[i, : len(rows)] = rows
        return out


@dataclass
class ItemFeatures:
    """Feature vocabularies and the per-token arrays of a vocabulary (tokens 0..V-1)."""

    vocabs: dict[str, FeatureVocab]
    index: dict[str, np.ndarray]  # feature -> int32 [V, width]
    id_count: np.ndarray  # int64 [V] training events per token (specials: 0)
    content: np.ndarray | None = None  # float32 [V, C] standardised content vectors
    has_content: np.ndarray | None = None  # float32 [V]
    content_mean: np.ndarray | None = None  # float32 [C], from the training items
    content_std: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.vocabs)

    @property
    def content_dim(self) -> int:
        return 0 if self.content is None else int(self.content.shape[1])

    def shapes(self) -> tuple[tuple[str, int, int], ...]:
        """(feature, table rows, width) of each feature: what the encoder's tables are built for."""
        return tuple((n, v.rows, v.width) for n, v in self.vocabs.items())

    def __len__(self) -> int:
        return len(self.id_count)

    def encode_new(self, raw: RawFeatures, vectors: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Arrays of new items (not in the vocabulary) from their raw features (and raw content
        vectors [n, C], NaN rows = none): the same keys as `arrays()`, id count 0."""
        n = len(next(iter(raw.values()))) if raw else (0 if vectors is None else len(vectors))
        out = {f"f_{name}": v.encode(raw.get(name, [[]] * n)) for name, v in self.vocabs.items()}
        out["id_count"] = np.zeros(n, np.int64)
        if self.content is not None:
            c, has = self.standardise(vectors if vectors is not None else np.full((n, self.content_dim), np.nan, np.float32))
            out["content"], out["has_content"] = c, has
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-token arrays of the vocabulary: f_<feature>, id_count, content, has_content."""
        out = {f"f_{n}": a for n, a in self.index.items()}
        out["id_count"] = self.id_count
        if self.content is not None:
            out["content"], out["has_content"] = self.content, self.has_content
        return out

    def standardise(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(standardised vectors with NaN rows zeroed, has_content) with the training statistics."""
        v = np.asarray(vectors, np.float32)
        if v.ndim != 2 or v.shape[1] != self.content_dim:
            raise InputError(f"content vectors have shape {v.shape}", field="vector", expected=f"length {self.content_dim}")
        has = np.isfinite(v).all(axis=1)
        z = np.where(has[:, None], (np.nan_to_num(v) - self.content_mean) / self.content_std, 0.0)
        return z.astype(np.float32), has.astype(np.float32)

    # --- persistence --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        doc = {
            "features": {n: {"values": v.values, "counts": v.counts, "width": v.width} for n, v in self.vocabs.items()},
            "content_dim": self.content_dim,
            "meta": self.meta,
        }
        arrays = self.arrays()
        if self.content is not None:
            arrays |= {"content_mean": self.content_mean, "content_std": self.content_std}
        with atomic_path(folder / FEATURES_NPZ) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        atomic_write_text(folder / FEATURES_JSON, json.dumps(doc))

    @classmethod
    def load(cls, folder: str | Path) -> ItemFeatures:
        folder = Path(folder)
        path = folder / FEATURES_JSON
        if not path.exists():
            raise InputError("no item features (the run was trained without an items section?)", path=path)
        doc = json.loads(path.read_text())
        vocabs = {n: FeatureVocab(n, d["values"], d["counts"], d["width"]) for n, d in doc["features"].items()}
        with np.load(folder / FEATURES_NPZ) as z:
            index = {n: z[f"f_{n}"] for n in vocabs}
            content = z["content"] if "content" in z.files else None
            return cls(
                vocabs=vocabs,
                index=index,
                id_count=z["id_count"],
                content=content,
                has_content=z["has_content"] if content is not None else None,
                content_mean=z["content_mean"] if content is not None else None,
                content_std=z["content_std"] if content is not None else None,
                meta=doc.get("meta", {}),
            )


def fit_feature_vocab(name: str, per_item: list[list[str]], max_width: int, min_items: int) -> FeatureVocab:
    """A feature's vocabulary from the values of the training items (see the module docstring)."""
    counts: dict[str, int] = {}
    for vals in per_item:
        for v in set(vals):
            counts[v] = counts.get(v, 0) + 1
    kept = sorted((v for v, c in counts.items() if c >= min_items), key=lambda v: (-counts[v], v))
    width = max(1, min(max_width, max((len(v) for v in per_item), default=1)))
    return FeatureVocab(name, kept, [counts[v] for v in kept], width)


def fit_item_features(
    store: Any,
    vocab: Vocabulary,
    features: list[str],
    *,
    max_width: int = 16,
    min_items: int = 1,
    content: str | Path | None = None,
) -> ItemFeatures:
    """Fit the feature vocabularies on the training items of `vocab` (tokens N_SPECIAL..) and
    build the per-token arrays; `content` names a Parquet of content vectors to import."""
    for f in features:
        check_feature_name(f)
    item_ids = np.asarray(vocab.item_ids, np.int64)
    rows = [{} if i < 0 else r for i, r in zip(item_ids, store_item_rows(store, np.maximum(item_ids, 0)), strict=True)]
    raw = raw_features(features, rows)
    vocabs: dict[str, FeatureVocab] = {}
    index: dict[str, np.ndarray] = {}
    for f in features:
        vocabs[f] = fit_feature_vocab(f, raw[f][N_SPECIAL:], max_width, min_items)
        index[f] = vocabs[f].encode(raw[f])
    id_count = np.asarray(vocab.counts, np.int64).copy()
    id_count[:N_SPECIAL] = 0
    out = ItemFeatures(vocabs, index, id_count, meta={"split": vocab.split, "features": features})
    if content is not None:
        ext, vecs = read_content_vectors(content)
        pos = {e: i for i, e in enumerate(ext)}
        aligned = np.full((len(vocab), vecs.shape[1]), np.nan, np.float32)
        for t, e in enumerate(vocab.external_ids):
            if e is not None and e in pos:
                aligned[t] = vecs[pos[e]]
        train = aligned[N_SPECIAL:][np.isfinite(aligned[N_SPECIAL:]).all(axis=1)]
        if len(train) == 0:
            raise InputError("no training item has a content vector", path=content, field="item", expected="external ids of the training items")
        out.content_mean = train.mean(axis=0).astype(np.float32)
        out.content_std = np.maximum(train.std(axis=0), 1e-6).astype(np.float32)
        out.content = np.zeros_like(aligned)  # shape for standardise()
        out.content, out.has_content = out.standardise(aligned)
        out.meta["content"] = str(content)
    return out


def read_content_vectors(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(external ids, float32 [n, C]) from a Parquet with `item` and a fixed-length `vector`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path=path, expected="a Parquet of content vectors (item, vector)")
    try:
        t = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"not a readable Parquet file ({e})", path=path) from None
    for col in ("item", "vector"):
        if col not in t.column_names:
            raise InputError(f"no column '{col}' (it has: {', '.join(t.column_names)})", path=path, field=col,
                             expected="columns item (external id) and vector (list of floats)")
    items = [None if x is None else str(x) for x in t.column("item").to_pylist()]
    vecs = t.column("vector").to_pylist()
    dim = None
    for i, (e, v) in enumerate(zip(items, vecs, strict=True)):
        if e is None:
            raise InputError("empty item id", path=path, record=f"row {i + 1}", field="item", expected="an external id")
        if v is None or (dim is not None and len(v) != dim) or len(v) == 0:
            raise InputError(f"vector of length {0 if v is None else len(v)}", path=path, record=f"row {i + 1}",
                             field="vector", expected=f"a list of {dim or 'n > 0'} floats, the same length on every row")
        dim = len(v)
    arr = np.asarray(vecs, dtype=np.float32).reshape(len(vecs), dim or 0)
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise InputError("a non-finite value", path=path, record=f"row {bad + 1}", field="vector", expected="finite floats")
    return items, arr


# --- items added to a trained run (segue items add) --------------------------------------------
ADDED_FILE = "items_added.parquet"  # in a run folder: the items added without retraining
# Columns of a new-items table read as the item row itself (others serve meta.<key> features).
_ROW_COLUMNS = ("item", "meta", "vector", "name", "creator", "artist", "album", "creator_key", "artist_key", "album_key")


def read_new_items(path: str | Path) -> Any:
    """A Parquet of new items (InputError naming the file when it is missing or unreadable)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path=path, expected="a Parquet of new items (item, name, artist, album, genre, ...)")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"not a readable Parquet file ({e})", path=path) from None


def new_item_rows(table: Any, path: Path) -> list[dict[str, Any]]:
    """Item rows for raw_features from a new-items table (InputError naming the row and field)."""
    cols = set(table.column_names)
    if "item" not in cols:
        raise InputError(f"no column 'item' (it has: {', '.join(table.column_names)})", path=path, field="item",
                         expected="the external id of each new item")
    out = []
    for i, r in enumerate(table.to_pylist()):
        if r.get("item") in (None, ""):
            raise InputError("empty item id", path=path, record=f"row {i + 1}", field="item", expected="an external id")
        meta: dict[str, Any] = {}
        if r.get("meta"):
            try:
                meta = json.loads(r["meta"]) if isinstance(r["meta"], str) else dict(r["meta"])
            except (json.JSONDecodeError, TypeError, ValueError):
                raise InputError("not a JSON object", path=path, record=f"row {i + 1}", field="meta", expected="JSON text") from None
        for k in ("genre", "genres", "type"):
            if r.get(k) is not None:
                meta[k] = r[k]
        for k, v in r.items():  # other columns serve meta.<key> features
            if k not in _ROW_COLUMNS and v is not None:
                meta.setdefault(k, v)
        out.append(
            {
                "external_id": str(r["item"]),
                "name": r.get("name"),
                "creator": r.get("creator") or r.get("artist"),
                "creator_key": r.get("creator_key") or r.get("artist_key"),
                "album": r.get("album"),
                "album_key": r.get("album_key"),
                "meta": meta,
            }
        )
    return out


def new_item_vectors(table: Any, dim: int, path: Path) -> np.ndarray | None:
    """Content vectors [n, dim] (NaN rows: none) from the `vector` column, for runs that use them."""
    if dim == 0:
        return None
    out = np.full((table.num_rows, dim), np.nan, np.float32)
    if "vector" not in table.column_names:
        return out
    for i, v in enumerate(table.column("vector").to_pylist()):
        if v is None:
            continue
        if len(v) != dim:
            raise InputError(f"vector of length {len(v)}", path=path, record=f"row {i + 1}", field="vector", expected=f"{dim} floats, as the run's content vectors")
        out[i] = v
    return out


def added_item_table(folder: str | Path) -> pa.Table | None:
    """A run's added items (items_added.parquet) as strings: item, name, creator (or its artist
    column) and album, null where the file has no such column; None without the file."""
    import pyarrow as pa

    path = Path(folder) / ADDED_FILE
    if not path.exists():
        return None
    t = read_new_items(path)
    cols = {"item": pa.array([str(x) for x in t.column("item").to_pylist()], pa.string())}
    for c, alt in (("name", None), ("creator", "artist"), ("album", None)):
        src = c if c in t.column_names else alt if alt is not None and alt in t.column_names else None
        cols[c] = t.column(src).cast(pa.string()) if src else pa.nulls(t.num_rows, pa.string())
    return pa.table(cols)


def added_item_names(folder: str | Path) -> dict[str, list[str | None]]:
    """{external id: [name, creator]} of a run's added items (empty without items_added.parquet)."""
    t = added_item_table(folder)
    if t is None:
        return {}
    return {i: [n, c] for i, n, c in zip(*(t.column(x).to_pylist() for x in ("item", "name", "creator")), strict=True)}


__all__ = ["ADDED_FILE", "FeatureVocab", "ItemFeatures", "added_item_names", "added_item_table", "fit_item_features", "new_item_rows", "new_item_vectors",
           "raw_features", "read_content_vectors", "read_new_items", "store_item_rows"]
