"""The server's scheduled drift check of its own feature log, and its figures on /metrics."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from segue.data.sources.base import Chunk, ListSource
from segue.data.store import BuildConfig, build_store
from segue.ops.eventset import from_feature_log, load
from segue.ops.validation import validate
from segue.serving.app import create_app
from segue.serving.cli import serve_in_thread
from segue.serving.drift_watch import DriftWatch, DriftWatchConfig
from servinghelp import dot_folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("drift")
    store = timed_store(root / "store.duckdb")
    return {"root": root, "store": store, "dot": dot_folder(store, root / "dot")}


def timed_store(path: Path, n_items: int = 60, n_seq: int = 300) -> Path:
    """Playlists with event times (a feature log has them, so the reference must too)."""
    rng = np.random.default_rng(0)
    seq_keys, item_keys, positions, ts = [], [], [], []
    for s in range(n_seq):
        artist, n = int(rng.integers(0, 5)), int(rng.integers(3, 12))
        own = [i for i in range(n_items) if i % 5 == artist]
        for j in range(n):
            seq_keys.append(f"pl{s}")
            item_keys.append(f"track:{int(rng.choice(own)) if rng.random() < 0.8 else int(rng.integers(0, n_items))}")
            positions.append(j)
            ts.append(1_700_000_000 + 86_400 * s + 60 * j)
    events = pa.table(
        {"seq_key": seq_keys, "item_key": item_keys, "position": pa.array(positions, pa.int32()), "ts": pa.array(ts, pa.int64())}
    )
    return build_store(ListSource([Chunk(events=events)]), path, BuildConfig(seed=0, splits=[{"kind": "random_sequence"}]))


def training_histories(spec: str) -> list[list[str]]:
    """The reference's sequences as lists of external item ids (what its users would send)."""
    ref = load(spec)
    ids = np.asarray(ref.item_ids).astype(str)
    order = np.argsort(ref.seq, kind="stable")
    seq, item = ref.seq[order], ref.item[order]
    cuts = np.flatnonzero(np.diff(seq)) + 1
    return [ids[part].tolist() for part in np.split(item, cuts)]


def metric(text: str, name: str, labels: str = "") -> float | None:
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" (\S+)"
    m = re.search(r"^" + pattern + r"$", text, flags=re.M)
    return None if m is None else float(m.group(1))


def wait_for(c: httpx.Client, outcome: str, after: float = 0.0, timeout: float = 60.0) -> str:
    """/metrics once a check that began reading the log after `after` has had `outcome`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = c.get("/metrics").text
        began = metric(text, "segue_drift_last_check_timestamp_seconds") or 0.0
        if began > after and (metric(text, "segue_drift_checks_total", f'outcome="{outcome}"') or 0) >= 1:
            return text
        time.sleep(0.1)
    raise AssertionError(f"no {outcome} check within {timeout} s:\n{text}")


def test_the_server_checks_its_feature_log_on_a_schedule_and_exposes_distances(folders, caplog) -> None:
    spec = f"store:{folders['store']}#random/train"
    flog = folders["root"] / "flog"
    watch = DriftWatch(DriftWatchConfig(reference=spec, interval_s=0.3, min_requests=20), flog)
    app = create_app(folders["dot"], store=folders["store"], feature_log=flog, drift_watch=watch, use_env_admin_key=False)
    caplog.set_level(logging.INFO, logger="segue.drift")
    with serve_in_thread(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        # Nothing logged yet: checks are skipped, no distances are shown.
        text = wait_for(c, "skipped")
        assert metric(text, "segue_drift_passed") is None and "segue_drift_distance" not in text

        # Traffic like the training data: every feature within its limit.
        for history in training_histories(spec):
            assert c.post("/v1/recommend", json={"history": history, "n": 3}).status_code == 200
        text = wait_for(c, "pass", after=time.time())
        assert metric(text, "segue_drift_passed") == 1
        # The figures are those of `segue validate` on the same two event sets.
        direct = validate(spec, from_feature_log(flog))
        for f in direct.features:
            if f.skipped is None:
                shown = metric(text, "segue_drift_distance", f'feature="{f.name}"')
                assert shown == pytest.approx(f.distance, abs=1e-6), f.name
                assert metric(text, "segue_drift_feature_passed", f'feature="{f.name}"') == 1
        assert metric(text, "segue_drift_limit", 'feature="popularity"') == pytest.approx(
            direct.feature("popularity").limit, abs=1e-6
        )

        # A shifted week: everyone asks about the same rare track, many times over.
        for _ in range(150):
            c.post("/v1/recommend", json={"history": ["track:59", "track:59", "track:58"], "n": 3})
        text = wait_for(c, "fail", after=time.time())
        # A second worker's watch on the same log sees the failure but leaves the alert to the first.
        other = DriftWatch(DriftWatchConfig(reference=spec, min_requests=20), flog)
        deadline = time.monotonic() + 10  # /metrics may say "fail" just before the alert is logged
        while not any(r.levelno == logging.WARNING and r.name == "segue.drift" for r in caplog.records):
            assert time.monotonic() < deadline, "no drift alert logged"
            time.sleep(0.02)
        n_alerts = sum(r.levelno == logging.WARNING for r in caplog.records if r.name == "segue.drift")
        assert other.check() == "fail" and not other.holds_alerts()
        assert sum(r.levelno == logging.WARNING for r in caplog.records if r.name == "segue.drift") == n_alerts
        assert "another worker alerts" in caplog.records[-1].getMessage()
    assert metric(text, "segue_drift_passed") == 0
    assert metric(text, "segue_drift_feature_passed", 'feature="popularity"') == 0
    assert metric(text, "segue_drift_distance", 'feature="popularity"') > metric(
        text, "segue_drift_limit", 'feature="popularity"'
    )
    alerts = [r for r in caplog.records if r.name == "segue.drift" and r.levelno == logging.WARNING]
    assert alerts and "drift alert" in alerts[0].getMessage() and "popularity" in alerts[0].getMessage()
    assert watch._thread is None  # stopped with the server
    # The first watch stopped and let the lock go: the second now alerts.
    assert other.check() == "fail" and other.holds_alerts()
    assert caplog.records[-1].levelno == logging.WARNING and "drift alert" in caplog.records[-1].getMessage()
    other.release_alerts()


def test_serve_refuses_a_bad_drift_reference_before_opening_the_port(folders, tmp_path) -> None:
    from segue.cli import app

    result = CliRunner().invoke(
        app,
        ["serve", "--model", str(folders["dot"]), "--drift-reference", "store:x.duckdb?a", "--port", "1"],
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "'store:x.duckdb?a': option 'a' is not key=value" in " ".join(result.output.split())
    bad = tmp_path / "t.toml"
    bad.write_text("[drift]\npopularity = 7\n")
    result = CliRunner().invoke(
        app,
        ["serve", "--model", str(folders["dot"]), "--drift-reference", "store:x.duckdb", "--drift-thresholds", str(bad)],
    )
    assert result.exit_code == 2 and "drift.popularity" in " ".join(result.output.split())
