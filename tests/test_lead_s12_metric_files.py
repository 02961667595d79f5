"""The several-worker metrics files (walk s12 metrics F1, F2): a scrape never shows half a
request's batch (seqlock), and a folder that cannot hold a worker's values (full: ENOSPC at
create or growth) costs a warning, never the worker (the sparse file's pages used to SIGBUS)."""

from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path

import pytest

from segue.serving.lifecycle import MetricValues, read_metric_file

BUCKETS = [f'le="{b}"' for b in (0.01, 0.1, 1.0, "+Inf")]


def _batch(i: int) -> list:
    # one request: its counter, cumulative buckets (this one lands in the 0.1 bucket) and count
    seconds_le = [0.0, 1.0, 1.0, 1.0]
    return [(("requests_total", ""), 1.0), *((("seconds_bucket", b), v) for b, v in zip(BUCKETS, seconds_le, strict=True)),
            (("seconds_count", ""), 1.0)]


def test_a_reader_never_sees_half_a_batch(tmp_path: Path) -> None:
    values = MetricValues(tmp_path)
    values.count(_batch(0))  # every series exists before the race
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            values.count(_batch(i))
            i += 1

    t = threading.Thread(target=write)
    t.start()
    torn = 0
    try:
        for _ in range(3000):
            read = read_metric_file(values.path)
            assert read is not None
            c = read[1]
            total, count = c[("requests_total", "")], c[("seconds_count", "")]
            inf, mid = c[("seconds_bucket", 'le="+Inf"')], c[("seconds_bucket", 'le="0.1"')]
            torn += not (total == count == inf == mid)
    finally:
        stop.set()
        t.join()
    assert torn == 0


def _enospc(*args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_no_room_to_create_keeps_the_values_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(os, "posix_fallocate", _enospc)  # a full filesystem
    with caplog.at_level(logging.WARNING, logger="segue.serving"):
        values = MetricValues(tmp_path)
    assert values.path is None and "cannot keep this worker's values" in caplog.text
    assert list(tmp_path.iterdir()) == []  # no half-made file left
    values.count(_batch(0))
    assert values.gather()[0][("requests_total", "")] == 1.0  # its own scrapes still count it


def test_no_room_to_grow_drops_only_new_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    values = MetricValues(tmp_path, size=4096)
    values.count([(("a", ""), 1.0)])
    monkeypatch.setattr(os, "posix_fallocate", _enospc)
    with caplog.at_level(logging.WARNING, logger="segue.serving"):
        for i in range(200):  # far past the first page
            values.count([((f"series_{i}", 'route="/v1/recommend"'), 1.0)])
    assert caplog.text.count("cannot grow") == 1
    values.count([(("a", ""), 1.0)])
    shared = read_metric_file(values.path)
    assert shared is not None and shared[1][("a", "")] == 2.0  # an existing series still counts
    assert values.gather()[0][("series_199", 'route="/v1/recommend"')] == 1.0  # and the process keeps the new ones
