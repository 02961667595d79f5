"""Multi-process `segue train` on localhost (walk s12 scale F2, F3): two real processes joined by
JAX's distributed runtime, each with one CPU device, started as a launcher would (the same
command, SEGUE_COORDINATOR / SEGUE_NUM_PROCESSES / SEGUE_PROCESS_ID in its environment).

F3: processes started with different configs stop together, before anything is written, with one
line naming the differing field (they used to abort inside gloo with a collective mismatch).
F2: when a process dies, the survivor says which process was lost and that the run resumes from
the run folder's newest checkpoint (it used to print a 141-line traceback, then abort in C++).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from datahelp import make_store, tiny_train_config

CLI = "import sys; from segue.cli import app; sys.argv[0] = 'segue'; app()"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("fscale")
    rng = np.random.default_rng(0)
    seqs = [[int(x) for x in (rng.integers(0, 21) + np.arange(rng.integers(4, 10))) % 40] for _ in range(60)]
    return make_store(tmp / "s.duckdb", seqs, [{"kind": "leave_last_out", "name": "loo"}])


def _config(tmp: Path, store: Path, name: str, **trainer: object) -> Path:
    from segue.training.trainer import TrainConfig

    d = tiny_train_config(store, 3)
    d["name"], d["runs_dir"] = "mp", str(tmp / "runs")
    loader = trainer.pop("loader", {})
    d["trainer"] |= trainer
    d["trainer"]["loader"] |= loader
    path = tmp / f"{name}.toml"
    TrainConfig.from_dict(d).save(path)
    return path


def _start(tmp: Path, configs: list[Path]) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for i, config in enumerate(configs):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {
            "SEGUE_COORDINATOR": f"127.0.0.1:{port}",
            "SEGUE_NUM_PROCESSES": str(len(configs)),
            "SEGUE_PROCESS_ID": str(i),
            "JAX_PLATFORMS": "cpu",
            "COLUMNS": "300",
        }
        cmd = [sys.executable, "-c", CLI, "train", "--config", str(config)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    out = []
    try:
        for p in procs:
            so, se = p.communicate(timeout=timeout)
            out.append((p.returncode, so + se))
    finally:
        for p in procs:  # never leave a half of the job waiting for the other
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def test_processes_with_different_configs_stop_before_writing_naming_the_field(store: Path, tmp_path: Path) -> None:
    a = _config(tmp_path, store, "a", loader={"batch_size": 8})
    b = _config(tmp_path, store, "b", loader={"batch_size": 4})
    got = _finish(_start(tmp_path, [a, b]), timeout=60)
    for rc, text in got:
        assert rc == 2, text[-3000:]
        assert "trainer.loader.batch_size: 8 on process 0, 4 on process 1" in text, text[-3000:]
        assert "different configs" in text
        assert "Traceback" not in text and "Check failure" not in text and "gloo" not in text.lower()
    assert not (tmp_path / "runs").exists()  # nothing written


def test_a_config_that_fails_on_one_process_stops_every_process(store: Path, tmp_path: Path) -> None:
    a = _config(tmp_path, store, "a")
    bad = tmp_path / "bad.toml"
    bad.write_text(a.read_text().replace("batch_size = 8", "batch_size = -1"))
    t0 = time.monotonic()
    got = _finish(_start(tmp_path, [a, bad]), timeout=60)
    assert time.monotonic() - t0 < 45  # process 0 did not wait out a timeout
    (rc0, text0), (rc1, text1) = got
    assert rc0 == rc1 == 2, text0[-2000:] + text1[-2000:]
    assert "batch_size" in text1 and "multi-host: process 1 stopped:" in text0 and "bad.toml" in text0
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_survivor_of_a_killed_process_says_which_and_how_to_resume(store: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, store, "run", max_steps=100000, checkpoint_every=3, max_minutes=2)
    procs = _start(tmp_path, [config, config])
    try:
        ckpt = tmp_path / "runs" / "mp" / "checkpoints" / "3"
        deadline = time.monotonic() + 120  # two processes compiling on 2 loaded cores
        while not ckpt.is_dir() and time.monotonic() < deadline and procs[0].poll() is None:
            time.sleep(0.2)
        assert ckpt.is_dir(), "no checkpoint 3"
        procs[1].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        (rc, text), _ = _finish(procs, timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    took = time.monotonic() - t0
    assert took < 30, f"{took:.0f} s: {text[-3000:]}"  # not JAX's heartbeat timeout (100 s) and its C++ abort
    assert rc == 3, text[-3000:]
    assert "process 0 of 2: lost process 1 after step" in text, text[-3000:]
    assert "holds the newest checkpoint, step" in text and "rerun the same command on every process to resume" in text
    assert "Traceback" not in text and "Check failure" not in text and "╭" not in text


def test_config_differences_name_each_field_and_the_processes_holding_each_value() -> None:
    from segue.training.mesh import config_differences

    a = {"name": "x", "trainer": {"max_steps": 20, "loader": {"batch_size": 32, "bucket_lengths": [16, 30]}}}
    b = {"name": "x", "trainer": {"max_steps": 20, "loader": {"batch_size": 16, "bucket_lengths": [16, 30]}}}
    c = {"name": "x", "trainer": {"max_steps": 10, "loader": {"batch_size": 32}}}
    assert config_differences([a, a]) == []
    assert config_differences([a, b]) == ["trainer.loader.batch_size: 32 on process 0, 16 on process 1"]
    assert config_differences([a, b, c]) == [
        "trainer.max_steps: 20 on processes 0 and 1, 10 on process 2",
        "trainer.loader.batch_size: 32 on processes 0 and 2, 16 on process 1",
        "trainer.loader.bucket_lengths: [16, 30] on processes 0 and 1, (not set) on process 2",
    ]
    many = [{f"f{i}": 0 for i in range(8)}, {f"f{i}": 1 for i in range(8)}]
    assert config_differences(many)[-1] == "and 3 more field(s)"
