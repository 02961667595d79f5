"""A small store with feedback, context and timestamps, and a tiny transformer with both ARGUS heads
trained on it (the export, rank and request-encoding tests share them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datahelp import make_store
from segue.data.arrays import SplitData
from segue.data.store import Store
from segue.models.events import EventsConfig
from segue.models.transformer import TransformerConfig, TransformerRecommender

PLATFORMS = ["mobile", "web", "tv"]
EVENTS = EventsConfig(
    rating=True,
    feedback={"skip": "flag", "listened": "fraction"},
    context=["platform"],
    time=True,
    predict={"rating": 1.0, "skip": 0.5, "listened": 0.5},
)


def feedback_corpus(seed: int = 0, n_seq: int = 200, n_items: int = 250) -> dict:
    """Sequences over a popularity-skewed catalogue with ratings 1-5, skip flags, listened fractions
    (some missing), a platform per event and increasing unix times."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** 0.6
    p /= p.sum()
    seqs, rating, skip, listened, platform, ts = [], [], [], [], [], []
    for _ in range(n_seq):
        n = int(rng.integers(4, 13))
        seqs.append([int(x) for x in rng.choice(n_items, n, p=p)])
        ts.append([int(x) for x in 1_700_000_000 + np.cumsum(rng.integers(1, 200_000, n))])
        rating.append([float(x) for x in rng.integers(1, 6, n)])
        skip.append([float(x) for x in rng.integers(0, 2, n)])
        listened.append([None if rng.random() < 0.2 else float(x) for x in rng.random(n)])
        platform.append([PLATFORMS[int(x)] for x in rng.integers(0, 3, n)])
    return {"seqs": seqs, "rating": rating, "ts": ts, "extra": {"fb_skip": skip, "fb_listened": listened, "ctx_platform": platform}}


def feedback_store(path: Path, seed: int = 0) -> Path:
    c = feedback_corpus(seed)
    splits = [{"kind": "leave_last_out", "name": "loo"}]
    return make_store(path, c["seqs"], splits, rating=c["rating"], ts=c["ts"], extra=c["extra"])


def tiny_config(events: EventsConfig = EVENTS, steps: int = 3) -> TransformerConfig:
    return TransformerConfig.from_dict(
        {
            # init_std 0.3: untrained scores spread widely enough to make top-k lists a real choice
            "model": {"n_layers": 1, "n_heads": 2, "d_model": 16, "d_ff": 32, "dropout": 0.0, "context_length": 8, "init_std": 0.3},
            "loss": {"kind": "full"},
            "optim": {"warmup_steps": 1, "lr": 3e-3},
            "events": events.model_dump(mode="json"),
            "trainer": {
                "max_steps": steps, "eval_every": steps, "progress": False, "patience": None,
                "loader": {"batch_size": 16, "bucketing": False, "prefetch_threads": 0},
            },
        }
    )  # fmt: skip


def untrained(store: Path, events: EventsConfig = EVENTS, split: str = "loo") -> TransformerRecommender:
    """A transformer with random weights on the store's split (vocabulary and context categories as
    training would set them): what is tested here is the path from events to scores, not quality.
    Training costs tens of seconds of compiling on this machine; the listening-log test trains."""
    from segue.models import events as EV

    with Store.open(store) as st:
        data = SplitData.load(st, split)
    rec = TransformerRecommender(tiny_config(events))
    rec.vocab = data.vocab
    cats = EV.model_categories(events, data.train) if events.context else None
    rec.network = rec.build(len(data.vocab), seed=0, categories=cats)
    # The next-item head's output layer starts at zero (q = h): give it weight so that the
    # context of the event to predict visibly changes scores.
    import jax

    head = rec.network.next_head
    head.fc2.kernel[...] = 0.3 * jax.random.normal(jax.random.key(1), head.fc2.kernel[...].shape)
    return rec
