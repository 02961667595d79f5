"""Training a retrain candidate: `segue train`'s steps on a run folder, optionally warm-started
from the production model's weights.

Warm start (transformer family, same model shape): every parameter whose shape matches is copied;
the item table is copied row by row for the items both vocabularies hold (matched by external
id), new items keep their fresh random rows, and the rows of items the new vocabulary lacks are
dropped, so an item gone from the data can never be recommended by the candidate. Any other case
(another family, another width) trains from scratch, and says why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segue.data.vocab import N_SPECIAL, Vocabulary


@dataclass
class WarmStart:
    """What a warm start copied: rows of the item table and whole parameters."""

    rows_copied: int
    rows_fresh: int
    rows_dropped: int
    params_copied: int
    params_skipped: list[str]

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def row_map(old: Vocabulary, new: Vocabulary) -> np.ndarray:
    """For each token of `new`, the token of the same item in `old`, or -1 (a new item). Special
    tokens map to themselves."""
    out = np.full(len(new), -1, dtype=np.int64)
    out[:N_SPECIAL] = np.arange(N_SPECIAL)
    index = {e: t for t, e in enumerate(old.external_ids) if e is not None and t >= N_SPECIAL}
    for t in range(N_SPECIAL, len(new)):
        out[t] = index.get(new.external_ids[t], -1)
    return out


def warm_table(old_table: np.ndarray, fresh_table: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """The new item table: row t is old_table[mapping[t]] where mapping[t] >= 0, else the fresh row."""
    out = np.array(fresh_table, copy=True)
    known = mapping >= 0
    out[known] = old_table[mapping[known]]
    return out


def warm_start_network(net: Any, weights: Path, old_vocab: Vocabulary, new_vocab: Vocabulary) -> WarmStart:
    """Fill `net` (a fresh SequenceTransformer for `new_vocab`) from a production weights file."""
    import jax.numpy as jnp
    from flax import nnx

    data = np.load(weights)
    mapping = row_map(old_vocab, new_vocab)
    copied, skipped = 0, []
    state = nnx.state(net, nnx.Param)
    for k, v in nnx.to_flat_state(state):
        name = "/".join(map(str, k))
        if name not in data:
            skipped.append(name)
            continue
        arr = data[name]
        cur = v[...]
        if name == "item_emb" and arr.shape[1:] == cur.shape[1:] and arr.shape[0] == len(old_vocab):
            v[...] = jnp.asarray(warm_table(arr, np.asarray(cur), mapping))
            copied += 1
        elif arr.shape == cur.shape:
            v[...] = jnp.asarray(arr)
            copied += 1
        else:
            skipped.append(name)
    nnx.update(net, state)
    n_old_items = len(old_vocab) - N_SPECIAL
    rows_copied = int((mapping[N_SPECIAL:] >= 0).sum())
    return WarmStart(
        rows_copied=rows_copied,
        rows_fresh=int(len(new_vocab) - N_SPECIAL - rows_copied),
        rows_dropped=int(n_old_items - rows_copied),
        params_copied=copied,
        params_skipped=skipped,
    )


class WarmStartTask:
    """A TransformerTask whose initial state comes from production's weights (see warm_start_network);
    everything else is the wrapped task's."""

    def __init__(self, task: Any, weights: Path, old_vocab: Vocabulary, new_vocab: Vocabulary) -> None:
        self._task = task
        self._weights = weights
        self._vocabs = (old_vocab, new_vocab)
        self.report: WarmStart | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def init_state(self) -> dict[str, Any]:
        import jax

        from segue.training.step import split_network

        state = self._task.init_state()
        net = self._task.network(state)
        self.report = warm_start_network(net, self._weights, *self._vocabs)
        _, items, rest = split_network(net)
        state["items"], state["rest"] = items, rest
        for key, src in (("ema_items", items), ("ema_rest", rest)):
            if key in state:
                state[key] = jax.tree_util.tree_map(lambda x: x.copy(), src)
        return state


