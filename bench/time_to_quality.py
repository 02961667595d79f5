"""Time to quality: segue's Beauty config against RecTools' SASRec, side by side, in CPU seconds.

Both models train in the same run, each in its own process pinned to one core (`taskset`, one
thread for XLA, torch and BLAS), under the same protocol:
  1. train on the train part, validating NDCG@10 on the same validation users (segue's fixed
     `trainer.eval_max_users` sample) after every validation point (segue: every eval_every steps;
     RecTools: every epoch); stop on validation (patience), keep the best;
  2. test the best model once on the test part with segue's evaluation harness (RecTools' top-100
     lists go through a `Recommender` adapter defined here, never in the package);
  3. refit on train+valid for the chosen number of steps (segue) or epochs (RecTools), test again.
Validation NDCG@10 of both is computed by segue's code: the in-training validation for segue, and
`segue.evaluation.metrics.ndcg` over the RecTools top-10 lists of the same users for RecTools.
Times are process CPU seconds (robust to the machine's load; compiles and validation included).

Printed: CPU seconds each needs to first reach the best validation NDCG@10 RecTools reaches in
this run, and their ratio (target <= 0.5); the final test NDCG@10 / HR@10 of both under both
protocols; and the profile of one segue training step (--profile, see `step_profile`).

RecTools is an optional bench dependency. It pins numpy < 2, so install it into its own venv and
pass its python (the RecTools side runs as a subprocess there; it does not import segue):

    python3 -m venv /tmp/rt && /tmp/rt/bin/pip install torch==2.13.0 'rectools[torch]==0.19.0'
    # (or `pip install '.[bench-rectools]'` into a venv that can take numpy < 2)
    .venv/bin/python bench/time_to_quality.py --rectools-python /tmp/rt/bin/python
    .venv/bin/python bench/time_to_quality.py --only segue --no-refit          # segue side only
    .venv/bin/python bench/time_to_quality.py --profile-only                   # the step profile
    .venv/bin/python bench/time_to_quality.py --only rectools --no-refit --cores 0/0-1   # a partial run

--cores "0/1" pins segue to core 0 and RecTools to core 1 (the default); on a machine loaded by
others a wider list (0-1) keeps each side single-threaded (the flags above) but lets the scheduler
move it, which changes the wall time, not the CPU seconds reported.

The store is built from ../shared/data/beauty/Beauty.txt (bench/quality.py's beauty-loo setup)
under --work unless --store names one. RecTools' settings (issue 19): SASRec, 2 blocks, width 64,
1 head, dropout 0.2, context 50, sampled softmax over 128 uniform negatives, lr 1e-3, batch 128.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import machine_line  # bench/ is the script's folder, so on sys.path

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TORCH_NUM_THREADS": "1",
}


def load_line() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------------------------------------
# the RecTools side (runs in the RecTools venv: numpy, pandas, torch, rectools only)


def rectools_worker(args: argparse.Namespace) -> None:
    import numpy as np
    import pandas as pd
    import torch
    from rectools import Columns
    from rectools.dataset import Dataset
    from rectools.models import SASRecModel

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    d = np.load(args.data)

    def dataset(prefix: str) -> Dataset:
        users, items = d[prefix + "_users"], d[prefix + "_items"]
        order = np.arange(len(users))  # events are in time order within a user
        df = pd.DataFrame(
            {
                Columns.User: users,
                Columns.Item: items,
                Columns.Weight: 1.0,
                Columns.Datetime: pd.Timestamp("2000-01-01") + pd.to_timedelta(order, unit="s"),
            }
        )
        return Dataset.construct(df)

    def model() -> SASRecModel:
        return SASRecModel(
            n_blocks=2,
            n_factors=64,
            n_heads=1,
            dropout_rate=0.2,
            session_max_len=50,
            loss="sampled_softmax",
            n_negatives=128,
            lr=1e-3,
            batch_size=128,
            epochs=1,
            deterministic=True,
            verbose=0,
            recommend_torch_device="cpu",
        )

    def top(m: SASRecModel, ds: Dataset, users: np.ndarray, k: int) -> np.ndarray:
        rec = m.recommend(users, ds, k=k, filter_viewed=True, on_unsupported_targets="warn")
        out = np.full((len(users), k), -1, np.int64)
        pos = {u: i for i, u in enumerate(users.tolist())}
        r = rec[Columns.Rank].to_numpy() - 1
        u = np.array([pos[x] for x in rec[Columns.User].tolist()], np.int64)
        out[u, r] = rec[Columns.Item].to_numpy()
        return out

    t0 = time.process_time()
    result: dict = {"mode": args.mode, "epochs": [], "threads": torch.get_num_threads()}
    test_ds = dataset("test_hist")
    test_users = np.unique(d["test_hist_users"])
    if args.mode == "train":
        ds = dataset("train")
        val_users, val_targets = d["val_users"], d["val_targets"]
        m = model()
        best, best_epoch, bad, best_state = -1.0, 0, 0, None
        for epoch in range(1, args.max_epochs + 1):
            m.fit_partial(ds, min_epochs=1, max_epochs=1)
            lists = top(m, ds, val_users, 10)
            hit = lists == val_targets[:, None]
            rank = np.where(hit.any(1), hit.argmax(1), 10)
            ndcg = float(np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0).mean())  # stopping only
            cpu = time.process_time() - t0
            np.save(Path(args.out).with_suffix(f".val{epoch}.npy"), lists)
            result["epochs"].append({"epoch": epoch, "cpu_s": cpu, "ndcg@10_worker": ndcg})
            print(f"rectools epoch {epoch}: valid ndcg@10 {ndcg:.4f}  cpu {cpu:.0f} s", flush=True)
            if ndcg > best:
                best, best_epoch, bad = ndcg, epoch, 0
                best_state = {k: v.clone() for k, v in m.torch_model.state_dict().items()}
            else:
                bad += 1
                if bad >= args.patience:
                    break
        m.torch_model.load_state_dict(best_state)
        result["best_epoch"] = best_epoch
    else:
        ds = dataset("full")
        m = model()
        for epoch in range(1, args.epochs + 1):
            m.fit_partial(ds, min_epochs=1, max_epochs=1)
            result["epochs"].append({"epoch": epoch, "cpu_s": time.process_time() - t0})
    result["train_cpu_s"] = time.process_time() - t0
    # The test queries' histories are the dataset of `test_hist` (one user id per query).
    np.save(Path(args.out).with_suffix(".test.npy"), top(m, test_ds, test_users, 100))
    result["test_users"] = test_users.tolist()
    result["total_cpu_s"] = time.process_time() - t0
    Path(args.out).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# the segue side


def segue_config(args: argparse.Namespace, store: Path, name: str, overrides: dict) -> object:
    from segue.training.trainer import load_train_config, parse_train_config

    cfg = load_train_config(args.config)
    d = cfg.model_dump(mode="json", exclude={"base_dir"})

    def merge(a: dict, b: dict) -> None:
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                merge(a[k], v)
            else:
                a[k] = v

    merge(d, overrides)
    d.update(name=name, runs_dir=str(args.work / "runs"))
    d["data"]["store"] = str(store)
    d["trainer"]["progress"] = False
    d["trainer"]["max_minutes"] = None  # CPU seconds are measured; a wall cap would bias a loaded run
    return parse_train_config(d)


def segue_worker(args: argparse.Namespace) -> None:
    """Train (args.mode "train": on the train part, validated; "refit": train+valid for args.steps),
    test with segue's harness, write a JSON result."""
    from rich.console import Console

    from segue.evaluation.cli import run_evaluation
    from segue.training.trainer import train

    overrides = json.loads(args.overrides)
    if args.mode == "refit":
        overrides.setdefault("trainer", {}).update(fit_on="train+valid", max_steps=args.steps, min_epochs=None)  # exactly the chosen steps
    cfg = segue_config(args, Path(args.store), f"ttq-segue-{args.mode}", overrides)
    cpu: dict[int, float] = {}
    t0 = time.process_time()

    def on_step(step: int) -> None:
        cpu[step] = time.process_time() - t0

    run = train(cfg, resume=False, on_step=on_step, console=Console(width=160))
    train_cpu = time.process_time() - t0
    m = json.loads((run / "metrics.json").read_text())
    # A validation at step s is known when step s + 1 starts (its own cost included).
    curve = [{"step": h["step"], "cpu_s": cpu.get(h["step"] + 1, train_cpu), "ndcg@10": h["ndcg@10"], "hr@10": h.get("hr@10")} for h in m["history"]]
    res, _, _ = run_evaluation([f"segue={run}"], Path(args.store), split=args.split, protocol="leave_last_out", ks=[10], report=False, console=Console(width=160), n_boot=100)
    summ = res.summary()
    out = {
        "mode": args.mode,
        "train_cpu_s": train_cpu,
        "steps": m["steps"],
        "best_step": m["best_step"],
        "curve": curve,
        "test": {k: float(v) for k, v in summ.get("segue", {}).items()} if isinstance(summ, dict) else str(summ),
    }
    Path(args.out).write_text(json.dumps(out, default=str))


