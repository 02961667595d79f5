"""The demo pipeline: generate -> build -> stats -> validate -> train -> evaluate -> rank -> pairwise -> profile
-> register -> tune -> pipeline -> serve (and items, after train).

Each step is a function of the shared `DemoState`; `segue demo --steps build,stats` runs a subset
(steps read what earlier ones left in the work folder, so a later step can be re-run alone).
"""

from __future__ import annotations

import contextlib
import socket
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


def step_rank(state: DemoState) -> None:
    """Export the transformer's two towers (item and user vectors) and rank a candidate list for one
    user, as a caller with its own candidates does through POST /v1/rank."""
    import numpy as np

    from segue.data.store import Store
    from segue.serving.engine import Engine
    from segue.serving.export import export_vectors, read_export
    from segue.serving.rank import rank_candidates

    run = state.runs / "transformer"
    if not (run / "model.toml").exists():
        console.print("[yellow]no trained transformer in the work folder: nothing to export or rank")
        return
    engine = Engine.load(run, store=state.store_path)
    with Store.open(state.store_path) as store:
        meta = export_vectors(engine.model, store, "loo", state.options.workdir / "vectors", run=str(run))
    tt = read_export(state.options.workdir / "vectors")
    console.print(f"exported {meta['n_items']} item and {meta['n_users']} user vectors (dim {meta['dim']}) to {state.options.workdir / 'vectors'}")
    with Store.open(state.store_path) as store:
        history = np.asarray(
            store.con.execute(
                "SELECT i.external_id FROM events e JOIN items i USING (item_id) WHERE seq_id = ? ORDER BY position",
                [int(tt.user_seq_ids[0])],
            ).fetchall()
        )[:, 0].tolist()
    tokens = engine.encoder.encode(history).all_tokens
    # Stage one from the exported vectors alone (ANN over the item vectors), stage two the model.
    keys, _ = tt.index().search(tt.users[:1], 20, [tokens.astype(np.int64)])
    ranked = rank_candidates(engine, tokens, keys[0][keys[0] >= 0])
    console.print(f"user {tt.user_ids[0]} ({len(history)} plays): 20 candidates retrieved from the vectors, ranked:")
    for t, score in list(zip(ranked.tokens.tolist(), ranked.scores.tolist(), strict=True))[:5]:
        console.print(f"  {score:7.3f}  {engine.catalogue.describe(t)['name']}")
def step_pairwise(state: DemoState) -> None:
    """Pairwise fine-tuning (ARGUS) on a small corpus with listening feedback: PairAccuracy before/after."""
    from segue.training.pairwise_demo import pairwise_demo

    res = pairwise_demo(state.options.workdir, seed=state.options.seed, console=console)
    for label, acc in res.items():
        console.print(f"validation PairAccuracy (pairs by listened fraction), {label}: [bold]{acc:.3f}[/]")
    state.results["pairwise"] = res


def step_profile(state: DemoState) -> None:
    """Rated profiles without order (Sprout's setting): the profile autoencoder against EASE,
    popularity and biasedmf on held-out users, then one new rated profile folded in, with its
    recommendations, predicted ratings and explanations."""
    from segue.data.cli import ratings_line
    from segue.data.stats import store_stats
    from segue.data.store import Store
    from segue.evaluation.cli import run_evaluation
    from segue.training.profile_demo import fold_in_profile, train_profiles

    o = state.options
    store, run = train_profiles(o.workdir, seed=o.seed, console=console)
    with Store.open(store) as s:
        console.print(ratings_line(store_stats(s)["ratings"]), soft_wrap=True, highlight=False)
    models = [f"autoencoder={run}", "ease", "popularity", "biasedmf"]
    run_evaluation(models, store, "strong", "strong", [20, 50, 100], o.workdir / "reports" / "strong", n_boot=300, console=console)
    state.results["profile"] = fold_in_profile(run, console=console)