def warm_start_problem(cfg: Any, production: Path | None) -> str | None:
    """Why the candidate cannot start from production's weights (None: it can)."""
    if production is None:
        return "no production model"
    from segue.models.base import read_model_header

    header = read_model_header(production)
    if cfg.family != "transformer":
        return f"warm start covers the transformer family, not '{cfg.family}'"
    if header["family"] != "transformer":
        return f"production is a '{header['family']}' model"
    if not (production / "weights.npz").exists():
        return "production has no weights.npz"
    mine = cfg.model.model_dump(mode="json")
    theirs = header.get("config", {}).get("model", {})
    for key in ("d_model", "n_layers", "n_heads", "d_ff"):
        if key in theirs and theirs[key] != mine.get(key):
            return f"model.{key} differs ({theirs[key]} in production, {mine.get(key)} now)"
    return None


def attempt_hint(text: str) -> str:
    """The trainer's Ctrl-C messages as they hold inside a retrain: its checkpoint is never resumed
    (a rerun starts a new attempt), so "run the same command to resume from it" was wrong."""
    if text.startswith("interrupted at step"):
        return text.split(":", 1)[0] + ": this retrain attempt cannot be resumed; rerun segue retrain to start a new one"
    return text.replace(" and writing a checkpoint to resume from", "")


def _attempt_trainer(trainer: Any) -> Any:
    """segue.training's Trainer saying attempt_hint's messages (it has no option for its hint)."""

    class AttemptTrainer(trainer):  # type: ignore[misc,valid-type]
        def say(self, text: str) -> None:
            super().say(attempt_hint(text))

    return AttemptTrainer


def train_candidate(
    cfg: Any, run: Path, *, warm_from: Path | None = None, console: Any = None, cold_reason: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """Train `cfg` (a RunConfig) into run folder `run` from scratch, as `segue train --fresh` does,
    warm-started from the model folder `warm_from` when given and possible. Returns the run folder
    and what the warm start did ({"warm_start": False, "why": ...} when it did not run; `why` is
    `cold_reason` when the caller chose not to warm-start, e.g. --from-scratch)."""
    import shutil

    from rich.console import Console

    from segue.data.store import Store
    from segue.io import atomic_write_text
    from segue.models.base import model_class, write_model_header
    from segue.training.continuation import ITEM_NAMES_FILE, save_item_names
    from segue.training.task import task_factory
    from segue.training.trainer import Trainer, open_split, plot_curves

    console = console if console is not None else Console()
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    with Store.open(cfg.resolve(cfg.data.store)) as store:
        data = open_split(store, cfg.data.split)
        family_config = cfg.family_config()
        task: Any = task_factory(cfg.family)(family_config, data)
        problem = cold_reason or warm_start_problem(cfg, warm_from)
        warm: dict[str, Any] = {"warm_start": False, "why": problem}
        if problem is None and warm_from is not None:
            task = WarmStartTask(task, warm_from / "weights.npz", Vocabulary.load(warm_from / "vocab.json"), data.vocab)
        cfg.save(run / "config.toml")
        data.vocab.save(run / "vocab.json")
        save_item_names(store, data.vocab, run / ITEM_NAMES_FILE)
        atomic_write_text(run / "store_checksum.txt", store.checksum + "\n")
        trainer = _attempt_trainer(Trainer)(task, run, console=console)
        if isinstance(task, WarmStartTask) and task.report is not None:
            warm = {"warm_start": True} | task.report.to_dict()
        summary = trainer.fit(resume=False)
        rec = model_class(cfg.family)(family_config, data.vocab)
        rec.meta = {"run": str(run), "best_step": summary["best_step"], "store_checksum": store.checksum}
        write_model_header(rec, run)
        atomic_write_text(
            run / "metrics.json", json.dumps(summary | {"store_checksum": store.checksum, **warm}, indent=2, default=float)
        )
        plot_curves(trainer.train_log, trainer.history, run / "curves.png", metric=cfg.trainer.metric)
    return run, warm
