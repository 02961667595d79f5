"""Split strategies and their leakage checks, on real stores built through build_store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

import segue.data.splits as splits_mod
from datahelp import build_from_table, make_store, random_sequences, read_ml100k
from segue.data.splits import Part, add_split, check_split, history_parts, parse_part
from segue.data.store import Store
from segue.errors import ConfigError, InputError, StoreError

ALL_SPLITS = [
    {"kind": "random_sequence"},
    {"kind": "temporal"},
    {"kind": "leave_last_out"},
    {"kind": "strong", "valid_users": 0.15, "test_users": 0.15},
    {"kind": "random_holdout"},
]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(7)
    seqs = random_sequences(rng, 300, n_items=60, max_len=20)
    # Interleaved times so that the temporal cut falls inside many sequences.
    ts = [sorted(rng.integers(0, 10_000, len(s)).tolist()) for s in seqs]
    return make_store(tmp_path_factory.mktemp("splits") / "s.duckdb", seqs, ALL_SPLITS, ts=ts)


def parts_frame(con: duckdb.DuckDBPyConnection, split: str) -> dict[str, np.ndarray]:
    return con.execute(
        """SELECT s.seq_id, s.position, s.part, e.ts, q.length
           FROM split_events s JOIN events e USING (seq_id, position) JOIN sequences q USING (seq_id)
           WHERE s.split = ? ORDER BY s.seq_id, s.position""",
        [split],
    ).fetchnumpy()


def corrupted_copy(src: Path, dst: Path) -> duckdb.DuckDBPyConnection:
    shutil.copyfile(src, dst)
    return duckdb.connect(str(dst))


def recheck(con: duckdb.DuckDBPyConnection, split: str) -> dict:
    kind, params = con.execute("SELECT kind, params FROM splits WHERE split = ?", [split]).fetchone()
    return check_split(con, split, kind, json.loads(params))


def test_every_split_assigns_every_event_once(store_path: Path) -> None:
    with Store.open(store_path) as s:
        n_events = s.counts()["events"]
        assert s.split_names() == ["holdout", "loo", "random", "strong", "temporal"]
        for name in s.split_names():
            row = s.con.execute(
                "SELECT count(*), count(DISTINCT (seq_id, position)) FROM split_events WHERE split = ?", [name]
            ).fetchone()
            assert row == (n_events, n_events), name
            # the stored checks re-run clean on an untouched store
            assert recheck(s.con, name)["every_event_assigned"] is True


def test_random_sequence_keeps_sequences_whole(store_path: Path) -> None:
    with Store.open(store_path) as s:
        f = parts_frame(s.con, "random")
        per_seq = {}
        for seq, part in zip(f["seq_id"], f["part"], strict=True):
            per_seq.setdefault(int(seq), set()).add(int(part))
        assert all(len(p) == 1 for p in per_seq.values())
        counts = np.bincount([next(iter(p)) for p in per_seq.values()], minlength=3)
        assert counts.tolist() == [240, 30, 30]  # 80/10/10 of 300 sequences
        assert s.split_info("random")["checks"]["sequence_in_one_split"] is True


def test_random_sequence_leak_is_caught(store_path: Path, tmp_path: Path) -> None:
    con = corrupted_copy(store_path, tmp_path / "bad.duckdb")
    seq = con.execute("SELECT seq_id FROM split_events WHERE split='random' AND part=0 LIMIT 1").fetchone()[0]
    con.execute("UPDATE split_events SET part = 2 WHERE split='random' AND seq_id = ? AND position = 0", [seq])
    with pytest.raises(StoreError, match=rf"sequence {seq} lies in more than one split"):
        recheck(con, "random")
    con.close()


def test_leaky_strategy_fails_the_build_and_leaves_no_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    honest = splits_mod._random_sequence

    def leaky(con, spec, rng):  # the real strategy, then one event of a training sequence moved to test
        params = honest(con, spec, rng)
        con.execute(
            """UPDATE split_events SET part = 2 WHERE split = ? AND position = 0 AND seq_id =
               (SELECT min(seq_id) FROM split_events WHERE split = ? AND part = 0)""",
            [spec.name, spec.name],
        )
        return params

    monkeypatch.setattr(splits_mod, "_random_sequence", leaky)
    path = tmp_path / "leaky.duckdb"
    seqs = [[1, 2, 3, 4]] * 20
    with pytest.raises(StoreError, match="lies in more than one split"):
        make_store(path, seqs)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file or spill folder left behind either


def test_temporal_no_training_event_after_cut(store_path: Path) -> None:
    with Store.open(store_path) as s:
        params = s.split_info("temporal")["params"]
        f = parts_frame(s.con, "temporal")
    train, valid, test = (f["ts"][f["part"] == p] for p in (0, 1, 2))
    assert train.max() < params["valid_cut"] <= valid.min()
    assert valid.max() < params["test_cut"] <= test.min()
    # roughly 80/10/10 of events
    assert abs(len(test) / len(f["ts"]) - 0.1) < 0.03
    assert abs(len(valid) / len(f["ts"]) - 0.1) < 0.03


def test_temporal_leak_is_caught(store_path: Path, tmp_path: Path) -> None:
    con = corrupted_copy(store_path, tmp_path / "bad.duckdb")
    con.execute(
        """UPDATE split_events SET part = 0 WHERE split = 'temporal' AND (seq_id, position) IN
           (SELECT (seq_id, position) FROM split_events WHERE split = 'temporal' AND part = 2 LIMIT 1)"""
    )
    with pytest.raises(StoreError, match="training event at .* is after the cut"):
        recheck(con, "temporal")
    con.close()


def test_temporal_explicit_cuts_and_missing_timestamps(tmp_path: Path) -> None:
    seqs = [[1, 2, 3], [4, 5, 6]]
    ts = [[10, 20, 30], [15, 25, 35]]
    p = make_store(tmp_path / "a.duckdb", seqs, [{"kind": "temporal", "valid_cut": 20, "test_cut": 30}], ts=ts)
    with Store.open(p) as s:
        f = parts_frame(s.con, "temporal")
    assert f["part"].tolist() == [0, 1, 2, 0, 1, 2]
    with pytest.raises(InputError, match="no timestamp"):
        make_store(tmp_path / "b.duckdb", seqs, [{"kind": "temporal"}])
    assert not (tmp_path / "b.duckdb").exists()
    with pytest.raises(ConfigError, match="after test_cut"):
        make_store(tmp_path / "c.duckdb", seqs, [{"kind": "temporal", "valid_cut": 31, "test_cut": 30}], ts=ts)


def test_leave_last_out_targets_follow_history(store_path: Path) -> None:
    with Store.open(store_path) as s:
        f = parts_frame(s.con, "loo")
    pos, part, length = f["position"], f["part"], f["length"]
    long = length >= 3
    assert np.all(part[long & (pos == length - 1)] == Part.TEST)
    assert np.all(part[long & (pos == length - 2)] == Part.VALID)
    assert np.all(part[long & (pos < length - 2)] == Part.TRAIN)
    assert np.all(part[~long] == Part.TRAIN)  # shorter than min_length: all training
    assert (part == Part.TEST).sum() == len(np.unique(f["seq_id"][long]))


def test_leave_last_out_leak_is_caught(store_path: Path, tmp_path: Path) -> None:
    con = corrupted_copy(store_path, tmp_path / "bad.duckdb")
    # swap test and training roles inside one long sequence: its target now precedes history
    seq = con.execute("SELECT seq_id FROM sequences WHERE length >= 4 LIMIT 1").fetchone()[0]
    con.execute("UPDATE split_events SET part = 2 WHERE split = 'loo' AND seq_id = ? AND position = 0", [seq])
    con.execute(
        """UPDATE split_events SET part = 0 WHERE split = 'loo' AND seq_id = ?
           AND position = (SELECT length - 1 FROM sequences WHERE seq_id = ?)""",
        [seq, seq],
    )
    with pytest.raises(StoreError, match=rf"sequence {seq} has a target before"):
        recheck(con, "loo")
    con.close()


def test_random_holdout_per_user_proportions(store_path: Path) -> None:
    with Store.open(store_path) as s:
        f = parts_frame(s.con, "holdout")
    for seq in np.unique(f["seq_id"]):
        sel = f["seq_id"] == seq
        n = int(sel.sum())
        counts = np.bincount(f["part"][sel], minlength=3)
        assert counts[0] >= 1, "every user keeps a training event"
        want_test = int(np.floor(n * 0.1 + 0.5))
        want_valid = int(np.floor(n * 0.1 + 0.5))
        if want_test + want_valid <= n - 1:
            assert counts[1:].tolist() == [want_valid, want_test], (seq, n, counts)
        assert counts.sum() == n
    # the held-out events are drawn at random: not always the last ones
    last = f["position"] == f["length"] - 1
    assert 0 < (f["part"][last] == Part.TEST).mean() < 1


def test_strong_fold_in_and_scored_parts(store_path: Path) -> None:
    with Store.open(store_path) as s:
        f = parts_frame(s.con, "strong")
        info = s.split_info("strong")
    assert info["params"]["held_out"] == {"valid": 45, "test": 45}
    roles: dict[int, set[int]] = {}
    for seq, part in zip(f["seq_id"], f["part"], strict=True):
        roles.setdefault(int(seq), set()).add(int(part))
    valid_users = [q for q, p in roles.items() if p & {Part.VALID, Part.VALID_INPUT}]
    test_users = [q for q, p in roles.items() if p & {Part.TEST, Part.TEST_INPUT}]
    assert len(valid_users) == 45 and len(test_users) == 45
    for q in valid_users:
        assert roles[q] == {Part.VALID, Part.VALID_INPUT}  # both a fold-in and a scored part, no training
    for q in test_users:
        assert roles[q] == {Part.TEST, Part.TEST_INPUT}
    for q in valid_users + test_users:
        sel = f["seq_id"] == q
        n = int(sel.sum())
        n_fold = int(np.isin(f["part"][sel], [Part.VALID_INPUT, Part.TEST_INPUT]).sum())
        assert n >= 5
        assert n_fold == min(max(1, int(np.floor(n * 0.8))), n - 1)


def test_strong_leak_is_caught(store_path: Path, tmp_path: Path) -> None:
    con = corrupted_copy(store_path, tmp_path / "bad.duckdb")
    seq = con.execute("SELECT seq_id FROM split_events WHERE split='strong' AND part=4 LIMIT 1").fetchone()[0]
    con.execute("UPDATE split_events SET part = 0 WHERE split='strong' AND seq_id = ? AND part = 4", [seq])
    with pytest.raises(StoreError, match="lies in more than one split"):
        recheck(con, "strong")
    con.close()


def test_unassigned_event_is_caught(store_path: Path, tmp_path: Path) -> None:
    con = corrupted_copy(store_path, tmp_path / "bad.duckdb")
    con.execute("DELETE FROM split_events WHERE split = 'holdout' AND seq_id = 0 AND position = 0")
    with pytest.raises(StoreError, match="1 events have no part"):
        recheck(con, "holdout")
    con.close()


def test_strong_by_time_folds_in_the_earliest_events(tmp_path: Path) -> None:
    seqs = [list(range(10))] * 10
    p = make_store(
        tmp_path / "t.duckdb", seqs, [{"kind": "strong", "valid_users": 2, "test_users": 2, "foldin": "time"}]
    )
    with Store.open(p) as s:
        f = parts_frame(s.con, "strong")
    held = np.isin(f["part"], [1, 2, 3, 4])
    assert held.sum() == 40
    fold = np.isin(f["part"], [3, 4])
    assert set(f["position"][fold].tolist()) == set(range(8))
    assert set(f["position"][held & ~fold].tolist()) == {8, 9}


def test_splits_are_seeded(tmp_path: Path) -> None:
    seqs = random_sequences(np.random.default_rng(1), 100)
    spec = [{"kind": "random_sequence"}]
    parts = []
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        p = make_store(tmp_path / f"{name}.duckdb", seqs, spec, seed=seed)
        with Store.open(p) as s:
            parts.append(parts_frame(s.con, "random")["part"])
    assert np.array_equal(parts[0], parts[1])
    assert not np.array_equal(parts[0], parts[2])


def test_split_streams_differ_by_full_name(tmp_path: Path) -> None:
    # names sharing their first 8 characters must still draw from their own streams
    seqs = random_sequences(np.random.default_rng(2), 100)
    spec = [{"kind": "random_sequence", "name": "random_s1"}, {"kind": "random_sequence", "name": "random_s2"}]
    p = make_store(tmp_path / "n.duckdb", seqs, spec)
    with Store.open(p) as s:
        a, b = parts_frame(s.con, "random_s1")["part"], parts_frame(s.con, "random_s2")["part"]
    assert not np.array_equal(a, b)


def test_add_split_is_atomic_and_refuses_duplicates(store_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "copy.duckdb"
    shutil.copyfile(store_path, path)
    with Store.open(path) as s:
        before = s.checksum
    name = add_split(str(path), {"kind": "leave_last_out", "name": "loo2", "min_length": 5})
    with Store.open(path) as s:
        assert name in s.split_names() and s.checksum != before
        assert s.con.execute("SELECT count(*) FROM vocab WHERE split = 'loo2'").fetchone()[0] > 4
        unchanged = s.checksum
    with pytest.raises(ConfigError, match=r"defined twice: a split of that name is already in the store, from an earlier -s of this build or an earlier add-split .* e\.g\. random_sequence:name=loo22\)"):
        add_split(str(path), {"kind": "random_sequence", "name": "loo2"})
    with Store.open(path) as s:
        assert s.checksum == unchanged


def test_parts_and_history() -> None:
    assert history_parts(Part.VALID) == (Part.TRAIN, Part.VALID_INPUT)
    assert history_parts(Part.TEST) == (Part.TRAIN, Part.VALID, Part.TEST_INPUT)
    with pytest.raises(ValueError):
        history_parts(Part.TRAIN)
    assert parse_part("Test") == Part.TEST and parse_part(1) == Part.VALID
    with pytest.raises(ConfigError, match="unknown split part"):
        parse_part("dev")


def test_bad_specs_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kind"):
        make_store(tmp_path / "x.duckdb", [[1, 2]], [{"kind": "by_magic"}])
    with pytest.raises(ConfigError, match="valid_fraction"):
        make_store(tmp_path / "y.duckdb", [[1, 2]], [{"kind": "random_sequence", "valid_fraction": 1.5}])
    with pytest.raises(InputError, match="too few"):
        make_store(tmp_path / "z.duckdb", [[1, 2]] * 3, [{"kind": "random_sequence", "valid_fraction": 0.5, "test_fraction": 0.4}])
    assert not any(tmp_path.iterdir())


@pytest.mark.realdata
def test_real_ml100k_splits_pass_their_checks(shared_data: Path, tmp_path: Path) -> None:
    events = read_ml100k(shared_data / "ml-100k" / "u.data")
    specs = [{"kind": "temporal"}, {"kind": "leave_last_out"}, {"kind": "strong"}, {"kind": "random_holdout"}]
    path = build_from_table(tmp_path / "ml.duckdb", events, specs)
    with Store.open(path) as s:
        assert s.counts() == {"sequences": 943, "items": 1682, "events": 100_000, "rated_events": 100_000}
        for name in s.split_names():
            assert recheck(s.con, name)["every_event_assigned"] is True
        params = s.split_info("temporal")["params"]
        f = parts_frame(s.con, "temporal")
        assert f["ts"][f["part"] == 0].max() < params["valid_cut"]
        loo = parts_frame(s.con, "loo")
        assert (loo["part"] == Part.TEST).sum() == 943  # every ml-100k user has >= 20 ratings
        # the test event is one of the user's latest (events are ordered by time)
        last_ts = {int(q): t for q, t, p in zip(loo["seq_id"], loo["ts"], loo["part"], strict=True) if p == Part.TEST}
        latest = s.con.execute("SELECT seq_id, max(ts) FROM events GROUP BY seq_id").fetchall()
        assert all(last_ts[q] == t for q, t in latest)


@pytest.mark.parametrize("value", ["2.5", "1.5", "0", "-3", "0.0"])
@pytest.mark.parametrize("option", ["test_users", "valid_users"])
def test_held_out_users_must_be_a_fraction_or_a_whole_count(store_path: Path, tmp_path: Path, option: str, value: str) -> None:
    """`strong:test_users=2.5` had made 2 test users without a word: a count is whole, a share below 1."""
    from typer.testing import CliRunner

    from segue.cli import app

    path = tmp_path / "copy.duckdb"
    shutil.copyfile(store_path, path)
    with Store.open(path) as s:
        before = s.checksum
    res = CliRunner().invoke(app, ["data", "add-split", str(path), f"strong:name=s2,{option}={value}"], terminal_width=200)
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert f"split 's2' (strong): parameter '{option}' is {float(value) if '.' in value else int(value)}" in out, out
    assert "expected a fraction between 0 and 1 (e.g. 0.1) or a whole count of at least 1" in out, out
    with Store.open(path) as s:
        assert s.checksum == before and "s2" not in s.split_names()


def test_held_out_users_as_a_whole_count_or_a_share(store_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "copy.duckdb"
    shutil.copyfile(store_path, path)
    add_split(str(path), {"kind": "strong", "name": "count", "valid_users": 3, "test_users": 2.0})
    add_split(str(path), {"kind": "strong", "name": "share", "valid_users": 0.1, "test_users": 0.1})
    with Store.open(path) as s:
        held = s.con.execute(
            "SELECT split, part, count(DISTINCT seq_id) FROM split_events WHERE part IN (1, 2) GROUP BY ALL ORDER BY ALL"
        ).fetchall()
    assert [r for r in held if r[0] == "count"] == [("count", 1, 3), ("count", 2, 2)]
    assert [r for r in held if r[0] == "share"] == [("share", 1, 30), ("share", 2, 30)]
