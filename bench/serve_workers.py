"""Throughput and memory of `segue serve` at 1 and 2 worker processes, with and without memory maps.

A dot-product model over --items random item embeddings of width --dim (saved as embeddings.npy,
the array the workers memory-map) is served with exact search; each configuration runs as its own
server process (segue.serving.workers.run, as `segue serve --workers N` does), receives --warmup
seconds of load, then --seconds of load from --clients threads in a separate client process (one
keep-alive connection per thread, POST /v1/recommend n=10), and is measured:
  - requests/s and p50/p99 latency over the measured window;
  - per process RSS, USS (pages only it holds) and PSS (shared pages divided among their users),
    psutil memory_full_info, taken after the load; the totals are over the workers (and, with
    several workers, the supervisor).
The reference is the one-worker server of the same run. With memory maps each worker's USS leaves
out the embeddings (they are page cache, shared), and the embeddings count once in the PSS total.

    .venv/bin/python bench/serve_workers.py                      # 200k x 128 (98 MiB of embeddings)
    .venv/bin/python bench/serve_workers.py --items 50000 --seconds 10
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from _common import guarded, machine_line  # bench/ is the script's folder, so on sys.path

SERVER = """
import sys
from segue.serving.index import IndexConfig
from segue.serving.workers import ServeSettings, run
model, port, workers, mmap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
run(ServeSettings(model=model, index=IndexConfig(kind="exact"), feature_log=None, access_log=False, mmap=mmap),
    port=port, workers=workers)
"""


def make_model(folder: Path, n_items: int, dim: int, seed: int = 0) -> Path:
    from segue.serving.dotmodel import DotProductConfig, DotProductModel, synthetic_vocab

    rng = np.random.default_rng(seed)
    vocab = synthetic_vocab(n_items)
    model = DotProductModel(DotProductConfig(dim=dim, seed=seed), vocab)
    model.embeddings = (rng.standard_normal((len(vocab), dim), dtype=np.float32) / np.sqrt(dim)).astype(np.float32)
    return model.save(folder)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: Path, workers: int, mmap: bool, log: Path, port: int = 0) -> tuple[subprocess.Popen, int]:
    port = port or free_port()
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(model), str(port), str(workers), "1" if mmap else "0"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    return proc, port


def wait_serving(proc: subprocess.Popen, port: int, workers: int, log: Path, timeout: float = 600) -> list[int]:
    """Wait until /readyz answers and (with several workers) each has been announced ready;
    returns the pids of the processes that serve (the workers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/readyz")
            ready = c.getresponse().status == 200
            c.close()
        except OSError:
            ready = False
        if ready:
            if workers == 1:
                return [proc.pid]
            pids = {int(p) for p in re.findall(r"worker (\d+) ready", log.read_text())}
            alive = {c.pid for c in psutil.Process(proc.pid).children()}
            if len(pids & alive) >= workers:
                return sorted(pids & alive)
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        for c in psutil.Process(proc.pid).children(recursive=True):
            c.kill()
        proc.kill()
        proc.wait()


# --- the client process ------------------------------------------------------------------------


def _client_main(port: int, clients: int, seconds: float, n_items: int, out: mp.Queue) -> None:
    rng = np.random.default_rng(1)
    bodies = [
        json.dumps({"history": [f"item{int(i)}" for i in rng.integers(0, n_items, 5)], "n": 10}).encode()
        for _ in range(256)
    ]
    stop_at = time.monotonic() + seconds
    lat: list[float] = []
    failed = [0]
    lock = threading.Lock()

    def run(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine, bad, i = [], 0, k
        while time.monotonic() < stop_at:
            t = time.perf_counter()
            try:
                conn.request("POST", "/v1/recommend", bodies[i % len(bodies)], {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    mine.append(time.perf_counter() - t)
                else:
                    bad += 1
            except OSError:
                bad += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            i += clients
        with lock:
            lat.extend(mine)
            failed[0] += bad

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((lat, failed[0]))


def load(port: int, clients: int, seconds: float, n_items: int) -> tuple[np.ndarray, int]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_client_main, args=(port, clients, seconds, n_items, q))
    p.start()
    lat, failed = q.get()
    p.join()
    return np.asarray(lat), failed


def memory(pids: list[int]) -> list[dict[str, float]]:
    out = []
    for pid in pids:
        m = psutil.Process(pid).memory_full_info()
        out.append({"pid": pid, "rss": m.rss / 2**20, "uss": m.uss / 2**20, "pss": m.pss / 2**20})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_model(root / "model", args.items, args.dim)
        mib = (args.items + 4) * args.dim * 4 / 2**20
        print(f"model: {args.items} items x {args.dim} (embeddings.npy {mib:.0f} MiB), exact search; "
              f"{args.clients} client threads, {args.seconds:.0f} s per configuration; {psutil.cpu_count()} cores")
        rows = []
        for workers in [int(w) for w in args.workers.split(",")]:
            for mmap in (True, False):
                log = root / f"server-{workers}-{int(mmap)}.log"
                proc, port = start(model, workers, mmap, log)
                try:
                    pids = wait_serving(proc, port, workers, log)
                    load(port, args.clients, args.warmup, args.items)
                    lat, failed = load(port, args.clients, args.seconds, args.items)
                    mem = memory(pids)
                    sup = memory([proc.pid])[0] if workers > 1 else None
                finally:
                    stop(proc)
                rate = len(lat) / args.seconds
                p50, p99 = (np.percentile(lat, [50, 99]) * 1000) if len(lat) else (float("nan"),) * 2
                pss = sum(m["pss"] for m in mem) + (sup["pss"] if sup else 0)
                uss, rss = [m["uss"] for m in mem], [m["rss"] for m in mem]
                rows.append((workers, mmap, rate, p50, p99, failed, pss, uss, rss))
                print(
                    f"workers {workers} mmap {'on ' if mmap else 'off'}: {rate:7.1f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  "
                    f"failed {failed}  PSS total {pss:6.0f} MiB  per worker USS {', '.join(f'{u:.0f}' for u in uss)} MiB  "
                    f"RSS {', '.join(f'{r:.0f}' for r in rss)} MiB" + (f"  (supervisor PSS {sup['pss']:.0f} MiB)" if sup else ""),
                    flush=True,
                )
        ref = next((r for r in rows if r[0] == 1 and r[1]), None)
        if ref is not None:
            for r in rows:
                print(f"  {r[0]} worker(s), mmap {'on' if r[1] else 'off'}: throughput x{r[2] / ref[2]:.2f} of 1 worker, "
                      f"PSS x{r[6] / ref[6]:.2f}")


if __name__ == "__main__":
    raise SystemExit(guarded(main))
