"""Evaluation protocols: which histories are given to a model and which items it must find.

Every protocol turns a stored split into a `Task`: Q queries, each with
  - a history (the events the model may see; also, by default, the items it may not recommend),
  - a relevant set (the held-out items it should rank high).
Rules shared by all protocols:
  - Full ranking: every vocabulary item is a candidate except the query's history items
    (`exclude_seen`, default on) and the special tokens, which are never recommended.
    So a history item can never count as a hit, even when it recurs among the targets;
    it stays in the relevant set (honest: a model cannot get that one right).
  - Targets whose item is outside the training vocabulary (<unk>) stay in the relevant set
    too, each distinct item once: no model can hit them, and dropping them would flatter
    every score. They are counted in `Task.notes`.
  - A target item repeated in one query counts once.
  - Queries with no target, or with fewer than `min_history` history events, are left out
    (counted in the notes).

Protocols and the split kinds they need:
  leave_last_out         leave_last_out   history: everything before the last event; target: the last one
  playlist_continuation  random_sequence  RecSys Challenge 2018: for each held-out playlist of
                                          length n and each K in `continuation_ks` with n >= K + 1, the
                                          first K tracks are given and the other n - K are relevant
                                          (500 predictions scored); one query per (playlist, K)
  temporal               temporal         history: events before the cut; targets: events after it
  strong                 strong           held-out users: fold-in part -> scored part
  random_holdout         random_holdout   each user's events 80/10/10 at random; history: train
                                          (+ valid when scoring test); targets: the held-out part
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import Field

from segue.config import Config
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.splits import Part, history_parts, parse_part
from segue.data.store import Store
from segue.data.vocab import UNK, Vocabulary
from segue.errors import ConfigError, StoreError


class ProtocolConfig(Config):
    """How a protocol is run (saved beside every report)."""

    name: str = "leave_last_out"
    part: str = "test"  # test or valid
    exclude_seen: bool = True  # never recommend (hence never hit) a history item
    min_history: int = Field(1, ge=0)  # queries with a shorter history are left out
    continuation_ks: list[int] = [1, 5, 10, 25, 100]  # playlist_continuation only (0 = title only)
    n_predictions: int = Field(500, ge=1)  # playlist_continuation: list length scored


@dataclass
class Task:
    """Q queries for the evaluator. `histories` rows are selected by `rows` (query q -> row rows[q]);
    relevant sets are CSR (offsets [Q + 1], keys): key >= 0 a token, key < 0 an <unk> item."""

    protocol: str
    split: str
    part: str
    vocab: Vocabulary
    histories: SequenceArrays
    rows: np.ndarray  # int64 [Q]
    rel_offsets: np.ndarray  # int64 [Q + 1]
    rel_keys: np.ndarray  # int64 [nnz]
    seq_ids: np.ndarray  # int64 [Q], the store sequence (user/playlist) of each query
    exclude_seen: bool = True
    groups: np.ndarray | None = None  # str [Q] (e.g. "K=5"), reported separately as well
    default_ks: tuple[int, ...] = (1, 5, 10, 20, 50, 100)
    headline_k: int = 10
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def n_relevant(self) -> np.ndarray:
        return np.diff(self.rel_offsets)


# ---------------------------------------------------------------------------------------------
# helpers


def gather(arrays: SequenceArrays, rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> SequenceArrays:
    """New in-memory SequenceArrays whose row i is events [starts[i], starts[i] + lengths[i]) of
    row rows[i] of `arrays` (starts relative to the row), every per-event field carried along."""
    return arrays.take(rows, starts, lengths)


def relevant_sets(targets: SequenceArrays, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Relevant sets (offsets, keys) of target rows `rows`: distinct items, known ones as their
    token, <unk> ones as -(1 + store item id). Also returns how many <unk> keys there are."""
    sub = gather(targets, rows, np.zeros(len(rows), np.int64), targets.lengths[np.asarray(rows, np.int64)])
    tokens = np.asarray(sub.tokens, dtype=np.int64)
    keys = np.where(tokens == UNK, -(1 + np.asarray(sub.item_ids, dtype=np.int64)), tokens)
    q = np.repeat(np.arange(len(rows), dtype=np.int64), sub.lengths)
    order = np.lexsort((keys, q))
    q, keys = q[order], keys[order]
    first = np.ones(len(q), dtype=bool)
    first[1:] = (q[1:] != q[:-1]) | (keys[1:] != keys[:-1])
    q, keys = q[first], keys[first]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(np.bincount(q, minlength=len(rows)), out=offsets[1:])
    return offsets, keys, int((keys < 0).sum())


