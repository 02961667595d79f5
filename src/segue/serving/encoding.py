"""The one request transformation shared with training and evaluation.

External item ids become tokens through the model's own `Vocabulary.encode_external` (unknown ids
become `<unk>` and are reported, never dropped or fatal), histories keep their last `context_length`
items (the model's context, as training crops), and token lists become the `SequenceArrays` every
`Recommender` call takes. Ratings given with a history (raw, on the data's scale; NaN = unrated) are
cut with it and go into the arrays' `rating` column, the column training fills from the store, so
rating-aware models normalise them with their own code. Nothing here re-implements vocabulary logic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from segue.data.arrays import SequenceArrays
from segue.data.vocab import Vocabulary

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
        self, external_ids: Sequence[str], ratings: Sequence[float | None] | None = None
    ) -> EncodedHistory:
        """Tokens of `external_ids`; `ratings` (aligned, None = unrated) are kept beside them."""
        ids = [str(e) for e in external_ids]
        tokens, unknown = self.vocab.encode_external(ids)
        all_tokens = tokens.astype(np.int32)
        all_ratings = None if ratings is None else rating_column(ratings, len(ids))
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
    ) -> SequenceArrays:
        """A SequenceArrays of `token_lists`; per-row `context` (name -> value) fills every event.

        Context values are dictionary-coded per request (codes listed in `context_categories`), as
        compiled arrays code them; models that ignore context are unaffected. `ratings` (per row,
        aligned with its tokens, or None for an unrated row) become the `rating` column (NaN =
        unrated); without any the column stays None, as for a store without ratings.
        """
        arrays = SequenceArrays.from_lists([np.asarray(t, dtype=np.int32) for t in token_lists])
        if ratings is not None and any(r is not None for r in ratings):
            if len(ratings) != len(token_lists):
                raise ValueError(f"ratings: {len(ratings)} rows for {len(token_lists)} histories")
            cols = []
            for t, r in zip(token_lists, ratings, strict=True):
                cols.append(np.full(len(t), np.nan, np.float32) if r is None else rating_column(r, len(t)))
            arrays.rating = np.concatenate(cols) if cols else np.zeros(0, np.float32)
        if context and any(context):
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
        return arrays


def rating_column(ratings: Sequence[float | None] | np.ndarray, n: int) -> np.ndarray:
    """float32 [n] ratings, None -> NaN (unrated); the length must match the history's."""
    if isinstance(ratings, np.ndarray):
        out = ratings.astype(np.float32).reshape(-1)
    else:
        out = np.array([np.nan if r is None else r for r in ratings], dtype=np.float32).reshape(-1)
    if len(out) != n:
        raise ValueError(f"ratings: {len(out)} values for a history of {n} items")
    return out
