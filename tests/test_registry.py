"""The model registry on a real embedded MLflow backend (SQLite in a tmp folder), real model
folders, and a real server reloaded by a promotion."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from segue.cli import app
from segue.data.arrays import SplitData
from segue.data.store import Store
from segue.errors import ConfigError, SegueError
from segue.models.base import load_model
from segue.ops.registry import Registry, parse_model_uri, tracking_uri
from servinghelp import dot_folder, kill_tree, named_store, popularity_folder, run_load


def _scores(folder: Path, store: Path) -> np.ndarray:
    model = load_model(folder)
    with Store.open(store) as s:
        data = SplitData.load(s, "random")
        rows = data.train.nonempty()[:20]
        return np.asarray(model.score(data.train, rows))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("registry")
    store = named_store(tmp / "s.duckdb")
    with Store.open(store) as s:
        checksum = s.checksum
    pop = popularity_folder(store, tmp / "pop")
    dot = dot_folder(store, tmp / "dot")
    reg = Registry(tmp / "reg")
    ev = {"ndcg@10": [0.1, 0.08, 0.12]}
    v1 = reg.register("m", pop, store_checksum=checksum, split="random", config={"family": "popularity", "k": {"a": 1}}, evaluation=ev, eval_split="random/test")
    reg.promote("m", v1.version)
    v2 = reg.register("m", dot, store_checksum=checksum, split="random", config={"family": "dot"}, evaluation=ev, eval_split="random/test", parent=v1.version)
    return {"tmp": tmp, "store": store, "reg": reg, "v1": v1, "v2": v2, "pop": pop, "dot": dot, "checksum": checksum}


def test_version_records_artifact_checksum_config_metrics_parent(setup: dict) -> None:
    reg: Registry = setup["reg"]
    info = reg.version("m", setup["v2"].version, with_run=True)
    assert info.tags["store_checksum"] == setup["checksum"]
    assert info.tags["split"] == "random" and info.tags["eval_split"] == "random/test"
    assert info.parent == setup["v1"].version
    assert info.evaluation() == {"ndcg@10": [0.1, 0.08, 0.12]}
    assert info.metrics["ndcg_at_10"] == pytest.approx(0.1)
    assert info.metrics["ndcg_at_10_ci_low"] == pytest.approx(0.08)
    assert info.params["family"] == "dot"
    assert reg.version("m", setup["v1"].version, with_run=True).params["k.a"] == "1"
    assert "candidate" in info.aliases  # the newest registered version
    # the artifact is the model folder, without checkpoints or caches
    folder = reg.download("m", info.version, setup["tmp"] / "cache")
    assert folder.name == f"m-v{info.version}"
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in setup["dot"].iterdir() if p.name != "serving")
    np.testing.assert_allclose(_scores(folder, setup["store"]), _scores(setup["dot"], setup["store"]))


def test_a_shared_cache_never_serves_another_registrys_version_of_the_same_name(setup: dict, tmp_path: Path) -> None:
    # two registries (two tracking servers, or one rebuilt) both hold m version 1: once m-v1 of the
    # first was cached, the second's m-v1 came out of the cache as the first's model
    cache = tmp_path / "cache"
    first = setup["reg"].download("m", setup["v1"].version, cache)
    np.testing.assert_array_equal(_scores(first, setup["store"]), _scores(setup["pop"], setup["store"]))
    other = Registry(tmp_path / "reg2")
    v1 = other.register("m", setup["dot"], store_checksum=setup["checksum"], split="random", config={"family": "dot"})
    assert v1.version == setup["v1"].version
    second = other.download("m", v1.version, cache)
    assert second == first  # the same cache entry, replaced by this registry's version
    np.testing.assert_allclose(_scores(second, setup["store"]), _scores(setup["dot"], setup["store"]))
    assert (cache / "m-v1.run_id").read_text().strip() == other.version("m", "1").run_id


def test_promote_then_rollback_restores_previous_scores(setup: dict) -> None:
    reg: Registry = setup["reg"]
    v1, v2 = setup["v1"].version, setup["v2"].version
    assert reg.alias("m", "production") == v1
    assert reg.promote("m", v2) == v1
    assert reg.version("m", "production").version == v2
    assert reg.version("m", v2).tags["previous_production"] == v1
    served_v2 = _scores(reg.download("m", "production", setup["tmp"] / "cache"), setup["store"])
    assert (old_new := reg.rollback("m")) == (v2, v1), old_new
    assert reg.alias("m", "production") == v1
    restored = _scores(reg.download("m", "production", setup["tmp"] / "cache"), setup["store"])
    np.testing.assert_array_equal(restored, _scores(setup["pop"], setup["store"]))
    assert not np.allclose(restored, served_v2)
    with pytest.raises(SegueError, match="nothing to roll back"):
        reg.rollback("m")  # v1 replaced no earlier version


def test_uris_and_errors(setup: dict, tmp_path: Path) -> None:
    assert parse_model_uri("models:/m@production") == ("m", None, "production")
    assert parse_model_uri("models:/m/2") == ("m", "2", None)
    for bad in ("models:/m", "m@production", "models:/@x"):
        with pytest.raises(ConfigError):
            parse_model_uri(bad)
    assert tracking_uri("http://mlflow:5000") == ("http://mlflow:5000", None)
    uri, art = tracking_uri(tmp_path / "r")
    assert uri == f"sqlite:///{(tmp_path / 'r').resolve()}/registry.db" and art is not None
    reg: Registry = setup["reg"]
    with pytest.raises(SegueError, match="no model named 'nope'"):
        reg.versions("nope")
    with pytest.raises(SegueError, match="has no alias 'staging'"):
        reg.version("m", "staging")
    with pytest.raises(SegueError, match="not a model folder"):
        reg.register("m", tmp_path, store_checksum="x", split="random")


def test_promotion_reloads_a_running_server(setup: dict) -> None:
    """`segue serve --model models:/m@production` resolves through the registry; promoting another
    version through the CLI with --server makes the running server reload it (/healthz shows it)."""
    from segue.serving.app import create_app
    from segue.serving.cli import resolve_model, serve_in_thread

    reg: Registry = setup["reg"]
    folder = resolve_model("models:/m@production", str(reg.location))
    prod = reg.alias("m", "production")
    assert folder.name == f"m-v{prod}"
    other = setup["v2"].version if prod == setup["v1"].version else setup["v1"].version
    with serve_in_thread(create_app(folder, admin_key="k3y", feature_log=None)) as server:
        before = httpx.get(server.url + "/healthz").json()["model"]["run_id"]
        assert before == f"m-v{prod}"
        r = CliRunner().invoke(
            app, ["registry", "promote", "m", other, "--registry", str(reg.location), "--server", server.url, "--admin-key", "k3y"]
        )
        assert r.exit_code == 0, r.output
        assert httpx.get(server.url + "/healthz").json()["model"]["run_id"] == f"m-v{other}"
        assert reg.alias("m", "production") == other
        # a wrong key is refused, and production stays as it is
        r = CliRunner().invoke(app, ["rollback", "m", "--registry", str(reg.location), "--server", server.url, "--admin-key", "bad"])
        assert r.exit_code == 2 and "reload refused (403" in r.output
        assert reg.alias("m", "production") == other  # the server refused: the registry is unchanged
        assert httpx.get(server.url + "/healthz").json()["model"]["run_id"] == f"m-v{other}"
    r = CliRunner().invoke(app, ["registry", "show", "m", "production", "--registry", str(reg.location), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["version"] == reg.alias("m", "production")
    r = CliRunner().invoke(app, ["registry", "list", "m", "--registry", str(reg.location), "--json"])
    assert r.exit_code == 0, r.output
    listed = {v["version"]: v["aliases"] for v in json.loads(r.output)["m"]}
    assert "production" in listed[reg.alias("m", "production")] and len(listed) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_promotion_rolls_every_worker_of_a_two_worker_server_under_load(setup: dict, tmp_path: Path) -> None:
    """`segue serve --workers 2 --admin-port P`: a promotion posted to the supervisor's admin port
    moves both workers to the new version (the alias moved just before), with no failed request; a
    folder that is not a model is refused there and changes nothing."""
    from segue.ops.registry import notify_reload, switch_production

    reg: Registry = setup["reg"]
    prod = reg.alias("m", "production")
    other = setup["v2"].version if prod == setup["v1"].version else setup["v1"].version
    port, admin_port = _free_port(), _free_port()
    url, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    key = "w0rkers"
    env = dict(os.environ, SEGUE_ADMIN_KEY=key)
    with open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from segue.cli import app; app()", "serve", "--model", "models:/m@production",
             "--registry", str(reg.location), "--port", str(port), "--workers", "2", "--admin-port", str(admin_port),
             "--no-feature-log", "--no-access-log"],
            env=env, stdout=subprocess.DEVNULL, stderr=err,
        )
    stop, counts, errors = threading.Event(), {"ok": 0, "failed": 0}, []

    def workers() -> list[dict]:
        r = httpx.get(admin + "/admin/workers", headers={"X-API-Key": key}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["workers"]

    threads: list[threading.Thread] = []
    try:
        deadline = time.monotonic() + 180
        while True:  # up when both workers are ready
            assert proc.poll() is None, (tmp_path / "err.txt").read_text()[-2000:]
            try:
                ws = workers()
                if len(ws) == 2 and all(w["ready"] for w in ws):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "err.txt").read_text()[-2000:]
            time.sleep(0.2)
        assert {w["model"]["run_id"] for w in ws} == {f"m-v{prod}"}
        threads = run_load(url, 4, stop, counts, errors, ["track:1", "track:6"])
        while counts["ok"] < 10:
            assert not counts["failed"], errors[:3]
            time.sleep(0.05)
        assert httpx.get(admin + "/admin/workers", timeout=10).status_code == 401  # the key is needed
        out = switch_production(reg, "m", other, server=admin, admin_key=key, reason="two-worker test")
        served_during = counts["ok"]
        assert out["served"]["run_id"] == f"m-v{other}" and reg.alias("m", "production") == other
        after = workers()
        assert {w["pid"] for w in after}.isdisjoint({w["pid"] for w in ws})  # both replaced
        assert {w["model"]["run_id"] for w in after} == {f"m-v{other}"}
        with httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            seen = {c.get("/healthz").json()["model"]["run_id"] for _ in range(20)}
        assert seen == {f"m-v{other}"}
        # not a model folder: refused before any worker moves; the alias and the workers stay
        (tmp_path / "not-a-model").mkdir()
        with pytest.raises(SegueError, match="reload refused \\(422"):
            notify_reload(admin, key, tmp_path / "not-a-model", timeout=60)
        assert workers() == after and reg.alias("m", "production") == other
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(60)
        assert counts["failed"] == 0, errors[:5]
        assert counts["ok"] > served_during > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        stop.set()
        kill_tree(proc)


def test_training_run_logged_with_curves(tmp_path: Path) -> None:
    """segue train --mlflow: params, summary metrics and the TensorBoard curves step by step."""
    from tensorboardX import SummaryWriter

    from segue.ops.registry import log_training_run, tensorboard_scalars

    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    with SummaryWriter(str(run / "tensorboard")) as w:
        for step in (10, 20, 30):
            w.add_scalar("train/loss", 5.0 - step / 10, step)
        w.add_scalar("valid/ndcg_at_10", 0.25, 30)
    (run / "metrics.json").write_text(json.dumps({"best_metric": 0.25, "steps": 30, "stop_reason": "max_steps"}))
    assert tensorboard_scalars(run / "tensorboard") == [
        ("train/loss", 10, 4.0), ("train/loss", 20, 3.0), ("train/loss", 30, 2.0), ("valid/ndcg_at_10", 30, 0.25)
    ]
    rid = log_training_run(tmp_path / "reg", run, {"model": {"d_model": 64}, "name": "x"})
    client = Registry(tmp_path / "reg").client
    data = client.get_run(rid).data
    assert data.params == {"model.d_model": "64", "name": "x"}
    assert data.metrics["best_metric"] == 0.25 and data.metrics["steps"] == 30
    curve = client.get_metric_history(rid, "train/loss")
    assert [(m.step, m.value) for m in sorted(curve, key=lambda m: m.step)] == [(10, 4.0), (20, 3.0), (30, 2.0)]
    assert [a.path for a in client.list_artifacts(rid)] == ["metrics.json"]


def test_a_held_out_user_model_is_registered_with_liang_et_als_cut_offs(tmp_path: Path) -> None:
    """`register --eval-split` on a strong split evaluates by that split's protocol and records
    NDCG@100 and Recall@50 beside the @10/@20 figures; NDCG@100 is the version's headline."""
    from datahelp import make_store
    from segue.models.popularity import Popularity

    rng = np.random.default_rng(3)
    seqs = [list(rng.choice(120, rng.integers(6, 20), replace=False)) for _ in range(200)]
    store = make_store(tmp_path / "s.duckdb", seqs, [{"kind": "strong", "name": "strong", "valid_users": 20, "test_users": 20}])
    with Store.open(store) as s:
        folder = Popularity().fit(SplitData.load(s, "strong")).save(tmp_path / "pop")
    reg = tmp_path / "reg"
    out = CliRunner().invoke(
        app, ["registry", "register", "m", str(folder), "--store", str(store), "--split", "strong", "--eval-split", "strong", "-r", str(reg)]
    )
    assert out.exit_code == 0, out.output
    evaluation = json.loads(Registry(reg).version("m", "1").tags["evaluation"])
    assert {"ndcg@100", "recall@50", "recall@20", "ndcg@10"} <= set(evaluation)
    mean, low, high = evaluation["ndcg@100"]
    assert low <= mean <= high and 0 < mean < 1
    assert f"(ndcg@100 {mean:.4f} " in out.output


