"""Model folders and a named store for the serving tests (real stores, real model folders)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pyarrow as pa

from segue.data.arrays import SplitData
from segue.data.sources.base import Chunk, ListSource
from segue.data.store import BuildConfig, Store, build_store
from segue.models.popularity import Popularity
from segue.serving.dotmodel import DotProductConfig, DotProductModel, register_dot_family

ARTISTS = ["Aurora Lane", "Basalt", "Cinder Youth", "Delta Moth", "Echo Harbour"]


def named_store(path: Path, n_items: int = 60, n_seq: int = 150, seed: int = 0) -> Path:
    """Playlists over tracks with names, artists and albums ('Song 7' by 'Basalt' on 'Basalt II')."""
    rng = np.random.default_rng(seed)
    items = pa.table(
        {
            "item_key": [f"track:{i}" for i in range(n_items)],
            "name": [f"Song {i}" for i in range(n_items)],
            "creator": [ARTISTS[i % len(ARTISTS)] for i in range(n_items)],
            "album": [f"{ARTISTS[i % len(ARTISTS)]} {['I', 'II', 'III'][i % 3]}" for i in range(n_items)],
        }
    )
    seq_keys, item_keys, positions = [], [], []
    for s in range(n_seq):
        # Each playlist mostly stays with one artist, so models have something to learn.
        artist = int(rng.integers(0, len(ARTISTS)))
        n = int(rng.integers(3, 12))
        own = [i for i in range(n_items) if i % len(ARTISTS) == artist]
        picks = [int(rng.choice(own)) if rng.random() < 0.8 else int(rng.integers(0, n_items)) for _ in range(n)]
        seq_keys += [f"pl{s}"] * n
        item_keys += [f"track:{i}" for i in picks]
        positions += list(range(n))
    events = pa.table({"seq_key": seq_keys, "item_key": item_keys, "position": pa.array(positions, pa.int32())})
    source = ListSource([Chunk(events=events, items=items)])
    return build_store(source, path, BuildConfig(seed=seed, splits=[{"kind": "random_sequence"}]))


def popularity_folder(store_path: Path, folder: Path) -> Path:
    with Store.open(store_path) as store:
        data = SplitData.load(store, "random")
        model = Popularity().fit(data)
    return model.save(folder)


def dot_folder(store_path: Path, folder: Path, dim: int = 16, seed: int = 0) -> Path:
    register_dot_family()
    with Store.open(store_path) as store:
        data = SplitData.load(store, "random")
        model = DotProductModel(DotProductConfig(dim=dim, seed=seed)).fit(data)
    return model.save(folder)


def run_load(
    url: str, clients: int, stop: threading.Event, counts: dict[str, int], errors: list[str], history: list[str]
) -> list[threading.Thread]:
    """Started client threads posting /v1/recommend for `history`, a new connection per request (so
    every worker of a server answers), until `stop`; `counts` "ok" / "failed", `errors` why."""
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/recommend", json={"history": history, "n": 5})
                    ok = r.status_code == 200
                    if not ok:
                        errors.append(f"HTTP {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    ok = False
                    errors.append(f"{type(e).__name__}: {e}")
                with lock:
                    counts["ok" if ok else "failed"] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    return threads


# --- `segue serve` subprocesses ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(args: list[str], stdout: Path, stderr: Path) -> subprocess.Popen:
    """`segue serve ARGS` as a child process, its output in files (read after it exits)."""
    code = "from segue.cli import app; app()"
    with open(stdout, "w") as out, open(stderr, "w") as err:
        return subprocess.Popen([sys.executable, "-c", code, "serve", *args], stdout=out, stderr=err)


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill a server left running by a failed test, its workers first (their own process group)."""
    if proc.poll() is None:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait()


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> list[int]:
    """Poll /readyz until 200; returns the status codes seen (503s while loading)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited ({proc.returncode})"
        try:
            code = httpx.get(f"{url}/readyz", timeout=2).status_code
            seen.append(code)
            if code == 200:
                return seen
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not ready within {timeout} s")
