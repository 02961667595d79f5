"""Split strategies, stored in the store so every model and every evaluation uses the same ones.

Every split labels each event with a `Part`. Evaluating on part P uses the events of `history_parts(P)`
as the known history and the events of P as targets; training uses `Part.TRAIN` only.

Strategies (the `kind` of a split spec):
- random_sequence: whole sequences go to train/valid/test (default 80/10/10, seeded; trecs).
- temporal: one cut time for everybody; events before the valid cut are train, then valid, then
  test. No training event lies after the cut (checked).
- leave_last_out: per sequence, the last event is test, the second to last valid, the rest train
  (sequences shorter than `min_length` stay wholly in train).
- strong: held-out users (sequences); each held-out user's events are split into a fold-in part
  (VALID_INPUT/TEST_INPUT) and a scored part (VALID/TEST), at random (Mult-VAE) or by time.
- random_holdout: each user's events are split at random 80/10/10 (general-recommendation default).

Leakage checks run at build time and fail the build: a sequence in two splits for sequence-level
strategies, a training event after a temporal cut, and targets that precede training events for
leave-last-out.
"""

from __future__ import annotations

import hashlib
import json
from enum import IntEnum
from typing import Annotated, Any, Literal

import duckdb
import numpy as np
import pyarrow as pa
from pydantic import Field, TypeAdapter, field_validator, model_validator

from segue.config import Config
from segue.errors import ConfigError, InputError, StoreError


class Part(IntEnum):
    TRAIN = 0
    VALID = 1
    TEST = 2
    VALID_INPUT = 3  # fold-in history of a held-out validation user (strong generalization)
    TEST_INPUT = 4


def history_parts(target: Part | int) -> tuple[int, ...]:
    """The parts that form the known history when `target` is scored."""
    target = Part(target)
    if target == Part.VALID:
        return (Part.TRAIN, Part.VALID_INPUT)
    if target == Part.TEST:
        return (Part.TRAIN, Part.VALID, Part.TEST_INPUT)
    raise ValueError(f"only VALID or TEST can be scored, not {target.name}")


PART_NAMES = {"train": Part.TRAIN, "valid": Part.VALID, "test": Part.TEST}


def parse_part(name: str | int | Part) -> Part:
    if isinstance(name, int):
        return Part(name)
    try:
        return PART_NAMES[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown split part '{name}' (expected train, valid or test)") from None


class _Split(Config):
    """What every split kind shares: a name, the key `--split` and `add-split` pick it by."""

    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        # An empty or blank name is stored, then listed invisibly ("several splits: , loo").
        if not v.strip():
            raise ValueError("expected a non-empty name (the key --split picks the split by)")
        return v


def _check_fractions(valid: float, test: float) -> None:
    """valid_fraction + test_fraction must leave training events: a sum of 1 or more was trimmed
    silently (random_holdout) or reached the cut check as a negative quantile (temporal)."""
    if valid + test >= 1:
        raise ValueError(f"valid_fraction + test_fraction is {valid + test:g}: expected a sum below 1 (the rest is train)")


class RandomSequenceSplit(_Split):
    kind: Literal["random_sequence"] = "random_sequence"
    name: str = "random"
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _sum(self) -> RandomSequenceSplit:
        _check_fractions(self.valid_fraction, self.test_fraction)
        return self


class TemporalSplit(_Split):
    kind: Literal["temporal"] = "temporal"
    name: str = "temporal"
    # Either explicit cut times (unix seconds) or quantiles of the event times.
    valid_cut: int | None = None
    test_cut: int | None = None
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)

    @field_validator("valid_cut", "test_cut", mode="before")
    @classmethod
    def _iso_cut(cls, v: Any) -> Any:
        """A cut may be given as ISO-8601 text (UTC unless it says), as the importers read times."""
        if isinstance(v, str) and not v.strip().lstrip("-").isdigit():
            import datetime as dt

            try:
                d = dt.datetime.fromisoformat(v.strip())
            except ValueError:
                raise ValueError("expected unix seconds or an ISO-8601 date/time") from None
            return int((d if d.tzinfo else d.replace(tzinfo=dt.UTC)).timestamp())
        return v

    @model_validator(mode="after")
    def _sum(self) -> TemporalSplit:
        # Only with neither cut do both fractions cut the same events (valid cut: the quantile
        # 1 - valid_fraction - test_fraction); a given test_cut leaves test_fraction unused.
        if self.valid_cut is None and self.test_cut is None:
            _check_fractions(self.valid_fraction, self.test_fraction)
        return self


