"""Feedback, timestamps and context in requests: the fields, their checks against the served model,
and their conversion to the encoder's `EventColumns`.

A request history may carry, aligned with `history` (one value per item, null = none):
    feedback       {"skip": [true, false, null], "listened": [0.3, 1.0, null]}   raw values, as the
                   store's fb_<name> columns hold them (flags true/false or 0/1, fractions in
                   [0, 1], counts >= 0, other numbers as they are)
    timestamps     [1700000000, 1700000300, null]   unix seconds of each event
    event_context  {"platform": ["mobile", "web", null]}   each event's own context
and, for the event to predict: `context` (as before: {"platform": "tv"}) and `ts` (its unix time;
default: the server's clock when the model reads time features). A model with a context-aware
next-item head (ARGUS, segue.models.events) ranks conditioned on them. Aligned lists keep
`history: list[str]` unchanged (the design `ratings` already follows), so old clients are valid.

Values the model cannot read are refused with a 422 naming the event (`history[i]`, its id) and
the field: a flag outside 0..1, a fraction outside [0, 1], a negative count, true/false where a
number is expected. Feedback columns and context names the model does not read are accepted with a
warning (a model without events ignores all of them, also with a warning).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_validator,
)

from segue.serving.encoding import EventColumns

if TYPE_CHECKING:
    from segue.models.events import EventsConfig
    from segue.serving.engine import Engine

MAX_COLUMNS = 32
MAX_EVENTS = 5_000  # values per column (the API's longest history)
MAX_TS = 2**40  # unix seconds (year 36812): larger values are no time
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")]
FeedbackValue = StrictBool | StrictInt | StrictFloat | None


def _whole(value: Any) -> Any:
    """JSON has one number type: 3.0 is the number 3 (clients serialising floats send it), so an
    integral float becomes that int; 3.5 is refused. Anything else is left to the strict int check,
    which refuses true and "3"."""
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"expected a whole number, got {value!r}")
        return int(value)
    return value


# A strict int that takes an integral JSON number (3.0): true is no count and "3" no number.
WholeNumber = Annotated[int, BeforeValidator(_whole), Field(strict=True)]
Timestamp = Annotated[WholeNumber, Field(ge=0, le=MAX_TS)]  # true is no time

FEEDBACK_DESCRIPTION = (
    "Feedback per history event: column name -> values aligned with `history` (null = none). "
    "Flags true/false (or 0/1), fractions in [0, 1], counts >= 0, numeric values as stored "
    "(the model's columns: `events.feedback` in /healthz)."
)
TIMESTAMPS_DESCRIPTION = "Unix seconds of each history event, aligned with `history` (null = unknown)."
EVENT_CONTEXT_DESCRIPTION = (
    "Each history event's own context: name -> values aligned with `history` (null = none). "
    "Without it, `context` fills every event of that name."
)
TS_DESCRIPTION = (
    "Unix seconds of the event to predict (the request's time): the next-item head reads its "
    "hour, day and gap to the last event. Default: the server's clock, for models with time features."
)


class HistoryEvents(BaseModel):
    """The per-event fields a history may carry (mixed into the request models)."""

    feedback: dict[Name, Annotated[list[FeedbackValue], Field(max_length=MAX_EVENTS)]] | None = Field(
        None, max_length=MAX_COLUMNS, description=FEEDBACK_DESCRIPTION
    )
    timestamps: list[Timestamp | None] | None = Field(None, max_length=MAX_EVENTS, description=TIMESTAMPS_DESCRIPTION)
    event_context: dict[Name, Annotated[list[Annotated[str, Field(max_length=256)] | None], Field(max_length=MAX_EVENTS)]] | None = Field(
        None, max_length=MAX_COLUMNS, description=EVENT_CONTEXT_DESCRIPTION
    )
    ts: Timestamp | None = Field(None, description=TS_DESCRIPTION)

    @model_validator(mode="after")
    def _aligned(self) -> Any:
        n = len(getattr(self, "history", None) or [])
        cols: list[tuple[str, list]] = [(f"feedback.{k}", v) for k, v in (self.feedback or {}).items()]
        cols += [(f"event_context.{k}", v) for k, v in (self.event_context or {}).items()]
        if self.timestamps is not None:
            cols.append(("timestamps", self.timestamps))
        for what, values in cols:
            if len(values) != n:
                raise ValueError(
                    f"{what} has {len(values)} values but history has {n} items: give one per history item, null for none"
                )
        return self

    @property
    def has_events(self) -> bool:
        return bool(self.feedback or self.event_context or self.timestamps is not None or self.ts is not None)


def served_events(engine: Engine) -> EventsConfig | None:
    """The served model's per-event inputs (the transformer's `events` section), or None."""
    from segue.models.events import EventsConfig

    cfg = getattr(getattr(engine.model, "config", None), "events", None)
    net = getattr(engine.model, "network", None)
    if isinstance(cfg, EventsConfig) and cfg.enabled and getattr(net, "has_events", False):
        return cfg
    return None


def input_rating_scale(engine: Engine) -> tuple[float, float] | None:
    """(low, high) of the ratings the model takes with a history: a rating predictor's scale, or
    the scale of a transformer that reads ratings (events.rating) or normalises them for its head."""
    if engine.rating_range is not None:
        return engine.rating_range
    cfg = served_events(engine)
    if cfg is not None and (cfg.rating or "rating" in cfg.predict):
        return float(cfg.rating_scale[0]), float(cfg.rating_scale[1])
    return None


def describe(engine: Engine) -> dict[str, Any] | None:
    """What /healthz says about the inputs per event (None: the model reads none)."""
    cfg = served_events(engine)
    if cfg is None:
        return None
    return {
        "rating": cfg.rating,
        "feedback": dict(cfg.feedback),
        "context": list(cfg.context),
        "time": cfg.time,
        "predicts": [n for n, _, _ in cfg.targets()],
    }


def _bad(i: int, item: str, where: tuple, msg: str, value: Any) -> dict[str, Any]:
    return {"type": "value_error", "loc": ("body", *where, i), "msg": f"history[{i}] ('{item}'): {msg}", "input": value}


def check_feedback(kind: str, name: str, value: Any) -> str | None:
    """Why `value` is no `kind` feedback value for column `name` (None: it is fine)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return None if kind == "flag" else f"feedback '{name}' is a {kind}, not true/false"
    x = float(value)
    if not math.isfinite(x):
        return f"feedback '{name}' must be a finite number"
    if kind == "flag" and not 0.0 <= x <= 1.0:
        return f"feedback '{name}' = {x:g} is no flag (expected true/false, 0 or 1)"
    if kind == "fraction" and not 0.0 <= x <= 1.0:
        return f"feedback '{name}' = {x:g} is outside [0, 1] (a fraction)"
    if kind == "count" and x < 0:
        return f"feedback '{name}' = {x:g} is a negative count"
    return None


