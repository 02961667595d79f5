"""Compiled split arrays: each (split, parts) view of the store as memory-mapped CSR arrays.

Row r of a `SequenceArrays` is the store's sequence r (seq_id == r): the events of that sequence
whose part is in `parts`, in position order. Rows without such events are empty, so a history
view and a target view of the same split line up by row.

Files (one folder per view, written atomically under
<store>.arrays/<store checksum>/<split>/parts-<p..>/vocab-<vocabulary digest>/, reused while the
store content and the vocabulary are unchanged):
  offsets.npy  int64 [n_seq + 1]   events of row r are [offsets[r], offsets[r + 1])
  tokens.npy   int32 [n_events]    vocabulary tokens of the split (<unk> outside the vocabulary)
  item_ids.npy int32 [n_events]    store item ids (exact, for checks and names)
  positions.npy int32 [n_events]   position within the full stored sequence
  ts.npy       int64 [n_events]    unix seconds (0 where missing; has_ts tells)
  rating.npy   float32 [n_events]  NaN where missing
  fb_<name>.npy float32 [n_events] feedback columns
  ctx_<name>.npy int32 [n_events]  context columns, dictionary-coded (codes in meta.json, -1 = null)
  meta.json    split, parts, store checksum, counts, context categories
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from segue.data.splits import Part, history_parts
from segue.data.store import Store
from segue.data.vocab import Vocabulary
from segue.errors import InputError
from segue.io import atomic_path, probe_writable

ARRAYS_VERSION = 2


@dataclass
class SequenceArrays:
    """CSR view of sequences; arrays may be memory-mapped (read-only)."""

    offsets: np.ndarray  # int64 [n + 1]
    tokens: np.ndarray  # int32 [N]
    item_ids: np.ndarray  # int32 [N]
    positions: np.ndarray | None = None  # int32 [N]
    ts: np.ndarray | None = None  # int64 [N]
    rating: np.ndarray | None = None  # float32 [N]
    feedback: dict[str, np.ndarray] = field(default_factory=dict)  # name -> float32 [N]
    context: dict[str, np.ndarray] = field(default_factory=dict)  # name -> int32 codes [N]
    context_categories: dict[str, list[str]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def n_events(self) -> int:
        return int(self.offsets[-1])

    def row(self, r: int) -> np.ndarray:
        """Tokens of row r."""
        return self.tokens[self.offsets[r] : self.offsets[r + 1]]

    def row_items(self, r: int) -> np.ndarray:
        return self.item_ids[self.offsets[r] : self.offsets[r + 1]]

    def check_rows(self, rows: np.ndarray | None) -> np.ndarray:
        """`rows` as int64 [B] (all rows if None), or an InputError naming the first row outside
        [0, len) (a negative row must not count from the end)."""
        if rows is None:
            return np.arange(len(self), dtype=np.int64)
        r = np.asarray(rows)
        if r.ndim != 1 or (r.size and not np.issubdtype(r.dtype, np.integer)):
            raise InputError(f"rows of shape {r.shape} and type {r.dtype}", field="rows", expected="a 1-d array of whole row numbers")
        r = r.astype(np.int64)
        bad = r[(r < 0) | (r >= len(self))]
        if len(bad):
            raise InputError(f"row {int(bad[0])} is outside the histories", field="rows", expected=f"rows in [0, {len(self)})")
        return r

    def nonempty(self) -> np.ndarray:
        """Row indices with at least one event."""
        return np.flatnonzero(self.lengths > 0)

    def take(
        self, rows: np.ndarray, starts: np.ndarray | None = None, lengths: np.ndarray | None = None
    ) -> SequenceArrays:
        """A new in-memory SequenceArrays whose row i is row rows[i] (in that order), or only its
        events [starts[i], starts[i] + lengths[i]) when given (starts relative to the row)."""
        rows = np.asarray(rows, dtype=np.int64)
        begin = np.asarray(self.offsets, dtype=np.int64)[rows]
        if lengths is None:
            lengths = np.asarray(self.offsets, dtype=np.int64)[rows + 1] - begin
        lengths = np.asarray(lengths, dtype=np.int64)
        if starts is not None:
            begin = begin + np.asarray(starts, dtype=np.int64)
        return self.gather(_gather_index(begin, lengths), lengths, {"rows": "subset"})

    def gather(self, idx: np.ndarray, lengths: np.ndarray, meta: dict | None = None) -> SequenceArrays:
        """A new in-memory SequenceArrays of the events `idx` (every column), cut into rows of
        `lengths` (sum(lengths) == len(idx))."""
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])

        def g(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.asarray(a[idx])

        return SequenceArrays(
            offsets=offsets,
            tokens=np.asarray(self.tokens[idx]),
            item_ids=np.asarray(self.item_ids[idx]),
            positions=g(self.positions),
            ts=g(self.ts),
            rating=g(self.rating),
            feedback={k: np.asarray(v[idx]) for k, v in self.feedback.items()},
            context={k: np.asarray(v[idx]) for k, v in self.context.items()},
            context_categories=self.context_categories,
            meta=dict(self.meta) | (meta or {}),
        )

    @classmethod
    def from_lists(cls, rows: list[list[int]] | list[np.ndarray]) -> SequenceArrays:
        """Build from token lists (tests, serving requests). item_ids are left at -1."""
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.concatenate([np.asarray(r, dtype=np.int32) for r in rows]) if len(rows) else np.zeros(0, np.int32)
        return cls(offsets=offsets, tokens=tokens.astype(np.int32), item_ids=np.full(len(tokens), -1, np.int32))


def _gather_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ranges [starts[i], starts[i] + lengths[i]) as one index array."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    out_starts = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) - np.repeat(out_starts - starts, lengths)


# ---------------------------------------------------------------------------------------------


def arrays_dir(store_path: str | Path) -> Path:
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + ".arrays")


def compile_split(
    store: Store,
    split: str,
    parts: tuple[int, ...] | list[int],
    *,
    vocab: Vocabulary | None = None,
    cache: bool = True,
    batch_rows: int = 1 << 20,
) -> SequenceArrays:
    """Compile the events of `split` with part in `parts` into CSR arrays (cached beside the store,
    written `batch_rows` events at a time)."""
    parts = tuple(sorted(int(p) for p in parts))
    store.require_split(split)
    vocab = vocab or Vocabulary.from_store(store.con, split)
    # The vocabulary is part of the key: a view compiled with another vocabulary has other tokens.
    folder = (
        arrays_dir(store.path) / store.checksum / split / ("parts-" + "-".join(map(str, parts))) / f"vocab-{vocab.digest()}"
    )
    if cache and (folder / "meta.json").exists():
        return load_arrays(folder)
    if cache and not _cache_writable(folder, store.path):
        cache = False  # a store on a read-only mount is still readable: compile in memory
    n_seq = store.con.execute("SELECT count(*) FROM sequences").fetchone()[0]
    extras = store.extra_columns
    columns = ["item_id", "ts", "rating", *extras]
    cats: dict[str, dict[str, int]] = {c: {} for c, t in extras.items() if t == "VARCHAR"}
    batches = (_batch_columns(b, extras, cats) for b in store.split_event_batches(split, parts, columns, batch_rows))
    (n_events,) = store.con.execute(
        f"SELECT count(*) FROM split_events WHERE split = ? AND part IN ({','.join('?' * len(parts))})", [split, *parts]
    ).fetchone()
    meta = {"version": ARRAYS_VERSION, "split": split, "parts": list(parts), "store_checksum": store.checksum}
    meta |= {"n_sequences": n_seq, "n_events": int(n_events), "vocab_size": len(vocab)}
    files = _column_files(extras)
    if not cache:
        cols = {name: np.empty(int(n_events), dt) for name, dt in files.values()}
        offsets, has_ts, has_rating = _fill(cols, files, batches, vocab, n_seq)
        return SequenceArrays(
            offsets=offsets,
            tokens=cols["tokens"],
            item_ids=cols["item_ids"],
            positions=cols["positions"],
            ts=cols["ts"] if has_ts else None,
            rating=cols["rating"] if has_rating else None,
            feedback={n[3:]: a for n, a in cols.items() if n.startswith("fb_")},
            context={n[4:]: a for n, a in cols.items() if n.startswith("ctx_")},
            context_categories={c[4:]: list(cats[c]) for c in cats},
            meta=meta,
        )
    # Cached: streamed into memory-mapped .npy files batch by batch, so memory stays bounded by
    # the batch (and DuckDB's sort of one range of sequences), not by the corpus.
    from numpy.lib.format import open_memmap

    with atomic_path(folder, is_dir=True) as tmp:
        mms = {name: open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dt, shape=(int(n_events),)) for name, dt in files.values()}
        offsets, has_ts, has_rating = _fill(mms, files, batches, vocab, n_seq)
        for mm in mms.values():
            mm.flush()
        del mms
        for name, present in (("ts", has_ts), ("rating", has_rating)):
            if not present:  # an absent column is a missing file, as save_arrays writes it
                (tmp / f"{name}.npy").unlink()
        np.save(tmp / "offsets.npy", offsets)
        cat_meta = {"context_categories": {c[4:]: list(cats[c]) for c in cats}}
        (tmp / "meta.json").write_text(json.dumps(meta | cat_meta))
    return load_arrays(folder)


_UNCACHED_NOTED: set[Path] = set()


def _cache_writable(folder: Path, store_path: Path) -> bool:
    """Can the arrays cache be written under `folder`'s parent? If not (a read-only folder or
    mount), a one-line note says so, once per store and process."""
    import sys

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        probe_writable(folder.parent)
        return True
    except OSError as e:
        key = Path(store_path).resolve()
        if key not in _UNCACHED_NOTED:
            _UNCACHED_NOTED.add(key)
            where = arrays_dir(store_path)
            print(
                f"note: cannot write the arrays cache {where} ({e.strerror or e}); compiling {store_path}'s "
                "arrays in memory on every run (slower on a large store)",
                file=sys.stderr,
                flush=True,
            )
        return False


def _column_files(extras: dict[str, str]) -> dict[str, tuple[str, type]]:
    """Batch column -> (SequenceArrays / .npy name, dtype) of every compiled event column."""
    files: dict[str, tuple[str, type]] = {"tokens": ("tokens", np.int32), "item_id": ("item_ids", np.int32)}
    files |= {"position": ("positions", np.int32), "ts": ("ts", np.int64), "rating": ("rating", np.float32)}
    for c, t in extras.items():
        files[c] = (f"ctx_{c[4:]}", np.int32) if t == "VARCHAR" else (f"fb_{c[3:]}", np.float32)
    return files


def _batch_columns(batch: pa.RecordBatch, extras: dict[str, str], cats: dict[str, dict[str, int]]) -> dict[str, Any]:
    """One event batch as numpy columns: ids, positions, ts (0 = null), rating (NaN = null), the
    numeric extras (NaN = null) and the string extras as dictionary codes (-1 = null; `cats` grows);
    "ts_given": whether the batch has any timestamp."""
    out: dict[str, Any] = {
        n: batch.column(n).to_numpy(zero_copy_only=False).astype(np.int32, copy=False) for n in ("seq_id", "position", "item_id")
    }
    ts = batch.column("ts")
    out["ts"] = ts.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    out["ts_given"] = ts.null_count < len(ts)
    out["rating"] = batch.column("rating").to_numpy(zero_copy_only=False).astype(np.float32)
    for c, t in extras.items():
        col = batch.column(c)
        out[c] = _encode_strings(col, cats[c]) if t == "VARCHAR" else col.to_numpy(zero_copy_only=False).astype(np.float32)
    return out


def _fill(
    out: dict[str, np.ndarray], files: dict[str, tuple[str, type]], batches: Any, vocab: Vocabulary, n_seq: int
) -> tuple[np.ndarray, bool, bool]:
    """Write the event batches into the preallocated columns `out` (named as in `files`), in
    order; returns (offsets [n_seq + 1], any timestamp, any rating)."""
    n_events = len(out["tokens"])
    counts = np.zeros(n_seq, dtype=np.int64)
    at, has_ts, has_rating = 0, False, False
    for cols in batches:
        n = len(cols["seq_id"])
        if at + n > n_events:
            raise RuntimeError(f"the store yielded more events than it counted ({n_events})")
        counts += np.bincount(cols["seq_id"], minlength=n_seq)
        cols["tokens"] = vocab.encode_item_ids(cols["item_id"])
        for key, (name, _) in files.items():
            out[name][at : at + n] = cols[key]
        has_ts |= cols["ts_given"]
        has_rating |= bool(np.isfinite(cols["rating"]).any())
        at += n
    if at != n_events:
        raise RuntimeError(f"the store yielded {at} events but counted {n_events}")
    offsets = np.zeros(n_seq + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, has_ts, has_rating


def _encode_strings(values: pa.Array | pa.ChunkedArray, codes: dict[str, int]) -> np.ndarray:
    """Dictionary codes of strings (-1 for null), extending `codes` in order of first appearance."""
    enc = pc.dictionary_encode(values)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    # Only the (few) distinct values go through Python; the events are remapped in numpy.
    remap = np.array([codes.setdefault(v, len(codes)) for v in enc.dictionary.to_pylist()] + [-1], dtype=np.int32)
    idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return remap[idx]


def save_arrays(arrays: SequenceArrays, folder: Path) -> None:
    with atomic_path(folder, is_dir=True) as tmp:
        np.save(tmp / "offsets.npy", arrays.offsets)
        np.save(tmp / "tokens.npy", arrays.tokens)
        np.save(tmp / "item_ids.npy", arrays.item_ids)
        for name in ("positions", "ts", "rating"):
            a = getattr(arrays, name)
            if a is not None:
                np.save(tmp / f"{name}.npy", a)
        for k, v in arrays.feedback.items():
            np.save(tmp / f"fb_{k}.npy", v)
        for k, v in arrays.context.items():
            np.save(tmp / f"ctx_{k}.npy", v)
        meta = dict(arrays.meta) | {"context_categories": arrays.context_categories}
        (tmp / "meta.json").write_text(json.dumps(meta))


def load_arrays(folder: Path) -> SequenceArrays:
    meta = json.loads((folder / "meta.json").read_text())

    def m(name: str) -> np.ndarray | None:
        p = folder / f"{name}.npy"
        return np.load(p, mmap_mode="r") if p.exists() else None

    cats = meta.pop("context_categories", {})
    return SequenceArrays(
        offsets=m("offsets"),
        tokens=m("tokens"),
        item_ids=m("item_ids"),
        positions=m("positions"),
        ts=m("ts"),
        rating=m("rating"),
        feedback={p.stem[3:]: np.load(p, mmap_mode="r") for p in sorted(folder.glob("fb_*.npy"))},
        context={p.stem[4:]: np.load(p, mmap_mode="r") for p in sorted(folder.glob("ctx_*.npy"))},
        context_categories=cats,
        meta=meta,
    )


# ---------------------------------------------------------------------------------------------


@dataclass
class SplitData:
    """Everything a model needs from a split: vocabulary, training arrays, and scoring views.

    `history(P)` and `targets(P)` are row-aligned (row = seq_id) for P in VALID or TEST.
    """

    store: Store
    split: str
    vocab: Vocabulary
    train: SequenceArrays

    @classmethod
    def load(cls, store: Store, split: str) -> SplitData:
        store.require_split(split)  # a StoreError naming the store and its splits, not a KeyError
        vocab = Vocabulary.from_store(store.con, split)
        return cls(store=store, split=split, vocab=vocab, train=compile_split(store, split, (Part.TRAIN,), vocab=vocab))

    def history(self, target: Part | int) -> SequenceArrays:
        return compile_split(self.store, self.split, history_parts(target), vocab=self.vocab)

    def targets(self, target: Part | int) -> SequenceArrays:
        return compile_split(self.store, self.split, (int(target),), vocab=self.vocab)

    @property
    def kind(self) -> str:
        return self.store.split_info(self.split)["kind"]
