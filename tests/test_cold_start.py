"""Cold-start items with a transformer that composes item vectors from side features: features-only
models, new items composed as at training time, the cold/warm report, and items added to a served
model without a restart."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from featurehelp import N_OLD, feature_store
from segue.cli import app as cli_app
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.store import Store
from segue.data.vocab import N_SPECIAL
from segue.evaluation.cold import cold_warm_metrics
from segue.evaluation.evaluator import evaluate
from segue.evaluation.report import compute_stats, render_markdown
from segue.models.base import load_model
from segue.models.item_encoder import gather_features
from segue.models.popularity import Popularity
from segue.models.transformer import TransformerConfig, TransformerRecommender
from segue.serving.app import create_app
from segue.serving.cli import serve_in_thread
from segue.serving.items import add_items
from segue.training.transformer_task import TransformerTask

FEATURES = ["artist", "album", "genre"]
ADMIN = "test-admin-key"


def config(**items) -> TransformerConfig:
    return TransformerConfig.model_validate(
        {
            "model": {"n_layers": 1, "n_heads": 2, "d_model": 16, "d_ff": 32, "dropout": 0.0, "context_length": 16},
            "loss": {"kind": "sampled", "n_negatives": 16},
            "optim": {"lr": 1e-2, "warmup_steps": 0, "schedule": "constant"},
            "items": {"features": FEATURES, **items},
            "trainer": {"max_steps": 40, "eval_every": 1000, "progress": False,
                        "loader": {"batch_size": 16, "context_length": 16, "bucket_lengths": [16]}},
        }
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return feature_store(tmp_path_factory.mktemp("cold") / "s.duckdb")


def fitted(store: Path, folder: Path, **items) -> TransformerRecommender:
    with Store.open(store) as st:
        model = TransformerRecommender(config(**items)).fit(SplitData.load(st, "temporal"))
    model.save(folder)
    return model


@pytest.fixture(scope="module")
def feat_only(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("m") / "features_only"
    fitted(store, folder, id_dropout=1.0)
    return folder


@pytest.fixture(scope="module")
def mixed(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("m") / "mixed"
    fitted(store, folder, id_dropout=0.5)
    return folder


def twins(vocab) -> tuple[int, int]:
    """Two training tokens whose items share artist, album and genres (same i % 3 and i % 2)."""
    tok = {e: t for t, e in enumerate(vocab.external_ids) if e is not None}
    for i in range(N_OLD):
        j = i + 6
        if f"i{i}" in tok and f"i{j}" in tok:
            return tok[f"i{i}"], tok[f"i{j}"]
    raise AssertionError("no twin items in the vocabulary")


def test_dropout_one_is_a_features_only_model(feat_only: Path, mixed: Path) -> None:
    model = load_model(feat_only)
    a, b = twins(model.vocab)
    emb = model.item_embeddings()
    np.testing.assert_allclose(emb[a], emb[b], rtol=1e-6)  # same features: the same vector
    # the id table never moved from its initial values (it got no gradient)
    init = model.build(len(model.vocab)).item_emb[...]
    np.testing.assert_array_equal(np.asarray(model.network.item_emb[...])[N_SPECIAL:], np.asarray(init)[N_SPECIAL:])
    other = load_model(mixed).item_embeddings()  # with ids (dropped half the time) twins differ
    assert not np.allclose(other[a], other[b])


def test_new_item_vector_equals_the_training_time_vector(store: Path, feat_only: Path, tmp_path: Path) -> None:
    model = load_model(feat_only)
    a, _ = twins(model.vocab)
    # the vector the training step composes for token a (the task's own arrays)
    with Store.open(store) as st:
        task = TransformerTask(model.config, SplitData.load(st, "temporal"))
    net = model.network
    tokens = np.array([a])
    at_training = np.asarray(net.item_encoder.compose(net.item_emb[...][tokens], tokens, gather_features(task.feats, tokens)))
    np.testing.assert_allclose(model.item_embeddings()[a], at_training[0], rtol=1e-5, atol=1e-7)
    # a new item with a's features, added from a Parquet, gets the same vector
    with Store.open(store) as st:
        row = st.con.execute("SELECT name, creator, album, meta FROM items WHERE external_id = ?", [model.vocab.external_ids[a]]).fetchone()
    p = tmp_path / "new.parquet"
    pq.write_table(pa.table({"item": ["brand-new"], "name": [row[0]], "creator": [row[1]], "album": [row[2]], "meta": [row[3]]}), p)
    run = tmp_path / "run"
    model.save(run)
    assert add_items(run, p)["added"] == 1
    from segue.serving.engine import Engine

    engine = Engine.load(run)
    new = engine.vocab.encode_external(["brand-new"])[0][0]
    assert new == len(model.vocab) and new in engine.features_only
    np.testing.assert_allclose(engine.model.item_embeddings()[new], at_training[0], rtol=1e-5, atol=1e-7)


def test_cold_warm_subsets_unit() -> None:
    ranked = np.array([[7, 5, 9], [4, 8, 6]])
    offsets = np.array([0, 2, 3])
    original = np.array([5, -100, 6])  # query 0: warm 5 and a cold item; query 1: warm 6
    keys = np.array([5, 9, 6])  # the cold item became token 9
    m = cold_warm_metrics(ranked, offsets, original, keys, (1, 3))
    assert m["cold_hr@3"][0] == 1.0 and np.isnan(m["cold_hr@3"][1])  # query 1 has no cold target
    assert m["cold_hr@1"][0] == 0.0 and m["warm_hr@3"].tolist() == [1.0, 1.0]
    assert m["cold_ndcg@3"][0] == pytest.approx(1 / np.log2(4))


def test_temporal_report_splits_cold_and_warm(store: Path, mixed: Path) -> None:
    with Store.open(store) as st:
        pop = Popularity().fit(SplitData.load(st, "temporal"))
    feat = load_model(mixed)
    n_vocab = feat.score(SequenceArrays.from_lists([[N_SPECIAL]])).shape[1]
    res = evaluate({"popularity": pop, "features": feat}, store, "temporal", "temporal", ks=[5, 10])
    assert 0 < res.cold_share < 1
    # The evaluator scored a copy that ranks every store item outside the vocabulary, features-only;
    # the model passed in is left as it was.
    assert any("also ranks 6 store items" in n for n in res.notes)
    assert feat.extra_item_ids == [] and feat.score(SequenceArrays.from_lists([[N_SPECIAL]])).shape[1] == n_vocab
    with Store.open(store) as st:
        assert len(feat.with_store_items(st).extra_item_ids) == 6 and feat.extra_item_ids == []
    cold_pop = res.models["popularity"].per_user["cold_hr@10"]
    assert np.nanmax(cold_pop) == 0.0  # an id-only model cannot hit a cold target
    cold_feat = res.models["features"].per_user["cold_hr@10"]
    assert np.nanmean(cold_feat) > 0.0  # with features, cold targets are hittable
    assert np.isnan(cold_feat).sum() == np.isnan(cold_pop).sum() > 0  # queries without cold targets
    text = render_markdown(res, compute_stats(res, n_boot=50))
    assert "Cold and warm targets" in text and f"{100 * res.cold_share:.1f}%" in text


def test_items_add_on_a_served_model_without_restart(mixed: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "served"
    shutil.copytree(mixed, run)
    app = create_app(run, admin_key=ADMIN, use_env_admin_key=False)
    with serve_in_thread(app) as server:
        c = httpx.Client(base_url=server.url, timeout=300)  # first requests compile the scoring
        body = {"history": ["i0", "i3", "i6"], "n": 60}
        before = c.post("/v1/recommend", json=body).json()["items"]
        assert "fresh-A" not in {x["id"] for x in before}
        p = tmp_path / "items.parquet"
        pq.write_table(pa.table({"item": ["fresh-A"], "name": ["Fresh"], "artist": ["A"], "album": ["A album 0"],
                                 "genre": ["rock, pop"]}), p)
        # --server posts /admin/reload with the admin key once the items are written
        res = CliRunner().invoke(cli_app, ["items", "add", str(run), str(p), "--server", server.url, "--admin-key", ADMIN])
        assert res.exit_code == 0, res.output
        assert "reloaded" in res.output
        after = c.post("/v1/recommend", json=body).json()["items"]
        new = [x for x in after if x["id"] == "fresh-A"]
        assert new and new[0]["features_only"] is True and new[0]["name"] == "Fresh"
        assert not any(x.get("features_only") for x in after if x["id"] != "fresh-A")
        # the new item also reads as history input
        assert c.post("/v1/recommend", json={"history": ["fresh-A"], "n": 5}).status_code == 200
    # adding it twice names the file, row and field
    res = CliRunner().invoke(cli_app, ["items", "add", str(run), str(p)])
    assert res.exit_code == 2 and "row 1" in res.output and "already in the run" in res.output


def test_items_add_names_repeats_ignored_columns_and_merges_integer_ids(mixed: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(mixed, run)
    # an id repeated in the file is said to be repeated, not to be in the run already
    dup = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"item": ["n1", "n1"], "name": ["A", "B"]}), dup)
    res = CliRunner().invoke(cli_app, ["items", "add", str(run), str(dup)])
    assert res.exit_code == 2 and "row 2" in res.output and "repeated (first in row 1)" in res.output, res.output
    assert not (run / "items_added.parquet").exists()
    # a misspelt feature column is read by nothing: a warning names it; the items are added
    typo = tmp_path / "typo.parquet"
    pq.write_table(pa.table({"item": ["n2"], "name": ["N2"], "artsit": ["A"], "album": ["A album 0"]}), typo)
    res = CliRunner().invoke(cli_app, ["items", "add", str(run), str(typo)])
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "column(s) artsit not read by this run" in out and "added 1 item(s)" in out, res.output
    # integer ids after text ids: stored as text (the merge had failed with an Arrow type error)
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"item": [77], "name": ["Seventy-seven"]}), ints)
    res = CliRunner().invoke(cli_app, ["items", "add", str(run), str(ints)])
    # the one warning: the item has no feature value at all (walk s12 scale F4), none of types
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "(2 added in all)" in out and out.count("warning") == 1, res.output
    assert "1 item(s) with no feature value at all (row 1: 77)" in out
    assert pq.read_table(run / "items_added.parquet").column("item").to_pylist() == ["n2", "77"]
    # a column typed unlike the earlier added items' is named
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"item": ["n3"], "name": [3.5]}), bad)
    res = CliRunner().invoke(cli_app, ["items", "add", str(run), str(bad)])
    assert res.exit_code == 2 and "field 'name'" in res.output and "column 'name' holds double" in " ".join(res.output.split()), res.output


def test_added_items_are_served_after_a_restart(mixed: Path, tmp_path: Path) -> None:
    """`segue serve` on a run with added items (the path workers load by, memory-mapped arrays and
    all) serves them from the start, /v1/rank marking them features_only as /v1/recommend does."""
    import shutil

    from segue.serving.workers import ServeSettings, build_app

    run = tmp_path / "restarted"
    shutil.copytree(mixed, run)
    p = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item": ["fresh-B"], "name": ["Fresh B"], "artist": ["A"], "album": ["A album 0"]}), p)
    assert add_items(run, p)["added"] == 1
    with serve_in_thread(build_app(ServeSettings(model=run, admin=False))) as server:
        c = httpx.Client(base_url=server.url, timeout=300)
        assert c.get("/healthz").json()["n_items"] == len(load_model(mixed).vocab) - N_SPECIAL + 1
        ranked = c.post("/v1/rank", json={"history": ["i0", "i3"], "items": ["fresh-B", "i5"]}).json()
        assert ranked["warnings"] == [] and {x["id"] for x in ranked["items"]} == {"fresh-B", "i5"}
        by_id = {x["id"]: x for x in ranked["items"]}
        assert by_id["fresh-B"]["features_only"] is True and "features_only" not in by_id["i5"]
        assert by_id["fresh-B"]["name"] == "Fresh B"


def test_items_add_through_the_registry_reloads_the_served_version(mixed: Path, tmp_path: Path) -> None:
    """`segue items add models:/m@production` on a model served from the registry: a new version
    (parent: the served one) holds the item, production moves to it, and the running server reloads
    it, so the next request ranks the new item (features-only) with no restart."""
    from segue.ops.registry import Registry
    from segue.serving.cli import resolve_model

    reg = Registry(tmp_path / "reg")
    v1 = reg.register("m", mixed, store_checksum="abc", split="temporal").version
    reg.promote("m", v1)
    folder = resolve_model("models:/m@production", str(reg.location))
    p = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item": ["fresh-R"], "name": ["Fresh R"], "artist": ["B"], "album": ["B album 1"], "genre": ["jazz"]}), p)
    body = {"history": ["i1", "i4", "i7"], "n": 60}
    with serve_in_thread(create_app(folder, admin_key=ADMIN, use_env_admin_key=False, feature_log=None)) as server:
        c = httpx.Client(base_url=server.url, timeout=300)
        res = CliRunner().invoke(cli_app, ["items", "add", "models:/m@production", str(p), "--registry", str(reg.location),
                                           "--server", server.url, "--admin-key", ADMIN])
        assert res.exit_code == 0, res.output
        v2 = reg.alias("m", "production")
        assert v2 != v1 and reg.version("m", v2).parent == v1
        assert c.get("/healthz").json()["model"]["run_id"] == f"m-v{v2}"
        new = [x for x in c.post("/v1/recommend", json=body).json()["items"] if x["id"] == "fresh-R"]
        assert new and new[0]["features_only"] is True and new[0]["name"] == "Fresh R"
    assert not (folder / "items_added.parquet").exists()  # the parent version is unchanged
    # a bad file registers nothing and leaves production where it was
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"name": ["no id"]}), bad)
    res = CliRunner().invoke(cli_app, ["items", "add", "models:/m@production", str(bad), "--registry", str(reg.location)])
    assert res.exit_code == 2 and "no column 'item'" in res.output
    assert len(reg.versions("m")) == 2 and reg.alias("m", "production") == v2
