"""Spotify Million Playlist Dataset: the official zip, a folder of `mpd.slice.*.json`, or one slice.

Slices are streamed one at a time (a slice is ~33 MB of JSON, 1,000 playlists), so memory stays
bounded whatever the input size. Each slice is decoded by msgspec straight into typed structs,
which checks every field's presence and type in C while parsing (faster than json/orjson followed
by Python checks). With `workers` > 0, slices are parsed in that many spawned processes while the
main process feeds the store; results come back in slice order, at most `2 * workers` in flight.
`workers=None` (auto) uses min(2, usable cores) processes for 4 or more slices, else parses inline.
The processes are spawned (a forked copy of a process running JAX or DuckDB threads can deadlock),
so a script that builds from the MPD must guard its entry point with `if __name__ == "__main__":`
(the `segue` command and pytest do).

Records: events (seq_key = pid, item_key = track_uri, position = pos, ts = modified_at), sequences
(pid, name, modified_at, meta: collaborative/num_followers/num_edits/description), items
(track_uri, track_name, artist_name/artist_uri, album_name/album_uri, meta: duration_ms). Each
process emits an item's metadata only at its first occurrence there (the store keeps the first).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import zipfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa

from segue.data.sources.base import Chunk, SourceFile
from segue.data.sources.common import HashedFile, error_state, read_md5sums, rebuild_error
from segue.errors import InputError


class Track(msgspec.Struct, gc=False):
    pos: int
    track_uri: str
    # Kept as raw JSON and decoded only for tracks not sent before (most tracks repeat).
    track_name: msgspec.Raw
    artist_uri: msgspec.Raw
    artist_name: msgspec.Raw
    album_uri: msgspec.Raw
    album_name: msgspec.Raw
    duration_ms: int | None = None


class Playlist(msgspec.Struct, gc=False):
    pid: int
    name: str
    modified_at: int
    tracks: list[Track]
    collaborative: str | bool | None = None
    num_followers: int | None = None
    num_edits: int | None = None
    description: str | None = None


class Slice(msgspec.Struct, gc=False):
    playlists: list[Playlist]



SUMMARY = "the Spotify Million Playlist Dataset: the official zip, a folder of mpd.slice.*.json, or one slice."
EXAMPLE = "segue data build mpd spotify_million_playlist_dataset.zip --option workers=2"
OPTIONS: dict[str, str] = {
    "workers": "processes that parse slices in parallel (0: parse in the main process; default: 2 for 4+ slices)",
    "verify_md5": "check each slice against the md5sums file when there is one (true/false, default true)",
}
OPTION_MIN: dict[str, int] = {"workers": 0}  # checked by open_source; 0 parses in the main process
_DECODER = msgspec.json.Decoder(Slice)
_SLICE_RE = re.compile(r"mpd\.slice\.(\d+)-(\d+)\.json$")


@dataclass(frozen=True)
class SliceRef:
    """Where one slice lives: a file, or a member of a zip archive."""

    path: Path  # the file, or the zip archive
    member: str | None = None  # the member name inside the zip
    md5: str | None = None  # expected md5 (from md5sums), if known

    @property
    def label(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)

    @property
    def name(self) -> str:
        return Path(self.member).name if self.member else self.path.name


class MPDSource:
    """The MPD as a store source. `path`: the zip, a folder (slices in it or in `data/`), or a slice."""

    name = "mpd"

    def __init__(self, path: str | Path, *, workers: int | None = None, verify_md5: bool = True) -> None:
        self.path = Path(path)
        self.workers = workers
        self.verify_md5 = verify_md5
        self._files: list[SourceFile] = []
        self.refs = discover(self.path, verify_md5=verify_md5)

    def chunks(self) -> Iterator[Chunk]:
        self._files = []
        workers = self.workers
        if workers is None:  # auto: parallel only where it pays (process start-up costs ~1 s)
            workers = min(2, _usable_cores()) if len(self.refs) >= 4 else 0
        if workers > 0:
            results = _parse_parallel(self.refs, workers)
        else:
            recent = RecentItems()  # this build's own: a second build must send all metadata again
            results = (_parse_ref(r, recent) for r in self.refs)
        try:
            for result in results:
                if isinstance(result, dict):
                    raise rebuild_error(result)
                chunk, source_file = result
                self._files.append(source_file)
                yield chunk
        finally:
            results.close()  # stop the worker processes now, also when the consumer failed

    def files(self) -> list[SourceFile]:
        return list(self._files)

    def params(self) -> dict[str, object]:
        return {"path": str(self.path), "slices": len(self.refs), "verify_md5": self.verify_md5}


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset / container CPU sets
    except AttributeError:
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# finding the slices


def discover(path: Path, *, verify_md5: bool = True) -> list[SliceRef]:
    """List the slices under `path` in pid order, with their expected md5 where md5sums has one."""
    if not path.exists():
        raise InputError("MPD input not found", path=path, expected="the MPD zip, a folder of mpd.slice.*.json, or a slice")
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            sums: dict[str, str] = {}
            md5_members = [n for n in names if Path(n).name == "md5sums"]
            if md5_members and verify_md5:
                text = zf.read(md5_members[0]).decode("utf-8", errors="replace")
                sums = read_md5sums(text, f"{path}!{md5_members[0]}")
        slices = [n for n in names if _SLICE_RE.search(Path(n).name) and not n.endswith("/")]
        refs = [SliceRef(path, n, sums.get(Path(n).name)) for n in slices]
    elif path.is_dir():
        folder = path / "data" if not list(path.glob("mpd.slice.*.json")) and (path / "data").is_dir() else path
        sums = {}
        if verify_md5:
            for candidate in (folder / "md5sums", folder.parent / "md5sums"):
                if candidate.is_file():
                    sums = read_md5sums(candidate.read_text(encoding="utf-8", errors="replace"), str(candidate))
                    break
        refs = [SliceRef(p, None, sums.get(p.name)) for p in folder.iterdir() if _SLICE_RE.search(p.name)]
    else:
        refs = [SliceRef(path)]
    if not refs:
        raise InputError("no MPD slices found", path=path, expected="files named mpd.slice.<first>-<last>.json")
    if verify_md5 and any(r.md5 for r in refs):
        # md5sums present: a slice it does not list cannot be verified, which is worth refusing.
        unlisted = [r for r in refs if r.md5 is None]
        if unlisted:
            raise InputError(
                "slice is not listed in md5sums", path=unlisted[0].label, expected="every slice to have a checksum"
            )

    def order(r: SliceRef) -> tuple[int, str]:
        m = _SLICE_RE.search(r.name)
        return (int(m.group(1)) if m else 0, r.name)

    return sorted(refs, key=order)


# ---------------------------------------------------------------------------------------------
# parsing one slice (in a worker process or inline)

class RecentItems:
    """Which track URIs this process has already emitted metadata for, in bounded memory.

    A direct-mapped table of 64-bit string hashes (2**22 slots, 32 MB): a URI whose slot holds its
    hash was sent before. A collision evicts, so a URI may be sent again (the store keeps the first
    row per item); a different URI with the same 64-bit hash in the same slot (odds ~2**-64 per
    pair) would lose its metadata. A set of all URIs would grow to ~250 MB per process on the MPD.
    """

    def __init__(self, bits: int = 22) -> None:
        self.table = np.zeros(1 << bits, dtype=np.int64)
        self.mask = (1 << bits) - 1

    def first_unseen(self, keys: list[str]) -> np.ndarray:
        """Indices (ascending) of the first occurrence of each key not sent before; marks them sent."""
        h = np.fromiter(map(hash, keys), dtype=np.int64, count=len(keys))
        h[h == 0] = 1  # 0 marks an empty slot
        uniq, first = np.unique(h, return_index=True)
        slots = uniq & self.mask
        new = self.table[slots] != uniq
        self.table[slots[new]] = uniq[new]
        return np.sort(first[new])


_recent: RecentItems | None = None  # per worker process (each build starts fresh workers)


def _parse_ref(ref: SliceRef, recent: RecentItems | None = None) -> tuple[Chunk, SourceFile] | dict[str, Any]:
    """Parse one slice. Returns (chunk, file record), or an InputError's state (picklable)."""
    global _recent
    if recent is None:
        recent = _recent = _recent or RecentItems()
    try:
        return parse_slice(_read(ref), ref, recent)
    except InputError as e:
        return error_state(e)


