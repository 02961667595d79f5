"""Feature vocabularies and per-token arrays: fitted on the training items only, composed alike for new items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurehelp import N_OLD, content_parquet, feature_store
from segue.data.arrays import SplitData
from segue.data.item_features import (
    UNK_ROW,
    ItemFeatures,
    fit_item_features,
    raw_features,
    read_content_vectors,
    store_item_rows,
    title_words,
)
from segue.data.store import Store
from segue.data.vocab import N_SPECIAL
from segue.errors import ConfigError, InputError
from segue.models.item_encoder import ItemEncoderConfig

FEATURES = ["artist", "album", "genre", "title_words"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return feature_store(tmp_path_factory.mktemp("feat") / "s.duckdb")


def fit(path: Path, **kw) -> ItemFeatures:
    with Store.open(path) as st:
        data = SplitData.load(st, "temporal")
        return fit_item_features(st, data.vocab, FEATURES, **kw)


def test_vocabularies_are_fitted_on_training_items_only(store: Path) -> None:
    f = fit(store)
    # 'Late Artist' and its album only appear after the cut: not in the vocabularies.
    assert set(f.vocabs["artist"].values) == {"A", "B", "C"}
    assert not any("Late" in v or "album 9" in v for v in f.vocabs["album"].values)
    assert "late" not in f.vocabs["title_words"].values and "song" in f.vocabs["title_words"].values
    # counts are counts of training items, and the id counts are the training vocabulary's
    with Store.open(store) as st:
        vocab = SplitData.load(st, "temporal").vocab
    assert sum(f.vocabs["artist"].counts) == vocab.n_items <= N_OLD
    np.testing.assert_array_equal(f.id_count[N_SPECIAL:], vocab.counts[N_SPECIAL:])
    assert (f.id_count[:N_SPECIAL] == 0).all()
    # multi-valued genres: both values kept, padded with row 0
    assert f.vocabs["genre"].width == 2


def test_new_items_encode_with_unk_per_feature(store: Path) -> None:
    f = fit(store)
    rows = [{"creator": "A", "album": "A album 0", "name": "Brand new", "meta": {"genres": "rock, polka"}},
            {"creator": "Nobody", "album": None, "name": None, "meta": "{}"}]
    arr = f.encode_new(raw_features(FEATURES, rows))
    assert arr["f_artist"][0, 0] >= 2 and arr["f_artist"][1, 0] == UNK_ROW
    assert arr["f_album"][1, 0] == 0  # no value: row 0, pooled as nothing
    genre = arr["f_genre"][0]
    assert genre[0] >= 2 and genre[1] == UNK_ROW  # 'polka' was never seen
    assert (arr["id_count"] == 0).all()
    # the same raw features as a training item give that item's arrays
    with Store.open(store) as st:
        vocab = SplitData.load(st, "temporal").vocab

        t = N_SPECIAL + 3
        again = f.encode_new(raw_features(FEATURES, store_item_rows(st, vocab.item_ids[t : t + 1])))
    for name in FEATURES:
        np.testing.assert_array_equal(again[f"f_{name}"][0], f.index[name][t])


def test_saved_features_round_trip(store: Path, tmp_path: Path) -> None:
    f = fit(store, content=content_parquet(tmp_path / "c.parquet"))
    f.save(tmp_path)
    g = ItemFeatures.load(tmp_path)
    assert g.vocabs["album"].values == f.vocabs["album"].values
    for k, v in f.arrays().items():
        np.testing.assert_array_equal(g.arrays()[k], v)
    np.testing.assert_allclose(g.content_mean, f.content_mean)


def _fitted_state(f: ItemFeatures, external_ids: list) -> dict:
    """Everything fitted, keyed by item external id (token order may differ between stores, as
    store item ids follow first appearance); floats rounded (summation order)."""
    out: dict = {n: (v.values, v.counts, v.width) for n, v in f.vocabs.items()}
    arrays = f.arrays()
    for t, e in enumerate(external_ids):
        out[e] = {k: np.round(v[t], 4).tolist() for k, v in arrays.items()}
    out["content_stats"] = (np.round(f.content_mean, 4).tolist(), np.round(f.content_std, 4).tolist())
    return out


def test_temporal_leakage_nothing_fitted_after_the_cut(tmp_path: Path) -> None:
    """Two stores equal before the cut, different after it (more plays of old items, new items,
    new artists; content vectors of post-cut items moved far): everything fitted is identical."""
    a = feature_store(tmp_path / "a.duckdb", after_cut=False)
    b = feature_store(tmp_path / "b.duckdb", after_cut=True, extra_after=6)
    ca = content_parquet(tmp_path / "ca.parquet", shift_new=0.0)
    cb = content_parquet(tmp_path / "cb.parquet", shift_new=50.0)
    fa, fb = fit(a, content=ca), fit(b, content=cb)
    with Store.open(a) as sa, Store.open(b) as sb:
        ea, eb = SplitData.load(sa, "temporal").vocab.external_ids, SplitData.load(sb, "temporal").vocab.external_ids
    assert _fitted_state(fa, ea) == _fitted_state(fb, eb)
    # and the check has teeth: fitting on every item of store b differs
    with Store.open(b) as st:
        vocab = SplitData.load(st, "temporal").vocab
        ids = np.asarray([r[0] for r in st.con.execute("SELECT item_id FROM items ORDER BY item_id").fetchall()])
        rows = raw_features(["artist"], store_item_rows(st, ids))
    assert "Late Artist" in {v for vals in rows["artist"] for v in vals}
    assert "Late Artist" not in fb.vocabs["artist"].values and len(vocab) == len(fb.id_count)


def test_content_vectors_bad_input_names_the_row(tmp_path: Path) -> None:
    p = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"item": ["i1", "i2"], "vector": [[1.0, 2.0], [1.0]]}), p)
    with pytest.raises(InputError, match=r"row 2.*vector"):
        read_content_vectors(p)
    pq.write_table(pa.table({"id": ["i1"]}), p)
    with pytest.raises(InputError, match="no column 'item'"):
        read_content_vectors(p)
    ext, arr = read_content_vectors(content_parquet(tmp_path / "ok.parquet"))
    assert arr.shape == (len(ext), 4)


def test_config_checks() -> None:
    assert not ItemEncoderConfig().enabled
    with pytest.raises(ConfigError, match="unknown feature 'colour'"):
        ItemEncoderConfig(features=["colour"])
    with pytest.raises(Exception, match="use_id is false"):
        ItemEncoderConfig(use_id=False)
    assert ItemEncoderConfig(features=["meta.year"]).enabled
    assert title_words("Toy Story (1995)") == ["toy", "story", "1995"]


def test_encoder_parts_content_and_projection() -> None:
    import jax.numpy as jnp
    from flax import nnx

    from segue.models.item_encoder import ItemEncoder

    cfg = ItemEncoderConfig(features=["artist"], content="vectors.parquet", combine="project", id_min_count=2)
    enc = ItemEncoder(cfg, (("artist", 5, 1),), 3, 8, 0.5, nnx.Rngs(0))
    table = np.asarray(enc.tables[0][...])
    assert not table[1].any() and table[2:].std() > 0.1  # <unk> starts at zero, known values random
    rng = np.random.default_rng(0)
    tokens = jnp.array([4, 5, 6])
    feats = {"f_artist": jnp.array([[2], [2], [0]]), "id_count": jnp.array([3, 1, 3]),
             "content": jnp.asarray(rng.normal(size=(3, 3)), jnp.float32), "has_content": jnp.array([1.0, 1.0, 0.0])}
    ids = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
    out = np.asarray(enc.compose(ids, tokens, feats))
    assert out.shape == (3, 8)
    moved = feats | {"content": feats["content"].at[2].set(9.0)}  # item 6 has no content vector
    np.testing.assert_allclose(np.asarray(enc.compose(ids, tokens, moved))[2], out[2])
    other_ids = ids.at[1].set(7.0)  # item 5 is below id_min_count: its id is not used
    np.testing.assert_allclose(np.asarray(enc.compose(other_ids, tokens, feats))[1], out[1])
    assert not np.allclose(np.asarray(enc.compose(other_ids.at[0].set(7.0), tokens, feats))[0], out[0])


def test_disabled_items_leave_the_plain_network_as_it_was() -> None:
    from flax import nnx

    from segue.models.neural import flat_weights
    from segue.models.transformer import ModelConfig, SequenceTransformer

    tiny = ModelConfig(n_layers=1, n_heads=2, d_model=8, d_ff=16, context_length=6)
    plain = flat_weights(SequenceTransformer(tiny, 20, nnx.Rngs(0)), nnx.Param)
    off = flat_weights(SequenceTransformer(tiny, 20, nnx.Rngs(0), items=ItemEncoderConfig()), nnx.Param)
    on = flat_weights(SequenceTransformer(tiny, 20, nnx.Rngs(0), items=ItemEncoderConfig(features=["artist"]), item_shapes=(("artist", 4, 1),)), nnx.Param)
    assert plain.keys() == off.keys() and all(np.array_equal(plain[k], off[k]) for k in plain)
    extra = set(on) - set(plain)
    assert extra and all(k.startswith("item_encoder/") for k in extra)
    assert all(np.array_equal(plain[k], on[k]) for k in plain)  # made last: the plain init does not move
