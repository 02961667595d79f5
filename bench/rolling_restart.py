"""A rolling restart of a two-worker server under 16-client load: every failed request is counted.

The server is `segue serve --workers 2` (segue.serving.workers.run) over a dot-product model with
--items items (exact search). A client process runs --clients threads posting /v1/recommend for
the whole run. Once the load is on, the restart replaces both workers one at a time:
  --mode term (default): SIGTERM to one worker while the other serves; the supervisor starts a
      replacement; once it is ready, the same for the other worker;
  --mode hup: SIGHUP to the main process, whose supervisor starts each replacement and retires
      the old worker once the new one is ready.
A terminated worker drains (lifecycle.DrainingServer): it stops accepting, lets requests it has
accepted finish, then exits. Clients open a new connection per request by default (as behind a
layer-4 balancer); with --keepalive each client thread keeps one connection and reconnects when
the server closes it (the response carries `Connection: close`), but does not retry a request.

Printed: requests served and failed (with the first errors), throughput before, during and after
the restart, and how long each replacement took to become ready; the reference is the same
server's throughput before the restart, measured in the same run.

    .venv/bin/python bench/rolling_restart.py
    .venv/bin/python bench/rolling_restart.py --mode hup --keepalive
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path

import psutil

from _common import guarded, machine_line
from serve_workers import make_model, start, stop, wait_serving


def _clients(port: int, clients: int, keepalive: bool, stop_flag: mp.Event, served: mp.Value, out: mp.Queue) -> None:
    body = json.dumps({"history": ["item1", "item7", "item42"], "n": 10}).encode()
    done: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def run() -> None:
        conn = None
        mine, bad = [], []
        while not stop_flag.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            headers = {"Content-Type": "application/json"}
            if not keepalive:
                headers["Connection"] = "close"
            try:
                conn.request("POST", "/v1/recommend", body, headers)
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    mine.append(time.time())
                    with served.get_lock():
                        served.value += 1
                else:
                    bad.append(f"HTTP {r.status}")
                if not keepalive or r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                bad.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = None
        with lock:
            done.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((done, errors))


def ready_pids(log: Path, proc_pid: int) -> set[int]:
    announced = {int(p) for p in re.findall(r"worker (\d+) ready", log.read_text())}
    return announced & {c.pid for c in psutil.Process(proc_pid).children()}


def wait_new_ready(log: Path, proc_pid: int, old: set[int], timeout: float = 600) -> float:
    t = time.monotonic()
    while len(ready_pids(log, proc_pid) - old) < 2:
        if time.monotonic() - t > timeout:
            raise RuntimeError("replacement did not become ready")
        time.sleep(0.05)
    return time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--mode", choices=("term", "hup"), default="term")
    ap.add_argument("--keepalive", action="store_true")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds of load before, between and after")
    ap.add_argument("--port", type=int, default=0, help="the server's port (default 0: a free one)")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_model(root / "model", args.items, args.dim)
        log = root / "server.log"
        proc, port = start(model, 2, True, log, args.port)
        ctx = mp.get_context("spawn")
        stop_flag, out, served = ctx.Event(), ctx.Queue(), ctx.Value("i", 0)
        try:
            first = set(wait_serving(proc, port, 2, log))
            client = ctx.Process(target=_clients, args=(port, args.clients, args.keepalive, stop_flag, served, out))
            client.start()
            while served.value < 2 * args.clients:  # every client is under way
                time.sleep(0.05)
            time.sleep(args.settle)
            t_start = time.time()
            took = []
            if args.mode == "term":
                gone: set[int] = set()
                for pid in sorted(first):
                    t = time.monotonic()
                    os.kill(pid, signal.SIGTERM)
                    gone.add(pid)
                    wait_new_ready(log, proc.pid, gone)
                    took.append(time.monotonic() - t)
                    time.sleep(args.settle)
            else:
                t = time.monotonic()
                os.kill(proc.pid, signal.SIGHUP)
                wait_new_ready(log, proc.pid, first)
                while first & {c.pid for c in psutil.Process(proc.pid).children()}:
                    time.sleep(0.05)  # the last old worker is retiring
                took.append(time.monotonic() - t)
                time.sleep(args.settle)
            t_end = time.time() - args.settle
            time.sleep(args.settle)
            stop_flag.set()
            done, errors = out.get()
            client.join()
        finally:
            stop_flag.set()
            stop(proc)
    times = sorted(done)
    before = sum(1 for x in times if x < t_start) / max(1e-9, t_start - times[0]) if times else 0.0
    during = sum(1 for x in times if t_start <= x < t_end) / max(1e-9, t_end - t_start)
    after = sum(1 for x in times if x >= t_end) / max(1e-9, times[-1] - t_end) if times else 0.0
    print(f"{args.clients} clients, {'keep-alive' if args.keepalive else 'a new connection per request'}, "
          f"mode {args.mode}, {args.items} items x {args.dim}, {psutil.cpu_count()} cores")
    print(f"requests served {len(done)}, failed {len(errors)}")
    for e in errors[:5]:
        print(f"  error: {e}")
    print(f"throughput: before {before:.1f} req/s (reference), during the restart {during:.1f} req/s "
          f"({t_end - t_start:.1f} s), after {after:.1f} req/s")
    print("replacement ready after: " + ", ".join(f"{x:.1f} s" for x in took))


if __name__ == "__main__":
    raise SystemExit(guarded(main))
