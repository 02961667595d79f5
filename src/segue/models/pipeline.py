"""Two-stage recommendation: blended candidate generators, then a LightGBM LambdaRank ranker.

A pipeline is a recommender (family "pipeline") made of other fitted recommenders:
  1. candidates: each generator g (any fitted segue model) proposes its top n_g items after the
     history (seen items excluded); a built-in "names" generator proposes the items of training
     playlists whose names share words with the query's name (when the store has names). The pool
     is the union, and every candidate keeps each generator's score and rank as features;
  2. ranking: `segue.models.ranking_features` computes the features of every candidate and the
     ranker (`segue.models.ranker`) orders the pool.
`score()` gives pool items the ranker's score and every other item -1e6 - d, d the item's dense
popularity rank (0 for the highest training count, equal counts sharing a rank: whole numbers, which
float32 holds exactly at this offset), so full-ranking evaluation ranks the pool first, then the
rest by popularity. The pools leave out the history's items; `recommend(exclude_seen=False)` builds
pools that may hold them. `recommend()` returns pool items only (as the server does; its `allow`
list builds the pools), never the backfill.

Training never touches the test part: generators are fitted on the training part (or loaded from
folders fitted on it); the ranker learns from the validation part's pools, whose labels are the
validation targets (leave-last-out: the second-to-last item; random_sequence splits: held-out
validation playlists cut as in playlist continuation, K in `continuation_ks`, K = 0 being the
title-only cold start).

Folder layout: model.toml (family "pipeline", the config with each generator's family),
vocab.json, generators/<name>/ (each generator's own model folder), ranker.txt (LightGBM),
features.json / features.npz / knn.npz (/ name_items.npz, item_words.npz): the feature state.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
from pydantic import Field, model_validator

from segue.config import Config
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.splits import Part
from segue.data.vocab import N_SPECIAL, UNK
from segue.errors import ConfigError, SegueError
from segue.models.base import (
    NEG_INF,
    BaseRecommender,
    _check_tokens,
    check_k,
    load_model,
    model_class,
    top_k,
)
from segue.models.ranker import Ranker, RankerConfig
from segue.models.ranking_features import FeatureState, fit_feature_state

NAMES_GENERATOR = "names"
OUTSIDE_POOL = np.float32(-1e6)  # score offset of items no generator proposed


def outside_pool(scores: np.ndarray) -> np.ndarray:
    """Mask of pipeline scores that belong to items no generator proposed: score() gives them
    OUTSIDE_POOL - their dense popularity rank (PipelineRecommender.backfill), so they rank after
    every pool item; their values are an order, not a score worth showing."""
    return np.asarray(scores) <= OUTSIDE_POOL / 2


class GeneratorSpec(Config):
    """One candidate generator: a fitted model folder, or a family (+ config) fitted by the pipeline."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    folder: str | None = None
    family: str | None = None
    config: dict[str, Any] = {}
    n: int = Field(200, ge=1, description="candidates this generator proposes per query")

    @model_validator(mode="after")
    def _one_source(self) -> GeneratorSpec:
        if self.name == NAMES_GENERATOR:
            raise ValueError(f"'{NAMES_GENERATOR}' is the built-in name generator; pick another name")
        if (self.folder is None) == (self.family is None):
            raise ValueError(f"generator '{self.name}': give either folder (a fitted model) or family (fitted here)")
        if self.family is not None:  # checked here, not when its turn to be fitted comes (after the others)
            try:
                cls = model_class(self.family)
            except SegueError as e:
                raise ValueError(f"generator '{self.name}': {e}") from None
            except ImportError as e:
                raise ValueError(f"generator '{self.name}': family '{self.family}' is not available ({e})") from None
            try:
                cls.config_class.from_dict(self.config, source=f"generator '{self.name}'", within=("config",))
            except ConfigError as e:
                raise ValueError(str(e)) from None
        return self


