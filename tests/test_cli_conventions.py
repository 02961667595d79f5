"""CLI conventions: lazy commands, help that shows what flags take, generated option docs, clear
messages for a new user's first import (columns found by name, refusals, bad specs)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segue.cli import app
from segue.commands import COMMANDS, load_command
from segue.data.store import Store

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_cli_loads_no_heavy_module() -> None:
    code = (
        "import sys, segue.cli; "
        "print(sorted(m for m in ('numpy', 'duckdb', 'jax', 'pyarrow', 'pydantic', 'segue.data.store') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # and `segue --help` renders without importing any command module
    code = (
        "import sys\nfrom segue.cli import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith(('segue.data', 'segue.evaluation', 'segue.training', "
        "'segue.serving', 'numpy'))), file=sys.stderr)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stderr.strip() == "[]"
    for c in COMMANDS:
        assert c.name in res.stdout


@pytest.mark.parametrize("spec", COMMANDS, ids=lambda c: c.name)
def test_lazy_help_lines_match_the_commands(spec) -> None:  # noqa: ANN001
    """The line `segue --help` shows (read from the module's source) is the first paragraph of the
    command's own help (from the imported module)."""
    cmd = load_command(spec)
    assert cmd.help is not None
    first = inspect.cleandoc(cmd.help).split("\n\n")[0].replace("\n", " ")
    assert spec.summary() == first and len(first) > 10
    res = runner.invoke(app, ["--help"], terminal_width=500)
    assert f"{spec.name}  " in res.output and first in " ".join(res.output.split())


@pytest.mark.parametrize(
    ("args", "flags"),
    [
        ([], ["--install-completion", "--help"]),
        (["train"], ["--fresh", "--help"]),
        (["evaluate"], ["--no-report", "--keep-seen", "--help"]),
        (["data", "build"], ["--force", "--help"]),
        (["data", "stats"], ["--json", "--help"]),
        (["data", "add-split"], ["--help"]),
        (["demo"], ["--serve", "--help"]),
        (["continue"], ["--greedy", "--help"]),
    ],
)
def test_help_shows_no_type_for_flags(args: list[str], flags: list[str]) -> None:
    res = runner.invoke(app, [*args, "--help"], terminal_width=100)
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.output
    for flag in flags:
        lines = [ln for ln in res.output.splitlines() if f" {flag} " in ln or ln.rstrip().endswith(flag)]
        assert lines, (flag, res.output)
        assert all("<" not in ln.split(flag, 1)[1][:25] for ln in lines), lines


def test_repeatable_options_show_one_value() -> None:
    res = runner.invoke(app, ["data", "build", "--help"], terminal_width=100)
    assert "list[str]" not in res.output
    assert "SPEC" in res.output and "KEY=VALUE" in res.output


def test_build_help_documents_every_source_option_and_split_parameter() -> None:
    from segue.data.sources import SOURCE_KINDS, source_options
    from segue.data.splits import SPLIT_DOCS

    res = runner.invoke(app, ["data", "build", "--help"], terminal_width=200)
    for kind in SOURCE_KINDS:
        for key in source_options(kind):
            assert f"{key}:" in res.output, (kind, key)
    for kind, (_, params, example) in SPLIT_DOCS.items():
        assert kind in res.output and example in res.output
        assert all(f"{p}:" in res.output for p in params)
    assert "Example: segue data build csv" in res.output
    add = runner.invoke(app, ["data", "add-split", "--help"], terminal_width=200).output
    assert all(example in add for _, _, example in SPLIT_DOCS.values())


def test_readme_carries_the_generated_reference() -> None:
    from segue.data.cli import readme_reference

    assert readme_reference() in (ROOT / "README.md").read_text(encoding="utf-8")


def test_demo_folder_is_ignored_by_git() -> None:
    from segue.cli import demo

    if subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    workdir = inspect.signature(demo).parameters["workdir"].default
    for path in (f"{workdir}/store.duckdb", f"{workdir}/reports/report.html", "reports/x/report.html", "s.stats.png"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0, path


# ---------------------------------------------------------------------------------------------
# a new user's first import

SHUFFLED = """user,item,timestamp
u2,i3,2024-02-03
u1,i2,2024-01-02
u1,i1,2024-01-05
u2,i1,2024-02-01
u1,i1,2024-01-01
u2,i2,2024-02-02
u1,i3,2024-01-03
u2,i3,2024-02-05
u1,i4,2024-01-04
u2,i4,2024-02-04
"""


def test_csv_without_options_maps_columns_and_orders_by_time(tmp_path: Path) -> None:
    src = tmp_path / "log.csv"
    src.write_text(SHUFFLED)
    store = tmp_path / "s.duckdb"
    res = runner.invoke(app, ["data", "build", "csv", str(src), "-o", str(store), "-s", "leave_last_out:min_length=2"])
    assert res.exit_code == 0, res.output
    assert "columns: user <- user (found by name), item <- item (found by name), timestamp <- timestamp (found by name)" in res.output
    with Store.open(store) as s:
        rows = s.con.execute(
            "SELECT q.external_id, string_agg(i.external_id, ' ' ORDER BY e.position), count(e.ts) "
            "FROM events e JOIN items i USING (item_id) JOIN sequences q USING (seq_id) GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert rows == [("u1", "i1 i2 i3 i4 i1", 5), ("u2", "i1 i2 i3 i4 i3", 5)]


def test_unknown_option_and_missing_columns_list_the_keys(tmp_path: Path) -> None:
    src = tmp_path / "log.csv"
    src.write_text("who,what\na,b\n")
    res = runner.invoke(app, ["data", "build", "csv", str(src), "-o", str(tmp_path / "s.duckdb"), "--option", "usr=who"])
    assert res.exit_code == 2
    assert "source 'csv': unknown option 'usr'" in res.output
    assert "user " in res.output and "timestamp_unit" in res.output and "column of the item id" in res.output
    assert "TabularSource" not in res.output and "__init__" not in res.output
    res = runner.invoke(app, ["data", "build", "csv", str(src), "-o", str(tmp_path / "s.duckdb")])
    assert res.exit_code == 2
    assert "no user column found; the file has: who, what" in res.output and "--option user=<column>" in res.output
    for kind, bad in (("mpd", "threads=2"), ("movielens", "version=1m"), ("seqtext", "sep=,"), ("synthetic", "n=3")):
        res = runner.invoke(app, ["data", "build", kind, str(tmp_path), "-o", str(tmp_path / "s.duckdb"), "--option", bad])
        assert res.exit_code == 2 and f"source '{kind}': unknown option '{bad.split('=')[0]}'" in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


def test_short_row_names_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "log.csv"
    src.write_text("user,item,timestamp\nu05,i001,2024-01-01\nu05,i010\n")
    res = runner.invoke(app, ["data", "build", "csv", str(src), "-o", str(tmp_path / "s.duckdb")])
    assert res.exit_code == 2
    assert "log.csv:3: 2 fields ('u05,i010') (expected 3 fields: user,item,timestamp)" in res.output.replace("\n", "")


def test_existing_store_needs_force(tmp_path: Path) -> None:
    src = tmp_path / "log.csv"
    src.write_text(SHUFFLED)
    store = tmp_path / "s.duckdb"
    assert runner.invoke(app, ["data", "build", "csv", str(src), "-o", str(store)]).exit_code == 0
    before = store.stat().st_mtime_ns
    res = runner.invoke(app, ["data", "build", "csv", str(src), "-o", str(store)])
    assert res.exit_code == 2
    assert "exists; pass --force to replace it" in res.output and "s.duckdb" in res.output
    assert store.stat().st_mtime_ns == before
    res = runner.invoke(app, ["data", "build", "csv", str(src), "-o", str(store), "--force"])
    assert res.exit_code == 0, res.output
    assert "replaced the existing store" in res.output


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("bogus", ["unknown split kind 'bogus'", "random_sequence", "leave_last_out", "whole sequences go to"]),
        ("temporal:cut=5", ["unknown parameter 'cut'", "valid_cut", "test_fraction"]),
        ("leave_last_out:min_length=x", ["parameter 'min_length' is 'x'", "shorter sequences stay"]),
        ("strong:foldin=later", ["parameter 'foldin' is 'later'", "random or time"]),
        ("temporal:test_cut", ["expected key=value"]),
        # true/false passed pydantic's lax mode as 1/0: min_length=true built min_length 1
        ("leave_last_out:min_length=true", ["parameter 'min_length' is true: expected a number", "shorter sequences stay"]),
        ("strong:test_users=false", ["parameter 'test_users' is false: expected a number"]),
    ],
)
def test_bad_split_specs_list_what_is_valid(tmp_path: Path, spec: str, words: list[str]) -> None:
    src = tmp_path / "log.csv"
    src.write_text(SHUFFLED)
    store = tmp_path / "s.duckdb"
    res = runner.invoke(app, ["data", "build", "csv", str(src), "-o", str(store), "-s", spec], terminal_width=200)
    assert res.exit_code == 2
    for w in words:
        assert w in res.output, (w, res.output)
    assert not store.exists()
    assert runner.invoke(app, ["data", "build", "csv", str(src), "-o", str(store)]).exit_code == 0
    res = runner.invoke(app, ["data", "add-split", str(store), spec], terminal_width=200)
    assert res.exit_code == 2 and all(w in res.output for w in words), res.output


def test_evaluate_says_it_replaced_a_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    lines = ["user,item,timestamp"] + [f"u{u},i{(u * 3 + j) % 9},{1700000000 + j}" for u in range(12) for j in range(6)]
    Path("log.csv").write_text("\n".join(lines) + "\n")
    assert runner.invoke(app, ["data", "build", "csv", "log.csv", "-o", "s.duckdb", "-s", "leave_last_out"]).exit_code == 0
    args = ["evaluate", "popularity", "--store", "s.duckdb", "--n-boot", "10"]
    first = runner.invoke(app, args, terminal_width=200)
    assert first.exit_code == 0, first.output
    assert "replaced" not in first.output
    second = runner.invoke(app, args, terminal_width=200)
    assert second.exit_code == 0, second.output
    assert "replaced the previous report in reports/leave_last_out-loo" in second.output
    results = json.loads(Path("reports/leave_last_out-loo/results.json").read_text())
    assert "popularity" in json.dumps(results)


def test_error_quoting_markup_like_input_is_printed_verbatim(tmp_path: Path) -> None:
    src = tmp_path / "log.csv"
    src.write_text("user,item,rating\nu1,[b]i1,x[/i]\n")
    res = runner.invoke(app, ["data", "build", "csv", str(src), "-o", str(tmp_path / "s.duckdb")], terminal_width=200)
    assert res.exit_code == 2
    assert "log.csv:2, field 'rating': got 'x[/i]' (expected a number)" in res.output
    assert "MarkupError" not in res.output