# ---------------------------------------------------------------------------------------------
# the parent: data export, the adapter, the table


def export_data(store: Path, split: str, config: Path, out: Path) -> dict:
    """The RecTools side's input (tokens as item ids, store rows as user ids) and the evaluation
    context: validation users/targets (segue's own sample), test queries."""
    import numpy as np

    from segue.data.arrays import SplitData
    from segue.data.splits import Part
    from segue.data.store import Store
    from segue.evaluation.protocols import ProtocolConfig, build_task
    from segue.training.evaluate import ValidationSet
    from segue.training.trainer import load_train_config
    from segue.training.transformer_task import training_arrays

    tc = load_train_config(config).trainer
    with Store.open(store) as s:
        data = SplitData.load(s, split)
        train_a = data.train
        full_a = training_arrays(data, "train+valid")
        # segue's validation sample: the rows ValidationSet.from_split draws (checked against it)
        tgt = data.targets(Part.VALID)
        rows = tgt.nonempty()
        if len(rows) > tc.eval_max_users:
            rows = np.sort(np.random.default_rng(tc.seed).choice(rows, tc.eval_max_users, replace=False))
        vset = ValidationSet.from_split(data, tc.eval_max_users, seed=tc.seed)
        targets = np.array([tgt.row(r)[0] for r in rows], np.int64)
        if not np.array_equal(targets, vset.targets):
            raise SystemExit("the exported validation users differ from segue's validation sample")
        task = build_task(data, ProtocolConfig(name="leave_last_out"))

    def flat(a, rows=None):
        rows = np.arange(len(a)) if rows is None else rows
        lens = np.asarray(a.offsets[rows + 1] - a.offsets[rows])
        users = np.repeat(rows, lens)
        items = np.concatenate([np.asarray(a.row(r)) for r in rows]) if len(rows) else np.zeros(0, np.int64)
        return users.astype(np.int64), items.astype(np.int64)

    tu, ti = flat(train_a)
    fu, fi = flat(full_a)
    hu, hi = flat(task.histories, task.rows)
    keep = ti >= 0
    np.savez(
        out,
        train_users=tu[keep], train_items=ti[keep], full_users=fu, full_items=fi,
        val_users=rows.astype(np.int64), val_targets=targets,
        test_hist_users=hu, test_hist_items=hi,
    )
    return {"val_rows": rows, "val_targets": targets, "test_rows": task.rows}


