"""Compiled split arrays give back exactly the stored sequences; their cache is reused and atomic."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datahelp import make_store
from segue.data.arrays import (
    SequenceArrays,
    SplitData,
    arrays_dir,
    compile_split,
    load_arrays,
    save_arrays,
)
from segue.data.splits import Part, add_split
from segue.data.store import Store
from segue.data.vocab import UNK, Vocabulary

ALL_PARTS = tuple(int(p) for p in Part)

# One event: (item, rating or None, feedback value or None, context value or None)
event = st.tuples(
    st.integers(0, 15),
    st.one_of(st.none(), st.floats(0.5, 5.0, width=32)),
    st.one_of(st.none(), st.floats(-1e3, 1e3, width=32)),
    st.one_of(st.none(), st.sampled_from(["phone", "web", "car", "tv"])),
)
corpus = st.lists(st.lists(event, min_size=1, max_size=9), min_size=1, max_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpus=corpus, data=st.data())
def test_compiled_arrays_give_back_the_stored_sequences(corpus: list[list[tuple]], data: st.DataObject) -> None:
    seqs = [[e[0] for e in s] for s in corpus]
    ts = [[1_600_000_000 + 60 * i + 7 * j for j in range(len(s))] for i, s in enumerate(corpus)]
    rating = [[e[1] for e in s] for s in corpus]
    extra = {"fb_play": [[e[2] for e in s] for s in corpus], "ctx_device": [[e[3] for e in s] for s in corpus]}
    split = data.draw(st.sampled_from(["random_sequence", "leave_last_out", "random_holdout"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = make_store(Path(tmp) / "p.duckdb", seqs, [{"kind": split, "name": "s"}], ts=ts, rating=rating, extra=extra)
        with Store.open(path) as store:
            vocab = Vocabulary.from_store(store.con, "s")
            # cached: streamed into memory-mapped files 3 events at a time (many batches)
            arrays = compile_split(store, "s", ALL_PARTS, vocab=vocab, batch_rows=3)
            assert len(arrays) == len(seqs) and arrays.n_events == sum(map(len, seqs))
            _same_arrays(arrays, compile_split(store, "s", ALL_PARTS, vocab=vocab, cache=False))
            ext = dict(store.con.execute("SELECT item_id, external_id FROM items").fetchall())
            for r, seq in enumerate(corpus):
                stored = store.sequence_items(r)
                assert arrays.row_items(r).tolist() == stored
                # ... and those are the items we put in, in order (sequence r is the r-th given)
                assert [ext[i] for i in stored] == [f"i{e[0]}" for e in seq]
                lo, hi = arrays.offsets[r], arrays.offsets[r + 1]
                assert arrays.row(r).tolist() == vocab.encode_item_ids(np.array(stored)).tolist()
                assert arrays.positions[lo:hi].tolist() == list(range(len(seq)))
                assert arrays.ts[lo:hi].tolist() == ts[r]
                for got, (_, want_rating, want_fb, want_ctx) in zip(range(lo, hi), seq, strict=True):
                    _same_float(arrays.rating[got] if arrays.rating is not None else None, want_rating)
                    _same_float(arrays.feedback["play"][got], want_fb)
                    code = int(arrays.context["device"][got])
                    assert (arrays.context_categories["device"][code] if code >= 0 else None) == want_ctx
            # The training view holds exactly the training events, row-aligned with the full view.
            train = compile_split(store, "s", (Part.TRAIN,), vocab=vocab)
            parts = store.con.execute(
                "SELECT seq_id, position FROM split_events WHERE split = 's' AND part = 0 ORDER BY seq_id, position"
            ).fetchall()
            got = [(r, int(p)) for r in range(len(train)) for p in train.positions[train.offsets[r] : train.offsets[r + 1]]]
            assert got == [(int(a), int(b)) for a, b in parts]
            # Training tokens are never <unk> (the vocabulary is fitted on them).
            assert not np.any(np.asarray(train.tokens) == UNK)


def _same_arrays(a: SequenceArrays, b: SequenceArrays) -> None:
    """Equal columns (NaN equal to NaN), dtypes, categories and counts."""
    for name in ("offsets", "tokens", "item_ids", "positions", "ts", "rating"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
    for x, y in ((a.feedback, b.feedback), (a.context, b.context)):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype
            np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]), err_msg=k)
    assert a.context_categories == b.context_categories and a.meta["n_events"] == b.meta["n_events"]


def _same_float(got: float | None, want: float | None) -> None:
    if want is None:
        assert got is None or math.isnan(got)
    else:
        assert got is not None and np.float32(got) == np.float32(want)


@pytest.fixture()
def loo_store(tmp_path: Path) -> Path:
    seqs = [[1, 2, 3, 4], [2, 3, 5], [6], [1, 2, 7, 8, 9]]
    return make_store(tmp_path / "l.duckdb", seqs, [{"kind": "leave_last_out"}], rating=[[4.0] * len(s) for s in seqs])


def test_history_and_targets_line_up_by_row(loo_store: Path) -> None:
    with Store.open(loo_store) as store:
        data = SplitData.load(store, "loo")
        full = compile_split(store, "loo", ALL_PARTS, vocab=data.vocab)
        hist, tgt = data.history(Part.TEST), data.targets(Part.TEST)
        vhist, vtgt = data.history(Part.VALID), data.targets(Part.VALID)
        assert data.kind == "leave_last_out"
    for r in range(len(full)):
        items = full.row_items(r).tolist()
        if len(items) >= 3:
            assert hist.row_items(r).tolist() == items[:-1] and tgt.row_items(r).tolist() == items[-1:]
            assert vhist.row_items(r).tolist() == items[:-2] and vtgt.row_items(r).tolist() == items[-2:-1]
        else:  # too short to be scored: all history, no target
            assert tgt.row_items(r).tolist() == [] and hist.row_items(r).tolist() == items
    assert tgt.nonempty().tolist() == [0, 1, 3]
    assert data.train.rating is not None and np.all(np.asarray(data.train.rating) == 4.0)


def test_cache_is_reused_and_keyed_by_content_and_vocabulary(loo_store: Path) -> None:
    with Store.open(loo_store) as store:
        vocab = Vocabulary.from_store(store.con, "loo")
        a = compile_split(store, "loo", (0,), vocab=vocab)
        folders = list((arrays_dir(loo_store) / store.checksum / "loo").glob("parts-0/vocab-*"))
        assert len(folders) == 1 and (folders[0] / "meta.json").exists()
        assert isinstance(a.tokens, np.memmap)  # served memory-mapped from the cache
        # Prove reuse: alter the cached tokens; a second compile returns what is in the cache.
        tokens = np.load(folders[0] / "tokens.npy")
        np.save(folders[0] / "tokens.npy", tokens + 1000)
        b = compile_split(store, "loo", (0,), vocab=vocab)
        assert np.array_equal(np.asarray(b.tokens), tokens + 1000)
        # cache=False recompiles from the store
        c = compile_split(store, "loo", (0,), vocab=vocab, cache=False)
        assert np.array_equal(c.tokens, tokens)
        # another vocabulary gets its own cache entry, not the tokens of the first
        other = Vocabulary(
            item_ids=vocab.item_ids[:5], counts=vocab.counts[:5], external_ids=vocab.external_ids[:5], split="loo"
        )
        d = compile_split(store, "loo", (0,), vocab=other)
        assert np.array_equal(np.asarray(d.tokens), other.encode_item_ids(np.asarray(c.item_ids)))
        assert len(list((arrays_dir(loo_store) / store.checksum / "loo").glob("parts-0/vocab-*"))) == 2
        old_checksum = store.checksum
    # New store content (a split added) -> a new checksum -> a fresh compile.
    add_split(str(loo_store), {"kind": "random_sequence"})
    with Store.open(loo_store) as store:
        assert store.checksum != old_checksum
        e = compile_split(store, "loo", (0,))
        assert np.array_equal(np.asarray(e.tokens), tokens)


def test_arrays_folder_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = SequenceArrays.from_lists([[5, 6, 7], [8]])
    arrays.rating = np.array([1, 2, 3, 4], dtype=np.float32)
    folder = tmp_path / "view"
    save_arrays(arrays, folder)
    real_save = np.save

    def failing_save(path, arr, *a, **k):  # the disk "fills up" while writing the ratings
        if str(path).endswith("rating.npy"):
            raise OSError("No space left on device")
        return real_save(path, arr, *a, **k)

    monkeypatch.setattr(np, "save", failing_save)
    changed = SequenceArrays.from_lists([[9, 9, 9], [9]])
    changed.rating = np.zeros(4, dtype=np.float32)
    with pytest.raises(OSError, match="No space"):
        save_arrays(changed, folder)
    with pytest.raises(OSError, match="No space"):
        save_arrays(changed, tmp_path / "fresh")
    monkeypatch.undo()
    # the old folder is intact, the new one was never created, and no temporary folder is left
    back = load_arrays(folder)
    assert np.asarray(back.tokens).tolist() == [5, 6, 7, 8]
    assert np.asarray(back.rating).tolist() == [1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["view"]


def test_take_and_from_lists() -> None:
    a = SequenceArrays.from_lists([[4, 5], [], [6, 7, 8]])
    a.rating = np.array([1, 2, 3, 4, 5], dtype=np.float32)
    assert a.lengths.tolist() == [2, 0, 3] and a.nonempty().tolist() == [0, 2]
    b = a.take(np.array([2, 0, 1]))
    assert [b.row(r).tolist() for r in range(3)] == [[6, 7, 8], [4, 5], []]
    assert b.rating.tolist() == [3, 4, 5, 1, 2]
    assert a.take(np.array([], dtype=np.int64)).n_events == 0