class PipelineConfig(Config):
    generators: list[GeneratorSpec] = Field(min_length=1)
    name_candidates: int = Field(100, ge=0, description="built-in name generator (0 = off)")
    last_k: int = Field(5, ge=1)  # history items the similarity features look at
    recent_fraction: float = Field(0.1, gt=0, le=1)
    knn_neighbours: int = Field(100, ge=1)
    item2vec: str | None = None  # generator whose vectors give i2v features (default: the first item2vec)
    continuation_ks: list[int] = [0, 1, 5, 10, 25, 100]  # random_sequence splits: seeds given
    batch_size: int = Field(128, ge=1)
    # A generator with a feedback head (a transformer trained with events.predict) whose predicted
    # feedback of each candidate becomes features <gen>_fb_<column> (default: the first such
    # generator; none: no such features), and which the "feedback_head" ranker orders by.
    feedback: str | None = None
    feedback_features: bool = True
    ranker: RankerConfig = RankerConfig()

    @model_validator(mode="before")
    @classmethod
    def _ranker_kind(cls, data: Any) -> Any:
        # `ranker = "feedback_head"` is short for `[pipeline.ranker] kind = "feedback_head"`.
        if isinstance(data, dict) and isinstance(data.get("ranker"), str):
            data = dict(data) | {"ranker": {"kind": data["ranker"]}}
        return data

    @model_validator(mode="after")
    def _unique(self) -> PipelineConfig:
        names = [g.name for g in self.generators]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"generator names must be unique: {', '.join(dup)} repeated")
        return self


@dataclass
class Pool:
    """One query's merged candidates with each generator's score and rank (NaN: not proposed)."""

    tokens: np.ndarray  # int64 [C]
    scores: np.ndarray  # float32 [G, C]
    ranks: np.ndarray  # float32 [G, C]

    def sources(self, generators: list[str], which: np.ndarray | None = None) -> list[list[str]]:
        """Per candidate (those at positions `which`, default all), the generators that proposed
        it (in config order)."""
        hit = ~np.isnan(self.ranks)
        rows = (hit if which is None else hit[:, np.asarray(which, dtype=np.int64)]).T.tolist()
        return [[g for g, h in zip(generators, row, strict=True) if h] for row in rows]


def sequence_names(store: Any, seq_ids: np.ndarray) -> list[str | None]:
    """The stored names of sequences `seq_ids` (None where unnamed)."""
    rows = dict(store.con.execute("SELECT seq_id, name FROM sequences WHERE name IS NOT NULL").fetchall())
    return [rows.get(int(s)) for s in np.asarray(seq_ids)]


