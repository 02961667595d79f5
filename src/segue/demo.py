"""The demo pipeline: generate -> build -> stats -> baselines -> train -> evaluate -> serve.

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


STEPS: dict[str, Callable[[DemoState], None]] = {
    "build": step_build,
    "stats": step_stats,
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
