"""Command functions `train` and `continue_` (registered by segue.commands as `segue train` and
`segue continue`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console


def _positive(value: float | None) -> float | None:
    """A limit override must be > 0 (the trainer config's rule), else a usage error naming the option
    instead of pydantic's traceback from TrainerConfig."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value:g} is not allowed (expected a number > 0)")
    return value


def _at_least_one(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise typer.BadParameter(f"{value} is not allowed (expected a whole number of steps >= 1)")
    return value


def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="A train config TOML file (see configs/).")],
    run_dir: Annotated[Path | None, typer.Option("--run", help="Run folder (default: runs_dir/name from the config).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Ignore existing checkpoints and start over.")] = False,
    max_steps: Annotated[
        int | None,
        typer.Option(
            callback=_at_least_one,
            help="Override trainer.max_steps (lifts max_epochs when that would stop the run sooner, and min_epochs when "
            "that would run it longer)."
        ),
    ] = None,
    max_epochs: Annotated[float | None, typer.Option(callback=_positive, help="Override trainer.max_epochs (> 0).")] = None,
    max_minutes: Annotated[float | None, typer.Option(callback=_positive, help="Override trainer.max_minutes (> 0).")] = None,
    mlflow: Annotated[
        str | None,
        typer.Option("--mlflow", help="Also log params, metrics and curves to MLflow: a registry folder or a tracking URI."),
    ] = None,
) -> None:
    """Train a neural model (transformer, autoencoder); resumes from the run folder's newest checkpoint."""
    import json

    from segue.training import mesh as M
    from segue.training.trainer import _fingerprint, _stop_text
    from segue.training.trainer import train as train_fn

    # Several processes join first and load their configs together: one whose config fails (or
    # differs) stops all of them with one message, instead of leaving the others waiting for it.
    M.init_distributed()
    try:
        cfg, lifted = M.same_everywhere(
            lambda: _command_config(config, run_dir, max_steps, max_epochs, max_minutes), lambda c: _fingerprint(c[0])
        )
    except M.PeerLost as e:
        _exit_lost(e)
    console = Console()
    try:
        run = train_fn(cfg, run_dir=run_dir, resume=not fresh, console=console)
    except KeyboardInterrupt:  # the trainer said where it stopped and what it kept: 130, no "Aborted!"
        raise typer.Exit(130) from None
    except M.PeerLost as e:
        _exit_lost(e)
    m = json.loads((run / "metrics.json").read_text())
    for note in lifted_notes(cfg.trainer, lifted, m):  # type: ignore[attr-defined]
        console.print(note, highlight=False, soft_wrap=True)
    best = m.get("best_valid") or {}
    chosen = (
        f"best {m['metric']} {m['best_metric']:.4f} at step {m['best_step']}"
        + (f" (valid exact CE {best['exact_ce']:.3f})" if "exact_ce" in best else "")
        if m["best_metric"] is not None
        else "not validated: the last step is kept"
    )
    tiebreak = getattr(cfg.trainer, "tiebreak", None)
    if tiebreak and m["best_metric"] is not None:
        chosen = kept_by_tiebreak(m, tiebreak, getattr(cfg.trainer, "tolerance", 0.0)) or chosen
    unit = m.get("unit", "tokens")
    rate = m.get(f"{unit}_per_s") or 0
    if mlflow:
        from segue.ops.registry import log_training_run

        rid = log_training_run(mlflow, run, cfg.model_dump(mode="json"))
        console.print(f"logged to MLflow ({mlflow}): run {rid}", highlight=False)
    console.print(
        f"run folder [bold]{run}[/]: {m['steps']} steps, stopped by {_stop_text(m, cfg)}; "
        f"{m['train_seconds']:.0f} s, {rate:,.0f} {unit}/s; {chosen}",
        soft_wrap=True,
    )


def _command_config(
    config: Path, run_dir: Path | None, max_steps: int | None, max_epochs: float | None, max_minutes: float | None
) -> tuple[Any, dict[str, float]]:
    """The train config with the command line's overrides, and the epoch limits --max-steps lifted."""
    from segue.errors import ConfigError
    from segue.training.pairwise import resolve_init_from
    from segue.training.trainer import load_train_config

    # a folder or a file where the other is expected: one line, not an OS error's traceback
    if config.is_dir():
        raise ConfigError(f"{config}: is a folder (expected a train config .toml file)")
    if run_dir is not None and run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: is a file (expected a run folder)")
    cfg = resolve_init_from(load_train_config(config))  # a fine-tuning's init_from: from the config's folder
    upd: dict[str, object] = {}
    lifted: dict[str, float] = {}
    if max_steps is not None:
        upd["max_steps"] = max_steps
        # The command line asked for N steps: an epoch limit that would end the run sooner (or a
        # min_epochs that would run it longer) must not silently win. Lifting one that does not
        # bind changes nothing; whether it binds needs the batches per epoch, which the family's
        # task knows only once it has read the split, so the note comes after the run.
        if max_epochs is None and cfg.trainer.max_epochs is not None:  # type: ignore[attr-defined]
            upd["max_epochs"] = None
            lifted["max_epochs"] = cfg.trainer.max_epochs  # type: ignore[attr-defined]
        if cfg.trainer.min_epochs is not None:  # type: ignore[attr-defined]
            upd["min_epochs"] = None
            lifted["min_epochs"] = cfg.trainer.min_epochs  # type: ignore[attr-defined]
    if max_epochs is not None:
        upd["max_epochs"] = max_epochs
    if max_minutes is not None:
        upd["max_minutes"] = max_minutes
    if upd:
        cfg = cfg.with_trainer(**upd)
    return cfg, lifted


