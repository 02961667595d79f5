"""`segue validate`: Chebyshev distances, schema findings, drift on the right feature, outputs,
exit codes, webhook delivery to a real local HTTP server, and a serving feature-log round trip."""

from __future__ import annotations

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pyarrow as pa
import pytest
import typer
from typer.testing import CliRunner

from datahelp import make_store
from segue.cli import friendly_errors
from segue.errors import ConfigError, InputError
from segue.ops import (
    Thresholds,
    chebyshev,
    parse_spec,
    validate,
    validate_feature_log,
    write_result,
)
from segue.ops import cli as ops_cli
from segue.ops.drift import histogram, sampling_noise
from segue.ops.eventset import from_table, read_source
from segue.serving.feature_log import FeatureLog

ROOT = Path(__file__).resolve().parents[1]
DEVICES = np.array(["mobile", "desktop", "tablet"])


# --- Chebyshev and the sampling allowance ------------------------------------------------------


def test_chebyshev_against_a_direct_computation() -> None:
    assert chebyshev({"a": 1, "b": 1}, {"b": 1, "c": 3}) == pytest.approx(0.75)  # (.5,.5,0) vs (0,.25,.75)
    rng = np.random.default_rng(0)
    for _ in range(50):
        keys = [f"k{i}" for i in range(12)]
        p = {k: float(rng.integers(0, 20)) for k in rng.choice(keys, 7, replace=False)}
        q = {k: float(rng.integers(0, 20)) for k in rng.choice(keys, 7, replace=False)}
        p["k0"], q["k1"] = 1.0, 1.0  # no empty side
        union = sorted(set(p) | set(q))
        sp, sq = sum(p.values()), sum(q.values())
        direct = max(abs(p.get(k, 0) / sp - q.get(k, 0) / sq) for k in union)
        assert chebyshev(p, q) == pytest.approx(direct)
        assert chebyshev(q, p) == pytest.approx(direct)
    assert chebyshev([1, 3], [1, 3, 0]) == 0.0  # sequences: padded, normalised
    assert chebyshev([2, 0], [0, 5]) == 1.0
    with pytest.raises(TypeError):
        chebyshev({"a": 1}, [1])


def test_sampling_noise_independent_units_and_clusters() -> None:
    # Independent units: the pooled two-proportion standard error of the largest bin.
    a = histogram(np.array([0] * 30 + [1] * 70), ["x", "y"])
    b = histogram(np.array([0] * 50 + [1] * 50), ["x", "y"])
    m = (30 + 50) / 200
    expected = np.sqrt((100 / 99) * m * (1 - m) / 100 * 2)  # k/(k-1) small-sample factor, both sides
    assert sampling_noise(a, b) == pytest.approx(expected, rel=1e-6)
    # Clusters: sum_s (x_sb - m n_s)^2 computed directly for one side.
    codes = np.array([0, 0, 1, 1, 1, 0, 1])
    clusters = np.array([5, 5, 5, 9, 9, 2, 2])
    h = histogram(codes, ["x", "y"], clusters)
    share = 0.4
    direct = sum((np.sum((codes == 0) & (clusters == c)) - share * np.sum(clusters == c)) ** 2 for c in (5, 9, 2))
    assert h.share_variance("x", share) == pytest.approx(direct * 3 / 2 / 7**2)


# --- halves and shifted copies ---------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> pa.Table:
    table, _ = read_source("synthetic", None, {"n_playlists": 1500, "n_items": 600, "mean_length": 20})
    return table