def unseen_context(
    engine: Engine, cfg: EventsConfig, events: dict[str, list[str | None]], context: dict[str, str] | None
) -> list[str]:
    """Warnings for context values the model never saw in training: it reads them as unknown
    (as it does a null), which the request should hear about rather than a silent mapping."""
    known = getattr(getattr(engine.model, "network", None), "categories", None) or {}
    out = []
    for name in cfg.context:
        if name not in known:
            continue
        seen = engine.context_values[name]
        sent = ([context[name]] if context and name in context else []) + [v for v in events.get(name, []) if v is not None]
        new = sorted({v for v in sent if v not in seen})
        if new:
            shown = ", ".join(repr(v) for v in new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
            have = ", ".join(known[name][:10]) or "none"
            out.append(f"context '{name}': {shown} never seen in training (it knows: {have}); read as unknown")
    return out


def time_order(timestamps: list[int | None] | None, ts: int | None) -> list[str]:
    """Warnings for times against the history's order (oldest first): a timestamp earlier than
    the one before it, and a `ts` (the event to predict) before the history's last time. The model
    reads such a negative gap as an unknown one (segue.models.events.time_slots), so they are
    accepted, with a word."""
    out = []
    times = [(i, t) for i, t in enumerate(timestamps or []) if t is not None]
    back = [i for (_, a), (i, b) in zip(times, times[1:], strict=False) if b < a]
    if back:
        out.append(
            f"timestamps: not in order (history is oldest first): history[{back[0]}] is earlier than the event "
            f"before it ({len(back)} such step(s)); a backward gap is read as unknown"
        )
    if ts is not None and times and ts < max(t for _, t in times):
        out.append(f"ts: the event to predict ({ts}) is before the history's last timestamp ({max(t for _, t in times)}); its gap is read as unknown")
    return out


def request_events(engine: Engine, req: HistoryEvents, ids: list[str], context: dict[str, str] | None, warnings: list[str]) -> EventColumns | None:
    """The request's EventColumns for the served model (None when it reads none, with a warning if
    the request sent some). Raises fastapi's RequestValidationError listing values the model
    cannot read, each naming the event index, its id and the field."""
    from fastapi.exceptions import RequestValidationError

    cfg = served_events(engine)
    if cfg is None:
        if req.has_events:
            warnings.append(
                f"feedback/timestamps/event_context/ts: the {engine.info.family} model reads no per-event "
                "feedback, times or context; they were ignored"
            )
        return None
    errors: list[dict[str, Any]] = []
    feedback: dict[str, np.ndarray] = {}
    for name, values in (req.feedback or {}).items():
        kind = cfg.feedback.get(name)
        if kind is None:
            known = ", ".join(cfg.feedback_names) or "none"
            warnings.append(f"feedback '{name}': the model does not read this column (it reads: {known}); ignored")
            continue
        for i, v in enumerate(values):
            why = check_feedback(kind, name, v)
            if why:
                errors.append(_bad(i, ids[i], ("feedback", name), why, v))
        feedback[name] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float32)
    ctx: dict[str, list[str | None]] = {}
    for name, values in (req.event_context or {}).items():
        if name not in cfg.context:
            warnings.append(f"event_context '{name}': the model reads no such context (it reads: {', '.join(cfg.context) or 'none'}); ignored")
            continue
        ctx[name] = list(values)
    for name in context or {}:
        if name not in cfg.context:
            warnings.append(f"context '{name}': the model reads no such context (it reads: {', '.join(cfg.context) or 'none'}); ignored")
    if errors:
        raise RequestValidationError(errors[:20])
    warnings += unseen_context(engine, cfg, ctx, context)
    if cfg.time:
        warnings += time_order(req.timestamps, req.ts)
    if not cfg.time and (req.timestamps is not None or req.ts is not None):
        sent = " and ".join(n for n, v in (("timestamps", req.timestamps), ("ts", req.ts)) if v is not None)
        warnings.append(f"{sent}: the model reads no event times (trained without time features); ignored")
    ts = None
    if req.timestamps is not None and cfg.time:
        ts = np.array([0 if t is None else t for t in req.timestamps], dtype=np.int64)
    next_ts = req.ts
    if next_ts is None and cfg.time:
        next_ts = int(time.time())
    return EventColumns(feedback=feedback, ts=ts, context=ctx, next_ts=next_ts if cfg.time else None)
