"""The tuning flow run for real by Metaflow (local datastore, subprocess tasks): failing trials,
test data used once, resume after a kill, two users in one root, the card in Chromium, and the
remote (Kubernetes / Batch) dry run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalhelp import eval_store
from segue.data.arrays import SplitData
from segue.data.splits import Part
from segue.data.store import Store
from segue.errors import SegueError
from segue.tuning.launch import flow_env, flow_file, tune
from segue.tuning.trial import ValidationOnly

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()), None)

GRID = """
family = "ease"
store = "s.duckdb"
split = "loo"
metric = "ndcg@10"
strategy = "grid"
ks = [5, 10]
[budget]
trials = 4
[params.l2]
choices = [10.0, 100.0]
[params.max_items]  # 5 is below the catalogue: EASE refuses, the trial fails, the flow goes on
choices = [5, 20000]
"""

RANDOM = """
family = "ease"
store = "s.duckdb"
split = "loo"
strategy = "random"
ks = [10]
[budget]
trials = 2
[params.l2]
low = 1.0
high = 300.0
log = true
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tune-root")


@pytest.fixture(scope="module")
def spaces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("spaces")
    eval_store(d / "s.duckdb", n_seq=80, n_items=30, splits=[{"kind": "leave_last_out", "name": "loo"}])
    (d / "grid.toml").write_text(GRID)
    (d / "random.toml").write_text(RANDOM)
    return d


@pytest.fixture(scope="module")
def alice(root: Path, spaces: Path) -> Path:
    return tune(spaces / "grid.toml", root, user="alice", max_workers=2, n_boot=50, echo=lambda s: None)


def metaflow_client(root: Path):  # noqa: ANN201
    from metaflow import Flow, Run, metadata, namespace

    metadata(f"local@{root}")
    return Flow, Run, namespace


def test_failing_trials_are_recorded_and_the_best_is_tested_once(alice: Path, root: Path) -> None:
    trials = json.loads((alice / "trials.json").read_text())
    assert len(trials) == 4
    failed = [t for t in trials if t["status"] == "failed"]
    assert {t["params"]["max_items"] for t in failed} == {5}
    assert all("max_items" in t["error"] for t in failed)
    ok = [t for t in trials if t["status"] == "ok"]
    assert len(ok) == 2 and all(t["value"] > 0 and t["seconds"] > 0 and t["peak_rss_mb"] > 0 for t in ok)
    # every trial's record: fitted on train, scored on valid; none read the test part
    assert all(t["parts"] == ["train", "valid"] for t in trials)
    summary = json.loads((alice / "summary.json").read_text())
    best = max(ok, key=lambda t: t["value"])
    assert summary["best"]["number"] == best["number"]
    # the test part: one evaluation, in the `best` step, of the best config beside the defaults
    Flow, Run, namespace = metaflow_client(root)
    namespace("user:alice")
    run = Run(f"TuneFlow/{summary['run_id']}")
    evaluations = run["best"].task.data.test_evaluations
    assert evaluations == [{"step": "best", "trial": best["number"], "part": "test", "models": ["tuned", "defaults"]}]
    for task in run["trial"]:
        assert "test_evaluations" not in task.data and task.data.record["parts"] == ["train", "valid"]
    test = summary["test"]
    assert test["part"] == "test" and set(test["intervals"]) == {"tuned", "defaults"}
    assert set(test["comparisons"]) == {"tuned"}
    results = json.loads((alice / "report" / "results.json").read_text())
    assert set(results["summary"]) == {"tuned", "defaults"} and results["part"] == "test"
    # the best model folder is the best config, refitted
    from segue.models.base import load_model

    model = load_model(alice / "best-model")
    assert model.config.l2 == best["params"]["l2"] and model.config.max_items == 20000
    assert (alice / "card.html").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ('protocol = "strong"', "needs a split of kind strong, but split 'loo' .* is leave_last_out"),
        ('split = "nosuch"', "no split 'nosuch'"),
    ],
)
def test_a_split_the_protocol_cannot_use_is_refused_before_the_flow_runs(spaces: Path, tmp_path: Path, edit: str, expected: str) -> None:
    """The split is checked against the protocol before Metaflow starts: the error names the
    space file and its fields, and no session folder is written."""
    text = RANDOM.replace('split = "loo"', edit) if edit.startswith("split") else RANDOM.replace('strategy', edit + "\nstrategy", 1)
    (spaces / "bad.toml").write_text(text)
    with pytest.raises(SegueError, match=f"bad.toml: fields 'split' / 'protocol': .*{expected}"):
        tune(spaces / "bad.toml", tmp_path / "root", user="carol", echo=lambda s: None)
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").iterdir())


