"""Walk s10 (operations loop): webhook URLs, the drift thread's survival, drift options at start-up."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

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
    assert "--drift-interval needs --drift-reference" in refused("--drift-interval", "5")
    assert "--drift-interval, --drift-webhook need --drift-reference" in refused("--drift-interval", "5", "--drift-webhook", "http://x/")
    # refused before the banner: "serving ... page: http://..." and then an error misled
    out = refused("--admin-port", "2")
    assert "--admin-port is for several workers" in out and "serving" not in out and "page:" not in out
    assert "--drift-webhook" in refused("--drift-webhook", "http://127.0.0.1:9/x")


# --- promotion: the alias and the server must not disagree (F14, F2) ---------------------------


class _Reload(BaseHTTPRequestHandler):
    """A reload endpoint that records production at the moment the reload is asked for, then
    answers `status` (or, with interrupt, Ctrl-Cs the caller while the reload is under way)."""

    seen: list[str | None] = []
    status = 200
    interrupt = False
    reg: Any = None

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append(type(self).reg.alias("m", "production"))
        if type(self).interrupt:
            os.kill(os.getpid(), signal.SIGINT)  # the caller's Ctrl-C, the reload still going
            time.sleep(1.0)
        body = json.dumps({"model": {"run_id": "m-vX", "version": "x"}, "previous": None}).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def reg_and_hook(tmp_path: Path):
    from segue.data.store import Store
    from segue.ops.registry import Registry
    from servinghelp import dot_folder, named_store, popularity_folder

    s = named_store(tmp_path / "s.duckdb")
    with Store.open(s) as st:
        checksum = st.checksum
    reg = Registry(tmp_path / "reg")
    for folder in (popularity_folder(s, tmp_path / "pop"), dot_folder(s, tmp_path / "dot")):
        reg.register("m", folder, store_checksum=checksum, split="random")
    handler = type("Reload", (_Reload,), {"seen": [], "status": 200, "interrupt": False, "reg": reg})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield reg, handler, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_the_alias_moves_before_the_reload_and_a_ctrl_c_leaves_it_on_what_the_server_loads(reg_and_hook, caplog) -> None:
    from segue.ops.registry import switch_production

    reg, handler, url = reg_and_hook
    reg.promote("m", "1")
    out = switch_production(reg, "m", "2", server=url, admin_key="k")
    assert handler.seen == ["2"] and reg.alias("m", "production") == "2" and out["served"]["run_id"] == "m-vX"
    # Ctrl-C while the server reloads (it goes on without the caller): the registry already names
    # the version the server is moving to, and the log says so.
    handler.interrupt = True
    # Python's own Ctrl-C handler for the call: pytest-xdist's workers ignore SIGINT
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            switch_production(reg, "m", "1", server=url, admin_key="k")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert handler.seen[-1] == "1" and reg.alias("m", "production") == "1"
    assert "production is version 1 (was 2)" in caplog.text and "segue registry promote m 2" in caplog.text


def test_a_refused_or_unanswered_reload_puts_the_alias_and_tags_back(reg_and_hook, tmp_path: Path) -> None:
    from segue.errors import SegueError
    from segue.ops.registry import switch_production

    reg, handler, url = reg_and_hook
    reg.promote("m", "1")
    tags = dict(reg.version("m", "2").tags)
    handler.status = 422
    with pytest.raises(SegueError, match="reload refused"):
        switch_production(reg, "m", "2", server=url, admin_key="k")
    assert reg.alias("m", "production") == "1" and reg.version("m", "2").tags == tags
    closed = "http://127.0.0.1:9"
    with pytest.raises(SegueError, match="could not reach"):
        switch_production(reg, "m", "2", server=closed, admin_key="k")
    assert reg.alias("m", "production") == "1" and reg.version("m", "2").tags == tags
    # A rollback refused: production and the rolled-back version's tags as before.
    reg.promote("m", "2")
    before = dict(reg.version("m", "2").tags)
    with pytest.raises(SegueError, match="reload refused"):
        switch_production(reg, "m", None, server=url, admin_key="k")
    assert reg.alias("m", "production") == "2" and reg.version("m", "2").tags == before


def test_the_first_promotion_with_no_server_up_sets_production_and_warns(reg_and_hook) -> None:
    # F2: day one, no server yet: there is nothing served to disagree with.
    from segue.ops.registry import switch_production

    reg, _, _ = reg_and_hook
    assert reg.alias("m", "production") is None
    out = switch_production(reg, "m", "1", server="http://127.0.0.1:9", admin_key="k")
    assert reg.alias("m", "production") == "1" and out["served"] is None
    assert "could not reach the server" in out["warning"] and "models:/m@production" in out["warning"]


# --- the supervisor's /admin/reload (several workers): same body rules as one worker's (F1, F22) ---


@pytest.fixture
def admin(store: Path, tmp_path: Path):
    """A supervisor's admin port over no workers: what it refuses never reaches the reload queue."""
    import socket

    from segue.serving.workers import AdminServer, ServeSettings, Supervisor
    from servinghelp import dot_folder

    model = dot_folder(store, tmp_path / "dot")
    sock = socket.socket()
    sup = Supervisor(ServeSettings(model=model), sock, 2, 5.0)
    server = AdminServer(sup, "127.0.0.1", 0, "k")
    server.start()
    yield sup, f"http://127.0.0.1:{server.httpd.server_port}", model
    server.close()
    sock.close()


