"""A listening log (skipped as true/false, ms_played / duration, a platform) through the whole path:
the tabular importer (CSV and Parquet alike), configs/listening-log.toml trained a few steps with
its feedback head, the run served with feedback in requests, and exported for two-tower retrieval."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from segue.cli import app
from segue.config import read_toml
from segue.data.sources.tabular import TabularSource
from segue.data.store import BuildConfig, Store, build_store
from segue.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "listening-log.toml"
OPTIONS = {"item": "track_id", "feedback": "skipped,listened=ms_played/duration", "context": "platform"}


def listening_log(n_users: int = 40, n_tracks: int = 30, seed: int = 0) -> pa.Table:
    """Plays of tracks in two genres; a user skips tracks outside their genre (and plays ~10% of them)."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {k: [] for k in ("user_id", "track_id", "ts", "skipped", "ms_played", "duration", "platform")}
    for u in range(n_users):
        taste, t = u % 2, 1_700_000_000 + 1000 * u
        for _ in range(int(rng.integers(5, 12))):
            track = int(rng.integers(0, n_tracks))
            dur = int(rng.choice([150_000, 200_000, 240_000]))
            skipped = track % 2 != taste and rng.random() < 0.8
            t += int(rng.integers(60, 7200))
            cols["user_id"].append(f"user{u}")
            cols["track_id"].append(f"spotify:track:{track}")
            cols["ts"].append(t)
            cols["skipped"].append(bool(skipped))
            cols["ms_played"].append(int(dur * (rng.uniform(0.02, 0.2) if skipped else rng.uniform(0.6, 1.0))))
            cols["duration"].append(dur)
            cols["platform"].append(["mobile", "web", "tv"][int(rng.integers(0, 3))])
    return pa.table(cols)


def events(store: Path) -> list[tuple]:
    with Store.open(store) as s:
        return s.con.execute(
            "SELECT q.external_id, e.position, i.external_id, e.ts, e.fb_skipped, e.fb_listened, e.ctx_platform "
            "FROM events e JOIN items i USING (item_id) JOIN sequences q USING (seq_id) ORDER BY q.external_id, e.position"
        ).fetchall()


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    root = tmp_path_factory.mktemp("listening")
    log = listening_log()
    pcsv.write_csv(log, root / "listening.csv")  # booleans as true/false text
    pq.write_table(log, root / "listening.parquet")  # a real bool column
    split = BuildConfig(splits=[{"kind": "leave_last_out", "name": "loo"}])
    csv_store = build_store(TabularSource(root / "listening.csv", **OPTIONS), root / "csv.duckdb", split)
    pq_store = build_store(TabularSource(root / "listening.parquet", **OPTIONS), root / "pq.duckdb", split)
    assert events(csv_store) == events(pq_store)
    return csv_store, log


def test_the_importer_keeps_skips_fractions_and_platforms(stores) -> None:
    store, log = stores
    rows = events(store)
    assert len(rows) == log.num_rows
    want = {
        (u, t, ts): (float(s), m / d, p)
        for u, t, ts, s, m, d, p in zip(*(log.column(c).to_pylist() for c in log.column_names), strict=True)
    }
    for user, _, track, ts, skipped, listened, platform in rows:
        s, frac, p = want[(user, track, ts)]
        assert skipped == s and listened == pytest.approx(frac) and platform == p


def test_a_zero_duration_is_null_and_bad_values_name_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text("user_id,track_id,skipped,ms_played,duration\nu,a,TRUE,10,0\nu,b,No,5,10\n")
    store = build_store(TabularSource(p, **(OPTIONS | {"context": ()})), tmp_path / "s.duckdb")
    with Store.open(store) as s:
        got = s.con.execute("SELECT fb_skipped, fb_listened FROM events ORDER BY position").fetchall()
    assert got == [(1.0, None), (0.0, 0.5)]
    p.write_text("user_id,track_id,skipped,ms_played,duration\nu,a,maybe,10,20\n")
    with pytest.raises(InputError, match=r"log.csv:2.*'skipped'.*maybe.*a number"):
        build_store(TabularSource(p, **(OPTIONS | {"context": ()})), tmp_path / "t.duckdb")
    with pytest.raises(InputError, match="no column 'duration_ms'"):
        build_store(TabularSource(p, item="track_id", feedback="listened=ms_played/duration_ms"), tmp_path / "u.duckdb")


def test_train_serve_and_export_the_example_config(stores, tmp_path: Path) -> None:
    from segue.serving.app import create_app
    from segue.serving.cli import serve_in_thread
    from segue.training.trainer import parse_train_config, train

    store, _ = stores
    d = read_toml(CONFIG)
    assert d["events"]["predict"] == {"skipped": 0.5, "listened": 0.5}
    # the example's sections, made tiny: a few steps on a 30-track catalogue
    d["data"]["store"] = str(store)
    d["model"] |= {"n_layers": 1, "d_model": 16, "d_ff": 32, "context_length": 8}
    d["loss"] = {"kind": "full"}  # 30 tracks: the exact softmax (its step compiles in half the time)
    d["trainer"] |= {"max_steps": 4, "eval_every": 4, "progress": False, "patience": None}
    d["trainer"]["loader"] |= {"batch_size": 16, "bucketing": False, "prefetch_threads": 0}
    run = train(parse_train_config(d), run_dir=tmp_path / "run")
    last = json.loads((run / "metrics.json").read_text())["history"][-1]
    assert 0 < last["skipped_rmse"] < 1 and 0 < last["listened_rmse"] < 1  # the head was validated
    with serve_in_thread(create_app(run, store=store, use_env_admin_key=False)) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        assert c.get("/healthz").json()["events"]["feedback"] == {"listened": "fraction", "skipped": "flag"}
        body = {
            "history": ["spotify:track:0", "spotify:track:2", "spotify:track:3"],
            "feedback": {"skipped": [False, False, True], "listened": [0.95, 0.8, 0.05]},
            "timestamps": [1_700_000_000, 1_700_000_200, 1_700_000_400],
            "event_context": {"platform": ["mobile", "mobile", "web"]},
            "context": {"platform": "mobile"},
            "ts": 1_700_000_600,
            "items": [f"spotify:track:{i}" for i in (4, 5, 6, 7)],
        }
        r = c.post("/v1/rank", json=body)
        assert r.status_code == 200, r.text
        out = r.json()["items"]
        assert len(out) == 4 and all(set(i["feedback"]) == {"skipped", "listened"} for i in out)
        assert all(0 < i["feedback"]["skipped"] < 1 and 0 < i["feedback"]["listened"] < 1 for i in out)
        bad = c.post("/v1/rank", json=body | {"feedback": {"listened": [0.95, 2.0, 0.05]}})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "feedback", "listened", 1]
    # the run folder knows its store and split: export needs neither
    res = CliRunner().invoke(app, ["export", str(run), "-o", str(tmp_path / "vectors")])
    assert res.exit_code == 0, res.output
    assert pq.read_table(tmp_path / "vectors" / "users.parquet").num_rows == 40
