"""The full Million Playlist Dataset, planned and measured on a synthetic corpus of its size.

    .venv/bin/python bench/mpd_scale.py --playlists 1000000 --items 2000000 --steps 100 \\
        --work /work/scratch/scale/mpd1m
    .venv/bin/python bench/mpd_scale.py --playlists 10000 --items 20000 --steps 20 --work /tmp/x  # dry run

Four stages, each in its own child process (so each stage's peak memory is its own):
  gen     synthetic playlists (segue.data.sources.synthetic) written as MPD slice JSON, 1,000 a
          file, streamed slice by slice (only the catalogue is held in memory)
  ingest  segue's MPD importer (streaming, msgspec, parse workers) into a DuckDB store with the
          default split (random_sequence 80/10/10, named "random")
  arrays  the split's training and validation views compiled to memory-mapped .npy files
  train   configs/trecs_mpd.toml (trecs' defaults, row-sparse Adam) on that store: the real
          TransformerTask (loader, step), `--warmup` steps (compile) then `--steps` timed steps

Printed: wall and CPU seconds, peak memory (RSS of the stage's process tree, sampled every 50 ms,
and its largest single process), disk size of what each stage wrote, the step time, tokens/s,
the fraction of the float32 matmul peak measured in the same run, and the time per epoch
extrapolated against trecs' 48 hours on a laptop. The machine is shared: the load average is
printed beside every wall-clock figure, and CPU seconds beside wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from ingest import PeakMemory  # bench/ is the script's folder, so on sys.path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TRECS_HOURS = 48.0  # trecs' reported time for one MPD epoch on a laptop


def _ratio(x: float) -> str:
    """'0.42x', with two significant digits below 0.1 (a dry run's '0.00x' said nothing)."""
    return f"{x:.2f}x" if x >= 0.1 or x == 0 else f"{x:.2g}x"


def _hours(h: float) -> str:
    """Hours, or minutes below 0.1 h (a dry run printed '0.0 h')."""
    return f"{h:.1f} h" if h >= 0.1 else f"{60 * h:.1f} min"


def load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


# ---------------------------------------------------------------------------------------------
# the stages (each runs in its own process: `--stage NAME`)


def stage_gen(args: argparse.Namespace) -> dict[str, Any]:
    from segue.data.sources.synthetic import SyntheticConfig, write_mpd_slices

    folder = args.work / "slices"
    shutil.rmtree(folder, ignore_errors=True)
    # Unindented JSON (a third smaller than the real files' 2-space indent; the parser does not care).
    cfg = SyntheticConfig(n_playlists=args.playlists, n_items=args.items, seed=1)
    paths = write_mpd_slices(cfg, folder, indent=False)
    return {"slices": len(paths), "disk": du(folder)}


def stage_ingest(args: argparse.Namespace) -> dict[str, Any]:
    from segue.data.sources.mpd import MPDSource
    from segue.data.store import BUILD_TIMINGS, BuildConfig, Store, build_store

    store = args.work / "mpd.duckdb"
    store.unlink(missing_ok=True)
    build_store(MPDSource(args.work / "slices", workers=None), store, BuildConfig())
    with Store.open(store) as s:
        counts = s.counts()
    return {"counts": counts, "stages": dict(BUILD_TIMINGS), "disk": du(store)}


def stage_arrays(args: argparse.Namespace) -> dict[str, Any]:
    from segue.data.splits import Part
    from segue.data.store import Store
    from segue.training.trainer import open_split

    with Store.open(args.work / "mpd.duckdb") as s:
        data = open_split(s, "random")
        valid_h, valid_t = data.history(Part.VALID), data.targets(Part.VALID)
        out = {
            "vocab": len(data.vocab),
            "train_rows": int(len(data.train.nonempty())),
            "train_events": int(data.train.n_events),
            "valid_rows": int(len(valid_t.nonempty())),
            "valid_history_events": int(valid_h.n_events),
        }
    out["disk"] = du(Path(str(args.work / "mpd.duckdb") + ".arrays"))
    return out


def stage_train(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import numpy as np

    sys.path.insert(0, str(HERE))
    from segue.data.store import Store
    from segue.models.transformer import count_flops_per_token
    from segue.training.trainer import load_train_config, open_split
    from segue.training.transformer_task import TransformerTask
    from train_throughput import matmul_peak, numpy_peak

    peak = matmul_peak()
    cfg = load_train_config(ROOT / "configs" / "trecs_mpd.toml")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"store": str(args.work / "mpd.duckdb")})})
    t0 = time.perf_counter()
    with Store.open(args.work / "mpd.duckdb") as s:
        data = open_split(s, cfg.data.split)
        task = TransformerTask(cfg.transformer_config(), data)
        state = task.init_state()
        setup_s = time.perf_counter() - t0
        rss_setup = psutil.Process().memory_info().rss
        one = jax.numpy.float32(1.0)
        # Batches are padded to a few bucket lengths (trainer.loader.bucketing): each new length
        # compiles once. Steps with a length not seen before are compile steps, kept out of the timing.
        seen: set[int] = set()
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            batch = next(task.loader)
            seen.add(int(batch["inputs"].shape[1]))
            state, met = task.train_step(state, batch, one)
        jax.block_until_ready(state)
        warm_s = time.perf_counter() - t0
        counts, losses, times, compiles = [], [], [], 0
        cpu = 0.0
        while len(times) < args.steps:
            batch = next(task.loader)
            length = int(batch["inputs"].shape[1])
            c0, t0 = cpu_seconds(), time.perf_counter()
            state, met = task.train_step(state, batch, one)
            jax.block_until_ready(met["loss"])
            if length not in seen:
                seen.add(length)
                compiles += 1
                continue
            times.append(time.perf_counter() - t0)
            cpu += cpu_seconds() - c0
            counts.append(int(met["count"]))
            losses.append(float(met["loss"]))
        wall = float(np.sum(times))
        step_s = wall / args.steps
        tokens = float(np.mean(counts))
        mc = cfg.model
        flops = count_flops_per_token(mc, 1 + cfg.loss.n_negatives)
        out = {
            "vocab": len(data.vocab),
            "sparse": bool(task.spec.sparse),
            "batch": cfg.trainer.loader.batch_size,
            "batches_per_epoch": int(task.loader.batches_per_epoch),
            "train_events": int(data.train.n_events),
            "train_rows": int(len(data.train.nonempty())),
            "setup_s": setup_s,
            "warmup_s": warm_s,
            "step_s": step_s,
            "step_median_s": float(np.median(times)),
            "compile_steps": compiles,
            "lengths": sorted(seen),
            "cpu_per_step_s": cpu / args.steps,
            "tokens_per_step": tokens,
            "tokens_per_s": tokens / step_s,
            "gflops": tokens * flops / step_s / 1e9,
            "peak_gflops": peak,
            "numpy_peak_gflops": numpy_peak(),
            "loss_first_last": [losses[0], losses[-1]],
            "rss_after_setup": rss_setup,
            "load_after_steps": load(),
            "table_bytes": int(
                sum(x.nbytes for k, v in state.items() if k in ("items", "item_m", "item_v", "ema_items") for x in jax.tree_util.tree_leaves(v))
            ),
        }
    return out