def _standard(data: SplitData, cfg: ProtocolConfig, *, default_ks: tuple[int, ...], headline_k: int) -> Task:
    """History = history_parts(part), targets = part, one query per sequence with targets."""
    part = parse_part(cfg.part)
    if part == Part.TRAIN:
        raise ConfigError(f"protocol {cfg.name}: part must be valid or test, not train")
    hist = data.history(part)
    targ = data.targets(part)
    has_target = targ.lengths > 0
    enough = hist.lengths >= cfg.min_history
    rows = np.flatnonzero(has_target & enough).astype(np.int64)
    offsets, keys, n_unk = relevant_sets(targ, rows)
    notes = _notes(int(has_target.sum()), int((has_target & ~enough).sum()), cfg.min_history, n_unk, len(keys))
    present = data.store.split_info(data.split)["checks"].get("events_per_part", {})
    given = " + ".join(n for n in (Part(p).name.lower() for p in history_parts(part)) if n in present) or "no"
    notes.append(f"history given to the models: the {given} parts of each user (targets: the {part.name.lower()} part)")
    return Task(
        protocol=cfg.name,
        split=data.split,
        part=part.name.lower(),
        vocab=data.vocab,
        histories=hist,
        rows=rows,
        rel_offsets=offsets,
        rel_keys=keys,
        seq_ids=rows.copy(),
        exclude_seen=cfg.exclude_seen,
        default_ks=default_ks,
        headline_k=headline_k,
        notes=notes,
    )


def _notes(n_target: int, n_short: int, min_history: int, n_unk: int, n_keys: int) -> list[str]:
    notes = [f"{n_target - n_short} queries scored"]
    if n_short:
        notes.append(f"{n_short} users with targets but fewer than {min_history} history event(s) left out")
    if n_unk:
        notes.append(
            f"{n_unk} of {n_keys} relevant items ({100 * n_unk / max(n_keys, 1):.1f}%) are outside the "
            "training vocabulary (<unk>): kept as relevant, no model can hit them"
        )
    return notes


def _playlist_continuation(data: SplitData, cfg: ProtocolConfig) -> Task:
    part = parse_part(cfg.part)
    if part == Part.TRAIN:
        raise ConfigError(f"protocol {cfg.name}: part must be valid or test, not train")
    # K = 0 is the challenge's title-only cold start: no seed track, the whole playlist to find.
    if not cfg.continuation_ks or min(cfg.continuation_ks) < 0:
        raise ConfigError(f"protocol {cfg.name}: continuation_ks must be >= 0, got {cfg.continuation_ks}")
    # In a random_sequence split a held-out playlist lies wholly in its part, in position order.
    playlists = data.targets(part)
    lengths = playlists.lengths
    rows, starts, given, rest, labels = [], [], [], [], []
    for k in sorted(set(cfg.continuation_ks)):
        r = np.flatnonzero(lengths >= k + 1).astype(np.int64)
        rows.append(r)
        given.append(np.full(len(r), k, np.int64))
        starts.append(np.full(len(r), k, np.int64))
        rest.append(lengths[r] - k)
        labels.append(np.full(len(r), f"K={k}", dtype=object))
    rows_a, given_a = np.concatenate(rows), np.concatenate(given)
    hist = gather(playlists, rows_a, np.zeros(len(rows_a), np.int64), given_a)
    targ = gather(playlists, rows_a, np.concatenate(starts), np.concatenate(rest))
    offsets, keys, n_unk = relevant_sets(targ, np.arange(len(rows_a)))
    n_held = int((lengths > 0).sum())
    notes = [
        f"{len(rows_a)} queries from {len(np.unique(rows_a))} of {n_held} held-out playlists "
        f"(K given tracks, K in {sorted(set(cfg.continuation_ks))}, where the playlist has at least K + 1)"
    ]
    if n_unk:
        notes.append(
            f"{n_unk} of {len(keys)} relevant tracks ({100 * n_unk / max(len(keys), 1):.1f}%) are outside the "
            "training vocabulary (<unk>): kept as relevant, no model can hit them"
        )
    return Task(
        protocol=cfg.name,
        split=data.split,
        part=part.name.lower(),
        vocab=data.vocab,
        histories=hist,
        rows=np.arange(len(rows_a), dtype=np.int64),
        rel_offsets=offsets,
        rel_keys=keys,
        seq_ids=rows_a,
        exclude_seen=cfg.exclude_seen,
        groups=np.concatenate(labels),
        default_ks=tuple(sorted({10, 100, cfg.n_predictions})),
        headline_k=cfg.n_predictions,
        notes=notes,
    )


@dataclass(frozen=True)
class ProtocolSpec:
    name: str
    kinds: tuple[str, ...]
    build: Callable[[SplitData, ProtocolConfig], Task]
    description: str


