"""The `segue` command end to end: data build/stats/add-split, bad input, and the demo pipeline."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segue.cli import app
from segue.data.store import Store
from segue.demo import DemoOptions, run_demo

runner = CliRunner()


def _write_sequences(path: Path, n_users: int = 40) -> None:
    lines = []
    for u in range(n_users):
        items = [(u * 7 + j * 3) % 50 for j in range(5 + u % 7)]
        lines.append(" ".join([f"u{u}", *[f"i{i}" for i in items]]))
    path.write_text("\n".join(lines) + "\n")


def test_build_stats_and_add_split(tmp_path: Path) -> None:
    src = tmp_path / "seq.txt"
    _write_sequences(src)
    store = tmp_path / "s.duckdb"
    res = runner.invoke(app, ["data", "build", "seqtext", str(src), "-o", str(store), "-s", "leave_last_out"])
    assert res.exit_code == 0, res.output
    assert store.exists()
    with Store.open(store) as s:
        assert s.counts()["sequences"] == 40
        assert s.split_names() == ["loo"]

    res = runner.invoke(app, ["data", "stats", str(store), "--json"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.output)
    assert stats["counts"]["events"] == sum(5 + u % 7 for u in range(40))
    assert set(stats["splits"]["loo"]["parts"]) == {"train", "valid", "test"}
    assert store.with_suffix(".stats.png").stat().st_size > 1000

    res = runner.invoke(app, ["data", "add-split", str(store), "random_holdout:name=h,test_fraction=0.2"])
    assert res.exit_code == 0, res.output
    with Store.open(store) as s:
        assert s.split_names() == ["h", "loo"]
        assert s.split_info("h")["params"]["test_fraction"] == 0.2


def test_stats_of_a_rated_store_show_the_ratings_and_their_per_user_spread(tmp_path: Path) -> None:
    """Users 0-9 rate 7 or 8 (variance 0.25: the hybrid score leans on the scale), users 10-19 rate
    1 to 10 (variance 8.25); one user has a single rating and no spread."""
    rows = ["user,item,rating"]
    for u in range(20):
        given = [7, 8, 7, 8] if u < 10 else list(range(1, 11))
        rows += [f"u{u},i{j},{r}" for j, r in enumerate(given)]
    rows.append("u20,i0,5")
    src = tmp_path / "ratings.csv"
    src.write_text("\n".join(rows) + "\n")
    store = tmp_path / "s.duckdb"
    assert runner.invoke(app, ["data", "build", "csv", str(src), "-o", str(store)]).exit_code == 0
    stats = json.loads(runner.invoke(app, ["data", "stats", str(store), "--json"]).output)["ratings"]
    n = 4 * 10 + 10 * 10 + 1
    assert stats["values"]["7.0"] == pytest.approx((20 + 10) / n) and stats["values"]["5.0"] == pytest.approx(11 / n)
    assert stats["users_with_two_or_more"] == 20 and stats["low_variance_share"] == 0.5
    assert stats["user_sd_median"] == pytest.approx((0.5 + 8.25**0.5) / 2)
    res = runner.invoke(app, ["data", "stats", str(store)])
    text = " ".join(res.output.split())
    assert "ratings: 1 to 10, mean" in text and "10: 7.1%" in text and "50% with variance < 1" in text


def test_bad_input_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "ratings.csv"
    src.write_text("user,item,rating\nu1,i1,5\nu1,i2,five\n")
    store = tmp_path / "s.duckdb"
    res = runner.invoke(
        app,
        ["data", "build", "csv", str(src), "-o", str(store), "--option", "user=user", "--option", "item=item",
         "--option", "rating=rating"],
    )
    assert res.exit_code == 2
    assert "ratings.csv" in res.output and "rating" in res.output
    assert not store.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ratings.csv"]


def test_unknown_split_kind_and_missing_store(tmp_path: Path) -> None:
    src = tmp_path / "seq.txt"
    _write_sequences(src)
    res = runner.invoke(app, ["data", "build", "seqtext", str(src), "-o", str(tmp_path / "s.duckdb"), "-s", "bogus"])
    assert res.exit_code == 2
    assert "bogus" in res.output and "random_sequence" in res.output
    res = runner.invoke(app, ["data", "stats", str(tmp_path / "nope.duckdb")])
    assert res.exit_code == 2
    assert "nope.duckdb" in res.output


@pytest.mark.slow
def test_demo_pipeline_without_training(tmp_path: Path) -> None:
    """build -> stats -> validate -> evaluate (baselines only, as no transformer was trained) on a
    small corpus."""
    state = run_demo(
        DemoOptions(workdir=tmp_path, steps=["build", "stats", "validate", "evaluate"], serve=False, n_playlists=300, n_items=400)
    )
    assert state.results["stats"]["counts"]["sequences"] == 300
    # the training and test parts of one random split come from the same distribution
    assert state.results["validation"] == "pass"
    checks = json.loads((tmp_path / "validation" / "validation.json").read_text())
    assert checks["passed"] is True and any(f["name"] == "popularity" for f in checks["features"])
    report = state.results["report"]
    assert (report / "report.html").exists()
    results = json.loads((report / "results.json").read_text())
    text = json.dumps(results)
    for name in ("popularity", "itemknn", "ease", "item2vec", "als"):
        assert name in text


@pytest.mark.slow
def test_demo_profile_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo's profile step: the corpus' ratings summarised, the autoencoder trained and
    evaluated on held-out users beside the baselines, and a new rated profile folded in
    (recommendations of its own taste, none of its own titles, predicted ratings on the scale, an
    explanation naming a profile title)."""
    state = run_demo(DemoOptions(workdir=tmp_path, steps=["profile"], serve=False))
    out = " ".join(capsys.readouterr().out.split())
    assert "ratings: 1 to 10, mean" in out and "with variance < 1" in out
    res = state.results["profile"]
    assert (res["run"] / "model.toml").exists()
    report = json.loads((tmp_path / "reports" / "strong" / "results.json").read_text())
    assert all(name in json.dumps(report) for name in ("autoencoder", "ease", "popularity", "biasedmf"))
    profile = {"title-0-0", "title-0-1", "title-0-2", "title-0-3", "title-1-0", "title-0-4"}
    assert not profile & set(res["top"])
    assert sum(t.startswith("title-0-") for t in res["top"]) >= 4  # the loved taste, not the disliked one
    assert all(1.0 <= r <= 10.0 for r in res["predicted"])
    assert res["impact"] and all(i.drop > 0 for i in res["impact"])


