"""The item vocabulary is fitted on training events only; everything else maps to <unk>."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pytest

from datahelp import make_store
from segue.data.arrays import compile_split
from segue.data.splits import Part
from segue.data.store import Store
from segue.data.vocab import EOP, N_SPECIAL, PAD, SPECIAL_TOKENS, START, UNK, Vocabulary, fit_vocab


def seqs_with_private_items(n: int = 60) -> list[list[str]]:
    # common items c0..c9 shared by everyone, plus one private item per sequence
    rng = np.random.default_rng(3)
    return [[f"c{x}" for x in rng.integers(0, 10, 6)] + [f"p{s}"] for s in range(n)]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "v.duckdb"
    return make_store(path, seqs_with_private_items(), [{"kind": "random_sequence"}, {"kind": "leave_last_out"}])


def training_counts(s: Store, split: str) -> Counter:
    rows = s.con.execute(
        """SELECT i.external_id FROM events e JOIN split_events p USING (seq_id, position)
           JOIN items i USING (item_id) WHERE p.split = ? AND p.part = 0""",
        [split],
    ).fetchall()
    return Counter(r[0] for r in rows)


@pytest.mark.parametrize("split", ["random", "loo"])
def test_vocabulary_is_the_training_items(store_path: Path, split: str) -> None:
    with Store.open(store_path) as s:
        vocab = Vocabulary.from_store(s.con, split)
        counts = training_counts(s, split)
    assert vocab.external_ids[:N_SPECIAL] == [None] * N_SPECIAL
    assert (PAD, START, EOP, UNK) == (0, 1, 2, 3) and len(SPECIAL_TOKENS) == 4
    items = vocab.external_ids[N_SPECIAL:]
    assert set(items) == set(counts)
    assert vocab.n_items == len(counts)
    assert [int(c) for c in vocab.counts[N_SPECIAL:]] == [counts[e] for e in items]
    # popularity order, ties by store item id
    key = [(-int(c), int(i)) for c, i in zip(vocab.counts[N_SPECIAL:], vocab.item_ids[N_SPECIAL:], strict=True)]
    assert key == sorted(key)


def test_item_only_in_test_maps_to_unk(store_path: Path) -> None:
    with Store.open(store_path) as s:
        vocab = Vocabulary.from_store(s.con, "random")
        test = compile_split(s, "random", (Part.TEST,), vocab=vocab, cache=False)
        ids = dict(s.con.execute("SELECT external_id, item_id FROM items").fetchall())
    test_rows = test.nonempty()
    assert len(test_rows) == 6
    for r in test_rows:
        items, tokens = test.row_items(r), test.row(r)
        # the private item is the last one of each sequence and was never seen in training
        assert tokens[-1] == UNK
        assert vocab.token_of_item(items[-1]) == UNK
        # common items are known
        assert np.all(tokens[:-1] >= N_SPECIAL)
        assert np.array_equal(vocab.item_ids[tokens[:-1]], items[:-1])
    private_test = [f"p{r}" for r in test_rows]
    tokens, unknown = vocab.encode_external(private_test + ["c1", "nope"])
    assert unknown == [*private_test, "nope"]
    assert tokens[-2] == vocab.token_of_item(ids["c1"]) >= N_SPECIAL
    assert vocab.encode_item_ids(np.array([ids["c1"], -1, 10**6])).tolist() == [tokens[-2], UNK, UNK]


def test_leave_last_out_targets_never_enter_the_vocabulary(store_path: Path) -> None:
    with Store.open(store_path) as s:
        vocab = Vocabulary.from_store(s.con, "loo")
    # every private item is the last (test) event of its sequence
    assert not any(e is not None and e.startswith("p") for e in vocab.external_ids)


def test_min_count(tmp_path: Path) -> None:
    seqs = [["a", "b", "c"], ["a", "b"], ["a", "d"]] * 3 + [["z"]]
    p = make_store(tmp_path / "m.duckdb", seqs, [{"kind": "random_sequence", "valid_fraction": 0, "test_fraction": 0}], min_count=4)
    with Store.open(p) as s:
        vocab = Vocabulary.from_store(s.con, "random")
    assert vocab.external_ids[N_SPECIAL:] == ["a", "b"]  # a: 9, b: 6, c: 3, d: 3, z: 1
    assert vocab.counts[N_SPECIAL:].tolist() == [9, 6]
    con = duckdb.connect(str(p))  # refit the same split with other thresholds
    assert fit_vocab(con, "random", min_count=3) == N_SPECIAL + 4
    assert fit_vocab(con, "random", min_count=1) == N_SPECIAL + 5
    con.close()


def test_save_load_roundtrip(store_path: Path, tmp_path: Path) -> None:
    with Store.open(store_path) as s:
        vocab = Vocabulary.from_store(s.con, "random")
    vocab.save(tmp_path / "vocab.json")
    back = Vocabulary.load(tmp_path / "vocab.json")
    assert back.split == "random"
    assert np.array_equal(back.item_ids, vocab.item_ids) and np.array_equal(back.counts, vocab.counts)
    assert back.external_ids == vocab.external_ids
    assert np.array_equal(back.lookup, vocab.lookup)
    assert len(back) == len(vocab)


def test_unknown_split_vocabulary(store_path: Path) -> None:
    with Store.open(store_path) as s, pytest.raises(KeyError):
        Vocabulary.from_store(s.con, "nope")
