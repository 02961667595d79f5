"""Validation errors as JSON that always serialises, whatever the client sent.

Pydantic echoes the offending value in each error's `input` (and sometimes objects in `ctx`). A
client can send values JSON cannot carry back: `1e400` and `NaN` parse to non-finite floats,
`"\\ud800"` to a lone surrogate that UTF-8 cannot encode, and a 10,000-item list is large enough
to turn a short error into a long one. Echoing those raw made the 422 itself fail (a 500).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

MAX_ITEMS = 20  # list elements / dict entries echoed back per container
MAX_CHARS = 200  # characters echoed back per string
MAX_DEPTH = 6
MAX_INT_BITS = 256  # larger ints are echoed as a short description


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe, bounded copy of `value` for echoing back in an error.

    Non-finite floats become the strings "inf", "-inf" and "nan"; strings are cut to MAX_CHARS
    and lone surrogates escaped (`\\ud800`); containers keep their first MAX_ITEMS entries plus a
    marker saying how many were left out; anything else becomes its (cut) `str`.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            return f"<an integer of {value.bit_length()} bits>"
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, bytes | bytearray):
        return _text(bytes(value[: MAX_CHARS * 4]).decode("utf-8", "replace"))
    if depth >= MAX_DEPTH:
        return "..."
    if isinstance(value, Mapping):
        out = {
            _text(str(k)): jsonable(v, depth + 1)
            for k, v in list(value.items())[:MAX_ITEMS]
        }
        if len(value) > MAX_ITEMS:
            out["..."] = f"{len(value) - MAX_ITEMS} more entries"
        return out
    if isinstance(value, Sequence | set | frozenset):
        items = list(value)
        out_list = [jsonable(v, depth + 1) for v in items[:MAX_ITEMS]]
        if len(items) > MAX_ITEMS:
            out_list.append(f"... {len(items) - MAX_ITEMS} more items")
        return out_list
    return _text(str(value))


def _text(s: str) -> str:
    if len(s) > MAX_CHARS:
        s = s[:MAX_CHARS] + f"... ({len(s)} characters)"
    # Lone surrogates (valid in a JSON string, not in UTF-8) become their \\uXXXX escape.
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def error_details(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI's 422 `detail` list (type, loc, msg, input, ctx), every value made `jsonable`."""
    out = []
    for e in errors:
        d: dict[str, Any] = {
            "type": str(e.get("type", "value_error")),
            "loc": [x if isinstance(x, int) else _text(str(x)) for x in e.get("loc", ())],
            "msg": _text(str(e.get("msg", ""))),
        }
        if "input" in e:
            d["input"] = jsonable(e["input"])
        if e.get("ctx"):
            d["ctx"] = jsonable(e["ctx"])
        out.append(d)
    return out


def query_error(path: str, query: str, post: bool) -> dict[str, Any]:
    """The 422 detail entry for query parameters on a route that reads none (the one-worker app's
    POST routes and the supervisor's admin port answer alike); `?` alone is no parameter."""
    from urllib.parse import parse_qsl

    names = [k for k, _ in parse_qsl(query, keep_blank_values=True)] or [query]
    msg = f"{path} takes no query parameters (got {', '.join(repr(k) for k in names[:5])})"
    return {"loc": ["query", names[0]], "msg": msg + (": send them as fields of the JSON body" if post else ""), "type": "extra_forbidden"}
