"""What the evaluator adds for two-stage pipelines (segue.models.pipeline), kept out of its core.

- `attach_sequence_names`: a pipeline's name features and name generator read each query's
  sequence (playlist) name from `histories.meta["seq_names"]` (aligned with the history rows);
  the evaluator knows each query's sequence, so it puts the stored names there.
- `trained_on_part_notes`: a pipeline's ranker learns from the validation part's targets
  (model.toml meta `ranker_training.part`); scored on that same part its numbers are optimistic,
  and the evaluator says so in the notes.
- `pipeline_info`: pool recall@N (N = 50, 200, 500) of the merged candidate pool against each
  generator alone, measured on the same queries (history items in the pools as the task lets them
  be recommended), plus the ranker's feature importances; it lands
  in the model's `info` (results.json) and in the report's tables (`pipeline_tables`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from segue.data.store import Store
from segue.evaluation.protocols import Task

POOL_NS = (50, 200, 500)


def _is_pipeline(model: object) -> bool:
    return callable(getattr(model, "pool_recall", None))


def attach_sequence_names(task: Task, store: Store, models: Mapping[str, object]) -> None:
    """Put the stored name of each query's sequence in task.histories.meta["seq_names"]."""
    if not any(_is_pipeline(m) for m in models.values()):
        return
    named = dict(store.con.execute("SELECT seq_id, name FROM sequences WHERE name IS NOT NULL").fetchall())
    names: list[str | None] = [None] * len(task.histories)
    for r, s in zip(task.rows.tolist(), task.seq_ids.tolist(), strict=True):
        names[r] = named.get(int(s))
    task.histories.meta = dict(task.histories.meta) | {"seq_names": names}


def trained_on_part_notes(models: Mapping[str, object], part: str) -> list[str]:
    """A note per model whose ranker was trained on the targets of `part` (the part scored)."""
    notes = []
    for name, model in models.items():
        meta = getattr(model, "meta", None) or {}
        trained = meta.get("ranker_training", {}) if isinstance(meta, dict) else {}
        if isinstance(trained, dict) and trained.get("part") == part:
            notes.append(
                f"'{name}': its ranker was trained on the {part} part's targets (model.toml meta "
                f"ranker_training.part), so its scores on this part are optimistic; compare models on "
                f"a part it did not learn from (--part test)"
            )
    return notes


def pipeline_info(model: object, task: Task, batch_size: int | None = None) -> dict[str, Any]:
    """Pool recall means (keys "pool_recall@N": {"pool", "pool_size", <generator>: mean}) and the
    model's report_info(); empty for a model that is no pipeline."""
    if not _is_pipeline(model):
        return {}
    per_query = model.pool_recall(  # type: ignore[attr-defined]
        task.histories, task.rows, task.rel_offsets, task.rel_keys, POOL_NS, batch_size, exclude_seen=task.exclude_seen
    )
    out: dict[str, Any] = {
        f"pool_recall@{n}": {k: round(float(np.mean(v)), 4) for k, v in per_query[str(n)].items()} for n in POOL_NS
    }
    if task.groups is not None:  # e.g. playlist continuation's K=0 (title only) row
        out["pool_recall_by_group"] = {
            str(g): {
                f"@{n}": {k: round(float(np.mean(v[task.groups == g])), 4) for k, v in per_query[str(n)].items()}
                for n in POOL_NS
            }
            for g in sorted(set(task.groups.tolist()))
        }
    return out | model.report_info()  # type: ignore[attr-defined]


def pipeline_tables(models: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Report tables (title, header, rows) of every pipeline model's pool recall and importances."""
    tables = []
    for name, r in models.items():
        info = r.info
        if f"pool_recall@{POOL_NS[0]}" not in info:
            continue
        cols = [k for k in info[f"pool_recall@{POOL_NS[0]}"] if k != "pool_size"]
        rows = [
            [f"N={n}", *(f"{info[f'pool_recall@{n}'][c]:.4f}" for c in cols), f"{info[f'pool_recall@{n}']['pool_size']:.0f}"]
            for n in POOL_NS
        ]
        header = ["", *(("merged pool" if c == "pool" else c) for c in cols), "pool size"]
        tables.append((f"{name}: candidate pool recall@N (each generator proposes N)", header, rows))
        imp = info.get("feature_importance", {})
        if imp:
            tables.append(
                (f"{name}: ranker feature importance (share of split gain)", ["feature", "gain share"],
                 [[k, f"{v:.4f}"] for k, v in imp.items()])
            )
    return tables
