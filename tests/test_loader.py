"""Training batches (transforms, bucketing, determinism, exact resume) and scoring inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datahelp import build_from_table, make_store, read_beauty
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.loader import (
    LoaderConfig,
    SequenceSource,
    iter_eval_batches,
    make_train_loader,
    pad_histories,
)
from segue.data.splits import Part
from segue.data.store import Store
from segue.data.vocab import EOP, START, UNK
from segue.errors import ConfigError


def corpus(n: int = 203, seed: int = 0, max_len: int = 40) -> SequenceArrays:
    rng = np.random.default_rng(seed)
    rows = [rng.integers(4, 500, rng.integers(1, max_len + 1)) for _ in range(n)]
    rows[5] = np.array([], dtype=np.int64)  # empty rows are never trained on
    rows[17] = np.array([], dtype=np.int64)
    a = SequenceArrays.from_lists(rows)
    a.rating = (np.arange(a.n_events) % 5 + 1).astype(np.float32)
    a.feedback = {"play": np.linspace(0, 1, a.n_events).astype(np.float32)}
    a.context = {"device": (np.arange(a.n_events) % 3).astype(np.int32)}
    return a


def take(loader, n: int) -> list[dict[str, np.ndarray]]:
    return [next(loader) for _ in range(n)]


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


def test_start_shift_padding_and_mask() -> None:
    a = SequenceArrays.from_lists([[10, 11, 12], [20, UNK, 22, 23]])
    cfg = LoaderConfig(batch_size=2, context_length=8, bucketing=False, shuffle=False, num_epochs=1)
    (b,) = list(make_train_loader(a, cfg))
    assert b["rows"].tolist() == [0, 1]
    assert b["inputs"].tolist() == [[START, 10, 11, 12, EOP, EOP, EOP, EOP], [START, 20, UNK, 22, 23, EOP, EOP, EOP]]
    assert b["targets"].tolist() == [[10, 11, 12, EOP, EOP, EOP, EOP, EOP], [20, UNK, 22, 23, EOP, EOP, EOP, EOP]]
    # true up to and including the first <eop> target; never on an <unk> target
    assert b["mask"].astype(int).tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1, 0, 1, 1, 1, 0, 0, 0]]
    assert b["lengths"].tolist() == [4, 5]
    assert b["positions"].tolist() == [list(range(8))] * 2
    assert b["inputs"].dtype == np.int32 and b["mask"].dtype == bool


def test_without_eop_target_the_last_item_is_the_last_label() -> None:
    a = SequenceArrays.from_lists([[10, 11, 12]])
    cfg = LoaderConfig(batch_size=1, context_length=5, bucketing=False, num_epochs=1, eop_target=False)
    (b,) = list(make_train_loader(a, cfg))
    assert b["inputs"].tolist() == [[START, 10, 11, EOP, EOP]]
    assert b["targets"].tolist() == [[10, 11, 12, EOP, EOP]]
    assert b["mask"].astype(int).tolist() == [[1, 1, 1, 0, 0]]


def test_recent_crop_keeps_the_last_items() -> None:
    items = list(range(100, 120))  # 20 items, context 5
    a = SequenceArrays.from_lists([items])
    for eop, want_in, want_tg in [
        (True, items[-5:], [*items[-4:], EOP]),
        (False, items[-6:-1], items[-5:]),
    ]:
        cfg = LoaderConfig(batch_size=1, context_length=5, num_epochs=1, eop_target=eop)
        (b,) = list(make_train_loader(a, cfg))
        assert b["inputs"].tolist() == [want_in] and b["targets"].tolist() == [want_tg]
        assert b["mask"].all() and b["lengths"].tolist() == [5]


def test_random_crop_windows_are_contiguous_and_seeded() -> None:
    items = list(range(100, 120))
    tokens = [START, *items, EOP]
    a = SequenceArrays.from_lists([items] * 4)
    cfg = LoaderConfig(batch_size=4, context_length=5, crop="random", num_epochs=40)
    starts = set()
    for b in make_train_loader(a, cfg, seed=3):
        for inp, tgt in zip(b["inputs"].tolist(), b["targets"].tolist(), strict=True):
            k = tokens.index(inp[0])
            assert inp == tokens[k : k + 5] and tgt == tokens[k + 1 : k + 6]
            starts.add(k)
    assert starts == set(range(0, 22 - 5))  # every window that fits, the first (with <start>) included
    again = list(make_train_loader(a, cfg, seed=3))
    other = list(make_train_loader(a, cfg, seed=4))
    first = list(make_train_loader(a, cfg, seed=3))
    assert same(first, again) and not same(first, other)


def test_unk_injection_rate_inputs_only_and_deterministic() -> None:
    a = corpus(400, max_len=30)
    base = LoaderConfig(batch_size=32, context_length=32, num_epochs=1)
    cfg = base.model_copy(update={"unk_rate": 0.2})
    clean, noisy = list(make_train_loader(a, base, seed=1)), list(make_train_loader(a, cfg, seed=1))
    n_items = n_hit = 0
    for c, x in zip(clean, noisy, strict=True):
        assert np.array_equal(c["rows"], x["rows"])
        assert np.array_equal(c["targets"], x["targets"]) and np.array_equal(c["mask"], x["mask"])
        changed = c["inputs"] != x["inputs"]
        assert np.all(x["inputs"][changed] == UNK)
        items = (c["inputs"] >= 4) & c["mask"]  # real input items (not <start>, not padding)
        assert not np.any(changed & ~items)  # never <start>, never padding
        n_items += int(items.sum())
        n_hit += int(changed.sum())
    assert n_items > 5000
    assert abs(n_hit / n_items - 0.2) < 0.02
    assert same(noisy, list(make_train_loader(a, cfg, seed=1)))


def test_every_training_row_once_per_epoch_in_a_new_order() -> None:
    a = corpus()
    cfg = LoaderConfig(batch_size=16, context_length=12, num_epochs=3)
    loader = make_train_loader(a, cfg, seed=5)
    nb = loader.batches_per_epoch
    assert nb == -(-201 // 16) and loader.n_sequences == 201
    batches = list(loader)
    assert len(batches) == 3 * nb
    orders = []
    for e in range(3):
        rows = np.concatenate([b["rows"] for b in batches[e * nb : (e + 1) * nb]])
        assert all(int(b["epoch"]) == e for b in batches[e * nb : (e + 1) * nb])
        real = rows[rows >= 0]
        assert sorted(real.tolist()) == sorted(a.nonempty().tolist())
        assert (rows < 0).sum() == nb * 16 - 201  # one partial batch, filled with dummy rows
        orders.append(real)
    assert not np.array_equal(orders[0], orders[1])
    dummy = np.concatenate([b["mask"][b["rows"] < 0].ravel() for b in batches])
    assert dummy.size and not dummy.any()  # dummy rows carry no loss


def test_drop_remainder_and_no_shuffle() -> None:
    a = corpus()
    cfg = LoaderConfig(batch_size=16, bucketing=False, shuffle=False, drop_remainder=True, num_epochs=2)
    batches = list(make_train_loader(a, cfg))
    assert len(batches) == 2 * (201 // 16)
    rows = np.concatenate([b["rows"] for b in batches[: 201 // 16]])
    assert rows.tolist() == a.nonempty()[: 16 * (201 // 16)].tolist()
    assert all(b["inputs"].shape == (16, 50) for b in batches)


def test_bucketing_shapes_and_padding_saved() -> None:
    a = corpus(2000, max_len=60)
    bucketed = LoaderConfig(batch_size=32, context_length=50, num_epochs=1)
    assert bucketed.buckets().tolist() == [8, 16, 24, 32, 40, 48, 50]
    shapes, tokens_b = set(), 0
    for b in make_train_loader(a, bucketed):
        width = b["inputs"].shape[1]
        shapes.add(width)
        longest = int(b["lengths"].max())
        assert width in (8, 16, 24, 32, 40, 48, 50) and longest <= width
        assert width == min(x for x in (8, 16, 24, 32, 40, 48, 50) if x >= longest)  # the smallest that fits
        assert b["mask"].sum() == (b["lengths"]).sum()  # no <unk> in this corpus: one label per column
        tokens_b += b["inputs"].size
    assert len(shapes) >= 5
    plain = LoaderConfig(batch_size=32, context_length=50, num_epochs=1, bucketing=False)
    tokens_p = sum(b["inputs"].size for b in make_train_loader(a, plain))
    assert tokens_p == 63 * 32 * 50 and tokens_b < 0.75 * tokens_p
    custom = LoaderConfig(batch_size=32, context_length=50, bucket_lengths=[16, 32, 64], num_epochs=1)
    assert custom.buckets().tolist() == [16, 32, 50]
    assert {b["inputs"].shape[1] for b in make_train_loader(a, custom)} <= {16, 32, 50}


def test_extras_are_aligned_with_inputs_and_targets() -> None:
    a = corpus(50, max_len=10)
    cfg = LoaderConfig(batch_size=8, context_length=12, num_epochs=1)
    for b in make_train_loader(a, cfg):
        for i, r in enumerate(b["rows"]):
            if r < 0:
                continue
            lo, n = int(a.offsets[r]), int(a.lengths[r])
            ev = np.arange(lo, lo + n)
            # inputs: <start>, items; targets: items, <eop>
            assert b["rating"][i, 1 : n + 1].tolist() == a.rating[ev].tolist() and b["rating"][i, 0] == 0
            assert b["target_rating"][i, :n].tolist() == a.rating[ev].tolist() and b["target_rating"][i, n] == 0
            assert b["fb_play"][i, 1 : n + 1].tolist() == a.feedback["play"][ev].tolist()
            assert b["target_ctx_device"][i, :n].tolist() == a.context["device"][ev].tolist()
            assert b["ctx_device"][i, 0] == -1 and np.all(b["ctx_device"][i, n + 1 :] == -1)
            assert np.all(b["fb_play"][i, n + 1 :] == 0)
    plain = next(make_train_loader(a, cfg.model_copy(update={"extras": False})))
    assert "rating" not in plain and "target_fb_play" not in plain


@pytest.mark.parametrize("threads", [0, 1])
def test_resume_gives_exactly_the_uninterrupted_batches(threads: int) -> None:
    a = corpus()
    cfg = LoaderConfig(batch_size=16, context_length=20, unk_rate=0.1, crop="random", prefetch_threads=threads)
    nb = make_train_loader(a, cfg, seed=9).batches_per_epoch  # 13 batches an epoch
    N, M = nb - 3, 8  # the resumed part crosses the epoch boundary
    reference = take(make_train_loader(a, cfg, seed=9), N + M)
    first = make_train_loader(a, cfg, seed=9)
    head = take(first, N)
    state = json.loads(json.dumps(first.get_state()))  # survives a round trip through JSON
    assert state["grain"] == {"next_index": N}
    fresh = make_train_loader(a, cfg, seed=9)
    fresh.set_state(state)
    tail = take(fresh, M)
    assert same(head + tail, reference)
    assert {int(b["epoch"]) for b in tail} == {0, 1}
    assert fresh.step == N + M


def test_resume_with_a_finite_number_of_epochs_ends_where_it_should() -> None:
    a = corpus(40)
    cfg = LoaderConfig(batch_size=8, num_epochs=2)
    full = list(make_train_loader(a, cfg))
    assert len(full) == 10
    first = make_train_loader(a, cfg)
    take(first, 7)
    resumed = make_train_loader(a, cfg)
    resumed.set_state(first.get_state())
    assert same(list(resumed), full[7:])


def test_state_of_another_loader_is_refused() -> None:
    a = corpus()
    state = make_train_loader(a, LoaderConfig(batch_size=16), seed=1).get_state()
    with pytest.raises(ConfigError, match="other training data, loader config or seed"):
        make_train_loader(a, LoaderConfig(batch_size=16), seed=2).set_state(state)
    with pytest.raises(ConfigError, match="other training data"):
        make_train_loader(a, LoaderConfig(batch_size=32), seed=1).set_state(state)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="bucket_lengths"):
        LoaderConfig.from_dict({"bucket_lengths": [32, 16]})
    with pytest.raises(ConfigError, match="below context_length"):
        LoaderConfig.from_dict({"context_length": 50, "bucket_lengths": [8, 16]})
    with pytest.raises(ConfigError, match="unk_rate"):
        LoaderConfig.from_dict({"unk_rate": 1.5})
    with pytest.raises(ConfigError, match="no nonempty rows"):
        make_train_loader(SequenceArrays.from_lists([[], []]), LoaderConfig())
    with pytest.raises(ConfigError, match="make no batch"):
        make_train_loader(SequenceArrays.from_lists([[5]]), LoaderConfig(drop_remainder=True))


def test_pad_histories_left_and_right() -> None:
    a = SequenceArrays.from_lists([[10, 11, 12], [], list(range(100, 110))])
    left = pad_histories(a, context_length=6)
    assert left.inputs.tolist() == [
        [START, 10, 11, 12, EOP, EOP],
        [START, EOP, EOP, EOP, EOP, EOP],
        [104, 105, 106, 107, 108, 109],  # cropped to the last 6 tokens
    ]
    assert left.last.tolist() == [3, 0, 5] and left.lengths.tolist() == [4, 1, 6]
    assert left.positions[0].tolist() == [0, 1, 2, 3, 0, 0]
    right = pad_histories(a, np.array([0, 1]), context_length=6, align="right", pad_to=8)
    assert right.inputs.tolist() == [
        [EOP, EOP, EOP, EOP, START, 10, 11, 12],
        [EOP, EOP, EOP, EOP, EOP, EOP, EOP, START],
    ]
    assert right.last.tolist() == [7, 7] and right.positions[0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3]
    assert right.rows.tolist() == [0, 1]
    with pytest.raises(ValueError, match="pad_to"):
        pad_histories(a, context_length=6, pad_to=4)


def test_eval_batches_cover_every_row_once_with_bucket_shapes() -> None:
    a = corpus(300, max_len=70)
    seen = []
    for e in iter_eval_batches(a, batch_size=64, context_length=50):
        assert e.inputs.shape[1] in (8, 16, 24, 32, 40, 48, 50)
        assert int(e.lengths.max()) <= e.inputs.shape[1]
        for i, r in enumerate(e.rows):
            hist = a.row(r).tolist()
            want = ([START, *hist])[-50:]
            assert e.inputs[i, : e.lengths[i]].tolist() == want
            assert e.inputs[i, e.last[i]] == want[-1]
        seen.extend(e.rows.tolist())
    assert sorted(seen) == list(range(300))


def test_loader_over_a_real_store(tmp_path: Path) -> None:
    seqs = [[1, 2, 3, 4, 5], [2, 3, 4], [5, 1], [9, 8, 7, 6, 5, 4]]
    path = make_store(tmp_path / "s.duckdb", seqs, [{"kind": "leave_last_out"}])
    with Store.open(path) as store:
        data = SplitData.load(store, "loo")
        cfg = LoaderConfig(batch_size=4, context_length=8, shuffle=False, bucketing=False, num_epochs=1)
        (b,) = list(make_train_loader(data.train, cfg))
        ext = dict(store.con.execute("SELECT item_id, external_id FROM items").fetchall())
    for i, r in enumerate(b["rows"]):
        n = int(b["lengths"][i]) - 1
        train_items = seqs[r][:-2] if len(seqs[r]) >= 3 else seqs[r]
        got = [ext[int(data.vocab.item_ids[t])] for t in b["inputs"][i, 1 : n + 1]]
        assert got == [f"i{x}" for x in train_items]


def test_sequence_source_records() -> None:
    import grain

    a = corpus(30, max_len=6)
    src = SequenceSource(a)
    assert len(src) == 28  # the two empty rows are left out
    rows = sorted(rec["row"] for rec in grain.MapDataset.source(src).shuffle(seed=1))
    assert rows == a.nonempty().tolist()
    rec = src[3]
    r = rec["row"]
    assert rec["tokens"].tolist() == a.row(r).tolist()
    lo, hi = a.offsets[r], a.offsets[r + 1]
    assert rec["rating"].tolist() == a.rating[lo:hi].tolist()
    assert rec["fb_play"].tolist() == a.feedback["play"][lo:hi].tolist()
    assert rec["ctx_device"].tolist() == a.context["device"][lo:hi].tolist()


@pytest.mark.realdata
def test_real_beauty_leave_last_out_batches(shared_data: Path, tmp_path: Path) -> None:
    events = read_beauty(shared_data / "beauty" / "Beauty.txt")
    path = build_from_table(tmp_path / "beauty.duckdb", events, [{"kind": "leave_last_out"}])
    with Store.open(path) as store:
        assert store.counts()["sequences"] == 22_363 and store.counts()["items"] == 12_101
        data = SplitData.load(store, "loo")
        hist, tgt = data.history(Part.TEST), data.targets(Part.TEST)
    lengths = data.train.lengths
    assert int(lengths.sum()) == 198_502 - 2 * 22_363  # every 5-core user gives a valid and a test item
    cfg = LoaderConfig(batch_size=256, context_length=50, num_epochs=1, eop_target=False)
    loader = make_train_loader(data.train, cfg, seed=0)
    labels = rows = 0
    for b in loader:
        labels += int(b["mask"].sum())
        rows += int((b["rows"] >= 0).sum())
        assert b["inputs"].shape[0] == 256 and b["inputs"].shape[1] in cfg.buckets()
    assert rows == 22_363
    # one label per training item (the first is predicted from <start>), cropped to the context
    assert labels == int(np.minimum(lengths, 50).sum())
    assert tgt.nonempty().size == 22_363 and int(tgt.lengths.max()) == 1
    for ev in iter_eval_batches(hist, tgt.nonempty(), batch_size=4096, context_length=50):
        ends = hist.offsets[ev.rows + 1] - 1
        assert np.array_equal(ev.inputs[np.arange(len(ev.rows)), ev.last], np.asarray(hist.tokens)[ends])


def test_bucket_lengths_are_checked_against_the_models_window() -> None:
    # The window a transformer trains on is model.context_length: the loader's own default (50)
    # refused a valid config with 32, and let buckets below a 200-token window through.
    from segue.models.transformer import TransformerConfig

    ok = TransformerConfig.from_dict({"model": {"context_length": 32}, "trainer": {"loader": {"bucket_lengths": [16, 32]}}})
    assert ok.trainer.loader.bucket_lengths == [16, 32]
    with pytest.raises(ConfigError, match=r"largest bucket length 100 is below model.context_length 200"):
        TransformerConfig.from_dict({"model": {"context_length": 200}, "trainer": {"loader": {"bucket_lengths": [32, 64, 100]}}})
