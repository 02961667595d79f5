"""What the benchmarks share: the machine reference printed beside their figures, and the one-line
exit when a shared dataset is missing. Imported as `from _common import ...` (bench/ is a script's
own folder, so it is on sys.path); numpy only, so that importing it costs nothing."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def numpy_peak(n: int = 1024, reps: int = 10) -> float:
    """Best-of float32 GFLOP/s of an n x n numpy matmul: the machine's reachable peak right now."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def cores() -> int:
    """The cores this process may run on (an affinity mask or a container can hold fewer than cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine_line(reps: int = 5) -> str:
    """The reference a bench's figures are read against: other work on a shared machine moves them."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: {cores()} cores (of {os.cpu_count()}), load average {load} (1/5/15 min), "
        f"numpy float32 matmul peak {numpy_peak(reps=reps):.0f} GFLOP/s (1024^3, best of {reps})"
    )


def need_data(path: Path, what: str, fix: str) -> None:
    """Exit 2 with one line when `path` (a shared dataset) is missing: no traceback halfway through a run."""
    if not path.exists():
        print(f"{path}: not found; {what} ({fix})", file=sys.stderr)
        raise SystemExit(2)


def exit_on_sigterm() -> None:
    """SIGTERM (a timeout, a cancelled CI job, kill) raises SystemExit in the main thread, so that
    `finally` blocks and context managers remove scratch folders: by default it ended the process
    on the spot and left them (mpd_scale's is ~27 GiB at full size)."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def guarded(main: Callable[[], int | None]) -> int:
    """Run a bench's main (SIGTERM made an exit that cleans up); a SegueError (a bad input: a dataset
    folder without its files, a wrong store) is one line on stderr and exit 2, as the CLI does, not a traceback."""
    from segue.errors import SegueError

    exit_on_sigterm()
    try:
        return main() or 0
    except SegueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
