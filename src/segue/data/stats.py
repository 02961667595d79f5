"""Store statistics: counts, per-split parts, unknown-item rates, length, popularity and rating
distributions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segue.data.splits import Part
from segue.data.store import Store
from segue.io import atomic_path


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    q = np.percentile(values, [0, 25, 50, 75, 95, 100])
    return {
        "min": float(q[0]),
        "p25": float(q[1]),
        "median": float(q[2]),
        "mean": float(values.mean()),
        "p75": float(q[3]),
        "p95": float(q[4]),
        "max": float(q[5]),
    }


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of item popularity: G = sum_i (2i - n - 1) c_(i) / (n sum c), c sorted ascending."""
    c = np.sort(np.asarray(counts, dtype=np.float64))
    n = len(c)
    if n == 0 or c.sum() == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * c).sum() / (n * c.sum()))


def _rating_spread(con: Any) -> dict[str, Any]:
    """Shares of each rating value (when there are at most 21), and the per-user spread the
    hybrid normalisation reads (segue.data.ratings): over users with two or more ratings, the
    median standard deviation and the share with variance below 1 (tau's default), for whom the
    hybrid score leans on the absolute scale more than on the z-score."""
    values = con.execute(
        "SELECT rating, count(*) FROM events WHERE rating IS NOT NULL GROUP BY rating ORDER BY rating"
    ).fetchall()
    total = sum(n for _, n in values)
    # (ratings / the largest magnitude): var_pop of a rating near 1e300 (an older store, or a
    # source that did not check) was an 'Out of Range' error that crashed stats after "built"
    (scale,) = con.execute("SELECT max(abs(rating)) FROM events").fetchone()
    scale = float(scale) if scale else 1.0
    var = con.execute(
        "SELECT var_pop(rating / ?) FROM events WHERE rating IS NOT NULL GROUP BY seq_id HAVING count(rating) >= 2", [scale]
    ).fetchnumpy()
    sd = np.sqrt(np.asarray(next(iter(var.values())), dtype=np.float64)) * scale if var else np.zeros(0)
    return {
        "values": {float(r): n / total for r, n in values} if len(values) <= 21 else None,
        "users_with_two_or_more": int(len(sd)),
        "user_sd_median": float(np.median(sd)) if len(sd) else None,
        "low_variance_share": float(np.mean(sd < 1.0)) if len(sd) else None,
    }


def store_stats(store: Store) -> dict[str, Any]:
    con = store.con
    counts = store.counts()
    lengths = con.execute("SELECT length FROM sequences").fetchnumpy()["length"]
    item_counts = con.execute("SELECT count(*) AS n FROM events GROUP BY item_id").fetchnumpy()["n"]
    top = np.sort(item_counts)[::-1]
    n_top = max(1, len(top) // 100)
    ts = con.execute("SELECT min(ts), max(ts) FROM events").fetchone()
    rating = con.execute("SELECT min(rating), max(rating), avg(rating) FROM events").fetchone()
    out: dict[str, Any] = {
        "store": str(store.path),
        "checksum": store.checksum,
        "counts": counts,
        "sequence_length": _quantiles(lengths.astype(np.float64)),
        "popularity": {
            "items": int(len(item_counts)),
            "top_1pct_share": float(top[:n_top].sum() / max(1, top.sum())),
            "gini": gini(item_counts),
            "singletons": int((item_counts == 1).sum()),
        },
        "time_range": {"min": ts[0], "max": ts[1]},
        "ratings": None if rating[0] is None else {"min": rating[0], "max": rating[1], "mean": rating[2], **_rating_spread(con)},
        "sources": con.execute("SELECT source, path, bytes, sha256, md5_verified FROM source_files").fetchall(),
        "splits": {},
    }
    for split in store.split_names():
        info = store.split_info(split)
        rows = con.execute(
            """
            SELECT s.part, count(*) AS events, count(DISTINCT s.seq_id) AS sequences,
                   count(DISTINCT e.item_id) AS items,
                   sum(CASE WHEN v.token IS NULL THEN 1 ELSE 0 END) AS unknown
            FROM split_events s JOIN events e USING (seq_id, position)
            LEFT JOIN vocab v ON v.split = s.split AND v.item_id = e.item_id
            WHERE s.split = ? GROUP BY s.part ORDER BY s.part
            """,
            [split],
        ).fetchall()
        vocab_size = con.execute("SELECT count(*) FROM vocab WHERE split = ?", [split]).fetchone()[0]
        parts = {}
        for part, events, seqs, items, unknown in rows:
            parts[Part(int(part)).name.lower()] = {
                "events": int(events),
                "sequences": int(seqs),
                "items": int(items),
                "unknown_rate": float(unknown) / max(1, int(events)),
            }
        out["splits"][split] = {
            "kind": info["kind"],
            "vocab_size": int(vocab_size),
            "parts": parts,
            "params": info["params"],
        }
    return out


def plot_stats(store: Store, path: str | Path) -> Path:
    """Write a PNG with the sequence-length histogram, the rank-frequency popularity curve and, for
    a rated store, the ratings' distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = store.con.execute("SELECT length FROM sequences").fetchnumpy()["length"]
    item_counts = store.con.execute("SELECT count(*) AS n FROM events GROUP BY item_id").fetchnumpy()["n"]
    ratings = store.con.execute("SELECT rating FROM events WHERE rating IS NOT NULL").fetchnumpy()["rating"]
    fig, axes = plt.subplots(1, 3 if len(ratings) else 2, figsize=(15 if len(ratings) else 10, 4))
    a, b = axes[0], axes[1]
    a.hist(lengths, bins=min(60, max(5, len(np.unique(lengths)))), color="#4477aa")
    a.set_xlabel("sequence length")
    a.set_ylabel("sequences")
    a.set_title("Length distribution")
    ranked = np.sort(item_counts)[::-1]
    b.loglog(np.arange(1, len(ranked) + 1), ranked, color="#cc6677")
    b.set_xlabel("item rank")
    b.set_ylabel("events")
    b.set_title("Popularity (rank-frequency)")
    if len(ratings):
        values, counts = np.unique(np.asarray(ratings, np.float64), return_counts=True)
        if len(values) <= 21:  # a discrete scale: one bar per value
            axes[2].bar(values, counts, width=0.8 * float(np.min(np.diff(values))) if len(values) > 1 else 0.8, color="#228833")
        else:
            axes[2].hist(ratings, bins=40, color="#228833")
        axes[2].set_xlabel("rating")
        axes[2].set_ylabel("events")
        axes[2].set_title("Ratings")
    fig.suptitle(store.path.name)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
