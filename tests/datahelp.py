"""Small real stores for the split, vocabulary, array and loader tests (built through build_store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from segue.data.sources.base import Chunk, ListSource
from segue.data.store import BuildConfig, build_store


def events_table(
    seqs: list[list[Any]],
    *,
    ts: list[list[int]] | None = None,
    rating: list[list[float | None]] | None = None,
    extra: dict[str, list[list[Any]]] | None = None,
) -> pa.Table:
    """One event row per item of each sequence; sequence keys are 'u0', 'u1', ...; item keys 'i<x>' (strings are kept as they are)."""
    cols: dict[str, list[Any]] = {
        "seq_key": [f"u{s}" for s, seq in enumerate(seqs) for _ in seq],
        "item_key": [x if isinstance(x, str) else f"i{x}" for seq in seqs for x in seq],
        "position": [p for seq in seqs for p in range(len(seq))],
    }
    if ts is not None:
        cols["ts"] = [t for row in ts for t in row]
    if rating is not None:
        cols["rating"] = [r for row in rating for r in row]
    for name, values in (extra or {}).items():
        cols[name] = [v for row in values for v in row]
    return pa.table(cols)


def make_store(
    path: Path,
    seqs: list[list[Any]],
    splits: list[dict[str, Any]] | None = None,
    *,
    seed: int = 0,
    min_count: int = 1,
    **columns: Any,
) -> Path:
    """Build a store at `path` from item sequences (plus optional ts/rating/extra per event)."""
    source = ListSource([Chunk(events=events_table(seqs, **columns))])
    config = BuildConfig(seed=seed, splits=splits or [{"kind": "random_sequence"}], vocab_min_count=min_count)
    return build_store(source, path, config)


def random_sequences(rng: np.random.Generator, n: int, n_items: int = 50, max_len: int = 12) -> list[list[int]]:
    return [list(rng.integers(0, n_items, rng.integers(1, max_len + 1))) for _ in range(n)]


def read_beauty(path: Path) -> pa.Table:
    """Events of `user item item ...` lines (the beauty file), positions in line order."""
    seq, item, pos = [], [], []
    for line in path.read_text().splitlines():
        user, *items = line.split()
        seq.extend([user] * len(items))
        item.extend(items)
        pos.extend(range(len(items)))
    return pa.table({"seq_key": seq, "item_key": item, "position": pa.array(pos, pa.int32())})


def read_ml100k(path: Path) -> pa.Table:
    """Events of ml-100k's u.data (user, item, rating, unix time; tab-separated)."""
    data = np.loadtxt(path, dtype=np.int64)
    return pa.table(
        {
            "seq_key": data[:, 0].astype(str),
            "item_key": data[:, 1].astype(str),
            "rating": data[:, 2].astype(np.float64),
            "ts": data[:, 3],
        }
    )


def build_from_table(path: Path, events: pa.Table, splits: list[dict[str, Any]], seed: int = 0) -> Path:
    config = BuildConfig(seed=seed, splits=splits)
    return build_store(ListSource([Chunk(events=events)]), path, config)


def kill_after_checkpoint(proc: Any, run: Path, step: int, timeout: float = 600.0) -> None:
    """Wait until `proc` (a training child stalled after `step`) has written checkpoint `step`
    completely, then kill -9 it; assert it really died mid-run (no metrics.json)."""
    import os
    import signal
    import time

    ckpt = run / "checkpoints" / str(step)
    deadline = time.time() + timeout
    while not (ckpt.is_dir() and (ckpt / "_CHECKPOINT_METADATA").exists()):
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "the child exited"
        assert time.time() < deadline, f"checkpoint {step} never appeared"
        time.sleep(0.2)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "metrics.json").exists()


def tiny_train_config(store: Path, n: int, prefetch_threads: int = 0) -> dict[str, Any]:
    """A TrainConfig dict of a 1-layer transformer on `store`'s "loo" split: 2n steps, a checkpoint
    every n, refitted on train+valid (no validation set: the sharding and multi-host tests compare
    training only)."""
    return {
        "name": "t",
        "data": {"store": str(store), "split": "loo"},
        "model": {"n_layers": 1, "n_heads": 2, "d_model": 8, "d_ff": 16, "dropout": 0.1, "context_length": 6},
        "loss": {"kind": "logq", "n_negatives": 6, "n_inbatch": 4},
        "optim": {"warmup_steps": 2},
        "trainer": {
            "max_steps": 2 * n,
            "eval_every": 1000,
            "checkpoint_every": n,
            "log_every": 1,
            "progress": False,
            "patience": None,
            "fit_on": "train+valid",
            "loader": {"batch_size": 8, "unk_rate": 0.1, "bucketing": False, "prefetch_threads": prefetch_threads},
        },
    }
