"""Ranking features of (history, candidate) pairs: the one code path of training and serving.

`FeatureState` is fitted on the training part of a split only (never on validation or test
events) and saved in the pipeline folder. `query_features` computes the features of one query's
candidates; the pipeline calls it when it builds the ranker's training pools, when it scores an
evaluation batch and when the server answers a request, so the three cannot drift apart.

Features of candidate item c after history h (last k items h_1..h_k, k = `last_k`):
  <gen>_score, <gen>_rank     each generator's score and 0-based rank of c (NaN: not proposed)
  n_generators                how many generators proposed c
  pop_log                     log(1 + training events of c)
  pop_recent_log              log(1 + training events of c in the last `recent_fraction` of
                              training time (of each sequence's positions when there are no
                              timestamps))
  age_days                    (last training time - first training time of c) / 86400, NaN
                              without timestamps
  hist_len_log                log(1 + |h|)
  pop_window_log              log(1 + training events of c in the `window_days` before the
                              query's last event), NaN without timestamps (popularity as of then)
  age_at_query_days           (query's last event time - first training time of c) / 86400
  knn_mean, knn_max           mean and max over h_1..h_k of the item-kNN cosine sim(h_j, c)
                              (shrunk cosine of training co-occurrence, top `knn_neighbours`)
  i2v_mean, i2v_max           mean and max cosine of the item2vec input vectors of h_j and c
                              (only when an item2vec generator is named in `item2vec`)
  rating_mean                 mean training rating of c (when the store has ratings)
  fb_<name>_mean              mean training value of feedback column <name> for c
  name_match                  query-name tokens found in c's name, creator or album tokens
  name_score                  sum over query-name tokens t of P(c | a training playlist named
                              with t) = n(t, c) / n(t)
  artist_overlap              share of the history items with c's creator
  album_overlap               share of the history items on c's album
  <gen>_fb_<column>           (last, `model_features`) the feedback a transformer generator's
                              feedback head predicts for c after h: computed by the pipeline
                              (segue.models.pipeline.PipelineRecommender.features_of), which
                              runs the model, and appended to these columns
The name and overlap features exist when the store has sequence names or item creators/albums.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from segue.data.arrays import SequenceArrays, SplitData
from segue.data.vocab import N_SPECIAL
from segue.models._interactions import training_matrix
from segue.models.itemknn import cosine_neighbours

TOKEN_RE = re.compile(r"\w+", re.UNICODE)
NAME_CACHE = 1024  # word sets whose name-generator head is kept (~3 KB each at the usual n)


def name_tokens(text: str | None) -> list[str]:
    """Lower-case word tokens of a name ('Chill Vibes 2!' -> ['chill', 'vibes', '2'])."""
    return TOKEN_RE.findall(text.lower()) if text else []


@dataclass
class FeatureState:
    """Item-level facts from the training part, indexed by token (specials hold zeros/NaN)."""

    generators: list[str]
    last_k: int
    pop_log: np.ndarray  # float32 [V]
    pop_recent_log: np.ndarray  # float32 [V]
    age_days: np.ndarray  # float32 [V] (NaN without timestamps)
    knn: sp.csr_matrix  # [V, V] float32 item-kNN similarities (token space)
    i2v: np.ndarray | None = None  # float32 [V, d] unit input vectors (zero rows: no vector)
    item_means: dict[str, np.ndarray] = field(default_factory=dict)  # "rating" / "fb_<x>" -> [V]
    words: dict[str, int] = field(default_factory=dict)  # name token -> id
    item_words: sp.csr_matrix | None = None  # [V, W] binary: tokens of the item's name/creator/album
    name_items: sp.csr_matrix | None = None  # [W, V] P(item | playlist name token)
    creator: np.ndarray | None = None  # int64 [V] (-1 unknown)
    album: np.ndarray | None = None  # int64 [V] (-1 unknown)
    event_keys: np.ndarray | None = None  # int64 sorted (token << 32 | ts) of training events
    first_ts: np.ndarray | None = None  # float64 [V] first training time (NaN: never)
    window_days: float = 30.0
    model_features: list[str] = field(default_factory=list)  # appended by the pipeline (a model's outputs)

    def __post_init__(self) -> None:
        # csr_lookup binary-searches each row's column indices: sorted, without duplicates.
        self.canonicalise()
        self._name_head = functools.lru_cache(maxsize=NAME_CACHE)(self._name_head_uncached)

    def canonicalise(self) -> None:
        """Sorted column indices without duplicates in every sparse matrix (csr_lookup binary-
        searches them; a sparse product, such as name_items, comes out unsorted)."""
        for m in (self.knn, self.item_words, self.name_items):
            if m is not None:
                m.sum_duplicates()

    # --- names ---------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Every feature column: `item_names` (query_features), then `model_features`."""
        return self.item_names + self.model_features

    @property
    def item_names(self) -> list[str]:
        out = []
        for g in self.generators:
            out += [f"{g}_score", f"{g}_rank"]
        out += ["n_generators", "pop_log", "pop_recent_log", "age_days", "hist_len_log", "knn_mean", "knn_max"]
        if self.event_keys is not None:
            out += ["pop_window_log", "age_at_query_days"]
        if self.i2v is not None:
            out += ["i2v_mean", "i2v_max"]
        out += [f"{k}_mean" for k in self.item_means]
        if self.name_items is not None:
            out += ["name_match", "name_score"]
        if self.creator is not None:
            out.append("artist_overlap")
        if self.album is not None:
            out.append("album_overlap")
        return out

    def word_ids(self, name: str | None) -> np.ndarray:
        return np.array(sorted({self.words[w] for w in name_tokens(name) if w in self.words}), dtype=np.int64)

    # --- the features --------------------------------------------------------------------------
    def query_features(
        self,
        history: np.ndarray,
        name: str | None,
        cand: np.ndarray,
        gen_scores: np.ndarray,
        gen_ranks: np.ndarray,
        last_ts: float | None = None,
    ) -> np.ndarray:
        """Features float32 [C, F] (columns: `item_names`) of candidates `cand` [C] after `history`
        (tokens, oldest first) of a query named `name` whose last event happened at `last_ts`
        (unix seconds, None: unknown); gen_scores/gen_ranks [G, C], NaN where generator g did not
        propose the candidate."""
        cand = np.asarray(cand, dtype=np.int64)
        c = len(cand)
        cols: list[np.ndarray] = []
        for g in range(len(self.generators)):
            cols += [gen_scores[g], gen_ranks[g]]
        cols.append((~np.isnan(gen_ranks)).sum(axis=0).astype(np.float32))
        cols += [self.pop_log[cand], self.pop_recent_log[cand], self.age_days[cand]]
        h = np.asarray(history, dtype=np.int64)
        h = h[(h >= N_SPECIAL) & (h < len(self.pop_log))]  # outside [0, V): unknown to the model, skipped
        cols.append(np.full(c, np.log1p(len(h)), np.float32))
        last = h[-self.last_k :]
        if len(last):
            sim = csr_lookup(self.knn, last, cand)  # [k, C]
            cols += [sim.mean(axis=0), sim.max(axis=0)]
        else:
            cols += [np.full(c, np.nan, np.float32)] * 2
        if self.event_keys is not None:
            cols += self._time_features(cand, last_ts)
        if self.i2v is not None:
            if len(last):
                s = self.i2v[last] @ self.i2v[cand].T
                cols += [s.mean(axis=0), s.max(axis=0)]
            else:
                cols += [np.full(c, np.nan, np.float32)] * 2
        cols += [m[cand] for m in self.item_means.values()]
        if self.name_items is not None:
            w = self.word_ids(name)
            if len(w):
                cols.append(_count_in_rows(self.item_words, cand, w))  # type: ignore[arg-type]
                cols.append(_sum_rows(csr_lookup(self.name_items, w, cand)))
            else:
                cols += [np.zeros(c, np.float32)] * 2
        for ids in (self.creator, self.album):
            if ids is not None:
                cols.append(_overlap(ids, h, cand))
        return np.stack([np.asarray(x, dtype=np.float32) for x in cols], axis=1) if c else np.zeros(
            (0, len(self.item_names)), np.float32
        )

    def _time_features(self, cand: np.ndarray, last_ts: float | None) -> list[np.ndarray]:
        if last_ts is None or not np.isfinite(last_ts):
            return [np.full(len(cand), np.nan, np.float32)] * 2
        t = int(last_ts)
        lo = np.searchsorted(self.event_keys, (cand << 32) | max(t - int(self.window_days * 86400), 0), side="left")  # type: ignore[arg-type]
        hi = np.searchsorted(self.event_keys, (cand << 32) | t, side="right")  # type: ignore[arg-type]
        return [np.log1p(hi - lo), (t - self.first_ts[cand]) / 86400.0]  # type: ignore[index]

    def name_candidates(self, name: str | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The name generator: top-n tokens by name_score (positive scores only) and the scores."""
        if self.name_items is None or n <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        w = self.word_ids(name)
        if len(w) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        # The order of (-score, token) is total, so top-n is the head of any longer top list:
        # heads of power-of-two lengths are cached per word set (a request's n grows with its
        # exclusions), as titles repeat (the 50k-item bench: 193 titles in 400 requests, their
        # words' rows ~38k entries a request).
        top, vals = self._name_head(tuple(w.tolist()), max(256, 1 << (n - 1).bit_length()))
        return top[:n].copy(), vals[:n].copy()

    def _name_head_uncached(self, words: tuple[int, ...], n: int) -> tuple[np.ndarray, np.ndarray]:
        m = self.name_items
        assert m is not None
        s = np.zeros(m.shape[1], m.dtype)
        for r in words:  # row by row in float32, the order of scipy's .sum(axis=0)
            lo, hi = m.indptr[r], m.indptr[r + 1]
            s[m.indices[lo:hi]] += m.data[lo:hi]
        nz = np.flatnonzero(s > 0)
        if len(nz) > n:  # a common word matches thousands of items: sort only those tied with the n-th
            kth = -np.partition(-s[nz], n - 1)[n - 1]
            nz = nz[s[nz] >= kth]
        top = nz[np.lexsort((nz, -s[nz]))[:n]]
        return top.astype(np.int64), s[top].astype(np.float32)

    # --- persistence ---------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        import json

        arrays = {"pop_log": self.pop_log, "pop_recent_log": self.pop_recent_log, "age_days": self.age_days}
        if self.i2v is not None:
            arrays["i2v"] = self.i2v
        for k, v in self.item_means.items():
            arrays[f"mean_{k}"] = v
        if self.creator is not None:
            arrays["creator"] = self.creator
        if self.album is not None:
            arrays["album"] = self.album
        if self.event_keys is not None:
            arrays["event_keys"], arrays["first_ts"] = self.event_keys, self.first_ts  # type: ignore[assignment]
        np.savez(folder / "features.npz", **arrays)
        sp.save_npz(folder / "knn.npz", self.knn, compressed=False)
        if self.name_items is not None:
            sp.save_npz(folder / "name_items.npz", self.name_items, compressed=False)
            sp.save_npz(folder / "item_words.npz", self.item_words, compressed=False)
        meta = {
            "generators": self.generators, "last_k": self.last_k, "means": list(self.item_means), "words": self.words,
            "window_days": self.window_days, "model_features": self.model_features,
        }
        (folder / "features.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, folder: Path) -> FeatureState:
        import json

        meta = json.loads((folder / "features.json").read_text())
        a = np.load(folder / "features.npz")
        named = (folder / "name_items.npz").exists()
        return cls(
            generators=meta["generators"],
            last_k=meta["last_k"],
            pop_log=a["pop_log"],
            pop_recent_log=a["pop_recent_log"],
            age_days=a["age_days"],
            knn=sp.load_npz(folder / "knn.npz").tocsr(),
            i2v=a.get("i2v", None),
            item_means={k: a[f"mean_{k}"] for k in meta["means"]},
            words=meta["words"],
            item_words=sp.load_npz(folder / "item_words.npz").tocsr() if named else None,
            name_items=sp.load_npz(folder / "name_items.npz").tocsr() if named else None,
            creator=a.get("creator", None),
            album=a.get("album", None),
            event_keys=a.get("event_keys", None),
            first_ts=a.get("first_ts", None),
            window_days=meta.get("window_days", 30.0),
            model_features=meta.get("model_features", []),
        )


def _row_entries(m: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in m.indices / m.data of the entries of `rows` (row by row) and their row's
    index in `rows`: CSR slicing without scipy's per-call indexing machinery."""
    starts = m.indptr[rows].astype(np.int64)
    lengths = m.indptr[np.asarray(rows) + 1] - starts
    total = int(lengths.sum())
    owner = np.repeat(np.arange(len(rows)), lengths)
    return np.arange(total) - np.repeat(np.cumsum(lengths) - lengths - starts, lengths), owner


def csr_lookup(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """m[rows][:, cols].toarray() [len(rows), len(cols)] (m canonical: sorted indices, no
    duplicates): a binary search of `cols` in each row's indices, read in place. O(cols x log
    row) a row, where scipy's fancy indexing copies whole rows (a common name word's row holds
    ~38k items in the 50k-item bench) and builds several sparse matrices a call."""
    cols = np.asarray(cols, np.int64)
    out = np.zeros((len(rows), len(cols)), m.dtype)
    for i, r in enumerate(np.asarray(rows).tolist()):
        lo, hi = int(m.indptr[r]), int(m.indptr[r + 1])
        if lo == hi or len(cols) == 0:
            continue
        idx = m.indices[lo:hi]
        at = np.minimum(np.searchsorted(idx, cols), hi - lo - 1)
        hit = idx[at] == cols
        out[i, hit] = m.data[lo:hi][at[hit]]
    return out


def _sum_rows(x: np.ndarray) -> np.ndarray:
    """x.sum(axis=0) one row after another, in x's dtype: the order of scipy's sparse .sum(axis=0)
    (numpy may add pairwise, which can differ in the last bit)."""
    out = np.zeros(x.shape[1], x.dtype)
    for row in x:
        out += row
    return out


def _count_in_rows(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """m[rows][:, cols].sum(axis=1) as float32 [len(rows)] for a binary m (name tokens per item)."""
    pos, owner = _row_entries(m, np.asarray(rows, np.int64))
    hit = np.isin(m.indices[pos], cols)
    return np.bincount(owner[hit], weights=m.data[pos[hit]], minlength=len(rows)).astype(np.float32)


def _overlap(ids: np.ndarray, history: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Share of the history items whose id (creator or album) equals the candidate's (-1 never matches)."""
    if len(history) == 0:
        return np.zeros(len(cand), np.float32)
    hv = ids[history]
    hv = hv[hv >= 0]
    if len(hv) == 0:
        return np.zeros(len(cand), np.float32)
    vals, counts = np.unique(hv, return_counts=True)
    cv = ids[cand]
    pos = np.clip(np.searchsorted(vals, cv), 0, len(vals) - 1)
    hit = (vals[pos] == cv) & (cv >= 0)
    return np.where(hit, counts[pos], 0).astype(np.float32) / len(history)


# ---------------------------------------------------------------------------------------------
# fitting on the training part


def fit_feature_state(
    data: SplitData,
    generators: list[str],
    *,
    last_k: int = 5,
    recent_fraction: float = 0.1,
    knn_neighbours: int = 100,
    i2v_vectors: np.ndarray | None = None,
    use_names: bool = True,
) -> FeatureState:
    """Item facts from `data.train` (and the store's item and sequence metadata)."""
    train = data.train
    v = len(data.vocab)
    tokens = np.asarray(train.tokens, dtype=np.int64)
    counts = np.bincount(tokens, minlength=v).astype(np.float64)
    recent = _recent_mask(train, recent_fraction)
    recent_counts = np.bincount(tokens[recent], minlength=v).astype(np.float64)
    age = np.full(v, np.nan, np.float32)
    event_keys = first_ts = None
    if train.ts is not None and len(tokens) and np.asarray(train.ts).max() > 0:
        ts = np.asarray(train.ts, dtype=np.int64)
        first = np.full(v, np.iinfo(np.int64).max)
        np.minimum.at(first, tokens, ts)
        seen = first < np.iinfo(np.int64).max
        age[seen] = ((ts.max() - first[seen]) / 86400.0).astype(np.float32)
        event_keys = np.sort((tokens << 32) | np.clip(ts, 0, (1 << 32) - 1))
        first_ts = np.where(seen, first, np.nan).astype(np.float64)
    n_items = data.vocab.n_items
    x = training_matrix(train, n_items)
    sim_items = cosine_neighbours(x, knn_neighbours, 10.0)
    knn = sp.csr_matrix((v, v), dtype=np.float32)
    if n_items:
        knn = sp.block_diag([sp.csr_matrix((N_SPECIAL, N_SPECIAL), dtype=np.float32), sim_items], format="csr")
    knn = knn.astype(np.float32)
    means: dict[str, np.ndarray] = {}
    if train.rating is not None:
        means["rating"] = _item_mean(tokens, np.asarray(train.rating, np.float64), v)
    for k, col in train.feedback.items():
        means[f"fb_{k}"] = _item_mean(tokens, np.asarray(col, np.float64), v)
    state = FeatureState(
        generators=list(generators),
        last_k=last_k,
        pop_log=np.log1p(counts).astype(np.float32),
        pop_recent_log=np.log1p(recent_counts).astype(np.float32),
        age_days=age,
        knn=knn,
        i2v=None if i2v_vectors is None else _unit(np.asarray(i2v_vectors, np.float32)),
        item_means=means,
        event_keys=event_keys,
        first_ts=first_ts,
    )
    _fit_metadata(state, data, use_names)
    return state


def _recent_mask(train: SequenceArrays, fraction: float) -> np.ndarray:
    """Training events in the last `fraction` of training time (or of each sequence, without ts)."""
    n = train.n_events
    if n == 0:
        return np.zeros(0, bool)
    if train.ts is not None:
        ts = np.asarray(train.ts, dtype=np.int64)
        lo, hi = ts.min(), ts.max()
        if hi > lo:
            return ts >= hi - fraction * (hi - lo)
    lengths = train.lengths
    pos = np.arange(n) - np.repeat(train.offsets[:-1], lengths)
    return pos >= np.repeat(np.floor((1 - fraction) * lengths), lengths)


def _item_mean(tokens: np.ndarray, values: np.ndarray, v: int) -> np.ndarray:
    ok = ~np.isnan(values)
    s = np.bincount(tokens[ok], weights=values[ok], minlength=v)
    n = np.bincount(tokens[ok], minlength=v)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan).astype(np.float32)


def _unit(m: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(m, axis=1, keepdims=True)
    return (m / np.where(norm > 0, norm, 1)).astype(np.float32)


def _fit_metadata(state: FeatureState, data: SplitData, use_names: bool) -> None:
    """Creator/album ids and name tokens from the store's items and training sequences."""
    con = data.store.con
    v = len(data.vocab)
    item_ids = np.asarray(data.vocab.item_ids, dtype=np.int64)
    known = item_ids >= 0
    rows = con.execute("SELECT item_id, name, creator_id, album_id, creator, album FROM items").fetchall()
    by_id = {r[0]: r for r in rows}
    if any(r[2] is not None or r[4] is not None for r in rows):
        state.creator = _codes([by_id[i][2] or by_id[i][4] if i in by_id else None for i in item_ids], known)
    if any(r[3] is not None or r[5] is not None for r in rows):
        state.album = _codes([by_id[i][3] or by_id[i][5] if i in by_id else None for i in item_ids], known)
    if not use_names:
        return
    # Names of the sequences with training events (held-out playlists' names stay out).
    train_rows = data.train.nonempty()
    if len(train_rows) == 0:
        return
    con.register("_train_rows", _table(train_rows))
    try:
        names = con.execute(
            "SELECT s.seq_id, s.name FROM sequences s JOIN _train_rows t ON s.seq_id = t.seq_id WHERE s.name IS NOT NULL"
        ).fetchall()
    finally:
        con.unregister("_train_rows")
    if not names:
        return
    words: dict[str, int] = {}
    r_w, c_w = [], []  # (word, token) pairs, one per training event of a named playlist
    for seq, name in names:
        ws = {words.setdefault(w, len(words)) for w in name_tokens(name)}
        if not ws:
            continue
        toks = np.unique(np.asarray(data.train.row(seq), dtype=np.int64))
        toks = toks[toks >= N_SPECIAL]
        for w in ws:
            r_w.append(np.full(len(toks), w, np.int64))
            c_w.append(toks)
    item_word_pairs: list[tuple[int, int]] = []
    for t in np.flatnonzero(known):
        r = by_id.get(int(item_ids[t]))
        if r is None:
            continue
        for w in {*name_tokens(r[1]), *name_tokens(r[4]), *name_tokens(r[5])}:
            item_word_pairs.append((int(t), words.setdefault(w, len(words))))
    nw = len(words)
    if nw == 0:
        return
    rw = np.concatenate(r_w) if r_w else np.zeros(0, np.int64)
    cw = np.concatenate(c_w) if c_w else np.zeros(0, np.int64)
    co = sp.csr_matrix((np.ones(len(rw), np.float32), (rw, cw)), shape=(nw, v))
    per_word = np.bincount([words[w] for _, n in names for w in set(name_tokens(n))], minlength=nw).astype(np.float32)
    state.name_items = sp.csr_matrix(sp.diags(1.0 / np.maximum(per_word, 1)) @ co, dtype=np.float32)
    pairs = np.array(item_word_pairs, dtype=np.int64).reshape(-1, 2)
    state.item_words = sp.csr_matrix(
        (np.ones(len(pairs), np.float32), (pairs[:, 0], pairs[:, 1])), shape=(v, nw), dtype=np.float32
    )
    state.words = words
    state.canonicalise()


def _codes(values: list[object], known: np.ndarray) -> np.ndarray:
    codes: dict[object, int] = {}
    out = np.array([codes.setdefault(x, len(codes)) if x is not None else -1 for x in values], dtype=np.int64)
    out[~known] = -1
    return out


def _table(rows: np.ndarray) -> object:
    import pyarrow as pa

    return pa.table({"seq_id": pa.array(np.asarray(rows, np.int32))})
