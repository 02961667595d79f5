"""The one request transformation shared with training and evaluation.

External item ids become tokens through the model's own `Vocabulary.encode_external` (unknown ids
become `<unk>` and are reported, never dropped or fatal), histories keep their last `context_length`
items (the model's context, as training crops), and token lists become the `SequenceArrays` every
`Recommender` call takes. Ratings given with a history (raw, on the data's scale; NaN = unrated) are
cut with it and go into the arrays' `rating` column, the column training fills from the store, so
rating-aware models normalise them with their own code. Nothing here re-implements vocabulary logic.

Events (ARGUS' inputs, segue.models.events): per history event, raw feedback values (as the store's
`fb_<name>` columns hold them: flags 0/1, fractions, counts), unix timestamps and context values
(`EventColumns`, cut with the history) go into the arrays' `feedback`, `ts` and `context` columns,
the columns training compiles from the store; the model turns them into its inputs with the same
functions it trains with (segue.models.events.history_events). The request's own context and time
describe the event to predict: they travel as `arrays.meta["next_events"]`, one event per row, the
`next_events` argument of the transformer's scoring (`model_kwargs` passes it to models that take it).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segue.data.arrays import SequenceArrays
from segue.data.vocab import UNK, Vocabulary

NEXT_EVENTS = "next_events"  # SequenceArrays.meta key: the event to predict after each row


@dataclass
class EventColumns:
    """A history's per-event inputs besides items and ratings, aligned with its items."""

    feedback: dict[str, np.ndarray] = field(default_factory=dict)  # name -> float32 [n], NaN = none
    ts: np.ndarray | None = None  # int64 [n] unix seconds, 0 = unknown
    context: dict[str, list[str | None]] = field(default_factory=dict)  # name -> value per event
    next_ts: int | None = None  # unix time of the event to predict (None = unknown)

    def tail(self, n: int) -> EventColumns:
        """The columns of the last n events (the history cut to the model's context)."""

        def cut(a: Any) -> Any:
            return a[len(a) - n :] if n < len(a) else a

        return EventColumns(
            feedback={k: cut(v) for k, v in self.feedback.items()},
            ts=None if self.ts is None else cut(self.ts),
            context={k: cut(v) for k, v in self.context.items()},
            next_ts=self.next_ts,
        )

    def without(self, j: int) -> EventColumns:
        """The columns with event j left out (a leave-one-out row of an explanation)."""
        return EventColumns(
            feedback={k: np.delete(v, j) for k, v in self.feedback.items()},
            ts=None if self.ts is None else np.delete(self.ts, j),
            context={k: v[:j] + v[j + 1 :] for k, v in self.context.items()},
            next_ts=self.next_ts,
        )

    def check(self, n: int) -> None:
        """Every column must give one value per history item (ValueError naming the column)."""
        cols = [(f"feedback '{k}'", v) for k, v in self.feedback.items()]
        cols += [(f"context '{k}'", v) for k, v in self.context.items()]
        if self.ts is not None:
            cols.append(("timestamps", self.ts))
        for what, v in cols:
            if len(v) != n:
                raise ValueError(f"{what}: {len(v)} values for a history of {n} items")

# Config fields that name a model's context length, in the order they are looked for.
_CONTEXT_FIELDS = ("context_length", "max_len", "context", "max_length", "seq_len")


