"""The server's life: warm-up, readiness, loading the model after the port opens, graceful exit.

Liveness and readiness are two questions. `/healthz` answers "is the process alive?" as soon as
the port is open; `/readyz` answers "may traffic come here?": 503 until the model is loaded and a
warm-up request has gone through the engine (`warm_up`), 200 after. A reload keeps answering 200:
the new model is loaded and warmed beside the old one, which serves until the one-reference swap.

`DeferredApp` opens the port first and builds the real app (loading the model) in a thread, so an
orchestrator's liveness probe passes during a long load while its readiness probe holds traffic
back. Until the app is built it answers /healthz 200 (`"loading": true`), /readyz 503 and every
other path 503 with Retry-After. Several workers sharing one socket must not do this (a loading
worker would answer 503 to requests its sibling could serve): they load before accepting.

Graceful shutdown is uvicorn's, with one step added (`DrainingServer`): on SIGTERM (or SIGINT)
it closes the listening socket (new connections are refused; with several workers the socket stays
open in the siblings, which take them), then waits `DRAIN_S` before uvicorn's own shutdown: lets
every request already received finish (answered with `Connection: close`), waits up to
`timeout_graceful_shutdown` seconds for them, runs the app's lifespan shutdown and exits. Without
the pause, uvicorn closes every connection whose request it has not parsed yet, and a connection
accepted in the same event-loop turn as the signal has sent its request but not had it read: its
client saw the connection drop (the failed requests of a rolling restart under load). During the
pause every response says `Connection: close`, so busy keep-alive clients reconnect to a sibling.
A keep-alive connection idle through the whole pause is still closed after it: a client that
sends on it at that very moment sees the connection drop, the race every HTTP server has;
clients retry such requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import mmap
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn

from segue.data.vocab import N_SPECIAL
from segue.serving.engine import Engine

log = logging.getLogger("segue.serving")
GRACEFUL_TIMEOUT_S = 30.0  # as Kubernetes' default terminationGracePeriodSeconds
DRAIN_S = 0.5  # after closing the listener, for accepted connections' requests to be read


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose shutdown stops accepting `drain_s` seconds before it closes the
    connections that have no request in progress (see the module docstring). Meanwhile
    `draining` is set: `CloseWhenDraining` then ends every keep-alive connection with its next
    response, so the clients reconnect (to a sibling) instead of reusing a connection that is
    about to close."""

    drain_s = DRAIN_S

    def __init__(self, config: uvicorn.Config, draining: threading.Event | None = None) -> None:
        super().__init__(config)
        self.draining = draining or threading.Event()

    async def shutdown(self, sockets: list | None = None) -> None:
        self.draining.set()
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        await asyncio.sleep(self.drain_s)
        await super().shutdown(sockets)


class CloseWhenDraining:
    """Pure ASGI middleware: `Connection: close` on every response once `draining` is set. A
    request still in flight when the graceful timeout runs out (uvicorn cancels its task) is
    answered 503 with one log line: the server's decision, not an internal error (uvicorn
    answered 500 with a traceback)."""

    def __init__(self, app: Any, draining: threading.Event) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        async def send_wrapped(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if self.draining.is_set():
                    headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapped)
        except asyncio.CancelledError:
            if not self.draining.is_set() or started:
                raise
            log.warning("%s %s cut by the graceful shutdown timeout: answered 503", scope.get("method"), scope.get("path"))
            body = json.dumps({"detail": "the server is shutting down: the request did not finish in time"}).encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})


def warm_up(engine: Engine) -> float:
    """Send one request through the engine as /v1/recommend would (the most popular item as the
    history, top 10), plus an empty-history fallback; returns the seconds it took. Engine.load
    already compiled the model's shapes; this also touches the index, the catalogue and the
    exclusion path, so the first real request pays no first-use cost."""
    t = time.perf_counter()
    if engine.info.n_items > 0:
        top = int(np.argmax(engine.counts[N_SPECIAL:])) + N_SPECIAL
        for ranked in engine.rank([np.array([top], np.int64), np.zeros(0, np.int64)], 10):
            [engine.catalogue.describe(int(x)) for x in ranked.tokens if x >= N_SPECIAL]
    return time.perf_counter() - t


def readiness(ready: bool, engine: Engine | None, detail: str = "") -> tuple[int, dict[str, Any]]:
    """The /readyz status code and body."""
    if not ready or engine is None:
        return 503, {"status": "not ready", "detail": detail or "the model is loading"}
    return 200, {"status": "ready", "model": engine.info.public()}


