"""Registration of the commands that live beside their subsystems (evaluation, training, serving)."""

from __future__ import annotations

import importlib

import typer

# (command name, module, function): each function is a plain typer command function.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("evaluate", "segue.evaluation.cli", "evaluate"),
    ("train", "segue.training.cli", "train"),
    ("continue", "segue.training.cli", "continue_"),
    ("serve", "segue.serving.cli", "serve"),
)


def register_all(app: typer.Typer) -> None:
    from segue.cli import friendly_errors

    for name, module, func in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:  # subsystem not present in this build
                continue
            raise
        app.command(name)(friendly_errors(getattr(mod, func)))
