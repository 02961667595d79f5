"""The server in production: readiness, graceful shutdown, JSON access logs, several workers.

Real servers throughout: uvicorn in a thread where the test needs to hold the model load back,
`segue serve` subprocesses (one worker, two workers) where signals and log lines are the point.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from segue.serving.app import create_app
from segue.serving.cli import serve_in_thread
from segue.serving.lifecycle import CloseWhenDraining, DeferredApp
from segue.serving.workers import load_engine, map_model_arrays
from servinghelp import (
    dot_folder,
    free_port,
    kill_tree,
    named_store,
    popularity_folder,
    run_load,
    start_serve,
    wait_ready,
)

ADMIN_KEY = "prod-test-key"
HISTORY = ["track:1", "track:6"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prod")
    store = named_store(root / "store.duckdb")
    return {
        "root": root,
        "store": store,
        "pop": popularity_folder(store, root / "pop"),
        "dot": dot_folder(store, root / "dot"),
        "dot2": dot_folder(store, root / "dot2", seed=1),
    }


def slow_request(port: int, body: bytes, request_id: str) -> socket.socket:
    """Send a request's headers and half its body: a request in flight until `finish`."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-Request-ID: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    s.sendall(head + body[: len(body) // 2])
    return s


def finish(s: socket.socket, body: bytes) -> tuple[int, bytes]:
    s.sendall(body[len(body) // 2 :])
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    status = int(data.split(b" ", 2)[1])
    return status, data


# --- readiness (in-thread servers: the test decides when loading ends) -------------------------


def test_readyz_is_503_until_the_model_is_loaded_and_warmed_then_200(folders) -> None:
    release = threading.Event()

    def build():  # the real app, built once the test lets the load go on
        release.wait(30)
        return create_app(folders["dot"], store=folders["store"], use_env_admin_key=False)

    with serve_in_thread(DeferredApp(build)) as server, httpx.Client(base_url=server.url, timeout=10) as c:
        r = c.get("/healthz")
        assert r.status_code == 200 and r.json()["loading"] is True  # alive while loading
        assert c.get("/readyz").status_code == 503
        r = c.post("/v1/recommend", json={"history": HISTORY})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        # a Prometheus scrape while loading succeeds and says so (a 503 read as the target down)
        r = c.get("/metrics")
        assert r.status_code == 200 and "segue_loading 1" in r.text.splitlines()
        release.set()
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        body = c.get("/readyz").json()
        assert body["status"] == "ready" and body["model"]["family"] == "dot"
        assert c.post("/v1/recommend", json={"history": HISTORY}).status_code == 200
        assert c.get("/healthz").json()["model"]["family"] == "dot"
        assert "segue_loading 0" in c.get("/metrics").text.splitlines()


def test_readyz_stays_ready_on_the_old_model_during_reloads(folders) -> None:
    app = create_app(folders["dot"], store=folders["store"], admin_key=ADMIN_KEY)
    with serve_in_thread(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        v1 = c.get("/readyz").json()["model"]["version"]
        codes: list[int] = []
        versions: set[str] = set()
        stop = threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as p:
                while not stop.is_set():
                    r = p.get("/readyz")
                    codes.append(r.status_code)
                    versions.add(r.json().get("model", {}).get("version"))

        t = threading.Thread(target=probe)
        t.start()
        while not codes:  # probing before the first reload and until after the last
            time.sleep(0.01)
        for folder in ("dot2", "dot", "dot2"):
            r = c.post("/admin/reload", json={"model": str(folders[folder])}, headers={"X-API-Key": ADMIN_KEY})
            assert r.status_code == 200
        stop.set()
        t.join()
        v2 = c.get("/readyz").json()["model"]["version"]
    assert len(codes) >= 2 and set(codes) == {200}  # never unready across three reloads
    assert v2 != v1 and versions <= {v1, v2}


def test_while_draining_every_response_closes_its_keep_alive_connection(folders) -> None:
    draining = threading.Event()
    app = CloseWhenDraining(create_app(folders["pop"], use_env_admin_key=False), draining)
    with serve_in_thread(app) as server, httpx.Client(base_url=server.url, timeout=10) as c:
        assert "connection" not in c.get("/healthz").headers  # keep-alive as usual
        draining.set()
        r = c.post("/v1/recommend", json={"history": HISTORY})
        assert r.status_code == 200 and r.headers["connection"] == "close"


# --- one worker: graceful shutdown and the access log -----------------------------------------


def test_sigterm_finishes_requests_in_flight_refuses_new_ones_and_logs_json(folders, tmp_path) -> None:
    port = free_port()
    out, err = tmp_path / "out.jsonl", tmp_path / "err.txt"
    proc = start_serve(
        ["--model", str(folders["pop"]), "--port", str(port), "--feature-log", str(tmp_path / "flog")], out, err
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        r = httpx.post(f"{url}/v1/recommend", json={"history": HISTORY, "n": 3}, headers={"X-Request-ID": "client-id-1"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "client-id-1"
        assert r.json()["request_id"] == "client-id-1"  # the same id in the body
        r = httpx.post(f"{url}/v1/recommend", json={"history": HISTORY}, headers={"X-Request-ID": "an id with spaces"})
        made = r.headers["x-request-id"]
        assert made != "an id with spaces" and len(made) == 32 and r.json()["request_id"] == made
        body = json.dumps({"history": HISTORY, "n": 5}).encode()
        in_flight = [slow_request(port, body, f"in-flight-{i}") for i in range(3)]
        time.sleep(0.3)  # their headers are read: they are requests in progress
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # the listener closes: new connections are refused
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting connections 10 s after SIGTERM"
            time.sleep(0.05)
        results = [finish(s, body) for s in in_flight]
        assert [code for code, _ in results] == [200, 200, 200]
        assert all(b"in-flight-" in data for _, data in results)
        # uvicorn re-raises the signal once it has drained: "ended by SIGTERM", as orchestrators expect.
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        kill_tree(proc)
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.startswith("{")]
    by_id = {x["request_id"]: x for x in lines}
    first = by_id["client-id-1"]
    assert first["path"] == "/v1/recommend" and first["method"] == "POST" and first["status"] == 200
    assert first["model_version"].startswith("popularity-") and first["run_id"] == "pop"
    assert 0 < first["latency_ms"] < 10_000 and first["pid"] == proc.pid
    assert all(by_id[f"in-flight-{i}"]["status"] == 200 for i in range(3))
    assert by_id[made]["status"] == 200
    readyz = [x for x in lines if x["path"] == "/readyz"]
    assert readyz and {x["status"] for x in readyz} <= {200, 503}
    # The feature log has the client's id too: one id finds the request everywhere.
    logged = [json.loads(x)["request_id"] for x in (tmp_path / "flog" / "features.jsonl").read_text().splitlines()]
    assert "client-id-1" in logged and "in-flight-2" in logged


# --- memory maps ---------------------------------------------------------------------------------


def test_model_arrays_are_memory_mapped_read_only_with_the_same_answers(folders) -> None:
    plain = load_engine(folders["dot"], mmap=False)
    mapped = load_engine(folders["dot"])
    assert isinstance(mapped.model.embeddings, np.memmap) and not mapped.model.embeddings.flags.writeable
    assert not isinstance(plain.model.embeddings, np.memmap)
    histories = [np.array([5, 9]), np.array([7])]
    a, b = plain.rank(histories, 10), mapped.rank(histories, 10)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.tokens, y.tokens) and np.allclose(x.scores, y.scores)

    class Held:  # a same-named array of another shape is left alone
        def __init__(self) -> None:
            self.embeddings = np.zeros((2, 2), np.float32)

    assert map_model_arrays(Held(), folders["dot"]) == []


# --- two workers: a rolling restart under load -------------------------------------------------


def ready_workers(proc: subprocess.Popen, err: Path) -> set[int]:
    """Live workers the supervisor has announced as ready (it logs "worker PID ready")."""
    announced = {int(m) for m in re.findall(r"worker (\d+) ready", err.read_text())}
    return announced & {c.pid for c in psutil.Process(proc.pid).children()}


def wait_workers(proc: subprocess.Popen, err: Path, old: set[int], timeout: float = 120.0) -> set[int]:
    """Wait until two ready workers run, neither in `old`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, err.read_text()[-2000:]
        pids = ready_workers(proc, err) - old
        if len(pids) >= 2:
            return pids
        time.sleep(0.1)
    raise AssertionError(f"workers did not come up: {err.read_text()[-2000:]}")


def test_two_workers_share_mapped_arrays_and_restart_one_by_one_under_load_without_a_failure(folders, tmp_path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out, err = tmp_path / "out.jsonl", tmp_path / "err.txt"
    proc = start_serve(
        ["--model", str(folders["dot"]), "--port", str(port), "--workers", "2", "--no-feature-log", "--no-access-log"],
        out,
        err,
    )
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []
    threads: list[threading.Thread] = []
    try:
        wait_ready(url, proc)
        first = wait_workers(proc, err, set())
        for pid in first:  # both map the model's embeddings from the one file
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert str(folders["dot"] / "embeddings.npy") in maps
        threads = run_load(url, 4, stop, counts, errors, HISTORY)
        deadline = time.monotonic() + 60
        while counts["ok"] < 10:  # the load is on before the first worker goes
            assert time.monotonic() < deadline and not counts["failed"], errors[:5]
            time.sleep(0.05)
        served = counts["ok"]
        gone: set[int] = set()
        for pid in sorted(first):  # SIGTERM one worker while the other serves; then the other
            os.kill(pid, signal.SIGTERM)
            gone.add(pid)
            psutil.Process(pid).wait(30)
            wait_workers(proc, err, gone)  # its replacement is ready beside the other
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(30)
        assert counts["failed"] == 0, errors[:5]
        assert counts["ok"] > served > 0  # requests were served before and during the restarts
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        stop.set()
        kill_tree(proc)
    text = err.read_text()
    assert text.count("starting a replacement") == 2, text[-2000:]
