"""SIGTERM to a several-worker server during an admin-port reload: the caller is told the server
is shutting down (503), not that the model failed to load (walk s12 serve F5)."""

from __future__ import annotations

import re
import signal
import threading
import time

import httpx
import psutil

from servinghelp import dot_folder, free_port, kill_tree, named_store, start_serve, wait_ready


def test_sigterm_during_a_reload_answers_shutting_down_and_logs_no_error(tmp_path, monkeypatch) -> None:
    store = named_store(tmp_path / "store.duckdb")
    model, other = dot_folder(store, tmp_path / "dot"), dot_folder(store, tmp_path / "dot2", seed=1)
    monkeypatch.setenv("SEGUE_ADMIN_KEY", "k")
    port, admin_port = free_port(), free_port()
    err = tmp_path / "err.txt"
    proc = start_serve(["--model", str(model), "--port", str(port), "--workers", "2", "--admin-port", str(admin_port),
                        "--no-feature-log", "--no-access-log"], tmp_path / "out.txt", err)
    answer: list[httpx.Response] = []
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        deadline = time.monotonic() + 60
        while len(re.findall(r"worker \d+ ready", err.read_text())) < 2:  # both up: the reload is taken
            assert time.monotonic() < deadline and proc.poll() is None, err.read_text()[-2000:]
            time.sleep(0.1)
        workers = {c.pid for c in psutil.Process(proc.pid).children()}

        def reload() -> None:
            answer.append(httpx.post(f"http://127.0.0.1:{admin_port}/admin/reload", json={"model": str(other)},
                                     headers={"X-API-Key": "k"}, timeout=60))

        t = threading.Thread(target=reload)
        t.start()
        deadline = time.monotonic() + 30  # a replacement worker has started: the roll is under way
        while not {c.pid for c in psutil.Process(proc.pid).children()} - workers:
            assert time.monotonic() < deadline and proc.poll() is None, err.read_text()[-2000:]
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert proc.wait(60) == 0
    finally:
        kill_tree(proc)
    text = err.read_text()
    assert answer and answer[0].status_code == 503, (answer and answer[0].text, text[-2000:])
    assert "shutting down" in answer[0].json()["detail"] and "failed" not in answer[0].json()["detail"]
    assert "was not ready" not in text and " ERROR " not in text, text[-3000:]
