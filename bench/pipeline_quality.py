"""Two-stage pipeline quality against its own generators, in one `segue evaluate` run per dataset.

For each dataset: build the store (once, into --work), fit the pipeline of its config
(configs/pipeline_*.toml: generators on the train part, the ranker on the validation part), then
evaluate the pipeline and each generator folder it holds (the very same fits) on the test part:
  beauty, ml100k   leave_last_out, full ranking: NDCG@10 / HR@10 with paired bootstrap CIs of
                   the pipeline minus the best single model; pool recall@50/200/500;
  mpd, synth       playlist_continuation with K in 0,1,5,10,25,100 (K = 0: title only):
                   R-precision, NDCG@500, clicks for the pipeline and each generator, per K.
configs/pipeline_ml100k.toml also names a transformer run (runs/ml100k-feedback): train it first
with `segue train --config configs/ml100k-feedback.toml` on the same store (stores/ml100k.duckdb).
The equivalent commands are printed as it goes. Real data comes from ../shared/data (see
its README); nothing of it is written outside --work.

    nice .venv/bin/python bench/pipeline_quality.py --datasets ml100k beauty --work /tmp/pq
    nice .venv/bin/python bench/pipeline_quality.py --datasets mpd synth --synth-playlists 20000

Measured 2026-12-07, `--datasets synth --synth-playlists 100000` (20,000 items; 10,000 held-out
playlists, 49,464 queries over K in 0,1,5,10,25,100; fit 1,239 s, ranker 438 trees on 9,947
validation queries; load 2-5):
    model       R-prec  NDCG@500  clicks
    pipeline    0.1924  0.3733    0.49
    item2vec    0.1631  0.3551    0.74    NDCG minus pipeline -0.0181 [-0.0190, -0.0173]
    itemknn     0.1673  0.3406    0.63    NDCG minus pipeline -0.0326 [-0.0335, -0.0318]
    popularity  0.0594  0.1469    2.83
    title only (K = 0): pipeline R-prec 0.1516, clicks 0.30; popularity 0.0765, clicks 0.50
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import tomllib
from pathlib import Path

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from segue.data.sources import open_source
from segue.data.store import BuildConfig, build_store
from segue.errors import SegueError
from segue.evaluation.cli import run_evaluation
from segue.training.pipeline_cli import fit_pipeline

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def store_for(name: str, work: Path, args: argparse.Namespace) -> Path:
    path = work / f"{name}.duckdb"
    if path.exists():
        return path
    if name == "beauty":
        src, split = open_source("seqtext", DATA / "beauty" / "Beauty.txt", format="sequences"), {"kind": "leave_last_out"}
    elif name == "ml100k":
        src, split = open_source("movielens", DATA / "ml-100k"), {"kind": "leave_last_out"}
    elif name == "mpd":
        src, split = open_source("mpd", DATA / "mpd-sample"), {"kind": "random_sequence"}
    else:
        src = open_source("synthetic", None, n_playlists=args.synth_playlists, n_items=args.synth_items, seed=0)
        split = {"kind": "random_sequence"}
    return build_store(src, path, BuildConfig(splits=[split]))


def config_for(name: str) -> Path:
    return ROOT / "configs" / f"pipeline_{'mpd' if name in ('mpd', 'synth') else name}.toml"


def missing_generators(name: str, work: Path) -> list[tuple[str, Path]]:
    """(generator, folder) of the trained runs the dataset's pipeline config names but this clone
    lacks (runs/ml100k-feedback on a fresh clone); none once the pipeline is fitted in --work."""
    if (work / f"{name}_pipeline" / "model.toml").exists():
        return []
    config = config_for(name)
    gens = tomllib.loads(config.read_text(encoding="utf-8")).get("pipeline", {}).get("generators", [])
    folders = [(g["name"], (config.parent / g["folder"]).resolve()) for g in gens if isinstance(g.get("folder"), str)]
    return [(g, f) for g, f in folders if not (f / "model.toml").exists()]


def run(name: str, work: Path, args: argparse.Namespace) -> dict:
    store = store_for(name, work, args)
    config = config_for(name)
    folder = work / f"{name}_pipeline"
    t0 = time.perf_counter()
    if not (folder / "model.toml").exists():
        print(f"$ segue pipeline --config {config.relative_to(ROOT)} --store {store} --out {folder}", flush=True)
        fit_pipeline(config, folder, None, store)
    fit_s = time.perf_counter() - t0
    gens = sorted(p.name for p in (folder / "generators").iterdir())
    models = [f"pipeline={folder}", *(f"{g}={folder / 'generators' / g}" for g in gens)]
    playlists = name in ("mpd", "synth")
    protocol = "playlist_continuation" if playlists else "leave_last_out"
    extra = ["--continuation-ks", "0,1,5,10,25,100"] if playlists else []
    out = work / f"report_{name}"
    print("$ segue evaluate " + " ".join(shlex.quote(m) for m in models) + f" --store {store} -p {protocol} "
          + " ".join(extra) + f" -o {out}", flush=True)
    result, stats, _ = run_evaluation(
        models, store, None, protocol, None, out,
        continuation_ks=[0, 1, 5, 10, 25, 100] if playlists else None, reference="pipeline",
    )
    info = result.models["pipeline"].info
    summary = result.summary()
    row: dict = {"fit_seconds": round(fit_s), "ranker": info.get("ranker_training")}
    keys = ["rprec", f"ndcg@{result.headline_k}", "clicks"] if playlists else ["ndcg@10", "hr@10"]
    row["means"] = {m: {k: round(summary[m][k], 4) for k in keys} for m in summary}
    row["vs_pipeline"] = {
        m: {k: [round(c.diff, 4), round(c.low, 4), round(c.high, 4)] for k, c in comp.items() if k in keys}
        for m, comp in stats.comparisons.items()
    }
    row["pool_recall"] = {n: info[f"pool_recall@{n}"] for n in (50, 200, 500)}
    if playlists:
        row["per_group"] = {g: {m: {k: round(v[k], 4) for k in keys} for m, v in per.items()} for g, per in result.group_summary().items()}
    row["top_features"] = dict(list(info["feature_importance"].items())[:8])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["ml100k", "beauty", "mpd", "synth"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/pipeline-quality"))
    ap.add_argument("--synth-playlists", type=int, default=20_000)
    ap.add_argument("--synth-items", type=int, default=20_000)
    args = ap.parse_args()
    # Before any store is built: a generator run that is not trained yet failed after the build,
    # as a traceback.
    missing = [(n, g, f) for n in args.datasets for g, f in missing_generators(n, args.work)]
    for name, gen, folder in missing:
        train = ROOT / "configs" / f"{folder.name}.toml"  # runs/<name> is what configs/<name>.toml trains
        how = f"`segue train --config configs/{train.name}`" if train.exists() else "`segue train`"
        print(
            f"{name}: generator '{gen}' of {config_for(name).relative_to(ROOT)} needs the trained run {folder}: "
            f"train it first with {how}",
            file=sys.stderr,
        )
    if missing:
        raise SystemExit(2)
    print(machine_line(), flush=True)  # the reference the figures below are read against
    args.work.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        try:
            row = run(name, args.work, args)
        except SegueError as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        print(f"== {name}: " + json.dumps(row, indent=1), flush=True)


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
