"""A synthetic playlist corpus, deterministic by seed: the demo's data and the benchmark's input.

The catalogue has genres, artists (one genre each), albums (one artist each) and tracks (one album
each). Track popularity is Zipf-like: within a genre, a track of popularity rank r is drawn with
weight 1 / (r + 1) ** zipf_exponent. A playlist picks 1-3 genres (one dominant) and a mood, takes
its name from the mood (and often the genre), and its length from a log-normal with mean about
`mean_length`, clipped to [min_length, max_length] (the MPD: mean 66, 5..250).

Tracks are drawn by a small Markov process, so that there is sequential and co-occurrence
structure to learn: after a track, with probability `p_album` the next track of the same album
follows, otherwise with probability `p_artist` another track of the same artist, otherwise a fresh
draw from the playlist's genre mix by popularity. Repeats inside a playlist are avoided.

With `feedback = true` (off by default; the tracks are the same either way) every event also
carries feedback and context, drawn after the tracks (segue.models.events reads them):
  fb_listened  fraction of the track played: clip(fit + N(0, 0.15), 0, 1), where a track's fit to
               its playlist is 0.5 [its genre is the playlist's dominant one] + 0.5 (1 - |e_track -
               e_playlist|) with a hidden energy e in [0, 1] per track and per playlist
  fb_skip      1 when fb_listened < 0.35, else 0
  ctx_platform mobile / desktop / tv: the track's genre g prefers platform g mod 3 (p = 0.8)
  ctx_hour     "0".."23": the track's artist a prefers the hours 6 (a mod 4) .. 6 (a mod 4) + 5
               (p = 0.8), else any hour
so the context of the next event says something about its genre and artist.

`SyntheticSource` yields store chunks directly; `write_mpd_slices` writes the same playlists in the
Spotify MPD slice JSON format (1,000 playlists a file, optional md5sums), for the ingest benchmark
and the MPD importer's tests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from segue.config import Config
from segue.data.sources.base import Chunk, SourceFile
from segue.io import atomic_path, atomic_write_bytes, atomic_write_text

GENRES = (
    "rock", "pop", "hip hop", "jazz", "country", "electronic", "indie", "r&b", "metal", "folk",
    "classical", "latin", "punk", "soul", "reggae", "blues", "house", "k-pop", "ambient", "gospel",
)  # fmt: skip
MOODS = (
    "chill", "happy", "sad", "workout", "party", "focus", "road trip", "sleep", "summer", "throwback",
    "rainy day", "morning", "late night", "love", "feel good", "study", "dinner", "gaming",
)  # fmt: skip
_WORDS = (
    "blue", "night", "fire", "heart", "river", "golden", "electric", "wild", "silver", "midnight",
    "summer", "broken", "dream", "city", "velvet", "ocean", "neon", "stone", "echo", "paper",
    "shadow", "sun", "moon", "rain", "glass", "honey", "ghost", "crystal", "highway", "thunder",
)  # fmt: skip

SLICE_SIZE = 1000  # playlists per MPD slice file, as in the real dataset
_MPD_START, _MPD_END = 1_262_304_000, 1_509_494_400  # 2010-01-01 .. 2017-11-01, the MPD's span


class SyntheticConfig(Config):
    """Shape of the synthetic corpus. The default builds in a couple of seconds (demo size)."""

    n_playlists: int = Field(3000, ge=1)
    n_items: int = Field(5000, ge=10)
    n_genres: int = Field(12, ge=1, le=len(GENRES) * 10)
    tracks_per_album: float = Field(10.0, ge=1)
    albums_per_artist: float = Field(2.0, ge=1)
    mean_length: float = Field(66.0, ge=1)
    length_sigma: float = Field(0.8, ge=0)  # log-normal shape of playlist lengths
    min_length: int = Field(5, ge=1)
    max_length: int = Field(250, ge=1)
    zipf_exponent: float = Field(1.0, ge=0)
    p_album: float = Field(0.3, ge=0, le=1)  # continue with the album's next track
    p_artist: float = Field(0.2, ge=0, le=1)  # else another track of the same artist
    seed: int = Field(0, ge=0)  # numpy's generators take no negative seed
    feedback: bool = False  # add fb_listened, fb_skip, ctx_platform, ctx_hour to every event
    # Cold-start releases: this fraction of tracks is released late, uniformly over the last
    # `release_span` of the time range, and never played before its release. Then every event
    # has its own time (a playlist's events are spread from its start to modified_at), so a
    # temporal cut falls inside playlists. 0 keeps the corpus as it was.
    new_items: float = Field(0.0, ge=0, lt=1)
    release_span: float = Field(0.15, gt=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> SyntheticConfig:
        if self.min_length > self.max_length:
            raise ValueError(f"min_length {self.min_length} exceeds max_length {self.max_length}")
        return self


SUMMARY = "a synthetic playlist corpus, deterministic by seed (no input path); the demo's data."
EXAMPLE = "segue data build synthetic -o synth.duckdb --option n_playlists=1000 --option seed=3"
# The fields of SyntheticConfig (tests check that the two agree).
OPTIONS: dict[str, str] = {
    "n_playlists": "number of playlists (default 3000)",
    "n_items": "number of tracks in the catalogue (default 5000)",
    "n_genres": "number of genres (default 12)",
    "tracks_per_album": "mean tracks per album (default 10)",
    "albums_per_artist": "mean albums per artist (default 2)",
    "mean_length": "mean playlist length (default 66, as the MPD)",
    "length_sigma": "log-normal shape of playlist lengths (default 0.8)",
    "min_length": "shortest playlist (default 5)",
    "max_length": "longest playlist (default 250)",
    "zipf_exponent": "popularity skew: rank r is drawn with weight 1/(r+1)^exponent (default 1)",
    "p_album": "probability that the album's next track follows (default 0.3)",
    "p_artist": "else probability of another track of the same artist (default 0.2)",
    "seed": "random seed (default 0)",
    "feedback": "add listening feedback (fb_listened, fb_skip) and context (ctx_platform, ctx_hour) to every event (true/false, default false)",
    "new_items": "fraction of tracks released late (never played before their release; events then carry their own times), "
    "for cold-start tests (default 0)",
    "release_span": "late releases fall uniformly in this last fraction of the time range (default 0.15)",
}


@dataclass
class Catalogue:
    """The synthetic items; arrays are indexed by track number (0..n_items-1)."""

    genre_names: list[str]
    track_genre: np.ndarray  # int32 [n_items]
    track_artist: np.ndarray  # int32 [n_items]
    track_album: np.ndarray  # int32 [n_items]
    album_tracks: list[np.ndarray]  # per album: its track numbers in album order
    artist_tracks: list[np.ndarray]
    genre_tracks: list[np.ndarray]  # per genre: tracks by descending popularity
    genre_cdf: list[np.ndarray]  # per genre: cumulative draw probabilities (Zipf)
    track_names: list[str]
    artist_names: list[str]
    album_names: list[str]
    duration_ms: np.ndarray  # int64 [n_items]
    release: np.ndarray  # int64 [n_items] unix time of release (0: always there)

    @property
    def n_items(self) -> int:
        return len(self.track_genre)

    def track_uri(self, t: int) -> str:
        return f"synthetic:track:{t}"


def make_catalogue(cfg: SyntheticConfig) -> Catalogue:
    rng = np.random.default_rng([cfg.seed, 1])
    n = cfg.n_items
    genre_names = [
        GENRES[g % len(GENRES)] + ("" if g < len(GENRES) else f" {g // len(GENRES) + 1}")
        for g in range(cfg.n_genres)
    ]
    n_albums = max(1, int(round(n / cfg.tracks_per_album)))
    n_artists = max(1, int(round(n_albums / cfg.albums_per_artist)))
    # Albums of varied size: split the tracks at sorted random cut points.
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(n_albums - 1, n - 1), replace=False))
    track_album = np.zeros(n, dtype=np.int32)
    track_album[cuts] = 1
    track_album = np.cumsum(track_album).astype(np.int32)
    n_albums = int(track_album[-1]) + 1
    album_artist = rng.integers(0, n_artists, size=n_albums).astype(np.int32)
    album_artist[: min(n_artists, n_albums)] = np.arange(min(n_artists, n_albums))  # no artist left empty
    artist_genre = rng.integers(0, cfg.n_genres, size=n_artists).astype(np.int32)
    track_artist = album_artist[track_album]
    track_genre = artist_genre[track_artist]

    def groups(keys: np.ndarray, k: int) -> list[np.ndarray]:
        order = np.argsort(keys, kind="stable")
        bounds = np.searchsorted(keys[order], np.arange(k + 1))
        return [order[bounds[i] : bounds[i + 1]] for i in range(k)]

    popularity = rng.permutation(n)  # rank 0 = most popular
    genre_tracks, genre_cdf = [], []
    for tracks in groups(track_genre, cfg.n_genres):
        tracks = tracks[np.argsort(popularity[tracks], kind="stable")]
        w = 1.0 / np.arange(1, len(tracks) + 1) ** cfg.zipf_exponent
        genre_tracks.append(tracks.astype(np.int32))
        genre_cdf.append(np.cumsum(w) / w.sum() if len(w) else w)

    words = [w.title() for w in _WORDS]
    pick = rng.integers(0, len(words), size=(n, 2)).tolist()
    track_names = [f"{words[a]} {words[b]} {t}" for t, (a, b) in enumerate(pick)]
    pick = rng.integers(0, len(words), size=n_artists).tolist()
    artist_names = [f"The {words[p]}s {a}" for a, p in enumerate(pick)]
    pick = rng.integers(0, len(words), size=n_albums).tolist()
    album_names = [f"{words[p]} Sessions Vol. {a}" for a, p in enumerate(pick)]
    duration = np.clip(rng.normal(225_000, 45_000, size=n), 60_000, 600_000).astype(np.int64)
    # Late releases from their own generator: the rest of the catalogue does not move.
    rel_rng = np.random.default_rng([cfg.seed, 5])
    late = rel_rng.random(n) < cfg.new_items
    first = _MPD_END - cfg.release_span * (_MPD_END - _MPD_START)
    release = np.where(late, first + rel_rng.random(n) * (_MPD_END - first), 0).astype(np.int64)
    return Catalogue(
        genre_names=genre_names,
        track_genre=track_genre,
        track_artist=track_artist,
        track_album=track_album,
        album_tracks=groups(track_album, n_albums),
        artist_tracks=groups(track_artist, n_artists),
        genre_tracks=genre_tracks,
        genre_cdf=genre_cdf,
        track_names=track_names,
        artist_names=artist_names,
        album_names=album_names,
        duration_ms=duration,
        release=release,
    )


@dataclass
class PlaylistBatch:
    """Playlists pid0..pid0+k-1: tracks of playlist i are tracks[offsets[i]:offsets[i+1]]."""

    pids: np.ndarray  # int64 [k]
    names: list[str]
    modified_at: np.ndarray  # int64 [k]
    genres: list[list[str]]
    moods: list[str]
    offsets: np.ndarray  # int64 [k+1]
    tracks: np.ndarray  # int32 [offsets[-1]]
    ts: np.ndarray | None = None  # int64 per event (new_items > 0), else every event at modified_at


def iter_playlists(
    cfg: SyntheticConfig, cat: Catalogue | None = None, batch: int = SLICE_SIZE
) -> Iterator[PlaylistBatch]:
    """Yield the corpus in batches. Batch b depends only on (seed, b), so output is reproducible."""
    cat = cat or make_catalogue(cfg)
    mu = _lognormal_mu(cfg)
    # Python lists: the per-step loop below indexes them one element at a time.
    track_album = cat.track_album.tolist() + [-1]
    track_artist = cat.track_artist.tolist()
    artist_tracks = [a.tolist() for a in cat.artist_tracks]
    genre_weights = np.array([[1.0, 0.0, 0.0], [0.75, 0.25, 0.0], [0.65, 0.25, 0.1]])
    for b, pid0 in enumerate(range(0, cfg.n_playlists, batch)):
        k = min(batch, cfg.n_playlists - pid0)
        rng = np.random.default_rng([cfg.seed, 2, b])
        lengths = np.clip(np.round(rng.lognormal(mu, cfg.length_sigma, size=k)), cfg.min_length, cfg.max_length)
        lengths = np.minimum(lengths, cat.n_items).astype(np.int64)
        n_genres = np.minimum(rng.choice([1, 2, 3], size=k, p=[0.5, 0.35, 0.15]), cfg.n_genres)
        gs = np.argsort(rng.random((k, cfg.n_genres)), axis=1)[:, :3]  # distinct genres per playlist
        if gs.shape[1] < 3:
            gs = np.pad(gs, ((0, 0), (0, 3 - gs.shape[1])), mode="edge")
        moods = rng.integers(0, len(MOODS), size=k)
        styles = rng.integers(0, 4, size=k)
        modified = np.sort(rng.integers(_MPD_START, _MPD_END, size=k)) // 86400 * 86400
        # Vectorised draws for every step of every playlist (a few spare steps for skipped repeats).
        extra = lengths + lengths // 2 + 8
        starts = np.concatenate([[0], np.cumsum(extra)])
        owner = np.repeat(np.arange(k), extra)
        comp = (rng.random(len(owner))[:, None] > np.cumsum(genre_weights[n_genres - 1], axis=1)[owner]).sum(1)
        genre = gs[owner, np.minimum(comp, 2)]
        fresh = np.empty(len(owner), dtype=np.int64)
        r = rng.random(len(owner))
        for g in range(cfg.n_genres):
            mask = genre == g
            pool, cdf = cat.genre_tracks[g], cat.genre_cdf[g]
            if not mask.any():
                continue
            if len(pool) == 0:
                fresh[mask] = (r[mask] * cat.n_items).astype(np.int64)
            else:
                fresh[mask] = pool[np.searchsorted(cdf, r[mask], side="right").clip(0, len(pool) - 1)]
        fresh_l, step_l, pick_l = fresh.tolist(), rng.random(len(owner)).tolist(), rng.random(len(owner)).tolist()
        p_album, p_both = cfg.p_album, cfg.p_album + cfg.p_artist
        out: list[int] = []
        offsets = [0]
        begin = None
        if cfg.new_items > 0:  # event times: the playlist's events spread over [begin, modified]
            begin = _MPD_START + (rng.random(k) * (modified - _MPD_START)).astype(np.int64)
            release = cat.release.tolist()
        for i in range(k):
            length, seen, prev, n0 = int(lengths[i]), set(), -1, len(out)
            if begin is not None:
                b0, step_t = int(begin[i]), (int(modified[i]) - int(begin[i])) / max(1, length - 1)
            for j in range(int(starts[i]), int(starts[i + 1])):
                if len(out) - n0 == length:
                    break
                t = -1
                if prev >= 0:
                    u = step_l[j]
                    if u < p_album:
                        if track_album[prev + 1] == track_album[prev]:  # albums are contiguous ranges
                            t = prev + 1
                    elif u < p_both:
                        mine = artist_tracks[track_artist[prev]]
                        t = mine[int(pick_l[j] * len(mine))]
                if begin is not None:  # a track not yet released is neither continued nor drawn
                    now = b0 + step_t * (len(out) - n0)
                    if t >= 0 and release[t] > now:
                        t = -1
                if t < 0 or t in seen:
                    t = fresh_l[j]
                    if t in seen or (begin is not None and release[t] > now):
                        continue
                seen.add(t)
                out.append(t)
                prev = t
            offsets.append(len(out))
        names, genres = [], []
        for i in range(k):
            mood, genre_name = MOODS[moods[i]], cat.genre_names[gs[i, 0]]
            names.append(
                [mood.title(), f"{mood} {genre_name}", f"{genre_name.title()} {mood.title()} Mix", f"{mood} vibes"][
                    styles[i]
                ]
            )
            genres.append([cat.genre_names[g] for g in gs[i, : n_genres[i]]])
        offsets_a = np.asarray(offsets, dtype=np.int64)
        ts = None
        if begin is not None:
            n_ev = np.diff(offsets_a)
            pos = np.arange(offsets_a[-1]) - np.repeat(offsets_a[:-1], n_ev)
            span = (modified - begin) / np.maximum(1, lengths - 1)
            ts = (np.repeat(begin, n_ev) + np.repeat(span, n_ev) * pos).astype(np.int64)
        yield PlaylistBatch(
            pids=np.arange(pid0, pid0 + k, dtype=np.int64),
            names=names,
            modified_at=modified.astype(np.int64),
            genres=genres,
            moods=[MOODS[m] for m in moods],
            offsets=offsets_a,
            tracks=np.asarray(out, dtype=np.int32),
            ts=ts,
        )


def _lognormal_mu(cfg: SyntheticConfig) -> float:
    """The log-mean whose clipped log-normal lengths average `mean_length` (bisection on a fixed sample)."""
    z = np.random.default_rng(12345).standard_normal(20_000)
    lo, hi = 0.0, np.log(cfg.max_length) + 3 * cfg.length_sigma
    for _ in range(40):
        mid = (lo + hi) / 2
        mean = np.clip(np.round(np.exp(mid + cfg.length_sigma * z)), cfg.min_length, cfg.max_length).mean()
        lo, hi = (mid, hi) if mean < cfg.mean_length else (lo, mid)
    return (lo + hi) / 2


# ---------------------------------------------------------------------------------------------
# as a store source


class SyntheticSource:
    """Yields the synthetic corpus as store chunks (no files involved)."""

    name = "synthetic"

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = config or SyntheticConfig()

    def chunks(self) -> Iterator[Chunk]:
        cat = make_catalogue(self.config)
        uris = np.array([cat.track_uri(t) for t in range(cat.n_items)], dtype=object)
        emitted = np.zeros(cat.n_items, dtype=bool)
        for pb in iter_playlists(self.config, cat):
            lengths = np.diff(pb.offsets)
            seq_keys = np.array([str(p) for p in pb.pids], dtype=object)
            positions = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]) if len(pb.tracks) else []
            columns = {
                "seq_key": pa.array(np.repeat(seq_keys, lengths), pa.string()),
                "item_key": pa.array(uris[pb.tracks], pa.string()),
                "position": pa.array(positions, pa.int32()),
                "ts": pa.array(np.repeat(pb.modified_at, lengths) if pb.ts is None else pb.ts, pa.int64()),
            }
            if self.config.feedback:
                columns |= event_feedback(self.config, cat, pb)
            events = pa.table(columns)
            sequences = pa.table(
                {
                    "seq_key": pa.array(seq_keys, pa.string()),
                    "name": pa.array(pb.names, pa.string()),
                    "modified_at": pa.array(pb.modified_at, pa.int64()),
                    "meta": pa.array(
                        [json.dumps({"genres": g, "mood": m}) for g, m in zip(pb.genres, pb.moods, strict=True)],
                        pa.string(),
                    ),
                    "origin": pa.array([f"synthetic playlist {p}" for p in pb.pids], pa.string()),
                }
            )
            new = np.unique(pb.tracks[~emitted[pb.tracks]])
            emitted[new] = True
            yield Chunk(events=events, sequences=sequences, items=_items_table(cat, new))

    def files(self) -> list[SourceFile]:
        return []

    def params(self) -> dict[str, object]:
        return self.config.model_dump()


PLATFORMS = ("mobile", "desktop", "tv")


def event_feedback(cfg: SyntheticConfig, cat: Catalogue, pb: PlaylistBatch) -> dict[str, pa.Array]:
    """fb_listened, fb_skip, ctx_platform, ctx_hour of a batch's events (see the module docstring);
    drawn from their own generator, so the tracks do not depend on them."""
    rng = np.random.default_rng([cfg.seed, 3, int(pb.pids[0]) if len(pb.pids) else 0])
    energy = np.random.default_rng([cfg.seed, 4]).random(cat.n_items)
    lengths = np.diff(pb.offsets)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    tracks = pb.tracks.astype(np.int64)
    dominant = np.array([cat.genre_names.index(g[0]) for g in pb.genres], dtype=np.int64)
    playlist_energy = rng.random(len(lengths))
    genre = cat.track_genre[tracks]
    fit = 0.5 * (genre == dominant[owner]) + 0.5 * (1.0 - np.abs(energy[tracks] - playlist_energy[owner]))
    listened = np.clip(fit + rng.normal(0.0, 0.15, len(tracks)), 0.0, 1.0)
    skip = (listened < 0.35).astype(np.float64)
    n = len(tracks)
    platform = np.where(rng.random(n) < 0.8, genre % 3, rng.integers(0, 3, n))
    block = cat.track_artist[tracks] % 4
    hour = np.where(rng.random(n) < 0.8, 6 * block + rng.integers(0, 6, n), rng.integers(0, 24, n))
    return {
        "fb_listened": pa.array(listened, pa.float64()),
        "fb_skip": pa.array(skip, pa.float64()),
        "ctx_platform": pa.array(np.array(PLATFORMS, dtype=object)[platform], pa.string()),
        "ctx_hour": pa.array(hour.astype(str).astype(object), pa.string()),
    }


def _items_table(cat: Catalogue, tracks: np.ndarray) -> pa.Table:
    ts = tracks.tolist()
    return pa.table(
        {
            "item_key": pa.array([cat.track_uri(t) for t in ts], pa.string()),
            "name": pa.array([cat.track_names[t] for t in ts], pa.string()),
            "creator": pa.array([cat.artist_names[cat.track_artist[t]] for t in ts], pa.string()),
            "creator_key": pa.array([f"synthetic:artist:{cat.track_artist[t]}" for t in ts], pa.string()),
            "album": pa.array([cat.album_names[cat.track_album[t]] for t in ts], pa.string()),
            "album_key": pa.array([f"synthetic:album:{cat.track_album[t]}" for t in ts], pa.string()),
            "meta": pa.array(
                [f'{{"genre": "{cat.genre_names[cat.track_genre[t]]}", "duration_ms": {cat.duration_ms[t]}}}' for t in ts],
                pa.string(),
            ),
        }
    )


# ---------------------------------------------------------------------------------------------
# as MPD slice files


def write_mpd_slices(
    config: SyntheticConfig,
    folder: str | Path,
    *,
    md5sums: bool = True,
    indent: bool = True,
) -> list[Path]:
    """Write the corpus as MPD slice files `mpd.slice.A-B.json` (1,000 playlists each) into `folder`.

    With `md5sums`, also writes an `md5sums` file (`<md5>  <file name>` lines, as the MPD ships).
    `indent` formats like the real files (2-space indented); off, files are a third smaller.
    Returns the slice paths in order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cat = make_catalogue(config)
    artist_of, album_of, duration = cat.track_artist.tolist(), cat.track_album.tolist(), cat.duration_ms.tolist()
    track_json = [
        {
            "artist_name": cat.artist_names[artist_of[t]],
            "track_uri": f"synthetic:track:{t}",
            "artist_uri": f"synthetic:artist:{artist_of[t]}",
            "track_name": cat.track_names[t],
            "album_uri": f"synthetic:album:{album_of[t]}",
            "duration_ms": duration[t],
            "album_name": cat.album_names[album_of[t]],
        }
        for t in range(cat.n_items)
    ]
    paths: list[Path] = []
    sums: list[str] = []
    for pb in iter_playlists(config, cat):
        playlists = []
        for i, pid in enumerate(pb.pids.tolist()):
            tracks = pb.tracks[pb.offsets[i] : pb.offsets[i + 1]].tolist()
            entries = [{"pos": pos, **track_json[t]} for pos, t in enumerate(tracks)]
            playlists.append(
                {
                    "name": pb.names[i],
                    "collaborative": "false",
                    "pid": pid,
                    "modified_at": int(pb.modified_at[i]),
                    "num_tracks": len(tracks),
                    "num_albums": len({album_of[t] for t in tracks}),
                    "num_followers": 1,
                    "tracks": entries,
                    "num_edits": 1,
                    "duration_ms": sum(duration[t] for t in tracks),
                    "num_artists": len({artist_of[t] for t in tracks}),
                }
            )
        first, last = int(pb.pids[0]), int(pb.pids[0]) + SLICE_SIZE - 1
        doc = {
            "info": {"generated_on": "synthetic", "slice": f"{first}-{last}", "version": "v1"},
            "playlists": playlists,
        }
        data = msgspec.json.encode(doc)
        if indent:
            data = msgspec.json.format(data, indent=2)
        path = folder / f"mpd.slice.{first}-{last}.json"
        atomic_write_bytes(path, data)
        paths.append(path)
        sums.append(f"{hashlib.md5(data).hexdigest()}  {path.name}\n")
    if md5sums:
        atomic_write_text(folder / "md5sums", "".join(sums))
    return paths


