"""The package's layers import downward only (the developers' guide):

    cli, commands, demo, flows  ->  tuning, retrain  ->  training, evaluation, serving
        ->  models, ops  ->  data  ->  config, errors, io

A package may import its own modules and any package on a lower layer, never a peer on its own
layer nor anything above. Every `import` counts, deferred ones inside functions included: a deferred
import still makes the lower layer depend on the upper one."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "segue"

LAYERS: dict[str, int] = {
    "base": 0,  # config, errors, io: imported by everything
    "data": 1,
    "models": 2, "ops": 2,
    "training": 3, "evaluation": 3, "serving": 3,
    "tuning": 4, "retrain": 4,
    "app": 5, "flows": 5,  # app: cli, commands, demo
}  # fmt: skip
# Top-level modules that form one unit (they import each other).
UNITS = {"config": "base", "errors": "base", "io": "base", "__version__": "base",
         "cli": "app", "commands": "app", "demo": "app"}  # fmt: skip


def _unit(path: Path) -> str:
    """The layer unit of a source file: its sub-package, or the top-level module's name."""
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else UNITS.get(rel.stem, rel.stem)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported unit, line) for every `segue.*` import in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "segue":
            parts = node.module.split(".")
            units = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            out += [(UNITS.get(u, u), node.lineno) for u in units]
        elif isinstance(node, ast.Import):
            out += [(UNITS.get(u, u), node.lineno) for a in node.names if a.name.startswith("segue.") for u in [a.name.split(".")[1]]]
    return out


@functools.cache
def edges() -> list[tuple[str, str, str]]:
    """(importing unit, imported unit, file:line) over the whole package."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == SRC:
            continue  # the package's own __init__ (its version string only)
        src = _unit(path)
        for dst, line in _imports(path):
            if dst != src:
                found.append((src, dst, f"{path.relative_to(SRC)}:{line}"))
    return found


def test_every_unit_has_a_layer() -> None:
    units = {_unit(p) for p in SRC.rglob("*.py") if not (p.name == "__init__.py" and p.parent == SRC)}
    units |= {dst for _, dst, _ in edges()}
    assert units - set(LAYERS) == set(), "a new package or module needs its place in LAYERS"


@pytest.mark.parametrize("unit", sorted(LAYERS))
def test_imports_go_downward_only(unit: str) -> None:
    wrong = [f"{where}: {src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS[dst]})"
             for src, dst, where in edges() if src == unit and LAYERS[dst] >= LAYERS[src]]  # fmt: skip
    assert wrong == []


def test_the_check_sees_deferred_imports(tmp_path: Path) -> None:
    """The scanner finds an import inside a function body, as a lower layer's deferred import is."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from segue.serving.app import App\n    import segue.training.trainer\n")
    assert _imports(f) == [("serving", 2), ("training", 3)]