def _raw(url: str, head: bytes, body: bytes = b"") -> bytes:
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head + body)
        s.shutdown(socket.SHUT_WR)  # a client that sends nothing more
        return s.recv(4096)


def test_the_supervisor_refuses_reload_bodies_a_one_worker_server_refuses(admin) -> None:
    import httpx

    sup, url, model = admin
    key = {"X-API-Key": "k", "Content-Type": "application/json"}
    for body, field in (
        (b"[1, 2]", "body"),
        (json.dumps({"modle": "/nonexistent"}).encode(), "modle"),
        (json.dumps({"model": 3}).encode(), "model"),
        (b"{not json", "body"),
    ):
        r = httpx.post(url + "/admin/reload", content=body, headers=key, timeout=10)
        assert r.status_code == 422, (body, r.text)
        assert any(field in [str(x) for x in d["loc"]] for d in r.json()["detail"]), r.text
    assert sup.reloads.empty()  # nothing was rolled
    # Content-Length that is no byte count, or past the limit: 400 / 413 at once, no reload.
    for length, code in ((b"-1", b"400"), (b"999999999999", b"413"), (b"abc", b"400")):
        head = b"POST /admin/reload HTTP/1.1\r\nHost: x\r\nX-API-Key: k\r\nContent-Length: " + length + b"\r\n\r\n"
        assert _raw(url, head, b"{}").split(b" ")[1] == code, length
    # A client gone before the end of its body: no reload taken from the part that came.
    head = b"POST /admin/reload HTTP/1.1\r\nHost: x\r\nX-API-Key: k\r\nContent-Length: 50\r\n\r\n"
    assert _raw(url, head, b"{}") == b""
    assert sup.reloads.empty()


def test_the_supervisor_reload_checks_the_store_before_any_worker_moves(admin, store: Path) -> None:
    import threading as th

    from segue.serving.workers import _Reload

    sup, _, model = admin
    req = _Reload(str(model), th.Event(), store="/nonexistent.duckdb")
    sup.reload(req)
    assert req.error is not None and "/nonexistent.duckdb: no store here" in req.error and not sup.workers
    assert sup.settings().store is None  # unchanged


def test_sigterm_with_two_workers_refuses_new_connections_while_requests_drain(store: Path, tmp_path: Path) -> None:
    # F5: the supervisor kept its copy of the listening socket until every worker had exited, so
    # new connections were accepted into the backlog, hung, then were reset.
    import socket
    import subprocess
    import sys

    import httpx

    from servinghelp import dot_folder, kill_tree

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = dot_folder(store, tmp_path / "dot")
    with open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from segue.cli import app; app()", "serve", "--model", str(model), "--port", str(port),
             "--workers", "2", "--graceful-timeout", "20", "--no-feature-log", "--no-access-log"],
            stdout=subprocess.DEVNULL, stderr=err,
        )
    try:
        deadline = time.monotonic() + 180
        while True:  # both workers up: a few /readyz answers from either
            assert proc.poll() is None, (tmp_path / "err.txt").read_text()[-2000:]
            try:
                if all(httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200 for _ in range(4)):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "err.txt").read_text()[-2000:]
            time.sleep(0.3)
        time.sleep(2.0)  # the second worker too
        body = json.dumps({"history": ["1"], "n": 3}).encode()
        slow = socket.create_connection(("127.0.0.1", port))  # a request in flight: half its body sent
        slow.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert proc.poll() is None  # still draining the request in flight
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        slow.sendall(body[5:])
        slow.settimeout(30)
        assert slow.recv(100).startswith(b"HTTP/1.1 200"), "the request in flight is still answered"
        slow.close()
        assert proc.wait(60) == 0
    finally:
        kill_tree(proc)