class TopListRecommender:
    """Recommender-protocol adapter over precomputed top lists (RecTools' predictions): score()
    gives list position scores (n, n-1, ...) to a row's listed tokens and -inf to the rest."""

    family = "toplist"

    def __init__(self, vocab, rows, lists) -> None:  # noqa: ANN001
        self.vocab = vocab
        self.config = None
        self.meta: dict = {}
        self.index = {int(r): i for i, r in enumerate(rows)}
        self.lists = lists

    def score(self, histories, rows=None):  # noqa: ANN001, ANN201
        import numpy as np

        rows = np.arange(len(histories)) if rows is None else np.asarray(rows)
        out = np.full((len(rows), len(self.vocab)), -np.inf, np.float32)
        k = self.lists.shape[1]
        for j, r in enumerate(rows):
            i = self.index.get(int(r))
            if i is None:
                continue
            toks = self.lists[i]
            ok = toks >= 0
            out[j, toks[ok]] = np.arange(k, 0, -1, dtype=np.float32)[ok]
        return out

    def recommend(self, histories, k, rows=None, *, exclude_seen=True, allow=None, deny=None):  # noqa: ANN001, ANN201
        import numpy as np

        from segue.models.base import top_k

        rows = np.arange(len(histories)) if rows is None else rows
        return top_k(self.score(histories, rows), k, histories if exclude_seen else None, rows, allow=allow, deny=deny)


