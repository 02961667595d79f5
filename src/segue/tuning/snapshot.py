"""The split as a flow artifact: the store file and its compiled training and validation arrays,
packed once (by the flow's first step) and unpacked by every trial in its own temporary folder.

Trials then read nothing outside the datastore (they run as well on Kubernetes or AWS Batch as
on this machine), and none of them recompiles the split. The test arrays are not packed: the step
that tests the best config compiles them, once.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STORE_NAME = "store.duckdb"


def pack_folder(folder: Path) -> bytes:
    """An uncompressed tar of `folder`'s contents (the arrays are mostly incompressible ints)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(folder.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(folder)), recursive=False)
    return buf.getvalue()


def unpack(blob: bytes, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
        tar.extractall(folder, filter="data")
    return folder


def snapshot_split(store_bytes: bytes, split: str, protocol: str) -> tuple[bytes, dict[str, Any]]:
    """(tar of the store + its compiled train/valid arrays, facts about the split)."""
    from segue.data.arrays import SplitData
    from segue.data.store import Store
    from segue.errors import ConfigError
    from segue.evaluation.protocols import ProtocolConfig, build_task

    with tempfile.TemporaryDirectory(prefix="segue-snapshot-") as tmp:
        folder = Path(tmp)
        (folder / STORE_NAME).write_bytes(store_bytes)
        with Store.open(folder / STORE_NAME) as store:
            if split not in store.split_names():
                raise ConfigError(f"search space: field 'split': the store has no split '{split}' (its splits: {store.split_names()})")
            data = SplitData.load(store, split)
            task = build_task(data, ProtocolConfig(name=protocol, part="valid"))  # compiles the valid views
            info = {
                "split": split,
                "kind": store.split_info(split)["kind"],
                "checksum": store.checksum,
                "vocabulary": len(data.vocab),
                "training_sequences": int(len(data.train.nonempty())),
                "validation_queries": len(task),
            }
        return pack_folder(folder), info


@contextlib.contextmanager
def opened_snapshot(blob: bytes) -> Iterator[Any]:
    """The unpacked store, opened read-only, in a temporary folder removed afterwards."""
    from segue.data.store import Store

    with tempfile.TemporaryDirectory(prefix="segue-trial-") as tmp:
        unpack(blob, Path(tmp))
        with Store.open(Path(tmp) / STORE_NAME) as store:
            yield store