# ---------------------------------------------------------------------------------------------
# as weekly batches (the operations benchmark: retraining on drifting data)

WEEK = 7 * 86400
WEEKS_START = 1_767_571_200  # 2026-01-05 00:00 UTC, a Monday


def popularity_map(cat: Catalogue, kind: str) -> np.ndarray:
    """A track -> track map inside each genre by popularity rank: 'reverse' sends rank r to rank
    n - 1 - r (the head becomes the tail), 'rotate' sends rank r to rank (r + n // 3) mod n."""
    out = np.arange(cat.n_items, dtype=np.int64)
    for tracks in cat.genre_tracks:
        n = len(tracks)
        if n == 0:
            continue
        ranks = np.arange(n)
        target = n - 1 - ranks if kind == "reverse" else (ranks + n // 3) % n
        out[tracks] = tracks[target]
    return out


def weekly_batches(
    cfg: SyntheticConfig,
    n_weeks: int = 5,
    *,
    shift: float = 0.05,
    new_items: float = 0.02,
    reverse_week: int | None = None,
    start: int = WEEKS_START,
) -> Iterator[pa.Table]:
    """The corpus cut into `n_weeks` weekly batches (tables of user, item, ts), for retraining.

    Each playlist is a user whose tracks are split in time order into n_weeks + 1 contiguous parts;
    the first is left out (the user's past, before the window) and week w holds every user's part w + 1, with times spread over that week (from `start`), so a user's
    earlier weeks are the history of the later ones. Drift, from week 1 on:
      popularity shift  a share min(1, shift * w) of week w's events is moved to another track of
                        the same genre (popularity rank r -> r + n/3): popular tracks lose plays,
                        others gain them, gradually
      new items         a share `new_items` of week w's events goes to tracks first seen that week
                        (ids n_items + ..., 2% of the catalogue per week)
      reverse_week      every event of that week is moved to the track of reversed popularity rank
                        in its genre (a deliberate drift injection)
    """
    cat = make_catalogue(cfg)
    rotate, reverse = popularity_map(cat, "rotate"), popularity_map(cat, "reverse")
    users: list[np.ndarray] = []
    for pb in iter_playlists(cfg, cat):
        users += [pb.tracks[pb.offsets[i] : pb.offsets[i + 1]].astype(np.int64) for i in range(len(pb.pids))]
    per_week = max(1, int(round(cfg.n_items * 0.02)))
    for w in range(n_weeks):
        rng = np.random.default_rng([cfg.seed, 7, w])
        keys: list[str] = []
        parts: list[np.ndarray] = []
        for u, tracks in enumerate(users):
            # n_weeks + 1 parts: the first is before the window (the user's past), so week 0 is
            # not made of playlist starts (drawn differently: no album or artist to follow).
            a, b = len(tracks) * (w + 1) // (n_weeks + 1), len(tracks) * (w + 2) // (n_weeks + 1)
            if b > a:
                parts.append(tracks[a:b])
                keys += [f"user{u}"] * (b - a)
        items = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if w > 0:
            moved = rng.random(len(items)) < min(1.0, shift * w)
            items = np.where(moved, rotate[items], items)
            fresh = rng.random(len(items)) < new_items
            first_new = cat.n_items + (w - 1) * per_week
            items = np.where(fresh, first_new + rng.integers(0, per_week, len(items)), items)
        if reverse_week is not None and w == reverse_week:
            known = items < cat.n_items
            items = np.where(known, reverse[np.minimum(items, cat.n_items - 1)], items)
        # Times: random within the week, increasing along each user's part.
        uidx = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
        ts = start + w * WEEK + rng.integers(0, WEEK, len(items))
        ts_sorted = ts[np.lexsort((ts, uidx))]  # events are grouped by user already
        yield pa.table(
            {
                "user": pa.array(keys, pa.string()),
                "item": pa.array([f"synthetic:track:{t}" for t in items.tolist()], pa.string()),
                "ts": pa.array(ts_sorted, pa.int64()),
            }
        )


def write_weekly_batches(cfg: SyntheticConfig, folder: str | Path, n_weeks: int = 5, **options: object) -> list[Path]:
    """Write `weekly_batches` as CSV files week-00.csv, week-01.csv, ... (columns user, item, ts)."""
    import pyarrow.csv as pacsv

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for w, table in enumerate(weekly_batches(cfg, n_weeks, **options)):  # type: ignore[arg-type]
        path = folder / f"week-{w:02d}.csv"
        with atomic_path(path) as tmp:
            pacsv.write_csv(table, tmp)
        paths.append(path)
    return paths


__all__ = [
    "SyntheticConfig",
    "SyntheticSource",
    "iter_playlists",
    "make_catalogue",
    "weekly_batches",
    "write_mpd_slices",
    "write_weekly_batches",
]
