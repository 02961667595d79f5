"""Bad arguments to library calls: an error naming the argument and the valid range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datahelp import make_store
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.store import Store
from segue.data.vocab import N_SPECIAL
from segue.errors import InputError, SegueError, StoreError
from segue.evaluation.ratings import mae, rmse
from segue.models.ease import EASE, EASEConfig
from segue.models.itemknn import ItemKNN, ItemKNNConfig

SEQS = [[0, 1, 2, 3], [1, 2, 3], [2, 3, 0, 4], [4, 5, 1], [5, 0, 2]]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    path = make_store(tmp_path_factory.mktemp("errors") / "s.duckdb", SEQS, [{"kind": "leave_last_out"}])
    s = Store.open(path)
    yield s
    s.close()


@pytest.fixture(scope="module")
def knn(store: Store) -> ItemKNN:
    return ItemKNN(ItemKNNConfig(neighbours=3, decay=1.0)).fit(SplitData.load(store, "loo"))


@pytest.mark.parametrize("token", [-1, 0, N_SPECIAL - 1, "V", 2.0])
def test_similar_items_refuses_non_item_tokens(knn: ItemKNN, token: object) -> None:
    v = len(knn.vocab)
    token = v if token == "V" else token
    with pytest.raises(InputError, match=rf"'token'.*\[{N_SPECIAL}, {v}\)"):
        knn.similar_items(token)  # type: ignore[arg-type]


def test_similar_items_of_an_item_still_works(knn: ItemKNN) -> None:
    tokens, sims = knn.similar_items(N_SPECIAL)
    assert len(tokens) == len(sims) and N_SPECIAL not in tokens


@pytest.mark.parametrize("row", [-1, 99])
def test_rows_outside_the_histories_are_named(knn: ItemKNN, row: int) -> None:
    h = SequenceArrays.from_lists([[N_SPECIAL], [N_SPECIAL + 1]])
    with pytest.raises(InputError, match=rf"'rows'.*row {row} .*\[0, 2\)"):
        knn.recommend(h, 2, np.array([row]))
    with pytest.raises(InputError, match=rf"row {row} "):
        knn.score(h, np.array([row]))


def test_unknown_split_is_a_store_error_naming_the_splits(store: Store) -> None:
    with pytest.raises(StoreError, match="no split 'nosuch' .*it has: loo"):
        SplitData.load(store, "nosuch")


def test_rating_errors_take_scalars_and_refuse_mismatched_shapes() -> None:
    assert rmse(3.0, 1.0) == 2.0 and mae(3.0, 1.0) == 2.0
    assert rmse(np.array([1.0, 3.0]), 1.0) == np.sqrt(2.0)
    with pytest.raises(InputError, match=r"shape \(2,\) but actual \(3,\)"):
        rmse(np.array([1.0, 2.0]), np.array([1.0, 2.0, 3.0]))


def test_ease_size_error_never_says_zero_gib(store: Store, tmp_path: Path) -> None:
    with pytest.raises(SegueError, match=r"needs 144 bytes") as e:
        EASE(EASEConfig(max_items=2)).fit(SplitData.load(store, "loo"))
    assert "0.0 GiB" not in str(e.value)