class LeaveLastOutSplit(_Split):
    kind: Literal["leave_last_out"] = "leave_last_out"
    name: str = "loo"
    min_length: int = Field(3, ge=1)  # shorter sequences are kept wholly for training


def count_or_fraction(v: float) -> float:
    """A share (0 < v < 1) or a whole count (1, 2, ...); anything else is an error, not rounded.

    `test_users=2.5` had made 2 test users without a word; 0 and negatives hold nobody out."""
    if 0 < v < 1 or (v >= 1 and float(v).is_integer()):
        return v
    raise ValueError("expected a fraction between 0 and 1 (e.g. 0.1) or a whole count of at least 1 (e.g. 100)")


class StrongSplit(_Split):
    kind: Literal["strong"] = "strong"
    name: str = "strong"
    valid_users: float = 0.1  # a fraction (<1) or a count (>=1) of held-out users
    test_users: float = 0.1
    foldin_fraction: float = Field(0.8, gt=0, lt=1)
    foldin: Literal["random", "time"] = "random"
    min_length: int = Field(5, ge=2)  # shorter users are never held out

    @field_validator("valid_users", "test_users")
    @classmethod
    def _users(cls, v: float) -> float:
        return count_or_fraction(v)


class RandomHoldoutSplit(_Split):
    kind: Literal["random_holdout"] = "random_holdout"
    name: str = "holdout"
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _sum(self) -> RandomHoldoutSplit:
        _check_fractions(self.valid_fraction, self.test_fraction)
        return self


