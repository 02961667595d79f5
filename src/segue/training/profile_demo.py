"""The demo's profile step (Sprout's setting), its training side: rated profiles without order, the
profile autoencoder with its presence and rating heads trained on a strong split (segue.demo
evaluates it on the held-out users beside the baselines), and one new profile folded in: its
recommendations, their predicted ratings, the profile items behind the first one, and the rating
the model did not expect.

The corpus is generated here: each user has a main and a second taste among `n_tastes` groups of
titles, lists about 70% of their titles from the main one and rates those high (8.5 on average),
rates the others lower (5), and leaves a fifth of the list unrated (as on MyAnimeList)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from segue.data.arrays import SequenceArrays


def write_profiles(path: Path, *, n_users: int = 800, n_tastes: int = 6, per_taste: int = 40, seed: int = 0) -> None:
    """A tab-separated table user / item / rating (empty: unrated), written to a temporary name
    and renamed."""
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        out = csv.writer(f, delimiter="\t")
        out.writerow(["user", "item", "rating"])
        for u in range(n_users):
            main, other = rng.choice(n_tastes, 2, replace=False)
            n = int(rng.integers(8, 30))
            n_other = int(rng.binomial(n, 0.3))
            items = np.concatenate([
                rng.choice(per_taste, n - n_other, replace=False) + main * per_taste,
                rng.choice(per_taste, n_other, replace=False) + other * per_taste,
            ])
            for j, item in enumerate(items.tolist()):
                mean = 8.5 if j < n - n_other else 5.0
                rating = "" if rng.random() < 0.2 else str(int(np.clip(round(mean + rng.normal(0, 1.2)), 1, 10)))
                out.writerow([f"u{u}", f"title-{item // per_taste}-{item % per_taste}", rating])
    tmp.replace(path)


def _config(store: Path, runs: Path, steps: int, seed: int) -> dict[str, Any]:
    return {
        "family": "autoencoder",
        "name": "profile-autoencoder",
        "runs_dir": str(runs),
        "data": {"store": str(store), "split": "strong"},
        "model": {"hidden": [128], "bottleneck": 32, "input_dropout": 0.5, "bottleneck_noise": 0.1, "alpha": 0.5},
        "loss": {"target": "dropped"},
        "optim": {"lr": 3e-3, "warmup_steps": 0, "schedule": "constant", "weight_decay": 0.0, "clip_norm": 5.0, "plateau_patience": 2},
        "trainer": {"max_steps": steps, "eval_every": max(1, steps // 4), "checkpoint_every": steps, "metric": "ndcg@100", "patience": None, "progress": False, "seed": seed, "loader": {"batch_size": 64}},
    }


def train_profiles(workdir: Path, *, seed: int = 0, steps: int = 600, console: Any = None) -> tuple[Path, Path]:
    """Generate and build the corpus (once) and train the autoencoder: (store, run folder)."""
    from segue.data.sources import open_source
    from segue.data.store import BuildConfig, build_store
    from segue.training.trainer import parse_train_config, train

    table, store = workdir / "profiles.tsv", workdir / "profiles.duckdb"
    runs = (workdir / "runs").resolve()
    if not store.exists():
        write_profiles(table, seed=seed)
        source = open_source("csv", table, user="user", item="item", rating="rating", delimiter="\t")
        split = {"kind": "strong", "name": "strong", "valid_users": 80, "test_users": 80}
        build_store(source, store, BuildConfig(seed=seed, splits=[split]))
    store = store.resolve()
    return store, train(parse_train_config(_config(store, runs, steps, seed), source="profile demo"), console=console)


def fold_in_profile(run: Path, console: Any = None) -> dict[str, Any]:
    """One new profile folded in: four titles of taste 0 loved, one of taste 1 disliked, one listed
    unrated; its recommendations, their predicted ratings, what raised the first, what surprised."""
    from segue.models.autoencoder import AutoencoderRecommender
    from segue.models.base import load_model
    from segue.models.explain import most_impactful, most_surprising

    say = console.print if console is not None else print
    model = load_model(run)
    assert isinstance(model, AutoencoderRecommender)
    names = ["title-0-0", "title-0-1", "title-0-2", "title-0-3", "title-1-0", "title-0-4"]
    tokens, _ = model.vocab.encode_external(names)
    hist = SequenceArrays.from_lists([[int(t) for t in tokens]])
    hist.rating = np.array([9, 10, 9, 8, 2, np.nan], np.float32)
    scores = model.score(hist)[0]
    scores[tokens] = -np.inf  # the profile's own titles
    top = np.argsort(-scores)[:5]
    name = model.vocab.external_id
    pred = model.predict(hist, None, top[None, :])[0]
    say("a new profile, folded in: " + ", ".join(f"{n} ({'-' if np.isnan(r) else int(r)})" for n, r in zip(names, hist.rating, strict=True)))
    for t, r in zip(top.tolist(), pred.tolist(), strict=True):
        say(f"  {name(t):<12} predicted rating {r:4.1f}")
    why = most_impactful(model, hist, 0, top[:1], top=2)[int(top[0])]
    say(f"  {name(int(top[0]))} is there most because of " + ", ".join(f"{name(i.because)} (score -{i.drop:.3f} without it)" for i in why))
    odd = most_surprising(model, hist, 0, top=1)
    if odd:
        say(f"  most surprising: {name(odd[0].item)} rated {odd[0].given:.0f}, expected {odd[0].predicted:.1f}")
    return {"run": run, "top": [name(t) for t in top.tolist()], "predicted": pred.tolist(), "impact": why, "surprise": odd}