def test_toplists(store: Path, split: str, rows, lists) -> dict:  # noqa: ANN001
    from segue.data.store import Store
    from segue.data.vocab import Vocabulary  # noqa: F401
    from segue.evaluation.evaluator import evaluate

    with Store.open(store) as s:
        from segue.data.arrays import SplitData

        vocab = SplitData.load(s, split).vocab
        res = evaluate({"rectools": TopListRecommender(vocab, rows, lists)}, s, split, "leave_last_out", ks=[10], n_boot=100)
    return {k: float(v) for k, v in res.summary()["rectools"].items()}


def val_ndcg(lists, targets) -> float:  # noqa: ANN001
    """segue.evaluation.metrics' NDCG@10 of top lists against one relevant item per user."""
    import numpy as np

    from segue.evaluation.metrics import hit_matrix, ndcg

    offsets = np.arange(len(targets) + 1, dtype=np.int64)
    hits = hit_matrix(np.asarray(lists[:, :10]), offsets, np.asarray(targets, np.int64))
    return float(np.mean(ndcg(hits, np.ones(len(targets), np.int64), 10)))


def spawn(cmd: list[str], core: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, **ONE_THREAD}
    return subprocess.Popen(["taskset", "-c", core, *cmd], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def first_reach(curve: list[dict], target: float) -> float | None:
    return next((p["cpu_s"] for p in curve if p["ndcg@10"] >= target), None)


def require_rectools(python: str) -> None:
    """Exit 2 with one line when `python` cannot import rectools and torch (segue's own venv never
    can: RecTools pins numpy < 2); the worker's traceback had been left in a log."""
    check = subprocess.run([python, "-c", "import rectools, torch"], capture_output=True, text=True)
    if check.returncode != 0:
        print(
            f"--rectools-python {python} cannot import rectools and torch: make a venv for them "
            "(python3 -m venv /tmp/rt && /tmp/rt/bin/pip install torch==2.13.0 'rectools[torch]==0.19.0') "
            "and pass --rectools-python /tmp/rt/bin/python, or run --only segue",
            file=sys.stderr,
        )
        raise SystemExit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=["segue", "rectools"], help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["train", "refit"], default="train", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "beauty.toml")
    ap.add_argument("--store", type=Path, default=None, help="a Beauty store with a leave-last-out split (default: build one under --work)")
    ap.add_argument("--split", default="loo")
    ap.add_argument("--work", type=Path, default=Path("/tmp/segue-ttq"))
    ap.add_argument("--rectools-python", default=sys.executable, help="python of a venv with rectools[torch]")
    ap.add_argument("--only", choices=["segue", "rectools"], default=None)
    ap.add_argument("--overrides", default="{}", help="JSON merged into segue's config (lever runs)")
    ap.add_argument("--no-refit", action="store_true")
    ap.add_argument("--max-epochs", type=int, default=40, help="RecTools: epochs before stopping")
    ap.add_argument("--patience", type=int, default=3, help="RecTools: epochs without improvement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cores", default="0/1", help="segue's core / RecTools' core (taskset lists, e.g. 0/1)")
    ap.add_argument("--profile", action="store_true", help="also print segue's step profile")
    ap.add_argument("--profile-only", action="store_true")
    args = ap.parse_args()
    if args.worker == "rectools":
        return rectools_worker(args)
    if args.worker == "segue":
        return segue_worker(args)
    if args.only != "segue" and not args.profile_only:
        require_rectools(args.rectools_python)  # before the store and data are built, not in a worker's log
    print(machine_line(), flush=True)  # the reference the figures below are read against

    store = args.store
    if store is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from quality import DATA, SETUPS, check_data, store_for

        check_data(["beauty-loo"], args.work, DATA)  # one line, not a traceback, without ../shared/data
        args.work.mkdir(parents=True, exist_ok=True)
        dataset, spec, _ = SETUPS["beauty-loo"]
        store = store_for(dataset, spec, args.work, DATA)
    args.work.mkdir(parents=True, exist_ok=True)
    store = Path(store).resolve()
    if args.profile or args.profile_only:
        from step_profile import print_profile

        print_profile(args.config, store, args.split, json.loads(args.overrides))
        if args.profile_only:
            return
    print(f"start {time.strftime('%H:%M:%S')}  {load_line()}", flush=True)
    ctx = export_data(store, args.split, args.config, args.work / "ttq-data.npz")
    c_segue, c_rt = args.cores.split("/")
    me = [str(Path(__file__).resolve())]
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}

    def launch(side: str, mode: str, extra: list[str]) -> None:
        out = args.work / f"ttq-{side}-{mode}.json"
        out.unlink(missing_ok=True)
        common = ["--worker", side, "--mode", mode, "--out", str(out), "--seed", str(args.seed)]
        if side == "segue":
            cmd = [sys.executable, *me, *common, "--config", str(args.config), "--store", str(store), "--split", args.split,
                   "--work", str(args.work), "--overrides", args.overrides, *extra]
            core = c_segue
        else:
            cmd = [args.rectools_python, *me, *common, "--data", str(args.work / "ttq-data.npz"), "--max-epochs",
                   str(args.max_epochs), "--patience", str(args.patience), *extra]
            core = c_rt
        procs[f"{side}-{mode}"] = (spawn(cmd, core, args.work / f"ttq-{side}-{mode}.log"), out)

    def wait(key: str) -> dict:
        proc, out = procs[key]
        if proc.wait() != 0:
            raise SystemExit(f"{key} failed: see {out.with_suffix('.log')}")
        return json.loads(out.read_text())

    sides = [args.only] if args.only else ["segue", "rectools"]
    for side in sides:
        launch(side, "train", [])
    results: dict[str, dict] = {}
    for side in sides:
        results[f"{side}-train"] = r = wait(f"{side}-train")
        if side == "rectools":
            import numpy as np

            base = (args.work / "ttq-rectools-train.json")
            r["curve"] = [
                {"step": e["epoch"], "cpu_s": e["cpu_s"], "ndcg@10": val_ndcg(np.load(base.with_suffix(f".val{e['epoch']}.npy")), ctx["val_targets"])}
                for e in r["epochs"]
            ]
            r["test"] = test_toplists(store, args.split, np.asarray(r["test_users"]), np.load(base.with_suffix(".test.npy")))
        print(f"{side} trained  {load_line()}", flush=True)
        if not args.no_refit:
            if side == "segue":
                launch("segue", "refit", ["--steps", str(max(1, r["best_step"]))])
            else:
                launch("rectools", "refit", ["--epochs", str(r["best_epoch"])])
    if not args.no_refit:
        for side in sides:
            r = results[f"{side}-refit"] = wait(f"{side}-refit")
            if side == "rectools":
                import numpy as np

                r["test"] = test_toplists(store, args.split, np.asarray(r["test_users"]), np.load((args.work / "ttq-rectools-refit.json").with_suffix(".test.npy")))
    (args.work / "ttq-results.json").write_text(json.dumps(results, indent=1, default=str))
    print_table(results, sides)
    print(f"end {time.strftime('%H:%M:%S')}  {load_line()}")


