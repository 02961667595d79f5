"""What the server does with a loaded model folder, independent of HTTP.

Stage one retrieves candidates: by maximum inner product from the item-embedding index when the
model offers `item_embeddings()` and `query_embeddings(histories, rows)`, else by the model's exact
`score()` over the catalogue (the evaluation path, with the same `top_k` masking). Stage two puts
the model's own scores on the candidates: for embedding models the load-time check below proves
score(h)[t] == <query(h), E[t]>, so the exact float32 inner products of the candidates are the
model's scores; if a model breaks that identity the candidates are re-scored with `score()`.
Exclusions (seen items, explicit exclusions, deny lists) and allow lists apply in both stages.

Profiles: a history may carry ratings (raw, NaN = unrated); they travel in the SequenceArrays'
`rating` column to every model call (score, query embeddings, predict), so rating-aware families
fold them in with their own training code and the others ignore them.

Empty history: ranked by training popularity, scored log(1 + count) on every endpoint (recommend,
rank, explain), the scale the niche boost's b log(count + 1) is subtracted from (b = 1 flattens it
exactly). A two-stage pipeline answers an empty history with its own generators and ranker instead.

Niche boost (segue.models.filters.niche_boost, b >= 0) applies on every path: on score() and
allow-list scores directly; on an index, the pool of candidates is widened until the boosted top k
is provably the boosted top k of everything the index would return (see `_boosted_search`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segue import __version__
from segue.data.arrays import SequenceArrays
from segue.data.vocab import EOP, N_SPECIAL, PAD, START, UNK
from segue.errors import SegueError
from segue.models.base import NEG_INF, BaseRecommender, load_model, top_k
from segue.models.filters import niche_boost as niche_boost_scores
from segue.models.filters import niche_boost_tokens
from segue.models.pipeline import outside_pool
from segue.models.rating import ScaledRatingPredictor
from segue.serving.catalogue import Catalogue, load_catalogue
from segue.serving.encoding import EventColumns, RequestEncoder, context_length_of, model_kwargs
from segue.serving.index import ExactIndex, HNSWIndex, IndexConfig, build_index
from segue.serving.pipeline_engine import is_pipeline, pool_impacts, rank_pipeline

log = logging.getLogger("segue.serving")
SPECIALS = np.array([PAD, START, EOP, UNK], dtype=np.int64)
CHEAP_QUERY_S = 0.3e-3  # a query embedding this fast runs on the event loop (see the app)
BOOST_POOL_MIN = 200  # first candidate pool of a boosted index search: max(4 k, this)
POPULARITY_WARNING = (
    "empty history: fell back to popularity (most frequent items of the training split)"
)
PIPELINE_EMPTY_WARNING = (
    "empty history: nothing to personalise; the pipeline ranked what its generators propose for "
    "an empty history (popular items)"
)


@dataclass(frozen=True)
class ModelInfo:
    run_id: str
    version: str
    family: str
    folder: str
    n_items: int
    retrieval: (
        str  # "hnsw", "exact" (embedding brute force) or "score" (model.score over all items)
    )

    def public(self) -> dict[str, str]:
        return {"run_id": self.run_id, "version": self.version, "family": self.family}


@dataclass
class Ranked:
    tokens: np.ndarray  # int64 [k] (-1 padded)
    scores: np.ndarray  # float32 [k] (-inf padded)
    fallback: bool = False  # popularity fallback (empty history)
    sources: list[list[str]] | None = None  # two-stage pipelines: the generators of each item
    features: np.ndarray | None = None  # two-stage pipelines: the ranker's features [k, F]


class Engine:
    """A loaded model with its encoder, catalogue and (for embedding models) MIPS index."""

    def __init__(
        self, model: BaseRecommender, folder: Path, catalogue: Catalogue, index_config: IndexConfig
    ) -> None:
        self.model = model
        self.folder = folder
        self.vocab = model._check_fitted()
        self.encoder = RequestEncoder(self.vocab, context_length_of(model))
        self.catalogue = catalogue
        # The empty-history score of every token: log(1 + training count), specials -inf.
        self.popularity = np.log1p(self.vocab.counts.astype(np.float64)).astype(np.float32)
        self.popularity[:N_SPECIAL] = NEG_INF
        self.counts = np.asarray(self.vocab.counts, dtype=np.float64)  # training events per token
        # the same in float64, which the niche boost subtracts exactly: b = 1 gives 0, not float32's rounding
        self._log_pop = np.where(np.arange(len(self.counts)) < N_SPECIAL, -np.inf, np.log1p(self.counts))
        self.rating_range = rating_scale_of(model)  # None: the family does not use ratings
        self.index: ExactIndex | HNSWIndex | None = None
        self.embeddings: np.ndarray | None = None
        self.dot_exact = False
        if _offers_embeddings(model):
            emb = np.asarray(model.item_embeddings(), dtype=np.float32)  # type: ignore[attr-defined]
            if emb.ndim == 2 and emb.shape[0] == len(self.vocab):
                self.embeddings = np.ascontiguousarray(emb)
                self.dot_exact = self._check_dot_identity()
                keys = np.arange(N_SPECIAL, len(self.vocab), dtype=np.int64)
                self.index = build_index(
                    self.embeddings[N_SPECIAL:], keys, index_config, cache_dir=folder / "serving"
                )
            else:
                log.warning(
                    "%s: item_embeddings() has shape %s, not [%d, d]; using exact scoring",
                    folder,
                    emb.shape,
                    len(self.vocab),
                )
        self.features_only: frozenset[int] = frozenset()  # tokens of items added without retraining
        self.cheap_on_loop = self._warm_up()
        self.pipeline = is_pipeline(model)  # two-stage: serving/pipeline_engine.py
        if self.index is None:
            self._unused_index_options(index_config)
        # a rating model that folds in rated events only answers an unrated history unpersonalised
        self.reads_unrated = self.pipeline or getattr(model, "reads_unrated", True)
        # Each context column's training values, as sets once here rather than per request.
        cats = getattr(getattr(model, "network", None), "categories", None) or {}
        self.context_values: dict[str, frozenset[str]] = {name: frozenset(vals) for name, vals in cats.items()}
        retrieval = "pipeline" if self.pipeline else "score" if self.index is None else self.index.kind
        self.info = ModelInfo(
            run_id=str(model.meta.get("run_id") or folder.name),
            version=_folder_version(folder, model.family),
            family=model.family,
            folder=str(folder),
            n_items=self.vocab.n_items,
            retrieval=retrieval,
        )

    @classmethod
    def load(
        cls,
        folder: str | Path,
        *,
        store: str | Path | None = None,
        index_config: IndexConfig | None = None,
    ) -> Engine:
        return cls.from_model(load_model(Path(folder)), folder, store=store, index_config=index_config)

    @classmethod
    def from_model(
        cls,
        model: BaseRecommender,
        folder: str | Path,
        *,
        store: str | Path | None = None,
        index_config: IndexConfig | None = None,
    ) -> Engine:
        """The engine of a model loaded from `folder`, with the run's added items (items_added.parquet)."""
        from segue.serving.items import apply_added_items, with_added_names

        folder = Path(folder)
        added = apply_added_items(model, folder)  # items added without retraining (features-only)
        catalogue = load_catalogue(folder, model._check_fitted(), store)
        engine = cls(model, folder, with_added_names(catalogue, folder) if added else catalogue, index_config or IndexConfig())
        engine.features_only = frozenset(added)
        return engine

    def _unused_index_options(self, config: IndexConfig) -> None:
        """Say that --index / --ef (a non-default IndexConfig) do nothing for a model without an
        item-embedding index, rather than ignore them without a word."""
        default = IndexConfig()
        given = [
            f"{flag} {value}"
            for flag, value, unset in (
                ("--index", config.kind, default.kind),
                ("--ef", config.expansion_search, default.expansion_search),
            )
            if value != unset
        ]
        if not given:
            return
        why = (
            "a two-stage pipeline has no stage-one index (its generators propose the candidates)"
            if self.pipeline
            else "the model offers no item embeddings to index (it scores every item with score())"
        )
        log.warning("%s: %s ignored: %s", self.folder, " and ".join(given), why)

    # --- scoring -------------------------------------------------------------------------------
    def _check_dot_identity(self) -> bool:
        """Does score() equal <query_embeddings, item_embeddings> on a few histories? (stage two)"""
        v = len(self.vocab)
        if v <= N_SPECIAL:
            return False
        items = np.arange(N_SPECIAL, v)
        rows = [items[:1], items[: min(5, len(items))][::-1], np.array([UNK, items[-1]])]
        arrays = SequenceArrays.from_lists([self.encoder.truncate(r) for r in rows])
        # One history per call: the batch shape serving uses, so a jitted model compiles no
        # shape for this check alone.
        one = [np.array([i]) for i in range(len(rows))]
        full = np.concatenate([np.asarray(self.model.score(arrays, r), dtype=np.float32) for r in one])
        full = full[:, N_SPECIAL:]
        q = np.concatenate(
            [np.asarray(self.model.query_embeddings(arrays, r), dtype=np.float32) for r in one]  # type: ignore[attr-defined]
        )
        dot = q @ self.embeddings[N_SPECIAL:].T  # type: ignore[index]
        scale = float(np.abs(full[np.isfinite(full)]).max(initial=1.0))
        ok = bool(np.allclose(full, dot, rtol=1e-4, atol=1e-4 * scale))
        if not ok:
            log.warning(
                "%s: score() differs from query . item embeddings; re-scoring ANN candidates with score()",
                self.folder,
            )
        return ok

    def _warm_up(self) -> bool:
        """Single-history queries of lengths 1, 3, 7, 15, ... up to the context before serving:
        jitted models (the transformer) compile per input shape, which took ~1 s inside the first
        request after a start or a reload. Returns whether requests may run on the event loop:
        exact search (which spreads over the cores itself) behind a query under CHEAP_QUERY_S,
        timed here at 10 items. A longer query uses one core and is worth overlapping with others
        in the thread pool; a ~0.3 ms hop to the pool is not worth it for a cheaper one."""
        if len(self.vocab) <= N_SPECIAL:
            return False
        query = (
            self.model.query_embeddings  # type: ignore[attr-defined]
            if self.index is not None
            else self.model.score
        )
        ctx = self.encoder.context_length or 64
        lengths = sorted({min(ctx, (1 << j) - 1) for j in range(1, ctx.bit_length() + 1)})
        for n in lengths:
            query(SequenceArrays.from_lists([np.full(n, N_SPECIAL, np.int32)]))
        if not isinstance(self.index, ExactIndex):
            return False
        arrays = SequenceArrays.from_lists([np.full(min(10, ctx), N_SPECIAL, np.int32)])
        times = []
        for _ in range(3):
            t = time.perf_counter()
            query(arrays)
            times.append(time.perf_counter() - t)
        return min(times) < CHEAP_QUERY_S

    def arrays(
        self,
        histories: list[np.ndarray],
        context: list[dict[str, str] | None] | None = None,
        ratings: list[np.ndarray | None] | None = None,
        events: list[EventColumns | None] | None = None,
    ) -> SequenceArrays:
        """The model's input: histories cut to its context, their ratings (aligned, NaN = unrated,
        None = an unrated history) cut with them into the `rating` column, and their per-event
        feedback, times and context (`events`, aligned) likewise (segue.serving.encoding)."""
        cut = [self.encoder.truncate(np.asarray(h, dtype=np.int32)) for h in histories]
        if ratings is not None:
            ratings = [
                None if r is None else np.asarray(r, np.float32)[len(r) - len(t) :]
                for t, r in zip(cut, ratings, strict=True)
            ]
        if events is not None:
            events = [None if e is None else e.tail(len(t)) for t, e in zip(cut, events, strict=True)]
        return self.encoder.arrays(cut, context, ratings, events)

    def query(self, arrays: SequenceArrays) -> np.ndarray:
        """Query embeddings [B, d], conditioned on the event to predict where the model reads it."""
        fn = self.model.query_embeddings  # type: ignore[attr-defined]
        return np.asarray(fn(arrays, **model_kwargs(fn, arrays)), dtype=np.float32)

    def scores(self, arrays: SequenceArrays, exclude_seen: bool = True, allow: np.ndarray | None = None) -> np.ndarray:
        """The model's scores [B, V], conditioned on the event to predict where the model reads it
        (`exclude_seen` = False lets a two-stage pipeline's pools hold the history's items, and
        `allow` builds them from the allowed items, as /v1/recommend with `allow` does; other
        models' scores do not depend on `allow`)."""
        kwargs = model_kwargs(self.model.score, arrays)
        if self.pipeline:
            kwargs.update(exclude_seen=exclude_seen, allow=allow)
        return np.asarray(self.model.score(arrays, **kwargs), dtype=np.float32)

    def score_tokens(
        self,
        histories: list[np.ndarray],
        tokens: np.ndarray,
        context: list | None = None,
        ratings: list[np.ndarray | None] | None = None,
        events: list[EventColumns | None] | None = None,
        names: list[str | None] | None = None,
        exclude_seen: bool = True,
        allow: np.ndarray | None = None,
    ) -> np.ndarray:
        """The model's scores [B, C] of `tokens` [B, C] after each history, in one model call
        (`names`: playlist titles, which a two-stage pipeline's candidate pool reads, as it reads
        `exclude_seen` and `allow`)."""
        arrays = self.arrays(histories, context, ratings, events)
        if names is not None and self.pipeline:
            arrays.meta["seq_names"] = list(names)
        tokens = np.asarray(tokens, dtype=np.int64)
        if self.dot_exact:
            q = self.query(arrays)
            return np.einsum("bd,bcd->bc", q, self.embeddings[tokens])  # type: ignore[index]
        scores = self.scores(arrays, exclude_seen, allow)
        return np.take_along_axis(scores, tokens, axis=1)

    def rank(
        self,
        histories: list[np.ndarray],
        k: int,
        *,
        exclude_seen: bool = True,
        exclude: list[np.ndarray] | None = None,
        allow: np.ndarray | None = None,
        deny: np.ndarray | None = None,
        context: list[dict[str, str] | None] | None = None,
        ratings: list[np.ndarray | None] | None = None,
        niche_boost: float = 0.0,
        events: list[EventColumns | None] | None = None,
        names: list[str | None] | None = None,
    ) -> list[Ranked]:
        """Top-k tokens and the model's scores after each history (popularity for empty ones).

        `ratings` (per history, aligned, NaN = unrated) reach the model with the histories;
        `niche_boost` > 0 ranks by the boosted scores s - b log(count + 1), which are returned.
        `names` (playlist titles) reach two-stage pipelines, which answer even empty histories."""
        b = len(histories)
        histories = [np.asarray(h, dtype=np.int64) for h in histories]
        excl = []
        for i, h in enumerate(histories):
            parts = [h] if exclude_seen else []
            if exclude is not None:
                parts.append(np.asarray(exclude[i], dtype=np.int64))
            if deny is not None:
                parts.append(np.asarray(deny, dtype=np.int64))
            excl.append(np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64))
        if self.pipeline:
            # The histories' ratings / feedback / context reach the generators (a transformer with
            # events reads them, as it did on the store's arrays in training and evaluation).
            arrays = self.encoder.arrays(histories, context, ratings, events)
            return self._rank_pipeline(histories, k, excl, exclude_seen, allow, names, niche_boost, arrays)
        out: list[Ranked | None] = [None] * b
        empty = [i for i, h in enumerate(histories) if len(h) == 0]
        for i in empty:
            pop = self._boost(self._log_pop[None, :], niche_boost).astype(np.float32)
            out[i] = self._rank_scores(pop, k, [excl[i]], allow)[0]
            out[i].fallback = True
        live = [i for i in range(b) if len(histories[i])]
        if live:
            hs = [histories[i] for i in live]
            ctx = [context[i] for i in live] if context else None
            rs = [ratings[i] for i in live] if ratings is not None else None
            ev = [events[i] for i in live] if events is not None else None
            ex = [excl[i] for i in live]
            if allow is not None:
                allow = np.asarray(allow, dtype=np.int64)
                ranked = self._rank_allowed(hs, k, ex, allow, ctx, rs, niche_boost, ev)
            elif self.index is not None:
                ranked = self._rank_index(hs, k, ex, ctx, rs, niche_boost, ev)
            else:
                scores = self.scores(self.arrays(hs, ctx, rs, ev))
                ranked = self._rank_scores(self._boost(scores, niche_boost), k, ex, None)
            for i, r in zip(live, ranked, strict=True):
                out[i] = r
        return out  # type: ignore[return-value]

    def _rank_pipeline(
        self,
        histories: list[np.ndarray],
        k: int,
        excl: list[np.ndarray],
        exclude_seen: bool,
        allow: np.ndarray | None,
        names: list[str | None] | None,
        boost: float,
        arrays: SequenceArrays | None = None,
    ) -> list[Ranked]:
        allow = None if allow is None else np.asarray(allow, dtype=np.int64)
        res = rank_pipeline(
            self.model, histories, k, excl, exclude_seen=exclude_seen, allow=allow, names=names,
            counts=self.counts, niche_boost=boost, arrays=arrays,
        )
        out = []
        for i, r in enumerate(res):
            ranked = _ranked(r["tokens"], r["scores"])
            ranked.sources, ranked.features = r["sources"], r["features"]
            ranked.fallback = len(histories[i]) == 0 and not (names and names[i])
            out.append(ranked)
        return out

    def empty_history_scores(self, tokens: np.ndarray, name: str | None = None, allow: np.ndarray | None = None) -> np.ndarray:
        """float32 [m] scores of `tokens` after an empty history, as `rank` gives them: log(1 +
        training count), or a pipeline's ranker score (NaN outside its candidate pool, which the
        playlist's `name` and an `allow` list shape)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if not self.pipeline:
            return self.popularity[tokens]
        names = None if name is None else [name]
        s = self.score_tokens([np.zeros(0, np.int64)], tokens[None, :], names=names, allow=allow)[0]
        return np.where(outside_pool(s), np.nan, s).astype(np.float32)

    def _boost(self, scores: np.ndarray, b: float) -> np.ndarray:
        """Token-space scores [B, V] after the niche boost (unchanged for b = 0)."""
        return scores if b == 0 else niche_boost_tokens(scores, self.counts, b)

    def _rank_scores(
        self, scores: np.ndarray, k: int, excl: list[np.ndarray], allow: np.ndarray | None
    ) -> list[Ranked]:
        # The evaluation path's masking (specials, allow) plus per-row exclusions.
        for i, e in enumerate(excl):
            if len(e):
                scores[i, e[(e >= 0) & (e < scores.shape[1])]] = NEG_INF
        toks, vals = top_k(scores, k, allow=allow)
        return [_ranked(t, s) for t, s in zip(toks, vals, strict=True)]

    def _rank_allowed(
        self,
        hs: list[np.ndarray],
        k: int,
        excl: list[np.ndarray],
        allow: np.ndarray,
        ctx: list | None,
        ratings: list[np.ndarray | None] | None = None,
        boost: float = 0.0,
        events: list[EventColumns | None] | None = None,
    ) -> list[Ranked]:
        allow = np.unique(allow[(allow >= N_SPECIAL) & (allow < len(self.vocab))])
        if len(allow) == 0:
            return [_ranked(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in hs]
        scores = self.score_tokens(hs, np.tile(allow, (len(hs), 1)), ctx, ratings, events)
        if boost:
            scores = niche_boost_scores(scores, self.counts[allow], boost)
        out = []
        for i, s in enumerate(scores):
            s = s.copy()
            s[np.isin(allow, excl[i])] = NEG_INF
            order = np.argsort(-s, kind="stable")[:k]
            out.append(_ranked(allow[order], s[order]))
        return out

    def _rank_index(
        self,
        hs: list[np.ndarray],
        k: int,
        excl: list[np.ndarray],
        ctx: list | None,
        ratings: list[np.ndarray | None] | None = None,
        boost: float = 0.0,
        events: list[EventColumns | None] | None = None,
    ) -> list[Ranked]:
        arrays = self.arrays(hs, ctx, ratings, events)
        q = self.query(arrays)
        if self.dot_exact:
            if boost:
                return [self._boosted_search(q[i : i + 1], k, excl[i], boost) for i in range(len(hs))]
            keys, scores = self.index.search(q, k, excl)  # type: ignore[union-attr]
            return [_ranked(t, s) for t, s in zip(keys, scores, strict=True)]
        full = self.scores(arrays)
        if boost:
            # score() has already scored every item: the boosted ranking over all of them is
            # exact at no extra model cost (no candidate pool whose width could matter).
            return self._rank_scores(self._boost(full, boost), k, excl, None)
        # Stage two with the full model: candidates re-scored by score().
        n_cand = max(4 * k, 200)
        keys, _ = self.index.search(q, n_cand, excl)  # type: ignore[union-attr]
        out = []
        for i in range(len(hs)):
            c = keys[i][keys[i] >= 0]
            s = full[i, c]
            order = np.argsort(-s, kind="stable")[:k]
            out.append(_ranked(c[order], s[order]))
        return out

    def _boosted_search(self, q: np.ndarray, k: int, excl: np.ndarray, b: float) -> Ranked:
        """The top k of one query q [1, d] by boosted inner product s - b log(count + 1).

        The index ranks by the raw s, so the boosted top k may sit below its raw top k. The pool
        starts at max(4 k, BOOST_POOL_MIN) raw candidates and grows 4x until it is provably wide
        enough: every item outside the pool has raw s <= the pool's lowest raw s, and the boost
        only subtracts, so once the k-th best boosted score in the pool reaches that bound no
        outside item can enter the top k. Typical b (<= 1) and popularity spreads stop at the
        first pool; a huge b degrades to scoring the whole catalogue, never to a wrong answer
        (with HNSW: relative to the candidates the graph returns)."""
        assert self.index is not None
        n = len(self.index)
        width = min(max(4 * k, BOOST_POOL_MIN), n)
        while True:
            keys, raw = self.index.search(q, width, [excl])
            ok = keys[0] >= 0
            keys, raw = keys[0][ok], raw[0][ok]
            boosted = niche_boost_scores(raw, self.counts[keys], b)
            order = np.argsort(-boosted, kind="stable")[:k]
            exhausted = len(keys) < width or width >= n
            if exhausted or (len(order) == k and boosted[order[-1]] >= raw.min()):
                return _ranked(keys[order], boosted[order])
            width = min(4 * width, n)

    # --- generation and explanation -------------------------------------------------------------
    def continue_(
        self,
        seed: np.ndarray,
        n: int,
        *,
        temperature: float = 1.0,
        top_k_: int = 50,
        greedy: bool = False,
        rng: np.random.Generator | None = None,
    ) -> tuple[list[int], list[float], bool]:
        """Continue `seed` by n items: at each step rank the next item over the growing history
        (specials and present items masked), then sample among the top-k from
        softmax(score / temperature), or take the best when greedy. Returns tokens, the probability
        of each pick under that tempered top-k softmax (also when greedy), and whether the first
        step fell back to popularity."""
        rng = rng or np.random.default_rng()
        history = [int(t) for t in seed]
        present = set(history)
        picks, probs, fell_back = [], [], False
        for step in range(n):
            ranked = self.rank(
                [np.array(history, dtype=np.int64)],
                top_k_,
                exclude=[np.fromiter(present, np.int64, len(present))],
            )[0]
            fell_back |= step == 0 and ranked.fallback
            ok = ranked.tokens >= 0
            toks, scores = ranked.tokens[ok], ranked.scores[ok].astype(np.float64)
            if len(toks) == 0:
                break
            # A temperature near 0 (any positive float is allowed, down to 5e-324) overflows
            # the gaps to -inf: weight 0 for all but the best, the greedy limit it should be.
            with np.errstate(over="ignore"):
                z = (scores - scores.max()) / temperature
            w = np.exp(z)
            w /= w.sum()
            # Greedy takes the best; its probability is still the model's, under the same tempered
            # top-k softmax (as `segue continue --greedy` reports it), not 1.
            j = 0 if greedy else int(rng.choice(len(toks), p=w))
            p = float(w[j])
            t = int(toks[j])
            picks.append(t)
            probs.append(p)
            history.append(t)
            present.add(t)
        return picks, probs, fell_back

    def explain(
        self,
        history: np.ndarray,
        items: np.ndarray,
        ratings: np.ndarray | None = None,
        events: EventColumns | None = None,
        context: dict[str, str] | None = None,
        name: str | None = None,
        exclude_seen: bool = True,
        allow: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Leave-one-out impact of each history item on each item's score, in one model call.

        rows = [h, h without h_0, ..., h without h_{L-1}] (h truncated to the model's context;
        a removed item's rating and events leave with it; every row predicts the same next event,
        `context` and the events' next_ts, as /v1/recommend does); impact[i, j] = score(h)[items_i] -
        score(h without h_j)[items_i]. Returns the scores [len(items)] after the full history and
        impact [len(items), L]. A pipeline's item outside its candidate pool has score NaN, and an
        impact of +inf where the item leaves the pool without h_j, -inf where it joins it; `name`,
        `exclude_seen` and `allow` shape that pool as they shape /v1/recommend's.
        """
        h = self.encoder.truncate(np.asarray(history, dtype=np.int64))
        items = np.asarray(items, dtype=np.int64)
        rows = [h] + [np.delete(h, j) for j in range(len(h))]
        rs = None
        if ratings is not None:
            r = np.asarray(ratings, np.float32)[len(ratings) - len(h) :]
            rs = [r] + [np.delete(r, j) for j in range(len(h))]
        evs = None
        if events is not None:
            ev = events.tail(len(h))
            evs = [ev] + [ev.without(j) for j in range(len(h))]
        ctx = None if context is None else [context] * len(rows)
        names = [name] * len(rows) if name is not None else None
        s = self.score_tokens(rows, np.tile(items, (len(rows), 1)), ctx, rs, evs, names, exclude_seen, allow)  # [L + 1, m]
        if self.pipeline:  # leaving or joining the candidate pool: +inf / -inf (pool_impacts)
            return np.where(outside_pool(s[0]), np.nan, s[0]), pool_impacts(s[0], s[1:])
        with np.errstate(invalid="ignore"):
            impact = (s[0][None, :] - s[1:]).T  # [m, L]
        return s[0], np.nan_to_num(impact, nan=0.0, posinf=0.0, neginf=0.0)


    def predict_ratings(
        self, history: np.ndarray, ratings: np.ndarray | None, tokens: np.ndarray
    ) -> np.ndarray:
        """The model's predicted ratings [m] (original scale) of `tokens` after one profile."""
        if self.rating_range is None:
            raise SegueError(f"{self.info.family}: the family predicts no ratings")
        arrays = self.arrays([history], None, None if ratings is None else [ratings])
        tokens = np.asarray(tokens, dtype=np.int64)
        rows = np.zeros(len(tokens), dtype=np.int64)
        return np.asarray(self.model.predict(arrays, rows, tokens), dtype=np.float32).reshape(-1)  # type: ignore[attr-defined]


