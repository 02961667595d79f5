"""`segue pipeline`: fit a two-stage pipeline (segue.models.pipeline) from a TOML config into a
model folder that `segue evaluate` and `segue serve --model` take like any other."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import Field

from segue.config import Config

if TYPE_CHECKING:  # the CLI imports the models only when a command runs
    from segue.models.pipeline import PipelineConfig


class PipelineDataConfig(Config):
    store: str  # relative paths: to the config file's folder
    split: str


class PipelineRunConfig(Config):
    """A pipeline config file: the data it is fitted on and the pipeline (generators, ranker)."""

    name: str = Field("pipeline", pattern=r"^[A-Za-z0-9_.-]+$")
    models_dir: str = "../models"  # default output: models_dir / name (relative: to the config file)
    data: PipelineDataConfig
    pipeline: dict = {}  # segue.models.pipeline.PipelineConfig, checked when the run starts


def pipeline_config(run: PipelineRunConfig, config: Path) -> PipelineConfig:
    """The typed pipeline of a config file, its generators' folders resolved against the file's
    folder (families and generator configs are checked here; the folders by fit_pipeline)."""
    from segue.models.pipeline import PipelineConfig

    pipe = dict(run.pipeline)
    gens = []
    for g in pipe.get("generators", []):
        g = dict(g)
        if isinstance(g.get("folder"), str):
            g["folder"] = str((config.parent / g["folder"]).resolve())
        gens.append(g)
    pipe["generators"] = gens
    return PipelineConfig.from_dict(pipe, source=f"{config} [pipeline]")


def check_generator_folders(cfg: PipelineConfig, config: Path) -> None:
    """Every fitted generator folder is a model folder: said before the store is opened and any
    generator is fitted (fit loads it, after the file's other checks)."""
    from segue.errors import SegueError
    from segue.models.base import read_model_header

    for i, g in enumerate(cfg.generators):
        if g.folder is not None:
            try:
                read_model_header(Path(g.folder))
            except SegueError as e:
                raise SegueError(f"{config} [pipeline]: generators[{i}] ('{g.name}'): {e}") from None


def _is_pipeline_model(folder: Path) -> bool:
    """A model folder of the pipeline family (what `segue pipeline` writes), by its model.toml."""
    import tomllib

    try:
        return tomllib.loads((folder / "model.toml").read_text(encoding="utf-8")).get("family") == "pipeline"
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def fit_pipeline(config: Path, out: Path | None = None, console: object = None, store: Path | None = None) -> Path:
    """Fit the pipeline of `config` on its store's split (or on `store`) and save it (atomically) to `out`."""
    from segue.data.arrays import SplitData
    from segue.data.store import Store
    from segue.io import check_output
    from segue.models.base import check_save_folder
    from segue.models.pipeline import PipelineRecommender

    run = PipelineRunConfig.load(config)
    base = config.parent
    cfg = pipeline_config(run, config)
    check_generator_folders(cfg, config)
    out = out or base / run.models_dir / run.name
    # before fitting: save() replaces the whole path, so it must be new or an earlier pipeline model
    check_output(out, "pipeline model", _is_pipeline_model)
    check_save_folder(out)  # and one save() wrote, holding nothing save() would delete

    def progress(what: str, done: int, total: int) -> None:
        if console is not None and (done == total or done % 2000 < 128):
            console.print(f"  {what}: {done}/{total}", highlight=False)  # type: ignore[attr-defined]

    with Store.open(store or base / run.data.store) as opened:
        data = SplitData.load(opened, run.data.split)
        model = PipelineRecommender(cfg).fit(data, progress=progress)
    model.save(out)
    return out


def pipeline(
    config: Annotated[Path, typer.Option("--config", "-c", help="A pipeline config TOML (see configs/pipeline_*.toml).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Model folder (default: models_dir/name from the config).")] = None,
    store: Annotated[Path | None, typer.Option("--store", help="Store file (default: data.store from the config).")] = None,
) -> None:
    """Fit a two-stage pipeline: candidate generators, then a LightGBM LambdaRank ranker trained on the validation part."""
    import json

    from rich.console import Console
    from rich.markup import escape

    from segue.errors import SegueError

    console = Console()
    try:
        folder = fit_pipeline(config, out, console, store)
    except SegueError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    import tomllib

    meta = json.loads(tomllib.loads((folder / "model.toml").read_text())["meta"])
    console.print(f"pipeline saved to [bold]{folder}[/]: ranker {json.dumps(meta.get('ranker_training', {}))}", soft_wrap=True)