def _read(ref: SliceRef) -> bytes:
    try:
        if ref.member is None:
            return ref.path.read_bytes()
        with zipfile.ZipFile(ref.path) as zf:
            return zf.read(ref.member)
    except (OSError, zipfile.BadZipFile) as e:
        raise InputError(f"cannot read the file ({e})", path=ref.label) from None


def _check_tracks(playlists: list[Any], lengths: list[int], item_keys: list[str], positions: list[int], label: str) -> None:
    """An empty track_uri (it became an item with id ''), and a negative or repeated pos inside a
    playlist (its tracks were ordered by arrival without a word), named by playlist and track."""

    def where(flat: int) -> str:
        i = int(np.searchsorted(np.cumsum(lengths), flat, side="right"))
        return f"playlist index {i} (pid {playlists[i].pid}), track {flat - (sum(lengths[:i]))}"

    for flat, key in enumerate(item_keys):
        if not key.strip():
            raise InputError("an empty track_uri", path=label, record=where(flat), field="track_uri", expected="a track URI")
    pos = np.asarray(positions, dtype=np.int64)
    if len(pos) and pos.min() < 0:
        flat = int(np.argmax(pos < 0))
        raise InputError(f"pos {pos[flat]}", path=label, record=where(flat), field="pos", expected="a position of 0 or more")
    owner = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    key = owner * (int(pos.max()) + 1 if len(pos) else 1) + pos
    order = np.argsort(key, kind="stable")
    repeated = np.flatnonzero(key[order][1:] == key[order][:-1])
    if len(repeated):
        flat = int(order[repeated[0] + 1])
        raise InputError(
            f"pos {pos[flat]} again in this playlist", path=label, record=where(flat), field="pos", expected="each pos once per playlist"
        )