STAGES = {"gen": stage_gen, "ingest": stage_ingest, "arrays": stage_arrays, "train": stage_train}


# ---------------------------------------------------------------------------------------------
# the driver


def run_stage(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--stage", name, "--work", str(args.work), "--playlists", str(args.playlists),
           "--items", str(args.items), "--steps", str(args.steps), "--warmup", str(args.warmup)]  # fmt: skip
    print(f"[{time.strftime('%H:%M:%S')}] stage {name} starts (load {load()})", flush=True)
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        with PeakMemory(pid=proc.pid) as mem:
            out, _ = proc.communicate()
    except BaseException:  # SIGTERM or Ctrl-C: the stage must not go on writing into the folder being removed
        proc.kill()
        proc.wait()
        raise
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"stage {name} failed (exit {proc.returncode})\n{out[-3000:]}")
    res = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[len("RESULT ") :])
    res |= {"wall": wall, "cpu": cpu_seconds() - cpu0, "peak": mem.peak, "peak_single": mem.peak_single, "load": load()}
    print(f"[{time.strftime('%H:%M:%S')}] stage {name}: {json.dumps(res, default=float)}", flush=True)
    return res


def report(r: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    gib = 2**30
    print(f"\n== {args.playlists:,} synthetic playlists, catalogue of {args.items:,} tracks; {os.cpu_count()} cores ==")
    c = r["ingest"]["counts"] if "ingest" in r else None
    if c:
        print(f"store: {c['sequences']:,} playlists, {c['events']:,} entries, {c['items']:,} distinct tracks")
    print(f"{'stage':8} {'wall s':>8} {'CPU s':>8} {'peak RSS GiB':>13} {'largest proc GiB':>17} {'disk GiB':>9}  load (1/5/15 min) at end")
    for name, x in r.items():
        print(
            f"{name:8} {x['wall']:8.1f} {x['cpu']:8.1f} {x['peak'] / gib:13.2f} {x['peak_single'] / gib:17.2f} "
            f"{x.get('disk', 0) / gib:9.2f}  {x['load']}"
        )
    if c and "ingest" in r:
        w = r["ingest"]["wall"]
        print(f"ingest: {c['events'] / w:,.0f} entries/s, {c['sequences'] / w:,.0f} playlists/s; build stages (s): "
              + ", ".join(f"{k} {v:.1f}" for k, v in r["ingest"]["stages"].items()))  # fmt: skip
    if "train" in r:
        t = r["train"]
        steps_epoch = t["batches_per_epoch"]
        epoch_h = steps_epoch * t["step_s"] / 3600
        # every training entry once as a target (a stricter epoch than the loader's: a playlist
        # longer than the context gives only one random crop per loader epoch)
        all_tokens_h = (t["train_events"] + t["train_rows"]) / t["tokens_per_s"] / 3600
        print(
            f"train (trecs_mpd.toml, vocabulary {t['vocab']:,}, row-sparse Adam {t['sparse']}, batch {t['batch']}): "
            f"{args.steps} timed steps after {args.warmup} warm-up ({t['warmup_s']:.1f} s) and {t['compile_steps']} more compile steps "
            f"(padded lengths {t['lengths']}); setup {t['setup_s']:.1f} s"
        )
        print(
            f"  step {1000 * t['step_s']:.1f} ms mean, {1000 * t['step_median_s']:.1f} ms median (CPU {1000 * t['cpu_per_step_s']:.1f} ms), {t['tokens_per_step']:.0f} tokens/step, "
            f"{t['tokens_per_s']:,.0f} tokens/s, {t['gflops']:.1f} GFLOP/s = {100 * t['gflops'] / t['peak_gflops']:.1f}% of the "
            f"matmul peak measured in this run (jax {t['peak_gflops']:.0f}, numpy {t['numpy_peak_gflops']:.0f} GFLOP/s); "
            f"load {t['load_after_steps']}"
        )
        print(f"  item-table state (table, Adam moments, moving average if on): {t['table_bytes'] / gib:.2f} GiB; loss {t['loss_first_last'][0]:.3f} -> {t['loss_first_last'][1]:.3f}")
        print(
            f"  epoch (the loader's: {steps_epoch:,} batches of {t['batch']} playlists, one random crop of <= 50 each): "
            f"{_hours(epoch_h)} on these 2 shared cores, {_ratio(epoch_h / TRECS_HOURS)} trecs' {TRECS_HOURS:.0f} h"
        )
        print(
            f"  every training entry once as a target ({t['train_events'] + t['train_rows']:,} tokens incl. <eop>): "
            f"{_hours(all_tokens_h)} = {_ratio(all_tokens_h / TRECS_HOURS)} trecs' {TRECS_HOURS:.0f} h"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--playlists", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=2_000_000)
    ap.add_argument("--steps", type=int, default=100, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first compiles)")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (slices, store, arrays)")
    ap.add_argument("--stages", default="gen,ingest,arrays,train")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work = args.work.absolute()
    if args.stage:  # a child: one stage, its result as one JSON line
        print("RESULT " + json.dumps(STAGES[args.stage](args), default=float), flush=True)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.work).free
    print(f"scratch {args.work}: {free / 2**30:.0f} GiB free; the full MPD size needs ~25 GiB (slices) + ~2 GiB (store)")
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in args.stages.split(","):
            results[name] = run_stage(name, args)
    finally:
        if results:
            report(results, args)
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
