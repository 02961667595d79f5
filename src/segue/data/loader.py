"""Training batches from compiled split arrays through Grain, and padded histories for scoring.

Quick use (trainer)
-------------------
    data = SplitData.load(store, split)                      # data.train: SequenceArrays (memmapped)
    cfg = LoaderConfig(batch_size=128, context_length=50, unk_rate=0.01)
    loader = make_train_loader(data.train, cfg, seed=run_seed)
    batch = next(loader)            # {"inputs", "targets", "mask", "positions", "lengths", "rows", ...}
    state = loader.get_state()      # JSON-serialisable; store it in the checkpoint (ocp.args.JsonSave)
    ...
    loader = make_train_loader(data.train, cfg, seed=run_seed); loader.set_state(state)  # exact resume
    cfg.buckets()                   # every padded length T a batch can have (to precompile steps)
    loader.batches_per_epoch        # batch k belongs to epoch k // batches_per_epoch

    for ev in iter_eval_batches(history_arrays, rows, batch_size=256, context_length=50):
        scores = model(ev.inputs, ev.positions)[np.arange(len(ev.rows)), ev.last]   # next-item scores

Loss over a batch: sum(mask * loss(targets)) / sum(mask); B is always `batch_size` (a partial
last batch is filled with dummy rows whose mask is all False), T takes only `cfg.buckets()` values.

Training (`make_train_loader`)
------------------------------
Each nonempty row r of a `SequenceArrays` with items s_1..s_n becomes the token sequence

    [<start>, s_1, ..., s_n, <eop>]          (the <eop> only when `eop_target`; default True)

A window of at most `context_length + 1` consecutive tokens is cut from it (the most recent one by
default, or a random one with crop="random"); inputs are the window without its last token and
targets the window without its first, so column j predicts the token after input j:

    inputs  [B, T] int32   window[:-1], then <eop> padding
    targets [B, T] int32   window[1:],  then <eop> padding
    mask    [B, T] bool    True on real targets: every item up to and including the first <eop>
                           target, except <unk> targets (items outside the vocabulary are never
                           labels); False on padding and on the dummy rows of a partial batch

T is `context_length` without bucketing; with bucketing, T is the smallest length of
`bucket_lengths` that holds the longest row of the batch, and rows of similar length are batched
together, so short histories do not pay for the full context (few distinct T: few JAX compiles).

`<unk>` injection (unk_rate > 0) replaces real *input* items by <unk> at that rate (never the
<start> token, never a target), drawn from a generator seeded by (seed, epoch, batch index), so a
resumed run draws exactly what an uninterrupted run draws.

Every batch is a dict of numpy arrays:

    inputs, targets [B, T] int32; mask [B, T] bool; positions [B, T] int32 (0..T-1, the column);
    lengths [B] int32 (real input columns; 0 on dummy rows); rows [B] int64 (row of the arrays,
    -1 on dummy rows); epoch int64 scalar; and, when the arrays carry them, for each extra column
    X in rating, fb_<name>, ctx_<name>:
        X [B, T]         value of the input item at that column (0.0 / -1 where the input is a
                         special token or padding; ratings may be NaN where the store had none)
        target_X [B, T]  value of the target item (same fills)

Batches come in shuffled order, deterministic in (seed, epoch); an epoch has
ceil(n_rows / batch_size) batches (the last one filled with masked dummy rows, unless
drop_remainder). The loader is a Grain `MapDataset` (one element = one batch plan, assembled by a
vectorised numpy `map`) converted with `to_iter_dataset()`; its iterator state is
`{"next_index": k}` and resumes exactly, across epoch boundaries too. (`SequenceSource` is a plain
per-sequence Grain source for custom pipelines; the training loader does not need it.)

Scoring (`pad_histories`, `iter_eval_batches`)
----------------------------------------------
A history h_1..h_n is scored as the input [<start>, h_1, ..., h_n] cropped to its last
`context_length` tokens; the next-item scores are read at column `last`. Left-aligned inputs
(default, as in training) put tokens at columns 0..len-1 and pad after them with <eop>;
right-aligned inputs pad in front, and their positions start at 0 on the first real token.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import grain
import numpy as np
from pydantic import Field, model_validator

from segue.config import Config
from segue.data.arrays import SequenceArrays
from segue.data.vocab import EOP, START, UNK
from segue.errors import ConfigError

INFINITE = sys.maxsize  # length of the Grain dataset when num_epochs is None


class LoaderConfig(Config):
    """How training batches are made (saved with the run, so a resume rebuilds the same loader)."""

    batch_size: int = Field(128, ge=1)
    context_length: int = Field(50, ge=1)  # input columns (the window holds context_length + 1 tokens)
    unk_rate: float = Field(0.0, ge=0, lt=1)  # share of real input items replaced by <unk>
    crop: Literal["recent", "random"] = "recent"  # which window of a long sequence to keep
    eop_target: bool = True  # end each sequence with an <eop> target ("end of playlist")
    bucketing: bool = True  # batch rows of similar length, pad each batch to a bucket length
    bucket_lengths: list[int] | None = None  # default: multiples of 8 below context_length, and it
    bucket_pool: int = Field(32, ge=1)  # rows of this many batches are sorted by length together
    shuffle: bool = True
    num_epochs: int | None = Field(None, ge=1)  # None: repeat forever
    drop_remainder: bool = False  # False: the last batch is filled with masked dummy rows
    extras: bool = True  # include rating / fb_* / ctx_* columns aligned with inputs and targets
    seed: int = Field(0, ge=0)
    prefetch_threads: int = Field(1, ge=0)  # Grain reader threads (0: assemble on the caller's thread)
    prefetch_buffer: int = Field(4, ge=0)  # batches assembled ahead

    @model_validator(mode="after")
    def _check_buckets(self) -> LoaderConfig:
        if self.bucket_lengths is not None:
            b = self.bucket_lengths
            if not b or any(x < 1 for x in b) or sorted(set(b)) != b:
                raise ValueError("bucket_lengths must be increasing positive lengths")
            # Only against a context_length given here: a model's config sets the window from
            # model.context_length and checks its buckets against that (TransformerConfig).
            if "context_length" in self.model_fields_set and b[-1] < self.context_length:
                raise ValueError(f"the largest bucket length {b[-1]} is below context_length {self.context_length}")
        return self

    def buckets(self) -> np.ndarray:
        """The padded lengths a batch may have (int64, increasing, the last >= context_length)."""
        if not self.bucketing:
            return np.array([self.context_length], dtype=np.int64)
        if self.bucket_lengths is not None:
            b = [x for x in self.bucket_lengths if x < self.context_length] + [self.context_length]
            return np.array(sorted(set(b)), dtype=np.int64)
        return np.array([*range(8, self.context_length, 8), self.context_length], dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# a per-sequence source, for custom Grain pipelines


class SequenceSource(grain.sources.RandomAccessDataSource):
    """Grain random-access source of single training sequences: record i is nonempty row rows[i].

    Each record is {"row": int, "tokens": int32 [n], plus rating / fb_<name> / ctx_<name> [n]}.
    `make_train_loader` does not go through it (it assembles whole batches at once, far faster);
    it is here for pipelines that need per-sequence records, e.g.
    `grain.MapDataset.source(SequenceSource(arrays)).shuffle(seed=0).map(...)`.
    """

    def __init__(self, arrays: SequenceArrays, rows: np.ndarray | None = None) -> None:
        self.arrays = arrays
        self.rows = arrays.nonempty().astype(np.int64) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        a, r = self.arrays, int(self.rows[i])
        lo, hi = int(a.offsets[r]), int(a.offsets[r + 1])
        rec: dict[str, Any] = {"row": r, "tokens": np.asarray(a.tokens[lo:hi], dtype=np.int32)}
        if a.rating is not None:
            rec["rating"] = np.asarray(a.rating[lo:hi])
        for k, v in a.feedback.items():
            rec[f"fb_{k}"] = np.asarray(v[lo:hi])
        for k, v in a.context.items():
            rec[f"ctx_{k}"] = np.asarray(v[lo:hi])
        return rec


# ---------------------------------------------------------------------------------------------
# batch plans: which rows form batch b of epoch e, and its padded length


@dataclass(frozen=True)
class BatchPlan:
    epoch: int
    index: int  # batch index within the epoch
    rows: np.ndarray  # int64 [B]; -1 marks a dummy row
    length: int  # padded length T


class _PlanSource:
    """Random-access source of batch plans: element i is batch i % n of epoch i // n."""

    def __init__(self, row_ids: np.ndarray, row_len: np.ndarray, config: LoaderConfig, seed: int) -> None:
        self.row_ids = row_ids  # int64 [R] training rows of the arrays
        self.row_len = row_len  # int64 [R] real input columns of each (after cropping)
        self.config = config
        self.seed = seed
        self.buckets = config.buckets()
        b = config.batch_size
        self.batches_per_epoch = len(row_ids) // b if config.drop_remainder else -(-len(row_ids) // b)
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"loader: {len(row_ids)} training sequences make no batch of {b} with drop_remainder"
                if len(row_ids)
                else "loader: the arrays have no nonempty rows to train on"
            )
        epochs = config.num_epochs
        self._len = INFINITE if epochs is None else epochs * self.batches_per_epoch
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> BatchPlan:
        if not 0 <= i < self._len:
            raise IndexError(i)
        epoch, b = divmod(int(i), self.batches_per_epoch)
        rows, lengths = self.epoch_plan(epoch)
        return BatchPlan(epoch=epoch, index=b, rows=rows[b], length=int(lengths[b]))

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """rows [n_batches, B] (row ids, -1 = dummy) and padded lengths [n_batches] of `epoch`."""
        with self._lock:
            plan = self._cache.get(epoch)
            if plan is None:
                plan = self._make_plan(epoch)
                if len(self._cache) >= 2:  # readers touch at most the current and the next epoch
                    self._cache.pop(min(self._cache))
                self._cache[epoch] = plan
            return plan

    def _make_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        n, bsz = len(self.row_ids), cfg.batch_size
        rng = np.random.default_rng([self.seed, epoch, 0x5E6])
        order = rng.permutation(n) if cfg.shuffle else np.arange(n)
        if cfg.bucketing:
            # Sort by length inside pools of `bucket_pool` batches: batches hold similar lengths but
            # still vary from epoch to epoch (a global sort would fix the batches forever).
            pool = bsz * cfg.bucket_pool
            for start in range(0, n, pool):
                chunk = order[start : start + pool]
                order[start : start + pool] = chunk[np.argsort(self.row_len[chunk], kind="stable")]
        n_batches = self.batches_per_epoch
        padded = np.full(n_batches * bsz, -1, dtype=np.int64)
        take = min(n, n_batches * bsz)
        padded[:take] = order[:take]
        slots = padded.reshape(n_batches, bsz)
        lens = np.where(slots >= 0, self.row_len[np.maximum(slots, 0)], 0).max(axis=1)
        lengths = self.buckets[np.minimum(np.searchsorted(self.buckets, lens), len(self.buckets) - 1)]
        rows = np.where(slots >= 0, self.row_ids[np.maximum(slots, 0)], -1)
        if cfg.shuffle:
            perm = rng.permutation(n_batches)
            rows, lengths = rows[perm], lengths[perm]
        return rows, lengths


