"""The items a served model knows, with names for people: search and descriptions.

The table lives in the model folder as `items.parquet` (external_id, name, creator, album), one
row per vocabulary item. It is written there when the server starts from a store
(`segue serve --model RUN --store STORE`), read back otherwise; without either, items are shown by
their external ids.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from segue.data.vocab import N_SPECIAL, Vocabulary
from segue.errors import SegueError
from segue.io import atomic_path

log = logging.getLogger("segue.serving")

ITEMS_FILE = "items.parquet"
COLUMNS = ("external_id", "name", "creator", "album")


class Catalogue:
    """Names of tokens: row t - N_SPECIAL describes token t."""

    def __init__(self, vocab: Vocabulary, table: pa.Table | None = None) -> None:
        self.vocab = vocab
        ext = [e for e in vocab.external_ids[N_SPECIAL:]]
        base = pa.table({"external_id": pa.array(ext, pa.string())})
        if table is not None and table.num_rows:
            meta = {
                c: table.column(c)
                if c in table.column_names
                else pa.nulls(table.num_rows, pa.string())
                for c in COLUMNS
            }
            meta_t = pa.table({c: meta[c].cast(pa.string()) for c in COLUMNS})
            # One row per vocabulary item, in token order.
            idx = pc.index_in(base.column("external_id"), value_set=meta_t.column("external_id"))
            self.found = len(idx) - idx.null_count  # vocabulary items the table has a row for
            cols = {"external_id": base.column("external_id")}
            for c in COLUMNS[1:]:
                cols[c] = pc.take(meta_t.column(c), idx)
            self.table = pa.table(cols)
        else:
            self.found = 0
            self.table = pa.table(
                {
                    "external_id": base.column("external_id"),
                    **{c: pa.nulls(len(ext), pa.string()) for c in COLUMNS[1:]},
                }
            )
        self._names = self.table.column("name").to_pylist()
        self._creators = self.table.column("creator").to_pylist()
        self._albums = self.table.column("album").to_pylist()
        # One lower-cased search text per item: name, creator, album, id.
        parts = [
            pc.fill_null(self.table.column(c), "")
            for c in ("name", "creator", "album", "external_id")
        ]
        self._text = pc.utf8_lower(pc.binary_join_element_wise(*parts, "\x1f"))
        self._name_lower = pc.utf8_lower(pc.fill_null(self.table.column("name"), ""))
        self._id_lower = pc.utf8_lower(self.table.column("external_id"))
        self._popularity_order = np.argsort(-vocab.counts[N_SPECIAL:], kind="stable")

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def has_names(self) -> bool:
        return self.table.column("name").null_count < self.table.num_rows

    def describe(self, token: int) -> dict[str, str | None]:
        i = int(token) - N_SPECIAL
        if i < 0:
            return {"id": None, "name": None, "creator": None, "album": None}
        ext = self.vocab.external_ids[int(token)]
        return {
            "id": ext,
            "name": self._names[i] or ext,
            "creator": self._creators[i],
            "album": self._albums[i],
        }

    def describe_known(self, token: int, score: float) -> dict[str, str | float]:
        """describe() of an item token without its None fields, plus "score" (the hot path of
        /v1/recommend: 100 of these per answer)."""
        i = token - N_SPECIAL
        ext = self.vocab.external_ids[token]
        out: dict[str, str | float] = {"id": ext, "name": self._names[i] or ext}
        if (creator := self._creators[i]) is not None:
            out["creator"] = creator
        if (album := self._albums[i]) is not None:
            out["album"] = album
        out["score"] = score
        return out

    def search(self, query: str, limit: int = 20) -> list[int]:
        """Tokens whose name, creator, album or id contains every word of `query` (case-insensitive):
        first those whose name or id is the query, then those whose name or id starts with it, each
        group most popular first (searching "1" finds item "1" before the popular "159")."""
        words = [w for w in query.lower().split() if w]
        if not words:
            return []
        mask = None
        for w in words:
            m = pc.match_substring(self._text, w)
            mask = m if mask is None else pc.and_(mask, m)
        hits = np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))
        if len(hits) == 0:
            return []
        rank = np.empty(len(self._popularity_order), dtype=np.int64)
        rank[self._popularity_order] = np.arange(len(rank))
        q = " ".join(words)
        names, ids = pc.take(self._name_lower, hits), pc.take(self._id_lower, hits)
        exact = pc.or_(pc.equal(names, q), pc.equal(ids, q)).to_numpy(zero_copy_only=False)
        prefix = pc.or_(pc.starts_with(names, q), pc.starts_with(ids, q)).to_numpy(zero_copy_only=False)
        tier = np.where(exact, 0, np.where(prefix, 1, 2))
        hits = hits[np.lexsort((rank[hits], tier))][:limit]
        return (hits + N_SPECIAL).tolist()

    def save(self, folder: Path) -> Path:
        path = Path(folder) / ITEMS_FILE
        with atomic_path(path) as tmp:
            pq.write_table(self.table, tmp)
        return path


def load_catalogue(
    model_folder: str | Path, vocab: Vocabulary, store: str | Path | None = None
) -> Catalogue:
    """Names from `store` (and saved into the model folder), else from the folder's items.parquet,
    else from a training run's item_names.json."""
    folder = Path(model_folder)
    path = folder / ITEMS_FILE
    if store is not None:
        from segue.data.store import Store

        with Store.open(store) as s:
            table = s.con.execute(
                "SELECT external_id, name, creator, album FROM items"
            ).to_arrow_table()
        catalogue = Catalogue(vocab, table)
        n = len(vocab) - N_SPECIAL
        if n and catalogue.found == 0:
            raise SegueError(f"{store}: has none of the model's {n} items (the model was trained on another store?)")
        if catalogue.found < n:
            log.warning("%s has %d of the model's %d items; the others are shown by their ids", store, catalogue.found, n)
        # Saved unless the folder already names more of the model's items (a partial store must
        # not overwrite a better table that later serves without --store read).
        if not path.exists() or Catalogue(vocab, pq.read_table(path)).found <= catalogue.found:
            with contextlib.suppress(OSError):  # a read-only model folder still serves, names from the store
                catalogue.save(folder)
        return catalogue
    if path.exists():
        return Catalogue(vocab, pq.read_table(path))
    names = folder / ITEM_NAMES_FILE
    if names.exists():  # a training run's [name, creator] per token: a run served without --store keeps its names
        return Catalogue(vocab, _names_table(names, vocab))
    return Catalogue(vocab, None)


# Written by `segue train` into every run folder (segue.training.continuation, which serving may not
# import): one [name, creator] or null per token of the run's vocabulary.
ITEM_NAMES_FILE = "item_names.json"


def _names_table(path: Path, vocab: Vocabulary) -> pa.Table:
    import json

    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SegueError(f"{path}: unreadable ({e}); remove it to serve the items by their ids") from None
    # One entry per token of the training vocabulary: served items added since (segue items add)
    # extend the vocabulary past it and are named from their own file (with_added_names).
    if not isinstance(rows, list) or len(rows) > len(vocab):
        raise SegueError(f"{path}: expected one [name, creator] or null per token of the model's {len(vocab)}")
    keep = [t for t, r in enumerate(rows) if isinstance(r, list) and len(r) == 2 and vocab.external_ids[t] is not None]
    return pa.table({
        "external_id": pa.array([str(vocab.external_ids[t]) for t in keep], pa.string()),
        "name": pa.array([rows[t][0] for t in keep], pa.string()),
        "creator": pa.array([rows[t][1] for t in keep], pa.string()),
        "album": pa.nulls(len(keep), pa.string()),
    })
