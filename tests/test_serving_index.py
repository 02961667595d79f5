"""Maximum inner product search: exact blocked search, norm-ranged HNSW recall, the disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from segue.serving.index import (
    ExactIndex,
    HNSWIndex,
    IndexConfig,
    build_index,
    embeddings_checksum,
    recall_at_k,
)


def clustered(n: int, d: int, seed: int = 0, spread: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """Items around 50 centres with log-normal norms; queries near the centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.7 * rng.standard_normal((n, d)).astype(np.float32)
    x *= np.exp(spread * rng.standard_normal(n)).astype(np.float32)[:, None]
    q = centres[rng.integers(0, 50, 40)] + 0.7 * rng.standard_normal((40, d)).astype(np.float32)
    return x, q


def brute(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize(("block_rows", "threads"), [(700, 1), (700, 3), (10**6, 4)])
def test_exact_index_matches_a_full_sort_across_blocks_and_exclusions(block_rows: int, threads: int) -> None:
    """Several blocks, scanned on one thread or concurrently, and row chunks cut for threads."""
    x, q = clustered(3000, 8)
    keys = np.arange(len(x)) + 4
    index = ExactIndex(x, keys, block_rows=block_rows, threads=threads)
    assert len(index.chunks) == (5 if block_rows == 700 else 2) and (index.pool is None) == (threads == 1)
    got, scores = index.search(q, 20)
    assert np.array_equal(got, brute(x, q, 20) + 4)
    assert np.allclose(scores, np.take_along_axis(q @ x.T, got - 4, axis=1), rtol=1e-5)
    exclude = [got[i, :3] for i in range(len(q))]
    got2, _ = index.search(q, 20, exclude)
    assert np.array_equal(got2[:, :17], got[:, 3:20])
    assert not any(np.isin(got2[i], exclude[i]).any() for i in range(len(q)))


def test_hnsw_recall_with_uneven_norms_and_exact_scores(tmp_path) -> None:
    x, q = clustered(6000, 16)
    keys = np.arange(len(x)) + 4
    config = IndexConfig(kind="hnsw", min_bucket=500, exact_bucket_below=1000, threads=2)
    index = build_index(x, keys, config, cache_dir=tmp_path)
    assert isinstance(index, HNSWIndex) and not index.loaded_from_cache
    assert sum(g is not None for g in index.graphs) >= 2  # really graphs, not exact ranges
    got, scores = index.search(q, 50)
    truth = brute(x, q, 50) + 4
    assert recall_at_k(got, truth) >= 0.9
    # Returned scores are exact inner products of the returned items, in descending order.
    assert np.allclose(scores, np.take_along_axis(q @ x.T, got - 4, axis=1), rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    exclude = [truth[i, :5] for i in range(len(q))]
    got_ex, _ = index.search(q, 50, exclude)
    assert not any(np.isin(got_ex[i], exclude[i]).any() for i in range(len(q)))
    # A second build with the same vectors loads the cached graphs and answers the same.
    again = build_index(x, keys, config, cache_dir=tmp_path)
    assert again.loaded_from_cache
    assert np.array_equal(again.search(q, 50)[0], got)
    assert (tmp_path / f"index-{embeddings_checksum(x, config)}" / "meta.json").exists()
    # Other norm ranges make another index: the cache is rebuilt, not reused.
    other = build_index(x, keys, config.model_copy(update={"norm_ratio": 2.0}), cache_dir=tmp_path)
    assert not other.loaded_from_cache and len(other.bucket_rows) < len(index.bucket_rows)


def test_norm_ranges_beat_one_transform_on_uneven_norms() -> None:
    x, q = clustered(6000, 16, spread=0.6)
    truth = brute(x, q, 50)
    recalls = {}
    for buckets in (1, 12):
        config = IndexConfig(kind="hnsw", buckets=buckets, min_bucket=500, exact_bucket_below=1000, threads=2)
        index = HNSWIndex.build(x, None, config)
        recalls[buckets] = recall_at_k(index.search(q, 50)[0], truth)
    assert recalls[12] > recalls[1]
    assert recalls[12] >= 0.95


def test_norm_ranges_cover_every_row_once_largest_first() -> None:
    from segue.serving.index import norm_buckets

    norms = np.exp(np.random.default_rng(0).standard_normal(20_000))
    config = IndexConfig(norm_ratio=1.5, min_bucket=500, buckets=6)
    ranges = norm_buckets(norms, config)
    assert np.array_equal(np.sort(np.concatenate(ranges)), np.arange(len(norms)))
    assert 1 < len(ranges) <= 6 and all(len(r) >= 500 for r in ranges)
    maxima = [norms[r].max() for r in ranges]
    assert maxima == sorted(maxima, reverse=True)
    # Every range but the last spans at most norm_ratio, unless min_bucket forced it wider.
    for r in ranges[:-1]:
        assert norms[r].max() / norms[r].min() <= 1.5 or len(r) == 500


def test_auto_picks_exact_for_small_catalogues_and_checksums_differ() -> None:
    x, _ = clustered(500, 8)
    assert isinstance(build_index(x, None, IndexConfig()), ExactIndex)
    y = x.copy()
    y[0, 0] += 1.0
    assert embeddings_checksum(x) != embeddings_checksum(y)


@pytest.mark.parametrize("k", [1, 7])
def test_fewer_items_than_k_pads(k: int) -> None:
    x = np.eye(3, dtype=np.float32)
    got, scores = ExactIndex(x).search(np.ones((1, 3), np.float32), k + 3, [np.array([1])])
    assert list(got[0, :2]) in ([0, 2], [2, 0])
    assert np.all(got[0, 2:] == -1) and np.all(np.isneginf(scores[0, 2:]))


def test_range_waves_and_concurrent_searches_give_the_lone_sequential_results() -> None:
    """Ranges searched in waves on threads are merged as one range at a time would be, so a lone
    query (waves) and queries searched concurrently (one range at a time) find exactly the rows
    of the sequential search, with the same scores."""
    from concurrent.futures import ThreadPoolExecutor

    x, q = clustered(6000, 16, spread=0.6)
    base = IndexConfig(kind="hnsw", min_bucket=500, exact_bucket_below=1000, norm_ratio=1.2, threads=2)
    one = build_index(x, None, base.model_copy(update={"search_threads": 1}))
    assert isinstance(one, HNSWIndex) and len(one.bucket_rows) >= 4 and one._pool is None
    waves = HNSWIndex(one.vectors, one.keys, base.model_copy(update={"search_threads": 3}), one.graphs, one.bucket_rows, one.max_norms)
    assert waves.wave_width == 3 and waves._pool is not None
    widths: list[int] = []
    real = waves._search_one

    def recording(q_: np.ndarray, need: int, ef: int | None, width: int) -> tuple[np.ndarray, np.ndarray]:
        widths.append(width)
        return real(q_, need, ef, width)

    waves._search_one = recording  # type: ignore[method-assign]
    k1, s1 = one.search(q, 30)
    k3, s3 = waves.search(q, 30)
    assert set(widths) == {3}  # alone: whole waves
    np.testing.assert_array_equal(k3, k1)
    np.testing.assert_array_equal(s3, s1)
    assert recall_at_k(k1, brute(x, q, 30)) > 0.9
    # With another search in flight, one range at a time; the same answers.
    widths.clear()
    waves._in_flight += 1
    k_busy, s_busy = waves.search(q, 30)
    waves._in_flight -= 1
    assert set(widths) == {1}
    np.testing.assert_array_equal(k_busy, k1)
    np.testing.assert_array_equal(s_busy, s1)
    # Queries on many threads at once: each search sees others in flight and takes one range at
    # a time; the answers are the lone ones.
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: waves.search(q[i], 30), range(len(q))))
    for i, (ki, si) in enumerate(got):
        np.testing.assert_array_equal(ki[0], k1[i])
        np.testing.assert_array_equal(si[0], s1[i])
    assert waves._in_flight == 0


def test_ef_is_per_search_and_leaves_the_shared_graphs_alone() -> None:
    """A larger ef finds at least as good a top-k, and no search writes the graphs' setting
    (concurrent requests share them)."""
    from segue.serving.index import EF_FLOOR

    x, q = clustered(6000, 16, spread=0.6)
    index = build_index(x, None, IndexConfig(kind="hnsw", min_bucket=500, exact_bucket_below=1000, threads=2))
    assert isinstance(index, HNSWIndex)
    graphs = [g for g in index.graphs if g is not None]
    k_low, _ = index.search(q, 10, ef=10)
    k_high, _ = index.search(q, 10, ef=400)
    assert all(g.expansion_search == EF_FLOOR for g in graphs)
    truth = brute(x, q, 10)
    assert recall_at_k(k_high, truth) >= recall_at_k(k_low, truth)
    assert recall_at_k(k_high, truth) > 0.95
