"""The serving feature log: every request's inputs and outputs as JSON lines, rotated by size.

Records (one JSON object per line):
  {"ts": unix seconds (float), "request_id": str, "endpoint": "/v1/recommend", "model": {run_id,
   version, family}, "inputs": {"history": [external ids], ...}, "outputs": {"items": [...], ...},
   "warnings": [...]}
/v1/recommend and /v1/rank list `outputs.items` as {"id", "score"} (score null: unscored); a
two-stage pipeline's records of both add `feature_names`, `features` (the ranker's feature row of
each item, in order; null for a /v1/rank candidate outside the pool) and `generators`, so a
retrain can use served traffic.

`features.jsonl` is the live file; when it would pass `max_bytes` it is renamed to
`features.jsonl.1` (older ones shift to .2, ...; beyond `backups` they are deleted).
segue.data.sources.feature_log reads the log back as a segue `Source` (FeatureLogSource, re-exported
here): the data layer owns the format's reading, so validation and retraining need no serving import.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from segue.data.sources.feature_log import LOG_NAME, FeatureLogSource, log_files


class FeatureLog:
    """Thread-safe appender with size-based rotation."""

    def __init__(self, folder: str | Path, *, max_bytes: int = 64 << 20, backups: int = 10) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / LOG_NAME
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held open for appends)

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), default=_jsonable) + "\n"
        data = line.encode("utf-8")
        with self._lock:
            if self._file.tell() > 0 and self._file.tell() + len(data) > self.max_bytes:
                self._rotate()
            self._file.write(line)
            self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        oldest = self.folder / f"{LOG_NAME}.{self.backups}"
        if oldest.exists():
            oldest.unlink()
        for i in range(self.backups - 1, 0, -1):
            src = self.folder / f"{LOG_NAME}.{i}"
            if src.exists():
                os.replace(src, self.folder / f"{LOG_NAME}.{i + 1}")
        if self.backups > 0:
            os.replace(self.path, self.folder / f"{LOG_NAME}.1")
        else:
            self.path.unlink()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def files(self) -> list[Path]:
        """Log files, oldest first."""
        return log_files(self.folder)

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


__all__ = ["LOG_NAME", "FeatureLog", "FeatureLogSource", "log_files"]
