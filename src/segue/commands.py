"""The command tree of `segue`: commands that live beside their subsystems are imported lazily.

`segue --help` lists every command with the first line of its help read from its module's source
(`ast`, a few ms), so it imports none of their modules (the evaluator, numpy, DuckDB, JAX: ~1.5 s);
a command's module is imported only when that command runs or shows its own help.

The root's own help is plain text (typer's rich panels import rich, markdown-it and pygments:
~0.15 s, half of the start-up budget); each command's help keeps the rich panels.

`SegueGroup` also fixes how flags are shown: typer 0.29's rich help prints the parameter type of
every option, flags included (`--fresh <bool>`, `--help <bool>`), although a flag takes no value
(its plain-text help, `TyperOption.get_help_record`, skips flags; the rich panel calls
`display_type_rich`, which does not). Giving a flag an empty metavar makes the panel print no type.
"""

from __future__ import annotations

import ast
import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup


@dataclass(frozen=True)
class LazyCommand:
    """A command (or sub-group) registered by name without importing its module."""

    name: str
    module: str
    attr: str  # a typer command function, or a typer.Typer (a sub-group)

    @property
    def path(self) -> Path:
        """The module's file, found without importing it (nor its package's __init__)."""
        return Path(__file__).parent.joinpath(*self.module.split(".")[1:]).with_suffix(".py")

    def summary(self) -> str:
        """The first paragraph of the command's help, read from its module's source (not imported):
        the function's docstring, or the help= given to the typer.Typer of a sub-group."""
        tree = _parse(self.path)
        text = None
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == self.attr:
                text = ast.get_docstring(node)
            elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == self.attr for t in node.targets):
                for kw in getattr(node.value, "keywords", []):
                    if kw.arg == "help" and isinstance(kw.value, ast.Constant):
                        text = str(kw.value.value)
        if not text:
            return f"(see segue {self.name} --help)"
        return text.split("\n\n")[0].replace("\n", " ").strip()


@functools.cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))  # train and continue share a module


COMMANDS: tuple[LazyCommand, ...] = (
    LazyCommand("data", "segue.data.cli", "data_app"),
    LazyCommand("evaluate", "segue.evaluation.cli", "evaluate"),
    LazyCommand("train", "segue.training.cli", "train"),
    LazyCommand("continue", "segue.training.cli", "continue_"),
    LazyCommand("pipeline", "segue.training.pipeline_cli", "pipeline"),
    LazyCommand("serve", "segue.serving.cli", "serve"),
    LazyCommand("validate", "segue.ops.cli", "validate"),
    LazyCommand("export", "segue.serving.export", "export"),
    LazyCommand("registry", "segue.retrain.registry_cli", "registry_app"),
    LazyCommand("retrain", "segue.retrain.cli", "retrain"),
    LazyCommand("rollback", "segue.retrain.registry_cli", "rollback"),
    LazyCommand("tune", "segue.tuning.cli", "tune"),
    LazyCommand("experiment", "segue.tuning.cli", "experiment"),
    LazyCommand("items", "segue.retrain.items", "items_app"),
)


def hide_flag_types(params: list[Any], ctx: Any = None) -> None:
    """Show in help only the values options take (see the module docstring): no type for a flag,
    and the element type for a repeatable option (it takes one value per use, not a list)."""
    for p in params:
        if p.metavar is not None:
            continue
        if getattr(p, "is_flag", False):
            p.metavar = ""
        elif getattr(p, "multiple", False) and ctx is not None and hasattr(p, "display_type"):
            label = p.display_type(ctx)
            if label.startswith("<list[") and label.endswith("]>"):
                p.metavar = "<" + label[len("<list[") : -2] + ">"


def _hide_flag_types_tree(cmd: Any, ctx: Any) -> None:
    """hide_flag_types on `cmd` and, for a group loaded from a typer.Typer, every command under it."""
    hide_flag_types(cmd.get_params(ctx), ctx)
    for sub in getattr(cmd, "commands", {}).values():
        _hide_flag_types_tree(sub, ctx)


class SegueCommand(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        hide_flag_types(params, ctx)
        return params


class SegueGroup(TyperGroup):
    """A typer group whose flags show no type, and which loads the commands in `lazy` on first use."""

    lazy: tuple[LazyCommand, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listing = False  # True while this group's own help is being rendered

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        hide_flag_types(params, ctx)
        return params

    def list_commands(self, ctx: Any) -> list[str]:
        lazy = [c.name for c in self.lazy if c.path.exists()]  # a subsystem left out of a build is skipped
        return lazy + [n for n in super().list_commands(ctx) if n not in lazy]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None:
            spec = next((c for c in self.lazy if c.name == cmd_name and c.path.exists()), None)
            if spec is None:
                return None
            if self._listing:  # only the name and one line are needed: import nothing
                return TyperCommand(name=spec.name, help=spec.summary(), callback=None)
            cmd = load_command(spec)
            self.add_command(cmd, cmd_name)
        _hide_flag_types_tree(cmd, ctx)
        return cmd

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """Plain-text help (the root's): each command with its whole first line, not cut at 45 characters."""
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, (cmd.short_help or cmd.help or "").split("\n\n")[0].replace("\n", " ")))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


def load_command(spec: LazyCommand) -> Any:
    """Import the module of `spec` and build its click command (a group for a typer.Typer)."""
    from segue.cli import friendly_errors

    target = getattr(importlib.import_module(spec.module), spec.attr)
    if isinstance(target, typer.Typer):
        cmd = typer.main.get_command(target)
    else:
        single = typer.Typer(add_completion=False)
        single.command(spec.name, cls=SegueCommand)(friendly_errors(target))
        cmd = typer.main.get_command(single)
    cmd.name = spec.name
    return cmd


class RootGroup(SegueGroup):
    lazy = COMMANDS
