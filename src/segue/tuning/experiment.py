"""`segue experiment EXPERIMENT.toml`: several models on one split, one report (in the spirit of
Cornac's `Experiment(eval_method, models, metrics).run()`).

    store = "stores/ml100k.duckdb"     # relative paths: to the file's folder (or to base_dir, if given;
                                       # the report's copy of the file names the original folder so)
    split = "loo"
    protocol = "leave_last_out"
    ks = [10, 20]
    reference = "ease"                 # compared against (default: the best on NDCG at the headline K)
    [[models]]
    name = "ease"
    family = "ease"
    config = { l2 = 100.0 }            # fitted on the split's training part, with this config
    [[models]]
    name = "sasrec"
    folder = "runs/beauty"             # a model folder (trained before): loaded, not refitted

The report folder is `segue evaluate`'s (CIs, paired comparisons against the reference, per-user
values) plus experiment.md: one Markdown table with each model's headline metrics, its paired
difference from the reference, and its cost: fit seconds, the memory the fit added at its peak
(resident set, sampled), and the size of the saved model folder.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from segue.config import Config, read_toml
from segue.errors import ConfigError, SegueError

EXPERIMENT_KIND = "experiment report"
EXPERIMENT_MARKER = "experiment.md"  # what tells an earlier experiment's folder (a report plus this) from others


class ModelSpec(Config):
    name: str
    family: str | None = None  # fitted with `config` ...
    config: dict[str, Any] = {}
    folder: str | None = None  # ... or loaded from a model folder

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.family is None) == (self.folder is None):
            raise ValueError(f"model '{self.name}': give either `family` (fitted here) or `folder` (loaded)")
        if self.folder is not None and self.config:
            raise ValueError(f"model '{self.name}': a folder's model keeps its saved config; `config` is for `family`")
        return self


class ExperimentConfig(Config):
    store: str
    split: str
    protocol: str = "leave_last_out"
    part: Literal["valid", "test"] = "test"
    ks: list[int] | None = None  # None (left out): the evaluation's default cut-offs
    reference: str | None = None
    n_boot: int = Field(1000, ge=10)
    seed: int = 0
    out: str | None = None  # default: reports/experiment-<file stem>
    models: list[ModelSpec]
    base_dir: str | None = Field(None, exclude=True)

    @field_validator("ks")
    @classmethod
    def _ks(cls, ks: list[int] | None) -> list[int] | None:
        if ks is not None and (not ks or any(k < 1 for k in ks)):
            # an empty list was taken as "the defaults"; 0 failed inside the evaluation, unnamed
            raise ValueError(f"cut-offs must be a non-empty list of positive integers, got {ks} (leave ks out for the defaults)")
        return ks

    @model_validator(mode="after")
    def _names(self) -> Self:
        if not self.models:
            raise ValueError("no model: add [[models]] tables")
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model names must differ: {', '.join(dup)} repeated")
        if self.reference is not None and self.reference not in names:
            raise ValueError(f"reference '{self.reference}' is not one of the models ({', '.join(names)})")
        return self

    @classmethod
    def load(cls, path: str | Path) -> Self:
        path = Path(path)
        cfg = cls.from_dict(read_toml(path), source=str(path))
        # a base_dir written in the file (a report's copy names the original file's folder) wins
        base = path.parent.resolve() / cfg.base_dir if cfg.base_dir else path.parent.resolve()
        return cfg.model_copy(update={"base_dir": str(base)})

    def resolve(self, p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() or self.base_dir is None else Path(self.base_dir) / path


def report_copy(path: Path, cfg: ExperimentConfig) -> str:
    """The experiment file as the report keeps it: its text, led by the folder its relative paths
    are read from (base_dir), so `segue experiment REPORT/experiment.toml` runs it again."""
    text = Path(path).read_text(encoding="utf-8").lstrip("\ufeff")
    if "base_dir" in read_toml(path):
        return text
    base = json.dumps(str(cfg.base_dir or Path(path).parent.resolve()), ensure_ascii=False)
    return f"# written with the report: the relative paths below are read from base_dir\nbase_dir = {base}\n\n{text}"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def saved_bytes(model: Any) -> int:
    """The size of the model as save() writes it: the same measure for a model fitted here and
    one read from a folder (a training run folder also holds checkpoints with optimiser state,
    TensorBoard logs and plots, which are no part of the model)."""
    with tempfile.TemporaryDirectory(prefix="segue-size-") as tmp:
        return folder_bytes(model.save(Path(tmp) / "m"))


def check_models(cfg: ExperimentConfig, source: str) -> None:
    """A ConfigError naming the model and field of the first family or config that is wrong, and
    the file's protocol when it is unknown."""
    from segue.evaluation.protocols import protocol_spec
    from segue.models.base import families, model_class

    try:
        protocol_spec(cfg.protocol)
    except ConfigError as e:
        raise ConfigError(f"{source}: field 'protocol': {e}") from None
    for spec in cfg.models:
        if spec.family is not None:
            if spec.family not in families():
                raise ConfigError(f"{source}: models '{spec.name}'.family: '{spec.family}' is not a family ({', '.join(families())})")
            try:
                cls = model_class(spec.family)
            except ImportError as e:
                raise SegueError(f"{source}: models '{spec.name}'.family: '{spec.family}' is not available here ({e})") from None
            cls.config_class.from_dict(spec.config, source=f"{source}: models '{spec.name}'.config")
        elif not cfg.resolve(spec.folder).is_dir():  # type: ignore[arg-type]
            raise ConfigError(f"{source}: models '{spec.name}'.folder: {cfg.resolve(spec.folder)} is not a model folder")  # type: ignore[arg-type]


