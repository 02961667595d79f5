"""Walk s12 (benchmarks): a missing or partial shared data folder is one line and exit 2 before any
work, cold_start leaves no scratch folder behind, and the autoencoder benches count and label right."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
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


# --- a trained autoencoder run with its own EASE wide part (F4, F5) ------------------------------


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(store, run folder): two tastes over 24 items, a strong split, a network trained alone with
    EASE's logits added at scoring at a = 30 (as configs/ml100k_autoencoder.toml)."""
    from datahelp import make_store
    from segue.data.arrays import SplitData
    from segue.data.store import Store
    from segue.models.autoencoder import AutoencoderConfig, AutoencoderRecommender

    rng = np.random.default_rng(0)
    seqs, ratings = [], []
    for u in range(80):
        items = rng.choice(np.arange(12) + 12 * (u % 2), size=int(rng.integers(5, 10)), replace=False)
        seqs.append([int(i) for i in items])
        ratings.append([float(rng.integers(6, 11)) for _ in items])
    root = tmp_path_factory.mktemp("fbench-ae")
    split = {"kind": "strong", "name": "strong", "valid_users": 10, "test_users": 10}
    store = make_store(root / "s.duckdb", seqs, [split], rating=ratings)
    config = AutoencoderConfig.from_dict(
        {
            "model": {"hidden": [16], "bottleneck": 8, "wide": "ease", "wide_mode": "score", "wide_scale": 30.0},
            "optim": {"lr": 1e-2, "warmup_steps": 0, "schedule": "constant"},
            "trainer": {"max_steps": 10, "eval_every": 10, "metric": "ndcg@100", "progress": False, "patience": None, "loader": {"batch_size": 16}},
        }
    )
    with Store.open(store) as s:
        AutoencoderRecommender(config).fit(SplitData.load(s, "strong")).save(root / "run")
    return store, root / "run"


@pytest.mark.parametrize("rounds", [3])
def test_autoencoder_latency_times_rounds_calls(ae_run: tuple[Path, Path], rounds: int) -> None:
    # F4: the loop kept iterations i >= 20 of [pick[:20], pick]: --rounds 3 timed none (IndexError),
    # --rounds 15 said 15 calls and timed 10.
    store, run = ae_run
    res = bench("bench/autoencoder_latency.py", "--store", str(store), "--split", "strong", "--rounds", str(rounds), str(run))
    assert res.returncode == 0, res.stderr
    assert f"{rounds} single-profile calls (after {rounds} untimed)" in res.stdout
    assert "bare forward pass" in res.stdout and "score() (fold-in)" in res.stdout


def test_autoencoder_latency_refuses_zero_rounds(ae_run: tuple[Path, Path]) -> None:
    store, run = ae_run
    res = bench("bench/autoencoder_latency.py", "--store", str(store), "--rounds", "0", str(run))
    assert res.returncode == 2 and "--rounds must be >= 1, got 0" in res.stderr and "Traceback" not in res.stderr


def test_autoencoder_wide_base_row_is_the_network_alone(ae_run: tuple[Path, Path]) -> None:
    # F5: "without the wide part" scored the loaded run unchanged, its own EASE part (a = 30) included.


    import jax.numpy as jnp

    from segue.data.arrays import SplitData
    from segue.data.splits import Part
    from segue.data.store import Store
    from segue.models.base import load_model
    from segue.training.autoencoder_task import validation_metrics

    store, run = ae_run
    res = bench("bench/autoencoder_wide.py", "--store", str(store), "--split", "strong", "--scales", "0.5", str(run))
    assert res.returncode == 0, res.stderr
    bare = float(re.search(r"without the wide part: unified (\d\.\d{4})", res.stdout).group(1))
    own = float(re.search(r"as trained, with its own wide part \(EASE l2 250, a 30, score\): unified (\d\.\d{4})", res.stdout).group(1))
    with Store.open(store) as s:
        data = SplitData.load(s, "strong")
        hist, tgt = data.history(Part.VALID), data.targets(Part.VALID)
        rows = np.intersect1d(tgt.nonempty(), hist.nonempty())
        model = load_model(run)
        assert own == pytest.approx(validation_metrics(model, hist, tgt, rows)["ndcg@100"], abs=1e-4)
        model.network.wide[...] = jnp.zeros_like(model.network.wide[...])  # the network's logits alone
        model._compiled = None
        assert bare == pytest.approx(validation_metrics(model, hist, tgt, rows)["ndcg@100"], abs=1e-4)
    assert bare != pytest.approx(own, abs=1e-4)


# --- drift_thresholds (F7) --------------------------------------------------------------------


def test_drift_thresholds_says_which_datasets_it_skipped(tmp_path: Path) -> None:
    # F7: without --data's datasets it printed the synthetic table alone, no word of the others.
    res = bench("bench/drift_thresholds.py", "--seeds", "1", "--data", str(tmp_path / "nodata"))
    assert res.returncode == 0, res.stderr
    assert f"ml-100k: {tmp_path}/nodata/ml-100k/u.data not found (skipped" in res.stderr
    assert f"beauty: {tmp_path}/nodata/beauty/Beauty.txt not found (skipped" in res.stderr
    assert "== synthetic:" in res.stdout