class PipelineRecommender(BaseRecommender):
    family = "pipeline"
    config_class = PipelineConfig
    config: PipelineConfig

    def __init__(self, config: PipelineConfig | None = None, vocab: Any = None) -> None:
        super().__init__(config, vocab)
        self.generators: dict[str, BaseRecommender] = {}
        self.state: FeatureState | None = None
        self.ranker: Ranker | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._inflight, self._inflight_lock = 0, threading.Lock()  # concurrent pools() calls
        self._static: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # see _static_results
        self._fill: tuple[Any, np.ndarray] | None = None  # (vocab, backfill()) cached

    # --- structure -----------------------------------------------------------------------------
    @property
    def generator_names(self) -> list[str]:
        names = [g.name for g in self.config.generators]
        if self.state is not None and self.state.name_items is not None and self.config.name_candidates > 0:
            names.append(NAMES_GENERATOR)
        return names

    def _sizes(self) -> dict[str, int]:
        return {g.name: g.n for g in self.config.generators} | {NAMES_GENERATOR: self.config.name_candidates}

    # --- fitting -------------------------------------------------------------------------------
    def fit(self, data: SplitData, *, progress: Callable[[str, int, int], None] | None = None) -> Self:
        self.vocab = data.vocab
        if self.config.ranker.kind == "lightgbm":  # before any generator is fitted
            valid = data.targets(Part.VALID)
            if not (np.asarray(valid.tokens) > UNK).any():
                raise SegueError(
                    f"pipeline: split '{data.split}' has no validation events (of items in its vocabulary), and the "
                    "ranker learns from the validation part's targets: use a split with a validation part "
                    "(or ranker = \"feedback_head\", which trains nothing)"
                )
        t0 = time.perf_counter()
        # Fitted folders are loaded (and checked) first: a missing or mismatched one fails before
        # the other generators' fits, not after them.
        loaded = {}
        for spec in self.config.generators:
            if spec.folder is not None:
                loaded[spec.name] = load_generator(Path(spec.folder), spec.name)
                _check_same_vocab(spec.name, loaded[spec.name], data)
        fitted = {}
        for spec in self.config.generators:
            if spec.folder is None:
                cls = model_class(spec.family)  # type: ignore[arg-type]
                config = cls.config_class.from_dict(spec.config, source=f"generator '{spec.name}'", within=("config",))
                fitted[spec.name] = cls(config).fit(data)
        self.generators = {s.name: loaded[s.name] if s.folder is not None else fitted[s.name] for s in self.config.generators}
        # Generators are stored inside the pipeline folder: record each one's family and config.
        self.config = self.config.model_copy(
            update={
                "generators": [
                    s.model_copy(update={"folder": None, "family": m.family, "config": m.config.model_dump(mode="json")})
                    for s, m in zip(self.config.generators, self.generators.values(), strict=True)
                ]
            }
        )
        self.config = self.config.model_copy(update={"feedback": self._resolve_feedback()})
        t1 = time.perf_counter()
        c = self.config
        i2v = self._item2vec_vectors()
        gens = [g.name for g in c.generators]
        self.state = fit_feature_state(
            data, gens, last_k=c.last_k, recent_fraction=c.recent_fraction, knn_neighbours=c.knn_neighbours, i2v_vectors=i2v
        )
        self.state.generators = self.generator_names
        self.state.model_features = self._feedback_features()
        t2 = time.perf_counter()
        if c.ranker.kind == "feedback_head":  # nothing to train: the feedback head orders the pool
            self.ranker = None
            self.meta["ranker_training"] = {"kind": "feedback_head", "feature": self._feedback_ranking()[0]}
            return self
        hist, targets = self.training_queries(data)
        x, y, groups = self.training_rows(hist, targets, progress=progress)
        t3 = time.perf_counter()
        try:
            self.ranker, info = Ranker.fit(x, y, groups, self.state.names, c.ranker)
        except SegueError as e:  # name the pools it learned from
            sizes = ", ".join(f"{n} n={k}" for n, k in self._sizes().items() if n in self.generator_names)
            raise SegueError(f"pipeline: {e} (generators: {sizes})") from None
        t4 = time.perf_counter()
        self.meta["ranker_training"] = info | {
            "part": "valid",
            "queries_with_target_in_pool": int(len(groups)),
            "queries_sampled": len(targets),
            "seconds": {"generators": round(t1 - t0, 1), "features": round(t2 - t1, 1), "pools": round(t3 - t2, 1), "ranker": round(t4 - t3, 1)},
        }
        return self

    def _resolve_feedback(self) -> str | None:
        """The generator whose feedback head gives features / ranks (see PipelineConfig.feedback)."""
        c = self.config
        needed = c.ranker.kind == "feedback_head"
        name = c.feedback
        if name is None:
            if not (c.feedback_features or needed):
                return None
            name = next((n for n, m in self.generators.items() if _feedback_targets(m)), None)
            if name is None:
                if needed:
                    raise ConfigError(
                        "pipeline: ranker 'feedback_head' needs a generator with a feedback head "
                        "(a transformer trained with events.predict)"
                    )
                return None
        if name not in self.generators or not _feedback_targets(self.generators[name]):
            raise ConfigError(f"pipeline: feedback = '{name}' names no generator with a feedback head")
        col = c.ranker.feedback_column
        if needed and col is not None and col not in _feedback_targets(self.generators[name]):
            raise ConfigError(
                f"pipeline: ranker.feedback_column '{col}' is not a column of generator '{name}''s feedback head "
                f"({', '.join(_feedback_targets(self.generators[name]))})"
            )
        return name

    def _feedback_features(self) -> list[str]:
        name = self.config.feedback
        return [] if name is None else [f"{name}_fb_{t}" for t in _feedback_targets(self.generators[name])]

    def _feedback_ranking(self) -> tuple[str, float]:
        """(feature the feedback_head ranker orders by, sign)."""
        r, name = self.config.ranker, self.config.feedback
        col = r.feedback_column or _feedback_targets(self.generators[name])[0]  # type: ignore[index]
        return f"{name}_fb_{col}", (1.0 if r.feedback_order == "high_first" else -1.0)

    def _item2vec_vectors(self) -> np.ndarray | None:
        name = self.config.item2vec
        if name is None:
            name = next((n for n, m in self.generators.items() if m.family == "item2vec"), None)
        if name is None:
            return None
        if name not in self.generators or self.generators[name].family != "item2vec":
            raise ConfigError(f"pipeline: item2vec = '{name}' names no item2vec generator")
        return np.asarray(self.generators[name].input_vectors, np.float32)  # type: ignore[attr-defined]

    def training_queries(self, data: SplitData) -> tuple[SequenceArrays, list[np.ndarray]]:
        """The ranker's training queries, from the validation part only: histories (row i = query
        i, meta["seq_names"] and meta["seq_ids"] set) and each query's target tokens."""
        rng = np.random.default_rng(self.config.ranker.seed)
        if data.kind == "random_sequence":
            playlists = data.targets(Part.VALID)
            rows = np.flatnonzero(playlists.lengths > 0)
            ks = np.array(sorted(set(self.config.continuation_ks)), dtype=np.int64)
            given = np.zeros(len(rows), np.int64)
            for i, r in enumerate(rows):
                ok = ks[ks < playlists.lengths[r]]
                given[i] = rng.choice(ok) if len(ok) else 0
            hist = playlists.take(rows, np.zeros(len(rows), np.int64), given)
            targets = [np.asarray(playlists.row(r))[k:] for r, k in zip(rows, given, strict=True)]
        else:
            h, t = data.history(Part.VALID), data.targets(Part.VALID)
            rows = np.flatnonzero(t.lengths > 0)
            hist = h.take(rows)
            targets = [np.asarray(t.row(r)) for r in rows]
        if len(rows) > self.config.ranker.max_queries:
            pick = np.sort(rng.choice(len(rows), self.config.ranker.max_queries, replace=False))
            rows, hist, targets = rows[pick], hist.take(pick), [targets[i] for i in pick]
        hist.meta = dict(hist.meta) | {"seq_ids": rows.tolist(), "seq_names": sequence_names(data.store, rows)}
        targets = [np.unique(t[t > UNK].astype(np.int64)) for t in targets]
        return hist, targets

    def training_rows(
        self,
        hist: SequenceArrays,
        targets: list[np.ndarray],
        *,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Feature rows x [N, F], labels y [N] and group sizes of the queries with a target in
        their pool: every target candidate and up to `negatives_per_query` sampled others."""
        cfg = self.config.ranker
        rng = np.random.default_rng(cfg.seed + 1)
        xs, ys, groups = [], [], []
        bs = self.config.batch_size
        for lo in range(0, len(hist), bs):
            rows = np.arange(lo, min(lo + bs, len(hist)))
            qs, subs = [], []
            for q, pool in zip(rows, self.pools(hist, rows), strict=True):
                label = np.isin(pool.tokens, targets[q])
                if not label.any():
                    continue
                neg = np.flatnonzero(~label)
                if len(neg) > cfg.negatives_per_query:
                    neg = rng.choice(neg, cfg.negatives_per_query, replace=False)
                keep = np.sort(np.concatenate([np.flatnonzero(label), neg]))
                qs.append(int(q))
                subs.append(Pool(pool.tokens[keep], pool.scores[:, keep], pool.ranks[:, keep]))
                ys.append(label[keep].astype(np.float32))
                groups.append(len(keep))
            if subs:
                xs += self.features_of(hist, np.asarray(qs, dtype=np.int64), subs)
            if progress:
                progress("pipeline pools", int(rows[-1]) + 1, len(hist))
        n_f = len(self.state.names)  # type: ignore[union-attr]
        x = np.concatenate(xs) if xs else np.zeros((0, n_f), np.float32)
        y = np.concatenate(ys) if ys else np.zeros(0, np.float32)
        return x, y, np.asarray(groups, dtype=np.int64)

    # --- stage one: candidates -----------------------------------------------------------------
    def _pool_executor(self) -> ThreadPoolExecutor:
        # numpy/scipy scoring releases the GIL: generators run side by side.
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=max(1, min(len(self.generators), os.cpu_count() or 1)))
        return self._executor

    def pools(
        self,
        histories: SequenceArrays,
        rows: np.ndarray | None = None,
        *,
        sizes: dict[str, int] | None = None,
        exclude_seen: bool = True,
        exclude: list[np.ndarray] | None = None,
        allow: np.ndarray | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[Pool]:
        """Merged candidate pools of histories `rows` (all if None). `sizes` overrides n per
        generator; `exclude` (per query) and `allow` filter every generator's candidates."""
        self._check_fitted()
        t0 = time.perf_counter()
        rows = np.arange(len(histories)) if rows is None else np.asarray(rows, dtype=np.int64)
        sizes = self._sizes() | (sizes or {})
        names = _names_of(histories, rows)
        gens = [g.name for g in self.config.generators]

        def run(name: str) -> tuple[np.ndarray, np.ndarray]:
            if getattr(self.generators[name], "history_independent", False):
                return self._static_results(name, histories, rows, sizes[name], exclude_seen, exclude, allow)
            s = np.array(self.generators[name].score(histories, rows), dtype=np.float32)
            if exclude is not None:
                for b, e in enumerate(exclude):
                    if len(e):
                        s[b, np.asarray(e, dtype=np.int64)] = NEG_INF
            return top_k(s, sizes[name], histories if exclude_seen else None, rows, allow=allow)

        # Only generators that score every item go to the thread pool (a static one, a cached order,
        # is cheaper than the hop to a worker and back), and only while no other call is in flight:
        # concurrent requests already fill the cores, and the extra hops then cost more than they
        # give (16 clients at 50k items: p99 ratio 3.14 with the pool against 2.39 without).
        heavy = [g for g in gens if not getattr(self.generators[g], "history_independent", False)]
        with self._inflight_lock:
            self._inflight += 1
            alone = self._inflight == 1
        try:
            parallel = len(heavy) > 1 and alone
            done = dict(zip(heavy, self._pool_executor().map(run, heavy), strict=True)) if parallel else {}
            results = [done[g] if g in done else run(g) for g in gens]
        finally:
            with self._inflight_lock:
                self._inflight -= 1
        if NAMES_GENERATOR in self.generator_names:
            results.append(self._name_results(histories, rows, names, sizes[NAMES_GENERATOR], exclude_seen, exclude, allow))
        out = [_merge([(t[b], s[b]) for t, s in results]) for b in range(len(rows))]
        if timings is not None:
            timings["candidates"] = timings.get("candidates", 0.0) + time.perf_counter() - t0
        return out

    def _static_results(
        self,
        name: str,
        histories: SequenceArrays,
        rows: np.ndarray,
        n: int,
        exclude_seen: bool,
        exclude: list[np.ndarray] | None,
        allow: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-n of a generator whose scores ignore the history (popularity): its order is sorted
        once (score descending, then token), and each query takes the head of it minus its banned
        items, instead of a [V] score row and a partition over it per query."""
        if name not in self._static:
            c = np.asarray(self.generators[name].score(SequenceArrays.from_lists([[]]))[0], np.float32)
            ok = np.flatnonzero(np.isfinite(c))
            ok = ok[ok >= N_SPECIAL]
            order = ok[np.lexsort((ok, -c[ok]))]
            self._static[name] = (order.astype(np.int64), c[order])
        order, vals = self._static[name]
        if allow is not None:
            keep = np.isin(order, np.asarray(allow, np.int64))
            order, vals = order[keep], vals[keep]
        toks = np.full((len(rows), n), -1, np.int64)
        out = np.full((len(rows), n), NEG_INF, np.float32)
        for b, r in enumerate(rows):
            banned = _banned(histories, int(r), exclude_seen, exclude[b] if exclude is not None else None)
            head = slice(0, n + len(banned))
            ok = ~np.isin(order[head], banned)
            t, v = order[head][ok][:n], vals[head][ok][:n]
            toks[b, : len(t)], out[b, : len(t)] = t, v
        return toks, out

    def _name_results(
        self,
        histories: SequenceArrays,
        rows: np.ndarray,
        names: list[str | None],
        n: int,
        exclude_seen: bool,
        exclude: list[np.ndarray] | None,
        allow: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        state = self.state
        assert state is not None
        toks = np.full((len(rows), n), -1, np.int64)
        vals = np.full((len(rows), n), NEG_INF, np.float32)
        for b, r in enumerate(rows):
            banned = _banned(histories, int(r), exclude_seen, exclude[b] if exclude is not None else None)
            t, s = state.name_candidates(names[b], n + len(banned))
            ok = ~np.isin(t, banned)
            if allow is not None:
                ok &= np.isin(t, allow)
            t, s = t[ok][:n], s[ok][:n]
            toks[b, : len(t)], vals[b, : len(t)] = t, s
        return toks, vals

    # --- stage two: features and ranking -------------------------------------------------------
    def pool_features(self, histories: SequenceArrays, row: int, pool: Pool) -> np.ndarray:
        """The ranker's features [C, F] of one pool (features_of for one query)."""
        return self.features_of(histories, np.array([row]), [pool])[0]

    def features_of(self, histories: SequenceArrays, rows: np.ndarray, pools: list[Pool]) -> list[np.ndarray]:
        """The ranker's features [C_i, F] of each pool (query rows[i] of `histories`): the one
        feature code path of training, evaluation and serving. Item and history features come
        from the FeatureState; a feedback head's predictions (one batched model call) follow."""
        state = self.state
        assert state is not None
        names = _names_of(histories, rows)
        out = []
        for row, name, pool in zip(np.asarray(rows).tolist(), names, pools, strict=True):
            lo, hi = int(histories.offsets[row]), int(histories.offsets[row + 1])
            last_ts = float(histories.ts[hi - 1]) if histories.ts is not None and hi > lo else None
            last_ts = last_ts if last_ts else None  # 0: unknown (a request without times)
            out.append(
                state.query_features(np.asarray(histories.row(row)), name, pool.tokens, pool.scores, pool.ranks, last_ts)
            )
        if state.model_features:
            fb = self._feedback_columns(histories, rows, pools)
            out = [np.concatenate([a, b], axis=1) for a, b in zip(out, fb, strict=True)]
        return out

    def _feedback_columns(self, histories: SequenceArrays, rows: np.ndarray, pools: list[Pool]) -> list[np.ndarray]:
        """[C_i, K] predicted feedback (each head column, on its own scale) of every candidate."""
        model = self.generators[self.config.feedback]  # type: ignore[index]
        targets = _feedback_targets(model)
        sizes = [len(p.tokens) for p in pools]
        if max(sizes, default=0) == 0:
            return [np.zeros((n, len(targets)), np.float32) for n in sizes]
        # Candidates padded to a power of two (at least 16): one compiled shape per bucket, not
        # one per pool size. The padding (the first item token) is scored and dropped.
        width = max(16, 1 << (max(sizes) - 1).bit_length())
        cands = np.full((len(pools), width), N_SPECIAL, np.int64)
        for b, p in enumerate(pools):
            cands[b, : len(p.tokens)] = p.tokens
        got = model.predict_feedback(histories, np.asarray(rows, dtype=np.int64), cands)  # type: ignore[attr-defined]
        cols = np.stack([np.asarray(got[t], np.float32) for t in targets], axis=-1)  # [B, width, K]
        return [cols[b, :n] for b, n in enumerate(sizes)]

    def rank_pools(
        self, histories: SequenceArrays, rows: np.ndarray, pools: list[Pool], timings: dict[str, float] | None = None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Ranker scores [C] and features [C, F] of each pool."""
        t0 = time.perf_counter()
        feats = self.features_of(histories, np.asarray(rows, dtype=np.int64), pools)
        t1 = time.perf_counter()
        if self.config.ranker.kind == "feedback_head":
            feature, sign = self._feedback_ranking()
            col = self.state.names.index(feature)  # type: ignore[union-attr]
            scores = [np.asarray(sign * f[:, col], np.float32) for f in feats]
        else:
            assert self.ranker is not None
            sizes = [len(f) for f in feats]
            flat = self.ranker.predict(np.concatenate(feats)) if sum(sizes) else np.zeros(0, np.float32)
            scores = np.split(flat, np.cumsum(sizes)[:-1]) if feats else []
        if timings is not None:
            timings["features"] = timings.get("features", 0.0) + t1 - t0
            timings["ranker"] = timings.get("ranker", 0.0) + time.perf_counter() - t1
        return scores, feats

    def score(
        self, histories: SequenceArrays, rows: np.ndarray | None = None, *, exclude_seen: bool = True, allow: np.ndarray | None = None
    ) -> np.ndarray:
        """[B, V]: pool items get the ranker's score, every other item the popularity backfill
        (module docstring); specials -inf. The pools leave out each history's items unless
        `exclude_seen` is False (recommend(exclude_seen=False) passes it), and are built from the
        `allow` list's items when one is given (as /v1/recommend with `allow` builds them)."""
        rows = np.arange(len(histories)) if rows is None else np.asarray(rows, dtype=np.int64)
        return self._pool_scores(histories, rows, exclude_seen, allow, self.backfill())

    def _pool_scores(
        self, histories: SequenceArrays, rows: np.ndarray, exclude_seen: bool, allow: np.ndarray | None, fill: np.ndarray | float
    ) -> np.ndarray:
        """[B, V]: the ranker's score of each pool item, `fill` elsewhere, specials -inf."""
        vocab = self._check_fitted()
        allow = None if allow is None else _check_tokens(allow, len(vocab), "allow")
        out = np.empty((len(rows), len(vocab)), dtype=np.float32)
        out[:] = fill
        out[:, :N_SPECIAL] = NEG_INF
        pools = self.pools(histories, rows, exclude_seen=exclude_seen, allow=allow)
        scores, _ = self.rank_pools(histories, rows, pools)
        for b, (p, s) in enumerate(zip(pools, scores, strict=True)):
            out[b, p.tokens] = s
        return out

    def recommend(
        self,
        histories: SequenceArrays,
        k: int,
        rows: np.ndarray | None = None,
        *,
        exclude_seen: bool = True,
        allow: np.ndarray | None = None,
        deny: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """As Recommender.recommend, ranking the candidate pools as the server's /v1/recommend
        does: `allow` filters every generator's candidates (the pools are built from the allowed
        items), `deny` leaves the ranked pool, and with exclude_seen=False the history's items may
        enter the pools. Only pool items are returned, with the ranker's score: slots beyond the
        pool are token -1 with score -inf (score()'s popularity backfill is an order, no score)."""
        rows = histories.check_rows(rows)
        k = check_k(k)
        out = self._pool_scores(histories, rows, exclude_seen, allow, NEG_INF)
        return top_k(out, k, histories if exclude_seen else None, rows, allow=allow, deny=deny)

    def backfill(self) -> np.ndarray:
        """float32 [V] scores of items outside the pool: OUTSIDE_POOL - d_i, d_i the dense rank
        of item i's training count (0: the highest; equal counts share a rank). Whole numbers below
        2^24 are exact in float32, so every count step keeps its place (OUTSIDE_POOL + a fraction
        of the top count merged counts into 0.0625-wide steps)."""
        vocab = self._check_fitted()
        if self._fill is None or self._fill[0] is not vocab:
            counts = np.asarray(vocab.counts, dtype=np.int64)
            _, inverse = np.unique(-counts, return_inverse=True)  # ascending -count: the top first
            self._fill = (vocab, (np.float64(OUTSIDE_POOL) - inverse.reshape(-1)).astype(np.float32))
        return self._fill[1]

    # --- evaluation hooks (segue.evaluation calls these when a model offers them) --------------
    def pool_recall(
        self,
        histories: SequenceArrays,
        rows: np.ndarray,
        rel_offsets: np.ndarray,
        rel_keys: np.ndarray,
        ns: tuple[int, ...] = (50, 200, 500),
        batch_size: int | None = None,
        *,
        exclude_seen: bool = True,
    ) -> dict[str, dict[str, np.ndarray]]:
        """Recall of the candidate pools, per query: for each N, every generator proposes N items;
        "pool" is the recall of their union, each generator's name its own recall@N, "pool_size"
        the union's size. recall = |pool ∩ relevant| / |relevant| (relevant: the query's target
        set; <unk> targets count and are never found). `exclude_seen` = False: the pools may hold
        history items (as score(exclude_seen=False) ranks them)."""
        rows = np.asarray(rows, dtype=np.int64)
        nmax = max(ns)
        gens = self.generator_names
        out = {f"{n}": {k: np.zeros(len(rows)) for k in ["pool", "pool_size", *gens]} for n in ns}
        bs = batch_size or self.config.batch_size
        for lo in range(0, len(rows), bs):
            batch = rows[lo : lo + bs]
            pools = self.pools(histories, batch, sizes=dict.fromkeys(gens, nmax), exclude_seen=exclude_seen)
            for i, p in enumerate(pools):
                q = lo + i
                rel = rel_keys[rel_offsets[q] : rel_offsets[q + 1]]
                hit = np.isin(p.tokens, rel)
                for n in ns:
                    inside = ~np.isnan(p.ranks) & (p.ranks < n)  # [G, C]
                    d = out[f"{n}"]
                    d["pool"][q] = (hit & inside.any(axis=0)).sum() / len(rel)
                    d["pool_size"][q] = inside.any(axis=0).sum()
                    for g, name in enumerate(gens):
                        d[name][q] = (hit & inside[g]).sum() / len(rel)
        return out

    def report_info(self) -> dict[str, Any]:
        """What an evaluation report shows about the pipeline: generators, ranker, importances."""
        return {
            "generators": {g.name: {"family": g.family, "n": g.n} for g in self.config.generators}
            | ({NAMES_GENERATOR: {"family": "built-in", "n": self.config.name_candidates}} if NAMES_GENERATOR in self.generator_names else {}),
            "ranker_training": self.meta.get("ranker_training", {}),
            "feature_importance": self.ranker.importance() if self.ranker is not None else {},
        }

    # --- persistence ---------------------------------------------------------------------------
    def _save_state(self, folder: Path) -> None:
        assert self.state is not None
        for name, model in self.generators.items():
            model.save(folder / "generators" / name)
        self.state.save(folder)
        if self.ranker is not None:  # None: the feedback_head ranker (nothing trained)
            self.ranker.save(folder / "ranker.txt")

    def _load_state(self, folder: Path) -> None:
        for spec in self.config.generators:
            model = load_generator(folder / "generators" / spec.name, spec.name)
            if spec.family is not None and model.family != spec.family:
                raise SegueError(
                    f"{folder}: generator '{spec.name}' holds a '{model.family}' model, the pipeline expects '{spec.family}'"
                )
            self.generators[spec.name] = model
        self.state = FeatureState.load(folder)
        if self.config.ranker.kind == "lightgbm":
            self.ranker = Ranker.load(folder / "ranker.txt", self.state.names)


def load_generator(folder: Path, name: str) -> BaseRecommender:
    """Load one generator, or a SegueError naming it and why it failed."""
    try:
        return load_model(folder)
    except Exception as e:  # noqa: BLE001 (any failure, reported with the generator's name)
        raise SegueError(f"pipeline generator '{name}' ({folder}) failed to load: {e}") from None


def _feedback_targets(model: BaseRecommender) -> list[str]:
    """The columns a generator's feedback head predicts ([] without one)."""
    try:
        return list(getattr(model, "feedback_targets", None) or [])
    except Exception:  # noqa: BLE001 (a model that cannot tell has none)
        return []


def _check_same_vocab(name: str, model: BaseRecommender, data: SplitData) -> None:
    mv = model._check_fitted()
    if len(mv) != len(data.vocab) or not np.array_equal(np.asarray(mv.item_ids), np.asarray(data.vocab.item_ids)):
        raise SegueError(
            f"pipeline generator '{name}': fitted on split '{mv.split}' ({len(mv)} tokens), not on the "
            f"pipeline's split '{data.split}' ({len(data.vocab)} tokens); refit it on '{data.split}'"
        )


def _names_of(histories: SequenceArrays, rows: np.ndarray) -> list[str | None]:
    names = histories.meta.get("seq_names")
    if names is None:
        return [None] * len(rows)
    return [names[int(r)] for r in rows]


def _banned(histories: SequenceArrays, row: int, exclude_seen: bool, exclude: np.ndarray | None) -> np.ndarray:
    """Tokens a query may not get: its history's (when exclude_seen) and its `exclude` list."""
    parts = [np.asarray(histories.row(row), np.int64)] if exclude_seen else []
    if exclude is not None:
        parts.append(np.asarray(exclude, np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _merge(lists: list[tuple[np.ndarray, np.ndarray]]) -> Pool:
    """Union of the generators' (tokens, scores) lists (best first; -inf / -1 entries dropped)."""
    kept = []
    for t, s in lists:
        ok = np.isfinite(s) & (t >= N_SPECIAL)
        kept.append((np.asarray(t[ok], np.int64), np.asarray(s[ok], np.float32), np.flatnonzero(ok).astype(np.float32)))
    tokens = np.unique(np.concatenate([k[0] for k in kept])) if kept else np.zeros(0, np.int64)
    scores = np.full((len(kept), len(tokens)), np.nan, np.float32)
    ranks = np.full((len(kept), len(tokens)), np.nan, np.float32)
    for g, (t, s, r) in enumerate(kept):
        pos = np.searchsorted(tokens, t)
        scores[g, pos] = s
        ranks[g, pos] = r
    return Pool(tokens, scores, ranks)
