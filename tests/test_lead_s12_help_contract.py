"""help() on any family's methods shows the Recommender contract (walk s12 lib F4): a family's
fit/score/recommend/load without a docstring inherit BaseRecommender's, the protocol's text."""

from __future__ import annotations

import inspect

import pytest

from segue.models.base import Recommender, families, model_class


@pytest.mark.parametrize("family", sorted(families()))
def test_every_family_documents_the_contract(family: str) -> None:
    try:
        cls = model_class(family)
    except ImportError:
        pytest.skip(f"{family}: an optional dependency is missing")
    for name in ("fit", "score", "recommend", "load"):
        doc = inspect.getdoc(getattr(cls, name))
        assert doc, f"{family}.{name} has no docstring"
    if cls.recommend.__doc__ is None:  # inherited: exactly the protocol's
        assert inspect.getdoc(cls.recommend) == inspect.getdoc(Recommender.recommend)