# ---------------------------------------------------------------------------------------------
# batch assembly (vectorised over the batch)


class _Assemble:
    """BatchPlan -> batch dict (see the module docstring)."""

    def __init__(self, arrays: SequenceArrays, config: LoaderConfig, seed: int, shard: Any = None) -> None:
        self.config = config
        self.seed = seed
        self.shard = _shard_slice(config.batch_size, shard)
        # offsets are small (8 bytes a row) and read for every row: keep them in memory.
        self.offsets = np.asarray(arrays.offsets, dtype=np.int64)
        self.tokens = arrays.tokens
        self.extras: dict[str, tuple[np.ndarray, Any]] = {}
        if config.extras:
            if arrays.ts is not None:  # unix seconds, 0 on special tokens (time features)
                self.extras["ts"] = (arrays.ts, np.int64(0))
            if arrays.rating is not None:
                self.extras["rating"] = (arrays.rating, np.float32(0))
            for k, v in arrays.feedback.items():
                self.extras[f"fb_{k}"] = (v, np.float32(0))
            for k, v in arrays.context.items():
                self.extras[f"ctx_{k}"] = (v, np.int32(-1))

    def __call__(self, plan: BatchPlan) -> dict[str, np.ndarray]:
        cfg = self.config
        lo, hi = self.shard
        B = len(plan.rows)  # random draws are made for the whole batch, so every shard sees its part of them
        rows, T = plan.rows[lo:hi], plan.length
        dummy = rows < 0
        r = np.maximum(rows, 0)
        start = self.offsets[r]
        n = np.where(dummy, 0, self.offsets[r + 1] - start)  # items per row [B]
        last = n + int(cfg.eop_target)  # index of the last real token in [<start>, s.., <eop>]
        eff = np.where(dummy, 0, np.minimum(last, cfg.context_length))  # real input columns [B]
        need_rng = cfg.unk_rate > 0 or cfg.crop == "random"
        rng = np.random.default_rng([self.seed, plan.epoch, plan.index, 0xB47]) if need_rng else None
        if cfg.crop == "random":
            # uniform over the windows that fit: offset in [0, last - eff]
            off = (rng.random(B)[lo:hi] * (last - eff + 1)).astype(np.int64)
        else:
            off = last - eff
        # k[b, j]: index into the row's token sequence of the window's j-th token; j in [0, T].
        cols = np.arange(T + 1, dtype=np.int64)
        k = off[:, None] + cols[None, :]
        is_item = (k >= 1) & (k <= n[:, None])  # [B, T+1]
        idx = np.where(is_item, start[:, None] + k - 1, 0)
        tok = np.where(is_item, self.tokens[idx.ravel()].reshape(idx.shape), EOP).astype(np.int32)
        tok[k == 0] = START
        real = cols[None, :T] < eff[:, None]  # [B, T]: input column j is real (so is its target)
        inputs = np.where(real, tok[:, :T], EOP).astype(np.int32)
        targets = np.where(real, tok[:, 1:], EOP).astype(np.int32)
        mask = real & (targets != UNK)
        if cfg.unk_rate > 0:
            hit = (rng.random((B, T))[lo:hi] < cfg.unk_rate) & real & is_item[:, :T]
            inputs[hit] = UNK
        batch: dict[str, np.ndarray] = {
            "inputs": inputs,
            "targets": targets,
            "mask": mask,
            "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (len(rows), T)).copy(),
            "lengths": eff.astype(np.int32),
            "rows": rows.astype(np.int64),
            "epoch": np.int64(plan.epoch),
        }
        for name, (values, fill) in self.extras.items():
            v = np.asarray(values[idx.ravel()]).reshape(idx.shape)
            v = np.where(is_item, v, fill)
            batch[name] = np.where(real, v[:, :T], fill)
            batch["target_" + name] = np.where(real, v[:, 1:], fill)
        return batch


