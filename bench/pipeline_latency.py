"""End-to-end latency of a two-stage pipeline served over HTTP, beside a single model in the same run.

A synthetic playlist corpus (segue's `synthetic` source; default 50,000 tracks, 20,000 playlists)
is built into a store; a pipeline is fitted on its random_sequence split (generators item-kNN,
item2vec, popularity and the built-in name generator; the LightGBM ranker on the validation
playlists). Both the pipeline folder and its item-kNN generator folder alone (the single-model
reference) are served on loopback ports, and POST /v1/recommend (n = 100, a held-out playlist's
first 10 tracks and its name) is timed at 1 and 16 concurrent clients (clients in another process).
The budget: pipeline p99 <= 3 x the single model's p99 at the same concurrency. The stage shares
(candidates from every generator, features, ranker) are timed in process for the same requests.

    nice .venv/bin/python bench/pipeline_latency.py                 # 50k items
    nice .venv/bin/python bench/pipeline_latency.py --items 5000 --playlists 3000 --requests 100
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from segue.data.arrays import SequenceArrays, SplitData
from segue.data.sources import open_source
from segue.data.store import BuildConfig, Store, build_store
from segue.models.base import load_model
from segue.models.pipeline import PipelineConfig, PipelineRecommender, sequence_names
from segue.serving.app import create_app
from segue.serving.cli import serve_in_thread


def build(root: Path, items: int, playlists: int) -> Path:
    source = open_source("synthetic", None, n_items=items, n_playlists=playlists, mean_length=30, seed=1)
    return build_store(source, root / "synth.duckdb", BuildConfig(splits=[{"kind": "random_sequence"}]))


def fit(store: Path, root: Path) -> Path:
    cfg = PipelineConfig.from_dict(
        {
            "generators": [
                {"name": "itemknn", "family": "itemknn", "n": 200},
                {"name": "item2vec", "family": "item2vec", "n": 100, "config": {"epochs": 3}},
                {"name": "popularity", "family": "popularity", "n": 50},
            ],
            # lr 0.05: early stopping keeps fewer trees than at the default 0.02 (374 trees there,
            # ~16 us a candidate, the ranker ~4.5 ms of a 300-candidate request)
            "ranker": {"max_queries": 2000, "learning_rate": 0.05},
        }
    )
    with Store.open(store) as s:
        model = PipelineRecommender(cfg).fit(SplitData.load(s, "random"))
    return model.save(root / "pipeline")


def requests_of(store: Path, folder: Path, n: int, seed: int = 0) -> list[dict]:
    """n bodies: the first 10 tracks (external ids) and the name of held-out test playlists."""
    vocab = load_model(folder / "generators" / "popularity").vocab
    with Store.open(store) as s:
        data = SplitData.load(s, "random")
        test = data.targets(2)
        rows = test.nonempty()
        rows = np.random.default_rng(seed).choice(rows, min(n, len(rows)), replace=len(rows) < n)
        names = sequence_names(s, rows)
    out = []
    for r, name in zip(rows, names, strict=True):
        toks = [int(t) for t in test.row(int(r))[:10] if t >= 4]
        out.append({"history": [vocab.external_ids[t] for t in toks], "n": 100, "name": name})
    return out


def _client(url: str, bodies: list[dict], out: mp.Queue) -> None:
    import httpx

    times = []
    with httpx.Client(base_url=url, timeout=60) as c:
        c.get("/healthz")  # connect before the clock starts
        start = time.time()
        for b in bodies:
            t = time.perf_counter()
            r = c.post("/v1/recommend", json=b)
            times.append(time.perf_counter() - t)
            if r.status_code != 200:
                raise RuntimeError(r.text)
    out.put((times, start, time.time()))


def load_test(url: str, bodies: list[dict], clients: int) -> tuple[list[float], float]:
    """Latencies (s) of every request and requests/s (requests over the span from the first
    client's first request to the last client's last answer; process start-up not counted),
    `clients` processes splitting `bodies`."""
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    parts = [bodies[i::clients] for i in range(clients)]
    procs = [ctx.Process(target=_client, args=(url, p, q)) for p in parts]
    for p in procs:
        p.start()
    got = [q.get() for _ in procs]
    for p in procs:
        p.join()
    times = [t for g in got for t in g[0]]
    wall = max(g[2] for g in got) - min(g[1] for g in got)
    return times, len(times) / wall


def stage_shares(folder: Path, bodies: list[dict]) -> dict[str, float]:
    """Mean ms per request of candidates (every generator), features and ranker, in process
    (one BLAS thread, as the server runs: multithreaded BLAS on the busy 2 cores made item2vec's
    1 x 50k product 7 ms instead of 0.8 ms)."""
    from threadpoolctl import threadpool_limits

    model = load_model(folder)
    timings: dict[str, float] = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for b in bodies[:10]:  # warm-up (lazy caches), not timed
            _one_request(model, b, {})
        for b in bodies:
            _one_request(model, b, timings)
    return {k: 1000 * v / len(bodies) for k, v in timings.items()}


def _one_request(model: Any, b: dict, timings: dict[str, float]) -> None:
    toks, _ = model.vocab.encode_external(b["history"])
    arrays = SequenceArrays.from_lists([toks])
    arrays.meta["seq_names"] = [b["name"]]
    pools = model.pools(arrays, np.array([0]), timings=timings)
    model.rank_pools(arrays, np.array([0]), pools, timings=timings)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--playlists", type=int, default=20_000)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--work", type=Path, default=None, help="keep the store and folders here (reused)")
    args = ap.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="pipeline-latency-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store = root / "synth.duckdb" if (root / "synth.duckdb").exists() else build(root, args.items, args.playlists)
    folder = root / "pipeline" if (root / "pipeline" / "model.toml").exists() else fit(store, root)
    print(f"store and pipeline ready in {time.perf_counter() - t0:.0f} s ({root})", flush=True)
    bodies = requests_of(store, folder, args.requests)
    results: dict[str, dict] = {}
    for label, model_folder in (("single model (itemknn)", folder / "generators" / "itemknn"), ("pipeline", folder)):
        app = create_app(model_folder, store=store, admin_key=None, use_env_admin_key=False)
        with serve_in_thread(app) as server:
            load_test(server.url, bodies[:20], 1)  # warm-up
            row = {}
            for clients in (1, 16):
                times, rps = load_test(server.url, bodies, clients)
                ms = 1000 * np.asarray(times)
                row[clients] = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "req_s": rps}
            results[label] = row
    shares = stage_shares(folder, bodies)
    single, pipe = results["single model (itemknn)"], results["pipeline"]
    print(f"\n{args.items:,} items, {len(bodies)} requests per level, n = 100")
    print(f"{'':24} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7}")
    for label, row in results.items():
        for c, r in row.items():
            print(f"{label:24} {c:>7} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['req_s']:7.1f}")
    for c in (1, 16):
        ratio = pipe[c]["p99_ms"] / single[c]["p99_ms"]
        print(f"p99 ratio pipeline / single at {c:>2} client(s): {ratio:.2f} (budget 3.00: {'within' if ratio <= 3 else 'OVER'})")
    total = sum(shares.values())
    print("in-process stages per request: " + ", ".join(f"{k} {v:.2f} ms ({100 * v / total:.0f}%)" for k, v in shares.items()))
    print(json.dumps({"results": results, "stages_ms": shares}, default=str))


if __name__ == "__main__":
    main()
