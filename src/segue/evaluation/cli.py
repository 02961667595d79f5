"""`segue evaluate`: the command function (the lead registers it on the main app) and the model
resolution it needs: model folders are loaded, baseline names are fitted on the split on the fly."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from segue.errors import ConfigError, SegueError

if TYPE_CHECKING:  # imported inside the functions: `segue --help` must not pay for them
    from rich.console import Console

    from segue.data.store import Store
    from segue.models.base import BaseRecommender

BASELINES = ("popularity", "itemknn", "ease", "item2vec", "als", "biasedmf")
# Families a default config cannot fit: name -> what to do instead. A pipeline's default config
# has no generators, so fitting one raised pydantic's ValidationError as a traceback.
NOT_FITTED_HERE = {
    "pipeline": "a two-stage pipeline is built from trained candidate generators named in its config, so it "
    "cannot be fitted on the fly: fit it with `segue pipeline --config <pipeline config>.toml` "
    "(see configs/pipeline_*.toml) and pass the model folder it writes",
}


def parse_ks(text: str | None) -> list[int] | None:
    """'1,5,10' -> [1, 5, 10]; None -> None (the protocol's default)."""
    if text is None or not text.strip():
        return None
    try:
        ks = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ConfigError(f"--ks '{text}': expected comma-separated positive integers, e.g. 1,5,10,20") from None
    if not ks or min(ks) < 1:
        raise ConfigError(f"--ks '{text}': expected comma-separated positive integers, e.g. 1,5,10,20")
    return ks


def _parse_counts(text: str | None) -> list[int] | None:
    """'0,1,5' -> [0, 1, 5] (seed counts may be 0); None -> None."""
    if text is None or not text.strip():
        return None
    try:
        ks = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        ks = []
    if not ks or min(ks) < 0:
        raise ConfigError(f"--continuation-ks '{text}': expected comma-separated counts >= 0, e.g. 0,1,5,10,25,100")
    return ks


def _baseline_header(model: BaseRecommender) -> str:
    import tomli_w

    return tomli_w.dumps({"family": model.family, "fitted": "on the fly by segue evaluate"}) + "\n[config]\n" + model.config.to_toml()


def resolve_models(
    specs: list[str],
    store: Store,
    split: str,
    *,
    console: Console | None = None,
) -> tuple[dict[str, BaseRecommender], dict[str, dict[str, Any]]]:
    """Each spec is `[label=]folder` or `[label=]baseline-name`; returns label -> model, label -> info.

    A folder is loaded with its saved config; a baseline name is fitted on `split` with its
    default config. Anything else is an error naming the spec and what would do.
    """
    from segue.data.arrays import SplitData
    from segue.models.base import families, load_model, model_class, read_model_header

    models: dict[str, BaseRecommender] = {}
    infos: dict[str, dict[str, Any]] = {}
    data: SplitData | None = None
    # before any fitting: a label the user chose names one model (unlabelled repeats become NAME-2)
    labels = [s.partition("=")[0] for s in specs if "=" in s]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise SegueError(f"model labels must differ: {', '.join(repr(x) for x in dup)} given to more than one model")
    for spec in specs:
        label, sep, target = spec.partition("=")
        if not sep:
            label, target = "", spec
        path = Path(target)
        if path.is_dir():
            header = read_model_header(path)  # clear error when there is no model.toml
            model = load_model(path)
            label = label or path.name
            info = {
                "source": "folder",
                "folder": str(path.resolve()),
                "family": header.get("family"),
                "model_toml": (path / "model.toml").read_text(encoding="utf-8"),
            }
        elif target in NOT_FITTED_HERE:
            raise SegueError(f"model '{target}': {NOT_FITTED_HERE[target]}")
        elif target in families():
            try:
                cls = model_class(target)
            except ImportError as e:
                raise SegueError(f"model '{target}': this baseline is not available ({e})") from None
            if data is None:
                data = SplitData.load(store, split)
            if console:
                console.print(f"fitting [bold]{target}[/] on split '{split}' ...")
            t0 = time.perf_counter()
            model = cls().fit(data)
            fit_seconds = time.perf_counter() - t0
            if console:  # the table's seconds are scoring time only; a neural fit can take minutes
                console.print(f"[dim]fitted {target} in {fit_seconds:.1f} s[/]")
            label = label or target
            info = {
                "source": "fitted on the fly",
                "family": target,
                "fit_seconds": round(fit_seconds, 2),
                "model_toml": _baseline_header(model),
            }
        else:
            hint = "no such model folder" if not path.exists() else "not a folder"
            fitted = ", ".join(b for b in families() if b != "transformer" and b not in NOT_FITTED_HERE)
            raise SegueError(f"model '{target}': {hint}, and not a baseline name (baselines: {fitted})")
        base, n = label, 2
        while label in models:
            label, n = f"{base}-{n}", n + 1
        models[label] = model
        infos[label] = info
    if not models:
        raise SegueError("no model given (pass model folders or baseline names, e.g. popularity ease)")
    return models, infos


def absolute_spec(spec: str) -> str:
    """A model spec (`[label=]folder` or `[label=]baseline`) with its folder made absolute, so a
    report's evaluate.toml names it wherever it is read from; a baseline name stays as it is."""
    label, sep, target = spec.partition("=")
    if not sep:
        label, target = "", spec
    path = Path(target)
    if not path.is_dir():
        return spec
    full = str(path.resolve())
    # a bare folder was labelled by its name: keep that label
    return f"{label}={full}" if sep else (full if path.resolve().name == path.name else f"{path.name}={full}")


@contextlib.contextmanager
def _ranking_progress(console: Console) -> Iterator[Callable[[str, int, int], None]]:
    """A transient bar per model while its queries are ranked."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bars: dict[str, Any] = {}
    with Progress(
        TextColumn("ranking {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    ) as p:

        def update(name: str, done: int, total: int) -> None:
            if name not in bars:
                bars[name] = p.add_task(name, total=total)
            p.update(bars[name], completed=done)

        yield update


def run_evaluation(
    models: list[str],
    store: Path,
    split: str | None = None,
    protocol: str = "leave_last_out",
    ks: list[int] | None = None,
    out: Path | None = None,
    *,
    part: str = "test",
    exclude_seen: bool = True,
    min_history: int = 1,
    batch_size: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    reference: str | None = None,
    report: bool = True,
    console: Console | None = None,
    continuation_ks: list[int] | None = None,
) -> tuple[Any, Any, Path | None]:
    """The whole `segue evaluate` pipeline as a function: returns (EvalResult, Stats, report folder).

    With `report` and no `out`, the folder is reports/<protocol>-<split>."""
    from rich.console import Console

    from segue.data.store import Store
    from segue.evaluation.evaluator import evaluate as run
    from segue.evaluation.protocols import ProtocolConfig, protocol_spec, resolve_split
    from segue.evaluation.report import (
        EvaluateConfig,
        check_report_path,
        compute_stats,
        print_table,
        write_report,
    )

    console = console or Console()
    if batch_size is not None and batch_size < 1:  # a negative size scored nothing: every metric 0
        raise ConfigError(f"batch_size is {batch_size}: expected at least 1 query scored at once (or None: auto)")
    if not store.exists():
        raise SegueError(f"{store}: no store here (build one with `segue data build`)")
    spec = protocol_spec(protocol)
    from rich.markup import escape

    split = resolve_split(store, spec.name, split, announce=lambda m: console.print(f"[yellow]note:[/] {escape(m)}", highlight=False))
    out_given = out is not None
    if report and out is None:
        out = Path("reports") / f"{spec.name}-{split}"
    # before any fitting or ranking: the report replaces the whole path, so it must be new or an earlier report
    replacing = report and out is not None and check_report_path(out)
    pcfg = ProtocolConfig(name=spec.name, part=part, exclude_seen=exclude_seen, min_history=min_history)
    if continuation_ks is not None:
        pcfg = pcfg.model_copy(update={"continuation_ks": continuation_ks})
    with Store.open(store) as opened:
        loaded, infos = resolve_models(models, opened, split, console=console)
        with _ranking_progress(console) as progress:
            result = run(loaded, opened, split, pcfg, ks, batch_size, model_info=infos, progress=progress, n_boot=n_boot, seed=seed)
    stats = compute_stats(result, n_boot=n_boot, seed=seed, reference=reference)
    print_table(result, stats, console)
    if report and out is not None:
        config = EvaluateConfig(  # absolute paths: the report folder alone locates its inputs
            models=[absolute_spec(m) for m in models],
            store=str(Path(store).resolve()),
            split=split,
            protocol=pcfg,
            ks=list(result.ks),
            batch_size=batch_size,
            n_boot=n_boot,
            seed=seed,
            reference=reference,
        )
        write_report(result, out, stats, config)
        if replacing:  # by default, re-running the same protocol and split lands in the same folder
            hint = "" if out_given else " (pass --out to keep both)"
            console.print(f"[yellow]replaced the previous report in[/] {out}{hint}")
        console.print(f"[green]report written to[/] {out}/report.html")
    return result, stats, (out if report else None)


def evaluate(
    models: Annotated[
        list[str] | None,
        typer.Argument(help="Model folders or baseline names (popularity, itemknn, ease, item2vec, als, biasedmf); label=... to rename."),
    ] = None,
    store: Annotated[Path | None, typer.Option("--store", help="Store file.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split to evaluate (default: the store's split of the protocol's kind).")] = None,
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol", "-p", help="leave_last_out, playlist_continuation, temporal, strong or random_holdout."
        ),
    ] = "leave_last_out",
    ks: Annotated[str | None, typer.Option("--ks", help="Cut-offs, comma-separated (default 1,5,10,20,50,100; continuation 10,100,500).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Report folder (default reports/<protocol>-<split>).")] = None,
    part: Annotated[str, typer.Option("--part", help="test or valid.")] = "test",
    keep_seen: Annotated[bool, typer.Option("--keep-seen", help="Let history items be recommended (repeat consumption).")] = False,
    min_history: Annotated[int, typer.Option("--min-history", min=0, help="Leave out queries with a shorter history.")] = 1,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Queries scored at once (default: fits 256 MB of scores).")
    ] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", min=0, help="Bootstrap resamples (at least 10 for a report; 0: no CIs, with --no-report).")] = 1000,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed for the bootstrap resamples (>= 0).")] = 0,
    reference: Annotated[str | None, typer.Option("--reference", help="Model the others are compared with (default: the best).")] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Print the table only.")] = False,
    continuation_ks: Annotated[
        str | None,
        typer.Option("--continuation-ks", help="playlist_continuation: seed counts K, comma-separated (0 = title only; default 1,5,10,25,100)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="A report's evaluate.toml: run that evaluation again (no MODELS, --store or protocol options; --out and --no-report apply)."),
    ] = None,
) -> None:
    """Evaluate models (or baselines fitted on the fly) under a protocol: a table and a report folder."""
    from rich.console import Console

    from segue.evaluation.report import MIN_REPORT_BOOT

    if config is not None:
        given = {
            "MODELS": bool(models), "--store": store is not None, "--split": split is not None,
            "--protocol": protocol != "leave_last_out", "--ks": ks is not None, "--part": part != "test",
            "--keep-seen": keep_seen, "--min-history": min_history != 1, "--batch-size": batch_size is not None,
            "--n-boot": n_boot != 1000, "--seed": seed != 0, "--reference": reference is not None,
            "--continuation-ks": continuation_ks is not None,
        }
        _evaluate_again(config, given=[k for k, v in given.items() if v], out=out, report=not no_report)
        return
    if not models:
        raise typer.BadParameter("give model folders or baseline names (or --config REPORT/evaluate.toml)", param_hint="'MODELS...'")
    if store is None:
        raise typer.BadParameter("the store to evaluate on is needed (or --config REPORT/evaluate.toml)", param_hint="'--store'")

    if not no_report and n_boot < MIN_REPORT_BOOT:
        # checked before any work: the report's config refused it only after the whole evaluation
        raise typer.BadParameter(
            f"{n_boot} is too few for a report (expected at least {MIN_REPORT_BOOT}; 0 only with --no-report)", param_hint="'--n-boot'"
        )
    console = Console()
    try:
        k_list = parse_ks(ks)
        run_evaluation(
            models,
            store,
            split,
            protocol,
            k_list,
            out,
            part=part,
            exclude_seen=not keep_seen,
            min_history=min_history,
            batch_size=batch_size,
            n_boot=n_boot,
            seed=seed,
            reference=reference,
            report=not no_report,
            console=console,
            continuation_ks=_parse_counts(continuation_ks),
        )
    except SegueError as e:
        from rich.markup import escape

        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _evaluate_again(path: Path, *, given: list[str], out: Path | None, report: bool) -> None:
    """`segue evaluate --config REPORT/evaluate.toml`: the saved evaluation run again, its
    models, store, split, protocol, cut-offs, bootstrap and reference as the file says."""
    from rich.console import Console

    from segue.evaluation.report import EvaluateConfig

    console = Console()
    try:
        if given:
            raise ConfigError(f"--config {path}: the file fixes the evaluation; drop {', '.join(given)} (only --out and --no-report apply)")
        cfg = EvaluateConfig.load(path)
        p = cfg.protocol
        if out is None and report:  # never over the report being checked
            out = path.parent.with_name(path.parent.name + "-again")
        result, _, _ = run_evaluation(
            cfg.models,
            Path(cfg.store),
            cfg.split,
            p.name,
            list(cfg.ks) or None,
            out,
            part=p.part,
            exclude_seen=p.exclude_seen,
            min_history=p.min_history,
            batch_size=cfg.batch_size,
            n_boot=cfg.n_boot,
            seed=cfg.seed,
            reference=cfg.reference,
            report=report,
            console=console,
            continuation_ks=list(p.continuation_ks),
        )
    except SegueError as e:
        from rich.markup import escape

        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    saved = _saved_checksum(path.parent / "store.json")
    if saved is not None and saved != result.store_checksum:
        console.print(f"[yellow]warning:[/] the store's content differs from the report's (checksum {result.store_checksum[:12]} against {saved[:12]} in {path.parent / 'store.json'}): the figures need not match")


def _saved_checksum(path: Path) -> str | None:
    import json

    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("content_checksum")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
