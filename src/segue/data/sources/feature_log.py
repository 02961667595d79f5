"""Reading the serving feature log (segue.serving.feature_log writes it) back as a segue `Source`.

Each logged request's history becomes a sequence (seq_key "request:<id>"), so served traffic can be
validated against training data (segue.ops), built into a store and trained on (segue.retrain).
`features.jsonl` is the live file; rotated ones are features.jsonl.1 (newest), .2, ...
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from segue.data.sources.base import Chunk, SourceFile
from segue.errors import InputError

LOG_NAME = "features.jsonl"


def log_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    rotated = sorted(
        folder.glob(f"{LOG_NAME}.*"),
        key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
    )
    live = [folder / LOG_NAME] if (folder / LOG_NAME).exists() else []
    return [p for p in rotated if p.suffix[1:].isdigit()] + live


class FeatureLogSource:
    """A `Source` over a feature log folder (or one log file): requests' histories as sequences.

    Only records with a non-empty `inputs.history` (or `inputs.seed`) become sequences; with
    `include_outputs` the items the server returned are appended after the history (what the
    listener was shown), marked by position order only. A profile's `inputs.ratings` (aligned
    with the history, null = unrated) become the events' ratings; everything else is unrated.
    """

    name = "feature_log"

    def __init__(
        self, path: str | Path, *, include_outputs: bool = False, batch_rows: int = 100_000
    ) -> None:
        self.path = Path(path)
        self.include_outputs = include_outputs
        self.batch_rows = batch_rows
        self._files: list[Path] = []

    def _paths(self) -> list[Path]:
        if self.path.is_dir():
            paths = log_files(self.path)
        elif self.path.exists():
            paths = [self.path]
        else:
            raise InputError(
                "no feature log here",
                path=self.path,
                expected=f"a folder holding {LOG_NAME} or a .jsonl file",
            )
        return paths

    def chunks(self) -> Iterator[Chunk]:
        self._files = self._paths()
        seq_keys: list[str] = []
        item_keys: list[str] = []
        positions: list[int] = []
        ts: list[int] = []
        ratings: list[float | None] = []
        sequences: dict[str, list] = {
            "seq_key": [],
            "name": [],
            "created_at": [],
            "meta": [],
            "origin": [],
        }
        for path in self._files:
            with open(path, encoding="utf-8") as f:
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputError(
                            f"not valid JSON ({e.msg})",
                            path=path,
                            line=line_no,
                            expected="one JSON object per line",
                        ) from None
                    inputs = rec.get("inputs") or {}
                    items = list(inputs.get("history") or inputs.get("seed") or [])
                    given = inputs.get("ratings")
                    if not isinstance(given, list) or len(given) != len(items):
                        given = [None] * len(items)  # the server refuses misaligned ratings
                    rated = [_rating(r) for r in given]
                    if self.include_outputs:
                        items += [
                            o["id"] if isinstance(o, dict) else o
                            for o in (rec.get("outputs") or {}).get("items", [])
                        ]
                    if not items:
                        continue
                    key = f"request:{rec.get('request_id') or f'{path.name}:{line_no}'}"
                    when = int(rec.get("ts") or time.time())
                    seq_keys += [key] * len(items)
                    item_keys += [str(i) for i in items]
                    positions += list(range(len(items)))
                    ts += [when] * len(items)
                    ratings += rated + [None] * (len(items) - len(rated))
                    sequences["seq_key"].append(key)
                    sequences["name"].append(rec.get("endpoint"))
                    sequences["created_at"].append(when)
                    sequences["meta"].append(
                        json.dumps({"model": rec.get("model"), "context": inputs.get("context")})
                    )
                    sequences["origin"].append(f"{path}:{line_no}")
                    if len(seq_keys) >= self.batch_rows:
                        yield _chunk(seq_keys, item_keys, positions, ts, ratings, sequences)
                        seq_keys, item_keys, positions, ts, ratings = [], [], [], [], []
                        sequences = {k: [] for k in sequences}
        if seq_keys:
            yield _chunk(seq_keys, item_keys, positions, ts, ratings, sequences)

    def files(self) -> list[SourceFile]:
        return [SourceFile(p) for p in self._files]

    def params(self) -> dict[str, object]:
        return {"path": str(self.path), "include_outputs": self.include_outputs}


def _rating(value: object) -> float | None:
    """A logged rating as a float; null (and anything the server would not have taken) as None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _chunk(
    seq_keys: list[str],
    item_keys: list[str],
    positions: list[int],
    ts: list[int],
    ratings: list[float | None],
    sequences: dict[str, list],
) -> Chunk:
    events = pa.table(
        {
            "seq_key": pa.array(seq_keys, pa.string()),
            "item_key": pa.array(item_keys, pa.string()),
            "position": pa.array(positions, pa.int32()),
            "ts": pa.array(ts, pa.int64()),
            "rating": pa.array(ratings, pa.float64()),
        }
    )
    seqs = pa.table(
        {
            "seq_key": pa.array(sequences["seq_key"], pa.string()),
            "name": pa.array(sequences["name"], pa.string()),
            "created_at": pa.array(sequences["created_at"], pa.int64()),
            "meta": pa.array(sequences["meta"], pa.string()),
            "origin": pa.array(sequences["origin"], pa.string()),
        }
    )
    return Chunk(events=events, sequences=seqs)
