"""The synthetic playlist generator: deterministic, MPD-like shape, learnable structure."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from segue.data.sources import open_source
from segue.data.sources.mpd import MPDSource
from segue.data.sources.synthetic import (
    SyntheticConfig,
    SyntheticSource,
    iter_playlists,
    make_catalogue,
    write_mpd_slices,
)
from segue.data.store import Store, build_store
from segue.errors import ConfigError

CFG = SyntheticConfig(n_playlists=1500, n_items=4000, seed=11)


def flat(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    batches = list(iter_playlists(cfg))
    lengths = np.concatenate([np.diff(b.offsets) for b in batches])
    tracks = np.concatenate([b.tracks for b in batches])
    names = [n for b in batches for n in b.names]
    return lengths, tracks, names


def test_deterministic_by_seed() -> None:
    a, b, c = flat(CFG), flat(CFG), flat(CFG.model_copy(update={"seed": 12}))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[1][:1000], c[1][:1000])


def test_shape_is_mpd_like() -> None:
    cfg = SyntheticConfig(n_playlists=2000, n_items=50_000, seed=1)
    lengths, tracks, names = flat(cfg)
    assert lengths.min() >= 5 and lengths.max() <= 250
    assert 55 <= lengths.mean() <= 75  # the MPD's mean is ~66
    assert np.median(lengths) < lengths.mean()  # right-skewed, like the MPD
    counts = np.sort(np.bincount(tracks, minlength=cfg.n_items))[::-1]
    assert counts[: cfg.n_items // 100].sum() > 0.08 * counts.sum()  # top 1% of tracks: a large share
    assert all(n for n in names)


def test_playlists_have_learnable_structure() -> None:
    cat = make_catalogue(CFG)
    lengths, tracks, _ = flat(CFG)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    same_album = same_artist = pairs = 0
    genre_share = []
    for s, n in zip(starts, lengths, strict=True):
        t = tracks[s : s + n]
        assert len(set(t.tolist())) == n  # no repeats inside a playlist
        pairs += n - 1
        same_album += int((cat.track_album[t[1:]] == cat.track_album[t[:-1]]).sum())
        same_artist += int((cat.track_artist[t[1:]] == cat.track_artist[t[:-1]]).sum())
        genre_share.append(np.bincount(cat.track_genre[t]).max() / n)
    n_albums = cat.track_album.max() + 1
    assert same_album / pairs > 0.15 > 20 / n_albums  # album runs, far above chance
    assert same_artist / pairs > 0.3
    assert np.mean(genre_share) > 0.6  # playlists stick to a few genres (12 in the catalogue)


def test_source_builds_demo_sized_store(tmp_path: Path) -> None:
    store = build_store(open_source("synthetic", n_playlists=300, n_items=500), tmp_path / "s.duckdb")
    with Store.open(store) as s:
        c = s.counts()
        assert c["sequences"] == 300 and c["items"] <= 500
        name, creator, album, meta = s.con.execute("SELECT name, creator, album, meta FROM items LIMIT 1").fetchone()
        assert name and creator.startswith("The ") and "Sessions" in album and "genre" in json.loads(meta)
        seq_meta = json.loads(s.con.execute("SELECT meta FROM sequences LIMIT 1").fetchone()[0])
        assert seq_meta["mood"] and seq_meta["genres"]


def test_mpd_slices_round_trip(tmp_path: Path) -> None:
    cfg = SyntheticConfig(n_playlists=2100, n_items=900, mean_length=10, seed=5)
    paths = write_mpd_slices(cfg, tmp_path / "mpd")
    assert [p.name for p in paths] == ["mpd.slice.0-999.json", "mpd.slice.1000-1999.json", "mpd.slice.2000-2999.json"]
    doc = json.loads(paths[2].read_text())
    assert len(doc["playlists"]) == 100 and doc["playlists"][0]["pid"] == 2000
    sums = dict(line.split()[::-1] for line in (tmp_path / "mpd" / "md5sums").read_text().splitlines())
    assert sums[paths[0].name] == hashlib.md5(paths[0].read_bytes()).hexdigest()

    a = build_store(MPDSource(tmp_path / "mpd", workers=0), tmp_path / "a.duckdb")
    b = build_store(SyntheticSource(cfg), tmp_path / "b.duckdb")
    q = (
        "SELECT q.external_id, e.position, i.external_id, i.name, i.creator_id, i.album_id, q.name, q.modified_at "
        "FROM events e JOIN items i USING (item_id) JOIN sequences q USING (seq_id) ORDER BY q.seq_id, e.position"
    )
    with Store.open(a) as sa, Store.open(b) as sb:
        assert sa.con.execute(q).fetchall() == sb.con.execute(q).fetchall()


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="min_length"):
        SyntheticConfig.from_dict({"min_length": 10, "max_length": 5})
    with pytest.raises(ConfigError, match="n_playlist"):
        open_source("synthetic", n_playlist=5)