def test_trials_cannot_read_the_test_part(spaces: Path) -> None:
    with Store.open(spaces / "s.duckdb") as store:
        data = ValidationOnly.of(SplitData.load(store, "loo"))
        assert len(data.targets(Part.VALID)) > 0
        with pytest.raises(SegueError, match="may not read the test part"):
            data.targets(Part.TEST)
        with pytest.raises(SegueError, match="may not read the test part"):
            data.history(Part.TEST)


def test_resume_after_kill_skips_finished_trials_and_users_do_not_collide(alice: Path, root: Path, spaces: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from segue.tuning.launch import tune; "
        f"tune(Path({str(spaces / 'random.toml')!r}), Path({str(root)!r}), user='bob', max_workers=1, n_boot=20)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = root / "random-bob" / "flow.log"
    deadline = time.time() + 300
    done = 0
    while done < 1:  # kill (the launcher, Metaflow and its tasks) once a trial has finished
        assert proc.poll() is None, "the tuning session ended before it could be killed"
        assert time.time() < deadline, "no trial finished in time"
        text = log.read_text() if log.exists() else ""
        done = len(re.findall(r"/trial/\d+ .*Task finished successfully", text))
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    killed_at = time.time()
    proc.wait(timeout=30)
    state = json.loads((root / "random-bob" / "state.json").read_text())
    assert state["rounds"][0]["status"] == "running" and state["rounds"][0]["run_id"]
    with pytest.raises(SegueError, match="--resume"):
        tune(spaces / "random.toml", root, user="bob", echo=lambda s: None)
    session = tune(spaces / "random.toml", root, user="bob", max_workers=1, n_boot=20, resume=True, echo=lambda s: None)
    trials = json.loads((session / "trials.json").read_text())
    assert len(trials) == 2 and all(t["status"] == "ok" for t in trials)
    before = [t for t in trials if t["started_at"] < killed_at]
    assert len(before) == done  # the finished trial was cloned by `resume`, not rerun
    assert len(trials) - len(before) >= 1
    # alice's and bob's sessions: own folders, own namespaces, distinct run ids
    Flow, Run, namespace = metaflow_client(root)
    ids = {}
    for user in ("alice", "bob"):
        namespace(f"user:{user}")
        ids[user] = {r.id for r in Flow("TuneFlow")}
    assert ids["alice"] and ids["bob"] and not ids["alice"] & ids["bob"]
    assert json.loads((alice / "summary.json").read_text())["run_id"] in ids["alice"]
    assert json.loads((session / "summary.json").read_text())["run_id"] in ids["bob"]


def test_steps_declare_resources_and_run_remotely_in_a_dry_run(tmp_path: Path) -> None:
    """`--with kubernetes` / `--with batch` on an S3 datastore: Metaflow accepts the flow and every
    step carries @resources (nothing is launched: `show` only builds the graph)."""
    from segue.flows.tune import TuneFlow

    steps = [name for name in dir(TuneFlow) if hasattr(getattr(TuneFlow, name), "is_step")]
    assert set(steps) == {"start", "trial", "join", "best", "end"}
    for name in steps:
        decos = [d.name for d in getattr(TuneFlow, name).decorators]
        assert "resources" in decos, name
    env = flow_env(tmp_path, "carol") | {"METAFLOW_DATASTORE_SYSROOT_S3": "s3://example-bucket/metaflow"}
    for remote in ("kubernetes", "batch"):
        out = subprocess.run(
            [sys.executable, str(flow_file()), "--no-pylint", "--datastore", "s3", "--with", remote, "show"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        for name in steps:  # `show` lists each step's decorators above its name
            decos = re.search(rf"((?:@\w+\n)+)Step {name}\n", out.stdout)
            assert decos and "@resources" in decos[1] and f"@{remote}" in decos[1], (name, out.stdout)


def test_steps_read_no_local_path() -> None:
    """Steps get the space and the store from the datastore (IncludeFile), and the split from the
    artifact `start` packed: no step body names a filesystem path or opens a file itself."""
    import ast
    import inspect

    from segue.flows import tune as module

    tree = ast.parse(inspect.getsource(module.TuneFlow))
    for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)} | {
            n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute)
        }
        assert not names & {"open", "Path", "os", "store_path", "getcwd", "expanduser"}, fn.name
    assert isinstance(module.TuneFlow.store, type(module.TuneFlow.space))  # both IncludeFile


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_card_and_page_show_the_table_and_plots_in_chromium(alice: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto((alice / "card.html").as_uri())
        page.wait_for_selector("text=Trials (best first", timeout=30_000)
        body = page.inner_text("body")
        assert "segue tune: ease" in body and "Test (test part, once)" in body and "tuned - defaults" in body
        assert "l2 = " in body  # the best config as TOML
        assert page.locator("table").count() >= 2
        # the cost sits beside the metric, before the parameters (a wide table hides its last columns)
        head = page.eval_on_selector_all("table", "ts => Array.from(ts.at(-1).rows[0].cells).map(c => c.textContent)")
        assert head[3:6] == ["valid ndcg@10", "seconds", "peak RSS (MiB)"], head
        # one rendered plot per parameter (l2, max_items)
        assert page.evaluate("Array.from(document.images).filter(i => i.naturalWidth > 200).length") == 2
        page.screenshot(path=str(tmp_path / "card.png"), full_page=True)
        # the page's trials table sorts by the metric on a click of its header
        page.goto((alice / "tune.html").as_uri())
        header = page.locator("table.trials th", has_text="valid ndcg@10")
        values = lambda: page.eval_on_selector_all(  # noqa: E731
            "table.trials tbody tr", "rows => rows.map(r => r.cells[3].textContent)"
        )
        header.click()
        desc = [float(v) for v in values() if v != "–"]
        header.click()
        asc = [float(v) for v in values() if v != "–"]
        assert desc == sorted(desc, reverse=True) and asc == sorted(asc) and len(asc) == 2
        assert page.locator("img.param-plot").count() == 2
        browser.close()


def test_a_session_logs_to_mlflow_with_a_nested_run_per_trial(alice: Path, tmp_path: Path) -> None:
    from segue.ops.registry import Registry, log_tuning_session, metric_key

    parent = log_tuning_session(tmp_path / "registry", alice)  # a real MLflow, SQLite backend
    client = Registry(tmp_path / "registry").client
    summary = json.loads((alice / "summary.json").read_text())
    trials = json.loads((alice / "trials.json").read_text())
    run = client.get_run(parent)
    assert run.data.params["best.trial"] == str(summary["best"]["number"])
    assert run.data.params["best.l2"] == str(summary["best"]["params"]["l2"])
    for model in ("tuned", "defaults"):
        got = run.data.metrics[metric_key(f"test.{model}.ndcg@10")]
        assert got == pytest.approx(summary["test"]["means"][model]["ndcg@10"])
    children = client.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == len(trials)
    by_trial = {int(c.data.params["trial"]): c for c in children}
    for t in trials:
        c = by_trial[t["number"]]
        assert c.data.params["l2"] == str(t["params"]["l2"]) and c.data.tags["segue.status"] == t["status"]
        if t["status"] == "failed":
            assert c.info.status == "FAILED" and "max_items" in c.data.tags["segue.error"]
        else:
            assert c.info.status == "FINISHED" and c.data.metrics["valid_metric"] == pytest.approx(t["value"])
            assert c.data.metrics["seconds"] == pytest.approx(t["seconds"])
    assert {a.path for a in client.list_artifacts(parent)} >= {"summary.json", "trials.json", "card.html"}


def test_a_session_whose_trials_all_failed_is_an_error_listing_only_what_was_written(spaces: Path, tmp_path: Path) -> None:
    """It exited 0 and listed best-model/ and report/, which were never written."""
    from typer.testing import CliRunner

    from segue.cli import app

    (spaces / "allfail.toml").write_text(GRID.replace("choices = [5, 20000]", "choices = [5]").replace("trials = 4", "trials = 2"))
    res = CliRunner().invoke(app, ["tune", str(spaces / "allfail.toml"), "--root", str(tmp_path / "root"), "--user", "dave", "--n-boot", "20"])
    out = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "2 trials: 0 finished, 0 pruned, 2 failed" in out and "no trial finished" in out
    session = next((tmp_path / "root").glob("allfail-dave"))
    assert not (session / "best-model").exists() and not (session / "report").exists()
    assert "best-model/" not in out and "report/" not in out and "tune.html" in out