SplitSpec = Annotated[
    RandomSequenceSplit | TemporalSplit | LeaveLastOutSplit | StrongSplit | RandomHoldoutSplit,
    Field(discriminator="kind"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(SplitSpec)
SPLIT_KINDS = ("random_sequence", "temporal", "leave_last_out", "strong", "random_holdout")

# kind -> (what it does, parameter -> one line, example spec). The help of `--split` and
# `segue data add-split` and README.md come from here; tests check it against the classes' fields.
SPLIT_DOCS: dict[str, tuple[str, dict[str, str], str]] = {
    "random_sequence": (
        "whole sequences go to train/valid/test at random (seeded)",
        {
            "name": "split name in the store (default random)",
            "valid_fraction": "share of sequences for validation (default 0.1)",
            "test_fraction": "share of sequences for test (default 0.1)",
        },
        "random_sequence:test_fraction=0.2",
    ),
    "temporal": (
        "one cut time for everybody: events before the valid cut train, then valid, then test",
        {
            "name": "split name in the store (default temporal)",
            "valid_cut": "start of validation: unix seconds or ISO date (default: from valid_fraction)",
            "test_cut": "start of test: unix seconds or ISO date (default: from test_fraction)",
            "valid_fraction": "share of events (by time) for validation when valid_cut is not given, ending at test_cut when that is given (default 0.1)",
            "test_fraction": "share of events (by time) for test when test_cut is not given (default 0.1)",
        },
        "temporal:valid_cut=2024-03-01,test_cut=2024-04-01",
    ),
    "leave_last_out": (
        "per sequence the last event is test, the one before valid, the rest train",
        {
            "name": "split name in the store (default loo)",
            "min_length": "shorter sequences stay wholly in train (default 3)",
        },
        "leave_last_out:min_length=5",
    ),
    "strong": (
        "held-out users: part of each held-out user's events is fold-in history, the rest is scored",
        {
            "name": "split name in the store (default strong)",
            "valid_users": "held-out validation users: a fraction (<1) or a count (default 0.1)",
            "test_users": "held-out test users: a fraction (<1) or a count (default 0.1)",
            "foldin_fraction": "share of a held-out user's events given as history (default 0.8)",
            "foldin": "which events are history: random or time (the earliest) (default random)",
            "min_length": "users with fewer events are never held out (default 5)",
        },
        "strong:test_users=100,foldin=time",
    ),
    "random_holdout": (
        "each user's events split at random into train/valid/test",
        {
            "name": "split name in the store (default holdout)",
            "valid_fraction": "share of each user's events for validation (default 0.1)",
            "test_fraction": "share of each user's events for test (default 0.1)",
        },
        "random_holdout:test_fraction=0.2",
    ),
}


def split_kinds_text(indent: str = "  ") -> str:
    """Every split kind with what it does, one line each."""
    width = max(map(len, SPLIT_DOCS))
    return "\n".join(f"{indent}{k.ljust(width)}  {doc[0]}" for k, doc in SPLIT_DOCS.items())


def split_params_text(kind: str, indent: str = "  ") -> str:
    """The parameters of split `kind`, one line each."""
    params = SPLIT_DOCS[kind][1]
    width = max(map(len, params))
    return "\n".join(f"{indent}{k.ljust(width)}  {v}" for k, v in params.items())


def split_help() -> str:
    """Markdown on every split kind (parameters, an example), for --help and README.md."""
    out = []
    for kind, (summary, params, example) in SPLIT_DOCS.items():
        lines = [f"**{kind}**: {summary}", ""] + [f"- `{k}`: {v}" for k, v in params.items()]
        out.append("\n".join([*lines, "", f"Example: `{example}`"]))
    return "\n\n".join(out)


def parse_spec(spec: dict[str, Any] | Config) -> Any:
    """A split config from a spec dict; ConfigError naming the bad kind, parameter or value and
    listing what is valid."""
    if isinstance(spec, Config):
        return spec
    kind = spec.get("kind")
    if kind not in SPLIT_KINDS:
        raise ConfigError(
            f"unknown split kind {str(kind)!r}. Split kinds (kind[:key=value,...]):\n{split_kinds_text()}"
        )
    # No split parameter is a switch: true/false would pass pydantic's lax mode as 1/0
    # (min_length=true built min_length 1), while source options refuse them.
    for key, value in spec.items():
        if isinstance(value, bool):
            label = f"split '{spec['name']}' ({kind})" if isinstance(spec.get("name"), str) else f"split {kind}"
            raise ConfigError(
                f"{label}: parameter '{key}' is {str(value).lower()}: expected a number, not true/false. "
                f"Parameters of {kind}:\n{split_params_text(kind)}"
            )
    try:
        return _ADAPTER.validate_python(spec)
    except Exception as e:  # pydantic.ValidationError
        problems = []
        for err in getattr(e, "errors", lambda: [])():
            loc = [str(x) for x in err["loc"] if x != kind]
            key = loc[0] if loc else "?"
            if not loc:  # a check across parameters (a model validator) names them itself
                problems.append(err["msg"].removeprefix("Value error, "))
            elif err["type"] == "extra_forbidden":
                problems.append(f"unknown parameter '{key}'")
            else:
                msg = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's own text
                problems.append(f"parameter '{key}' is {spec.get(key)!r}: {msg}")
        text = "; ".join(problems) or str(e)
        label = f"split '{spec['name']}' ({kind})" if "name" in spec else f"split {kind}"
        raise ConfigError(
            f"{label}: {text}. Parameters of {kind}:\n{split_params_text(kind)}"
        ) from None


# ---------------------------------------------------------------------------------------------


def apply_split(con: duckdb.DuckDBPyConnection, spec: dict[str, Any] | Config, seed: int = 0) -> str:
    """Compute the split described by `spec` into `split_events`/`splits`, check it, return its name."""
    spec = parse_spec(spec)
    exists = con.execute("SELECT count(*) FROM splits WHERE split = ?", [spec.name]).fetchone()[0]
    if exists:
        raise ConfigError(
            f"split '{spec.name}' is defined twice: a split of that name is already in the store, from an "
            f"earlier -s of this build or an earlier add-split (give this one its own, e.g. {spec.kind}:name={spec.name}2)"
        )
    # Each split draws from its own stream so adding a split never changes another.
    rng = np.random.default_rng([seed, _stable_id(spec.name)])
    fn = {
        "random_sequence": _random_sequence,
        "temporal": _temporal,
        "leave_last_out": _leave_last_out,
        "strong": _strong,
        "random_holdout": _random_holdout,
    }[spec.kind]
    params = fn(con, spec, rng)
    checks = check_split(con, spec.name, spec.kind, params)
    con.execute(
        "INSERT INTO splits VALUES (?, ?, ?, ?)",
        [spec.name, spec.kind, json.dumps(params, sort_keys=True), json.dumps(checks, sort_keys=True)],
    )
    return spec.name


def _stable_id(name: str) -> int:
    # The whole name counts: names sharing a prefix ("random_s1", "random_s2") get their own streams.
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def _seq_lengths(con: duckdb.DuckDBPyConnection) -> np.ndarray:
    return con.execute("SELECT length FROM sequences ORDER BY seq_id").fetchnumpy()["length"].astype(np.int64)


def _insert_sequence_parts(con: duckdb.DuckDBPyConnection, name: str, seq_part: np.ndarray) -> None:
    """Every event of sequence s gets part seq_part[s]."""
    t = pa.table({"seq_id": np.arange(len(seq_part), dtype=np.int32), "part": seq_part.astype(np.uint8)})
    con.register("_parts", t)
    con.execute(
        "INSERT INTO split_events SELECT ?, e.seq_id, e.position, p.part FROM events e JOIN _parts p USING (seq_id)",
        [name],
    )
    con.unregister("_parts")


def _insert_event_parts(con: duckdb.DuckDBPyConnection, name: str, part: np.ndarray) -> None:
    """`part` is aligned with events ordered by (seq_id, position)."""
    lengths = _seq_lengths(con)
    seq = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    pos = _positions(lengths)
    t = pa.table({"seq_id": seq, "position": pos, "part": part.astype(np.uint8)})
    con.register("_parts", t)
    con.execute("INSERT INTO split_events SELECT ?, seq_id, position, part FROM _parts", [name])
    con.unregister("_parts")


def _positions(lengths: np.ndarray) -> np.ndarray:
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return (np.arange(int(lengths.sum()), dtype=np.int64) - starts).astype(np.int32)


def _random_sequence(con: duckdb.DuckDBPyConnection, spec: RandomSequenceSplit, rng: np.random.Generator) -> dict:
    n = len(_seq_lengths(con))
    n_test = int(round(n * spec.test_fraction))
    n_valid = int(round(n * spec.valid_fraction))
    if n_test + n_valid >= n and n > 0:
        raise InputError(f"{n} sequences are too few for a {spec.valid_fraction}/{spec.test_fraction} split", expected="more sequences")
    order = rng.permutation(n)
    part = np.zeros(n, dtype=np.uint8)
    part[order[:n_valid]] = Part.VALID
    part[order[n_valid : n_valid + n_test]] = Part.TEST
    _insert_sequence_parts(con, spec.name, part)
    return spec.model_dump() | {"sequences": {"train": int((part == 0).sum()), "valid": n_valid, "test": n_test}}


def _temporal(con: duckdb.DuckDBPyConnection, spec: TemporalSplit, rng: np.random.Generator) -> dict:
    nulls = con.execute("SELECT count(*) - count(ts) FROM events").fetchone()[0]
    if nulls:
        raise InputError(f"{nulls} events have no timestamp", field="ts", expected="a timestamp on every event for a temporal split")
    valid_cut, test_cut = spec.valid_cut, spec.test_cut
    if test_cut is None:
        test_cut = _cut_for(con, spec.test_fraction)
    if valid_cut is None and spec.valid_fraction == 0:
        valid_cut = test_cut  # no validation events: valid ends where it starts
    if valid_cut is None and spec.test_cut is not None:
        valid_cut = _valid_cut_before(con, spec, test_cut)
    if valid_cut is None:
        valid_cut = int(
            con.execute(
                "SELECT quantile_disc(ts, ?) FROM events", [1 - spec.test_fraction - spec.valid_fraction]
            ).fetchone()[0]
        )
    if valid_cut > test_cut:
        raise ConfigError(f"split {spec.name}: valid_cut {valid_cut} is after test_cut {test_cut}")
    con.execute(
        """INSERT INTO split_events
           SELECT ?, seq_id, position, CASE WHEN ts >= ? THEN 2 WHEN ts >= ? THEN 1 ELSE 0 END FROM events""",
        [spec.name, test_cut, valid_cut],
    )
    return spec.model_dump() | {"valid_cut": valid_cut, "test_cut": test_cut}


def _valid_cut_before(con: duckdb.DuckDBPyConnection, spec: TemporalSplit, test_cut: int) -> int:
    """With a given test_cut, validation is the last valid_fraction of all N events ending at it:
    the quantile 1 - valid_fraction * N / B of the B event times before test_cut. More than B
    events asked for is a ConfigError naming valid_fraction and test_cut."""
    total, before = con.execute("SELECT count(*), count(*) FILTER (WHERE ts < ?) FROM events", [test_cut]).fetchone()
    want = spec.valid_fraction * total
    if want >= before:
        raise ConfigError(
            f"split {spec.name}: valid_fraction {spec.valid_fraction} asks for {want:.0f} of the {total} events, "
            f"but only {before} lie before test_cut {_iso(test_cut)} (expected a smaller valid_fraction, "
            "a later test_cut, or a valid_cut)"
        )
    q = 1 - want / before
    return int(con.execute("SELECT quantile_disc(ts, ?) FROM events WHERE ts < ?", [q, test_cut]).fetchone()[0])


def _iso(t: int) -> str:
    """Unix seconds as ISO-8601 UTC text (how a cut may be written in a spec)."""
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def _cut_for(con: duckdb.DuckDBPyConnection, fraction: float) -> int:
    """The first time of the last `fraction` of events: quantile 1 - fraction of the event times.
    A fraction of 0 cuts one second past the last event, so nothing lies after it (the quantile 1
    is the last time itself, which put the events at that time after the cut)."""
    if fraction == 0:
        return int(con.execute("SELECT max(ts) FROM events").fetchone()[0]) + 1
    return int(con.execute("SELECT quantile_disc(ts, ?) FROM events", [1 - fraction]).fetchone()[0])


def _leave_last_out(con: duckdb.DuckDBPyConnection, spec: LeaveLastOutSplit, rng: np.random.Generator) -> dict:
    con.execute(
        """INSERT INTO split_events
           SELECT ?, e.seq_id, e.position,
                  CASE WHEN s.length < ? THEN 0
                       WHEN e.position = s.length - 1 THEN 2
                       WHEN e.position = s.length - 2 THEN 1 ELSE 0 END
           FROM events e JOIN sequences s USING (seq_id)""",
        [spec.name, spec.min_length],
    )
    return spec.model_dump()


def _strong(con: duckdb.DuckDBPyConnection, spec: StrongSplit, rng: np.random.Generator) -> dict:
    lengths = _seq_lengths(con)
    n = len(lengths)
    eligible = np.flatnonzero(lengths >= spec.min_length)

    def count(x: float) -> int:
        return int(round(x * n)) if x < 1 else int(x)

    n_valid, n_test = count(spec.valid_users), count(spec.test_users)
    if n_valid + n_test > len(eligible) or n_valid + n_test >= n:
        raise InputError(
            f"only {len(eligible)} of {n} users have at least {spec.min_length} events; cannot hold out {n_valid + n_test}",
            expected="fewer held-out users or a lower min_length",
        )
    chosen = rng.permutation(eligible)
    seq_role = np.zeros(n, dtype=np.uint8)
    seq_role[chosen[:n_valid]] = Part.VALID
    seq_role[chosen[n_valid : n_valid + n_test]] = Part.TEST
    ev_seq = np.repeat(np.arange(n), lengths)
    role = seq_role[ev_seq]
    pos = _positions(lengths).astype(np.int64)
    if spec.foldin == "random":
        key = rng.random(len(ev_seq))
        # rank of each event within its sequence by random key
        order = np.lexsort((key, ev_seq))
        rank = np.empty_like(pos)
        rank[order] = pos
    else:
        rank = pos
    n_fold = np.maximum(1, np.floor(lengths * spec.foldin_fraction).astype(np.int64))
    n_fold = np.minimum(n_fold, lengths - 1)
    is_fold = rank < n_fold[ev_seq]
    part = np.zeros(len(ev_seq), dtype=np.uint8)
    part[(role == Part.VALID) & is_fold] = Part.VALID_INPUT
    part[(role == Part.VALID) & ~is_fold] = Part.VALID
    part[(role == Part.TEST) & is_fold] = Part.TEST_INPUT
    part[(role == Part.TEST) & ~is_fold] = Part.TEST
    _insert_event_parts(con, spec.name, part)
    return spec.model_dump() | {"held_out": {"valid": n_valid, "test": n_test}}


def _random_holdout(con: duckdb.DuckDBPyConnection, spec: RandomHoldoutSplit, rng: np.random.Generator) -> dict:
    lengths = _seq_lengths(con)
    n = len(lengths)
    ev_seq = np.repeat(np.arange(n), lengths)
    pos = _positions(lengths).astype(np.int64)
    key = rng.random(len(ev_seq))
    order = np.lexsort((key, ev_seq))
    rank = np.empty_like(pos)
    rank[order] = pos  # random rank of each event within its user
    # Counts per user as in RecBole's ratio split: test and valid take round(fraction * n) each,
    # but every user keeps at least one training event.
    n_test = np.floor(lengths * spec.test_fraction + 0.5).astype(np.int64)
    n_valid = np.floor(lengths * spec.valid_fraction + 0.5).astype(np.int64)
    over = np.maximum(0, n_test + n_valid - (lengths - 1))
    n_valid = np.maximum(0, n_valid - over)
    over = np.maximum(0, n_test + n_valid - (lengths - 1))
    n_test = np.maximum(0, n_test - over)
    r = rank
    train_n = (lengths - n_test - n_valid)[ev_seq]
    part = np.zeros(len(ev_seq), dtype=np.uint8)
    part[(r >= train_n) & (r < train_n + n_valid[ev_seq])] = Part.VALID
    part[r >= train_n + n_valid[ev_seq]] = Part.TEST
    _insert_event_parts(con, spec.name, part)
    return spec.model_dump()


# ---------------------------------------------------------------------------------------------


def check_split(con: duckdb.DuckDBPyConnection, name: str, kind: str, params: dict) -> dict[str, Any]:
    """Leakage checks. Raise StoreError (failing the build) on a violation; return what was checked."""
    missing = con.execute(
        "SELECT (SELECT count(*) FROM events) - (SELECT count(*) FROM split_events WHERE split = ?)", [name]
    ).fetchone()[0]
    if missing:
        raise StoreError(f"split '{name}': {missing} events have no part")
    checks: dict[str, Any] = {"every_event_assigned": True}
    if kind in ("random_sequence", "strong"):
        # A sequence may appear in exactly one of train / valid users / test users.
        bad = con.execute(
            """
            SELECT seq_id, list(DISTINCT part ORDER BY part) FROM split_events WHERE split = ?
            GROUP BY seq_id
            HAVING count(DISTINCT CASE WHEN part = 0 THEN 0 WHEN part IN (1, 3) THEN 1 ELSE 2 END) > 1
            LIMIT 1
            """,
            [name],
        ).fetchone()
        if bad:
            raise StoreError(f"split '{name}': sequence {bad[0]} lies in more than one split (parts {bad[1]})")
        checks["sequence_in_one_split"] = True
    if kind == "temporal":
        row = con.execute(
            """SELECT max(CASE WHEN s.part = 0 THEN e.ts END), min(CASE WHEN s.part = 1 THEN e.ts END),
                      max(CASE WHEN s.part = 1 THEN e.ts END), min(CASE WHEN s.part = 2 THEN e.ts END)
               FROM events e JOIN split_events s USING (seq_id, position) WHERE s.split = ?""",
            [name],
        ).fetchone()
        max_train, min_valid, max_valid, min_test = row
        if max_train is not None and max_train >= params["valid_cut"]:
            raise StoreError(f"split '{name}': a training event at {max_train} is after the cut {params['valid_cut']}")
        if max_valid is not None and max_valid >= params["test_cut"]:
            raise StoreError(f"split '{name}': a validation event at {max_valid} is after the test cut {params['test_cut']}")
        checks["no_train_event_after_cut"] = True
    if kind == "leave_last_out":
        bad = con.execute(
            """SELECT seq_id FROM split_events WHERE split = ? GROUP BY seq_id
               HAVING max(CASE WHEN part = 0 THEN position END) > min(CASE WHEN part IN (1, 2) THEN position END)
                   OR max(CASE WHEN part = 1 THEN position END) > min(CASE WHEN part = 2 THEN position END)
               LIMIT 1""",
            [name],
        ).fetchone()
        if bad:
            raise StoreError(f"split '{name}': sequence {bad[0]} has a target before one of its training events")
        checks["targets_after_history"] = True
    counts = dict(
        con.execute(
            "SELECT part, count(*) FROM split_events WHERE split = ? GROUP BY part ORDER BY part", [name]
        ).fetchall()
    )
    checks["events_per_part"] = {Part(int(k)).name.lower(): int(v) for k, v in counts.items()}
    return checks


def add_split(store_path: str, spec: dict[str, Any] | Config, seed: int | None = None, min_count: int | None = None) -> str:
    """Add a split (and its vocabulary) to an existing store, atomically."""
    from segue.data import vocab as vocab_mod
    from segue.data.store import modify_store

    with modify_store(store_path) as con:
        cfg = json.loads(con.execute("SELECT value FROM meta WHERE key = 'build_config'").fetchone()[0])
        seed = cfg.get("seed", 0) if seed is None else seed
        min_count = cfg.get("vocab_min_count", 1) if min_count is None else min_count
        name = apply_split(con, spec, seed=seed)
        vocab_mod.fit_vocab(con, name, min_count=min_count)
    return name
