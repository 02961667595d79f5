"""Quality of the classic baselines on the shared real datasets, full ranking.

Runs popularity, itemknn, ease, item2vec and als on
  ml-100k  leave-last-out (last event test, second to last validation)
  ml-100k  random within-user holdout 80/10/10 (the RecBole general-recommendation protocol)
  beauty   leave-last-out
and prints HR@10, NDCG@10, Recall@10 (two normalisations), MRR@10 and fit time per model.

Every item the user has not interacted with (in the history parts of the scored part) is ranked;
history items can never count as hits. Targets outside the training vocabulary count as misses.

    .venv/bin/python bench/quality.py                     # test part, default configs
    .venv/bin/python bench/quality.py --part valid        # for tuning (never tune on test)
    .venv/bin/python bench/quality.py --only ml100k-holdout --models ease \
        --set ease.l2=300 --set ease.l2=500               # several values: one row each

Stores are built once under --work (default /tmp/segue-bench) and reused.

    .venv/bin/python bench/quality.py --tuned             # also the per-dataset configs of TUNED
    .venv/bin/python bench/quality.py --scale 1000000     # large-catalogue check (synthetic)

`--scale N` builds a synthetic Zipf-popularity corpus over N items and times the parts that must
stay sparse at that size: item-kNN's blocked X^T X with top-k pruning, scoring a batch of
histories, an ALS fit and fold-in, and EASE's refusal above its dense-Gram limit.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from segue.data.arrays import SplitData
from segue.data.store import BuildConfig, Store, build_store
from segue.errors import SegueError
from segue.evaluation import ProtocolConfig, build_task, evaluate_task
from segue.models.base import model_class

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import guarded, machine_line, need_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MODELS = ["popularity", "itemknn", "ease", "item2vec", "als"]
# name: (dataset, split spec, evaluation protocol)
SETUPS = {
    "ml100k-loo": ("ml-100k", {"kind": "leave_last_out", "name": "loo"}, "leave_last_out"),
    "ml100k-holdout": ("ml-100k", {"kind": "random_holdout", "name": "holdout"}, "random_holdout"),
    "beauty-loo": ("beauty", {"kind": "leave_last_out", "name": "loo"}, "leave_last_out"),
}


# ---------------------------------------------------------------------------------------------
# data


def open_dataset(name: str, data: Path) -> Any:
    """The store source for a shared dataset: the project's importers where present."""
    path = data / name
    try:
        from segue.data.sources import open_source  # type: ignore[attr-defined]

        return open_source("movielens", path) if name == "ml-100k" else open_source("seqtext", path / "Beauty.txt")
    except (ImportError, SegueError):
        pass
    if name == "ml-100k":
        from segue.data.sources.movielens import MovieLensSource

        return MovieLensSource(path)
    return _beauty_source(path / "Beauty.txt")