# ---------------------------------------------------------------------------------------------
# metric values, shared by the workers of one server

Sample = tuple[str, str]  # (metric name, its labels as Prometheus text without braces; "" for none)
Family = tuple[str, str, str]  # (name, type, help)
METRICS_SUFFIX = ".metrics"
_HEADER = struct.Struct("<QQQ")  # bytes used (entries end there), flags, change sequence (odd: mid-change)
_SEQ_AT = 16  # the sequence's offset in the header
_NOT_SERVING = 1  # flag: the process does not serve (yet, or any more): its gauges are not shown
_KEY_LEN = struct.Struct("<I")
_VALUE = struct.Struct("<d")


class MetricValues:
    """One process's metric values: counters (they only grow) and gauges, by Sample.

    With `folder` (several workers serving one port: each worker answers the scrapes it accepts),
    the values are also kept in a memory-mapped file of this process's in that folder, which
    `gather` reads for every process: a scrape shows the sum of every worker's counters, whichever
    worker answers it. A change is an 8-byte store into the shared page cache (no file write per
    request). A file stays when its process exits, so the totals never go back when a worker is
    replaced; gauges are each live worker's own, labelled `worker="PID"`.

    File layout: a header (bytes used, flags, change sequence), then entries (key length, key,
    padding, float64 value, each value 8-byte aligned). Only the owner writes; an entry is written
    before the header's length covers it, so a reader never sees half an entry, and each batch of
    changes (one request's counter and histogram) is a seqlock write: the sequence is odd while it
    runs, so a reader retries a copy taken mid-batch and a scrape never shows half a request.

    The file's pages are allocated when it is made or grown (posix_fallocate): a store into a page a
    full filesystem never allocated would kill the worker with SIGBUS. Where the folder cannot hold
    this process's values (full, read-only), a warning says so and its figures stay its own: its
    scrapes add them to the other workers', the other workers' scrapes lack them."""

    def __init__(self, folder: str | Path | None = None, size: int = 1 << 16) -> None:
        self._lock = threading.Lock()
        self.counters: dict[Sample, float] = {}
        self.gauges: dict[Sample, float] = {}
        self.folder = None if folder is None else Path(folder)
        self.path: Path | None = None
        self._offsets: dict[bytes, int] = {}
        self._used = _HEADER.size
        self._mm: mmap.mmap | None = None
        self._seq = 0
        self._full = False  # a new series found no room: said once
        if self.folder is not None:
            try:
                self._create(self.folder, max(size, 4096))
            except OSError as e:
                log.warning("metrics: cannot keep this worker's values in %s (%s); its /metrics figures stay its own", self.folder, e)

    def _create(self, folder: Path, size: int) -> None:
        # pid plus a random part: a later process given a reused pid must not truncate the file
        # of an exited one (its counters would go back).
        name = f"{os.getpid()}-{secrets.token_hex(4)}{METRICS_SUFFIX}"
        tmp = folder / f".{name}.tmp"
        try:
            with open(tmp, "xb") as f:  # whole before it appears under its name (readers glob it)
                f.write(_HEADER.pack(_HEADER.size, _NOT_SERVING, 0))  # until its app has started
                f.truncate(size)
                os.posix_fallocate(f.fileno(), 0, size)  # ENOSPC here, not SIGBUS at a later store
            os.replace(tmp, folder / name)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        self.path = folder / name
        with open(self.path, "r+b") as f:
            self._mm = mmap.mmap(f.fileno(), 0)

    def count(self, increments: Iterable[tuple[Sample, float]]) -> None:
        """Add each amount to its counter (0 makes a counter appear)."""
        with self._lock, self._batch():
            for key, amount in increments:
                value = self.counters[key] = self.counters.get(key, 0.0) + amount
                self._store(b"c", key, value)

    def gauge(self, values: Iterable[tuple[Sample, float]]) -> None:
        """Set each gauge; NaN removes it."""
        with self._lock, self._batch():
            for key, value in values:
                if math.isnan(value):
                    if self.gauges.pop(key, None) is None:
                        continue
                else:
                    self.gauges[key] = value
                self._store(b"g", key, value)

    def serving(self, live: bool) -> None:
        """Whether this process serves (its gauges shown): set when its app has started, cleared
        when it shuts down."""
        if self._mm is not None:
            with self._lock, self._batch():
                struct.pack_into("<QQ", self._mm, 0, self._used, 0 if live else _NOT_SERVING)

    @contextlib.contextmanager
    def _batch(self) -> Iterator[None]:
        """A seqlock write (the caller holds the lock): the sequence odd while the stores run."""
        if self._mm is None:
            yield
            return
        self._seq += 1
        struct.pack_into("<Q", self._mm, _SEQ_AT, self._seq)
        try:
            yield
        finally:
            self._seq += 1
            struct.pack_into("<Q", self._mm, _SEQ_AT, self._seq)

    def _store(self, kind: bytes, key: Sample, value: float) -> None:
        if self._mm is None:
            return
        raw = kind + key[0].encode() + b"\0" + key[1].encode()
        at = self._offsets.get(raw)
        if at is None:
            at = self._append(raw, value)
            if at is None:
                return
        _VALUE.pack_into(self._mm, at, value)

    def _append(self, raw: bytes, value: float) -> int | None:
        """The new entry's value offset; None where the file cannot grow (said once)."""
        assert self._mm is not None and self.path is not None
        start = self._used
        at = start + _KEY_LEN.size + len(raw)
        at += -at % 8
        end = at + _VALUE.size
        if end > len(self._mm):
            size = max(2 * len(self._mm), end + 4096)
            try:
                with open(self.path, "r+b") as f:
                    os.posix_fallocate(f.fileno(), 0, size)  # allocated before any store reaches it
                self._mm.resize(size)
            except OSError as e:
                if not self._full:
                    self._full = True
                    log.warning("metrics: %s cannot grow (%s); new series of this worker stay its own", self.path, e)
                return None
        _KEY_LEN.pack_into(self._mm, start, len(raw))
        self._mm[start + _KEY_LEN.size : start + _KEY_LEN.size + len(raw)] = raw
        _VALUE.pack_into(self._mm, at, value)
        struct.pack_into("<Q", self._mm, 0, end)  # last: the entry is whole before it counts
        self._used = end
        self._offsets[raw] = at
        return at

    def gather(self) -> tuple[dict[Sample, float], dict[Sample, float]]:
        """(counters, gauges) to show: this process's own, or with a folder, every process's
        counters summed and every live process's gauges labelled `worker`."""
        if self.folder is None:
            with self._lock:
                return dict(self.counters), dict(self.gauges)
        counters: dict[Sample, float] = {}
        gauges: dict[Sample, float] = {}
        files = [(p, read_metric_file(p)) for p in sorted(self.folder.glob(f"*{METRICS_SUFFIX}")) if p != self.path]
        with self._lock:  # this process's own from memory: whole, and complete where its file is not
            mine = (True, dict(self.counters), dict(self.gauges))
        for path, read in [*files, (Path(f"{os.getpid()}-own"), mine)]:
            if read is None:
                continue
            live, own_counters, own_gauges = read
            for key, value in own_counters.items():
                counters[key] = counters.get(key, 0.0) + value
            if live:
                worker = f'worker="{path.name.split("-")[0]}"'
                gauges.update({(n, f"{labels},{worker}" if labels else worker): v for (n, labels), v in own_gauges.items()})
        return counters, gauges


