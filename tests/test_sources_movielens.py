"""MovieLens importer: the real 100K, and small files of each layout written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segue.data.sources import open_source
from segue.data.sources.movielens import MovieLensSource, detect_variant
from segue.data.store import Store, build_store
from segue.errors import InputError


@pytest.mark.realdata
def test_ml100k_counts(shared_data: Path, tmp_path: Path) -> None:
    store = build_store(open_source("movielens", shared_data / "ml-100k"), tmp_path / "s.duckdb")
    with Store.open(store) as s:
        c = s.counts()
        assert (c["sequences"], c["items"], c["events"], c["rated_events"]) == (943, 1682, 100000, 100000)
        toy = s.con.execute("SELECT name, meta FROM items WHERE external_id = '1'").fetchone()
        assert toy[0] == "Toy Story (1995)"
        assert json.loads(toy[1])["genres"] == ["Animation", "Children's", "Comedy"]
        # latin-1 titles survive
        assert s.con.execute("SELECT count(*) FROM items WHERE name LIKE '%é%'").fetchone()[0] > 0
        lo, hi = s.con.execute("SELECT min(ts), max(ts) FROM events").fetchone()
        assert lo == 874724710 and hi == 893286638  # 1997-09-20 .. 1998-04-22
        # each user's events are in time order
        assert s.con.execute(
            "SELECT count(*) FROM (SELECT ts < lag(ts) OVER (PARTITION BY seq_id ORDER BY position) AS back FROM events) WHERE back"
        ).fetchone()[0] == 0


def write_dat(folder: Path, ratings: str, movies: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text(ratings)
    if movies is not None:
        (folder / "movies.dat").write_bytes(movies.encode("latin-1"))
    return folder


def test_1m_layout(tmp_path: Path) -> None:
    folder = write_dat(
        tmp_path / "ml-1m",
        "1::10::5::978300760\n1::20::3::978300700\n2::10::4::978300800\n",
        "10::Star Wars: Episode IV (1977)::Action|Sci-Fi\n20::Amélie (2001)::Comedy|Romance\n30::Unrated (1999)::Drama\n",
    )
    assert detect_variant(folder) == "dat"
    store = build_store(MovieLensSource(folder), tmp_path / "s.duckdb")
    with Store.open(store) as s:
        assert s.counts() == {"sequences": 2, "items": 2, "events": 3, "rated_events": 3}
        rows = s.con.execute(
            "SELECT q.external_id, e.position, i.external_id, e.rating, e.ts FROM events e "
            "JOIN sequences q USING (seq_id) JOIN items i USING (item_id) ORDER BY q.external_id, e.position"
        ).fetchall()
        # user 1's events are ordered by time, not by file order
        assert rows == [("1", 0, "20", 3.0, 978300700), ("1", 1, "10", 5.0, 978300760), ("2", 0, "10", 4.0, 978300800)]
        names = dict(s.con.execute("SELECT external_id, name FROM items").fetchall())
        assert names == {"10": "Star Wars: Episode IV (1977)", "20": "Amélie (2001)"}


def test_csv_layout(tmp_path: Path) -> None:
    folder = tmp_path / "ml-25m"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,944249077\n1,2,3.5,944250000\n9,2,0.5,944249000\n")
    (folder / "movies.csv").write_text(
        'movieId,title,genres\n1,"Toy Story, The (1995)",Adventure|Animation\n2,Jumanji (1995),(no genres listed)\n'
    )
    store = build_store(open_source("movielens", folder), tmp_path / "s.duckdb")
    with Store.open(store) as s:
        assert s.counts() == {"sequences": 2, "items": 2, "events": 3, "rated_events": 3}
        meta = dict(s.con.execute("SELECT name, meta FROM items").fetchall())
        assert json.loads(meta["Toy Story, The (1995)"]) == {"genres": ["Adventure", "Animation"]}
        assert json.loads(meta["Jumanji (1995)"]) == {"genres": []}
        assert s.con.execute("SELECT sum(rating) FROM events").fetchone()[0] == 8.0


def test_100k_layout_written(tmp_path: Path) -> None:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("1\t5\t3\t881250949\n2\t5\t4\t881250950\n")
    flags = "|".join(["0"] * 18 + ["1"])
    (folder / "u.item").write_bytes(f"5|Café (1995)|01-Jan-1995||http://x|{flags}\n".encode("latin-1"))
    store = build_store(MovieLensSource(folder), tmp_path / "s.duckdb")
    with Store.open(store) as s:
        name, meta = s.con.execute("SELECT name, meta FROM items").fetchone()
        assert name == "Café (1995)" and json.loads(meta)["genres"] == ["Western"]


@pytest.mark.parametrize(
    ("ratings", "line", "field", "value"),
    [
        ("1::10::5::978300760\n1::20::five::978300700\n", 2, "rating", "'five'"),
        ("1::10::5::978300760\n2::10::4::978300800\n\n3::10::4::soon\n", 4, "ts", "'soon'"),
        ("1::10::5::978300760\n::10::4::978300800\n", 2, "user", "nothing"),
    ],
)
def test_bad_values_name_file_line_field(tmp_path: Path, ratings: str, line: int, field: str, value: str) -> None:
    folder = write_dat(tmp_path / "ml", ratings)
    with pytest.raises(InputError) as e:
        build_store(MovieLensSource(folder), tmp_path / "s.duckdb")
    msg = str(e.value)
    assert f"ratings.dat:{line}" in msg and f"field '{field}'" in msg and value in msg, msg
    assert e.value.line == line
    assert not (tmp_path / "s.duckdb").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ml"]


def test_empty_and_missing(tmp_path: Path) -> None:
    folder = write_dat(tmp_path / "ml", "")
    with pytest.raises(InputError, match="ratings.dat: the file is empty"):
        build_store(MovieLensSource(folder), tmp_path / "s.duckdb")
    with pytest.raises(InputError, match="no MovieLens ratings file"):
        MovieLensSource(tmp_path)
