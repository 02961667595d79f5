"""Generic CSV/Parquet importer with a column mapping."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segue.data.sources import open_source
from segue.data.sources.tabular import TabularSource
from segue.data.store import Store, build_store
from segue.errors import ConfigError, InputError


@pytest.mark.realdata
def test_anime_ratings_counts(shared_data: Path, tmp_path: Path) -> None:
    src = open_source("tabular", shared_data / "anime" / "anime_ratings.dat", user="User_ID", item="Anime_ID", rating="Feedback")
    with Store.open(build_store(src, tmp_path / "s.duckdb")) as s:
        c = s.counts()
        assert (c["sequences"], c["items"], c["events"], c["rated_events"]) == (4714, 7157, 419943, 419943)
        assert s.con.execute("SELECT min(rating), max(rating) FROM events").fetchone() == (1.0, 10.0)
    # with the item table: every rated title gets its name, and its genre and type as metadata
    src = open_source(
        "tabular", shared_data / "anime" / "anime_ratings.dat", user="User_ID", item="Anime_ID", rating="Feedback",
        items=str(shared_data / "anime" / "anime_info.dat"), items_id="anime_ids",
    )
    with Store.open(build_store(src, tmp_path / "named.duckdb")) as s:
        named, typed = s.con.execute("SELECT count(name), count(json_extract_string(meta, '$.type')) FROM items").fetchone()
        assert named == 7157 and typed > 7100
        assert s.con.execute("SELECT name FROM items WHERE external_id = '6'").fetchone() == ("Death Note",)


CSV = """user,item,when,stars,played,device
u1,a,2020-01-02T00:00:10Z,4,0.5,phone
u1,b,2020-01-02T00:00:05Z,5,1.0,web
u2,a,2020-01-03 00:00:00,,0.25,phone
u1,c,2020-01-02T01:00:05+01:00,3,1,web
"""


def table(store: Path, cols: str) -> list[tuple]:
    with Store.open(store) as s:
        return s.con.execute(
            f"SELECT q.external_id, e.position, i.external_id, {cols} FROM events e JOIN items i USING (item_id) "
            "JOIN sequences q USING (seq_id) ORDER BY q.seq_id, e.position"
        ).fetchall()


def test_csv_mapping_iso_times_feedback_context(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text(CSV)
    src = TabularSource(p, user="user", item="item", timestamp="when", rating="stars", feedback=["played"], context={"device": "device"})
    store = build_store(src, tmp_path / "s.duckdb")
    rows = table(store, 'e.ts, e.rating, e."fb_played", e."ctx_device"')
    t0 = 1577923200  # 2020-01-02T00:00:00Z
    # 01:00:05+01:00 is 00:00:05Z, the same time as b: equal times keep file order (b first)
    assert rows == [
        ("u1", 0, "b", t0 + 5, 5.0, 1.0, "web"),
        ("u1", 1, "c", t0 + 5, 3.0, 1.0, "web"),
        ("u1", 2, "a", t0 + 10, 4.0, 0.5, "phone"),
        ("u2", 0, "a", t0 + 86400, None, 0.25, "phone"),
    ]
    with Store.open(store) as s:
        assert s.extra_columns == {"fb_played": "DOUBLE", "ctx_device": "VARCHAR"}


def test_parquet_numeric_times_and_position(tmp_path: Path) -> None:
    p = tmp_path / "log.parquet"
    pq.write_table(
        pa.table({"uid": [7, 7, 8], "iid": ["x", "y", "x"], "t": [100, 50, 10], "pos": [0, 1, 0]}), p
    )
    store = build_store(TabularSource(p, user="uid", item="iid", timestamp="t", position="pos"), tmp_path / "s.duckdb")
    # position wins over time
    assert table(store, "e.ts") == [("7", 0, "x", 100), ("7", 1, "y", 50), ("8", 0, "x", 10)]


def test_tab_file_without_header(tmp_path: Path) -> None:
    p = tmp_path / "log.tsv"
    p.write_text("1\t2\t5\n1\t3\t4\n")
    src = TabularSource(p, user="u", item="i", rating="r", header=False, column_names=["u", "i", "r"])
    assert [r[2:] for r in table(build_store(src, tmp_path / "s.duckdb"), "e.rating")] == [("2", 5.0), ("3", 4.0)]


@pytest.mark.parametrize(
    ("content", "kwargs", "words"),
    [
        ("user,item,stars\nu1,a,4\nu1,b,lots\n", {"rating": "stars"}, ["log.csv:3", "field 'stars'", "'lots'", "a number"]),
        ("user,item,when\nu1,a,5\nu1,b,not-a-time\n", {"timestamp": "when"}, ["log.csv:3", "field 'when'", "ISO-8601"]),
        ("user,item\nu1,a\n,b\n", {}, ["log.csv:3", "field 'user'"]),
        ("user,item\nu1,a\n", {"rating": "score"}, ["no column 'score'", "user, item"]),
        ("user,item\nu1,a,extra\n", {}, ["log.csv:2", "3 fields ('u1,a,extra')", "expected 2 fields: user,item"]),
    ],
)
def test_bad_csv(tmp_path: Path, content: str, kwargs: dict, words: list[str]) -> None:
    p = tmp_path / "log.csv"
    p.write_text(content)
    with pytest.raises(InputError) as e:
        build_store(TabularSource(p, user="user", item="item", **kwargs), tmp_path / "s.duckdb")
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["log.csv"]


def test_bad_parquet_names_row(tmp_path: Path) -> None:
    p = tmp_path / "log.parquet"
    pq.write_table(pa.table({"u": ["a", "b"], "i": ["x", "y"], "r": ["1", "bad"]}), p)
    with pytest.raises(InputError, match=r"log\.parquet, row 2, field 'r': got 'bad'"):
        build_store(TabularSource(p, user="u", item="i", rating="r"), tmp_path / "s.duckdb")


def test_factory_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown source kind"):
        open_source("excel", tmp_path)
    with pytest.raises(ConfigError, match="tabular"):
        open_source("tabular", tmp_path / "x.csv", usr="u", item="i")


def test_millisecond_timestamps(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text("u,i,t\na,x,1500000000999\na,y,1499999999000\n")
    src = TabularSource(p, user="u", item="i", timestamp="t", timestamp_unit="ms")
    assert table(build_store(src, tmp_path / "s.duckdb"), "e.ts") == [("a", 0, "y", 1499999999), ("a", 1, "x", 1500000000)]


def test_command_line_style_options(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text("u,i,a,b\nx,1,0.5,tv\n")
    src = open_source("tabular", p, user="u", item="i", feedback="a", context="b")
    with Store.open(build_store(src, tmp_path / "s.duckdb")) as s:
        assert s.extra_columns == {"fb_a": "DOUBLE", "ctx_b": "VARCHAR"}


@pytest.mark.parametrize("tab", ["\t", "\\t", "tab", "TAB"])
def test_a_tab_delimiter_can_be_typed_as_backslash_t_or_tab(tmp_path: Path, tab: str) -> None:
    # one comma inside a field: read as a comma file (or with a literal "\t") it would not be 3 columns
    p = tmp_path / "log.tsv"
    p.write_text("u\ti\tr\n1\ta,b\t5\n1\tc\t4\n")
    src = open_source("tabular", p, user="u", item="i", rating="r", delimiter=tab)
    assert [r[2:] for r in table(build_store(src, tmp_path / "s.duckdb"), "e.rating")] == [("a,b", 5.0), ("c", 4.0)]


# --- an item table beside the interactions ---------------------------------------------------------

ITEMS_TSV = "anime_ids\tname\tgenre\ttype\tepisodes\n1\tDeath Note\tMystery, Police, Thriller\tTV\t37\n2\tAkira\tAction, Sci-Fi\tMovie\t\n9\tNever Watched\tDrama\tOVA\t2\n"


def _items(store: Path) -> dict[str, tuple]:
    with Store.open(store) as s:
        return {k: (n, m) for k, n, m in s.con.execute("SELECT external_id, name, meta FROM items").fetchall()}


@pytest.mark.parametrize("fmt", ["tsv", "parquet"])
def test_an_item_table_names_the_items_and_keeps_the_rest_as_meta(tmp_path: Path, fmt: str) -> None:
    import json

    import numpy as np

    from segue.data.item_features import raw_features, store_item_rows

    ratings = tmp_path / "r.tsv"
    ratings.write_text("User_ID\tAnime_ID\tFeedback\n1\t1\t9\n1\t2\t7\n2\t1\t8\n2\t3\t5\n")
    info = tmp_path / "info.tsv"
    info.write_text(ITEMS_TSV)
    if fmt == "parquet":
        import pyarrow.csv as pacsv

        t = pacsv.read_csv(info, parse_options=pacsv.ParseOptions(delimiter="\t"))
        t = t.append_column("tags", pa.array([["classic", " "], [], None]))  # a list column stays a list
        info = tmp_path / "info.parquet"
        pq.write_table(t, info)  # ids and episodes as integers: ids read as text, episodes kept as numbers
    src = open_source("tabular", ratings, user="User_ID", item="Anime_ID", rating="Feedback", items=str(info), items_id="anime_ids")
    assert "id <- anime_ids, name <- name, meta <- genre, type, episodes" in "\n".join(src.notes())
    store = build_store(src, tmp_path / "s.duckdb")
    items = _items(store)
    # item 3 has no row in the table; item 9 has no events (the store keeps the items of its events)
    assert set(items) == {"1", "2", "3"} and items["3"] == (None, None)
    extra = {"episodes": "37"} if fmt == "tsv" else {"episodes": 37, "tags": ["classic"]}
    assert items["1"][0] == "Death Note" and json.loads(items["1"][1]) == {"genre": "Mystery, Police, Thriller", "type": "TV"} | extra
    assert json.loads(items["2"][1]) == {"genre": "Action, Sci-Fi", "type": "Movie"}  # an empty value is left out
    with Store.open(store) as s:
        files = [r[0] for r in s.con.execute("SELECT path FROM source_files").fetchall()]
        assert any(f.endswith(info.name) for f in files)
        item_id = s.con.execute("SELECT item_id FROM items WHERE external_id = '1'").fetchone()[0]
        feats = raw_features(["genre", "type"], store_item_rows(s, np.array([item_id])))
    assert feats == {"genre": [["Mystery", "Police", "Thriller"]], "type": [["TV"]]}  # side features as they are read


def test_an_item_tables_id_column_is_found_by_the_events_item_column_name(tmp_path: Path) -> None:
    ratings = tmp_path / "r.csv"
    ratings.write_text("user,movieId,rating\nu,10,4\n")
    info = tmp_path / "movies.csv"
    info.write_text('movieId,title,genres\n10,"Heat, the film",Crime|Drama\n')
    store = build_store(open_source("tabular", ratings, item="movieId", items=str(info)), tmp_path / "s.duckdb")
    assert _items(store)["10"][0] == "Heat, the film"  # a quoted comma in a CSV name
    from segue.data.item_features import raw_features

    with Store.open(store) as s:  # MovieLens' pipe-separated genres are a list of genres
        meta = s.con.execute("SELECT meta FROM items").fetchone()[0]
    assert raw_features(["genre"], [{"meta": meta}]) == {"genre": [["Crime", "Drama"]]}


def test_bad_item_tables_are_named(tmp_path: Path) -> None:
    ratings = tmp_path / "r.csv"
    ratings.write_text("user,item\nu,1\n")
    info = tmp_path / "info.tsv"
    info.write_text(ITEMS_TSV)
    with pytest.raises(InputError, match="no item id column found; the item table has: anime_ids, name") as e:
        build_store(open_source("tabular", ratings, items=str(info)), tmp_path / "a.duckdb")
    assert "info.tsv" in str(e.value) and "items_id" in str(e.value)
    with pytest.raises(InputError, match="no column 'anime_id' \\(mapped to items_id\\)"):
        build_store(open_source("tabular", ratings, items=str(info), items_id="anime_id"), tmp_path / "b.duckdb")
    info.write_text("anime_ids\tname\n1\tA\n\tB\n")
    with pytest.raises(InputError, match="an item without an id") as e:
        build_store(open_source("tabular", ratings, items=str(info), items_id="anime_ids"), tmp_path / "c.duckdb")
    assert "info.tsv:3" in str(e.value)
    with pytest.raises(InputError, match="describe an item table"):
        open_source("tabular", ratings, items_id="anime_ids")
    with pytest.raises(InputError, match="an item table not found"):
        build_store(open_source("tabular", ratings, items=str(tmp_path / "absent.tsv")), tmp_path / "d.duckdb")
    assert not any(p.name.endswith(".duckdb") for p in tmp_path.iterdir())  # nothing half-built


def test_html_escaped_item_names_are_noted_and_decoded_on_request(tmp_path: Path) -> None:
    ratings = tmp_path / "r.tsv"
    ratings.write_text("user\ti\n1\t1\n1\t2\n")
    info = tmp_path / "info.tsv"
    info.write_text("i\tname\tgenre\n1\tGintama&#039;\tAction &amp; Comedy\n2\t&quot;Bungaku Shoujo&quot; Movie\tDrama\n")
    plain = open_source("tabular", ratings, item="i", items=str(info))
    assert any("2 item names hold HTML entities (e.g. 'Gintama&#039;')" in n for n in plain.notes())
    assert _items(build_store(plain, tmp_path / "a.duckdb"))["1"][0] == "Gintama&#039;"  # kept as given
    decoded = open_source("tabular", ratings, item="i", items=str(info), items_unescape=True)
    assert not any("HTML entities" in n for n in decoded.notes())
    items = _items(build_store(decoded, tmp_path / "b.duckdb"))
    assert items["1"][0] == "Gintama'" and items["2"][0] == '"Bungaku Shoujo" Movie'
    assert '"Action & Comedy"' in items["1"][1]
    with pytest.raises(ConfigError, match="option 'items_unescape' is 'maybe' \\(expected true or false\\)"):
        open_source("tabular", ratings, item="i", items=str(info), items_unescape="maybe")


def test_a_csv_that_is_not_utf8_names_the_line_and_the_encoding_option(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from segue.cli import app

    path = tmp_path / "latin.csv"
    path.write_bytes(b"user,item\nu1,a\nu1,b\nu2,caf\xe9\nu2,a\n")
    res = CliRunner().invoke(app, ["data", "build", "csv", str(path), "-o", str(tmp_path / "s.duckdb")])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert f"{path}:4: not UTF-8 text" in text and "encoding=latin-1" in text
    # the option it names reads the file
    res = CliRunner().invoke(app, ["data", "build", "csv", str(path), "-o", str(tmp_path / "s.duckdb"), "--option", "encoding=latin-1"])
    assert res.exit_code == 0, res.output


def test_a_header_only_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("user,item,timestamp,rating\n")
    with pytest.raises(InputError, match=rf"{path}: no events were found: the file has no rows after its header"):
        build_store(open_source("tabular", path), tmp_path / "s.duckdb")
    assert not (tmp_path / "s.duckdb").exists()
