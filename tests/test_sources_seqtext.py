"""Sequence text importer: Beauty, and small files in each format."""

from __future__ import annotations

from pathlib import Path

import pytest

from segue.data.sources import open_source
from segue.data.sources.seqtext import SeqTextSource
from segue.data.store import Store, build_store
from segue.errors import InputError


@pytest.mark.realdata
def test_beauty_counts(shared_data: Path, tmp_path: Path) -> None:
    src = open_source("seqtext", shared_data / "beauty" / "Beauty.txt")
    store = build_store(src, tmp_path / "s.duckdb")
    assert src.params()["detected"] == "sequences"
    with Store.open(store) as s:
        c = s.counts()
        assert (c["sequences"], c["items"], c["events"]) == (22363, 12101, 198502)
        # user 2's line is "2 6 7 8 9 10 4 11": positions follow the line
        items = s.con.execute(
            "SELECT i.external_id FROM events e JOIN items i USING (item_id) JOIN sequences q USING (seq_id) "
            "WHERE q.external_id = '2' ORDER BY e.position"
        ).fetchall()
        assert [r[0] for r in items] == ["6", "7", "8", "9", "10", "4", "11"]


def sequences_of(store: Path) -> dict[str, list[str]]:
    with Store.open(store) as s:
        rows = s.con.execute(
            "SELECT q.external_id, i.external_id FROM events e JOIN items i USING (item_id) "
            "JOIN sequences q USING (seq_id) ORDER BY q.seq_id, e.position"
        ).fetchall()
    out: dict[str, list[str]] = {}
    for u, i in rows:
        out.setdefault(u, []).append(i)
    return out


def test_sequences_and_pairs(tmp_path: Path) -> None:
    seq = tmp_path / "seq.txt"
    seq.write_text("u1 a b c\n\nu2 b\nu3 c a\n")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("u1 a\nu2 b\nu1 b\nu3 c\nu1 c\nu3 a\n")
    want = {"u1": ["a", "b", "c"], "u2": ["b"], "u3": ["c", "a"]}
    s1 = SeqTextSource(seq)
    assert sequences_of(build_store(s1, tmp_path / "a.duckdb")) == want
    assert s1.detected == "sequences"
    s2 = SeqTextSource(pairs)
    assert sequences_of(build_store(s2, tmp_path / "b.duckdb")) == want
    assert s2.detected == "pairs"
    # a small chunk size splits users across chunks; the result must not change
    assert sequences_of(build_store(SeqTextSource(pairs, chunk_events=2), tmp_path / "c.duckdb")) == want
    assert sequences_of(build_store(SeqTextSource(seq, chunk_events=1), tmp_path / "d.duckdb")) == want


def test_delimiter(tmp_path: Path) -> None:
    p = tmp_path / "s.csv"
    p.write_text("u1,a,b\nu2,c\n")
    got = sequences_of(build_store(SeqTextSource(p, delimiter=","), tmp_path / "s.duckdb"))
    assert got == {"u1": ["a", "b"], "u2": ["c"]}


@pytest.mark.parametrize(
    ("text", "fmt", "line", "words"),
    [
        ("u1 a b\nu2 c\nu1 d\n", "sequences", 3, ["user 'u1' again", "line 1"]),
        ("u1 a\nu2\n", "sequences", 2, ["a user without items"]),
        ("u1 a\nu2 b c\n", "pairs", 2, ["3 fields", "'user item'"]),
    ],
)
def test_bad_lines(tmp_path: Path, text: str, fmt: str, line: int, words: list[str]) -> None:
    p = tmp_path / "in.txt"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        build_store(SeqTextSource(p, format=fmt), tmp_path / "s.duckdb")
    assert f"in.txt:{line}" in str(e.value)
    for w in words:
        assert w in str(e.value)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["in.txt"]


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "in.txt"
    p.write_text("")
    with pytest.raises(InputError, match="the file is empty"):
        build_store(SeqTextSource(p), tmp_path / "s.duckdb")
    p.write_text("\n\n")
    with pytest.raises(InputError, match="no data lines"):
        build_store(SeqTextSource(p), tmp_path / "s.duckdb")
