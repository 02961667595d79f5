"""Playlist continuation as in trecs: sample the next item, append it, repeat.

At each step the input is [<start>, seed..., generated...] cropped to its last `context_length`
tokens; the next-token logits s_c = <h_last, E[c]> are masked (-inf) for <pad>, <start>, <eop>,
<unk> and every item already in the playlist, divided by the temperature, and the next item is
the arg max (greedy) or drawn from softmax over the `top_k` best logits. Seed items unknown to the
vocabulary become <unk> in the input (the model was trained with <unk> injection) and are reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segue.data.arrays import SequenceArrays
from segue.data.vocab import N_SPECIAL
from segue.errors import InputError, SegueError

ITEM_NAMES_FILE = "item_names.json"


@dataclass
class Continuation:
    tokens: list[int]  # generated tokens, in order
    probabilities: list[float]  # probability of each pick under the (masked, tempered) distribution
    seed_tokens: list[int]
    unknown_seeds: list[str] = field(default_factory=list)  # seed ids mapped to <unk>
    ran_out: bool = False  # the catalogue ran out before n items (every item is in the playlist)


def mask_logits(logits: np.ndarray, playlist: np.ndarray) -> np.ndarray:
    """Copy of logits [V] with special tokens and the playlist's items set to -inf."""
    out = np.array(logits, dtype=np.float64)
    out[:N_SPECIAL] = -np.inf
    out[np.asarray(playlist, dtype=np.int64)] = -np.inf
    return out


def pick_next(
    logits: np.ndarray, rng: np.random.Generator, *, top_k: int, temperature: float, greedy: bool
) -> tuple[int, float]:
    """Next token from masked logits [V]: arg max, or a draw from the tempered top-k softmax."""
    finite = np.isfinite(logits)
    if not finite.any():
        raise SegueError("continuation: no candidate item left (the catalogue is exhausted)")
    z = logits / temperature
    k = min(top_k, int(finite.sum()))
    top = np.argpartition(-z, k - 1)[:k]
    top = top[np.isfinite(z[top])]
    p = np.exp(z[top] - z[top].max())
    p /= p.sum()
    i = int(np.argmax(p)) if greedy else int(rng.choice(len(top), p=p))
    return int(top[i]), float(p[i])


def continue_tokens(
    model: object,
    seed_tokens: list[int] | np.ndarray,
    n: int = 20,
    *,
    top_k: int = 50,
    temperature: float = 1.0,
    greedy: bool = False,
    seed: int = 0,
) -> Continuation:
    """Generate `n` tokens after `seed_tokens` with a fitted TransformerRecommender: fewer, with
    `ran_out` set, when every item is in the playlist before (as /v1/continue answers what it could)."""
    if n < 0:
        raise InputError("the number of items to generate is negative", field="n", expected=">= 0")
    if temperature <= 0:
        raise InputError(f"temperature {temperature}", field="temperature", expected="> 0")
    if top_k < 1:
        raise InputError(f"top_k {top_k}", field="top_k", expected=">= 1")
    rng = np.random.default_rng(seed)
    playlist = [int(t) for t in seed_tokens]
    out, probs = [], []
    for _ in range(n):
        raw = model.score(SequenceArrays.from_lists([playlist]))[0]  # specials already -inf
        logits = mask_logits(raw, np.asarray(playlist, dtype=np.int64))
        if not np.isfinite(logits).any():  # what was generated is still an answer, not an error
            return Continuation(tokens=out, probabilities=probs, seed_tokens=[int(t) for t in seed_tokens], ran_out=True)
        tok, p = pick_next(logits, rng, top_k=top_k, temperature=temperature, greedy=greedy)
        playlist.append(tok)
        out.append(tok)
        probs.append(p)
    return Continuation(tokens=out, probabilities=probs, seed_tokens=[int(t) for t in seed_tokens])


def continue_playlist(
    model: object,
    seed_ids: list[str],
    n: int = 20,
    **kwargs: object,
) -> Continuation:
    """Continue a playlist given by external item ids (e.g. track URIs)."""
    tokens, unknown = model.vocab.encode_external(list(seed_ids))
    result = continue_tokens(model, tokens, n, **kwargs)
    result.unknown_seeds = unknown
    return result


# --- names ----------------------------------------------------------------------------------


def save_item_names(store: object, vocab: object, path: Path) -> None:
    """[name, creator] of every token (null for special tokens), from the store's items table."""
    from segue.io import atomic_write_bytes

    items = store.items_table()
    ids = items.column("item_id").to_numpy()
    names = items.column("name").to_pylist()
    creators = items.column("creator").to_pylist()
    pos = {int(i): k for k, i in enumerate(ids)}
    rows: list[list[str | None] | None] = []
    for item_id in vocab.item_ids:
        k = pos.get(int(item_id))
        rows.append(None if k is None else [names[k], creators[k]])
    atomic_write_bytes(path, json.dumps(rows).encode())


def load_item_names(folder: Path) -> list[list[str | None] | None] | None:
    path = Path(folder) / ITEM_NAMES_FILE
    return json.loads(path.read_text()) if path.exists() else None


def describe(token: int, vocab: object, names: list | None) -> str:
    """'name — creator (external id)' where known, else the external id."""
    ext = vocab.external_id(token) or f"token {token}"
    if names is not None and token < len(names) and names[token] and names[token][0]:
        name, creator = names[token]
        return f"{name} — {creator} ({ext})" if creator else f"{name} ({ext})"
    return ext
