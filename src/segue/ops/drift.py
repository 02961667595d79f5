"""Distribution drift: normalised histograms of one feature and the Chebyshev distance between them.

A `Histogram` holds counts per bin label and, for the sampling allowance, the moments of those
counts over clusters (the sequences events belong to: events of one sequence are not independent
draws). Two histograms are compared on the union of their bins (a bin one side lacks counts 0
there), each normalised to sum to 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

OTHER = "<other>"
UNKNOWN = "<unk>"
KNOWN = "known"
NEW = "new"


@dataclass(frozen=True)
class Histogram:
    """Counts per bin label (display order). For clusters s of sizes n_s with x_sb units in bin b:
    s2[b] = sum_s x_sb^2, sxn[b] = sum_s x_sb n_s, q = sum_s n_s^2, clusters = number of clusters
    (independent units: each its own cluster)."""

    counts: dict[str, float]
    s2: dict[str, float]
    sxn: dict[str, float]
    q: float
    clusters: int

    @property
    def n(self) -> float:
        return float(sum(self.counts.values()))

    def probabilities(self) -> dict[str, float]:
        total = self.n
        return {k: (v / total if total else 0.0) for k, v in self.counts.items()}

    def share_variance(self, label: str, m: float) -> float:
        """Variance of this sample's share of bin `label` if the true share is m (cluster-robust,
        ratio estimator): k/(k-1) * sum_s (x_sb - m n_s)^2 / N^2, expanded over the moments."""
        n, k = self.n, self.clusters
        if n <= 0 or k < 2:
            return 0.0
        ss = self.s2.get(label, 0.0) - 2 * m * self.sxn.get(label, 0.0) + m * m * self.q
        return max(ss, 0.0) * k / (k - 1) / (n * n)


def histogram(codes: np.ndarray, names: Sequence[str], clusters: np.ndarray | None = None) -> Histogram:
    """The histogram of units whose bins are `codes` (indices into `names`), grouped by `clusters`
    (one id per unit; None: independent units). Bins no unit falls in are kept with count 0."""
    codes = np.asarray(codes, dtype=np.int64)
    b = len(names)
    counts = np.bincount(codes, minlength=b).astype(np.float64)
    if clusters is None or len(codes) == 0:
        s2 = sxn = counts
        q, k = float(len(codes)), len(codes)
    else:
        cl = np.unique(np.asarray(clusters, dtype=np.int64), return_inverse=True)[1]
        size = np.bincount(cl).astype(np.float64)
        pair, x = np.unique(cl * b + codes, return_counts=True)
        pair_bin, pair_cl = pair % b, pair // b
        s2 = np.bincount(pair_bin, weights=x.astype(np.float64) ** 2, minlength=b)
        sxn = np.bincount(pair_bin, weights=x * size[pair_cl], minlength=b)
        q, k = float(np.sum(size**2)), len(size)
    names = list(names)
    return Histogram(
        dict(zip(names, counts.tolist(), strict=True)),
        dict(zip(names, np.asarray(s2, np.float64).tolist(), strict=True)),
        dict(zip(names, np.asarray(sxn, np.float64).tolist(), strict=True)),
        q,
        k,
    )


def align(p: Mapping[str, float], q: Mapping[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Both mappings as vectors over the union of their keys (p's order first, then q's new keys);
    a key one side lacks is 0 there."""
    keys = list(p) + [k for k in q if k not in p]
    return (
        keys,
        np.array([p.get(k, 0.0) for k in keys], dtype=np.float64),
        np.array([q.get(k, 0.0) for k in keys], dtype=np.float64),
    )


