"""Fold-in latency of one rated profile through HTTP, beside the bare forward pass.

On MovieLens 100K (../shared/data/ml-100k; or --synthetic: the planted two-taste corpus of
tests/test_serving_profiles.py scaled up) a biasedmf model and a profile autoencoder are fitted
and served on a loopback port (a real
uvicorn server in a thread, 1 client, httpx keep-alive). One profile - a held-out user's history
cut to --profile-len items, with that user's ratings - is sent as POST /v1/recommend (n=10) with
its ratings, and the model's bare `score()` of the same profile (the arrays the server builds,
ratings included) is timed beside it, in alternating rounds so that a shared machine's load hits
both alike. Also timed: the same request with niche_boost=0.5 (on biasedmf's exact index the boost
widens the candidate pool until the boosted top 10 is proved) and /v1/explain (leave-one-out over
the profile plus the surprising ratings), and GET /healthz, the same server's round trip without a
model call. The machine's float32 matmul figure is printed as the reference of the run.

    .venv/bin/python bench/profile_latency.py
    .venv/bin/python bench/profile_latency.py --synthetic --profile-len 20
    .venv/bin/python bench/profile_latency.py --run RUN_FOLDER --store STORE [--split strong]

Measured 2026-11-29 on the shared 2-core machine under load (load average 7-9, numpy matmul
33-34 GFLOP/s against ~340 unloaded), ml-100k, a 50-item profile with 50 ratings, 180 requests
each (--rounds 3 --per-round 60), p50 / p99 in ms:
  biasedmf (exact index)   score() 1.2 / 10.1   /healthz 5.4 / 13.2   recommend 12.0 / 28.2
                           recommend b=0.5 16.4 / 36.2   explain 31.9 / 63.4
  autoencoder (score(); branch autoencoder2 overlaid, default network [600] -> 200, 300 steps)
                           score() 3.8 / 16.3   /healthz 2.4 / 10.1   recommend 14.7 / 26.6
                           recommend b=0.5 13.0 / 27.2   explain 29.6 / 59.9
Engine.rank alone for the biasedmf profile (no HTTP): 1.5 ms, 3.2 ms with b=0.5 (the boosted search
re-sorts a 200-candidate pool). The HTTP stack's own round trip (/healthz) is most of the gap
between score() and /v1/recommend on this loaded machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from segue.data.arrays import SplitData
from segue.data.splits import Part
from segue.data.store import BuildConfig, Store, build_store
from segue.models.base import BaseRecommender, load_model
from segue.models.biasedmf import BiasedMF, BiasedMFConfig
from segue.serving.app import create_app
from segue.serving.cli import serve_in_thread
from segue.serving.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import guarded, need_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SPLITS = [{"kind": "random_holdout", "name": "holdout"}]


def matmul_peak() -> float:
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    a @ a
    t = time.perf_counter()
    for _ in range(5):
        a @ a
    return 5 * 2 * 2048**3 / (time.perf_counter() - t) / 1e9


def build(args: argparse.Namespace, work: Path) -> Path:
    if args.synthetic:
        sys.path.insert(0, str(ROOT / "tests"))
        import test_serving_profiles as t  # the tests' planted corpus, larger

        t.N_USERS, t.N_ITEMS = 2000, 1500
        return t.rated_store(work / "synthetic.duckdb")
    from segue.data.sources.movielens import MovieLensSource

    return build_store(MovieLensSource(args.data), work / "ml-100k.duckdb", BuildConfig(splits=SPLITS))


def fit_models(data: SplitData, args: argparse.Namespace) -> dict[str, BaseRecommender]:
    models: dict[str, BaseRecommender] = {}
    t = time.perf_counter()
    models["biasedmf"] = BiasedMF(BiasedMFConfig()).fit(data)
    print(f"biasedmf fitted in {time.perf_counter() - t:.1f} s", flush=True)
    from segue.models.autoencoder import AutoencoderConfig, AutoencoderRecommender

    # The family's default network (hidden [600], bottleneck 200); a short fit: latency depends on
    # the shapes, not on how well it is trained.
    config = AutoencoderConfig.from_dict(
        {
            "trainer": {"max_steps": args.ae_steps, "eval_every": args.ae_steps, "progress": False, "patience": None},
        }
    )
    t = time.perf_counter()
    models["autoencoder"] = AutoencoderRecommender(config).fit(data)
    print(f"autoencoder fitted ({args.ae_steps} steps) in {time.perf_counter() - t:.1f} s", flush=True)
    return models


def profile_of(data: SplitData, length: int) -> tuple[list[str], list[float | None]]:
    """The held-out user whose history is nearest `length` items, cut to its last `length`."""
    hist = data.history(Part.TEST)
    rows = hist.nonempty()
    row = int(rows[np.argmin(np.abs(hist.lengths[rows] - length))])
    lo, hi = int(hist.offsets[row]), int(hist.offsets[row + 1])
    lo = max(lo, hi - length)
    tokens = np.asarray(hist.tokens[lo:hi])
    ratings = np.asarray(hist.rating[lo:hi], np.float64) if hist.rating is not None else np.full(hi - lo, np.nan)
    ids = [data.vocab.external_ids[int(t)] for t in tokens]
    return ids, [None if np.isnan(r) else float(r) for r in ratings]


def pct(x: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(x) * 1e3, p))


def bench_model(name: str, model: BaseRecommender, folder: Path, store: Path, profile: tuple, args: argparse.Namespace) -> dict:
    model.save(folder)
    engine = Engine.load(folder, store=store)
    ids, ratings = profile
    enc = engine.encoder.encode(ids, ratings if engine.rating_range is not None else None)
    arrays = engine.arrays([enc.all_tokens], None, [enc.all_ratings])
    app = create_app(engine=engine, use_env_admin_key=False)
    body = {"history": ids, "ratings": ratings, "n": 10}
    times: dict[str, list[float]] = {"score()": [], "healthz": [], "recommend": [], "recommend b=0.5": [], "explain": []}
    with serve_in_thread(app, port=args.port) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        first = http.post("/v1/recommend", json=body).json()
        for _ in range(args.warmup):
            engine.model.score(arrays)
            http.post("/v1/recommend", json=body)
            http.post("/v1/recommend", json=body | {"niche_boost": 0.5})
            http.post("/v1/explain", json=body | {"top": 3})
        for _ in range(args.rounds):
            for _ in range(args.per_round):
                t = time.perf_counter()
                engine.model.score(arrays)
                times["score()"].append(time.perf_counter() - t)
            for _ in range(args.per_round):
                t = time.perf_counter()
                http.get("/healthz")
                times["healthz"].append(time.perf_counter() - t)
            for _ in range(args.per_round):
                t = time.perf_counter()
                r = http.post("/v1/recommend", json=body)
                times["recommend"].append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
            for _ in range(args.per_round):
                t = time.perf_counter()
                http.post("/v1/recommend", json=body | {"niche_boost": 0.5})
                times["recommend b=0.5"].append(time.perf_counter() - t)
            for _ in range(max(1, args.per_round // 5)):
                t = time.perf_counter()
                http.post("/v1/explain", json=body | {"top": 3})
                times["explain"].append(time.perf_counter() - t)
    out = {
        "family": name,
        "items_returned": [i["id"] for i in first["items"]],
        "retrieval": engine.info.retrieval,
        "catalogue": engine.info.n_items,
        "profile_items": len(ids),
        "rated": sum(r is not None for r in ratings),
        "ratings_used": engine.rating_range is not None,
        "warnings": first["warnings"],
    }
    for k, v in times.items():
        out[k] = {"p50_ms": round(pct(v, 50), 3), "p99_ms": round(pct(v, 99), 3), "n": len(v)}
    return out


def times_order() -> tuple[str, ...]:
    return ("score()", "healthz", "recommend", "recommend b=0.5", "explain")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA / "ml-100k")
    ap.add_argument("--synthetic", action="store_true", help="the planted two-taste corpus instead of ml-100k")
    ap.add_argument("--profile-len", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--ae-steps", type=int, default=300, help="training steps of the autoencoder")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--run", type=Path, help="bench this trained model folder (with --store, --split) instead of fitting")
    ap.add_argument("--store", type=Path, help="--run: the store it was trained on")
    ap.add_argument("--split", default="strong", help="--run: the split whose TEST histories give the profile")
    ap.add_argument("--port", type=int, default=0, help="loopback port of the server (0: a free one)")
    args = ap.parse_args()
    if not args.run and not args.synthetic:
        need_data(args.data, "the ml-100k run builds its store from the MovieLens 100K folder (u.data)", "--data names the ml-100k folder, default ../shared/data/ml-100k; or use --synthetic")
    print(f"machine: {os.cpu_count()} cores, numpy float32 matmul {matmul_peak():.0f} GFLOP/s, load average {os.getloadavg()}", flush=True)
    results: dict = {"models": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = args.store if args.run else build(args, work)
        with Store.open(store) as s:
            data = SplitData.load(s, args.split if args.run else "holdout")
            models = {args.run.name: load_model(args.run)} if args.run else fit_models(data, args)
            profile = profile_of(data, args.profile_len)
        for name, model in models.items():
            res = bench_model(name, model, work / name, store, profile, args)
            res["load_average_after"] = os.getloadavg()
            results["models"].append(res)
            print(
                f"{name:<12} {res['retrieval']:<6} {res['catalogue']} items, profile {res['profile_items']} items "
                f"({res['rated']} rated, ratings used: {res['ratings_used']})",
                flush=True,
            )
            for k in times_order():
                f = res[k]
                print(f"  {k:<16} p50 {f['p50_ms']:8.3f} ms   p99 {f['p99_ms']:8.3f} ms   (n={f['n']})", flush=True)
            if res["warnings"]:
                print("  warnings:", res["warnings"], flush=True)
    results["matmul_gflops_end"] = round(matmul_peak(), 1)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(guarded(main))