@pytest.mark.parametrize(
    ("only", "message"),
    [
        ("beauty", "--only beauty: beauty not found under"),
        ("synthetic,typo", "--only: unknown dataset typo; expected a comma-separated list of synthetic, ml-100k, beauty"),
    ],
)
def test_drift_thresholds_only_a_dataset_it_cannot_run_is_an_error(tmp_path: Path, only: str, message: str) -> None:
    # F7: `--only beauty` without the data, or `--only typo`, printed the thresholds line and exited 0.
    res = bench("bench/drift_thresholds.py", "--seeds", "1", "--only", only, "--data", str(tmp_path / "nodata"))
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert "==" not in res.stdout


# --- a wrong path is segue's one line, not a traceback (F9) -----------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench/step_profile.py", "--config", "{tmp}/nonexist.toml", "--store", "{tmp}/s.duckdb"], "{tmp}/nonexist.toml: config file not found"),
        (["bench/autoencoder_quality.py", "--store", "{tmp}/nope.duckdb", "{tmp}/run"], "{tmp}/run: no such model folder"),
        (["bench/feedback_pairs.py", "--store", "{tmp}/nope.duckdb", "--split", "strong", "--pretrained", "{tmp}/nope"], "{tmp}/nope"),
    ],
)
def test_a_wrong_path_is_one_error_line(tmp_path: Path, args: list[str], message: str) -> None:
    # F9: each printed a traceback ending in segue's own message (ConfigError, StoreError, ...).
    res = bench(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    one_line_exit(res, "error: " + message.replace("{tmp}", str(tmp_path)))


# --- SIGTERM removes the scratch folders (F11) ------------------------------------------------


def _terminate_when(cmd: list[str], ready, tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:  # noqa: ANN001
    """Start a bench, send SIGTERM once `ready()` holds (its scratch exists), wait for its exit."""
    import signal
    import time

    log = (tmp_path / "log.txt").open("w")
    proc = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 90
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, (tmp_path / "log.txt").read_text()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return proc


def test_tune_speedup_removes_its_scratch_on_sigterm(tmp_path: Path) -> None:
    # F11: `timeout 40 bench/tune_speedup.py ...` left /tmp/tune-speedup-* (14 MB) behind.
    from datahelp import make_store, random_sequences

    store = make_store(tmp_path / "s.duckdb", random_sequences(np.random.default_rng(0), 60), [{"kind": "leave_last_out", "name": "loo"}])
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = _terminate_when(
        ["bench/tune_speedup.py", "--store", str(store), "--split", "loo", "--trials", "2", "--workers", "1"],
        lambda: any(scratch.glob("tune-speedup-*/speedup.toml")), tmp_path, env={"TMPDIR": str(scratch)},
    )  # fmt: skip
    assert proc.returncode == 128 + 15
    assert list(scratch.glob("tune-speedup-*")) == []


def test_mpd_scale_removes_its_scratch_on_sigterm(tmp_path: Path) -> None:
    # F11: the scratch folder (~27 GiB at full size) stayed unless the run ended normally.
    work = tmp_path / "mpdwork"
    proc = _terminate_when(
        ["bench/mpd_scale.py", "--playlists", "1000", "--items", "2000", "--steps", "2", "--warmup", "1", "--work", str(work)],
        lambda: "stage gen starts" in (tmp_path / "log.txt").read_text(), tmp_path,
    )  # fmt: skip
    assert proc.returncode == 128 + 15, (tmp_path / "log.txt").read_text()
    assert not work.exists()


# --- every bench prints the machine reference beside its figures (F8) ---------------------------

@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_")))
def test_every_bench_prints_the_machine_reference(name: str) -> None:
    # F8: README: "Each prints its figures beside the machine's own reference (cores, load, measured
    # matmul peak)"; eval_speed had no load, autoencoder_step / quality / ... nothing at all.
    src = (ROOT / "bench" / name).read_text(encoding="utf-8")
    own = all(w in src for w in ("cpu_count", "getloadavg", "peak"))  # train_throughput, mpd_scale: their own, fuller
    assert "print(machine_line()" in src or own, name


def test_machine_line_is_printed_first() -> None:
    res = bench("bench/eval_speed.py", "--users", "50", "--items", "200", "--dim", "4")
    assert res.returncode == 0, res.stderr
    first = res.stdout.splitlines()[0]
    assert re.fullmatch(
        r"machine: \d+ cores \(of \d+\), load average [\d.]+ [\d.]+ [\d.]+ \(1/5/15 min\), "
        r"numpy float32 matmul peak \d+ GFLOP/s \(1024\^3, best of 5\)",
        first,
    ), first