def _beauty_source(path: Path) -> Any:
    """`user item item ...` lines, items in time order (used until a seqtext importer lands)."""
    import pyarrow as pa

    from segue.data.sources.base import Chunk, ListSource

    seq, item, pos = [], [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        seq += [parts[0]] * (len(parts) - 1)
        item += parts[1:]
        pos += list(range(len(parts) - 1))
    table = pa.table({"seq_key": seq, "item_key": item, "position": pa.array(pos, pa.int32())})
    return ListSource([Chunk(events=table)], name="beauty")


# what each dataset's store is built from, under --data
SOURCES = {"ml-100k": ("ml-100k", "the MovieLens 100K folder (u.data)"), "beauty": ("beauty/Beauty.txt", "the Amazon Beauty sequences")}


def store_path(dataset: str, spec: dict, work: Path) -> Path:
    return work / f"{dataset}-{spec['name']}.duckdb"


def check_data(setups: list[str], work: Path, data: Path) -> None:
    """Exit 2 with one line, before any work, when a setup's store is not built and its data is missing."""
    for setup in setups:
        dataset, spec, _ = SETUPS[setup]
        if not store_path(dataset, spec, work).exists():
            rel, what = SOURCES[dataset]
            need_data(data / rel, f"{setup} builds its store from {what}", "--data names the shared data folder, default ../shared/data")


def store_for(dataset: str, spec: dict, work: Path, data: Path) -> Path:
    path = store_path(dataset, spec, work)
    if not path.exists():
        build_store(open_dataset(dataset, data), path, BuildConfig(splits=[spec]))
    return path


# ---------------------------------------------------------------------------------------------


def measure(model: Any, task: Any, k: int) -> dict[str, float]:
    """Means over the task's queries, through segue.evaluation (full ranking, history excluded).

    recall = hits / min(k, |T|) (Liang et al., the harness's); recall_rb = hits / |T| (RecBole).
    """
    result = evaluate_task({"m": model}, task, (k,))["m"]
    u = result.per_user
    hits = u[f"precision@{k}"] * k
    return {
        "hr": result.mean(f"hr@{k}"),
        "ndcg": result.mean(f"ndcg@{k}"),
        "recall": result.mean(f"recall@{k}"),
        "recall_rb": float(np.mean(hits / task.n_relevant)),
        "mrr": result.mean(f"mrr@{k}"),
        "coverage": result.coverage[k],
        "users": len(task),
    }


# Per-setup configs chosen on the validation part (bench/quality.py --part valid --set ...),
# shown by --tuned beside the library defaults.
# Validation NDCG@10 of each (defaults -> tuned) is in the comments.
TUNED: dict[str, dict[str, dict[str, Any]]] = {
    "ml100k-holdout": {
        "ease": {"l2": 500.0},  # 0.2731 -> 0.2736
        "itemknn": {"neighbours": 1000, "shrink": 0.0},  # 0.2120 -> 0.2182
        "item2vec": {"ns_exponent": -0.5},  # 0.1867 -> 0.1941
        "als": {"regularization": 30.0, "alpha": 2.0},  # 0.2625 -> 0.2694
    },
    "ml100k-loo": {
        "ease": {"l2": 500.0},  # 0.1242 -> 0.1250
        "itemknn": {"neighbours": 1000, "shrink": 0.0, "decay": 0.7},  # ~0.11 -> 0.1156
        "als": {"regularization": 10.0, "alpha": 2.0},  # 0.0785 -> 0.0820
    },
    "beauty-loo": {
        "ease": {"l2": 50.0},  # 0.0542 (l2 200) -> 0.0571
        "item2vec": {"ns_exponent": 0.5, "window": 10},  # 0.0368 -> 0.0416
        "als": {"regularization": 0.01, "alpha": 40.0},  # 0.0357 -> 0.0430
    },
}


def scale_check(n_items: int, n_seqs: int, mean_len: int, seed: int = 0) -> None:
    import resource

    from segue.data.arrays import SequenceArrays
    from segue.data.vocab import N_SPECIAL
    from segue.models._interactions import history_matrix, training_matrix
    from segue.models.als import ALS, ALSConfig
    from segue.models.ease import EASEConfig, check_size
    from segue.models.itemknn import cosine_neighbours

    def rss() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss is KiB)

    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    lengths = np.maximum(2, rng.geometric(1 / mean_len, n_seqs))
    weights = 1.0 / (np.arange(n_items) + 10.0) ** 0.9  # Zipf-like popularity
    cdf = np.cumsum(weights) / weights.sum()
    items = np.minimum(np.searchsorted(cdf, rng.random(int(lengths.sum()))), n_items - 1)
    offsets = np.zeros(n_seqs + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    seqs = SequenceArrays(offsets=offsets, tokens=(items + N_SPECIAL).astype(np.int32), item_ids=items.astype(np.int32))
    x = training_matrix(seqs, n_items)
    print(
        f"corpus: {n_seqs:,} sequences, {int(lengths.sum()):,} events, {n_items:,} items "
        f"({x.nnz:,} distinct pairs) in {time.perf_counter() - t:.1f} s; peak RSS {rss():.2f} GiB"
    )
    t = time.perf_counter()
    sim = cosine_neighbours(x, 200, 10.0)
    print(
        f"itemknn fit: {time.perf_counter() - t:.1f} s, {sim.nnz:,} similarities kept "
        f"({sim.data.nbytes / 2**20:.0f} MiB), peak RSS {rss():.2f} GiB"
    )
    rows = np.arange(1000)
    t = time.perf_counter()
    scores = (history_matrix(seqs, rows, n_items) @ sim).toarray()
    print(f"itemknn score: 1,000 histories x {n_items:,} items in {time.perf_counter() - t:.2f} s ({scores.nbytes / 2**30:.1f} GiB dense)")
    del scores
    als = ALS(ALSConfig(factors=64, iterations=3))
    t = time.perf_counter()
    from threadpoolctl import threadpool_limits

    from segue.models.als import confidence_matrix

    conf = confidence_matrix(seqs, np.arange(n_seqs), n_items, als.config.alpha, False)
    with threadpool_limits(1, "blas"):
        model = als._new_model()
        model.fit(conf, show_progress=False)
        print(f"als fit (64 factors, 3 iterations): {time.perf_counter() - t:.1f} s, peak RSS {rss():.2f} GiB")
        t = time.perf_counter()
        model.recalculate_user(rows, conf[rows])
    print(f"als fold-in of 1,000 histories: {time.perf_counter() - t:.2f} s")
    try:
        check_size(n_items, EASEConfig())
    except SegueError as e:
        print(f"ease: {e}")


def parse_overrides(items: list[str]) -> dict[str, dict[str, list[Any]]]:
    """--set family.key=value (repeat a key for a sweep) -> {family: {key: [values]}}."""
    out: dict[str, dict[str, list[Any]]] = {}
    for item in items:
        lhs, value = item.split("=", 1)
        family, key = lhs.split(".", 1)
        try:
            parsed: Any = int(value)
        except ValueError:
            try:
                parsed = float(value)
            except ValueError:
                parsed = {"true": True, "false": False}.get(value.lower(), value)
        out.setdefault(family, {}).setdefault(key, []).append(parsed)
    return out


def variants(family: str, overrides: dict[str, dict[str, list[Any]]]) -> list[dict[str, Any]]:
    grid = overrides.get(family, {})
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))] or [{}]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=Path("/tmp/segue-bench"))
    ap.add_argument("--part", default="test", help="valid (for tuning) or test")
    ap.add_argument("--only", nargs="*", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="family.key=value")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--tuned", action="store_true", help="also run the per-setup configs in TUNED")
    ap.add_argument("--scale", type=int, metavar="N_ITEMS", help="run the large-catalogue check instead")
    ap.add_argument("--scale-sequences", type=int, default=200_000)
    args = ap.parse_args(argv)
    if args.scale:
        scale_check(args.scale, args.scale_sequences, 50)
        return 0
    check_data(args.only, args.work, args.data)
    print(machine_line(), flush=True)  # the reference the figures below are read against
    overrides = parse_overrides(args.overrides)
    args.work.mkdir(parents=True, exist_ok=True)
    k = args.k
    cols = ["HR", "NDCG", "Recall", "RecallRB", "MRR", "Cov"]
    header = f"{'setup':15} {'model':30} " + " ".join(f"{c + '@' + str(k):>11}" for c in cols)
    header += f" {'users':>6} {'fit s':>6} {'eval s':>6}"
    print(
        f"part: {args.part}; full ranking, history items excluded; Recall = hits/min(k,|T|) "
        "(Liang et al.), RecallRB = hits/|T| (RecBole), Cov = catalogue coverage"
    )
    print(header)
    print("-" * len(header))
    for setup in args.only:
        dataset, spec, protocol = SETUPS[setup]
        path = store_for(dataset, spec, args.work, args.data)
        with Store.open(path) as store:
            data = SplitData.load(store, spec["name"])
            task = build_task(data, ProtocolConfig(name=protocol, part=args.part))
            for family in args.models:
                cls = model_class(family)
                runs = variants(family, overrides)
                if args.tuned and family in TUNED.get(setup, {}):
                    runs.append(TUNED[setup][family])
                for over in runs:
                    config = cls.config_class(**over)
                    t0 = time.perf_counter()
                    model = cls(config).fit(data)
                    t1 = time.perf_counter()
                    m = measure(model, task, k)
                    t2 = time.perf_counter()
                    label = family + ("" if not over else " " + ",".join(f"{a}={b}" for a, b in over.items()))
                    values = " ".join(f"{m[c]:11.4f}" for c in ("hr", "ndcg", "recall", "recall_rb", "mrr", "coverage"))
                    print(f"{setup:15} {label:30} {values} {m['users']:6d} {t1 - t0:6.1f} {t2 - t1:6.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded(main))

