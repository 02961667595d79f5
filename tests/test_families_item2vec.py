"""Item2vec's query, as its module docstring states it: each distinct history item once, weighted by
decay ** (age of its most recent occurrence)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datahelp import make_store
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.store import Store
from segue.data.vocab import N_SPECIAL
from segue.models.item2vec import Item2Vec, Item2VecConfig


def test_a_repeated_item_counts_once_at_its_most_recent_occurrence(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    seqs = [rng.choice(12, size=8, replace=False).tolist() for _ in range(30)]
    path = make_store(tmp_path / "s.duckdb", seqs, [{"kind": "leave_last_out"}])
    with Store.open(path) as store:
        data = SplitData.load(store, "loo")
        model = Item2Vec(Item2VecConfig(vector_size=4, epochs=2, workers=1, decay=0.5)).fit(data)
    a, b, c = N_SPECIAL, N_SPECIAL + 1, N_SPECIAL + 2
    assert model.has_vector[[a, b, c]].all()
    e = model.input_vectors
    # h = (a, b, a, c): ages c 0, a 1 (its most recent occurrence), b 2; a's older event adds nothing
    w = {a: 0.5, b: 0.25, c: 1.0}
    expected = sum(w[t] * e[t] for t in w) / sum(w.values())
    q = model.query_embeddings(SequenceArrays.from_lists([[a, b, a, c]]))[0]
    np.testing.assert_allclose(q, expected, rtol=1e-5)
    np.testing.assert_allclose(q, model.query_embeddings(SequenceArrays.from_lists([[b, a, c]]))[0], rtol=1e-6)