_STD_KS = (1, 5, 10, 20, 50, 100)
PROTOCOLS: dict[str, ProtocolSpec] = {
    p.name: p
    for p in [
        ProtocolSpec(
            "leave_last_out",
            ("leave_last_out",),
            lambda d, c: _standard(d, c, default_ks=_STD_KS, headline_k=10),
            "last event of each sequence, ranked against every unseen item",
        ),
        ProtocolSpec(
            "playlist_continuation",
            ("random_sequence",),
            _playlist_continuation,
            "RecSys Challenge 2018: first K tracks given, the rest to find in 500 predictions",
        ),
        ProtocolSpec(
            "temporal",
            ("temporal",),
            lambda d, c: _standard(d, c, default_ks=_STD_KS, headline_k=10),
            "events after a global cut time, from the history before it",
        ),
        ProtocolSpec(
            "strong",
            ("strong",),
            # Liang et al.'s headline for held-out users (Mult-VAE's NDCG@100).
            lambda d, c: _standard(d, c, default_ks=_STD_KS, headline_k=100),
            "held-out users: fold-in part given, scored part to find",
        ),
        ProtocolSpec(
            "random_holdout",
            ("random_holdout",),
            lambda d, c: _standard(d, c, default_ks=_STD_KS, headline_k=10),
            "random 80/10/10 of each user's events",
        ),
    ]
}
ALIASES = {"loo": "leave_last_out", "recsys2018": "playlist_continuation", "holdout": "random_holdout"}


def protocol_spec(name: str) -> ProtocolSpec:
    key = ALIASES.get(name, name)
    if key not in PROTOCOLS:
        raise ConfigError(
            f"unknown protocol '{name}' (known: {', '.join(PROTOCOLS)}; aliases: "
            + ", ".join(f"{a}={b}" for a, b in ALIASES.items())
            + ")"
        )
    return PROTOCOLS[key]


def _splits_of_kind(store: Store, kinds: tuple[str, ...]) -> list[str]:
    return [s for s in store.split_names() if store.split_info(s)["kind"] in kinds]


def check_split_kind(store: Store, split: str, protocol: str) -> None:
    """Raise a clear error unless `split` exists and is of a kind `protocol` can use."""
    spec = protocol_spec(protocol)
    info = store.split_info(split)  # StoreError naming the split and the store's splits
    if info["kind"] not in spec.kinds:
        suitable = _splits_of_kind(store, spec.kinds)
        raise ConfigError(
            f"protocol '{spec.name}' needs a split of kind {' or '.join(spec.kinds)}, but split '{split}' "
            f"of {store.path} is {info['kind']}"
            + (f" (splits that would do: {', '.join(suitable)})" if suitable else " (the store has none; add one "
               f"with `segue data add-split {store.path} {spec.kinds[0]}`)")
        )


def resolve_split(
    store_path: str | Path, protocol: str, split: str | None, *, announce: Callable[[str], None] | None = None
) -> str:
    """The split to evaluate: `split` if given (checked), else the store's only split of a suitable
    kind. For random_holdout, a store without one gets a `holdout` split added (atomically; it
    stays, so later evaluations find the same split), which `announce` is told: the store's
    content, hence its checksum, changes."""
    spec = protocol_spec(protocol)
    with Store.open(store_path) as store:
        if split is not None:
            if spec.name == "random_holdout" and split not in store.split_names():
                raise StoreError(
                    f"{store_path}: the store has no split '{split}' (it has: {', '.join(store.split_names()) or 'none'}); "
                    "leave out --split to add a random_holdout split named 'holdout'"
                )
            check_split_kind(store, split, spec.name)
            return split
        suitable = _splits_of_kind(store, spec.kinds)
        names = store.split_names()
    if len(suitable) == 1:
        return suitable[0]
    if len(suitable) > 1:
        raise ConfigError(
            f"protocol '{spec.name}': {store_path} has several splits of kind {spec.kinds[0]} "
            f"({', '.join(suitable)}); name one with --split"
        )
    if spec.name == "random_holdout":
        from segue.data.splits import RandomHoldoutSplit, add_split

        name = "holdout" if "holdout" not in names else "holdout_8010"
        cfg = RandomHoldoutSplit(name=name)
        added = add_split(str(store_path), cfg)
        if announce is not None:
            params = ", ".join(f"{k}={v}" for k, v in cfg.model_dump().items() if k not in ("kind", "name"))
            announce(
                f"added split '{added}' (random_holdout: {params}) to {store_path}, as the store had no random_holdout "
                "split; it stays for later evaluations (`segue data add-split` adds one with other settings)"
            )
        return added
    raise ConfigError(
        f"protocol '{spec.name}' needs a split of kind {' or '.join(spec.kinds)}; {store_path} has "
        f"{', '.join(names) or 'no splits'} (add one with `segue data add-split`)"
    )


def build_task(data: SplitData, config: ProtocolConfig | str) -> Task:
    """The protocol's queries on `data` (its split kind is checked first)."""
    cfg = ProtocolConfig(name=config) if isinstance(config, str) else config
    spec = protocol_spec(cfg.name)
    cfg = cfg.model_copy(update={"name": spec.name})
    check_split_kind(data.store, data.split, spec.name)
    task = spec.build(data, cfg)
    if len(task) == 0:
        # Say why: every query left out by min_history, no playlist long enough, or no target at all.
        why = [n for n in task.notes if "left out" in n or "held-out playlists" in n]
        why = why or [f"no sequence has a target in the {cfg.part} part"]
        raise ConfigError(f"protocol '{spec.name}' on split '{data.split}' ({cfg.part}) has no query to score: {'; '.join(why)}")
    return task
