"""The server's scheduled drift check: `segue validate` of its own feature log against training data.

Every `interval_s` seconds a background thread compares the feature log (every logged request's
history, segue.ops.eventset.from_feature_log) against `reference` (an event-set spec, typically
`store:PATH#SPLIT/train`, the data the served model was trained on) with the same checks and
thresholds as `segue validate` (segue.ops.validation). The latest result is exposed on /metrics:

    segue_drift_distance{feature="popularity"} 0.0123      Chebyshev distance, per checked feature
    segue_drift_limit{feature="popularity"} 0.03           max(threshold, sampling allowance)
    segue_drift_feature_passed{feature="popularity"} 1
    segue_drift_passed 1                                   every feature and the schema passed
    segue_drift_checks_total{outcome="pass|fail|skipped|error"}

A failing check logs a warning (the validation's one-line summary, on `segue.drift`), optionally
POSTs the JSON result to `webhook`, and, with `out`, writes drift.json and drift.html there.
A log with fewer than `min_requests` histories is skipped (nothing to judge yet). A check that
raises (reading, validating, alerting) is logged and counted as an error, and the schedule goes
on: the thread never dies of one check. The reference is read once and kept. The thread runs at a lower CPU priority (Linux nice +10 for that thread) so a
check does not compete with requests on a busy host. With several workers each runs its own check
of the shared log: /metrics (whichever worker answers) sums their segue_drift_checks_total and
shows each live worker's latest figures labelled `worker="PID"` (app.Metrics); only the worker holding an
exclusive lock on the log folder's `.drift-alerts.lock` (flock: the first to try; released when it
stops or dies, then taken by the next check of another) alerts, so a failure is logged, posted and
written once, not once per worker.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from segue.config import Config
from segue.errors import ConfigError, SegueError
from segue.serving.lifecycle import Family, MetricValues, Sample, render_metrics

log = logging.getLogger("segue.drift")


class DriftWatchConfig(Config):
    reference: str  # event-set spec (segue validate's REFERENCE), e.g. store:s.duckdb#random/train
    interval_s: float = Field(3600.0, gt=0)
    thresholds: Path | None = None  # thresholds TOML (default: segue validate's built-in)
    webhook: str | None = None  # POST the JSON result here when the check fails
    out: Path | None = None  # folder for the latest drift.json / drift.html
    min_requests: int = Field(20, ge=1)  # fewer logged histories than this: skipped


def check_drift_config(config: DriftWatchConfig) -> None:
    """Parse the reference spec, check that what it names is there (a store with that split and
    part, a file or folder), read the thresholds file and check the webhook URL: a SegueError names
    what is wrong before the port opens, not at the first check an interval later. The reference's
    events are read only by the first check."""
    from segue.ops.alerts import check_webhook_url
    from segue.ops.eventset import parse_spec
    from segue.ops.thresholds import load_thresholds

    spec = parse_spec(config.reference)
    load_thresholds(config.thresholds)
    if config.webhook is not None:
        check_webhook_url(config.webhook, "--drift-webhook")
    _check_reference_present(spec, config.reference)  # last: it opens the store


def _check_reference_present(spec: Any, text: str) -> None:
    """A store must open and hold the split (and part); any other kind's path must exist."""
    if spec.kind == "store":
        from segue.data.splits import parse_part
        from segue.data.store import Store

        with Store.open(spec.path or "") as store:
            if spec.split is not None:
                store.require_split(spec.split)
        if spec.part is not None:
            parse_part(spec.part)
    elif spec.path is not None and not Path(spec.path).exists():
        raise ConfigError(f"--drift-reference '{text}': {spec.path} does not exist")