def test_ops_month_refuses_a_workdir_it_did_not_make(tmp_path: Path) -> None:
    # F7: `--workdir DIR` began with rmtree(DIR): a mistyped `--workdir .` deleted the checkout.
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("my notes")
    proc = subprocess.run(
        [sys.executable, str(root / "bench" / "ops_month.py"), "--workdir", str(precious), "--users", "50", "--items", "50"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert f"--workdir: {precious} exists and is not a segue ops_month folder" in proc.stderr
    assert (precious / "notes.txt").read_text() == "my notes" and sorted(p.name for p in precious.iterdir()) == ["notes.txt"]


def test_rollback_of_an_unknown_model_says_there_is_no_such_model(reg_and_hook) -> None:
    # F13: it said "has no production version to roll back".
    from segue.errors import SegueError

    reg, _, _ = reg_and_hook
    with pytest.raises(SegueError, match=r"no model named 'nosuch' \(models: m\)"):
        reg.rollback("nosuch")
    with pytest.raises(SegueError, match="model 'm' has no production version"):
        reg.rollback("m")


def test_a_failing_drift_check_logs_one_warning_whichever_worker_runs_it(store: Path, tmp_path: Path, caplog) -> None:
    # F12: besides the one `drift alert`, every worker's check logged validate's own WARNING.
    import logging

    flog = _drifting_log(tmp_path / "flog")
    config = DriftWatchConfig(reference=f"store:{store}#random/train", min_requests=5)
    holder, other = DriftWatch(config, flog), DriftWatch(config, flog)
    caplog.set_level(logging.INFO)
    try:
        assert holder.check() == "fail" and other.check() == "fail"
    finally:
        holder.release_alerts()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].name == "segue.drift" and "drift alert" in warnings[0].getMessage()


def test_a_request_cut_by_the_graceful_timeout_is_a_503_not_a_500_with_a_traceback(store: Path, tmp_path: Path) -> None:
    # F6: uvicorn cancels the request's task at the deadline; that answered 500 with a traceback.
    import socket
    import subprocess
    import sys

    import httpx

    from servinghelp import dot_folder

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = dot_folder(store, tmp_path / "dot")
    err_path = tmp_path / "err.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from segue.cli import app; app()", "serve", "--model", str(model), "--port", str(port),
             "--graceful-timeout", "1", "--no-feature-log", "--no-access-log"],
            stdout=subprocess.DEVNULL, stderr=err,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, err_path.read_text()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, err_path.read_text()[-2000:]
            time.sleep(0.2)
        body = json.dumps({"history": ["1"], "n": 3}).encode()
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        slow.settimeout(30)
        answer = slow.recv(200)  # the rest of the body never comes: the deadline cuts it
        slow.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer
        proc.wait(60)  # (uvicorn re-raises the SIGTERM it handled: -15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = err_path.read_text()
    assert "Traceback" not in log and "cut by the graceful shutdown timeout: answered 503" in log


def test_the_bench_server_starts_on_the_port_asked_for(tmp_path: Path) -> None:
    # bench/rolling_restart.py --port: it could only bind a free ephemeral port.
    import socket
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        from serve_workers import make_model, start, stop, wait_serving
    finally:
        sys.path.pop(0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        wanted = s.getsockname()[1]
    proc, port = start(make_model(tmp_path / "m", 200, 8), 2, True, tmp_path / "log.txt", wanted)
    try:
        assert port == wanted
        assert len(wait_serving(proc, wanted, 2, tmp_path / "log.txt", timeout=120)) == 2
    finally:
        stop(proc)
