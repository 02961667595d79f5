"""Parallel speed-up of `segue tune`: the same 8 EASE trials with --max-workers 1, then 2 (then
any other counts given), wall time of each whole session, measured in one run beside the machine's
cores and load.

    python bench/tune_speedup.py --store stores/ml100k.duckdb --split loo [--workers 1,2] [--trials 8]

Each session is a fresh `segue tune` (its own --root), so every one pays the same start-up, split
packing and test evaluation; only the trial fan-out differs. On a machine shared with other work
the load average printed beside each figure says how much of the 2 cores the flow could get.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACE = """
family = "ease"
store = "{store}"
split = "{split}"
strategy = "grid"
ks = [10]
[budget]
trials = {trials}
[params.l2]
type = "float"
low = 5.0
high = 640.0
log = true
grid_points = {trials}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, type=Path)
    ap.add_argument("--split", default="loo")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the start")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tune-speedup-") as tmp:
        space = Path(tmp) / "speedup.toml"
        space.write_text(SPACE.format(store=args.store.resolve(), split=args.split, trials=args.trials))
        for w in workers:
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "segue.cli", "tune", str(space), "--root", f"{tmp}/root-{w}", "--max-workers", str(w),
                   "--n-boot", "100"]
            out = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if out.returncode != 0:
                sys.exit(f"--max-workers {w} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
            rows.append((w, wall, load0, os.getloadavg()[0]))
            print(f"--max-workers {w}: {wall:.1f} s wall for {args.trials} trials (load {load0:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
    base = rows[0][1]
    for w, wall, _, _ in rows:
        print(f"speed-up of --max-workers {w} over {rows[0][0]}: {base / wall:.2f}x")


if __name__ == "__main__":
    main()
