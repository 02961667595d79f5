"""Full-ranking evaluation speed: a dot-product model through the evaluator's ranking path.

Random user and item embeddings (default 10,000 users x 100,000 items, dim 128) score every
item for every user in batches; seen items and special tokens are masked; the top 100 are kept
(argpartition); per-user metrics are computed. Histories have realistic (log-normal) lengths.
The target (issue 3) is under 60 s on 2 cores. Printed beside the machine's measured float32
matmul rate, so figures from different machines can be compared.

  .venv/bin/python bench/eval_speed.py [--users 10000] [--items 100000] [--dim 128] [--store]

--store also builds a real store (leave_last_out split) with those users and runs
`segue.evaluation.evaluate` on it, the path `segue evaluate` takes (store build time excluded).
--topk-rule times the ranking's top-k cut alone on one batch, in alternating rounds in this process:
segue's tie rule (`select_top` row by row, the path the evaluator and recommend() take) beside the
batched argpartition it replaced (no tie rule) and a batched form of the same rule, which must agree
with it; on random scores and on rounded ones (many ties, as counts give).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.vocab import N_SPECIAL, Vocabulary
from segue.evaluation.evaluator import auto_batch_size, evaluate, evaluate_task
from segue.evaluation.metrics import relevance_csr
from segue.evaluation.protocols import Task
from segue.models.base import NEG_INF, BaseRecommender, select_top


class DotModel(BaseRecommender):
    """score(row, t) = <user_row, item_t>: one matmul per batch, like any two-tower model."""

    family = "dot_bench"

    def __init__(self, vocab: Vocabulary, users: np.ndarray, items: np.ndarray) -> None:
        super().__init__(None, vocab)
        assert users.dtype == items.dtype == np.float32
        self.users, self.items_t = users, np.ascontiguousarray(items.T)  # [U, d], [d, V]

    def fit(self, data: SplitData, *, progress: object = None) -> DotModel:
        return self

    def score(self, histories: SequenceArrays, rows: np.ndarray | None = None) -> np.ndarray:
        rows = np.arange(len(histories)) if rows is None else np.asarray(rows)
        return self.users[rows] @ self.items_t


def matmul_gflops(m: int, k: int, n: int, repeat: int = 3) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


def histories(rng: np.random.Generator, n_users: int, n_items: int) -> list[np.ndarray]:
    """Log-normal lengths (median ~25, mean ~45, capped at 1,000) over Zipf-like popular items."""
    lengths = np.clip(rng.lognormal(3.2, 1.0, n_users).astype(int), 3, 1000)
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.8
    weights /= weights.sum()
    flat = rng.choice(n_items, int(lengths.sum()), p=weights)
    return np.split(flat, np.cumsum(lengths)[:-1])


def in_memory(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    v = args.items + N_SPECIAL
    vocab = Vocabulary(
        item_ids=np.concatenate([np.full(N_SPECIAL, -1), np.arange(args.items)]),
        counts=np.concatenate([np.zeros(N_SPECIAL, np.int64), np.arange(args.items, 0, -1)]),
        external_ids=[None] * N_SPECIAL + [str(i) for i in range(args.items)],
        split="bench",
    )
    seqs = histories(rng, args.users, args.items)
    hist = SequenceArrays.from_lists([s[:-1] + N_SPECIAL for s in seqs])
    offsets, keys = relevance_csr([s[-1:] + N_SPECIAL for s in seqs])
    task = Task(
        protocol="leave_last_out", split="bench", part="test", vocab=vocab, histories=hist,
        rows=np.arange(args.users, dtype=np.int64), rel_offsets=offsets, rel_keys=keys,
        seq_ids=np.arange(args.users, dtype=np.int64),
    )
    scale = np.float32(1 / np.sqrt(args.dim))  # a float64 scale would make the users float64
    model = DotModel(
        vocab,
        rng.standard_normal((args.users, args.dim), dtype=np.float32) * scale,
        rng.standard_normal((v, args.dim), dtype=np.float32),
    )
    bs = args.batch_size or auto_batch_size(v)
    print(f"in memory: {args.users:,} users x {args.items:,} items, dim {args.dim}, "
          f"{hist.n_events:,} history events (mean {hist.n_events / args.users:.0f}), batch {bs}, top {max(args.ks)}")
    t0 = time.perf_counter()
    res = evaluate_task({"dot": model}, task, args.ks, batch_size=bs)["dot"]
    dt = time.perf_counter() - t0
    stages = res.info["seconds_by_stage"]
    flops = 2 * args.users * args.dim * v
    print(f"  total {dt:.1f} s, {args.users / dt:,.0f} users/s  (target < 60 s on 2 cores)")
    print("  stages: " + ", ".join(f"{k} {s:.1f} s" for k, s in stages.items())
          + (f"; scoring matmul ran at {flops / stages['score'] / 1e9:.0f} GFLOP/s" if stages["score"] > 0 else ""))
    hits = int(res.per_user["hr@100"].sum())
    print(f"  sanity: a random model hits {hits} of {args.users:,} targets in its top 100 "
          f"(about {args.users * 100 / args.items:.0f} expected)")


def via_store(args: argparse.Namespace) -> None:
    import pyarrow as pa

    from segue.data.sources.base import Chunk, ListSource
    from segue.data.store import BuildConfig, Store, build_store

    rng = np.random.default_rng(1)
    seqs = histories(rng, args.users, args.items)
    lengths = np.array([len(s) for s in seqs])
    table = pa.table({
        "seq_key": np.repeat(np.arange(args.users), lengths).astype(str),
        "item_key": np.concatenate(seqs).astype(str),
        "position": np.concatenate([np.arange(n) for n in lengths]).astype(np.int32),
    })
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.duckdb"
        t0 = time.perf_counter()
        build_store(ListSource([Chunk(events=table)]), path, BuildConfig(splits=[{"kind": "leave_last_out"}]))
        print(f"store: {len(table):,} events built in {time.perf_counter() - t0:.1f} s (not counted)")
        with Store.open(path) as store:
            vocab = Vocabulary.from_store(store.con, "loo")
            model = DotModel(
                vocab,
                rng.standard_normal((args.users, args.dim), dtype=np.float32) * np.float32(1 / np.sqrt(args.dim)),
                rng.standard_normal((len(vocab), args.dim), dtype=np.float32),
            )
            t0 = time.perf_counter()
            res = evaluate({"dot": model}, store, "loo", "leave_last_out", args.ks, args.batch_size)
            dt = time.perf_counter() - t0
        n = len(res.seq_ids)
        print(f"  segue.evaluation.evaluate: {n:,} users x {len(vocab):,} tokens in {dt:.1f} s "
              f"({n / dt:,.0f} users/s; protocol + arrays + ranking + metrics), "
              f"stages {res.models['dot'].info['seconds_by_stage']}")


def _rule_per_row(scores: np.ndarray, k: int) -> np.ndarray:
    idx = np.empty((len(scores), k), dtype=np.int64)
    for i in range(len(scores)):
        idx[i] = select_top(scores[i], k)
    return idx


def _rule_batched(scores: np.ndarray, k: int) -> np.ndarray:
    """The same rule on the whole batch: one argpartition, the tie fix-up only on rows that need it."""
    v = scores.shape[1]
    idx = np.argpartition(scores, v - k, axis=1)[:, v - k :]
    top = np.take_along_axis(scores, idx, 1)
    cut = top.min(1)
    fix = (cut > NEG_INF) & ((scores == cut[:, None]).sum(1) > (top == cut[:, None]).sum(1))
    for i in np.flatnonzero(fix):
        idx[i] = select_top(scores[i], k)
    top = np.take_along_axis(scores, idx, 1)
    return np.take_along_axis(idx, np.lexsort((idx, -top), axis=1), 1)


def _old_batched(scores: np.ndarray, k: int) -> np.ndarray:
    """Before the tie rule: argpartition of the batch, then a stable sort of the k kept."""
    idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(scores, idx, 1)
    return np.take_along_axis(idx, np.argsort(-top, axis=1, kind="stable"), 1)


def topk_rule(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(2)
    k, b, v = max(args.ks), args.batch_size or auto_batch_size(args.items + N_SPECIAL), args.items + N_SPECIAL
    for ties in (False, True):
        s = rng.standard_normal((b, v), dtype=np.float32)
        if ties:
            s = np.round(s, 1)
        s[:, :N_SPECIAL] = NEG_INF
        assert (_rule_batched(s, k) == _rule_per_row(s, k)).all()
        best: dict[str, float] = {}
        for _ in range(3):
            for name, f in (("select_top per row", _rule_per_row), ("same rule, batched", _rule_batched), ("old argpartition", _old_batched)):
                t0 = time.perf_counter()
                f(s, k)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
        label = "rounded scores (ties)" if ties else "random scores"
        print(f"top {k} of a {b} x {v:,} batch, {label}, best of 3 alternating rounds: "
              + ", ".join(f"{n} {t * 1e3:.0f} ms ({t / b * 1e6:.0f} us/row)" for n, t in best.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--ks", type=lambda t: [int(x) for x in t.split(",")], default=[1, 5, 10, 20, 50, 100])
    ap.add_argument("--store", action="store_true", help="also run through a real store")
    ap.add_argument("--topk-rule", action="store_true", help="also time the top-k tie rule against the old batched cut")
    args = ap.parse_args()
    print(machine_line(), flush=True)  # the reference the figures below are read against
    print("numpy float32 matmul at this bench's shapes: "
          f"{matmul_gflops(2048, 2048, 2048):.0f} GFLOP/s (2048^3), "
          f"{matmul_gflops(256, args.dim, args.items):.0f} GFLOP/s (256 x {args.dim} x {args.items:,})")
    in_memory(args)
    if args.topk_rule:
        topk_rule(args)
    if args.store:
        via_store(args)


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