def build_models(cfg: ExperimentConfig, store: Any, source: str = "experiment") -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """name -> fitted or loaded model, and name -> info (family, cost, model.toml text)."""
    from segue.data.arrays import SplitData
    from segue.evaluation.cli import _baseline_header
    from segue.models.base import load_model, model_class, read_model_header
    from segue.tuning.trial import fit_family, measured

    data = None
    models: dict[str, Any] = {}
    infos: dict[str, dict[str, Any]] = {}
    for spec in cfg.models:
        if spec.folder is not None:
            folder = cfg.resolve(spec.folder)
            header = read_model_header(folder)
            with measured() as cost:
                model = load_model(folder)
            train = (getattr(model, "meta", {}) or {}).get("train", {})
            metrics = folder / "metrics.json"
            fit_s = None
            if metrics.exists():
                import json

                fit_s = json.loads(metrics.read_text()).get("train_seconds")
            fit_s = fit_s if fit_s is not None else train.get("train_seconds")
            infos[spec.name] = {
                "source": "folder", "folder": str(folder), "family": header.get("family"),
                "fit_seconds": fit_s, "peak_mib": None, "size_mb": saved_bytes(model) / 1e6,
                "model_toml": (folder / "model.toml").read_text(encoding="utf-8"),
            }
        else:
            if data is None:
                data = SplitData.load(store, cfg.split)
            cls = model_class(spec.family)  # type: ignore[arg-type]
            config = cls.config_class.from_dict(spec.config, source=f"{source}: models '{spec.name}'.config")
            from segue.tuning.trial import PeakRSS

            start = PeakRSS.now()
            with measured() as cost:
                model = fit_family(spec.family, config, data)  # type: ignore[arg-type]
            size = saved_bytes(model)
            infos[spec.name] = {
                "source": "fitted", "family": spec.family, "fit_seconds": cost["seconds"],
                "peak_mib": max(0.0, cost["peak_rss_mb"] - start), "size_mb": size / 1e6,
                "model_toml": _baseline_header(model),
            }
        models[spec.name] = model
    return models, infos


def markdown_table(result: Any, stats: Any, infos: dict[str, dict[str, Any]]) -> str:
    """The experiment's table: headline metrics mean ± half CI, difference from the reference
    with p, and the cost columns."""
    from segue.evaluation.report import _fmt_p, headline_columns, short_label

    cols = headline_columns(result)
    h = stats.headline
    header = ["model", "family", *map(short_label, cols), f"Δ {short_label(h)} vs {stats.reference} (p)",
              "fit s", "fit peak +MiB", "size MB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in result.models:
        iv = stats.intervals[m]
        cells = [m, str(infos[m].get("family"))]
        cells += [f"{iv[c].mean:.4f} ± {(iv[c].high - iv[c].low) / 2:.4f}" for c in cols]
        if m == stats.reference:
            cells.append("reference")
        else:
            c = stats.comparisons[m][h]
            cells.append(f"{c.diff:+.4f} ({_fmt_p(c.p_value, stats.n_boot)})")
        info = infos[m]
        cells.append("–" if info.get("fit_seconds") is None else f"{info['fit_seconds']:.1f}")
        cells.append("–" if info.get("peak_mib") is None else f"{info['peak_mib']:.0f}")
        cells.append(f"{info['size_mb']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_experiment(path: Path, *, out: Path | None = None, console: Any = None) -> tuple[Path, str]:
    """Fit/load every model, evaluate them together, write the report; returns (folder, table)."""
    from rich.console import Console

    from segue.data.store import Store
    from segue.evaluation.evaluator import evaluate
    from segue.evaluation.protocols import ProtocolConfig
    from segue.evaluation.report import (
        EvaluateConfig,
        check_report_path,
        compute_stats,
        print_table,
        write_report,
    )

    console = console or Console()
    cfg = ExperimentConfig.load(path)
    store_path = cfg.resolve(cfg.store)
    if not store_path.exists():
        raise SegueError(f"{path}: field 'store': {store_path} does not exist (build it with `segue data build`)")
    check_models(cfg, str(path))  # every config is checked before anything is fitted
    out = out or (cfg.resolve(cfg.out) if cfg.out else Path("reports") / f"experiment-{path.stem}")
    # before any fitting: the report replaces the whole path, so it must be new or an earlier experiment
    check_report_path(out, EXPERIMENT_KIND, EXPERIMENT_MARKER)
    pcfg = ProtocolConfig(name=cfg.protocol, part=cfg.part)
    with Store.open(store_path) as store:
        if cfg.split not in store.split_names():
            raise ConfigError(f"{path}: field 'split': the store has no split '{cfg.split}' (its splits: {store.split_names()})")
        models, infos = build_models(cfg, store, source=str(path))
        result = evaluate(models, store, cfg.split, pcfg, cfg.ks, model_info=infos)
    stats = compute_stats(result, n_boot=cfg.n_boot, seed=cfg.seed, reference=cfg.reference)
    print_table(result, stats, console)
    table = markdown_table(result, stats, infos)
    ecfg = EvaluateConfig(models=[m.name for m in cfg.models], store=str(store_path), split=cfg.split, protocol=pcfg,
                          ks=list(result.ks), n_boot=cfg.n_boot, seed=cfg.seed, reference=stats.reference)
    title = f"# Experiment: {path.name}\n\n{result.protocol} on split '{result.split}' ({result.part}), {len(result.seq_ids)} queries; ± = half the 95% bootstrap CI; Δ = paired bootstrap difference from the reference.\n\n"
    # written with the report, in one atomic step: an experiment folder is never left without them
    extra = {EXPERIMENT_MARKER: title + table + "\n", "experiment.toml": report_copy(path, cfg)}
    write_report(result, out, stats, ecfg, extra_files=extra, kind=EXPERIMENT_KIND, marker=EXPERIMENT_MARKER)
    return out, table
