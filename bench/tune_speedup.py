"""Parallel speed-up of `segue tune`: the same 8 EASE trials with --max-workers 1, then 2 (then
any other counts given), wall time of each whole session, measured in one run beside the machine's
cores and load.

    python bench/tune_speedup.py --store stores/ml100k.duckdb --split loo [--workers 1,2] [--trials 8] [--keep DIR]

Each session is a fresh `segue tune` (its own --root), so every one pays the same start-up, split
packing and test evaluation; only the trial fan-out differs. On a machine shared with other work
the load average printed beside each figure says how much of the 2 cores the flow could get.
Each session also prints what it found (the best l2 on validation, tuned vs defaults on test), so
the run doubles as an EASE tuning result; `--keep DIR` keeps the sessions' folders (cards, reports).

Measured 2026-12-07, ml-100k "loo", 8 trials (l2 5..640), 2 cores shared at load 8.8 -> 8.1:
--max-workers 1 81.7 s, --max-workers 2 45.6 s: 1.79x. Each EASE trial is 1-11 s here, so the
per-task process start (~3 s) is a large share; longer trials should come closer to 2x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine_line  # bench/ is the script's folder, so on sys.path

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
    ap.add_argument("--keep", type=Path, default=None, help="Keep the sessions' roots under this folder (default: removed).")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    print(machine_line(), flush=True)  # the reference the figures below are read against
    rows = []
    with tempfile.TemporaryDirectory(prefix="tune-speedup-") as scratch:
        tmp = str(args.keep.resolve()) if args.keep else scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
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
            print_found(Path(tmp) / f"root-{w}" / "speedup-segue")
    base = rows[0][1]
    for w, wall, _, _ in rows:
        print(f"speed-up of --max-workers {w} over {rows[0][0]}: {base / wall:.2f}x")


def print_found(session: Path) -> None:
    """The session's best trial on validation and its test means beside the defaults'."""
    if not (session / "summary.json").exists():  # another user name: the one session folder there
        found = sorted(session.parent.glob("speedup-*/summary.json"))
        if not found:
            return
        session = found[0].parent
    s = json.loads((session / "summary.json").read_text())
    trials = json.loads((session / "trials.json").read_text())
    per = ", ".join(f"{t['params']['l2']:.1f}: {t['value']:.4f} ({t['seconds']:.0f} s)" for t in trials if t["status"] == "ok")
    print(f"  validation ndcg@10 by l2: {per}")
    if s.get("best"):
        print(f"  best l2 {s['best']['params']['l2']:.2f} (validation {s['best']['value']:.4f})")
    if s.get("test"):
        for m, cols in s["test"]["intervals"].items():
            print(f"  test {m}: " + ", ".join(f"{c} {v['mean']:.4f} [{v['low']:.4f}, {v['high']:.4f}]" for c, v in cols.items()))
        for m, cols in s["test"]["comparisons"].items():
            print(f"  test {m} - {s['test']['reference']}: " + ", ".join(f"{c} {v['diff']:+.4f} (p {v['p_value']:.3f})" for c, v in cols.items()))


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
