"""Maximum inner product search (MIPS) over item embeddings: approximate (HNSW) and exact.

Graph indexes search inner product poorly when item norms differ (measured recall@100 0.5-0.67,
STACK-NOTES). The classic fix turns MIPS into nearest-neighbour search on the unit sphere:

    item  x -> [x, sqrt(M^2 - |x|^2)] / M        (all augmented items have norm 1)
    query q -> [q, 0] / |q|

so that <q', x'> = <q, x> / (|q| M) orders items exactly as <q, x>. With a long tail of norms one
M for all items squeezes most items onto the extra axis (measured here: recall@100 0.2-0.6 on
clustered data with log-normal norms), so items are split into `buckets` by norm (norm-ranging):
each bucket gets its own M and its own usearch HNSW graph. A query visits buckets from the largest
norm down and skips a bucket once |q| * max_norm(bucket) cannot beat the k-th best score found
(Cauchy-Schwarz), so low-norm buckets are often never searched. Candidates are re-scored exactly
in float32, so returned scores are exact inner products; only recall is approximate.

Indexes are cached on disk under a folder keyed by a checksum of the embeddings and the index
config, so a server restart or reload loads instead of rebuilding.

Measured (bench/serve_latency.py data: 2,000,000 x 128 clustered vectors, log-normal norms, sigma
0.3; top-100 of 200 history queries; 2 cores, 2026-11-23): one transform for all items, recall@100
0.45-0.70; norm ranges with norm_ratio 1.3 (9 ranges, 7 graphs), ef 100 and no oversampling:
recall 0.987, 2.2 ms per query against 50 ms exact (23x); ef 128-256 with 1.5x oversampling:
recall 0.993-0.997, 2.8 ms. Build 154 s on 2 idle cores, 22 s on 16. Graph vectors in i8 instead
of f16 (the default since 2026-11-23): queries 17-23% faster, recall within 0.1 point; under the
serving bench (exact scans between the ANN blocks, a noisy host) 4.5 ms against 82 ms exact (18x),
recall 0.971 with an untrained transformer's queries. A graph search costs ~0.3-0.6 ms whatever the
range's size (ef ~100 sets it), so the number of ranges a query cannot prune sets the cost. A lone
query now searches its ranges in waves on both cores (search_threads): 2.8 ms against 69-71 ms
exact in the serving bench (25x), recall unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from segue.config import Config
from segue.errors import SegueError
from segue.io import atomic_path

INDEX_VERSION = 1


class IndexConfig(Config):
    """How stage one retrieves candidates."""

    kind: Literal["auto", "exact", "hnsw"] = "auto"
    exact_below: int = 100_000  # auto: catalogues smaller than this are searched exactly
    buckets: int = 12  # at most this many norm ranges (1 = the plain MIPS transform)
    norm_ratio: float = 1.3  # a norm range spans at most max/min = norm_ratio (until `buckets` runs out)
    min_bucket: int = 2048  # ...and holds at least this many items
    exact_bucket_below: int = 4096  # ranges smaller than this are searched exactly, without a graph
    connectivity: int = 16  # HNSW graph degree (M)
    expansion_add: int = 64  # efConstruction
    expansion_search: int = 100  # ef at query time (at least the candidates asked)
    # Storage of the graphs' vectors (rescoring is f32). i8 by default: on the 2M bench table it
    # searched 17-23% faster than f16 with recall@100 within 0.1 point (0.971 against 0.972 with
    # transformer queries, 0.988 against 0.988 with dot queries) and graphs 31% smaller.
    dtype: Literal["f32", "f16", "bf16", "i8"] = "i8"
    oversample: float = 1.0  # candidates fetched per range = ceil(k * oversample) (ef grows with it)
    threads: int = 0  # build threads (0 = all cores)
    # Norm ranges a query searches at once, each on its own thread (usearch releases the GIL), when
    # no other search is in flight (0 = the cores, at most 4). Concurrent searches take one range
    # at a time: the requests already fill the cores, and hand-offs would only add to them.
    # Results do not depend on it. Measured on the 2M bench table with transformer queries, training
    # paused: 2 threads p50 4.27 ms against 5.67 ms on one (exact search 97.8 ms, on 2 threads).
    search_threads: int = Field(0, ge=0)
    block_rows: int = 131_072  # exact search: item rows per matmul block (bounds memory)
    exact_threads: int = Field(0, ge=0)  # exact search: row chunks scanned at once (0 = the cores)


# usearch searches with ef = max(the graph's expansion_search, the candidates asked). Graphs keep
# this floor and each search asks for max(candidates, ef) results: an ef per call, without writing
# the graphs' shared setting while concurrent requests search them.
EF_FLOOR = 1

# Config fields that shape the norm ranges (checked when a cached index is loaded).
RANGE_FIELDS = ("norm_ratio", "min_bucket", "exact_bucket_below")


def embeddings_checksum(vectors: np.ndarray, config: IndexConfig | None = None) -> str:
    """blake2b of the vectors' bytes, shape, and the config fields that shape the index."""
    h = hashlib.blake2b(digest_size=16)
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    h.update(f"{v.shape}|v{INDEX_VERSION}|".encode())
    if config is not None:
        keys = ("buckets", "connectivity", "expansion_add", "dtype", *RANGE_FIELDS)
        h.update(json.dumps({k: getattr(config, k) for k in keys}, sort_keys=True).encode())
    h.update(memoryview(v).cast("B"))
    return h.hexdigest()


