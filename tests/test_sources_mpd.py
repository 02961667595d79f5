"""MPD importer: real sample, synthetic slices (folder and zip, md5sums), bad input, parallel parse."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from segue.data.sources import open_source
from segue.data.sources.mpd import MPDSource
from segue.data.sources.synthetic import SyntheticConfig, write_mpd_slices
from segue.data.store import Store, build_store
from segue.errors import InputError

SMALL = SyntheticConfig(n_playlists=2500, n_items=800, mean_length=12, seed=3)


def leftovers(folder: Path, store_name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if store_name in p.name)


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mpd")
    write_mpd_slices(SMALL, folder)
    return folder


@pytest.mark.realdata
def test_real_sample_counts(shared_data: Path, tmp_path: Path) -> None:
    store = build_store(open_source("mpd", shared_data / "mpd-sample"), tmp_path / "s.duckdb")
    with Store.open(store) as s:
        c = s.counts()
        assert (c["sequences"], c["events"], c["items"]) == (100, 6100, 5220)
        first = s.con.execute("SELECT external_id, name, modified_at, length FROM sequences WHERE seq_id = 0").fetchone()
        assert first == ("0", "Throwbacks", 1493424000, 52)
        item = s.con.execute(
            "SELECT external_id, name, creator, creator_id, album, album_id, meta FROM items WHERE item_id = 0"
        ).fetchone()
        assert item[0] == "spotify:track:0UaMYEvWZi0ZqiDOoHU3YI"
        assert item[1:3] == ("Lose Control (feat. Ciara & Fat Man Scoop)", "Missy Elliott")
        assert item[3] == "spotify:artist:2wIVse2owClT7go1WT98tk"
        assert item[4:6] == ("The Cookbook", "spotify:album:6vV5UrXcfyQD1wu4Qo2I9K")
        assert json.loads(item[6]) == {"duration_ms": 226863}
        # positions are the file's `pos`, in order
        assert s.con.execute("SELECT max(position) FROM events WHERE seq_id = 0").fetchone()[0] == 51
        (md5,) = s.con.execute("SELECT md5_verified FROM source_files").fetchone()
        assert md5 is None  # the sample carries no md5sums


def test_folder_matches_generator(slices: Path, tmp_path: Path) -> None:
    store = build_store(MPDSource(slices, workers=0), tmp_path / "s.duckdb")
    from segue.data.sources.synthetic import iter_playlists

    batches = list(iter_playlists(SMALL))
    n_events = sum(len(b.tracks) for b in batches)
    with Store.open(store) as s:
        c = s.counts()
        assert c["sequences"] == SMALL.n_playlists and c["events"] == n_events
        assert s.con.execute("SELECT bool_and(md5_verified), count(*) FROM source_files").fetchone() == (True, 3)
        # playlist 1's tracks, in order
        b = batches[0]
        want = [f"synthetic:track:{t}" for t in b.tracks[b.offsets[1] : b.offsets[2]]]
        got = [r[0] for r in s.con.execute(
            "SELECT i.external_id FROM events e JOIN items i USING (item_id) JOIN sequences q USING (seq_id) "
            "WHERE q.external_id = '1' ORDER BY e.position"
        ).fetchall()]
        assert got == want


def test_parallel_equals_inline(slices: Path, tmp_path: Path) -> None:
    a = build_store(MPDSource(slices, workers=0), tmp_path / "a.duckdb")
    b = build_store(MPDSource(slices, workers=2), tmp_path / "b.duckdb")
    with Store.open(a) as sa, Store.open(b) as sb:
        assert sa.checksum == sb.checksum
        assert sa.con.execute("SELECT count(*) FROM items WHERE name IS NULL").fetchone()[0] == 0
        assert sb.con.execute("SELECT count(*) FROM items WHERE name IS NULL").fetchone()[0] == 0


def make_zip(slices: Path, target: Path, corrupt: bool = False) -> Path:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(slices / "md5sums", "md5sums")
        for p in sorted(slices.glob("mpd.slice.*.json")):
            data = p.read_bytes()
            if corrupt and p.name == "mpd.slice.1000-1999.json":
                data = data.replace(b'"num_followers": 1', b'"num_followers": 2', 1)
            zf.writestr(f"data/{p.name}", data)
    return target


def test_zip_with_md5sums(slices: Path, tmp_path: Path) -> None:
    z = make_zip(slices, tmp_path / "spotify_million_playlist_dataset.zip")
    a = build_store(MPDSource(z, workers=0), tmp_path / "z.duckdb")
    b = build_store(MPDSource(slices, workers=0), tmp_path / "f.duckdb")
    with Store.open(a) as sa, Store.open(b) as sb:
        assert sa.checksum == sb.checksum
        rows = sa.con.execute("SELECT path, md5_verified FROM source_files ORDER BY path").fetchall()
        assert len(rows) == 3 and all(v for _, v in rows)
        assert rows[0][0].endswith("spotify_million_playlist_dataset.zip!data/mpd.slice.0-999.json")


def test_zip_corrupt_md5_fails_and_leaves_nothing(slices: Path, tmp_path: Path) -> None:
    z = make_zip(slices, tmp_path / "mpd.zip", corrupt=True)
    target = tmp_path / "z.duckdb"
    with pytest.raises(InputError) as e:
        build_store(MPDSource(z, workers=0), target)
    assert "mpd.slice.1000-1999.json" in str(e.value) and "md5" in str(e.value)
    assert leftovers(tmp_path, "z.duckdb") == []


def test_md5_mismatch_in_folder(slices: Path, tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    for p in slices.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    sums = (folder / "md5sums").read_text().replace("0", "f", 1)
    (folder / "md5sums").write_text(sums)
    with pytest.raises(InputError, match=r"mpd\.slice\.0-999\.json.*md5 checksum mismatch"):
        build_store(MPDSource(folder, workers=0), tmp_path / "s.duckdb")
    # without verification the same input builds
    build_store(MPDSource(folder, workers=0, verify_md5=False), tmp_path / "s.duckdb")


def write_slice(folder: Path, name: str, playlists: list[dict] | str | bytes) -> Path:
    folder.mkdir(exist_ok=True)
    p = folder / name
    if isinstance(playlists, bytes):
        p.write_bytes(playlists)
    elif isinstance(playlists, str):
        p.write_text(playlists)
    else:
        p.write_text(json.dumps({"info": {}, "playlists": playlists}, indent=2))
    return p


def track(pos: int, n: int = 0, **over: object) -> dict:
    t = {
        "pos": pos,
        "artist_name": "A",
        "track_uri": f"spotify:track:{n}",
        "artist_uri": "spotify:artist:a",
        "track_name": f"T{n}",
        "album_uri": "spotify:album:b",
        "duration_ms": 1000,
        "album_name": "B",
    }
    t.update(over)
    return {k: v for k, v in t.items() if v is not None}


def playlist(number: int, n: int = 3, **over: object) -> dict:
    pid = number
    p = {"name": f"p{pid}", "pid": pid, "modified_at": 1500000000, "tracks": [track(i, pid * 10 + i) for i in range(n)]}
    p.update(over)
    return {k: v for k, v in p.items() if v is not None}


BAD_CASES = {
    "malformed": (b'{"playlists": [{"name": "x", "pid": 0,\n "modified_at": 1, "tracks": [}', [r":2", "malformed JSON", "pid 0"]),
    "empty": (b"", ["empty"]),
    "missing_pid": ([playlist(0), playlist(1, pid=None)], ["playlist index 1", "'pid'", "missing"]),
    "missing_track_uri": (
        [playlist(0, tracks=[track(0), track(1, 1, track_uri=None)])],
        ["playlist index 0 (pid 0), track 1", "'track_uri'"],
    ),
    "pos_wrong_type": (
        [playlist(0), playlist(7, tracks=[track(0), track("one", 1)])],
        ["playlist index 1 (pid 7), track 1", "'pos'", "int"],
    ),
    "modified_at_text": ([playlist(5, modified_at="yesterday")], ["pid 5", "'modified_at'", "int"]),
    "duplicate_pid": ([playlist(0), playlist(3), playlist(3)], ["playlist index 2", "duplicate pid 3", "index 1"]),
    "no_playlists": ([], ["no playlists"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_names_file_and_playlist(case: str, tmp_path: Path) -> None:
    content, expected = BAD_CASES[case]
    folder = tmp_path / "in"
    write_slice(folder, "mpd.slice.0-999.json", content)
    target = tmp_path / "s.duckdb"
    with pytest.raises(InputError) as e:
        build_store(MPDSource(folder, workers=0), target)
    msg = str(e.value)
    assert "mpd.slice.0-999.json" in msg
    for part in expected:
        assert part in msg, (part, msg)
    assert leftovers(tmp_path, "s.duckdb") == []


def test_duplicate_pid_across_slices_names_both(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_slice(folder, "mpd.slice.0-999.json", [playlist(0), playlist(1)])
    write_slice(folder, "mpd.slice.1000-1999.json", [playlist(2), playlist(1)])
    with pytest.raises(InputError) as e:
        build_store(MPDSource(folder, workers=0), tmp_path / "s.duckdb")
    msg = str(e.value)
    assert "duplicate sequence id '1'" in msg
    assert "mpd.slice.0-999.json playlist pid 1 (index 1)" in msg
    assert "mpd.slice.1000-1999.json playlist pid 1 (index 1)" in msg


def test_failed_rebuild_keeps_existing_store(slices: Path, tmp_path: Path) -> None:
    target = tmp_path / "s.duckdb"
    build_store(MPDSource(slices, workers=0), target)
    before = hashlib.sha256(target.read_bytes()).hexdigest()
    bad = tmp_path / "bad"
    write_slice(bad, "mpd.slice.0-999.json", b'{"playlists": [')
    for workers in (0, 2):
        with pytest.raises(InputError, match="malformed JSON"):
            build_store(MPDSource(bad, workers=workers), target)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == before
    assert leftovers(tmp_path, "s.duckdb") == ["s.duckdb"]


def test_worker_error_is_reported_with_attributes(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    for k in range(4):
        pls = [playlist(k * 10 + j) for j in range(2)]
        if k == 2:
            pls[1]["tracks"][0]["pos"] = "x"
        write_slice(folder, f"mpd.slice.{k * 1000}-{k * 1000 + 999}.json", pls)
    with pytest.raises(InputError) as e:
        build_store(MPDSource(folder, workers=2), tmp_path / "s.duckdb")
    assert e.value.path is not None and e.value.path.endswith("mpd.slice.2000-2999.json")
    assert e.value.field == "pos" and "pid 21" in str(e.value)
    assert leftovers(tmp_path, "s.duckdb") == []


def test_unlisted_slice_with_md5sums_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_slice(folder, "mpd.slice.0-999.json", [playlist(0)])
    write_slice(folder, "mpd.slice.1000-1999.json", [playlist(1)])
    digest = hashlib.md5((folder / "mpd.slice.0-999.json").read_bytes()).hexdigest()
    (folder / "md5sums").write_text(f"{digest}  mpd.slice.0-999.json\n")
    with pytest.raises(InputError, match=r"mpd\.slice\.1000-1999\.json.*not listed in md5sums"):
        MPDSource(folder)


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        MPDSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no MPD slices"):
        MPDSource(tmp_path / "empty")
