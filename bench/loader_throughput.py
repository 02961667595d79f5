"""Training-batch throughput of the Grain loader over memory-mapped split arrays.

Builds a synthetic playlist corpus (segue's generator, or plain numpy with --numpy), compiles it
to memory-mapped arrays (through a real store and `compile_split` with --via-store, else by
saving the arrays directly), then times full epochs of `make_train_loader` at the given context
length and batch sizes, with and without length bucketing. Prints sequences/s, label tokens/s
and the share of padded columns, beside the machine's cores and a memory-read reference.

    .venv/bin/python bench/loader_throughput.py                    # 100,000 playlists, context 50
    .venv/bin/python bench/loader_throughput.py --via-store        # also times store build + compile

Target (issue 2): at least 20,000 sequences per second at context 50 on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from segue.data.arrays import SequenceArrays, load_arrays, save_arrays
from segue.data.loader import LoaderConfig, make_train_loader


def synthetic_arrays(n: int, n_items: int, seed: int, use_numpy: bool) -> SequenceArrays:
    if use_numpy:
        rng = np.random.default_rng(seed)
        lengths = np.clip(np.round(rng.lognormal(np.log(66) - 0.32, 0.8, n)), 5, 250).astype(np.int64)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        items = (rng.zipf(1.2, int(offsets[-1])) % n_items).astype(np.int32)
    else:
        from segue.data.sources.synthetic import SyntheticConfig, iter_playlists

        offs, tracks = [], []
        base = 0
        for b in iter_playlists(SyntheticConfig(n_playlists=n, n_items=n_items, seed=seed)):
            offs.append(b.offsets[:-1] + base)
            tracks.append(b.tracks)
            base += int(b.offsets[-1])
        offsets = np.concatenate([*offs, [base]]).astype(np.int64)
        items = np.concatenate(tracks).astype(np.int32)
    rng = np.random.default_rng(seed + 1)
    return SequenceArrays(
        offsets=offsets,
        tokens=items + 4,  # as if every item were in the vocabulary (tokens 0..3 are special)
        item_ids=items,
        positions=None,
        feedback={"listened": rng.random(len(items), dtype=np.float32)},
    )


def via_store(n: int, n_items: int, seed: int, folder: Path) -> SequenceArrays:
    from segue.data.arrays import SplitData
    from segue.data.sources.synthetic import SyntheticConfig, SyntheticSource
    from segue.data.store import BuildConfig, Store, build_store

    t = time.perf_counter()
    path = build_store(
        SyntheticSource(SyntheticConfig(n_playlists=n, n_items=n_items, seed=seed)),
        folder / "bench.duckdb",
        BuildConfig(seed=seed, splits=[{"kind": "random_sequence", "valid_fraction": 0, "test_fraction": 0}]),
    )
    t_build = time.perf_counter() - t
    with Store.open(path) as store:
        t = time.perf_counter()
        data = SplitData.load(store, "random")
        t_compile = time.perf_counter() - t
    print(f"store build: {t_build:.1f} s; compile_split (train view): {t_compile:.1f} s "
          f"({data.train.n_events / t_compile:,.0f} events/s)")
    return data.train


def memory_read_gbps() -> float:
    a = np.ones(50_000_000, dtype=np.float32)  # 200 MB
    a.sum()
    t = time.perf_counter()
    for _ in range(5):
        a.sum()
    return 5 * a.nbytes / (time.perf_counter() - t) / 1e9


def time_epoch(arrays: SequenceArrays, cfg: LoaderConfig, max_seconds: float) -> dict[str, float]:
    loader = make_train_loader(arrays, cfg, seed=0)
    for _ in range(3):  # warm-up: epoch plan, page cache, thread pool
        next(loader)
    seqs = labels = cols = 0
    t0 = time.perf_counter()
    n = 0
    while n < loader.batches_per_epoch:
        b = next(loader)
        seqs += int((b["rows"] >= 0).sum())
        labels += int(b["mask"].sum())
        cols += b["inputs"].size
        n += 1
        if time.perf_counter() - t0 > max_seconds:
            break
    dt = time.perf_counter() - t0
    return {"seq_s": seqs / dt, "labels_s": labels / dt, "pad_share": 1 - labels / cols, "batches": n, "seconds": dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--context", type=int, default=50)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="Grain prefetch threads to try")
    ap.add_argument("--unk-rate", type=float, default=0.01)
    ap.add_argument("--max-seconds", type=float, default=20.0, help="per configuration")
    ap.add_argument("--numpy", action="store_true", help="numpy corpus instead of segue's generator")
    ap.add_argument("--via-store", action="store_true", help="build a store and compile_split (slower)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(machine_line(), flush=True)  # the reference the figures below are read against

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {platform.processor() or platform.machine()}, {cores} usable cores "
          f"(os.cpu_count {os.cpu_count()}), load average {os.getloadavg()[0]:.2f}; "
          f"numpy sum read {memory_read_gbps():.1f} GB/s")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        if args.via_store:
            arrays = via_store(args.sequences, args.items, args.seed, Path(tmp))
        else:
            arrays = synthetic_arrays(args.sequences, args.items, args.seed, args.numpy)
            save_arrays(arrays, Path(tmp) / "arrays")
            arrays = load_arrays(Path(tmp) / "arrays")  # memory-mapped, as in training
        lengths = arrays.lengths[arrays.lengths > 0]
        print(f"corpus: {len(lengths):,} sequences, {int(lengths.sum()):,} events, mean length "
              f"{lengths.mean():.1f}, max {lengths.max()} (prepared in {time.perf_counter() - t:.1f} s; "
              f"tokens memory-mapped: {isinstance(arrays.tokens, np.memmap)})")
        print(f"{'batch':>5} {'bucketing':>9} {'threads':>7} {'seq/s':>10} {'labels/s':>12} {'padding':>8} {'batches':>8}")
        for bs in args.batch_sizes:
            for bucketing in (True, False):
                for threads in args.threads:
                    cfg = LoaderConfig(
                        batch_size=bs,
                        context_length=args.context,
                        bucketing=bucketing,
                        unk_rate=args.unk_rate,
                        prefetch_threads=threads,
                    )
                    r = time_epoch(arrays, cfg, args.max_seconds)
                    print(f"{bs:>5} {bucketing!s:>9} {threads:>7} {r['seq_s']:>10,.0f} {r['labels_s']:>12,.0f} "
                          f"{r['pad_share']:>8.1%} {r['batches']:>8}")
        del arrays
    print("target: >= 20,000 sequences/s at context 50 on 2 cores")


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