def _occupied_port() -> socket.socket:
    """A listening socket on a free port of 127.0.0.1, as another server would hold it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_demo_on_a_taken_port_names_the_port_before_any_step(tmp_path: Path) -> None:
    # the demo had announced "segue is serving ... open http://127.0.0.1:8000/" and then failed to bind
    with _occupied_port() as taken:
        port = taken.getsockname()[1]
        res = runner.invoke(app, ["demo", "--workdir", str(tmp_path / "d"), "--steps", "build,serve", "--port", str(port)])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert f"port {port} on 127.0.0.1 is not free (" in out, out
    assert f"choose another with --port (e.g. segue demo --port {port + 1}), or pass --no-serve" in out, out
    assert "is serving" not in out and "Traceback" not in out
    assert not (tmp_path / "d").exists()  # checked before the build step, not minutes later


def test_serve_on_a_taken_or_impossible_port_is_one_error_before_anything_is_announced(tmp_path: Path) -> None:
    """`segue serve` had printed the page's address, loaded the model and then failed in uvicorn
    (exit 3); a port past 65535 was taken modulo 65536 (99999 listened on 34463)."""
    from segue.data.arrays import SplitData
    from segue.models.popularity import Popularity

    src, store, folder = tmp_path / "seq.txt", tmp_path / "s.duckdb", tmp_path / "pop"
    _write_sequences(src)
    assert runner.invoke(app, ["data", "build", "seqtext", str(src), "-o", str(store), "-s", "leave_last_out"]).exit_code == 0
    with Store.open(store) as st:
        Popularity().fit(SplitData.load(st, "loo")).save(folder)
    with _occupied_port() as taken:
        port = taken.getsockname()[1]
        res = runner.invoke(app, ["serve", "--model", str(folder), "--port", str(port)])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and f"port {port} on 127.0.0.1 is not free (" in out and "choose another with --port" in out, out
    assert "page:" not in out and "serving" not in out
    res = runner.invoke(app, ["serve", "--model", str(folder), "--port", "99999"])
    assert res.exit_code == 2 and "--port" in res.output and "65535" in res.output, res.output


def test_demo_serve_step_on_a_taken_port_announces_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The serve step itself binds before it announces (the port may be taken while the other steps run)."""
    from segue.demo import DemoState, step_serve
    from segue.errors import SegueError

    with _occupied_port() as taken:
        port = taken.getsockname()[1]
        with pytest.raises(SegueError, match=f"port {port} on 127.0.0.1 is not free .*--port"):
            step_serve(DemoState(DemoOptions(workdir=tmp_path, port=port)))
    assert "is serving" not in capsys.readouterr().out


# The root logger at INFO, as `segue validate` (and so the demo, from its validate step on) leaves it.
_ROOT_AT_INFO = """import logging, sys
from segue.cli import app
logging.basicConfig(level=logging.INFO)
try:
    app(sys.argv[1:])
finally:
    logging.getLogger("segue.check").info("segue's own line")
"""


@pytest.mark.slow
def test_third_party_info_logs_are_quiet_and_segues_own_are_not(tmp_path: Path) -> None:
    """orbax (through absl) logged every checkpoint, gensim every epoch: ~400 of the demo's 652 lines."""
    import subprocess
    import sys

    from segue.training.trainer import TrainConfig

    src = tmp_path / "seq.txt"
    _write_sequences(src)
    store = tmp_path / "s.duckdb"
    assert runner.invoke(app, ["data", "build", "seqtext", str(src), "-o", str(store), "-s", "leave_last_out"]).exit_code == 0
    trainer = {"max_steps": 4, "eval_every": 2, "checkpoint_every": 2, "patience": None, "loader": {"batch_size": 8, "prefetch_threads": 0}}
    model = {"n_layers": 1, "n_heads": 2, "d_model": 8, "d_ff": 16, "context_length": 6}
    cfg = {"name": "t", "runs_dir": str(tmp_path / "runs"), "data": {"store": str(store), "split": "loo"}, "model": model, "trainer": trainer}
    TrainConfig.from_dict(cfg).save(tmp_path / "c.toml")
    commands = {
        "absl": ["train", "--config", str(tmp_path / "c.toml")],  # orbax checkpoints
        "gensim": ["evaluate", "item2vec", "--store", str(store), "--no-report", "--n-boot", "20"],
    }
    for noisy, args in commands.items():
        res = subprocess.run([sys.executable, "-c", _ROOT_AT_INFO, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        log = res.stdout + res.stderr
        assert f"INFO:{noisy}" not in log and "INFO:orbax" not in log and "INFO:jax" not in log, log[-3000:]
        assert "INFO:segue.check:segue's own line" in log, log[-3000:]