def parse_slice(data: bytes, ref: SliceRef, recent: RecentItems | None = None) -> tuple[Chunk, HashedFile]:
    """Decode and check one slice and build its chunk; items only for tracks `recent` has not sent."""
    label = ref.label
    if not data.strip():
        raise InputError("the file is empty", path=label, expected="an MPD slice JSON object with 'playlists'")
    verified = None
    if ref.md5 is not None:
        actual = hashlib.md5(data).hexdigest()
        if actual != ref.md5:
            raise InputError(
                f"md5 checksum mismatch: the file has {actual}, md5sums says {ref.md5}",
                path=label,
                expected="an intact file (re-download it)",
            )
        verified = True
    try:
        doc = _DECODER.decode(data)
    except msgspec.ValidationError as e:
        raise _validation_error(e, data, label) from None
    except msgspec.DecodeError as e:
        raise _syntax_error(e, data, label) from None
    playlists = doc.playlists
    if not playlists:
        raise InputError("the slice has no playlists", path=label, field="playlists", expected="a non-empty list")

    pids = [p.pid for p in playlists]
    if len(set(pids)) != len(pids):
        first: dict[int, int] = {}
        for i, pid in enumerate(pids):
            if pid in first:
                raise InputError(
                    f"duplicate pid {pid} (also playlist index {first[pid]})",
                    path=label,
                    record=f"playlist index {i}",
                    field="pid",
                    expected="each pid once",
                )
            first[pid] = i

    seq_keys = [str(pid) for pid in pids]
    lengths = [len(p.tracks) for p in playlists]
    tracks = [t for p in playlists for t in p.tracks]
    item_keys = [t.track_uri for t in tracks]
    _check_tracks(playlists, lengths, item_keys, [t.pos for t in tracks], label)
    if recent is None:
        recent = RecentItems(bits=max(10, (2 * len(item_keys)).bit_length()))
    new_tracks = [tracks[i] for i in recent.first_unseen(item_keys).tolist()]

    seq_col = pa.array(seq_keys, pa.string())
    repeat = pa.array(np.repeat(np.arange(len(lengths), dtype=np.int32), lengths))
    events = pa.table(
        {
            "seq_key": seq_col.take(repeat),
            "item_key": pa.array(item_keys, pa.string()),
            "position": pa.array([t.pos for t in tracks], pa.int32()),
            "ts": pa.array([p.modified_at for p in playlists], pa.int64()).take(repeat),
        }
    )
    sequences = pa.table(
        {
            "seq_key": seq_col,
            "name": pa.array([p.name for p in playlists], pa.string()),
            "modified_at": pa.array([p.modified_at for p in playlists], pa.int64()),
            "meta": pa.array([_playlist_meta(p) for p in playlists], pa.string()),
            "origin": pa.array([f"{label} playlist pid {p.pid} (index {i})" for i, p in enumerate(playlists)], pa.string()),
        }
    )
    items = _items_table(new_tracks, data, label)
    source_file = HashedFile(
        path=ref.path,
        md5_verified=verified,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        label=label if ref.member else None,
    )
    return Chunk(events=events, sequences=sequences, items=items), source_file


_TEXT_FIELDS = (
    ("name", "track_name"),
    ("creator", "artist_name"),
    ("creator_key", "artist_uri"),
    ("album", "album_name"),
    ("album_key", "album_uri"),
)
_STR_LIST = msgspec.json.Decoder(list[str])