class ExactIndex:
    """Blocked brute force: scores [B, block] at a time, keeping a running top-k (bounded memory).

    With `threads` > 1 the rows are cut into at least that many chunks, scanned concurrently by a
    pool made once per index (NumPy's matmul and partition release the GIL), and the chunks'
    top-k are merged. Measured on this 2-core machine with one BLAS thread per call: 50k x 128,
    one query, 2.3 ms on one thread against 1.0-1.2 ms on two; 2M items 88 ms against 58-61 ms
    (memory-bound), the same as letting OpenBLAS use both cores, which the server cannot do
    (concurrent OpenBLAS calls with 2 threads each fight: 7.6 req/s against 160 at 16 clients).
    """

    kind = "exact"

    def __init__(
        self,
        vectors: np.ndarray,
        keys: np.ndarray | None = None,
        block_rows: int = 131_072,
        threads: int = 1,
    ) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # [N, d]
        self.keys = (
            np.arange(len(vectors), dtype=np.int64)
            if keys is None
            else np.asarray(keys, dtype=np.int64)
        )
        n = len(self.vectors)
        threads = max(1, threads or _cores())
        n_chunks = max(math.ceil(n / max(1, block_rows)), min(threads, max(1, n // 1024)))
        bounds = np.linspace(0, n, n_chunks + 1).astype(np.int64)
        self.chunks = [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]
        self.pool = ThreadPoolExecutor(min(threads, len(self.chunks))) if threads > 1 and len(self.chunks) > 1 else None

    def __len__(self) -> int:
        return len(self.vectors)

    def _chunk_top(self, q: np.ndarray, lo: int, hi: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k scores and row numbers [B, <=k] of rows lo:hi (unordered)."""
        s = q @ self.vectors[lo:hi].T  # [B, hi - lo]
        if k >= s.shape[1]:
            return s, np.broadcast_to(np.arange(lo, hi), s.shape)
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        return np.take_along_axis(s, part, axis=1), part + lo

    def search(
        self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k keys [B, k] and inner products [B, k] (key -1 / score -inf where fewer exist)."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        b = len(q)
        k_eff = min(k + max((len(e) for e in exclude), default=0) if exclude else k, len(self))
        if k_eff == 0 or not self.chunks:
            return _finish(self.keys[np.zeros((b, 0), np.int64)], np.zeros((b, 0), np.float32), k, exclude)
        if self.pool is None:
            parts = [self._chunk_top(q, lo, hi, k_eff) for lo, hi in self.chunks]
        else:
            futures = [self.pool.submit(self._chunk_top, q, lo, hi, k_eff) for lo, hi in self.chunks[1:]]
            parts = [self._chunk_top(q, *self.chunks[0], k_eff)] + [f.result() for f in futures]
        best_s = np.concatenate([p[0] for p in parts], axis=1)
        best_i = np.concatenate([p[1] for p in parts], axis=1)
        if best_s.shape[1] > k_eff:
            keep = np.argpartition(-best_s, k_eff - 1, axis=1)[:, :k_eff]
            best_s = np.take_along_axis(best_s, keep, axis=1)
            best_i = np.take_along_axis(best_i, keep, axis=1)
        return _finish(self.keys[best_i], best_s, k, exclude)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class HNSWIndex:
    """Norm-ranged MIPS over usearch HNSW graphs (see the module docstring)."""

    kind = "hnsw"

    def __init__(
        self,
        vectors: np.ndarray,
        keys: np.ndarray,
        config: IndexConfig,
        graphs: list,
        bucket_rows: list[np.ndarray],
        max_norms: np.ndarray,
    ) -> None:
        self.vectors = vectors  # f32 [N, d], row i has key keys[i] (exact rescoring)
        self.keys = keys
        self.config = config
        self.graphs = graphs  # usearch Index per bucket (None for buckets searched exactly)
        self.bucket_rows = bucket_rows  # row indices of each bucket, in descending max-norm order
        self.max_norms = max_norms  # [n_buckets], descending
        self.build_seconds = 0.0
        self.loaded_from_cache = False
        # Contiguous copies of the ranges searched exactly (small), so a query does not gather them.
        self.exact_vectors = [
            np.ascontiguousarray(vectors[r]) if g is None else None for g, r in zip(graphs, bucket_rows, strict=True)
        ]
        # Norm ranges a lone query searches at once, and the threads for that (none when 1). They
        # exit when the index is garbage-collected (an old engine after a reload).
        self.wave_width = max(1, config.search_threads or min(_cores(), 4))
        self._pool = (
            ThreadPoolExecutor(self.wave_width, thread_name_prefix="segue-ann") if self.wave_width > 1 else None
        )
        self._in_flight = 0  # searches running now (requests on the server's threads)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.vectors)

    # --- build / persistence ----------------------------------------------------------------
    @classmethod
    def build(cls, vectors: np.ndarray, keys: np.ndarray | None, config: IndexConfig) -> HNSWIndex:
        from usearch.index import Index

        t0 = time.perf_counter()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        keys = (
            np.arange(len(vectors), dtype=np.int64)
            if keys is None
            else np.asarray(keys, dtype=np.int64)
        )
        norms = np.linalg.norm(vectors, axis=1)
        bucket_rows = norm_buckets(norms, config)
        max_norms = np.array([norms[r].max() if len(r) else 0.0 for r in bucket_rows], dtype=np.float32)
        graphs: list = []
        for rows in bucket_rows:
            if len(rows) < config.exact_bucket_below:
                graphs.append(None)  # small buckets are searched exactly
                continue
            graph = Index(
                ndim=vectors.shape[1] + 1,
                metric="ip",
                dtype=config.dtype,
                connectivity=config.connectivity,
                expansion_add=config.expansion_add,
                expansion_search=EF_FLOOR,
            )
            # usearch keys are row numbers (uint64); the augmented vectors are dropped after add.
            graph.add(rows.astype(np.uint64), _augment(vectors[rows]), threads=config.threads)
            graphs.append(graph)
        index = cls(vectors, keys, config, graphs, bucket_rows, max_norms)
        index.build_seconds = time.perf_counter() - t0
        return index

    def save(self, folder: Path) -> None:
        with atomic_path(folder, is_dir=True) as tmp:
            for i, (graph, rows) in enumerate(zip(self.graphs, self.bucket_rows, strict=True)):
                if graph is not None:
                    graph.save(str(tmp / f"bucket-{i}.usearch"))
                np.save(tmp / f"rows-{i}.npy", rows)
            meta = {
                "version": INDEX_VERSION,
                "n": len(self),
                "dim": int(self.vectors.shape[1]),
                "max_norms": self.max_norms.tolist(),
                "config": self.config.model_dump(mode="json"),
                "build_seconds": self.build_seconds,
            }
            (tmp / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def load(
        cls, folder: Path, vectors: np.ndarray, keys: np.ndarray, config: IndexConfig
    ) -> HNSWIndex:
        from usearch.index import Index

        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("version") != INDEX_VERSION or meta["n"] != len(vectors):
            raise SegueError(f"{folder}: index does not match these embeddings (rebuild it)")
        saved = meta.get("config", {})
        for name in RANGE_FIELDS:  # the ranges were cut with these; others give other ranges
            if saved.get(name) != getattr(config, name):
                raise SegueError(f"{folder}: index built with {name}={saved.get(name)} (rebuild it)")
        graphs, rows = [], []
        for i in range(len(meta["max_norms"])):
            path = folder / f"bucket-{i}.usearch"
            graph = None
            if path.exists():
                graph = Index.restore(str(path))
                if graph is None:
                    raise SegueError(f"{path}: not a usearch index")
                graph.expansion_search = EF_FLOOR
            graphs.append(graph)
            rows.append(np.load(folder / f"rows-{i}.npy"))
        index = cls(
            np.ascontiguousarray(vectors, dtype=np.float32),
            keys,
            config,
            graphs,
            rows,
            np.array(meta["max_norms"], dtype=np.float32),
        )
        index.build_seconds = float(meta.get("build_seconds", 0.0))
        index.loaded_from_cache = True
        return index

    # --- search ------------------------------------------------------------------------------
    def _range_candidates(
        self, q: np.ndarray, qa: np.ndarray, bi: int, need: int, ef: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidate rows [c] of range `bi` for one query q [d] and their exact f32 scores [c]."""
        graph, rows = self.graphs[bi], self.bucket_rows[bi]
        if graph is None:  # a small range: scored exactly, from its contiguous copy
            s_b = self.exact_vectors[bi] @ q  # [n_b]
            if need < len(rows):
                part = np.argpartition(-s_b, need - 1)[:need]
                return rows[part], s_b[part]
            return rows, s_b
        # Asking for ef results searches with that ef; the extra candidates are re-scored exactly
        # like the rest, and can only help.
        ef = self.config.expansion_search if ef is None else ef
        count = min(len(rows), max(1, math.ceil(need * self.config.oversample), ef))
        found = graph.search(qa, count, threads=1)
        cand = np.asarray(found.keys, dtype=np.int64)  # row numbers
        return cand, self.vectors[cand] @ q

    def _search_one(self, q: np.ndarray, need: int, ef: int | None, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The best `need` rows [<=need] of one query q [d] with exact scores, best first.

        Ranges are visited in descending max-norm order keeping a running top-`need`; a range is
        skipped, and so are all after it, once |q| * its max norm cannot beat the running need-th
        best score. With `width` > 1 up to that many ranges are searched at once (on the pool),
        then merged in order as one range at a time would be: a range that the ranges before it
        would have pruned is dropped unread (by the bound, none of its items could enter the top),
        so the results never depend on the width.
        """
        q_norm = float(np.sqrt(q @ q))
        qa = np.zeros(len(q) + 1, dtype=np.float32)
        qa[:-1] = q / max(q_norm, 1e-30)
        top_r = np.empty(0, dtype=np.int64)
        top_s = np.empty(0, dtype=np.float32)
        kth = -np.inf
        start, n_ranges = 0, len(self.bucket_rows)
        while start < n_ranges and q_norm * self.max_norms[start] > kth:
            wave = list(range(start, min(start + width, n_ranges)))
            if self._pool is None or len(wave) == 1:
                found = [self._range_candidates(q, qa, wave[0], need, ef)]
            else:
                found = list(self._pool.map(lambda bi: self._range_candidates(q, qa, bi, need, ef), wave))
            for bi, (rows, scores) in zip(wave, found, strict=True):
                if not q_norm * self.max_norms[bi] > kth:
                    return self._ordered(top_r, top_s)  # descending max norms: none later can do better
                # Ranges are disjoint, so no row appears twice.
                top_r, top_s = np.concatenate([top_r, rows]), np.concatenate([top_s, scores])
                if len(top_s) > need:
                    keep = np.argpartition(-top_s, need - 1)[:need]
                    top_r, top_s = top_r[keep], top_s[keep]
                if len(top_s) >= need:
                    kth = float(top_s.min())
                start = bi + 1
        return self._ordered(top_r, top_s)

    @staticmethod
    def _ordered(rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-scores, kind="stable")
        return rows[order], scores[order]

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: list[np.ndarray] | None = None,
        *,
        ef: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k keys [B, k] with exact inner products [B, k] (-1 / -inf padded)."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        b = len(q)
        extra = [len(e) for e in exclude] if exclude else [0] * b
        # Each query asks for k + its exclusions, so k remain after they are dropped.
        width = max(k + max(extra, default=0), 1)
        out_rows = np.full((b, width), -1, dtype=np.int64)
        out_s = np.full((b, width), -np.inf, dtype=np.float32)
        with self._lock:
            self._in_flight += 1
            wave_width = self.wave_width if self._in_flight == 1 else 1
        try:
            for i in range(b):
                rows_i, s_i = self._search_one(q[i], max(k + extra[i], 1), ef, wave_width)
                out_rows[i, : len(rows_i)] = rows_i
                out_s[i, : len(s_i)] = s_i
        finally:
            with self._lock:
                self._in_flight -= 1
        keys = np.where(out_rows >= 0, self.keys[np.maximum(out_rows, 0)], -1)
        return _finish(keys, out_s, k, exclude)


def norm_buckets(norms: np.ndarray, config: IndexConfig) -> list[np.ndarray]:
    """Row indices of each norm range, largest norms first.

    Walking down the sorted norms, a range starts at its largest norm m and takes the items with
    norm >= m / norm_ratio (at least `min_bucket` of them); once `buckets` - 1 ranges exist the
    last takes all the rest (the smallest norms, which rarely reach a top-k and are pruned).
    """
    order = np.argsort(-norms, kind="stable")
    sorted_norms = norms[order]
    n = len(order)
    out, start = [], 0
    while start < n:
        if len(out) == max(config.buckets, 1) - 1:
            end = n
        else:
            floor = sorted_norms[start] / config.norm_ratio
            end = int(np.searchsorted(-sorted_norms, -floor, side="right"))  # norms >= floor
            end = max(end, start + config.min_bucket)
            if n - end < config.min_bucket:  # no runt range at the bottom
                end = n
        out.append(np.sort(order[start:end]))
        start = end
    return out


def _augment(x: np.ndarray) -> np.ndarray:
    """[x, sqrt(M^2 - |x|^2)] / M for one bucket (M = its largest norm): unit vectors."""
    n2 = np.einsum("ij,ij->i", x, x)
    m2 = float(n2.max()) if len(n2) else 1.0
    m2 = m2 if m2 > 0 else 1.0
    extra = np.sqrt(np.maximum(m2 - n2, 0.0))[:, None]
    return (np.concatenate([x, extra], axis=1) / math.sqrt(m2)).astype(np.float32)


def _finish(
    keys: np.ndarray, scores: np.ndarray, k: int, exclude: list[np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Drop excluded keys, sort by descending score, cut to k (pad with -1 / -inf)."""
    b = len(keys)
    out_k = np.full((b, k), -1, dtype=np.int64)
    out_s = np.full((b, k), -np.inf, dtype=np.float32)
    for i in range(b):
        ki, si = keys[i], scores[i]
        ok = np.isfinite(si) & (ki >= 0)
        if exclude is not None and len(exclude[i]):
            ok &= ~np.isin(ki, exclude[i])
        ki, si = ki[ok], si[ok]
        order = np.argsort(-si, kind="stable")[:k]
        out_k[i, : len(order)] = ki[order]
        out_s[i, : len(order)] = si[order]
    return out_k, out_s


def build_index(
    vectors: np.ndarray,
    keys: np.ndarray | None = None,
    config: IndexConfig | None = None,
    *,
    cache_dir: str | Path | None = None,
) -> ExactIndex | HNSWIndex:
    """The index `config` asks for over `vectors` (row i has key keys[i]); cached in `cache_dir`.

    kind "auto" picks exact search below `exact_below` items, HNSW above.
    """
    config = config or IndexConfig()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    keys = (
        np.arange(len(vectors), dtype=np.int64)
        if keys is None
        else np.asarray(keys, dtype=np.int64)
    )
    kind = config.kind
    if kind == "auto":
        kind = "exact" if len(vectors) < config.exact_below else "hnsw"
    if kind == "exact" or len(vectors) == 0:
        return ExactIndex(vectors, keys, config.block_rows, config.exact_threads)
    if cache_dir is None:
        return HNSWIndex.build(vectors, keys, config)
    folder = Path(cache_dir) / f"index-{embeddings_checksum(vectors, config)}"
    if (folder / "meta.json").exists():
        try:
            return HNSWIndex.load(folder, vectors, keys, config)
        except (SegueError, RuntimeError, ValueError, OSError):
            pass  # a stale or damaged cache is rebuilt below
    index = HNSWIndex.build(vectors, keys, config)
    with contextlib.suppress(
        OSError
    ):  # a read-only model folder still serves; it rebuilds next time
        index.save(folder)
    return index


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |approx_i ∩ exact_i| / |exact_i| (keys; -1 ignored)."""
    vals = []
    for a, e in zip(approx, exact, strict=True):
        e = e[e >= 0]
        if len(e):
            vals.append(len(np.intersect1d(a[a >= 0], e)) / len(e))
    return float(np.mean(vals)) if vals else float("nan")
