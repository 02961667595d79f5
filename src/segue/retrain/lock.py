"""One retrain at a time per registry and model name.

Two `segue retrain` runs at once (a cron cycle overrunning into the next) both trained, registered
and promoted, the second over a production its gate had never compared it with. A retrain holds
an flock on `.retrain-NAME.lock` for its whole cycle; a second one exits at once (SegueError, exit
2) naming the holder written in that file (pid, host, start, attempt folder) instead of waiting:
a cron job must not queue behind a slow week, and the next cycle gathers what this one missed.

The lock file stays after the run (an flock is released when its process ends, also on SIGKILL,
so a file left behind never blocks anyone); it lives beside an embedded registry (a tracking
URI's, under ~/.cache/segue/locks/, keyed by the URI: one machine only, as any flock).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segue.errors import SegueError


class RetrainLocked(SegueError):
    """Another retrain of the same model in the same registry holds the lock."""


def lock_path(registry: Any, name: str) -> Path:
    """The lock file of `name` in `registry` (a segue.ops.registry.Registry)."""
    safe = re.sub(r"[^\w.-]", "_", name)
    if registry.artifact_root is not None:
        return Path(registry.artifact_root).parent / f".retrain-{safe}.lock"
    digest = hashlib.sha256(registry.uri.encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "segue" / "locks" / f"{digest}-{safe}.lock"


@contextlib.contextmanager
def retrain_lock(registry: Any, name: str, attempt: str | Path) -> Iterator[Path]:
    """Hold the retrain lock of `name` in `registry` while inside, or raise RetrainLocked."""
    import fcntl

    path = lock_path(registry, name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held open while inside: the flock is the file's)
    except OSError as e:
        raise SegueError(f"{path}: cannot take the retrain lock ({e.strerror or e})") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "its holder has not written its name yet"
            raise RetrainLocked(
                f"another segue retrain of '{name}' on registry {registry.location} is running ({holder}; lock {path}): "
                "this one exits without doing anything; run it again once that one has finished"
            ) from None
        f.seek(0)
        f.truncate()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {stamp}, attempt {attempt}\n")
        f.flush()
        yield path  # closing the file drops the lock