def _items_table(new_tracks: list[Track], data: bytes, label: str) -> pa.Table:
    columns = {"item_key": pa.array([t.track_uri for t in new_tracks], pa.string())}
    for column, field in _TEXT_FIELDS:
        # One decode call per column: join the raw JSON values into a JSON array of strings.
        raw = b"[" + b",".join(bytes(getattr(t, field)) for t in new_tracks) + b"]"
        try:
            values = _STR_LIST.decode(raw)
        except msgspec.ValidationError:
            bad = next(t for t in new_tracks if not bytes(getattr(t, field)).startswith(b'"'))
            raise InputError(
                f"wrong type: got {bytes(getattr(bad, field))[:40].decode(errors='replace')}",
                path=label,
                record=f"track {bad.track_uri}",
                field=field,
                expected="a string",
            ) from None
        columns[column] = pa.array(values, pa.string())
    columns["meta"] = pa.array(
        [None if t.duration_ms is None else f'{{"duration_ms": {t.duration_ms}}}' for t in new_tracks], pa.string()
    )
    return pa.table(columns)


_META_FIELDS = ("collaborative", "num_followers", "num_edits", "description")


def _playlist_meta(p: Playlist) -> str | None:
    meta = {f: getattr(p, f) for f in _META_FIELDS if getattr(p, f) is not None}
    return msgspec.json.encode(meta).decode() if meta else None


_PATH_RE = re.compile(r"\$\.playlists\[(\d+)\](?:\.tracks\[(\d+)\])?(?:\.(\w+))?")


def _validation_error(e: msgspec.ValidationError, data: bytes, label: str) -> InputError:
    """Turn msgspec's `... - at $.playlists[7].tracks[3].pos` into file / playlist / field words."""
    text = str(e)
    msg, _, at = text.partition(" - at `")
    at = at.rstrip("`")
    if not at:  # the top level itself: not a slice at all (a ratings file gave "Expected `object`, got `int`")
        got = re.match(r"Expected `[^`]+`, got `([^`]+)`", msg)
        found = f"its top level is a JSON {got.group(1)}" if got else "its top-level object has no 'playlists'"
        return InputError(
            f"not an MPD slice: {found}", path=label, expected="a JSON object with 'playlists', as in mpd.slice.<first>-<last>.json"
        )
    field = None
    missing = re.match(r"Object missing required field `(\w+)`", msg)
    if missing:
        field = missing.group(1)
        msg = "missing field"
    m = _PATH_RE.match(at)
    if not m:
        return InputError(msg, path=label, record=at or None, field=field or (at.rsplit(".", 1)[-1] or None))
    index, track, leaf = int(m.group(1)), m.group(2), m.group(3)
    field = field or leaf or ("tracks" if track is None and "tracks" in at else None)
    pid = _pid_at(data, index)
    record = f"playlist index {index}" + (f" (pid {pid})" if pid is not None else "")
    if track is not None:
        record += f", track {track}"
    expected = None
    want = re.match(r"Expected `([^`]+)`, got `([^`]+)`", msg)
    if want:
        expected = want.group(1)
        msg = f"wrong type: got {want.group(2)}"
    elif missing:
        expected = f"a '{field}' value"
    return InputError(msg, path=label, record=record, field=field, expected=expected)


def _pid_at(data: bytes, index: int) -> object | None:
    # Only on the error path: a lenient parse to name the playlist by its pid.
    try:
        p = msgspec.json.decode(data)["playlists"][index]
        return p.get("pid") if isinstance(p, dict) else None
    except Exception:
        return None


def _syntax_error(e: msgspec.DecodeError, data: bytes, label: str) -> InputError:
    text = str(e)
    m = re.search(r"\(byte (\d+)\)", text)
    if m is None:
        line = data.count(b"\n") + 1 if "truncated" in text else None
        offset = len(data)
    else:
        offset = int(m.group(1))
        line = data.count(b"\n", 0, offset) + 1
    pids = re.findall(rb'"pid"\s*:\s*(-?\d+)', data[:offset])
    record = f"in or after playlist pid {pids[-1].decode()}" if pids else None
    detail = text.removeprefix("JSON is malformed: ")
    return InputError(f"malformed JSON: {detail}", path=label, line=line, record=record, expected="valid JSON")


# ---------------------------------------------------------------------------------------------
# parallel parsing


def _parse_parallel(refs: list[SliceRef], workers: int) -> Iterator[tuple[Chunk, SourceFile] | dict[str, Any]]:
    # spawn: a forked child of a process with JAX or Arrow thread pools running can deadlock.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: deque[Future] = deque()
        todo = iter(refs)
        try:
            for ref in todo:
                pending.append(pool.submit(_parse_ref, ref))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                result = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(_parse_ref, nxt))
                yield result
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["MPDSource", "SliceRef", "discover", "parse_slice"]
