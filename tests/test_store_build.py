"""The store's build path: id and order resolution, atomic failure, determinism."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from segue.data.sources.base import Chunk, ListSource, SourceFile
from segue.data.sources.synthetic import SyntheticConfig, SyntheticSource
from segue.data.store import BuildConfig, Store, build_store
from segue.errors import InputError


def ev(rows: list[tuple], extra: dict[str, list] | None = None) -> pa.Table:
    seq, item, pos, ts = zip(*rows, strict=True)
    cols = {
        "seq_key": pa.array(seq, pa.string()),
        "item_key": pa.array(item, pa.string()),
        "position": pa.array(pos, pa.int32()),
        "ts": pa.array(ts, pa.int64()),
    }
    return pa.table(cols | {k: pa.array(v) for k, v in (extra or {}).items()})


def contents(store: Path) -> list[tuple]:
    with Store.open(store) as s:
        return s.con.execute(
            "SELECT q.seq_id, q.external_id, q.length, e.position, i.item_id, i.external_id FROM events e "
            "JOIN items i USING (item_id) JOIN sequences q USING (seq_id) ORDER BY q.seq_id, e.position"
        ).fetchall()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_ids_and_order_resolution(tmp_path: Path) -> None:
    chunks = [
        Chunk(
            sequences=pa.table({"seq_key": ["s2", "s1", "empty"], "name": ["two", "one", "none"]}),
            events=ev([("s1", "a", None, 30), ("s1", "b", None, 10), ("s3", "c", None, 5), ("s2", "b", 1, None)]),
            items=pa.table({"item_key": ["b", "a"], "name": ["B first", "A"]}),
        ),
        Chunk(
            events=ev([("s2", "a", 0, None), ("s1", "c", None, 10)]),
            items=pa.table({"item_key": ["b", "c"], "name": ["B second", "C"]}),
        ),
    ]
    store = build_store(ListSource(chunks), tmp_path / "s.duckdb")
    # declared sequences first in declaration order (s2, s1; 'empty' has no events and is left out),
    # then s3; inside a sequence: position, then time, then arrival order.
    assert contents(store) == [
        (0, "s2", 2, 0, 0, "a"),
        (0, "s2", 2, 1, 1, "b"),
        (1, "s1", 3, 0, 1, "b"),
        (1, "s1", 3, 1, 2, "c"),
        (1, "s1", 3, 2, 0, "a"),
        (2, "s3", 1, 0, 2, "c"),
    ]
    with Store.open(store) as s:
        names = s.con.execute("SELECT external_id, name FROM items ORDER BY item_id").fetchall()
        assert names == [("a", "A"), ("b", "B first"), ("c", "C")]  # first metadata row wins
        assert s.con.execute("SELECT name FROM sequences ORDER BY seq_id").fetchall() == [("two",), ("one",), (None,)]


def test_clean_and_general_paths_agree(tmp_path: Path) -> None:
    # The same playlists, once in clean runs (fast copy path) and once shuffled (window/sort path).
    rows = [(f"p{p}", f"t{(p * 7 + k) % 13}", k, 100 + p) for p in range(6) for k in range(p + 2)]
    decl = pa.table({"seq_key": [f"p{p}" for p in range(6)]})
    clean = build_store(ListSource([Chunk(events=ev(rows[:9]), sequences=decl), Chunk(events=ev(rows[9:]))]), tmp_path / "a.duckdb")
    shuffled = rows[::-1]
    general = build_store(ListSource([Chunk(events=ev(shuffled), sequences=decl)]), tmp_path / "b.duckdb")
    assert contents(clean) != [] and [r[1:4] + r[5:] for r in contents(clean)] == [r[1:4] + r[5:] for r in contents(general)]


def test_extra_columns_and_rating(tmp_path: Path) -> None:
    t = ev([("u", "a", 0, 1), ("u", "b", 1, 2)], {"fb_played": [0.5, 1.0], "ctx_device": ["tv", "web"], "rating": [4.0, None]})
    with Store.open(build_store(ListSource([Chunk(events=t)]), tmp_path / "s.duckdb")) as s:
        assert s.extra_columns == {"fb_played": "DOUBLE", "ctx_device": "VARCHAR"}
        assert s.con.execute('SELECT "fb_played", "ctx_device", rating FROM events ORDER BY position').fetchall() == [
            (0.5, "tv", 4.0),
            (1.0, "web", None),
        ]


def test_bad_chunks(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"event #2, field 'item id'"):
        build_store(ListSource([Chunk(events=ev([("u", "a", 0, 1), ("u", None, 1, 2)]))]), tmp_path / "s.duckdb")
    dup = pa.table({"seq_key": ["x", "y"], "origin": ["f.json:1", "f.json:2"]})
    dup2 = pa.table({"seq_key": ["x"], "origin": ["g.json:9"]})
    with pytest.raises(InputError, match=r"duplicate sequence id 'x' \(in f\.json:1 and g\.json:9\)"):
        build_store(
            ListSource([Chunk(sequences=dup, events=ev([("x", "a", 0, 1)])), Chunk(sequences=dup2)]), tmp_path / "s.duckdb"
        )
    with pytest.raises(InputError, match="no events"):
        build_store(ListSource([Chunk(sequences=dup)]), tmp_path / "s.duckdb")
    assert leftovers(tmp_path) == []


class FailingSource:
    """Yields good chunks, then fails like a corrupt file would."""

    name = "failing"

    def __init__(self, good: int) -> None:
        self.good = good

    def chunks(self) -> Iterator[Chunk]:
        for k in range(self.good):
            yield Chunk(events=ev([(f"s{k}", f"i{j}", j, 1) for j in range(50)]))
        raise InputError("broken record", path="in.json", line=7)

    def files(self) -> list[SourceFile]:
        return []

    def params(self) -> dict[str, object]:
        return {}


def test_failure_leaves_nothing_and_keeps_existing_store(tmp_path: Path) -> None:
    target = tmp_path / "s.duckdb"
    with pytest.raises(InputError, match="in.json:7"):
        build_store(FailingSource(3), target)
    assert leftovers(tmp_path) == []
    build_store(SyntheticSource(SyntheticConfig(n_playlists=50, n_items=100)), target)
    before = hashlib.sha256(target.read_bytes()).hexdigest()
    with pytest.raises(InputError):
        build_store(FailingSource(3), target)
    late = BuildConfig(splits=[{"kind": "strong", "valid_users": 30, "test_users": 30}])
    with pytest.raises(InputError, match="cannot hold out"):  # fails late: in the split, after staging
        build_store(SyntheticSource(SyntheticConfig(n_playlists=50, n_items=100)), target, late)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == before
    assert leftovers(tmp_path) == ["s.duckdb"]
    with Store.open(target) as s:
        assert s.counts()["sequences"] == 50


def test_same_inputs_and_seed_same_store(tmp_path: Path) -> None:
    cfg = SyntheticConfig(n_playlists=200, n_items=300, seed=4)
    sums = []
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        with Store.open(build_store(SyntheticSource(cfg), tmp_path / f"{name}.duckdb", BuildConfig(seed=seed))) as s:
            sums.append(s.checksum)
    assert sums[0] == sums[1] != sums[2]  # the split's seed changes the store; nothing else does


def test_item_metadata_before_its_events(tmp_path: Path) -> None:
    chunks = [
        Chunk(items=pa.table({"item_key": ["z", "y", "z"], "name": ["Z first", "Y", "Z dup"]})),
        Chunk(events=ev([("u", "z", 0, 1), ("u", "x", 1, 2)]), items=pa.table({"item_key": ["z", "x"], "name": ["Z late", "X"]})),
        Chunk(items=pa.table({"item_key": ["x"], "name": ["X late"]})),
    ]
    with Store.open(build_store(ListSource(chunks), tmp_path / "s.duckdb")) as s:
        # y has no events: not an item of the store; z keeps its first row
        assert s.con.execute("SELECT external_id, name FROM items ORDER BY item_id").fetchall() == [("z", "Z first"), ("x", "X")]
