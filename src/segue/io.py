"""Atomic file writes: readers see the old file or the complete new one, never a half-written one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from segue.errors import SegueError


@contextlib.contextmanager
def atomic_path(path: str | Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success rename it over `path`, on failure delete it.

    Works for files and folders (a folder replaces the old one only once it is complete).
    A folder that cannot be written is a SegueError naming `path` before any work. Temporaries
    are named `.NAME.tmp-PID@HOST` (callers add suffixes such as `.staging`): those of `path`
    that a killed writer on this host left (its PID no longer runs) are removed here.
    """
    path = Path(path)
    require_writable(path)
    _remove_stale(path)
    tmp = path.with_name(f".{path.name}.tmp-{_tag()}")
    _remove(tmp)
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        if is_dir:
            old = path.with_name(f".{path.name}.old-{_tag()}")
            if path.exists():
                path.rename(old)
            tmp.rename(path)
            _remove(old)
        else:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


# this process on this host: a temporary's writer is known to be gone only when both match
_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"


def _tag() -> str:
    return f"{os.getpid()}@{_HOST}"  # at call time: a forked worker has a PID of its own


def probe_writable(folder: Path, name: str = "") -> None:
    """An OSError unless files can be created in `folder` (checked by making and removing a probe
    folder: the permission bits do not tell, e.g. on a read-only mount or for root)."""
    os.rmdir(tempfile.mkdtemp(dir=folder, prefix=f".{name}.probe-"))


def require_writable(path: str | Path) -> None:
    """Create `path`'s folder if needed and check that files can be written in it, else a
    SegueError naming `path` (a PermissionError traceback named a hidden temporary instead)."""
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe_writable(folder, path.name)
    except OSError as e:
        raise SegueError(f"{path}: cannot write here (the folder {folder} is not writable: {e.strerror or e})") from None


def _check_writable(path: Path) -> None:
    """SegueError unless `path` can be written, creating nothing (for check_output, before any
    work: an evaluation into a read-only folder ran whole, then failed on a hidden temporary)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the folders atomic_path would create
        folder = folder.parent
    if not folder.is_dir():
        raise SegueError(f"{path}: cannot write here ({folder} is a file, not a folder)")
    try:
        probe_writable(folder, path.name)
    except OSError as e:
        raise SegueError(f"{path}: cannot write here (the folder {folder} is not writable: {e.strerror or e})") from None


def _remove_stale(path: Path) -> None:
    """Remove the temporaries of `path` whose writer, on this host, no longer runs (a killed
    build left `.NAME.tmp-PID@HOST` and its `.staging` folder of GBs, one pair per kill)."""
    own = re.compile(rf"^\.{re.escape(path.name)}\.(?:tmp|old)-(\d+)@{re.escape(_HOST)}(?:\.[a-z]+)?$")
    try:
        names = [e.name for e in os.scandir(path.parent) if e.name.startswith(f".{path.name}.")]
    except OSError:
        return
    for name in names:
        m = own.match(name)
        if m and not _running(int(m.group(1))):
            _remove(path.with_name(name))


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def check_output(path: str | Path, kind: str, marker: str | Callable[[Path], bool]) -> bool:
    """May `path` be replaced by a new segue `kind` (a report, an export, ...)? Call before any work.

    Only an absent path, an empty folder, or an earlier output of the same command (a folder
    holding `marker`, or for which `marker(path)` is true) may be: anything else is someone's file
    or folder, which replacing the whole path would delete. Raises SegueError naming the path
    otherwise. Returns True when an earlier output is there (the caller may say it was replaced).
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        _check_writable(path)
        return False
    if path.is_dir() and not path.is_symlink():
        if not any(path.iterdir()):
            _check_writable(path)
            return False
        earlier = marker(path) if callable(marker) else (path / marker).is_file()
        if earlier:
            _check_writable(path)
            return True
    raise SegueError(f"{path} exists and is not a segue {kind} (expected a new path or an earlier {kind}); choose another path or remove it")


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def file_digest(path: str | Path, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