def test_list_table_reads_whole_at_80_columns(setup: dict, tmp_path: Path) -> None:
    """`segue registry list` through a pipe (80 columns): aliases, decisions and figures are never
    cut ("candid…", "decisi…" before); only long names fold."""
    reg = Registry(tmp_path / "reg")
    ev = {"ndcg@10": [0.1234, 0.1111, 0.1357]}
    keep = {"decision": json.dumps({"verdict": "keep"})}
    v1 = reg.register("m", setup["pop"], store_checksum=setup["checksum"], split="random", evaluation=ev, tags=keep)
    reg.promote("m", v1.version)
    promote = {"decision": json.dumps({"verdict": "promote"})}
    reg.register("m", setup["dot"], store_checksum=setup["checksum"], split="random", evaluation=ev, parent=v1.version, tags=promote)
    r = CliRunner().invoke(app, ["registry", "list", "m", "--registry", str(reg.location)], terminal_width=80)
    assert r.exit_code == 0, r.output
    assert "…" not in r.output and max(map(len, r.output.splitlines())) <= 80, r.output
    words = r.output.split()
    for word in ("version", "aliases", "created", "(UTC)", "parent", "store", "split", "evaluation", "decision"):
        assert word in words, (word, r.output)
    for word in ("production", "candidate", "keep", "promote", "random", "ndcg@10", "0.1234", "[0.1111,", "0.1357]"):
        assert word in words, (word, r.output)