class DriftWatch:
    """Runs the check on a schedule in a daemon thread; `render()` gives the /metrics lines."""

    def __init__(self, config: DriftWatchConfig, log_folder: str | Path) -> None:
        from segue.ops.eventset import parse_spec
        from segue.ops.thresholds import load_thresholds

        self.config = config
        self.log_folder = Path(log_folder)
        self.spec = parse_spec(config.reference)  # a bad spec or thresholds file fails at start-up
        self.thresholds = load_thresholds(config.thresholds)
        self._reference: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.result: Any = None  # the latest segue.ops.validation.Result
        self.last_check: float | None = None
        self.last_seconds: float | None = None
        self.last_outcome: str | None = None
        self.last_error: str | None = None
        self.outcomes = {"pass": 0, "fail": 0, "skipped": 0, "error": 0}
        self._alert_fd: int | None = None  # open while this process holds .drift-alerts.lock
        self.values = MetricValues()  # its /metrics figures (attach: the app's)
        self._features: set[str] = set()  # label texts of the features in self.values
        self._publish()

    def holds_alerts(self) -> bool:
        """Whether this watch alerts: it holds (or now takes) the log folder's alert lock."""
        import fcntl

        if self._alert_fd is not None:
            return True
        self.log_folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_folder / ".drift-alerts.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another worker's watch holds it
            os.close(fd)
            return False
        self._alert_fd = fd
        return True

    def release_alerts(self) -> None:
        if self._alert_fd is not None:
            os.close(self._alert_fd)  # closing the descriptor drops the flock
            self._alert_fd = None

    # --- the check -------------------------------------------------------------------------
    def check(self) -> str:
        """Run one check now; returns its outcome (pass, fail, skipped or error)."""
        from segue.ops.eventset import from_feature_log, load
        from segue.ops.validation import validate

        started, t = time.time(), time.perf_counter()
        result = None
        error = None
        try:
            if self._reference is None:
                self._reference = load(self.spec)
            candidate = from_feature_log(self.log_folder)
            n = len(set(candidate.seq.tolist()))
            if n < self.config.min_requests:
                outcome = "skipped"
                error = f"{n} logged histories, fewer than min_requests={self.config.min_requests}"
            else:
                # Not validate's own WARNING: with several workers each would log it every check;
                # the alert below is logged once, by the holder of the alert lock.
                result = validate(self._reference, candidate, self.thresholds, log_summary=False)
                outcome = "pass" if result.passed else "fail"
        except SegueError as e:  # an empty or absent log is no error of the server's
            outcome, error = ("skipped" if "no logged request" in str(e) or "no feature log" in str(e) else "error"), str(e)
        except Exception as e:  # noqa: BLE001 (a failing check must never stop the server)
            log.exception("drift check failed")
            outcome, error = "error", f"{type(e).__name__}: {e}"
        seconds = time.perf_counter() - t
        with self._lock:
            self.outcomes[outcome] += 1
            self.last_check, self.last_seconds, self.last_outcome, self.last_error = started, seconds, outcome, error
            if result is not None:
                self.result = result
        self._publish(outcome)
        try:
            self._report(outcome, result, error, seconds)
        except Exception:  # noqa: BLE001 (alerting or writing drift.json failed: the schedule goes on)
            log.exception("drift check %s: reporting it failed", outcome)
        return outcome

    def _report(self, outcome: str, result: Any, error: str | None, seconds: float) -> None:
        """Log (and with the alert lock: POST and write) one check's outcome."""
        from segue.ops.validation import write_result

        if outcome in ("fail", "error") and not self.holds_alerts():
            log.info("drift check %s in %.2f s: another worker alerts", outcome, seconds)
            return
        if outcome == "fail":
            log.warning("drift alert: %s", result.summary())  # type: ignore[union-attr]
            if self.config.webhook:
                from segue.ops.alerts import post_webhook

                result.webhook = post_webhook(self.config.webhook, result.to_dict())  # type: ignore[union-attr]
                if not result.webhook["ok"]:  # type: ignore[union-attr]
                    log.warning("drift webhook %s failed: %s", self.config.webhook, result.webhook["error"])  # type: ignore[union-attr]
        elif outcome == "error":
            log.error("drift check error: %s", error)
        else:
            log.info("drift check %s in %.2f s%s", outcome, seconds, f" ({error})" if error else "")
        if result is not None and self.config.out is not None:
            write_result(result, self.config.out / "drift.json", self.config.out / "drift.html")

    # --- the schedule ----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="segue-drift-watch")
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.release_alerts()

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: nice one thread, not the server
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        while not self._stop.wait(self.config.interval_s):
            try:
                self.check()
            except Exception as e:  # noqa: BLE001 (the thread must outlive any one check)
                log.exception("drift check failed")
                with self._lock:
                    self.outcomes["error"] += 1
                    self.last_outcome, self.last_error = "error", f"{type(e).__name__}: {e}"
                self._publish("error")

    # --- /metrics --------------------------------------------------------------------------
    def attach(self, values: MetricValues) -> None:
        """Keep the /metrics figures in `values` (the app's: shared by the workers of a server)."""
        with self._lock:
            self.values = values
            self._features = set()
        self._publish()

    def _publish(self, outcome: str | None = None) -> None:
        """Put the latest check's figures into `self.values` (after each check, `outcome` counted)."""
        with self._lock:
            result, last, seconds = self.result, self.last_check, self.last_seconds
            counts = [((("segue_drift_checks_total", f'outcome="{k}"'), float(k == outcome))) for k in self.outcomes]
            self.values.count(counts)
            gauges: list[tuple[Sample, float]] = []
            if last is not None:
                gauges += [(("segue_drift_last_check_timestamp_seconds", ""), last), (("segue_drift_check_seconds", ""), seconds or 0.0)]
            if result is not None:
                checked = [f for f in result.features if f.skipped is None]
                features = {f'feature="{_esc(f.name)}"' for f in checked}
                for labels in self._features - features:  # checked last time, skipped now
                    gauges += [((n, labels), math.nan) for n in ("segue_drift_distance", "segue_drift_limit", "segue_drift_feature_passed")]
                self._features = features
                for f in checked:
                    labels = f'feature="{_esc(f.name)}"'
                    gauges += [(("segue_drift_distance", labels), f.distance), (("segue_drift_limit", labels), f.limit),
                               (("segue_drift_feature_passed", labels), float(f.passed))]
                gauges += [(("segue_drift_schema_errors", ""), float(len(result.schema_errors))),
                           (("segue_drift_passed", ""), float(result.passed))]
            self.values.gauge(gauges)

    def render(self) -> str:
        """Prometheus text lines for the latest check (none of the gauges before the first one)."""
        return render_metrics(DRIFT_FAMILIES, *self.values.gather())


DRIFT_FAMILIES: list[Family] = [
    ("segue_drift_checks_total", "counter", "Scheduled drift checks of the feature log, by outcome."),
    ("segue_drift_last_check_timestamp_seconds", "gauge", "When the latest check began reading the log (Unix time)."),
    ("segue_drift_check_seconds", "gauge", "How long the latest check took."),
    ("segue_drift_distance", "gauge", "Chebyshev distance per feature, feature log against the reference (latest completed check)."),
    ("segue_drift_limit", "gauge", "Largest distance each feature may have: max(threshold, sampling allowance)."),
    ("segue_drift_feature_passed", "gauge", "1 if the feature's distance is within its limit."),
    ("segue_drift_schema_errors", "gauge", "Schema errors found by the latest completed check."),
    ("segue_drift_passed", "gauge", "1 if the latest completed check passed (every feature and the schema)."),
]


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