def step_register(state: DemoState) -> None:
    """Register the demo transformer (evaluated, with CIs) in an embedded MLflow registry in the
    work folder, and promote it: `segue serve --model models:/demo@production` then serves it."""
    from segue.data.store import Store
    from segue.models.base import load_model
    from segue.ops.registry import Registry
    from segue.retrain.evaluate import evaluate_models
    from segue.retrain.loop import registry_config

    run = state.runs / "transformer"
    if not (run / "model.toml").exists():
        console.print("[yellow]no trained transformer in the work folder: nothing to register")
        return
    reg = Registry(state.options.workdir / "registry")
    with Store.open(state.store_path) as s:
        checksum = s.checksum
    figures = evaluate_models({"transformer": load_model(run)}, state.store_path, "loo", protocol="leave_last_out")
    info = reg.register(
        "demo", run, store_checksum=checksum, split="loo", config=registry_config(run),
        evaluation=figures["transformer"], eval_split="loo/test", parent=reg.alias("demo", "production"),
    )
    reg.promote("demo", info.version, reason="demo")
    m = figures["transformer"]["ndcg@10"]
    console.print(
        f"[green]registered[/] demo version {info.version} (NDCG@10 {m[0]:.4f} [{m[1]:.4f}, {m[2]:.4f}]) as production in "
        f"{reg.location}; segue registry list --registry {reg.location}"
    )
    state.results["registered"] = info.version
TUNE_SPACE = """# written by `segue demo`: a tiny random search of EASE's L2 weight (see `segue tune --help`)
family = "ease"
store = "store.duckdb"
split = "loo"
strategy = "random"
ks = [10, 20]
[budget]
trials = 3
[params.l2]
low = 10.0
high = 1000.0
log = true
"""


def step_tune(state: DemoState) -> None:
    """A tiny `segue tune`: 3 EASE trials as a local Metaflow flow, the best tested once, a card."""
    from segue.tuning.cli import print_summary
    from segue.tuning.launch import tune

    space = state.options.workdir / "tune_ease.toml"
    space.write_text(TUNE_SPACE)
    session = tune(space, state.options.workdir / "tune-runs", max_workers=2, n_boot=200, resume=True,
                   echo=lambda s: console.print(s, highlight=False))
    print_summary(session, console)
    state.results["tune"] = session
def step_pipeline(state: DemoState) -> None:
    """A two-stage pipeline (item-kNN + item2vec + popularity candidates, LightGBM ranker trained
    on the validation part) against its own generators, leave-last-out, with pool recall."""
    from segue.data.arrays import SplitData
    from segue.data.store import Store
    from segue.evaluation.cli import run_evaluation
    from segue.models.pipeline import PipelineConfig, PipelineRecommender

    folder = state.runs / "pipeline"
    cfg = PipelineConfig.from_dict(
        {
            "generators": [
                {"name": "itemknn", "family": "itemknn", "n": 100},
                {"name": "item2vec", "family": "item2vec", "n": 50},
                {"name": "popularity", "family": "popularity", "n": 50},
            ]
        }
    )
    with Store.open(state.store_path) as store:
        PipelineRecommender(cfg).fit(SplitData.load(store, "loo")).save(folder)
    models = [f"pipeline={folder}", *(f"{g}={folder / 'generators' / g}" for g in ("itemknn", "item2vec", "popularity"))]
    out = state.options.workdir / "reports" / "pipeline"
    result, _, report = run_evaluation(models, state.store_path, "loo", "leave_last_out", [10, 50], out, n_boot=300, console=console)
    pool = result.models["pipeline"].info["pool_recall@50"]
    console.print("pool recall@50: " + ", ".join(f"{k} {v:.3f}" for k, v in pool.items() if k != "pool_size"))
    state.results["pipeline"] = report


def bind_port(port: int, host: str = "127.0.0.1") -> socket.socket:
    """A socket bound to host:port for the demo server, or an error naming the port and --port."""
    from segue.serving.cli import bind_port as bind

    return bind(host, port, f"choose another with --port (e.g. segue demo --port {port + 1}), or pass --no-serve")


