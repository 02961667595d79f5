"""A small temporal store whose items have artists, albums and genres, for the side-feature tests.

Items 0..29 are played before the cut (t < CUT); items 30..35 are released after it: 30..33 on
known artists and albums (cold items with known features), 34..35 by an artist ('Late Artist')
and on an album no training item has. Each playlist sticks to one artist, so features predict.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from segue.data.sources.base import Chunk, ListSource
from segue.data.store import BuildConfig, build_store

CUT = 1_000_000
N_OLD, N_NEW = 30, 6
ARTISTS = ["A", "B", "C"]


def artist_of(i: int) -> str:
    return "Late Artist" if i >= N_OLD + 4 else ARTISTS[i % 3]


def item_rows(n_items: int = N_OLD + N_NEW) -> pa.Table:
    return pa.table(
        {
            "item_key": [f"i{i}" for i in range(n_items)],
            "name": [f"Song {i} of {artist_of(i)}" for i in range(n_items)],
            "creator": [artist_of(i) for i in range(n_items)],
            "album": [f"{artist_of(i)} album {i % 2 if i < N_OLD + 4 else 9}" for i in range(n_items)],
            "meta": [json.dumps({"genres": ["rock", "pop"] if i % 3 == 0 else ["jazz"]}) for i in range(n_items)],
        }
    )


def feature_store(path: Path, *, n_seq: int = 60, seed: int = 0, after_cut: bool = True, extra_after: int = 0) -> Path:
    """Playlists of one artist each: 8 events before the cut, then (after_cut) 4 after it, where
    new items appear. `extra_after` adds that many more post-cut plays of old items per playlist
    (stores that differ only after the cut, for the leakage test)."""
    rng, rng_after = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    seq, item, pos, ts = [], [], [], []
    for s in range(n_seq):
        a = s % 3
        old = [i for i in range(N_OLD) if i % 3 == a]
        new = [i for i in range(N_OLD, N_OLD + 4) if i % 3 == a] + [N_OLD + 4 + (s % 2)]
        picks = [int(x) for x in rng.choice(old, 8)]
        times = list(range(CUT - 1000 + s, CUT - 1000 + s + 8))
        if after_cut:
            later = [int(x) for x in rng_after.choice(old + new + new, 4 + extra_after)]
            picks += later
            times += list(range(CUT + 10 + s, CUT + 10 + s + len(later)))
        seq += [f"u{s}"] * len(picks)
        item += [f"i{i}" for i in picks]
        pos += list(range(len(picks)))
        ts += times
    events = pa.table({"seq_key": seq, "item_key": item, "position": pa.array(pos, pa.int32()), "ts": pa.array(ts, pa.int64())})
    splits = [{"kind": "temporal", "valid_cut": CUT, "test_cut": CUT}]
    return build_store(ListSource([Chunk(events=events, items=item_rows())]), path, BuildConfig(seed=seed, splits=splits))


def content_parquet(path: Path, n_items: int = N_OLD + N_NEW, dim: int = 4, shift_new: float = 0.0) -> Path:
    """Content vectors: a one-hot of the artist plus noise; items after the cut shifted by `shift_new`."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    vecs = []
    for i in range(n_items):
        v = rng.normal(0, 0.1, dim)
        v[ARTISTS.index(artist_of(i)) if artist_of(i) in ARTISTS else dim - 1] += 1.0
        if i >= N_OLD:
            v += shift_new
        vecs.append(v.tolist())
    pq.write_table(pa.table({"item": [f"i{i}" for i in range(n_items)], "vector": vecs}), path)
    return path
