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
from segue.data.splits import Part, parse_part
from segue.data.store import BuildConfig, Store, build_store
from segue.models.base import model_class, top_k

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MODELS = ["popularity", "itemknn", "ease", "item2vec", "als"]
# (name, dataset, split spec)
SETUPS = {
    "ml100k-loo": ("ml-100k", {"kind": "leave_last_out", "name": "loo"}),
    "ml100k-holdout": ("ml-100k", {"kind": "random_holdout", "name": "holdout"}),
    "beauty-loo": ("beauty", {"kind": "leave_last_out", "name": "loo"}),
}


# ---------------------------------------------------------------------------------------------
# data


def open_dataset(name: str, data: Path) -> Any:
    """The store source for a shared dataset (the project's importers when present)."""
    try:
        from segue.data.sources import open_source  # type: ignore[attr-defined]
    except ImportError:
        open_source = None
    path = data / name
    if open_source is not None:
        if name == "ml-100k":
            return open_source(path)
        return open_source(path / "Beauty.txt") if name == "beauty" else open_source(path)
    return _fallback_source(name, path)


def _fallback_source(name: str, path: Path) -> Any:
    import pyarrow as pa

    from segue.data.sources.base import Chunk, ListSource

    if name == "ml-100k":
        raw = np.loadtxt(path / "u.data", dtype=np.int64)
        users, items, ratings, ts = raw.T
        table = pa.table(
            {"seq_key": users.astype(str), "item_key": items.astype(str), "ts": ts, "rating": ratings.astype(float)}
        )
        return ListSource([Chunk(events=table)], name="ml-100k")
    seq, item, pos = [], [], []
    for line in (path / "Beauty.txt").read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        seq += [parts[0]] * (len(parts) - 1)
        item += parts[1:]
        pos += list(range(len(parts) - 1))
    table = pa.table({"seq_key": seq, "item_key": item, "position": pa.array(pos, pa.int32())})
    return ListSource([Chunk(events=table)], name="beauty")


def store_for(dataset: str, spec: dict, work: Path, data: Path) -> Path:
    path = work / f"{dataset}-{spec['name']}.duckdb"
    if not path.exists():
        build_store(open_dataset(dataset, data), path, BuildConfig(splits=[spec]))
    return path


# ---------------------------------------------------------------------------------------------
# metrics (a local implementation until segue.evaluation is used)


def evaluate(model: Any, data: SplitData, part: Part, k: int = 10, batch: int = 512) -> dict[str, float]:
    """Mean per-user metrics@k over users with at least one target in `part`.

    HR = [any hit]; Recall = hits / |T| (RecBole) and hits / min(k, |T|) (Liang et al.);
    NDCG = sum_hits 1/log2(rank+1) / sum_{r<=min(k,|T|)} 1/log2(r+1); MRR = 1/rank of the first hit.
    """
    history = data.history(part)
    targets = data.targets(part)
    users = targets.nonempty()
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    out: dict[str, list[np.ndarray]] = {m: [] for m in ("hr", "ndcg", "recall", "recall_min", "mrr")}
    for lo in range(0, len(users), batch):
        rows = users[lo : lo + batch]
        scores = model.score(history, rows)
        top, top_scores = top_k(scores, k, history, rows)
        t = targets.take(rows)
        n_rel = np.zeros(len(rows))
        hit = np.zeros((len(rows), k), dtype=bool)
        for b in range(len(rows)):
            rel = set(t.row(b).tolist())
            n_rel[b] = len(rel)
            hit[b] = np.isin(top[b], list(rel)) & np.isfinite(top_scores[b])
        hits = hit.sum(axis=1)
        idcg = np.cumsum(discount)[np.minimum(n_rel, k).astype(int) - 1]
        first = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, np.inf)
        out["hr"].append((hits > 0).astype(float))
        out["ndcg"].append((hit * discount).sum(axis=1) / idcg)
        out["recall"].append(hits / n_rel)
        out["recall_min"].append(hits / np.minimum(n_rel, k))
        out["mrr"].append(1.0 / first)
    return {m: float(np.concatenate(v).mean()) for m, v in out.items()} | {"users": len(users)}


# ---------------------------------------------------------------------------------------------


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
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"{args.data}: no shared data here", file=sys.stderr)
        return 2
    part = parse_part(args.part)
    overrides = parse_overrides(args.overrides)
    args.work.mkdir(parents=True, exist_ok=True)
    k = args.k
    header = f"{'setup':16} {'model':34} {'HR@'+str(k):>8} {'NDCG@'+str(k):>8} {'Rec@'+str(k):>8} {'RecM@'+str(k):>8} {'MRR@'+str(k):>8} {'users':>6} {'fit s':>7} {'eval s':>7}"
    print(f"part: {part.name.lower()}   Rec = hits/|T| (RecBole), RecM = hits/min(k,|T|) (Liang et al.)")
    print(header)
    print("-" * len(header))
    for setup in args.only:
        dataset, spec = SETUPS[setup]
        path = store_for(dataset, spec, args.work, args.data)
        with Store.open(path) as store:
            data = SplitData.load(store, spec["name"])
            for family in args.models:
                cls = model_class(family)
                for over in variants(family, overrides):
                    config = cls.config_class(**over)
                    t0 = time.perf_counter()
                    model = cls(config).fit(data)
                    t1 = time.perf_counter()
                    m = evaluate(model, data, part, k)
                    t2 = time.perf_counter()
                    label = family + ("" if not over else " " + ",".join(f"{a}={b}" for a, b in over.items()))
                    print(
                        f"{setup:16} {label:34} {m['hr']:8.4f} {m['ndcg']:8.4f} {m['recall']:8.4f} "
                        f"{m['recall_min']:8.4f} {m['mrr']:8.4f} {m['users']:6d} {t1 - t0:7.1f} {t2 - t1:7.1f}",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

