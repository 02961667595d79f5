"""Walk s12 (benchmarks): a missing or partial shared data folder is one line and exit 2 before any
work, cold_start leaves no scratch folder behind, and the autoencoder benches count and label right."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def one_line_exit(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    for n in needles:
        assert n in res.stderr, res.stderr


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        (["bench/transformer_quality.py", "--only", "ml100k"], "nodata/ml-100k: not found"),
        (["bench/profile_latency.py", "--data", "{nodata}"], "nodata: not found"),
        (["bench/quality.py", "--only", "ml100k-loo", "--models", "popularity"], "nodata/ml-100k: not found"),
    ],
)
def test_missing_shared_data_is_one_line(tmp_path: Path, args: list[str], missing: str) -> None:
    # F2: transformer_quality and profile_latency ended in an InputError traceback.
    nodata = tmp_path / "nodata"
    args = [a.replace("{nodata}", str(nodata)) for a in args]
    if "--data" not in args:
        args += ["--data", str(nodata), "--work", str(tmp_path / "work")]
    res = bench(*args)
    one_line_exit(res, missing, "--data")
    assert not (tmp_path / "work").exists()


def test_quality_with_data_lacking_the_dataset_prints_no_table(tmp_path: Path) -> None:
    # F2: --data existed but had no ml-100k: the table header, then a traceback.
    res = bench("bench/quality.py", "--data", str(tmp_path), "--work", str(tmp_path / "w"), "--only", "ml100k-loo", "--models", "popularity")
    one_line_exit(res, f"{tmp_path}/ml-100k: not found", "MovieLens 100K")
    assert "setup" not in res.stdout


def test_cold_start_without_the_dataset_is_one_line(tmp_path: Path) -> None:
    # F2: a traceback after the load line; F3: it left build-<pid> in --workdir.
    work = tmp_path / "cs"
    res = bench("bench/cold_start.py", "ml100k", "--workdir", str(work), "--steps", "5", env={"SEGUE_SHARED_DATA": str(tmp_path / "nodata")})
    one_line_exit(res, "nodata/ml-100k: not found", "SEGUE_SHARED_DATA")
    assert not work.exists() or not list(work.iterdir())


def test_cold_start_failed_build_leaves_no_scratch_folder(tmp_path: Path) -> None:
    # F3: `sub.mkdir(); build(sub).rename(store); sub.rmdir()` kept build-<pid> on any failure.
    (tmp_path / "data" / "ml-100k").mkdir(parents=True)  # there, but without u.data
    work = tmp_path / "cs"
    res = bench("bench/cold_start.py", "ml100k", "--workdir", str(work), "--steps", "5", env={"SEGUE_SHARED_DATA": str(tmp_path / "data")})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "no MovieLens ratings file" in res.stderr
    assert list(work.iterdir()) == []