def read_metric_file(path: Path) -> tuple[bool, dict[Sample, float], dict[Sample, float]] | None:
    """(whether its process is live, counters, gauges) of one MetricValues file; None for a file
    that is gone or not one."""
    try:
        for attempt in range(200):  # a copy taken mid-batch (odd or moved sequence) is taken again
            data = path.read_bytes()
            used, flags, seq = _HEADER.unpack_from(data, 0)
            with open(path, "rb") as f:
                f.seek(_SEQ_AT)
                again = struct.unpack("<Q", f.read(8))[0]
            if seq % 2 == 0 and again == seq:
                break
            time.sleep(0 if attempt < 10 else 0.001)  # let the writer (a thread or process) finish its batch
        counters: dict[Sample, float] = {}
        gauges: dict[Sample, float] = {}
        at = _HEADER.size
        while at < used:
            (n,) = _KEY_LEN.unpack_from(data, at)
            raw = data[at + _KEY_LEN.size : at + _KEY_LEN.size + n]
            at += _KEY_LEN.size + n
            at += -at % 8
            (value,) = _VALUE.unpack_from(data, at)
            at += _VALUE.size
            name, _, labels = raw[1:].decode().partition("\0")
            if raw[:1] == b"c":
                counters[(name, labels)] = value
            elif not math.isnan(value):
                gauges[(name, labels)] = value
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return not flags & _NOT_SERVING and _alive(int(path.name.split("-")[0])), counters, gauges


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def render_metrics(families: Iterable[Family], counters: dict[Sample, float], gauges: dict[Sample, float]) -> str:
    """Prometheus text for `families` (HELP and TYPE, then their samples; a family with no sample
    is left out). A histogram's samples are its _bucket (by le), _sum and _count series."""
    samples = {**counters, **gauges}
    lines: list[str] = []
    for name, kind, help_text in families:
        names = (f"{name}_bucket", f"{name}_sum", f"{name}_count") if kind == "histogram" else (name,)
        mine = [(n, labels, v) for (n, labels), v in samples.items() if n in names]
        if not mine:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for n, labels, v in sorted(mine, key=lambda s: _order(s[0], s[1], names)):
            lines.append(f"{n}{{{labels}}} {_number(v)}" if labels else f"{n} {_number(v)}")
    return "\n".join(lines) + "\n" if lines else ""