def rating_scale_of(model: object) -> tuple[float, float] | None:
    """(low, high) of a model that takes ratings (segue.models.rating.ScaledRatingPredictor), else None.

    A rating-aware family configured without ratings (rating_range raising SegueError) counts as
    not using them."""
    if not isinstance(model, ScaledRatingPredictor):
        return None
    try:
        low, high = model.rating_range()
    except SegueError:
        return None
    return float(low), float(high)


def _ranked(tokens: np.ndarray, scores: np.ndarray) -> Ranked:
    tokens = np.asarray(tokens, dtype=np.int64).copy()
    scores = np.asarray(scores, dtype=np.float32)
    tokens[~np.isfinite(scores)] = -1
    return Ranked(tokens, scores)


def _offers_embeddings(model: object) -> bool:
    return callable(getattr(model, "item_embeddings", None)) and callable(
        getattr(model, "query_embeddings", None)
    )


def _folder_version(folder: Path, family: str) -> str:
    """A short digest of the model folder's config, vocabulary and state files' names, sizes and
    modification times: a retrained model with the same config (same file sizes) gets a new
    version, while reloading an unchanged folder keeps it. Hashing the state's bytes instead would
    add ~1 s per GB to every load.

    What servers write into the folder is left out, so that no worker's start-up changes another's
    version: `serving/`, the names table `items.parquet` and every dot-named path (atomic writes'
    temporaries such as `.items.parquet.tmp-PID`, which another worker may hold at that moment)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(__version__.encode())
    for name in ("model.toml", "vocab.json"):
        p = folder / name
        if p.exists():
            h.update(p.read_bytes())
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if rel.parts[0] in ("serving", "items.parquet") or any(part.startswith(".") for part in rel.parts):
            continue
        try:
            if not p.is_file():
                continue
            st = p.stat()
        except FileNotFoundError:  # removed since listed: not part of the model
            continue
        h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns};".encode())
    return f"{family}-{h.hexdigest()}"