def test_read_only_commands_do_not_create_a_registry(tmp_path: Path) -> None:
    # `registry list` on a mistyped path said "no model named ..." and left registry.db + artifacts/
    runner = CliRunner()
    absent = tmp_path / "x" / "regg"
    # promote and rollback too: they need a registered version, and left an empty registry behind
    for args in (["list", "segue"], ["list"], ["show", "segue"], ["promote", "segue", "1"], ["rollback", "segue"]):
        res = runner.invoke(app, ["registry", *args, "--registry", str(absent)])
        assert res.exit_code == 2, res.output
        assert f"{absent}: no registry here (expected a folder made by segue registry register" in " ".join(res.output.split())
    assert not (tmp_path / "x").exists()
    a_file = tmp_path / "good.csv"
    a_file.write_text("a,b\n")
    res = runner.invoke(app, ["registry", "list", "segue", "--registry", str(a_file)])  # NotADirectoryError before
    assert res.exit_code == 2, res.output
    assert f"{a_file}: is a file, not a registry" in " ".join(res.output.split())
    with pytest.raises(ConfigError, match="is a file"):
        Registry(a_file)  # writing commands too


def test_register_refuses_an_absent_split_and_another_stores_model(setup: dict, tmp_path: Path) -> None:
    # both were registered (exit 0), recording a split the store lacks, or the wrong store's checksum
    import shutil

    runner = CliRunner()
    reg = tmp_path / "reg"
    model = tmp_path / "pop"
    shutil.copytree(setup["pop"], model)
    (model / "store_checksum.txt").write_text(setup["checksum"] + "\n")  # as segue train writes it
    base = ["registry", "register", "m", str(model), "--registry", str(reg)]
    res = runner.invoke(app, [*base, "--store", str(setup["store"]), "--split", "nosplit"])
    assert res.exit_code == 2, res.output
    assert "the store has no split 'nosplit' (it has: random)" in " ".join(res.output.split())
    other = named_store(tmp_path / "other.duckdb", seed=1)
    with Store.open(other) as s:
        other_sum = s.checksum
    assert other_sum != setup["checksum"]
    res = runner.invoke(app, [*base, "--store", str(other), "--split", "random"])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert "was trained on another store" in out and setup["checksum"] in out and other_sum in out
    assert not reg.exists()  # nothing registered, no registry created
    res = runner.invoke(app, [*base, "--store", str(setup["store"]), "--split", "random"])
    assert res.exit_code == 0, res.output
    assert Registry(reg).versions("m")[0].tags["store_checksum"] == setup["checksum"]
