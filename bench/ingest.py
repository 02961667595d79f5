"""Ingest throughput: synthetic playlists in the MPD slice format -> a segue store.

    .venv/bin/python bench/ingest.py [--playlists 50000] [--workers auto] [--data DIR]

Writes the playlists (1,000 per slice, md5sums beside them, 2-space indented like the real files)
into a temporary folder (or reuses --data DIR if it already holds them), builds a store from them
with the default split (random_sequence 80/10/10) and prints playlists/s, entries/s, the time of
each build stage, peak memory (this process plus its children, sampled) and the extrapolated time
for the full MPD (1,000,000 playlists, 66,346,428 entries; linear in entries).

The machine is shared, so wall time alone can flatter or wrong the code: the bench also prints the
CPU seconds spent (all processes) and the load average, and an extrapolation from CPU time as if
the cores were ours alone (CPU seconds / cores used).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from segue.data.sources.mpd import MPDSource
from segue.data.sources.synthetic import SyntheticConfig, write_mpd_slices
from segue.data.store import BUILD_TIMINGS, BuildConfig, Store, build_store

MPD_PLAYLISTS = 1_000_000
MPD_ENTRIES = 66_346_428


class PeakMemory:
    """Samples the summed RSS of a process (default: this one) and its descendants every
    `interval` seconds, with the largest single child and the largest single process seen."""

    def __init__(self, interval: float = 0.05, pid: int | None = None) -> None:
        self.interval, self.pid = interval, pid
        self.peak = 0
        self.peak_child = 0  # largest single child process seen
        self.peak_single = 0  # largest single process seen, the root included
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with contextlib.suppress(psutil.Error):  # the root may exit before the first sample
            root = psutil.Process(self.pid)
            while not self._stop.is_set():
                total = 0
                with contextlib.suppress(psutil.Error):
                    for p in [root, *root.children(recursive=True)]:
                        with contextlib.suppress(psutil.Error):  # a child may exit meanwhile
                            rss = p.memory_info().rss
                            total += rss
                            self.peak_single = max(self.peak_single, rss)
                            if p.pid != root.pid:
                                self.peak_child = max(self.peak_child, rss)
                self.peak = max(self.peak, total)
                time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_build(folder: Path, store_path: Path, workers: int | None, verify_md5: bool) -> dict:
    stage_cpu: dict[str, float] = {}
    last = [cpu_seconds(), "import"]

    def progress(stage: str, done: int, total: int | None) -> None:
        if stage != last[1]:
            now = cpu_seconds()  # children's CPU counts once they have exited (end of import)
            stage_cpu[last[1]] = stage_cpu.get(last[1], 0.0) + now - last[0]
            last[0], last[1] = now, stage

    source = MPDSource(folder, workers=workers, verify_md5=verify_md5)
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        build_store(source, store_path, BuildConfig(), progress=progress)
    wall = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    stage_cpu[last[1]] = stage_cpu.get(last[1], 0.0) + cpu_seconds() - last[0]
    with Store.open(store_path) as store:
        counts = store.counts()
    store_path.unlink()
    return {
        "wall": wall,
        "cpu": cpu,
        "stage_cpu": stage_cpu,
        "stages": dict(BUILD_TIMINGS),
        "counts": counts,
        "peak": mem.peak,
        "peak_child": mem.peak_child,
        "md5": all(f.md5_verified for f in source.files()),
    }


def report(full: dict, small: dict | None) -> None:
    counts, wall, cpu = full["counts"], full["wall"], full["cpu"]
    n_pl, n_ev = counts["sequences"], counts["events"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ru_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"machine: {cores} usable cores (of {os.cpu_count()}), load average {os.getloadavg()[0]:.1f} (1 min) at the end"
    )
    print(f"store: {n_pl:,} playlists, {n_ev:,} entries, {counts['items']:,} tracks; md5 verified: {full['md5']}")
    print(f"build wall time: {wall:.1f} s")
    for k, v in full["stages"].items():
        cpu_note = f"  (CPU {full['stage_cpu'][k]:.1f} s)" if k in full["stage_cpu"] else ""
        print(f"  {k:28s} {v:6.1f} s{cpu_note}")
    print(f"throughput: {n_pl / wall:,.0f} playlists/s, {n_ev / wall:,.0f} entries/s")
    print(f"CPU time (all processes): {cpu:.1f} s = {cpu / wall:.2f} cores busy on average")
    # (getrusage's figure for children is not used: a spawned child is first a fork of this
    # process, so it reports this process's size at that moment.)
    print(
        f"peak memory: {full['peak'] / 2**20:,.0f} MiB (sampled every 50 ms: RSS of this process + its children); "
        f"largest child {full['peak_child'] / 2**20:,.0f} MiB; ru_maxrss of this process {ru_self:,.0f} MiB"
    )
    scale = MPD_ENTRIES / n_ev
    print(f"full MPD ({MPD_PLAYLISTS:,} playlists, {MPD_ENTRIES:,} entries) extrapolated (target < 5 min):")
    print(f"  linear from this run:          {wall * scale / 60:.1f} min wall, {cpu * scale / 2 / 60:.1f} min from CPU on 2 cores")
    if small is not None:
        e0, e1 = small["counts"]["events"], n_ev
        slope = (wall - small["wall"]) / (e1 - e0)
        fixed = wall - slope * e1
        print(
            f"  fixed + per-entry (fitted to {small['counts']['sequences']:,} and {n_pl:,} playlists: "
            f"{small['wall']:.1f} s and {wall:.1f} s): {fixed:.1f} s + {slope * 1e6:.2f} s per million entries "
            f"= {(fixed + slope * MPD_ENTRIES) / 60:.1f} min"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--playlists", type=int, default=50_000)
    ap.add_argument("--items", type=int, default=None, help="catalogue size (default: playlists * 9)")
    ap.add_argument("--workers", default="auto", help="parse processes: auto or a number (0 = inline)")
    ap.add_argument("--data", type=Path, default=None, help="folder for the slices (kept; reused if complete)")
    ap.add_argument("--no-md5", action="store_true", help="skip md5sums verification")
    ap.add_argument("--small", type=int, default=10, help="slices in the second, smaller build (0: none)")
    args = ap.parse_args()
    print(machine_line(), flush=True)  # the reference the figures below are read against

    workers = None if args.workers == "auto" else int(args.workers)
    n_items = args.items or args.playlists * 9  # catalogue; about 350k of 450k appear in 50k playlists
    tmp = Path(tempfile.mkdtemp(prefix="segue-ingest-"))
    data = args.data or tmp / "mpd"
    try:
        expected = -(-args.playlists // 1000)
        if not (data.is_dir() and len(list(data.glob("mpd.slice.*.json"))) == expected):
            t = time.perf_counter()
            write_mpd_slices(SyntheticConfig(n_playlists=args.playlists, n_items=n_items, seed=1), data)
            print(f"wrote {expected} slices in {time.perf_counter() - t:.1f} s")
        size = sum(p.stat().st_size for p in data.glob("mpd.slice.*.json"))
        print(f"input: {data} ({expected} slices, {size / 1e9:.2f} GB)")

        small_n = min(args.small, expected - 1) if args.small > 0 else 0
        small = tmp / "small"
        if small_n:
            # The first `small_n` slices, to separate fixed costs (process start-up, DuckDB setup,
            # checkpoint) from the per-entry cost in the extrapolation.
            small.mkdir()
            slices = sorted(data.glob("mpd.slice.*.json"), key=lambda p: int(p.name.split(".")[2].split("-")[0]))
            sums = (data / "md5sums").read_text().splitlines() if (data / "md5sums").exists() else []
            names = {p.name for p in slices[:small_n]}
            for p in slices[:small_n]:
                (small / p.name).symlink_to(p.resolve())
            if sums:
                (small / "md5sums").write_text("".join(line + "\n" for line in sums if line.split()[-1] in names))
        runs = {}
        for label, folder in ([("small", small)] if small_n else []) + [("full", data)]:
            runs[label] = run_build(folder, tmp / f"{label}.duckdb", workers, not args.no_md5)
        report(runs["full"], runs.get("small"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        sys.stdout.flush()


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