def _exit_lost(e: Exception) -> NoReturn:
    """A lost process: its one message, then out at once. A normal exit would run JAX's shutdown,
    which waits at a barrier for the dead process until the heartbeat timeout and then aborts the
    process with a C++ stack trace (exit 134); nothing is left to write (the checkpoints are on disk)."""
    import os
    import sys

    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(3)


def lifted_notes(trainer: Any, lifted: dict[str, float], summary: dict[str, Any]) -> list[str]:
    """A line for each epoch limit --max-steps lifted that would have changed the run: a max_epochs
    that stops it before max_steps, a min_epochs that keeps it going past them (the rule of
    segue.training.task.total_steps). `trainer` has the command's max_steps; `summary` is the run's
    metrics.json, whose steps and epochs give the batches per epoch."""
    from segue.training.task import total_steps

    if not lifted or not summary.get("epochs"):
        return []
    per_epoch = round(summary["steps"] / summary["epochs"])
    notes = []
    for key, value in lifted.items():
        other = "min_epochs" if key == "max_epochs" else "max_epochs"
        steps, binds = total_steps(trainer.model_copy(update={key: value, other: None}), per_epoch)
        if binds == key:
            effect = "stopped the run at" if key == "max_epochs" else "kept the run going to"
            keep = "pass --max-epochs too to keep an epoch limit" if key == "max_epochs" else "raise --max-steps to train that long"
            notes.append(
                f"--max-steps {trainer.max_steps}: trainer.{key} = {value} is lifted: it would have {effect} step {steps} ({keep})"
            )
    return notes


def continue_(
    model: Annotated[Path, typer.Option("--model", "-m", help="A run folder (or saved transformer model folder).")],
    seed: Annotated[list[str], typer.Option("--seed", "-s", help="A seed item id (e.g. a track URI); repeat the option.")],
    n: Annotated[int, typer.Option("-n", min=1, max=500, help="Items to generate (as /v1/continue: 1-500).")] = 20,
    top_k: Annotated[int, typer.Option(min=1, help="Sample among the k best items.")] = 50,
    temperature: Annotated[float, typer.Option(callback=_positive, help="Softmax temperature (> 0).")] = 1.0,
    greedy: Annotated[bool, typer.Option(help="Always take the best item (its p is still read from the tempered top-k softmax).")] = False,
    random_seed: Annotated[int, typer.Option("--random-seed", help="Sampling seed.")] = 0,
) -> None:
    """Continue a playlist from seed items and print the new items with their names."""
    from segue.data.item_features import added_item_names
    from segue.errors import SegueError
    from segue.models.base import load_model
    from segue.models.item_encoder import apply_added_items
    from segue.training.continuation import continue_playlist, describe, load_item_names

    rec = load_model(model)
    if rec.family != "transformer":
        raise SegueError(f"{model}: holds a '{rec.family}' model; continuation needs a transformer")
    # the items `segue items add` gave the run, as the server (/v1/continue) reads and proposes them
    added = apply_added_items(rec, model)
    res = continue_playlist(rec, seed, n, top_k=top_k, temperature=temperature, greedy=greedy, seed=random_seed)
    console = Console()
    if res.unknown_seeds:
        console.print(f"[yellow]unknown seed items (used as <unk>): {', '.join(res.unknown_seeds)}", highlight=False)
    names = load_item_names(model)
    if added:
        extra = added_item_names(model)
        names = [*(names or []), *([None] * (len(rec.vocab) - len(names or [])))]
        for t in added:
            names[t] = extra.get(rec.vocab.external_id(t))
    for i, (tok, p) in enumerate(zip(res.tokens, res.probabilities, strict=True), 1):
        console.print(f"{i:>3}. {describe(tok, rec.vocab, names)}  [dim]p={p:.3f}[/]", highlight=False)
    if res.tokens:  # one meaning for p, greedy or sampled (as /v1/continue's probability)
        console.print(
            f"[dim]p: each pick's probability under the softmax over the {top_k} best items left, at temperature "
            f"{temperature:g}{' (greedy takes the most probable)' if greedy else ''}",
            highlight=False,
        )
    if res.ran_out:  # the words of /v1/continue's warning
        console.print(f"[yellow]only {len(res.tokens)} items could be continued (the catalogue ran out)", highlight=False)


def kept_by_tiebreak(m: dict[str, Any], tiebreak: str, tolerance: float) -> str | None:
    """The closing line's account of a checkpoint kept by trainer.tiebreak: the kept step's metric
    beside the best one seen, when they differ (else None: the plain account holds)."""
    from segue.training.trainer import lower_is_better

    metric, sign = m["metric"], -1.0 if lower_is_better(m["metric"]) else 1.0
    hist = [h for h in m.get("history") or [] if h.get(metric) is not None]
    if not hist:
        return None
    top = max(hist, key=lambda h: (sign * h[metric], -h["step"]))
    kept = m.get("best_valid") or {}
    if top["step"] == m["best_step"] or tiebreak not in kept:
        return None
    return (
        f"kept step {m['best_step']}: {metric} {m['best_metric']:.4f}, within {tolerance:g} of the best "
        f"{top[metric]:.4f} (step {top['step']}), of those the best {tiebreak} ({kept[tiebreak]:.4f}; trainer.tiebreak)"
    )
