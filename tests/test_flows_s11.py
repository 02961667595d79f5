"""segue tune faults of walk s11: defaults the data cannot fit, `--user root`, grid cuts, metric
names without @k, trainer settings checked up front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalhelp import eval_store
from segue.data.store import Store
from segue.errors import ConfigError
from segue.tuning.space import SearchSpace

# [base] max_items = 5 is below the catalogue: the defaults cannot be fitted, every trial can
BASE_FAILS = """
family = "ease"
store = "s.duckdb"
split = "loo"
strategy = "grid"
ks = [10]
[budget]
trials = 1
[base]
max_items = 5
[params.max_items]
choices = [20000]
[params.l2]
choices = [100.0]
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("flows-s11")
    eval_store(d / "s.duckdb", n_seq=60, n_items=25, splits=[{"kind": "leave_last_out", "name": "loo"}])
    (d / "basefails.toml").write_text(BASE_FAILS)
    return d


def test_defaults_that_cannot_be_fitted_leave_tuned_tested_alone(folder: Path) -> None:
    """test_best raised on the defaults' fit: the `best` step failed after every trial, forever."""
    from segue.tuning.final import test_best

    space = SearchSpace.load(folder / "basefails.toml")
    with Store.open(folder / "s.duckdb", read_only=True) as store:
        out = test_best(space, store, {"max_items": 20000, "l2": 100.0}, n_boot=20)
    test = out["test"]
    assert set(test["intervals"]) == {"tuned"} and test["comparisons"] == {}
    assert test["reference"] is None
    assert "defaults" in test["defaults_error"] and "max_items" in test["defaults_error"]
    assert out["model_tar"] and out["report_tar"]


def test_user_root_runs_as_segue_and_a_session_with_unfittable_defaults_finishes(folder: Path, tmp_path: Path) -> None:
    """`--user root`: the flow ran as segue, collect() read namespace user:root and crashed with a
    MetaflowNamespaceMismatch traceback (also on --resume). Unfittable defaults failed `best`."""
    from typer.testing import CliRunner

    from segue.cli import app

    root = tmp_path / "root"
    res = CliRunner().invoke(app, ["tune", str(folder / "basefails.toml"), "--root", str(root), "--user", "root", "--n-boot", "20"])
    out = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "runs as 'segue'" in out and "no comparison with the defaults" in out and "[base]" in out
    session = root / "basefails-segue"
    assert not (root / "basefails-root").exists()
    for name in ("trials.json", "tune.html", "card.html", "summary.json", "best-model", "report"):
        assert (session / name).exists(), name
    summary = json.loads((session / "summary.json").read_text())
    assert "max_items" in summary["test"]["defaults_error"]
    assert "No comparison" in (session / "tune.html").read_text()


README_SPACE = """
family = "transformer"
store = "s.duckdb"
split = "loo"
strategy = "grid"
[budget]
trials = 24
[params."optim.lr"]
type = "float"
low = 1e-4
high = 3e-3
log = true
[params."loss.kind"]
choices = ["full", "logq"]
[params."loss.n_negatives"]
type = "int"
low = 128
high = 1024
log = true
when = { "loss.kind" = ["logq"] }
"""


def test_a_grid_larger_than_the_budget_is_sampled_across_it_and_said() -> None:
    """The first 24 of 2694 combinations in file order: lr never varied, n_negatives 128..150."""
    from segue.tuning.launch import _round_text
    from segue.tuning.space import grid_configs, grid_size

    s = SearchSpace.parse(README_SPACE)
    assert grid_size(s) == 2694
    configs = grid_configs(s)
    assert len(configs) == 24 and len({tuple(sorted(c.items())) for c in configs}) == 24
    assert all(s.valid(c) for c in configs)
    assert len({c["optim.lr"] for c in configs}) == 3
    negatives = [c["loss.n_negatives"] for c in configs if "loss.n_negatives" in c]
    assert max(negatives) > 600 and min(negatives) < 400
    assert configs == grid_configs(s)  # seeded
    text = _round_text(s, 0)
    assert "2694 combinations" in text and "sample of 24" in text
    small = SearchSpace.parse(README_SPACE.replace("trials = 24", "trials = 5000"))
    assert len(grid_configs(small)) == 2694 and "2694 trials (every combination)" in _round_text(small, 0)


