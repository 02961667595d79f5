"""The Metaflow retrain flow, run locally on a tiny corpus (local datastore in a tmp folder), as the
README writes it: no user name in the environment (containers, cron, root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from segue.data.sources.synthetic import SyntheticConfig, write_weekly_batches
from segue.ops.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
USER_VARIABLES = ("USER", "USERNAME", "LOGNAME", "SUDO_USER", "METAFLOW_USER")


def _config(tmp_path: Path, thresholds: bool = False) -> Path:
    cfg = tmp_path / "retrain.toml"
    cfg.write_text(
        'name = "flowed"\nregistry = "registry"\nwork_dir = "work"\nincoming = "incoming"\n'
        'source_options = { user = "user", item = "item", timestamp = "ts" }\nfamily = "popularity"\n'
        + (f'thresholds = "{ROOT / "configs" / "validation-weekly.toml"}"\n' if thresholds else "")
    )
    return cfg


def _run_flow(tmp_path: Path, cfg: Path) -> subprocess.CompletedProcess[str]:
    """`python src/segue/flows/retrain.py run --config CFG` with no user name set: Metaflow stopped
    with "Unknown user" there before the flow named one itself."""
    env = {k: v for k, v in os.environ.items() if k not in USER_VARIABLES} | {
        "PYTHONPATH": str(ROOT / "src"),
        "METAFLOW_HOME": str(tmp_path / "mfhome"),
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path / "mf"),
        "METAFLOW_DEFAULT_METADATA": "local",
        "METAFLOW_DEFAULT_DATASTORE": "local",
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / "segue" / "flows" / "retrain.py"), "--no-pylint", "run", "--config", str(cfg)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )


def test_flow_registers_and_promotes_the_first_version(tmp_path: Path) -> None:
    write_weekly_batches(SyntheticConfig(n_playlists=150, n_items=150, mean_length=20, n_genres=2), tmp_path / "incoming", 1)
    proc = _run_flow(tmp_path, _config(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Unknown user" not in out and "for user:" in out  # named by the flow (segue tune's rule)
    assert "retrain: promoted: version 1 (production was none)" in out
    reg = Registry(tmp_path / "registry")
    info = reg.version("flowed", "production")
    assert info.version == "1" and "ndcg@10" in info.evaluation()
    assert (tmp_path / "mf").is_dir()  # the local datastore holds the run's artifacts


def test_flow_drift_abort_states_the_reason_without_a_traceback(tmp_path: Path) -> None:
    """A refused week fails the flow (non-zero exit) with the reason up front, as `segue retrain`
    states it, instead of Metaflow's "Internal error" and a traceback ending in the reason."""
    from rich.console import Console

    from segue.retrain.loop import Retrain, RetrainConfig

    synth = SyntheticConfig(n_playlists=150, n_items=150, mean_length=20, n_genres=2)
    write_weekly_batches(synth, tmp_path / "normal", 2)
    write_weekly_batches(synth, tmp_path / "reversed", 3, reverse_week=2)
    (tmp_path / "incoming").mkdir()
    for w in range(2):
        shutil.copy(tmp_path / "normal" / f"week-{w:02d}.csv", tmp_path / "incoming")
    cfg = _config(tmp_path, thresholds=True)
    Retrain(RetrainConfig.load(cfg), console=Console(quiet=True)).run()  # production: version 1
    shutil.copy(tmp_path / "reversed" / "week-02.csv", tmp_path / "incoming")

    proc = _run_flow(tmp_path, cfg)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "Retrain aborted:" in out and "week-02.csv failed validation against week-01.csv (popularity" in out, out[-3000:]
    assert "pass --force true to retrain anyway" in out  # the flow's flag takes a value
    assert "Internal error" not in out and "Traceback" not in out, out[-3000:]
    reg = Registry(tmp_path / "registry")
    assert reg.alias("flowed", "production") == "1" and len(reg.versions("flowed")) == 1


@pytest.mark.parametrize(
    ("command", "flow"),
    [([str(ROOT / "flows" / "prod2vec.py")], "Prod2VecFlow"), (["-m", "segue.flows.tune"], "TuneFlow")],
)
def test_flows_run_by_hand_without_a_user_name(tmp_path: Path, command: list[str], flow: str) -> None:
    """flows/prod2vec.py and segue.flows.tune as the README writes them (no USERNAME=me): Metaflow
    reads the user name on import and stopped with "Unknown user" before the flow named one."""
    env = {k: v for k, v in os.environ.items() if k not in USER_VARIABLES} | {
        "PYTHONPATH": str(ROOT / "src"), "METAFLOW_HOME": str(tmp_path / "mfhome"),
    }
    proc = subprocess.run(
        [sys.executable, *command, "--no-pylint", "show"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0 and "Unknown user" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert flow in proc.stdout + proc.stderr
