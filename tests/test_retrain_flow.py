"""The Metaflow retrain flow, run locally on a tiny corpus (local datastore in a tmp folder)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from segue.data.sources.synthetic import SyntheticConfig, write_weekly_batches
from segue.ops.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


def test_flow_registers_and_promotes_the_first_version(tmp_path: Path) -> None:
    write_weekly_batches(SyntheticConfig(n_playlists=150, n_items=150, mean_length=20, n_genres=2), tmp_path / "incoming", 1)
    cfg = tmp_path / "retrain.toml"
    cfg.write_text(
        'name = "flowed"\nregistry = "registry"\nwork_dir = "work"\nincoming = "incoming"\n'
        'source_options = { user = "user", item = "item", timestamp = "ts" }\nfamily = "popularity"\n'
    )
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT / "src"),
        USERNAME="segue-test",
        METAFLOW_USER="segue-test",
        METAFLOW_HOME=str(tmp_path / "mfhome"),
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "mf"),
        METAFLOW_DEFAULT_METADATA="local",
        METAFLOW_DEFAULT_DATASTORE="local",
    )
    proc = subprocess.run(
        [sys.executable, str(ROOT / "src" / "segue" / "flows" / "retrain.py"), "--no-pylint", "run", "--config", str(cfg)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "retrain: promoted; version 1" in out
    reg = Registry(tmp_path / "registry")
    info = reg.version("flowed", "production")
    assert info.version == "1" and "ndcg@10" in info.evaluation()
    assert (tmp_path / "mf").is_dir()  # the local datastore holds the run's artifacts
