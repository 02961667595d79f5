"""Quality of the transformer on the shared real datasets (leave-last-out, full ranking).

Builds the stores the way bench/quality.py does (reused under --work), trains with the checked-in
configs (configs/beauty.toml, configs/ml100k.toml; the store path and run folder are redirected
under --work), evaluates the best checkpoint on the test part through the evaluation harness next
to the baselines, and prints the table with the training time.

    .venv/bin/python bench/transformer_quality.py                 # beauty and ml100k
    .venv/bin/python bench/transformer_quality.py --only beauty --max-minutes 20
    .venv/bin/python bench/transformer_quality.py --eval-only     # reuse trained runs

Published reference (beauty, leave-last-out, full ranking): SASRec NDCG@10 0.0531, HR@10 0.0921.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import guarded, machine_line  # noqa: E402
from quality import DATA, SETUPS, check_data, store_for  # noqa: E402
from segue.evaluation.cli import run_evaluation  # noqa: E402
from segue.training.trainer import load_train_config, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"beauty": ("beauty-loo", ROOT / "configs" / "beauty.toml"), "ml100k": ("ml100k-loo", ROOT / "configs" / "ml100k.toml")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=sorted(RUNS), nargs="+", default=sorted(RUNS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/segue-bench"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--max-minutes", type=float, default=None, help="override trainer.max_minutes")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--baselines", default="popularity,itemknn,ease,item2vec,als")
    args = ap.parse_args()
    check_data([RUNS[name][0] for name in args.only], args.work, args.data)
    print(machine_line(), flush=True)  # the reference the figures below are read against
    console = Console(width=140)
    for name in args.only:
        setup, config_path = RUNS[name]
        dataset, spec, protocol = SETUPS[setup]
        store = store_for(dataset, spec, args.work, args.data)
        cfg = load_train_config(config_path)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"store": str(store)}), "runs_dir": str(args.work / "runs")})
        if args.max_minutes is not None:
            cfg = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"max_minutes": args.max_minutes})})
        run = cfg.run_dir
        if not args.eval_only:
            t = time.perf_counter()
            run = train(cfg, console=console)
            console.print(f"{name}: trained in {time.perf_counter() - t:.0f} s (wall, compiles included)")
        m = json.loads((run / "metrics.json").read_text())
        console.print(
            f"{name}: {m['steps']} steps ({m['epochs']:.1f} epochs, {m['stop_reason']}), training time "
            f"{m['train_seconds'] / 60:.1f} min, best valid {m['metric']} {m['best_metric']:.4f} at step {m['best_step']}"
        )
        models = [f"transformer={run}", *[b for b in args.baselines.split(",") if b]]
        run_evaluation(models, store, split=spec["name"], protocol=protocol, ks=[10], report=False, console=console, n_boot=200)


if __name__ == "__main__":
    sys.exit(guarded(main))
