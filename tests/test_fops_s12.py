"""Walk s12 (operations loop, walk-ops): the retrain loop and the registry under an operator's
hands: the warm-start reason, a read-only registry, two retrains at once, an interrupted training,
a promotion whose reload fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from segue.ops.registry import Registry
from segue.retrain.loop import Retrain, RetrainConfig
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


def _no_dac_works(tmp_path: Path) -> bool:
    """Whether a process without CAP_DAC_OVERRIDE can be started (the tests run as root, whom
    file permissions do not stop)."""
    import subprocess

    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    try:
        return subprocess.run([*NO_DAC, "cat", str(probe)], capture_output=True).returncode != 0
    except OSError:
        return False
    finally:
        probe.unlink()


NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


def test_a_read_only_registry_refuses_a_promotion_in_one_line(tmp_path: Path, weeks: Path) -> None:  # noqa: F811
    # F2: `segue registry promote` on a read-only registry printed 509 lines of SQLAlchemy
    # tracebacks (exit 1).
    import os
    import subprocess
    import sys

    import pytest

    if not _no_dac_works(tmp_path):
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