def _order(name: str, labels: str, names: tuple[str, ...]) -> tuple[str, int, float]:
    """Sort key: a histogram's series by their other labels, then buckets by le, _sum, _count."""
    head, sep, le = labels.partition('le="')
    if not sep or name != names[0]:
        return labels, names.index(name), 0.0
    value, _, rest = le.partition('"')
    return head.rstrip(",") + rest.lstrip(","), 0, float(value)


def _number(v: float) -> str:
    return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


# ---------------------------------------------------------------------------------------------


async def _send_json(send: Any, status: int, body: dict[str, Any], extra: list | None = None) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": data})


# /metrics while the model loads: a scrape succeeds (a 503 reads as the target being down) and says
# it is loading; the loaded app's /metrics carries segue_loading 0 (loading_metrics(False)).
def loading_metrics(loading: bool) -> str:
    """The segue_loading gauge's lines: 1 while the model loads, 0 once it serves."""
    return f"# HELP segue_loading 1 while the model loads, 0 once it is loaded.\n# TYPE segue_loading gauge\nsegue_loading {int(loading)}\n"


LOADING_METRICS = loading_metrics(True)


class DeferredApp:
    """An ASGI app that opens at once and builds the real one (`build`, run in a thread) meanwhile.

    Once built, the real app's lifespan is entered and every request goes to it. If `build`
    raises, the error is kept in `.error` and `on_failure(error)` is called (the CLI stops the
    server and reports it as its one-line error)."""

    def __init__(self, build: Callable[[], Any], on_failure: Callable[[BaseException], None] | None = None) -> None:
        self.build = build
        self.on_failure = on_failure
        self.app: Any = None
        self.error: BaseException | None = None
        self.built = threading.Event()
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task | None = None

    async def _load(self) -> None:
        try:
            app = await asyncio.to_thread(self.build)
            await self._stack.enter_async_context(app.router.lifespan_context(app))
        except Exception as e:  # noqa: BLE001 (reported through on_failure, never swallowed)
            self.error = e
            log.error("could not load the model: %s", e)
            if self.on_failure is not None:
                self.on_failure(e)
            return
        self.app = app
        self.built.set()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self._task = asyncio.create_task(self._load())
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self._task is not None and not self._task.done():
                        self._task.cancel()  # the thread finishes its load; the app is dropped
                    await self._stack.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if self.app is not None:
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope.get("path", "")
        if path == "/healthz":
            await _send_json(send, 200, {"status": "ok", "model": None, "loading": True})
        elif path == "/readyz":
            detail = f"the model could not be loaded: {self.error}" if self.error else ""
            await _send_json(send, *readiness(False, None, detail))
        elif path == "/" and scope.get("method") in ("GET", "HEAD"):
            # the page itself, so a tab opened while the model loads says so and waits for it
            # (it polls /healthz) instead of showing the 503's JSON until reloaded by hand
            data = (Path(__file__).parent / "web" / "index.html").read_bytes()
            headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(data)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else data})
        elif path == "/metrics":
            data = LOADING_METRICS.encode()
            headers = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8"), (b"content-length", str(len(data)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": data})
        else:
            await _send_json(
                send, 503, {"detail": "the model is loading; retry shortly"}, [(b"retry-after", b"1")]
            )
