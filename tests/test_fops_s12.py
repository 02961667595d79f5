"""Walk s12 (operations loop, walk-ops): the retrain loop and the registry under an operator's
hands: the warm-start reason, a read-only registry, two retrains at once, an interrupted training,
a promotion whose reload fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from segue.ops.registry import Registry
from segue.retrain.loop import Retrain, RetrainConfig
from test_input_s11 import _as_user_works
from test_retrain import _quiet, _setup, weeks  # noqa: F401 (weeks: the module's fixture)

TINY = """name = "retrain"
[data]
store = "unused.duckdb"
split = "temporal"
[model]
n_layers = 1
n_heads = 1
d_model = 8
d_ff = 16
context_length = 8
[trainer]
max_steps = {steps}
eval_every = {steps}
eval_max_users = 50
checkpoint_every = 1000
keep_checkpoints = 1
log_every = 1
progress = false
[trainer.loader]
batch_size = 16
context_length = 8
"""


def _transformer(cfg_path: Path, steps: int = 2) -> Path:
    """The retrain config of _setup, its candidate now a tiny transformer (`steps` steps)."""
    (cfg_path.parent / "train.toml").write_text(TINY.format(steps=steps))
    cfg_path.write_text(cfg_path.read_text().replace('family = "popularity"', 'train_config = "train.toml"'))
    return cfg_path


def test_from_scratch_is_recorded_as_asked_not_as_no_production_model(tmp_path: Path, weeks: Path) -> None:  # noqa: F811
    # F1: with production present, --from-scratch was reported and registered as "from scratch (no
    # production model)": the registry's record said production did not exist.
    cfg_path = _setup(tmp_path, weeks, 1)
    assert Retrain(RetrainConfig.load(cfg_path), console=_quiet()).run()["promoted"]  # v1 (popularity)
    shutil.copy(weeks / "normal" / "week-01.csv", tmp_path / "incoming")
    state = Retrain(RetrainConfig.load(_transformer(cfg_path)), from_scratch=True, force=True, console=_quiet()).run()
    assert state["production"] == "1"
    assert state["warm"] == {"warm_start": False, "why": "asked (--from-scratch)"}
    tags = Registry(tmp_path / "registry").version("m", state["version"]).tags
    assert json.loads(tags["warm_start"])["why"] == "asked (--from-scratch)"
    assert json.loads(Path(state["run"], "metrics.json").read_text())["why"] == "asked (--from-scratch)"


NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


def test_a_read_only_registry_refuses_a_promotion_in_one_line(tmp_path: Path, weeks: Path) -> None:  # noqa: F811
    # F2: `segue registry promote` on a read-only registry printed 509 lines of SQLAlchemy
    # tracebacks (exit 1).
    import os
    import subprocess
    import sys

    import pytest

    if not _as_user_works(tmp_path):  # setpriv can drop CAP_DAC_OVERRIDE here (the tests run as root)
        pytest.skip("cannot drop file-permission capabilities here")
    cfg_path = _setup(tmp_path, weeks, 1)
    assert Retrain(RetrainConfig.load(cfg_path), console=_quiet()).run()["promoted"]  # v1
    shutil.copy(weeks / "normal" / "week-01.csv", tmp_path / "incoming")
    assert Retrain(RetrainConfig.load(cfg_path), force=True, console=_quiet()).run()["version"] == "2"
    reg_dir = tmp_path / "registry"
    reg = Registry(reg_dir)
    before = {v.version: (v.aliases, v.tags) for v in reg.versions("m")}
    target = "1" if reg.alias("m", "production") == "2" else "2"
    code = "import sys; from segue.cli import app; app(sys.argv[1:], prog_name='segue')"
    writable = [reg_dir, reg_dir / "registry.db"]
    for p in writable:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        for args in (["registry", "promote", "m", target], ["rollback", "m"] if target == "1" else ["registry", "promote", "m", "1"]):
            r = subprocess.run(
                [*NO_DAC, sys.executable, "-c", code, *args, "--registry", str(reg_dir)],
                capture_output=True, text=True, timeout=120, env=dict(os.environ),
            )
            assert r.returncode == 2, r.stdout + r.stderr[-3000:]
            err = r.stderr.strip().splitlines()
            assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
            assert err[0].startswith(f"error: registry {reg_dir}: registry.db is read-only (cannot "), err[0]
            assert "promote version" in err[0] or "roll back" in err[0]
    finally:
        for p in writable:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert {v.version: (v.aliases, v.tags) for v in reg.versions("m")} == before  # nothing changed


def _always_promote(cfg_path: Path) -> Path:
    cfg_path.write_text(cfg_path.read_text().replace("tolerance = 0.005", "tolerance = 1.0").replace("floor = 0.01", "floor = 0.0"))
    return cfg_path


def test_a_second_retrain_is_refused_naming_the_holder_and_promote_rechecks_production(tmp_path: Path, weeks: Path) -> None:  # noqa: F811
    # F3: two retrains at once both trained, registered and promoted; the second promoted a
    # version gated against a production that the first had replaced meanwhile.
    import os

    import pytest
    from typer.testing import CliRunner

    from segue.cli import app
    from segue.ops.registry import PROMOTION_FAILED, ProductionMoved
    from segue.retrain.lock import RetrainLocked, retrain_lock

    cfg_path = _always_promote(_setup(tmp_path, weeks, 1))
    cfg = RetrainConfig.load(cfg_path)
    assert Retrain(cfg, console=_quiet()).run()["promoted"]  # v1
    shutil.copy(weeks / "normal" / "week-01.csv", tmp_path / "incoming")
    reg = Registry(tmp_path / "registry")
    attempts = tmp_path / "work" / "attempts"
    n_attempts = len(list(attempts.iterdir()))
    with retrain_lock(reg, "m", "/some/attempt") as lock:  # a retrain running (the same flock)
        assert lock == tmp_path / "registry" / ".retrain-m.lock"
        with pytest.raises(RetrainLocked, match=rf"another segue retrain of 'm' on registry .* is running \(pid {os.getpid()} on .*attempt /some/attempt; lock {lock}\)"):
            Retrain(cfg, console=_quiet()).run()
        r = CliRunner().invoke(app, ["retrain", str(cfg_path)])
        assert r.exit_code == 2 and "another segue retrain of 'm'" in r.output, r.output
    assert len(list(attempts.iterdir())) == n_attempts and reg.alias("m", "production") == "1"  # nothing done
    assert lock.exists()  # the file stays; the flock went with its holder

    # Steps run one by one (as the Metaflow flow does, a process each): A gates v2 against v1, B
    # promotes v3 meanwhile; A's promotion is refused, naming both, and production stays at 3.
    a = Retrain(cfg, console=_quiet())
    for step in ("gather", "validate", "build", "train", "evaluate", "gate", "register"):
        a.run_step(step)
    assert a.state["version"] == "2" and a.state["decision"]["promote"]
    assert Retrain(cfg, console=_quiet()).run()["promoted"] and reg.alias("m", "production") == "3"
    with pytest.raises(ProductionMoved, match=r"production of 'm' is version 3 now, not version 1 that version 2 was gated against"):
        a.run_step("promote")
    assert reg.alias("m", "production") == "3"
    assert "version 2 is registered but not promoted" in reg.version("m", "2").tags[PROMOTION_FAILED]


def test_a_failed_reload_says_what_production_stays_at_and_tags_the_version(tmp_path: Path, weeks: Path, monkeypatch) -> None:  # noqa: F811, ANN001
    # F5: a promotion whose reload failed said only "could not reach the server"; the registry
    # kept no trace of it.
    import socket

    import pytest
    from typer.testing import CliRunner

    from segue.cli import app
    from segue.ops.registry import PROMOTION_FAILED, ServerUnreachable

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("SEGUE_ADMIN_KEY", "k123")
    cfg_path = _always_promote(_setup(tmp_path, weeks, 1))
    assert Retrain(RetrainConfig.load(cfg_path), console=_quiet()).run()["promoted"]  # v1, no server
    cfg_path.write_text(cfg_path.read_text() + f'[server]\nurl = "{dead}"\n')
    shutil.copy(weeks / "normal" / "week-01.csv", tmp_path / "incoming")
    job = Retrain(RetrainConfig.load(cfg_path), console=_quiet())
    with pytest.raises(ServerUnreachable) as e:
        job.run()
    assert "could not reach the server" in str(e.value)
    assert "production stays at version 1; version 2 is registered but not promoted" in str(e.value)
    assert f"segue registry promote m 2 --server {dead} once the server is up" in str(e.value)
    reg = Registry(tmp_path / "registry")
    assert reg.alias("m", "production") == "1"
    assert "version 2 is registered but not promoted" in reg.version("m", "2").tags[PROMOTION_FAILED]
    saved = json.loads((job.attempt / "retrain.json").read_text())
    assert saved["status"] == "failed" and saved["promotion_failed"] == str(e.value)
    # `segue registry promote` and `segue rollback` say the same (and leave the registry as it was)
    r = CliRunner().invoke(app, ["registry", "promote", "m", "2", "--registry", str(tmp_path / "registry"), "--server", dead])
    assert r.exit_code == 2 and "production stays at version 1; version 2 is registered but not promoted" in r.output, r.output
    # promoted later (no server now): the failure tag goes
    r = CliRunner().invoke(app, ["registry", "promote", "m", "2", "--registry", str(tmp_path / "registry")])
    assert r.exit_code == 0, r.output
    assert PROMOTION_FAILED not in reg.version("m", "2").tags
    r = CliRunner().invoke(app, ["rollback", "m", "--registry", str(tmp_path / "registry"), "--server", dead])
    assert r.exit_code == 2 and "production stays at version 2, not rolled back to version 1" in r.output, r.output
    assert reg.alias("m", "production") == "2"


def test_a_drift_aborted_attempt_has_a_retrain_json(tmp_path: Path, weeks: Path) -> None:  # noqa: F811
    # F4: the drift-aborted attempt folder had no retrain.json (only --json's file said why).
    import pytest

    from segue.retrain.loop import RetrainAborted

    cfg_path = _setup(tmp_path, weeks, 1)
    assert Retrain(RetrainConfig.load(cfg_path), console=_quiet()).run()["promoted"]  # v1 (popularity)
    shutil.copy(weeks / "reversed" / "week-02.csv", tmp_path / "incoming")  # drift: aborted
    job = Retrain(RetrainConfig.load(cfg_path), console=_quiet())
    with pytest.raises(RetrainAborted):
        job.run()
    saved = json.loads((job.attempt / "retrain.json").read_text())
    assert saved["status"] == "aborted" and saved["note"].startswith("aborted after gather: this attempt cannot be resumed")
    assert saved["error"].startswith("retrain aborted: week-02.csv failed validation")


def test_ctrl_c_in_training_says_rerun_and_marks_the_attempt(tmp_path: Path, weeks: Path) -> None:  # noqa: F811
    # F4: Ctrl-C during retrain's training said "run the same command to resume from it", but a
    # rerun starts a new attempt; the interrupted attempt folder kept a store and a checkpoint
    # with no retrain.json saying what they were.
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg_path = _setup(tmp_path, weeks, 1)
    assert Retrain(RetrainConfig.load(cfg_path), console=_quiet()).run()["promoted"]  # v1 (popularity)
    shutil.copy(weeks / "normal" / "week-01.csv", tmp_path / "incoming")
    _transformer(cfg_path, steps=100000)
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from segue.cli import app; app(sys.argv[1:], prog_name='segue')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "retrain", str(cfg_path), "--json", str(tmp_path / "out.json")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, COLUMNS="200"),
    )
    try:
        deadline = time.time() + 120
        while not list((tmp_path / "work" / "attempts").glob("*/run/tensorboard")) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)  # inside the training loop (its Ctrl-C handler installed)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0, out
    assert "run the same command" not in out and "checkpoint to resume from" not in out, out
    assert "this retrain attempt cannot be resumed; rerun segue retrain to start a new one" in out, out
    attempt = Path(json.loads((tmp_path / "out.json").read_text())["attempt"])
    saved = json.loads((attempt / "retrain.json").read_text())
    assert saved["status"] == "interrupted" and saved["interrupted"] and "rerun segue retrain" in saved["note"]
    assert not (attempt / "store.duckdb").exists() and not (attempt / "run" / "checkpoints").exists()
    assert Registry(tmp_path / "registry").alias("m", "production") == "1" and len(Registry(tmp_path / "registry").versions("m")) == 1