# ---------------------------------------------------------------------------------------------
# the training loader


class TrainLoader:
    """An endless (or `num_epochs`-long) iterator of training batches with checkpointable state.

    >>> loader = make_train_loader(data.train, LoaderConfig(batch_size=128), seed=0)
    >>> batch = next(loader)                      # dict of numpy arrays, see module docstring
    >>> state = loader.get_state()                # JSON-serialisable dict; save with the checkpoint
    >>> loader = make_train_loader(data.train, same_config, seed=0); loader.set_state(state)

    `loader.dataset` is the underlying Grain `MapDataset` (element i = batch i, so
    `loader.dataset[i]` reads any batch directly) and `loader.iterator` the Grain iterator.
    """

    def __init__(self, arrays: SequenceArrays, config: LoaderConfig, seed: int, shard: Any = None) -> None:
        self.config = config
        self.seed = seed
        row_ids = arrays.nonempty().astype(np.int64)
        lengths = np.asarray(arrays.lengths, dtype=np.int64)[row_ids]
        row_len = np.minimum(lengths + int(config.eop_target), config.context_length)
        self.source = _PlanSource(row_ids, row_len, config, seed)
        self.dataset = grain.MapDataset.source(self.source).map(_Assemble(arrays, config, seed, shard))
        self.fingerprint = _fingerprint(arrays, config, seed)
        self._iter_ds = self.dataset.to_iter_dataset(
            grain.ReadOptions(num_threads=config.prefetch_threads, prefetch_buffer_size=config.prefetch_buffer)
        )
        self.iterator = iter(self._iter_ds)

    @property
    def batches_per_epoch(self) -> int:
        return self.source.batches_per_epoch

    @property
    def n_sequences(self) -> int:
        """Training sequences per epoch (nonempty rows)."""
        return len(self.source.row_ids)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self.iterator)

    def get_state(self) -> dict[str, Any]:
        """{"grain": Grain iterator state, "fingerprint": data/config/seed digest}."""
        return {"grain": self.iterator.get_state(), "fingerprint": self.fingerprint}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from a state returned by `get_state` of a loader over the same data and config."""
        if state.get("fingerprint") != self.fingerprint:
            raise ConfigError(
                "loader state was saved for other training data, loader config or seed "
                f"(fingerprint {state.get('fingerprint')}, this loader {self.fingerprint})"
            )
        self.iterator.set_state(state["grain"])

    @property
    def step(self) -> int:
        """Batches returned so far (the Grain iterator's next index)."""
        return int(self.iterator.get_state()["next_index"])


def make_train_loader(
    arrays: SequenceArrays, config: LoaderConfig | None = None, seed: int | None = None, shard: Any = None
) -> TrainLoader:
    """Training batches over the nonempty rows of `arrays` (`seed` overrides `config.seed`).

    `shard` (Grain `ShardOptions`, e.g. `grain.sharding.ShardByJaxProcess()` on each host of a
    multi-host run) makes this loader yield only rows [i B / n, (i + 1) B / n) of every batch for
    shard i of n: the global batches, their order and their random draws do not depend on n."""
    config = config or LoaderConfig()
    return TrainLoader(arrays, config, config.seed if seed is None else seed, shard)


def _shard_slice(batch_size: int, shard: Any) -> tuple[int, int]:
    """Rows [lo, hi) of each batch read by `shard` (ShardOptions: shard_index, shard_count)."""
    if shard is None or shard.shard_count == 1:
        return 0, batch_size
    n, i = shard.shard_count, shard.shard_index
    if batch_size % n:
        raise ConfigError(f"loader.batch_size: {batch_size} does not split over {n} processes")
    per = batch_size // n
    return i * per, (i + 1) * per


def _fingerprint(arrays: SequenceArrays, config: LoaderConfig, seed: int) -> str:
    h = hashlib.sha256()
    h.update(config.model_dump_json(exclude={"prefetch_threads", "prefetch_buffer", "num_epochs"}).encode())
    h.update(f"seed={seed};rows={len(arrays)};events={arrays.n_events};".encode())
    h.update(np.ascontiguousarray(arrays.offsets[:: max(1, len(arrays) // 1024)]).tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# scoring side


@dataclass
class EvalInputs:
    """Padded histories for next-item scoring; read the model output of row i at column last[i]."""

    inputs: np.ndarray  # int32 [n, T]
    positions: np.ndarray  # int32 [n, T] (0 on the first real token; 0 on left padding)
    lengths: np.ndarray  # int32 [n] real columns (<start> included)
    last: np.ndarray  # int32 [n] column of the last real token
    rows: np.ndarray  # int64 [n]


def pad_histories(
    arrays: SequenceArrays,
    rows: np.ndarray | None = None,
    *,
    context_length: int = 50,
    align: Literal["left", "right"] = "left",
    pad_to: int | None = None,
    pad_token: int = EOP,
) -> EvalInputs:
    """[<start>, h_1..h_n] of each row cropped to its last `context_length` tokens, padded to T.

    T = `pad_to` if given (>= the longest row), else the longest row. Rows may be empty (the input
    is then <start> alone). With align="left" tokens sit at columns 0..len-1 (as in training);
    with align="right" they end at column T-1.
    """
    rows = np.arange(len(arrays), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    offsets = np.asarray(arrays.offsets, dtype=np.int64)
    start, n = offsets[rows], offsets[rows + 1] - offsets[rows]
    eff = np.minimum(n + 1, context_length)  # real columns
    longest = int(eff.max()) if len(rows) else 1
    T = longest if pad_to is None else int(pad_to)
    if longest > T:
        raise ValueError(f"pad_to={T} is shorter than the longest input ({longest})")
    j = np.arange(T, dtype=np.int64)[None, :]
    shift = 0 if align == "left" else (T - eff)[:, None]
    col = j - shift  # column inside the real input, 0..eff-1 where real
    real = (col >= 0) & (col < eff[:, None])
    k = col + (n + 1 - eff)[:, None]  # index in [<start>, h_1..h_n]
    is_item = real & (k >= 1)
    idx = np.where(is_item, start[:, None] + k - 1, 0)
    tok = np.asarray(arrays.tokens[idx.ravel()]).reshape(idx.shape) if len(arrays.tokens) else np.zeros(idx.shape, np.int32)
    inputs = np.where(is_item, tok, np.where(real, START, pad_token)).astype(np.int32)
    positions = np.where(real, col, 0).astype(np.int32)
    last = (eff - 1) if align == "left" else np.full(len(rows), T - 1)
    return EvalInputs(
        inputs=inputs, positions=positions, lengths=eff.astype(np.int32), last=last.astype(np.int32), rows=rows
    )


def iter_eval_batches(
    arrays: SequenceArrays,
    rows: np.ndarray | None = None,
    *,
    batch_size: int = 256,
    context_length: int = 50,
    align: Literal["left", "right"] = "left",
    bucketing: bool = True,
    bucket_lengths: list[int] | None = None,
) -> Iterator[EvalInputs]:
    """`pad_histories` in batches of rows of similar length, each padded to a bucket length.

    Rows are visited in order of input length (`EvalInputs.rows` says which); every row of `rows`
    appears exactly once. The last batch may hold fewer rows.
    """
    rows = np.arange(len(arrays), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    cfg = LoaderConfig(context_length=context_length, bucketing=bucketing, bucket_lengths=bucket_lengths)
    buckets = cfg.buckets()
    offsets = np.asarray(arrays.offsets, dtype=np.int64)
    eff = np.minimum(offsets[rows + 1] - offsets[rows] + 1, context_length)
    order = np.argsort(eff, kind="stable") if bucketing else np.arange(len(rows))
    for s in range(0, len(rows), batch_size):
        sel = order[s : s + batch_size]
        longest = int(eff[sel].max())
        T = int(buckets[min(np.searchsorted(buckets, longest), len(buckets) - 1)])
        yield pad_histories(arrays, rows[sel], context_length=context_length, align=align, pad_to=T)
