"""The demo pipeline: generate -> build -> stats -> validate -> train -> items -> evaluate -> serve.

Each step is a function of the shared `DemoState`; `segue demo --steps build,stats` runs a subset
(steps read what earlier ones left in the work folder, so a later step can be re-run alone).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from segue.errors import SegueError

console = Console()


@dataclass
class DemoOptions:
    workdir: Path = Path("segue-demo")
    steps: list[str] | None = None
    serve: bool = True
    port: int = 8000
    seed: int = 0
    n_playlists: int = 3000
    n_items: int = 4000
    train_minutes: float = 2.5


@dataclass
class DemoState:
    options: DemoOptions
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def store_path(self) -> Path:
        return self.options.workdir / "store.duckdb"

    @property
    def runs(self) -> Path:
        return self.options.workdir / "runs"


def step_build(state: DemoState) -> None:
    """Generate the synthetic playlist corpus and build the store with its splits."""
    from segue.cli import build_progress
    from segue.data.sources import open_source
    from segue.data.store import BuildConfig, build_store

    o = state.options
    source = open_source("synthetic", None, n_playlists=o.n_playlists, n_items=o.n_items, seed=o.seed)
    config = BuildConfig(
        seed=o.seed,
        splits=[{"kind": "random_sequence"}, {"kind": "leave_last_out"}],
    )
    with build_progress() as progress:
        build_store(source, state.store_path, config, progress=progress)
    console.print(f"[green]store[/] {state.store_path}")


def step_stats(state: DemoState) -> None:
    from segue.cli import print_stats

    state.results["stats"] = print_stats(state.store_path)


def step_validate(state: DemoState) -> None:
    """Data validation: the split's training part against its test part (schema + drift per
    feature, as `segue validate` checks serving logs and new imports against training data)."""
    import typer

    from segue.ops.cli import validate

    path = state.store_path.resolve()
    out = state.options.workdir / "validation"
    try:
        validate(f"store:{path}#random/train", f"store:{path}#random/test", thresholds=None, out=out, webhook=None)
        state.results["validation"] = "pass"
    except typer.Exit:  # a drift alert: reported above, and the demo goes on
        state.results["validation"] = "fail"


def step_train(state: DemoState) -> None:
    """Train a small transformer (a few minutes at most on 2 cores) on the leave-last-out split."""
    from segue.training.trainer import quick_config, train

    o = state.options
    cfg = quick_config(
        state.store_path.resolve(), "loo", runs_dir=state.runs.resolve(), minutes=o.train_minutes
    )
    cfg = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"seed": o.seed})})
    run = train(cfg, console=console)
    state.results["run"] = run
    console.print(f"[green]run folder[/] {run}")


def step_items(state: DemoState) -> None:
    """Cold start: a small transformer that also reads artist, album and genre; a track it never
    saw is added from a Parquet (`segue items add`) and recommended after its album's tracks."""
    from segue.serving.items import demo_new_item

    o = state.options
    state.results["new_item"] = demo_new_item(state.store_path.resolve(), state.runs.resolve(), minutes=min(1.0, o.train_minutes), console=console)


def step_evaluate(state: DemoState) -> None:
    """The transformer beside every baseline, leave-last-out full ranking, with a report."""
    from segue.evaluation.cli import run_evaluation

    run = state.runs / "transformer"
    models = ["popularity", "itemknn", "ease", "item2vec", "als"]
    if (run / "model.toml").exists():
        models.insert(0, f"transformer={run}")
    else:
        console.print("[yellow]no trained transformer in the work folder: evaluating the baselines only")
    out = state.options.workdir / "reports" / "leave_last_out"
    result, stats, folder = run_evaluation(
        models, state.store_path, "loo", "leave_last_out", [1, 5, 10, 20, 50], out, n_boot=500, console=console
    )
    state.results["report"] = folder


def step_serve(state: DemoState) -> None:
    """Serve the demo transformer (or the best baseline) with its web page until Ctrl-C."""
    import uvicorn

    from segue.serving.app import create_app

    o = state.options
    model = state.runs / "transformer"
    if not (model / "model.toml").exists():
        from segue.data.arrays import SplitData
        from segue.data.store import Store
        from segue.models.itemknn import ItemKNN

        model = state.runs / "itemknn"
        with Store.open(state.store_path) as store:
            ItemKNN().fit(SplitData.load(store, "loo")).save(model)
    app = create_app(model, store=state.store_path, feature_log=o.workdir / "feature-log")
    console.print(f"[bold green]segue is serving {model.name}: open http://127.0.0.1:{o.port}/[/]  (Ctrl-C stops)")
    uvicorn.run(app, host="127.0.0.1", port=o.port, log_level="warning")


STEPS: dict[str, Callable[[DemoState], None]] = {
    "build": step_build,
    "stats": step_stats,
    "validate": step_validate,
    "train": step_train,
    "items": step_items,
    "evaluate": step_evaluate,
    "serve": step_serve,
}


def run_demo(options: DemoOptions) -> DemoState:
    state = DemoState(options)
    names = options.steps or list(STEPS)
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise SegueError(f"unknown demo step(s) {', '.join(unknown)} (steps: {', '.join(STEPS)})")
    options.workdir.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name == "serve" and not options.serve:
            continue
        console.rule(f"[bold]{name}")
        t0 = time.perf_counter()
        STEPS[name](state)
        console.print(f"[dim]{name} took {time.perf_counter() - t0:.1f}s[/]")
    return state
