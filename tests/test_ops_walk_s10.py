"""Walk s10 (operations loop): webhook URLs, the drift thread's survival, drift options at start-up."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from datahelp import make_store
from segue.errors import ConfigError
from segue.ops.alerts import post_webhook
from segue.serving.drift_watch import DriftWatch, DriftWatchConfig
from segue.serving.feature_log import FeatureLog


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 40, int(rng.integers(3, 10))).tolist() for _ in range(120)]
    return make_store(tmp_path_factory.mktemp("ops") / "s.duckdb", seqs)


def _drifting_log(folder: Path, n: int = 40) -> Path:
    """`n` requests for items the reference never saw: every check fails (unknown_items)."""
    log = FeatureLog(folder)
    for i in range(n):
        log.append(
            {"ts": 1_700_000_000 + i, "request_id": f"r{i}", "endpoint": "/v1/recommend", "model": {"run_id": "x"},
             "inputs": {"history": [f"new{i}", f"new{i + 1}", "new0"], "n": 5},
             "outputs": {"items": [{"id": "new0", "score": 1.0}]}, "warnings": []}
        )  # fmt: skip
    log.close()
    return folder


def test_a_malformed_webhook_url_is_reported_never_raised_and_checked_up_front() -> None:
    # F3/F4: the Request constructor's ValueError escaped post_webhook's try block.
    from segue.ops.alerts import check_webhook_url

    hook = post_webhook("notaurl", {"x": 1})
    assert hook["ok"] is False and hook["status"] is None and "notaurl" in hook["error"]
    for bad in ("notaurl", "ftp://host/x", "http://", "http://h:port/x"):
        with pytest.raises(ConfigError, match="--drift-webhook"):
            check_webhook_url(bad, "--drift-webhook")
    check_webhook_url("https://hooks.example.com:8443/a?b=c")


def test_validate_refuses_a_malformed_webhook_before_any_work(store: Path, tmp_path: Path) -> None:
    from segue.cli import app

    out = tmp_path / "vt"
    res = CliRunner().invoke(app, ["validate", str(store), str(store), "-o", str(out), "--webhook", "notaurl"])
    assert res.exit_code == 2, res.output  # a usage error, not validate's "threshold crossed" 1
    assert "--webhook 'notaurl': not a URL" in " ".join(res.output.split()) and "Traceback" not in res.output
    assert not out.exists()


def test_the_drift_thread_survives_a_failing_webhook_and_a_failing_report(store: Path, tmp_path: Path) -> None:
    # F4: the first failing check with a bad webhook killed the thread; checks stopped for good.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")  # out= a file: writing drift.json fails at every check
    config = DriftWatchConfig(
        reference=f"store:{store}#random/train", interval_s=0.1, webhook="notaurl", out=blocker / "sub", min_requests=5
    )
    watch = DriftWatch(config, _drifting_log(tmp_path / "flog"))
    watch.start()
    try:
        deadline = time.monotonic() + 60
        while watch.outcomes["fail"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watch.outcomes["fail"] >= 3, watch.outcomes  # still checking on schedule
        assert watch._thread is not None and watch._thread.is_alive()
        assert watch.result.webhook["ok"] is False  # reported in the result, not raised
    finally:
        watch.stop()


def test_serve_checks_every_drift_option_before_opening_the_port(store: Path, tmp_path: Path) -> None:
    # F4 (webhook), F10 (reference that cannot be read), F11 (options that would do nothing).
    from segue.cli import app
    from servinghelp import dot_folder

    base = ["serve", "--model", str(dot_folder(store, tmp_path / "dot")), "--port", "1"]

    def refused(*args: str) -> str:
        res = CliRunner().invoke(app, [*base, *args])
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output
        return " ".join(res.output.split())

    ref = f"store:{store}#random/train"
    assert "--drift-webhook 'notaurl': not a URL" in refused("--drift-reference", ref, "--drift-webhook", "notaurl")
    assert "nosuch.duckdb: no store here" in refused("--drift-reference", f"store:{tmp_path}/nosuch.duckdb#random/train")
    assert "nosplit" in refused("--drift-reference", f"store:{store}#nosplit/train")
    assert "does not exist" in refused("--drift-reference", f"csv:{tmp_path}/none.csv?user=u&item=i")
    assert "need --drift-reference" in refused("--drift-interval", "5")
    assert "--drift-webhook" in refused("--drift-webhook", "http://127.0.0.1:9/x")