def print_table(results: dict, sides: list[str]) -> None:
    rt = results.get("rectools-train")
    target = max(p["ndcg@10"] for p in rt["curve"]) if rt else None
    print("\nvalidation NDCG@10 against CPU seconds (one core each)")
    for side in sides:
        r = results[f"{side}-train"]
        print(f"  {side}: " + "  ".join(f"{p['cpu_s']:.0f}s:{p['ndcg@10']:.4f}" for p in r["curve"]))
    print(f"\n{'':10} {'CPU-s to target':>16} {'best valid':>11} {'train CPU-s':>12} {'test NDCG@10':>13} {'test HR@10':>11} {'refit CPU-s':>12} {'refit NDCG@10':>14} {'refit HR@10':>12}")
    reach = {}
    for side in sides:
        r = results[f"{side}-train"]
        f = results.get(f"{side}-refit", {})
        reach[side] = first_reach(r["curve"], target) if target is not None else None
        best = max(p["ndcg@10"] for p in r["curve"])
        t, ft = r["test"], f.get("test", {})
        print(
            f"{side:10} {reach[side] if reach[side] is not None else float('nan'):16.0f} {best:11.4f} {r['train_cpu_s']:12.0f} "
            f"{t.get('ndcg@10', float('nan')):13.4f} {t.get('hr@10', float('nan')):11.4f} {f.get('train_cpu_s', float('nan')):12.0f} "
            f"{ft.get('ndcg@10', float('nan')):14.4f} {ft.get('hr@10', float('nan')):12.4f}"
        )
    if target is not None and reach.get("segue") and reach.get("rectools"):
        print(f"\ntarget: RecTools' best validation NDCG@10 {target:.4f}; ratio segue / RecTools CPU-s = {reach['segue'] / reach['rectools']:.2f} (target <= 0.5)")


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