def chebyshev(p: Mapping[str, float] | Sequence[float], q: Mapping[str, float] | Sequence[float]) -> float:
    """Chebyshev (L-infinity) distance between two normalised distributions:

        d(p, q) = max_b | p_b / sum(p) - q_b / sum(q) |

    over the union b of both sides' bins (a bin one side lacks has mass 0 there). Mappings are
    aligned by key, sequences by position (the shorter padded with zeros). An all-zero side counts
    as all-zero masses. The result lies in [0, 1]; 0 means identical distributions.
    """
    if isinstance(p, Mapping) or isinstance(q, Mapping):
        if not (isinstance(p, Mapping) and isinstance(q, Mapping)):
            raise TypeError("chebyshev: give two mappings or two sequences, not one of each")
        _, a, b = align(p, q)
    else:
        a = np.asarray(p, dtype=np.float64)
        b = np.asarray(q, dtype=np.float64)
        n = max(len(a), len(b))
        a = np.pad(a, (0, n - len(a)))
        b = np.pad(b, (0, n - len(b)))
    if len(a) == 0:
        return 0.0
    sa, sb = a.sum(), b.sum()
    a = a / sa if sa else a
    b = b / sb if sb else b
    return float(np.max(np.abs(a - b)))


def sampling_noise(ref: Histogram, cand: Histogram) -> float:
    """The standard error of the largest bin difference if both samples came from one distribution:

        max_b sqrt( Var_ref(b) + Var_cand(b) ),  m_b = (N_ref p_b + N_cand q_b) / (N_ref + N_cand)

    with each side's Var(b) its cluster-robust variance of the share of bin b around the pooled
    share m_b (Histogram.share_variance); for independent units this is m_b (1 - m_b) / N.
    """
    n_r, n_c = ref.n, cand.n
    if n_r <= 0 or n_c <= 0:
        return 0.0
    keys, a, b = align(ref.probabilities(), cand.probabilities())
    m = (n_r * a + n_c * b) / (n_r + n_c)
    var = [
        ref.share_variance(k, float(mk)) + cand.share_variance(k, float(mk)) for k, mk in zip(keys, m, strict=True)
    ]
    return float(np.sqrt(max(var)))


# --- binning (pure) ----------------------------------------------------------------------------


def top_items(counts: Mapping[str, float], n: int) -> list[str]:
    """The `n` most frequent keys (ties by key, so the choice is deterministic)."""
    return [k for k, _ in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]]


def top_codes(ids: Sequence[str], top: Sequence[str]) -> np.ndarray:
    """For each id: its index in `top`, or len(top) (the OTHER bin) when it is not there."""
    where = {k: i for i, k in enumerate(top)}
    return np.array([where.get(x, len(top)) for x in ids], dtype=np.int64)


def log2_bins(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Log-spaced bins: code 0 for 0, code k+1 for [2^k, 2^(k+1)); labels '0', '1', '2-3', '4-7', ..."""
    v = np.asarray(values, dtype=np.int64)
    codes = np.zeros(len(v), dtype=np.int64)
    pos = v > 0
    codes[pos] = np.floor(np.log2(v[pos])).astype(np.int64) + 1
    top = int(codes.max()) if len(codes) else 0
    labels = ["0"] + [str(1 << (k - 1)) if k == 1 else f"{1 << (k - 1)}-{(1 << k) - 1}" for k in range(1, top + 1)]
    return codes, labels


def log_histogram(values: np.ndarray, clusters: np.ndarray | None = None) -> Histogram:
    """Counts in log-spaced bins (lengths, events per day); empty bins dropped."""
    codes, labels = log2_bins(values)
    return _drop_empty(histogram(codes, labels, clusters))


def value_histogram(values: np.ndarray, clusters: np.ndarray | None = None) -> Histogram:
    """Counts per distinct value (ratings) rounded to 2 decimals; NaN (null) dropped."""
    v = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(v)
    uniq, codes = np.unique(np.round(v[ok], 2), return_inverse=True)
    return histogram(codes, [_num_label(float(u)) for u in uniq], None if clusters is None else clusters[ok])


def _num_label(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


def _drop_empty(h: Histogram) -> Histogram:
    keep = [k for k, c in h.counts.items() if c > 0]
    return Histogram({k: h.counts[k] for k in keep}, {k: h.s2[k] for k in keep}, {k: h.sxn[k] for k in keep}, h.q, h.clusters)


def share_histogram(n_in: float, n_total: float, label_in: str, label_out: str) -> Histogram:
    """A two-bin histogram of independent units: `label_out` holds n_total - n_in."""
    counts = {label_out: float(n_total - n_in), label_in: float(n_in)}
    return Histogram(counts, dict(counts), dict(counts), float(n_total), int(n_total))