def context_length_of(model: object) -> int | None:
    """The number of history items the model looks at, or None when it uses the whole history."""
    value = getattr(model, "context_length", None)
    if isinstance(value, int) and value > 0:
        return value
    config = getattr(model, "config", None)
    # The field may sit on the config or on its network section (transformer: config.model).
    for section in (config, getattr(config, "model", None)):
        for name in _CONTEXT_FIELDS:
            value = getattr(section, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


@dataclass
class EncodedHistory:
    """A request history as tokens: `tokens` is what the model sees (truncated, `<unk>` kept)."""

    tokens: np.ndarray  # int32 [L]
    external_ids: list[str]  # the ids of `tokens`, in order (after truncation)
    unknown: list[str] = field(default_factory=list)  # ids the vocabulary lacks (now <unk>)
    truncated: int = 0  # number of oldest items dropped to fit the context
    all_tokens: np.ndarray | None = None  # int32 [n]: the whole history (exclusions mask all of it)
    ratings: np.ndarray | None = None  # float32 [L] aligned with `tokens` (NaN = unrated), if given
    all_ratings: np.ndarray | None = None  # float32 [n] aligned with `all_tokens`, if given
    events: EventColumns | None = None  # per-event feedback / times / context of `tokens`, if given
    all_events: EventColumns | None = None  # the same, aligned with `all_tokens`

    def warnings(self, what: str = "history", *, truncation: bool = True) -> list[str]:
        """Unknown ids and (unless `truncation` is False) the items cut to fit the context."""
        out = []
        if self.unknown:
            shown = ", ".join(repr(u) for u in self.unknown[:10])
            more = f" and {len(self.unknown) - 10} more" if len(self.unknown) > 10 else ""
            out.append(
                f"{what}: {len(self.unknown)} unknown item id(s) mapped to <unk>: {shown}{more}"
            )
        if self.truncated and truncation:
            out.append(
                f"{what}: kept the last {len(self.tokens)} items (model context); dropped {self.truncated} older"
            )
        return out


class RequestEncoder:
    """Encodes requests exactly as the model's training data was encoded."""

    def __init__(self, vocab: Vocabulary, context_length: int | None = None) -> None:
        self.vocab = vocab
        self.context_length = context_length

    def encode(
        self,
        external_ids: Sequence[str],
        ratings: Sequence[float | None] | None = None,
        events: EventColumns | None = None,
    ) -> EncodedHistory:
        """Tokens of `external_ids`; `ratings` (aligned, None = unrated) and `events` are kept beside them."""
        ids = [str(e) for e in external_ids]
        tokens, unknown = self.vocab.encode_external(ids)
        all_tokens = tokens.astype(np.int32)
        all_ratings = None if ratings is None else rating_column(ratings, len(ids))
        if events is not None:
            events.check(len(ids))
        dropped = 0
        if self.context_length is not None and len(tokens) > self.context_length:
            dropped = len(tokens) - self.context_length
            tokens, ids = tokens[dropped:], ids[dropped:]
        return EncodedHistory(
            tokens=tokens.astype(np.int32),
            external_ids=ids,
            unknown=unknown,
            truncated=dropped,
            all_tokens=all_tokens,
            ratings=None if all_ratings is None else all_ratings[dropped:],
            all_ratings=all_ratings,
            events=None if events is None else events.tail(len(tokens)),
            all_events=events,
        )

    def encode_one(self, external_id: str) -> int | None:
        """Token of one id, or None when unknown (for path parameters, where <unk> makes no sense)."""
        tokens, unknown = self.vocab.encode_external([str(external_id)])
        return None if unknown else int(tokens[0])

    def truncate(self, tokens: np.ndarray) -> np.ndarray:
        if self.context_length is not None and len(tokens) > self.context_length:
            return tokens[len(tokens) - self.context_length :]
        return tokens

    @staticmethod
    def arrays(
        token_lists: Sequence[np.ndarray | list[int]],
        context: Sequence[Mapping[str, str] | None] | None = None,
        ratings: Sequence[np.ndarray | None] | None = None,
        events: Sequence[EventColumns | None] | None = None,
    ) -> SequenceArrays:
        """A SequenceArrays of `token_lists`; per-row `context` (name -> value) is the context of
        the event to predict, and fills every event of a column the row's `events` do not give.

        Context values are dictionary-coded per request (codes listed in `context_categories`), as
        compiled arrays code them; models that ignore context are unaffected. `ratings` (per row,
        aligned with its tokens, or None for an unrated row) become the `rating` column (NaN =
        unrated); without any the column stays None, as for a store without ratings. `events`
        (per row, aligned, or None) fill `feedback` (NaN = none), `ts` (0 = unknown) and per-event
        `context`; with events or a context, `meta["next_events"]` holds the event to predict.
        """
        arrays = SequenceArrays.from_lists([np.asarray(t, dtype=np.int32) for t in token_lists])
        if ratings is not None and any(r is not None for r in ratings):
            if len(ratings) != len(token_lists):
                raise ValueError(f"ratings: {len(ratings)} rows for {len(token_lists)} histories")
            cols = []
            for t, r in zip(token_lists, ratings, strict=True):
                cols.append(np.full(len(t), np.nan, np.float32) if r is None else rating_column(r, len(t)))
            arrays.rating = np.concatenate(cols) if cols else np.zeros(0, np.float32)
        if events is not None and any(e is not None for e in events):
            if len(events) != len(token_lists):
                raise ValueError(f"events: {len(events)} rows for {len(token_lists)} histories")
            _event_columns(arrays, token_lists, list(events), context)
        elif context and any(context):
            names = sorted({k for c in context if c for k in c})
            lengths = arrays.lengths
            for name in names:
                values = [c.get(name) if c else None for c in context]
                cats = sorted({v for v in values if v is not None})
                code = {v: i for i, v in enumerate(cats)}
                per_row = np.array(
                    [code.get(v, -1) if v is not None else -1 for v in values], dtype=np.int32
                )
                arrays.context[name] = np.repeat(per_row, lengths).astype(np.int32)
                arrays.context_categories[name] = cats
            arrays.meta[NEXT_EVENTS] = _next_events(len(token_lists), context, None, arrays.context_categories)
        return arrays


def _event_columns(
    arrays: SequenceArrays,
    token_lists: Sequence[np.ndarray | list[int]],
    events: list[EventColumns | None],
    context: Sequence[Mapping[str, str] | None] | None,
) -> None:
    """Fill the feedback, ts and context columns of `arrays` from per-row EventColumns."""
    lengths = [len(t) for t in token_lists]
    ctx_rows: list[Mapping[str, str] | None] = list(context) if context else [None] * len(lengths)
    for e, n in zip(events, lengths, strict=True):
        if e is not None:
            e.check(n)
    names = sorted({k for e in events if e is not None for k in e.feedback})
    for name in names:
        arrays.feedback[name] = np.concatenate(
            [np.full(n, np.nan, np.float32) if e is None or name not in e.feedback else np.asarray(e.feedback[name], np.float32)
             for e, n in zip(events, lengths, strict=True)] or [np.zeros(0, np.float32)]
        )  # fmt: skip
    if any(e is not None and e.ts is not None for e in events):
        arrays.ts = np.concatenate(
            [np.zeros(n, np.int64) if e is None or e.ts is None else np.asarray(e.ts, np.int64)
             for e, n in zip(events, lengths, strict=True)] or [np.zeros(0, np.int64)]
        )  # fmt: skip
    ctx_names = sorted({k for e in events if e is not None for k in e.context} | {k for c in ctx_rows if c for k in c})
    for name in ctx_names:
        per_event: list[str | None] = []
        for e, c, n in zip(events, ctx_rows, lengths, strict=True):
            if e is not None and name in e.context:
                per_event += list(e.context[name])
            else:  # no per-event values: the request's context fills the events (as before events)
                per_event += [c.get(name) if c else None] * n
        cats = sorted({v for v in per_event if v is not None} | {c[name] for c in ctx_rows if c and c.get(name) is not None})
        code = {v: i for i, v in enumerate(cats)}
        arrays.context[name] = np.array([code[v] if v is not None else -1 for v in per_event], dtype=np.int32)
        arrays.context_categories[name] = cats
    next_ts = [None if e is None else e.next_ts for e in events]
    arrays.meta[NEXT_EVENTS] = _next_events(len(lengths), ctx_rows, next_ts, arrays.context_categories)


def _next_events(
    n: int,
    context: Sequence[Mapping[str, str] | None],
    next_ts: list[int | None] | None,
    categories: Mapping[str, list[str]],
) -> SequenceArrays:
    """One event per row: the event to predict, with the request's context and time (token <unk>:
    only its context and time are read)."""
    out = SequenceArrays.from_lists([np.array([UNK], np.int32)] * n)
    for name in sorted({k for c in context if c for k in c}):
        cats = list(categories.get(name, []))
        code = {v: i for i, v in enumerate(cats)}
        out.context[name] = np.array([code.get(c.get(name), -1) if c and c.get(name) is not None else -1 for c in context], np.int32)
        out.context_categories[name] = cats
    if next_ts is not None and any(t is not None for t in next_ts):
        out.ts = np.array([0 if t is None else int(t) for t in next_ts], dtype=np.int64)
    return out


@functools.cache
def _takes_next_events(fn: Callable[..., Any]) -> bool:
    try:
        return "next_events" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def model_kwargs(fn: Callable[..., Any], arrays: SequenceArrays) -> dict[str, Any]:
    """{"next_events": ...} for a model method that takes the event to predict (the transformer's
    score, query_embeddings, predict_feedback), when the arrays carry one; else {}."""
    nxt = arrays.meta.get(NEXT_EVENTS)
    func = getattr(fn, "__func__", fn)  # bound methods: cache by the function
    return {NEXT_EVENTS: nxt} if nxt is not None and _takes_next_events(func) else {}


def rating_column(ratings: Sequence[float | None] | np.ndarray, n: int) -> np.ndarray:
    """float32 [n] ratings, None -> NaN (unrated); the length must match the history's."""
    if isinstance(ratings, np.ndarray):
        out = ratings.astype(np.float32).reshape(-1)
    else:
        out = np.array([np.nan if r is None else r for r in ratings], dtype=np.float32).reshape(-1)
    if len(out) != n:
        raise ValueError(f"ratings: {len(out)} values for a history of {n} items")
    return out
