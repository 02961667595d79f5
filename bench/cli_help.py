"""Wall time of `segue --help` (target: under 0.3 s), beside `python -c pass` measured in the same run.

Each command runs as a fresh subprocess, alternating, N times; the medians are printed with the
difference (what segue itself costs to start). Also shown: `python -c "import typer"` (the floor
any typer CLI pays) and the modules `import segue.cli` loads.

    python bench/cli_help.py [--runs 15] [--command "--help"] [--compare-src ../main/src]

--compare-src also times the same command from another checkout's sources (e.g. before a change).
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import machine_line  # bench/ is the script's folder, so on sys.path

SRC = Path(__file__).resolve().parents[1] / "src"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--command", default="--help", help="arguments given to segue (default --help)")
    ap.add_argument("--compare-src", type=Path, help="another src/ folder to time the same command from")
    args = ap.parse_args()
    print(machine_line(), flush=True)  # the reference the figures below are read against
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="80")
    py = sys.executable
    cases = {
        "python -c pass (reference)": [py, "-c", "pass"],
        "python -c 'import typer'": [py, "-c", "import typer"],
        f"segue {args.command}": [py, "-c", "from segue.cli import app; app()", *shlex.split(args.command)],
    }
    if args.compare_src:
        other = str(args.compare_src.resolve())
        code = f"import sys; sys.path.insert(0, {other!r}); from segue.cli import app; app()"
        cases[f"  same from {args.compare_src}"] = [py, "-c", code, *shlex.split(args.command)]
    for cmd in cases.values():  # warm the page cache and .pyc files
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.runs):
        for name, cmd in cases.items():  # interleaved, so load changes hit every case alike
            wall, used = timed(cmd, env)
            times[name].append(wall)
            cpu[name].append(used)
    loaded = subprocess.run(
        [py, "-c", "import sys; n = len(sys.modules); import segue.cli; print(len(sys.modules) - n)"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        load = f"{os.getloadavg()[0]:.2f}"
    except OSError:
        load = "n/a"
    print(f"{args.runs} runs each, {os.cpu_count()} cores, load average {load}; median wall (min .. max), median CPU:")
    ref = statistics.median(times["python -c pass (reference)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        extra = "" if name.endswith("(reference)") else f"   wall +{med - ref:.3f} s over the reference"
        print(f"  {name:32s} {med:.3f} s ({min(ts):.3f} .. {max(ts):.3f})  CPU {statistics.median(cpu[name]):.3f} s{extra}")
    print(f"  import segue.cli loads {loaded} modules")
    med = statistics.median(times[f"segue {args.command}"])
    used = statistics.median(cpu[f"segue {args.command}"])
    verdict = "met" if med < 0.3 else "NOT met (wall; see CPU and the reference when the machine is loaded)"
    print(f"segue {args.command}: {med:.3f} s wall, {used:.3f} s CPU; target 0.3 s: {verdict}")


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
