"""The demo's pairwise step: on a small synthetic corpus with listening feedback, pretrain a
transformer that reads feedback and context and predicts the listened fraction, fine-tune it on
pairs (the better-listened track against the worse, same playlist), and compare PairAccuracy on
the validation part before and after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segue.data.arrays import SplitData
from segue.data.splits import Part
from segue.data.store import Store
from segue.training.pairwise import mean_user_pair_accuracy, validation_pairs


def _config(store: Path, runs: Path, name: str, steps: int, seed: int, pairwise: dict | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "runs_dir": str(runs),
        "data": {"store": str(store), "split": "holdout"},
        "model": {"n_layers": 1, "n_heads": 2, "d_model": 32, "d_ff": 64, "dropout": 0.1, "context_length": 32},
        "loss": {"kind": "full"},
        "optim": {"lr": 3e-3 if pairwise is None else 1e-3, "warmup_steps": 10, "schedule": "constant"},
        "events": {"feedback": {"listened": "fraction"}, "context": ["platform"], "predict": {"listened": 1.0}},
        "trainer": {
            "max_steps": steps,
            "eval_every": steps,
            "checkpoint_every": steps,
            "progress": False,
            "patience": None,
            "seed": seed,
            "eval_max_users": 300,
            "loader": {"batch_size": 32, "context_length": 32, "bucket_lengths": [16, 32], "prefetch_threads": 0},
        },
    }
    if pairwise is not None:
        cfg["pairwise"] = pairwise
        cfg["trainer"]["metric"] = "pair_accuracy"
    return cfg


def pairwise_demo(workdir: Path, *, seed: int = 0, n_playlists: int = 400, steps: int = 40, console: Any = None) -> dict[str, float]:
    """Build, pretrain, fine-tune; returns validation PairAccuracy of the pretrained next-item
    logit and of the fine-tuned mix score (pairs ordered by the listened fraction)."""
    from segue.data.sources import open_source
    from segue.data.store import BuildConfig, build_store
    from segue.models.base import load_model
    from segue.training.trainer import TrainConfig, train

    store = workdir / "feedback.duckdb"
    runs = (workdir / "runs").resolve()
    if not store.exists():
        source = open_source("synthetic", None, n_playlists=n_playlists, n_items=300, seed=seed, feedback=True)
        split = {"kind": "random_holdout", "name": "holdout", "valid_fraction": 0.2, "test_fraction": 0.1}
        build_store(source, store, BuildConfig(seed=seed, splits=[split]))
    store = store.resolve()
    pre = train(TrainConfig.from_dict(_config(store, runs, "feedback", steps, seed)), console=console)
    pw = {"init_from": str(pre), "score": "mix", "feedback": "listened", "by": "listened", "max_pairs": 32}
    tuned = train(TrainConfig.from_dict(_config(store, runs, "feedback-pairwise", steps, seed, pw)), console=console)
    with Store.open(store) as st:
        data = SplitData.load(st, "holdout")
        vp = validation_pairs(data, by="listened", max_users=300, seed=seed)
        hist = data.history(Part.VALID)
    if vp is None:
        return {}
    users, inv = np.unique(vp["rows"], return_inverse=True)
    out = {}
    for label, run in (("pretrained next-item logit", pre), ("fine-tuned mix score", tuned)):
        s = load_model(run).score(hist, users)
        out[label] = mean_user_pair_accuracy(s[inv, vp["tok_a"]], s[inv, vp["tok_b"]], vp["rows"])
    return out
