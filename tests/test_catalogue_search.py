"""Catalogue.search: every query word must match; an exact name or id first, then prefixes, then
the rest, each group most popular first."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from segue.data.vocab import N_SPECIAL, Vocabulary
from segue.serving.catalogue import Catalogue


def _catalogue(rows: list[tuple[str, str | None, int]]) -> Catalogue:
    """rows: (external id, name, training count)."""
    ids = [r[0] for r in rows]
    vocab = Vocabulary(
        item_ids=np.array([-1] * N_SPECIAL + list(range(len(rows))), np.int64),
        counts=np.array([0] * N_SPECIAL + [r[2] for r in rows], np.int64),
        external_ids=[None] * N_SPECIAL + ids,
        split="s",
    )
    table = pa.table({"external_id": ids, "name": [r[1] for r in rows]})
    return Catalogue(vocab, table)


def _ids(cat: Catalogue, query: str) -> list[str]:
    return [cat.vocab.external_ids[t] for t in cat.search(query)]


def test_an_exact_id_comes_before_more_popular_ids_that_contain_it() -> None:
    cat = _catalogue([("159", None, 90), ("13", None, 80), ("21", None, 70), ("1", None, 5), ("7", None, 100)])
    assert _ids(cat, "1") == ["1", "159", "13", "21"]  # exact, then prefixes by popularity, then the rest


def test_an_exact_name_then_names_that_start_with_it() -> None:
    cat = _catalogue(
        [
            ("a", "Boruto: Naruto Next Generations", 300),
            ("b", "Naruto: Shippuuden", 200),
            ("c", "Naruto", 100),
            ("d", "Bleach", 400),
        ]
    )
    assert _ids(cat, "NARUTO") == ["c", "b", "a"]
    assert _ids(cat, "naruto next") == ["a"]  # every word must match
    assert cat.search("naruto", limit=1) == [cat.vocab.external_ids.index("c")]
    assert _ids(cat, "one piece") == []
