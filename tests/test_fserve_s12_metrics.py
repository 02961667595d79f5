"""/metrics of a server with several workers: one server's totals whichever worker answers (walk
s12 serve F1), and HELP/TYPE for every family, segue_loading's saying what 1 means (F2)."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from segue.serving.app import create_app
from segue.serving.cli import serve_in_thread
from segue.serving.lifecycle import LOADING_METRICS
from servinghelp import dot_folder, free_port, kill_tree, named_store, start_serve, wait_ready

HISTORY = ["track:1", "track:6"]
RECOMMEND_200 = re.compile(r'^segue_requests_total\{method="POST",route="/v1/recommend",status="200"\} (\d+)$', re.M)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fserve")
    store = named_store(root / "store.duckdb")
    return {"store": store, "dot": dot_folder(store, root / "dot")}


def recommended(text: str) -> int:
    found = RECOMMEND_200.findall(text)
    assert len(found) == 1, text
    return int(found[0])


def families_typed(text: str) -> None:
    """Every sample belongs to a family with HELP and TYPE lines (no "unknown" type)."""
    typed = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    helped = set(re.findall(r"^# HELP (\S+) ", text, re.M))
    assert typed == helped, (typed ^ helped, text)
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)  # type: ignore[union-attr]
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in typed or base in typed, f"{name} has no TYPE: {text}"


def ready_workers(err: Path, pid: int) -> set[int]:
    """Live workers of the server `pid` that its log announced ready."""
    announced = {int(m) for m in re.findall(r"worker (\d+) ready", err.read_text())}
    return announced & {c.pid for c in psutil.Process(pid).children()}


def test_two_workers_metrics_count_every_request_whichever_worker_answers(folders, tmp_path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    err = tmp_path / "err.txt"
    proc = start_serve(
        ["--model", str(folders["dot"]), "--port", str(port), "--workers", "2", "--no-feature-log", "--no-access-log"],
        tmp_path / "out.txt",
        err,
    )
    try:
        wait_ready(url, proc)
        deadline = time.monotonic() + 60
        while len(workers := ready_workers(err, proc.pid)) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, err.read_text()[-2000:]
            time.sleep(0.1)
        n = 40
        # A new connection per request and per scrape: each goes to whichever worker accepts it.
        for _ in range(n):
            assert httpx.post(f"{url}/v1/recommend", json={"history": HISTORY, "n": 3}).status_code == 200
        seen = [recommended(httpx.get(f"{url}/metrics").text) for _ in range(8)]
        assert seen == [n] * 8, seen
        text = httpx.get(f"{url}/metrics").text
        families_typed(text)
        # Gauges are each live worker's, labelled with its pid.
        labelled = set(re.findall(r'^segue_model_info\{[^}]*worker="(\d+)"\} 1$', text, re.M))
        assert labelled == {str(p) for p in workers}, text
        assert "segue_loading 0" in text.splitlines()
        # A worker replaced: its counts stay in the totals, its gauges go.
        gone = min(workers)
        os.kill(gone, signal.SIGTERM)
        psutil.Process(gone).wait(30)
        deadline = time.monotonic() + 60
        while len(now := ready_workers(err, proc.pid)) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, err.read_text()[-2000:]
            time.sleep(0.1)
        text = httpx.get(f"{url}/metrics").text
        assert recommended(text) == n
        assert set(re.findall(r'^segue_model_info\{[^}]*worker="(\d+)"\} 1$', text, re.M)) == {str(p) for p in now}, text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        kill_tree(proc)


def test_metric_values_sum_counters_over_processes_and_show_serving_gauges(tmp_path) -> None:
    from segue.serving.lifecycle import MetricValues

    a, b = MetricValues(tmp_path), MetricValues(tmp_path)
    a.serving(True)
    b.serving(True)
    a.count([(("c_total", 'k="x"'), 2.0)])
    b.count([(("c_total", 'k="x"'), 3.0), (("c_total", 'k="y"'), 1.0)])
    a.gauge([(("g", ""), 7.0)])
    for i in range(3000):  # past the first size: the file grows
        b.count([(("many_total", f'i="{i}"'), 1.0)])
    counters, gauges = a.gather()
    assert counters[("c_total", 'k="x"')] == 5 and counters[("c_total", 'k="y"')] == 1
    assert counters[("many_total", 'i="2999"')] == 1
    assert gauges == {("g", f'worker="{os.getpid()}"'): 7.0}
    a.serving(False)  # an exited worker: counters kept, gauges gone
    counters, gauges = b.gather()
    assert counters[("c_total", 'k="x"')] == 5 and gauges == {}


def test_metrics_help_text_says_what_segue_loading_means_and_every_family_is_typed(folders) -> None:
    assert "1 while the model loads" in LOADING_METRICS and "segue_loading 1" in LOADING_METRICS.splitlines()
    app = create_app(folders["dot"], store=folders["store"], use_env_admin_key=False)
    with serve_in_thread(app) as s:
        httpx.post(f"{s.url}/v1/recommend", json={"history": HISTORY, "n": 3})
        text = httpx.get(f"{s.url}/metrics").text
    help_line = next(x for x in text.splitlines() if x.startswith("# HELP segue_loading "))
    assert "1 while the model loads" in help_line and "0 while" not in help_line, help_line
    assert "segue_loading 0" in text.splitlines()
    assert "# TYPE segue_catalogue_items gauge" in text
    families_typed(text)
    # One process: no worker label, the model's own line.
    assert re.search(r'^segue_model_info\{run_id="[^"]*",version="[^"]*",family="dot",retrieval="[^"]*"\} 1$', text, re.M), text
    assert recommended(text) == 1
