"""Walk s10 (importers and split specs): impossible or ambiguous input is refused, naming what."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from datahelp import make_store
from segue.cli import app
from segue.data.cli import parse_kv, parse_split
from segue.data.sources import open_source
from segue.data.splits import parse_spec
from segue.data.store import Store
from segue.errors import ConfigError, InputError

runner = CliRunner()


def _parts(store: Path, split: str) -> dict[int, int]:
    with Store.open(store) as s:
        rows = s.con.execute(
            "SELECT part, count(*) FROM split_events WHERE split = ? GROUP BY part", [split]
        ).fetchall()
    return {int(p): int(n) for p, n in rows}


def test_temporal_fraction_zero_gives_no_events_to_that_part(tmp_path: Path) -> None:
    # F1: quantile 1 is the last time itself, so the events at the last timestamp landed in test.
    seqs = [[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]]
    ts = [[10, 20, 30, 40], [10, 20, 30, 40], [15, 25, 35, 40]]
    store = make_store(
        tmp_path / "t.duckdb",
        seqs,
        [{"kind": "temporal", "test_fraction": 0}, {"kind": "temporal", "name": "none", "test_fraction": 0, "valid_fraction": 0}],
        ts=ts,
    )
    parts = _parts(store, "temporal")
    assert 2 not in parts and parts[1] > 0 and sum(parts.values()) == 12
    assert _parts(store, "none") == {0: 12}


@pytest.mark.parametrize("kind", ["random_holdout", "temporal", "random_sequence"])
def test_fractions_summing_to_one_or_more_are_refused(kind: str) -> None:
    # F15: random_holdout trimmed the valid share silently; temporal spoke of cut times.
    with pytest.raises(ConfigError, match=r"valid_fraction \+ test_fraction is 1\.2: expected a sum below 1"):
        parse_spec({"kind": kind, "valid_fraction": 0.6, "test_fraction": 0.6})
    with pytest.raises(ConfigError, match="is 1: expected a sum below 1"):
        parse_spec({"kind": kind, "valid_fraction": 0.5, "test_fraction": 0.5})
    assert parse_spec({"kind": kind, "valid_fraction": 0.4, "test_fraction": 0.5}).test_fraction == 0.5


def test_temporal_with_explicit_valid_cut_ignores_the_fraction_sum() -> None:
    spec = parse_spec({"kind": "temporal", "valid_cut": 100, "test_cut": 200, "valid_fraction": 0.9, "test_fraction": 0.5})
    assert spec.valid_cut == 100


@pytest.mark.parametrize("name", ["", "  "])
def test_empty_split_name_is_refused(name: str) -> None:
    # F2: an empty name was stored and then listed invisibly by `segue evaluate`.
    with pytest.raises(ConfigError, match="parameter 'name' is .*expected a non-empty name"):
        parse_spec({"kind": "leave_last_out", "name": name})


def test_build_warns_when_a_split_has_no_test_events(tmp_path: Path) -> None:
    src = tmp_path / "seq.txt"
    src.write_text("".join(f"u{u} i1 i2 i3 i{u}\n" for u in range(20)))
    res = runner.invoke(
        app, ["data", "build", "seqtext", str(src), "-o", str(tmp_path / "s.duckdb"), "-s", "leave_last_out:min_length=100"]
    )
    assert res.exit_code == 0, res.output
    assert "warning: split loo has no valid or test events" in " ".join(res.output.split())


def test_repeated_keys_are_refused() -> None:
    # F16: the last value won silently.
    with pytest.raises(ConfigError, match=r"parameter 'min_length' is given twice \(min_length=3 and min_length=50\)"):
        parse_split("leave_last_out:min_length=3,min_length=50")
    with pytest.raises(ConfigError, match="source option 'with_items' is given twice"):
        parse_kv(["with_items=false", "with_items=true"], "source option")
    assert parse_kv(["a=1", "b=x"], "source option") == {"a": 1, "b": "x"}


def test_same_column_for_user_and_item_is_refused(tmp_path: Path) -> None:
    # F3: user=item=User_ID built one sequence per user of its own id repeated.
    src = tmp_path / "r.csv"
    src.write_text("User_ID,Anime_ID,Feedback\n1,10,5\n1,11,3\n2,10,4\n")
    with pytest.raises(InputError, match="options 'user' and 'item' both map column 'User_ID'"):
        open_source("csv", src, user="User_ID", item="User_ID")
    with pytest.raises(InputError, match="options 'item' and 'rating' both map column 'Anime_ID'"):
        open_source("csv", src, user="User_ID", item="Anime_ID", rating="Anime_ID")


@pytest.mark.parametrize(
    ("kind", "options", "expected"),
    [
        ("seqtext", {"chunk_events": 0}, "option 'chunk_events' is 0 \\(expected a whole number of at least 1\\)"),
        ("seqtext", {"chunk_events": -5}, "option 'chunk_events' is -5"),
        ("mpd", {"workers": -1}, "option 'workers' is -1 \\(expected a whole number of at least 0\\)"),
    ],
)
def test_non_positive_numeric_options_are_refused(tmp_path: Path, kind: str, options: dict, expected: str) -> None:
    # F4: both built without a note.
    src = tmp_path / "x.txt"
    src.write_text("u1 i1 i2 i3\n")
    with pytest.raises(ConfigError, match=expected):
        open_source(kind, src, **options)


def test_mpd_on_a_ratings_file_says_it_is_not_a_slice(tmp_path: Path) -> None:
    # F5: msgspec's bare "Expected `object`, got `int`".
    src = tmp_path / "u.data"
    src.write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    res = runner.invoke(app, ["data", "build", "mpd", str(src), "-o", str(tmp_path / "m.duckdb")])
    assert res.exit_code != 0
    text = " ".join(res.output.split())
    assert "not an MPD slice: its top level is a JSON int" in text
    assert "mpd.slice.<first>-<last>.json" in text
    assert not (tmp_path / "m.duckdb").exists()
