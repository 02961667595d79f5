"""Source options: one documented table per source, checked keys, columns found by name, clear errors."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from segue.data import sources
from segue.data.sources import SOURCE_KINDS, open_source, source_help, source_options
from segue.data.splits import SPLIT_DOCS, SPLIT_KINDS, parse_spec
from segue.data.store import Store, build_store
from segue.errors import ConfigError, InputError

_CLASSES = {
    "mpd": ("segue.data.sources.mpd", "MPDSource"),
    "movielens": ("segue.data.sources.movielens", "MovieLensSource"),
    "seqtext": ("segue.data.sources.seqtext", "SeqTextSource"),
    "tabular": ("segue.data.sources.tabular", "TabularSource"),
}


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_every_accepted_key_is_documented(kind: str) -> None:
    """The OPTIONS table equals what the class accepts (keyword arguments, or SyntheticConfig's fields)."""
    import importlib

    if kind == "synthetic":
        from segue.data.sources.synthetic import SyntheticConfig

        accepted = set(SyntheticConfig.model_fields)
    else:
        module, cls = _CLASSES[kind]
        params = inspect.signature(getattr(importlib.import_module(module), cls).__init__).parameters.values()
        accepted = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    documented = source_options(kind)
    assert set(documented) == accepted
    assert all(len(doc) > 10 and "\n" not in doc for doc in documented.values())
    text = source_help(kind)
    assert all(f"- `{key}`:" in text for key in accepted) and "Example: `segue data build" in text


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_documented_examples_pass_the_option_checks(kind: str) -> None:
    import shlex

    from segue.data.cli import parse_kv
    from segue.data.sources import check_options, check_values, source_module

    words = shlex.split(source_module(kind).EXAMPLE)
    assert words[:3] == ["segue", "data", "build"]
    pairs = [words[i + 1] for i, w in enumerate(words) if w == "--option"]
    options = parse_kv(pairs, "option")
    check_options(words[3], options)
    check_values(words[3], options)


def test_every_split_parameter_is_documented() -> None:
    from typing import get_args

    from segue.data.splits import SplitSpec

    classes = {c.model_fields["kind"].default: c for c in get_args(get_args(SplitSpec)[0])}
    assert set(SPLIT_DOCS) == set(SPLIT_KINDS) == set(classes)
    for kind, (_, params, example) in SPLIT_DOCS.items():
        assert set(params) == set(classes[kind].model_fields) - {"kind"}, kind
        k, _, rest = example.partition(":")
        spec = dict(kv.split("=") for kv in rest.split(",")) if rest else {}
        assert parse_spec({"kind": k, **spec}).kind == kind  # the documented example is valid


@pytest.mark.parametrize(
    ("kind", "options", "words"),
    [
        ("csv", {"usr": "u"}, ["source 'csv'", "unknown option 'usr'", "user ", "timestamp_unit", "column of the item id"]),
        ("mpd", {"threads": 2}, ["source 'mpd'", "unknown option 'threads'", "workers", "verify_md5"]),
        ("movielens", {"version": "1m"}, ["unknown option 'version'", "variant", "with_items"]),
        ("seqtext", {"sep": ","}, ["unknown option 'sep'", "delimiter", "chunk_events"]),
        ("synthetic", {"n_playlist": 5}, ["unknown option 'n_playlist'", "n_playlists", "zipf_exponent"]),
    ],
)
def test_unknown_option_lists_the_valid_keys(tmp_path: Path, kind: str, options: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        open_source(kind, tmp_path / "x", **options)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert "Traceback" not in str(e.value) and "__init__" not in str(e.value)


def test_missing_required_option_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # No source has a required option today (tabular finds its columns by name); the generic
    # check still names one should a class grow it.
    monkeypatch.setattr(sources, "required_options", lambda kind: ["user"])
    with pytest.raises(ConfigError, match=r"source 'csv': missing option 'user'\. Valid options"):
        sources.check_options("csv", {})


ISO = """user,item,timestamp
u1,i3,2024-03-05T10:00:00Z
u2,i1,2024-01-02
u1,i1,2024-03-01T09:00:00+01:00
u1,i2,2024-03-03
u2,i2,2024-01-01
u1,i1,2024-03-04
"""


def _seqs(store: Path) -> dict[str, list[tuple[str, int | None]]]:
    with Store.open(store) as s:
        rows = s.con.execute(
            "SELECT q.external_id, i.external_id, e.ts FROM events e JOIN items i USING (item_id) "
            "JOIN sequences q USING (seq_id) ORDER BY q.seq_id, e.position"
        ).fetchall()
    out: dict[str, list[tuple[str, int | None]]] = {}
    for u, i, ts in rows:
        out.setdefault(u, []).append((i, ts))
    return out


def test_conventional_columns_found_and_iso_times_order_sequences(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text(ISO)
    src = open_source("csv", p)
    assert src.notes() == [
        "columns: user <- user (found by name), item <- item (found by name), timestamp <- timestamp (found by name)"
    ]
    seqs = _seqs(build_store(src, tmp_path / "s.duckdb"))
    assert [i for i, _ in seqs["u1"]] == ["i1", "i2", "i1", "i3"]  # 03-01 08:00Z, 03-03, 03-04, 03-05
    assert [i for i, _ in seqs["u2"]] == ["i2", "i1"]
    assert seqs["u2"][0][1] == 1704067200  # 2024-01-01T00:00:00Z, not NULL


def test_other_conventional_names_and_unix_seconds(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text("session_id,track_uri,ts,score\ns,b,1700000300,1\ns,a,1700000100,2\nt,a,5,3\ns,c,1700000200,4\n")
    src = open_source("csv", p)
    assert src.resolve() == {"user": "session_id", "item": "track_uri", "timestamp": "ts", "rating": "score", "position": None}
    seqs = _seqs(build_store(src, tmp_path / "s.duckdb"))
    assert seqs["s"] == [("a", 1700000100), ("c", 1700000200), ("b", 1700000300)]


def test_names_match_case_insensitively_and_explicit_options_win(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text("UserId,itemId,other_item,Time\nu,a,x,2\nu,b,y,1\n")
    src = open_source("csv", p, item="other_item")
    src.resolve()
    assert src.mapping["user"] == "UserId" and src.mapping["item"] == "other_item" and src.mapping["timestamp"] == "Time"
    notes = src.notes()
    assert "item <- other_item," in notes[0] and "item <- other_item (found" not in notes[0]
    assert notes[1] == "not imported: itemId"
    assert [i for i, _ in _seqs(build_store(src, tmp_path / "s.duckdb"))["u"]] == ["y", "x"]


def test_unmapped_time_like_column_is_warned(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text("user,item,created_at\nu,a,2024-01-02\nu,b,2024-01-01\n")
    notes = open_source("csv", p).notes()
    assert notes[-1].startswith("warning: column 'created_at' looks like a time but is not mapped")
    assert "--option timestamp=created_at" in notes[-1]
    # timestamp= (empty) says "no timestamp": the conventional column is then left alone, with a warning
    q = tmp_path / "log2.csv"
    q.write_text(ISO)
    src = open_source("csv", q, timestamp="")
    assert src.mapping["timestamp"] is None
    assert "warning: column 'timestamp' looks like a time" in src.notes()[-1]


def test_no_user_column_names_file_columns_and_option(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text("who,item\nu,a\n")
    with pytest.raises(InputError) as e:
        open_source("csv", p).notes()
    text = str(e.value)
    assert "log.csv" in text and "no user column found; the file has: who, item" in text
    assert "user / user_id / userId / session_id, or --option user=<column>" in text


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("user,item,timestamp\nu05,i001,2024-01-01\nu05,i010\n", ["log.csv:3", "2 fields ('u05,i010')", "expected 3 fields: user,item,timestamp"]),
        ("user,item,timestamp\nu1,a,2024-01-01\n\nu1,b,yesterday\n", ["log.csv:4", "field 'timestamp'", "'yesterday'", "ISO-8601"]),
        ("user,item,rating\nu1,a,4\nu1,b,4 stars\n", ["log.csv:3", "field 'rating'", "'4 stars'", "a number"]),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path: Path, content: str, words: list[str]) -> None:
    p = tmp_path / "log.csv"
    p.write_text(content)
    with pytest.raises(InputError) as e:
        build_store(open_source("csv", p), tmp_path / "s.duckdb")
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["log.csv"]


@pytest.mark.parametrize(
    ("kind", "options", "words"),
    [
        ("csv", {"header": "no"}, ["option 'header' is 'no' (expected true or false)", "first line is data"]),
        ("mpd", {"workers": "two"}, ["option 'workers' is 'two' (expected a whole number)"]),
        ("movielens", {"with_items": 1}, ["option 'with_items' is 1 (expected true or false)"]),
        ("seqtext", {"chunk_events": 1.5}, ["option 'chunk_events' is 1.5 (expected a whole number)"]),
    ],
)
def test_option_values_of_the_wrong_type_are_named(tmp_path: Path, kind: str, options: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        open_source(kind, tmp_path / "x", **options)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_opening_a_non_store_file_says_so(tmp_path: Path) -> None:
    from segue.errors import StoreError

    p = tmp_path / "log.csv"
    p.write_text(ISO)
    with pytest.raises(StoreError, match=r"log\.csv: not a segue store \(expected the \.duckdb file"):
        Store.open(p)


def test_synthetic_given_a_path_suggests_out(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"source 'synthetic' reads no input, but was given '.*out\.duckdb' \(for the store, use -o"):
        open_source("synthetic", tmp_path / "out.duckdb", n_playlists=5)


def test_parquet_columns_found_by_name(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": [7, 7, 8], "itemId": ["b", "a", "a"], "ts": [20, 10, 5], "extra": [1, 2, 3]}), p)
    src = open_source("parquet", p)
    assert src.notes() == [
        "columns: user <- user_id (found by name), item <- itemId (found by name), timestamp <- ts (found by name)",
        "not imported: extra",
    ]
    assert _seqs(build_store(src, tmp_path / "s.duckdb")) == {"7": [("a", 10), ("b", 20)], "8": [("a", 5)]}
