"""Walk s10 (benchmarks): help texts, missing extras and devices said in one line before any work,
autoencoder_step comparing the same loss both ways, step_profile on a mask_seen config."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from datahelp import make_store

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def bench(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env or dict(os.environ)
    )


def descriptions() -> list[tuple[str, str]]:
    """(bench, its argparse description) where the description is a piece of the docstring."""
    out = []
    for path in sorted(BENCH.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        doc = ast.get_docstring(tree, clean=False) or ""
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "ArgumentParser":
                formatter = [k for k in node.keywords if k.arg == "formatter_class"]
                for k in node.keywords:
                    if k.arg == "description" and not formatter:
                        text = eval(compile(ast.Expression(k.value), str(path), "eval"), {"__doc__": doc})  # noqa: S307
                        out.append((path.name, " ".join(text.split())))
    return out


@pytest.mark.parametrize(("name", "text"), descriptions())
def test_bench_help_descriptions_are_whole_sentences(name: str, text: str) -> None:
    # F8: the first line of a wrapped sentence ("... chosen on VALID: does the").
    assert text.endswith((".", "?", ")")), f"{name}: {text!r}"


@pytest.mark.slow
def test_sharding_collectives_says_it_needs_four_devices() -> None:
    # F7: make_mesh raised ConfigError (a traceback) before the script's own guard could fire.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    res = bench("bench/sharding_collectives.py", env=env)
    assert res.returncode == 2, res.stderr
    assert "needs 4 devices, found 1: set XLA_FLAGS=--xla_force_host_platform_device_count=4" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.skipif(importlib.util.find_spec("cornac") is not None, reason="cornac is installed")
def test_vs_multvae_without_cornac_is_one_line(tmp_path: Path) -> None:
    # F6: `import cornac` raised ModuleNotFoundError as a traceback after loading the split.
    res = bench("bench/autoencoder_vs_multvae.py", "--store", str(tmp_path / "none.duckdb"), "popularity")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "not installed (VAECF needs them): pip install -e '.[bench]'" in res.stderr


@pytest.mark.skipif(importlib.util.find_spec("rectools") is not None, reason="rectools is installed here")
def test_time_to_quality_checks_the_rectools_python_first(tmp_path: Path) -> None:
    # F6: the store and data were built, then the worker's traceback went to a log.
    res = bench("bench/time_to_quality.py", "--only", "rectools", "--work", str(tmp_path / "ttq"))
    assert res.returncode == 2 and "cannot import rectools and torch" in res.stderr and "--rectools-python" in res.stderr
    assert not (tmp_path / "ttq").exists()


@pytest.mark.skipif((ROOT / "runs" / "ml100k-feedback" / "model.toml").exists(), reason="the run is trained here")
def test_pipeline_quality_names_the_untrained_generator_first(tmp_path: Path) -> None:
    # F12: the store was built, then a SegueError escaped as a traceback.
    res = bench("bench/pipeline_quality.py", "--datasets", "ml100k", "--work", str(tmp_path / "pq"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "generator 'transformer' of configs/pipeline_ml100k.toml needs the trained run" in res.stderr
    assert "segue train --config configs/ml100k-feedback.toml" in res.stderr
    assert not (tmp_path / "pq").exists()


def _tiny_config(src: str, store: Path, out: Path, changes: dict) -> Path:
    cfg = tomllib.loads((ROOT / "configs" / src).read_text(encoding="utf-8"))
    cfg["data"]["store"] = str(store)
    cfg["runs_dir"] = str(out.parent / "runs")
    for table, values in changes.items():
        cfg.setdefault(table, {}).update(values)
    out.write_text(tomli_w.dumps(cfg), encoding="utf-8")
    return out


def _rated_sequences(n: int, n_items: int, seed: int = 0) -> tuple[list[list[int]], list[list[float]]]:
    rng = np.random.default_rng(seed)
    seqs = [list(rng.choice(n_items, size=int(rng.integers(8, 20)), replace=False)) for _ in range(n)]
    return seqs, [list(rng.integers(1, 6, len(s)).astype(float)) for s in seqs]


@pytest.mark.slow
def test_autoencoder_step_compares_the_same_loss_with_a_wide_part(tmp_path: Path) -> None:
    # F13: the dense form called net(), which adds EASE's wide logits; the entries form does not.
    seqs, ratings = _rated_sequences(120, 60)
    store = make_store(tmp_path / "s.duckdb", seqs, [{"kind": "strong", "valid_users": 20, "test_users": 20}], rating=ratings)
    config = _tiny_config(
        "ml100k_autoencoder.toml", store, tmp_path / "ae.toml",
        {"model": {"hidden": [16], "bottleneck": 8, "wide": "ease", "wide_mode": "score"}},
    )
    res = bench("bench/autoencoder_step.py", str(config), "--reps", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    dense, entries = map(float, re.search(r"loss dense ([\d.]+) entries ([\d.]+)", res.stdout).groups())
    assert dense == pytest.approx(entries, rel=1e-4)


@pytest.mark.slow
def test_step_profile_runs_a_mask_seen_config(tmp_path: Path) -> None:
    # F19: the output/softmax timing passed inputs=None: "mask_seen needs the inputs".
    rng = np.random.default_rng(1)
    seqs = [list(rng.integers(0, 40, int(rng.integers(5, 30)))) for _ in range(60)]
    store = make_store(tmp_path / "s.duckdb", seqs, [{"kind": "leave_last_out", "name": "loo"}])
    config = _tiny_config(
        "ml100k.toml", store, tmp_path / "t.toml",
        {"model": {"n_layers": 1, "d_model": 16, "d_ff": 32}, "loss": {"kind": "full", "mask_seen": True}},
    )
    res = bench("bench/step_profile.py", "--config", str(config), "--store", str(store), "--max-batches", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "output/softmax" in res.stdout and "step (measured)" in res.stdout


@pytest.mark.slow
def test_train_throughput_has_one_percent_of_peak_per_measurement() -> None:
    # F11: the table's "% peak" used the first peak, the verdict the higher of both: 17.7% and 15.9%.
    res = bench("bench/train_throughput.py", "--items", "2000", "--batches", "8", "--steps", "2", "--layers", "1", "--width", "16")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    start = float(re.search(r"float32 matmul peak \(1024\^3, best of 20\): jax ([\d.]+)", out).group(1))
    end = float(re.search(r"matmul peak again at the end: jax ([\d.]+)", out).group(1))
    row = re.search(r"batch 8 on 2,000 items: ([\d.]+) GFLOP/s = ([\d.]+)% of the measured peak ([\d.]+) GFLOP/s", out)
    gflops, pct, peak = map(float, row.groups())
    assert peak == pytest.approx(max(start, end), abs=0.051)
    assert pct == pytest.approx(100 * gflops / peak, abs=0.2)
    assert "% peak" not in out and len(re.findall(r"\d%", out)) == 1  # one figure for the one measurement