def _halves(table: pa.Table, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    keys = table.column("seq_key").to_numpy(zero_copy_only=False)
    uniq, codes = np.unique(keys, return_inverse=True)
    side = np.random.default_rng(seed).random(len(uniq)) < 0.5
    return table.filter(pa.array(side[codes])), table.filter(pa.array(~side[codes]))


def test_identical_halves_pass_and_shifted_copies_fail_on_their_feature(
    corpus: pa.Table, caplog: pytest.LogCaptureFixture
) -> None:
    a_tab, b_tab = _halves(corpus)
    a = from_table(a_tab, "A")
    with caplog.at_level(logging.INFO, logger="segue.validate"):
        same = validate(a, from_table(b_tab, "B"))
    assert same.passed, same.summary()
    assert [r.getMessage() for r in caplog.records] == [same.summary()]  # the log line, always
    assert same.summary().startswith("validate PASS: B against A")
    assert {f.name for f in same.features if not f.skipped} >= {"popularity", "history_length", "unknown_items"}

    # Popularity reversed: each item replaced by the item of mirrored rank.
    items, counts = np.unique(corpus.column("item_key").to_numpy(zero_copy_only=False), return_counts=True)
    ranked = items[np.argsort(-counts, kind="stable")]
    mirror = dict(zip(ranked, ranked[::-1], strict=True))
    rev = b_tab.set_column(1, "item_key", pa.array([mirror[x] for x in b_tab.column("item_key").to_pylist()]))
    r = validate(a, from_table(rev, "B reversed"))
    assert not r.passed and "popularity" in [f.name for f in r.failures()]
    assert r.feature("history_length").passed  # lengths untouched

    # Lengths halved: each sequence keeps its first half.
    pos = b_tab.column("position").to_numpy()
    lengths = dict(zip(*np.unique(b_tab.column("seq_key").to_numpy(zero_copy_only=False), return_counts=True), strict=True))
    keep = [p < np.ceil(lengths[k] / 2) for p, k in zip(pos, b_tab.column("seq_key").to_pylist(), strict=True)]
    r = validate(a, from_table(b_tab.filter(pa.array(keep)), "B halved"))
    assert not r.feature("history_length").passed
    assert r.feature("unknown_items").passed

    # Unknown items: a fifth of the events on items the reference never saw.
    ids = np.array(b_tab.column("item_key").to_pylist(), dtype=object)
    ids[::5] = [f"new:{i}" for i in range(len(ids[::5]))]
    r = validate(a, from_table(b_tab.set_column(1, "item_key", pa.array(ids.tolist())), "B unknown"))
    known = set(a_tab.column("item_key").to_pylist())
    assert r.feature("unknown_items").distance == pytest.approx(np.mean([x not in known for x in ids]))
    assert not r.feature("unknown_items").passed and not r.feature("new_items").passed


# --- schema --------------------------------------------------------------------------------


def _seqs(rng: np.random.Generator, n: int = 60, items: int = 40) -> list[list[int]]:
    return [list(rng.integers(0, items, rng.integers(3, 9))) for _ in range(n)]


def test_schema_violations_are_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    seqs = _seqs(rng)
    ratings = [[float(rng.integers(1, 6)) for _ in s] for s in seqs]
    ts = [[1_600_000_000 + 3600 * j for j in range(len(s))] for s in seqs]
    ref = make_store(tmp_path / "ref.duckdb", [[str(x) for x in s] for s in seqs], rating=ratings, ts=ts)
    # The same events with Spotify URIs for ids, a 0-10 rating scale, and milliseconds.
    cand = make_store(
        tmp_path / "cand.duckdb",
        [[f"spotify:track:{x}" for x in s] for s in seqs],
        rating=[[2.5 * r - 2.5 for r in row] for row in ratings],
        ts=[[t * 1000 for t in row] for row in ts],
    )
    r = validate(f"store:{ref}", f"store:{cand}")
    found = {(f.column, f.check): f for f in r.schema}
    fmt = found[("item", "value format")]
    assert fmt.expected == "integer 100%" and fmt.found == "uri spotify:track: 100%"
    assert "values in [1, 5]" in found[("rating", "scale")].expected
    assert "values in [0, 10]" in found[("rating", "scale")].found
    assert "fractional" in found[("rating", "integrality")].found
    assert "1000 times larger" in found[("ts", "unit")].found
    assert not r.passed
    assert "column 'item': value format: expected integer 100%, found uri spotify:track: 100%" in r.summary()


def test_missing_column_and_null_rate(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    seqs = _seqs(rng)
    ratings = [[float(rng.integers(1, 6)) for _ in s] for s in seqs]
    half_null = [[None if j % 2 else r for j, r in enumerate(row)] for row in ratings]
    ref = make_store(tmp_path / "ref.duckdb", seqs, rating=ratings)
    holes = make_store(tmp_path / "holes.duckdb", seqs, rating=half_null)
    none = make_store(tmp_path / "none.duckdb", seqs)
    r = validate(f"store:{ref}", f"store:{holes}")
    (f,) = [f for f in r.schema if f.check == "null rate"]
    assert f.column == "rating" and f.expected.startswith("0.0%") and f.found.startswith("4")
    r = validate(f"store:{ref}", f"store:{none}")
    (f,) = r.schema_errors
    assert (f.column, f.check, f.found) == ("rating", "column", "absent")
    assert r.feature("rating").skipped == "the candidate has no ratings"


# --- outputs, exit codes, webhook --------------------------------------------------------------


def _stores(tmp_path: Path) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(3)
    seqs = _seqs(rng, n=120)
    a = make_store(tmp_path / "a.duckdb", seqs)
    b = make_store(tmp_path / "b.duckdb", seqs)  # the same events: no drift
    shifted = make_store(tmp_path / "c.duckdb", [[x + 100 for x in s] for s in seqs])  # all items new
    return a, b, shifted


def test_json_and_html_written(tmp_path: Path) -> None:
    a, _, c = _stores(tmp_path)
    r = validate(f"store:{a}", f"store:{c}")
    write_result(r, tmp_path / "out" / "v.json", tmp_path / "out" / "v.html")
    data = json.loads((tmp_path / "out" / "v.json").read_text())
    assert data["passed"] is False and "unknown_items" in data["failed_features"]
    feat = {f["name"]: f for f in data["features"]}
    assert feat["unknown_items"]["distance"] == 1.0 and feat["unknown_items"]["passed"] is False
    assert feat["history_length"]["passed"] is True and feat["history_length"]["distance"] == 0.0
    page = (tmp_path / "out" / "v.html").read_text()
    assert '<h1 id="verdict">FAIL</h1>' in page
    charts = re.findall(r"<svg .*?</svg>", page)
    assert len(charts) == len(data["failed_features"])
    for chart in charts:
        ElementTree.fromstring(chart)  # well-formed SVG
    # The unknown_items chart: two bars per panel, the reference all 'known', the candidate all '<unk>'.
    (unk,) = [c for c in charts if "unknown_items" in c]
    assert re.findall(r"<title>(known|&lt;unk&gt;): ([0-9.]+)</title>", unk) == [
        ("known", "1.0000"), ("&lt;unk&gt;", "0.0000"), ("known", "0.0000"), ("&lt;unk&gt;", "1.0000")
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v.html", "v.json"]  # no temporaries


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("validate")(friendly_errors(ops_cli.validate))
    app.command("noop")(lambda: None)  # two commands: typer keeps 'validate' as a subcommand
    return app


def test_exit_codes(tmp_path: Path) -> None:
    a, b, c = _stores(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(_app(), ["validate", f"store:{a}", str(b), "--out", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "ok" / "validation.json").read_text())["passed"] is True
    bad = runner.invoke(_app(), ["validate", f"store:{a}", f"store:{c}", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 1 and "FAIL" in bad.output
    assert "unknown_items" in bad.output
    # Thresholds from a file: tolerating a fully new catalogue turns the verdict.
    (tmp_path / "lax.toml").write_text("[drift]\npopularity = 1.0\nunknown_items = 1.0\nnew_items = 1.0\n")
    lax = runner.invoke(_app(), ["validate", str(a), str(c), "-t", str(tmp_path / "lax.toml"), "-o", str(tmp_path / "lax")])
    assert lax.exit_code == 0, lax.output
    assert json.loads((tmp_path / "lax" / "validation.json").read_text())["thresholds"]["drift"]["popularity"] == 1.0
    wrong = runner.invoke(_app(), ["validate", f"store:{a}", "nonsense.txt", "--out", str(tmp_path / "x")])
    assert wrong.exit_code == 2 and "nonsense.txt" in wrong.output
    assert not (tmp_path / "x").exists()


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[dict] = []
    status = 200

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append({"type": self.headers["Content-Type"], "json": json.loads(body)})
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver():
    handler = type("Receiver", (_Receiver,), {"bodies": [], "status": 200})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()
    server.server_close()


def test_webhook_delivery_and_failure_is_not_fatal(tmp_path: Path, receiver) -> None:
    handler, url = receiver
    a, _, c = _stores(tmp_path)
    res = CliRunner().invoke(_app(), ["validate", str(a), str(c), "--out", str(tmp_path / "o"), "--webhook", url])
    assert res.exit_code == 1, res.output
    (got,) = handler.bodies
    assert got["type"] == "application/json"
    assert got["json"]["passed"] is False and "unknown_items" in got["json"]["failed_features"]
    written = json.loads((tmp_path / "o" / "validation.json").read_text())
    assert written["webhook"] == {"url": url, "ok": True, "status": 200, "error": None}
    assert written["features"] == got["json"]["features"]

    handler.status = 500
    res = CliRunner().invoke(_app(), ["validate", str(a), str(c), "--out", str(tmp_path / "p"), "--webhook", url])
    assert res.exit_code == 1  # the validation's verdict, not a crash
    hook = json.loads((tmp_path / "p" / "validation.json").read_text())["webhook"]
    assert hook["ok"] is False and hook["status"] == 500
    # Nobody listening: reported as well.
    closed = "http://127.0.0.1:9/hook"
    res = CliRunner().invoke(_app(), ["validate", str(a), str(a), "--out", str(tmp_path / "q"), "--webhook", closed])
    assert res.exit_code == 0
    hook = json.loads((tmp_path / "q" / "validation.json").read_text())["webhook"]
    assert hook["ok"] is False and hook["error"]


# --- feature log round trip --------------------------------------------------------------------


def _log(folder: Path, histories: list[list[str]], devices: list[str]) -> Path:
    log = FeatureLog(folder)
    for i, (h, d) in enumerate(zip(histories, devices, strict=True)):
        log.append(
            {"ts": 1_700_000_000 + i, "request_id": f"r{i}", "endpoint": "/v1/recommend", "model": {"run_id": "x"},
             "inputs": {"history": h, "n": 5, "context": {"device": d}},
             "outputs": {"items": [{"id": h[0], "score": 1.0}]}, "warnings": []}
        )  # fmt: skip
    log.close()
    return folder


def test_feature_log_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    seqs = [[f"spotify:track:{x}" for x in rng.integers(0, 60, rng.integers(4, 12))] for _ in range(300)]
    device = rng.choice(DEVICES, len(seqs), p=[0.6, 0.3, 0.1])
    store = make_store(
        tmp_path / "s.duckdb",
        seqs,
        [{"kind": "random_sequence", "valid_fraction": 0.2, "test_fraction": 0}],
        ts=[[1_600_000_000 + 60 * j for j in range(len(s))] for s in seqs],
        extra={"ctx_device": [[d] * len(s) for s, d in zip(seqs, device, strict=True)]},
    )
    train = f"store:{store}#random/train"
    rated = make_store(
        tmp_path / "rated.duckdb",
        seqs,
        [{"kind": "random_sequence"}],
        rating=[[4.0] * len(s) for s in seqs],
        extra={"ctx_device": [[d] * len(s) for s, d in zip(seqs, device, strict=True)]},
    )
    # Served requests replay sequences of the same corpus: the same distribution as training.
    picks = rng.choice(len(seqs), 120, replace=False)
    log = _log(tmp_path / "log", [seqs[i] for i in picks], [str(device[i]) for i in picks])
    r = validate_feature_log(train, log)
    assert r.passed, r.summary()
    assert r.candidate.startswith("feature log")
    assert r.feature("context:ctx_device").distance < 0.2
    assert r.feature("events_per_day").skipped == "the candidate has no per-event timestamps"

    # A serving-side transform: ids logged without their URI prefix and devices capitalised.
    bad = _log(
        tmp_path / "bad",
        [[x.rsplit(":", 1)[1] for x in seqs[i]] for i in picks],
        [str(device[i]).capitalize() for i in picks],
    )
    # A log without the context the model was trained with is a skew; ratings it cannot hold.
    plain = FeatureLog(tmp_path / "plain")
    for i in picks[:30]:
        plain.append({"ts": 1_700_000_000, "request_id": f"p{i}", "inputs": {"history": seqs[i]}})
    plain.close()
    r = validate_feature_log(f"store:{rated}#random/train", tmp_path / "plain")
    findings = {(f.column, f.check): f for f in r.schema}
    assert findings[("ctx_device", "column")].severity == "error"
    assert findings[("rating", "column")].severity == "note"
    assert findings[("rating", "column")].found == "absent (this kind of data cannot hold it)"
    with pytest.raises(InputError, match="no feature log here"):
        validate_feature_log(train, tmp_path / "absent")

    r = validate_feature_log(train, bad, Thresholds())
    assert not r.passed
    assert {"unknown_items", "context:ctx_device"} <= {f.name for f in r.failures()}
    fmt = [f for f in r.schema_errors if f.column == "item"]
    assert fmt and fmt[0].expected.startswith("uri spotify:track:") and fmt[0].found.startswith("integer")


def test_a_profile_logs_ratings_are_checked_against_the_references(tmp_path: Path) -> None:
    """Rated profiles (the autoencoder's requests) bring their ratings to drift and scale checks;
    a reference without timestamps notes the log's request times instead of failing on them."""
    rng = np.random.default_rng(5)
    seqs = [[str(x) for x in rng.choice(80, rng.integers(5, 15), replace=False)] for _ in range(300)]
    ratings = [[float(r) for r in rng.integers(5, 11, len(s))] for s in seqs]  # 5-10 of 1-10
    ratings[0][0] = 1.0
    store = make_store(tmp_path / "rated.duckdb", seqs, [{"kind": "random_sequence"}], rating=ratings)

    def log(name: str, scale) -> Path:
        folder = FeatureLog(tmp_path / name)
        for i in rng.choice(len(seqs), 150, replace=False):
            given: list[float | None] = [scale(r) for r in ratings[i]]
            if i % 10 == 0:
                given[-1] = None  # some profiles hold an unrated title, as the page sends
            folder.append(
                {"ts": 1_700_000_000, "request_id": f"{name}{i}", "endpoint": "/v1/recommend",
                 "inputs": {"history": seqs[i], "ratings": given, "n": 5}}
            )  # fmt: skip
        folder.close()
        return tmp_path / name

    same = validate_feature_log(str(store), log("same", lambda r: r))
    assert same.passed, same.summary()
    assert same.feature("rating").skipped is None and same.feature("rating").distance < 0.1
    ts = {(f.column, f.check): f for f in same.schema}[("ts", "column")]
    assert ts.severity == "note" and ts.found == "present (request times)"
    # A client that sends ratings on a 1-5 scale to a 1-10 model: inside the scale, so the server
    # takes them; only the ratings' drift shows it.
    halved = validate_feature_log(str(store), log("halved", lambda r: float(np.ceil(r / 2))))
    assert [f.name for f in halved.failures()] == ["rating"], halved.summary()
    # Fractional ratings against whole ones are a schema error.
    fractional = validate_feature_log(str(store), log("frac", lambda r: r - 0.5))
    assert ("rating", "integrality") in {(f.column, f.check) for f in fractional.schema_errors}


def test_source_file_against_the_store_it_joins(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    seqs = _seqs(rng, n=80)
    ratings = [[float(rng.integers(1, 6)) for _ in s] for s in seqs]
    store = make_store(tmp_path / "s.duckdb", seqs, rating=ratings)

    def csv(name: str, scale: float) -> Path:
        lines = ["user,item,stars"] + [
            f"u{u},i{x},{r * scale:g}" for u, (s, rs) in enumerate(zip(seqs, ratings, strict=True)) for x, r in zip(s, rs, strict=True)
        ]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        return tmp_path / name

    same = validate(f"store:{store}", f"csv:{csv('same.csv', 1)}?user=user&item=item&rating=stars")
    assert same.passed, same.summary()
    assert same.candidate.startswith("source tabular")
    scaled = validate(f"store:{store}", f"csv:{csv('x2.csv', 2)}?user=user&item=item&rating=stars")
    assert ("rating", "scale") in {(f.column, f.check) for f in scaled.schema_errors}
    assert not scaled.feature("rating").passed


# --- specs and thresholds --------------------------------------------------------------------


def test_specs() -> None:
    s = parse_spec("store:data/x.duckdb#random/valid")
    assert (s.kind, s.path, s.split, s.part) == ("store", "data/x.duckdb", "random", "valid")
    assert parse_spec("x.duckdb").kind == "store"
    s = parse_spec("csv:r.csv?user=userId&item=movieId&timestamp_unit=ms")
    assert s.kind == "csv" and s.options == {"user": "userId", "item": "movieId", "timestamp_unit": "ms"}
    assert parse_spec("synthetic:?n_playlists=50").options == {"n_playlists": 50}
    with pytest.raises(ConfigError, match="say what it is"):
        parse_spec("r.csv")
    with pytest.raises(ConfigError, match="not key=value"):
        parse_spec("csv:r.csv?user")


def test_default_thresholds_file_matches_the_built_in_defaults(tmp_path: Path) -> None:
    assert Thresholds.load(ROOT / "configs" / "validation.toml") == Thresholds()
    (tmp_path / "t.toml").write_text("[drift]\npopularity = 0.1\npopularrity = 0.2\n")
    with pytest.raises(ConfigError, match=r"unknown key 'popularrity' in \[drift\]"):
        Thresholds.load(tmp_path / "t.toml")
