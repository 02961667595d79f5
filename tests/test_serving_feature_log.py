"""The request feature log: size-based rotation, and its import back into a store as sequences."""

from __future__ import annotations

import json

import pytest

from segue.data.store import BuildConfig, Store, build_store
from segue.errors import InputError
from segue.serving.feature_log import LOG_NAME, FeatureLog, FeatureLogSource


def record(i: int, history: list[str]) -> dict:
    return {"ts": 1_700_000_000 + i, "request_id": f"r{i}", "endpoint": "/v1/recommend",
            "inputs": {"history": history, "n": 3}, "outputs": {"items": [{"id": "x", "score": 1.0}]}, "warnings": []}


def test_rotation_keeps_whole_lines_and_bounded_backups(tmp_path) -> None:
    log = FeatureLog(tmp_path, max_bytes=600, backups=2)
    for i in range(40):
        log.append(record(i, [f"t{i}", f"t{i + 1}"]))
    log.close()
    files = log.files()
    assert [p.name for p in files] == [f"{LOG_NAME}.2", f"{LOG_NAME}.1", LOG_NAME]
    ids = []
    for p in files:
        assert p.stat().st_size <= 600
        ids += [json.loads(line)["request_id"] for line in p.read_text().splitlines()]
    # Oldest records were dropped with the third backup; what is kept is in order and whole.
    assert ids == [f"r{i}" for i in range(40 - len(ids), 40)] and len(ids) < 40


def test_log_imports_as_a_store_of_request_histories(tmp_path) -> None:
    log = FeatureLog(tmp_path / "log", max_bytes=10_000)
    log.append(record(0, ["a", "b", "c"]))
    log.append(record(1, []))  # nothing to learn from: skipped
    log.append(record(2, ["b", "d"]))
    rated = record(3, ["a", "e", "d"])
    rated["inputs"]["ratings"] = [9, None, 2.5]  # a rated profile (the autoencoder's requests)
    log.append(rated)
    log.close()
    store_path = build_store(FeatureLogSource(tmp_path / "log"), tmp_path / "s.duckdb", BuildConfig(splits=[{"kind": "random_sequence", "valid_fraction": 0, "test_fraction": 0}]))
    with Store.open(store_path) as store:
        seqs = store.con.execute(
            """SELECT s.external_id, list(i.external_id ORDER BY e.position)
               FROM events e JOIN sequences s USING (seq_id) JOIN items i USING (item_id)
               GROUP BY s.external_id ORDER BY s.external_id"""
        ).fetchall()
        assert seqs == [("request:r0", ["a", "b", "c"]), ("request:r2", ["b", "d"]), ("request:r3", ["a", "e", "d"])]
        assert store.counts()["items"] == 5
        ratings = store.con.execute(
            """SELECT s.external_id, list(e.rating ORDER BY e.position) FROM events e
               JOIN sequences s USING (seq_id) GROUP BY s.external_id ORDER BY s.external_id"""
        ).fetchall()
        assert ratings == [("request:r0", [None] * 3), ("request:r2", [None] * 2), ("request:r3", [9.0, None, 2.5])]


def test_bad_log_line_names_file_and_line(tmp_path) -> None:
    (tmp_path / LOG_NAME).write_text(json.dumps(record(0, ["a"])) + "\n{broken\n")
    with pytest.raises(InputError, match=r"features\.jsonl:2"):
        list(FeatureLogSource(tmp_path).chunks())
    with pytest.raises(InputError, match="no feature log"):
        list(FeatureLogSource(tmp_path / "absent").chunks())
