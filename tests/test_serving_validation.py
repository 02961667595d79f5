"""JSON-safe validation details: whatever a client sent, the 422 that echoes it serialises."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, ValidationError

from segue.serving.validation import MAX_CHARS, MAX_ITEMS, error_details, jsonable


def strict_json(value: object) -> str:
    """What Starlette's JSONResponse does: no NaN/inf, UTF-8 bytes."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")
    return text


def test_non_finite_floats_become_strings_and_finite_ones_stay() -> None:
    assert jsonable([math.inf, -math.inf, math.nan, 1.5, 0.0]) == ["inf", "-inf", "nan", 1.5, 0.0]


def test_lone_surrogates_are_escaped_and_long_strings_cut() -> None:
    assert jsonable("a\ud800b") == "a\\ud800b"
    long = jsonable("x" * 1000)
    assert long.startswith("x" * MAX_CHARS) and long.endswith("(1000 characters)")
    assert jsonable({"\udfff": 1}) == {"\\udfff": 1}


def test_containers_are_bounded_and_say_how_much_was_left_out() -> None:
    out = jsonable(list(range(1000)))
    assert out[:MAX_ITEMS] == list(range(MAX_ITEMS)) and out[-1] == f"... {1000 - MAX_ITEMS} more items"
    d = jsonable({f"k{i}": i for i in range(50)})
    assert len(d) == MAX_ITEMS + 1 and d["..."] == f"{50 - MAX_ITEMS} more entries"
    assert jsonable(10**400).startswith("<an integer of") and jsonable(2**63) == 2**63
    assert jsonable(b"\xff\xfeab") == "\ufffd\ufffdab"
    assert jsonable(ValueError("bad")) == "bad"  # ctx carries exception objects


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=30) | st.dictionaries(st.text(), inner, max_size=30),
    max_leaves=60,
))
def test_anything_becomes_strict_json(value) -> None:
    strict_json(jsonable(value))


def test_pydantic_errors_of_odd_inputs_serialise() -> None:
    class Req(BaseModel):
        model_config = ConfigDict(allow_inf_nan=False)
        n: int
        t: float
        ids: list[str]

    with pytest.raises(ValidationError) as e:
        Req.model_validate({"n": math.inf, "t": math.nan, "ids": ["a\ud800", 5]})
    with pytest.raises(ValueError):
        strict_json(e.value.errors())  # FastAPI's default handler hit this: a 500
    details = error_details(e.value.errors())
    strict_json(details)
    by_loc = {tuple(d["loc"]): d for d in details}
    assert by_loc[("n",)]["input"] == "inf" and by_loc[("t",)]["input"] == "nan"
    assert by_loc[("ids", 1)]["type"] == "string_type"
