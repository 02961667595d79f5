"""Wall time of `segue --help` (target: under 0.3 s), beside `python -c pass` measured in the same run.

Each command runs as a fresh subprocess, alternating, N times; the medians are printed with the
difference (what segue itself costs to start). Also shown: `python -c "import typer"` (the floor
any typer CLI pays) and the modules `import segue.cli` loads.

    python bench/cli_help.py [--runs 15] [--command "--help"]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--command", default="--help", help="arguments given to segue (default --help)")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="80")
    py = sys.executable
    cases = {
        "python -c pass (reference)": [py, "-c", "pass"],
        "python -c 'import typer'": [py, "-c", "import typer"],
        f"segue {args.command}": [py, "-c", "from segue.cli import app; app()", *shlex.split(args.command)],
    }
    for cmd in cases.values():  # warm the page cache and .pyc files
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.runs):
        for name, cmd in cases.items():  # interleaved, so load changes hit every case alike
            times[name].append(timed(cmd, env))
    loaded = subprocess.run(
        [py, "-c", "import sys; n = len(sys.modules); import segue.cli; print(len(sys.modules) - n)"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        load = f"{os.getloadavg()[0]:.2f}"
    except OSError:
        load = "n/a"
    print(f"{args.runs} runs each, {os.cpu_count()} cores, load average {load}; medians (min .. max):")
    ref = statistics.median(times["python -c pass (reference)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        extra = "" if name.endswith("(reference)") else f"   +{med - ref:.3f} s over the reference"
        print(f"  {name:32s} {med:.3f} s ({min(ts):.3f} .. {max(ts):.3f}){extra}")
    print(f"  import segue.cli loads {loaded} modules")
    med = statistics.median(times[f"segue {args.command}"])
    print(f"segue {args.command}: {med:.3f} s, target 0.3 s: {'met' if med < 0.3 else 'NOT met'}")


if __name__ == "__main__":
    main()