def test_a_grid_too_large_to_enumerate_is_refused_up_front() -> None:
    """grid_configs stopped at budget.trials; sampling the grid needs it whole, so a huge one is refused."""
    from segue.tuning.space import check_space

    text = 'family = "ease"\nstore = "s"\nsplit = "loo"\nstrategy = "grid"\n'
    text += "".join(f'[params.{n}]\ntype = "int"\nlow = 1\nhigh = 2000\n' for n in ("max_items", "l2"))
    with pytest.raises(ConfigError, match=r"^big.toml: field 'strategy': the grid has 4,000,000 combinations"):
        check_space(SearchSpace.parse(text, source="big.toml"))
    check_space(SearchSpace.parse(text.replace('"grid"', '"random"'), source="big.toml"))


TINY_TRANSFORMER = """
family = "transformer"
store = "s.duckdb"
split = "loo"
ks = [10]
strategy = "tpe"
[budget]
trials = 3
parallel = 1
[base]
model.n_layers = 1
model.n_heads = 1
model.d_model = 8
model.d_ff = 16
model.context_length = 8
trainer.max_steps = 4
trainer.eval_every = 2
trainer.eval_max_users = 20
trainer.loader.batch_size = 8
trainer.metric = "hr@100"
[params."optim.lr"]
type = "float"
low = 1e-4
high = 1e-2
log = true
"""


def test_a_trainer_metric_validation_never_reports_is_refused_before_the_flow(folder: Path, tmp_path: Path) -> None:
    """Each trial of each TPE round trained to its first validation, then failed on it."""
    from segue.tuning.launch import tune

    (folder / "tt.toml").write_text(TINY_TRANSFORMER)
    root = tmp_path / "root"
    with pytest.raises(ConfigError, match=r"tt.toml: \[base\]: trainer: field 'metric' is 'hr@100' \(this family validates: .*hr@10"):
        tune(folder / "tt.toml", root, user="erin", n_boot=20, echo=lambda s: None)
    assert not root.exists()  # nothing written, no flow run
    searched = TINY_TRANSFORMER.replace('trainer.metric = "hr@100"\n', "") + '[params."trainer.metric"]\nchoices = ["ndcg@10", "ndcg@100"]\n'
    (folder / "tt2.toml").write_text(searched)
    with pytest.raises(ConfigError, match=r"""tt2.toml: params."trainer.metric": trainer: field 'metric' is 'ndcg@100'"""):
        tune(folder / "tt2.toml", root, user="erin", n_boot=20, echo=lambda s: None)


def test_a_trial_checks_the_trainer_metric_before_training(folder: Path) -> None:
    """fit_family built the Trainer and trained to the first validation before the metric was checked."""
    from segue.data.arrays import SplitData
    from segue.tuning.trial import ValidationOnly, run_trial

    space = SearchSpace.parse(TINY_TRANSFORMER.replace("trainer.max_steps = 4", "trainer.max_steps = 400").replace("eval_every = 2", "eval_every = 400"))
    with Store.open(folder / "s.duckdb", read_only=True) as store:
        data = ValidationOnly.of(SplitData.load(store, "loo"))
        record = run_trial(space, data, {"optim.lr": 1e-3}, number=0)
    assert record["status"] == "failed"
    assert record["error"].startswith("ConfigError: trial 0: trainer: field 'metric' is 'hr@100'"), record["error"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ('[[models]]\nname = "x"\nfamily = "nosuch"\n', r"e.toml: models 'x'.family: 'nosuch' is not a family \(.*popularity"),
        ('part = "bogus"\n[[models]]\nname = "p"\nfamily = "popularity"\n', r"e.toml: field 'part': .*'valid' or 'test'"),
        ('ks = []\n[[models]]\nname = "p"\nfamily = "popularity"\n', r"e.toml: field 'ks': .*non-empty list of positive integers, got \[\]"),
        ('ks = [0, 10]\n[[models]]\nname = "p"\nfamily = "popularity"\n', r"e.toml: field 'ks': .*got \[0, 10\]"),
        ('protocol = "nosuch"\n[[models]]\nname = "p"\nfamily = "popularity"\n', r"e.toml: field 'protocol': unknown protocol 'nosuch'"),
    ],
)
def test_experiment_errors_name_the_file_and_field(folder: Path, tmp_path: Path, edit: str, expected: str) -> None:
    """segue experiment named neither file nor field for these, and took ks = [] as the defaults."""
    from segue.tuning.experiment import run_experiment

    path = tmp_path / "e.toml"
    path.write_text(f'store = "{folder / "s.duckdb"}"\nsplit = "loo"\n' + edit)
    with pytest.raises(ConfigError, match=expected):
        run_experiment(path, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("metric", "ok"), [("ndcg", False), ("hr", False), ("nosuch", False), ("rprec", True), ("clicks", True)])