def step_serve(state: DemoState) -> None:
    """Serve the demo transformer (or the best baseline) with its web page until Ctrl-C."""
    import uvicorn

    from segue.serving.app import create_app

    o = state.options
    # Bound first and handed to uvicorn: nothing is announced on a port that is taken, and the
    # port cannot be taken between the check and the serving.
    sock = bind_port(o.port)
    try:
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
        console.print("probes: /healthz (alive), /readyz (200 once the model is warmed up), /metrics; `segue serve --workers 2` for more processes")
        # Ctrl-C: uvicorn shuts down, then re-raises the signal it caught (uvicorn.run swallows it too)
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    finally:
        sock.close()


STEPS: dict[str, Callable[[DemoState], None]] = {
    "build": step_build,
    "stats": step_stats,
    "validate": step_validate,
    "train": step_train,
    "items": step_items,
    "evaluate": step_evaluate,
    "rank": step_rank,
    "pairwise": step_pairwise,
    "profile": step_profile,
    "register": step_register,
    "tune": step_tune,
    "pipeline": step_pipeline,
    "serve": step_serve,
}


def run_demo(options: DemoOptions) -> DemoState:
    state = DemoState(options)
    names = options.steps or list(STEPS)
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise SegueError(f"unknown demo step(s) {', '.join(unknown)} (steps: {', '.join(STEPS)})")
    if "serve" in names and options.serve:
        bind_port(options.port).close()  # a taken port fails now, not after minutes of the other steps
    options.workdir.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name == "serve" and not options.serve:
            continue
        console.rule(f"[bold]{name}")
        t0 = time.perf_counter()
        STEPS[name](state)
        console.print(f"[dim]{name} took {time.perf_counter() - t0:.1f}s[/]")
    return state


def demo_new_item(store: Path, runs: Path, *, minutes: float = 1.0, console: Any = None) -> dict[str, Any]:
    """The demo's cold-start step: train a small transformer with artist/album/genre features on
    the leave-last-out split, add one new track on a known album, and rank after that album."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from segue.data.store import Store
    from segue.serving.engine import Engine
    from segue.serving.items import ADDED_FILE, add_items
    from segue.training.trainer import quick_config, train

    cfg = quick_config(store, "loo", name="transformer-features", runs_dir=runs, minutes=minutes)
    cfg = cfg.model_copy(update={"items": cfg.items.model_copy(update={"features": ["artist", "album", "genre"], "id_dropout": 0.5})})
    run = train(cfg, console=console)
    with Store.open(store) as st:  # the most played album: its tracks, artist and genre
        album, artist, meta = st.con.execute(
            """SELECT i.album_id, i.creator_id, i.meta FROM events e JOIN items i USING (item_id)
               GROUP BY 1, 2, 3 ORDER BY count(*) DESC LIMIT 1"""
        ).fetchone()
        tracks = [r[0] for r in st.con.execute("SELECT external_id FROM items WHERE album_id = ? ORDER BY item_id", [album]).fetchall()]
    new = run / "new_items.parquet"
    pq.write_table(pa.table({"item": ["new:track:1"], "name": ["A Brand New Single"], "artist_key": [artist],
                             "album_key": [album], "meta": [meta]}), new)
    if (run / ADDED_FILE).exists():
        (run / ADDED_FILE).unlink()  # a re-run of the step adds the same item again
    add_items(run, new)
    engine = Engine.load(run)
    history = engine.vocab.encode_external(tracks[:3])[0]
    tokens = [int(t) for t in engine.rank([history], 10)[0].tokens if t >= 0]
    token = int(engine.vocab.encode_external(["new:track:1"])[0][0])
    rank = tokens.index(token) + 1 if token in tokens else None
    if console is not None:
        console.print(
            f"[green]added[/] new:track:1 (album {album}) to {run}: features-only; after 3 tracks of its album it ranks "
            + (f"#{rank} of 10" if rank else "outside the top 10"),
            highlight=False,
        )
    return {"run": str(run), "rank": rank}