def test_a_metric_without_its_k_is_refused_up_front(metric: str, ok: bool) -> None:
    """check_metric let any name without @ through: each trial was fitted, then failed 'not measured'."""
    from segue.tuning.space import check_space

    text = f'family = "ease"\nstore = "s"\nsplit = "loo"\nmetric = "{metric}"\nks = [5, 10]\n[params.l2]\nlow = 1.0\nhigh = 9.0'
    space = SearchSpace.parse(text, source="space.toml")
    if ok:
        check_space(space)
        return
    with pytest.raises(ConfigError, match=rf"^space.toml: field 'metric': '{metric}' is not measured .*rprec, clicks.*ndcg@10"):
        check_space(space)
    if metric != "nosuch":
        with pytest.raises(ConfigError, match=rf"needs its k, e.g. {metric}@10"):
            check_space(space)


def _prod2vec(folder: Path, tmp_path: Path, *args: str) -> tuple[int, str]:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ) | {
        "PYTHONPATH": str(root / "src"), "METAFLOW_HOME": str(tmp_path / "mfhome"),
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path / "mf"), "METAFLOW_DEFAULT_METADATA": "local",
        "METAFLOW_DEFAULT_DATASTORE": "local",
    }
    proc = subprocess.run(
        [sys.executable, str(root / "flows" / "prod2vec.py"), "--no-pylint", "run", "--store", str(folder / "s.duckdb"),
         "--split", "loo", "--protocol", "leave_last_out", "--max-workers", "1", *args],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_prod2vec_refuses_a_bad_k_in_start_naming_the_option(folder: Path, tmp_path: Path) -> None:
    """--k 0: every trial was fitted and failed, and the run ended "Done!" with exit 0."""
    rc, out = _prod2vec(folder, tmp_path, "--k", "0", "--trials", "1")
    assert rc != 0, out[-3000:]
    assert "--k is 0 (expected a positive integer)" in out and "Internal error" not in out, out[-3000:]
    assert "Done!" not in out


def test_no_trial_finished_names_the_errors() -> None:
    from segue.tuning.trial import no_trial_finished

    rec = {"status": "failed", "value": None, "number": 0, "error": "SegueError: cut-offs k must be positive integers"}
    assert no_trial_finished([rec, rec | {"number": 1}]) == (
        "no trial finished (2 trials: 2 failed)\n  SegueError: cut-offs k must be positive integers"
    )
    assert no_trial_finished([rec, {"status": "ok", "value": 0.5, "number": 2, "error": None}]) is None


def test_an_unreachable_mlflow_server_is_refused_before_the_session(folder: Path, tmp_path: Path) -> None:
    """--mlflow was first used after every trial, then hung for minutes in MLflow's HTTP retries."""
    import socket
    import time

    from typer.testing import CliRunner

    from segue.cli import app

    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = tmp_path / "root"
    t0 = time.perf_counter()
    res = CliRunner().invoke(app, ["tune", str(folder / "basefails.toml"), "--root", str(root), "--mlflow", f"http://127.0.0.1:{port}"])
    out = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert f"--mlflow http://127.0.0.1:{port}: the tracking server does not answer" in out
    assert time.perf_counter() - t0 < 30 and not root.exists()
    (tmp_path / "afile").write_text("x")
    res = CliRunner().invoke(app, ["tune", str(folder / "basefails.toml"), "--root", str(root), "--mlflow", str(tmp_path / "afile")])
    assert res.exit_code == 2 and "--mlflow" in res.output and "is a file, not a registry" in res.output, res.output
    assert not root.exists()
