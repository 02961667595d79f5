"""Running the server: one process, or several worker processes sharing one socket.

One worker (`segue serve`): the port opens at once and the model loads behind it
(lifecycle.DeferredApp: /healthz 200, /readyz 503 until loaded and warmed up).

Several workers (`segue serve --workers N`): the main process binds the socket and spawns N worker
processes (`Supervisor`); each builds the app from the settings, then serves the shared socket with
lifecycle.DrainingServer. A worker loads and warms its model before it accepts a connection, so a
worker that is starting never answers 503 to a request a sibling could serve. The supervisor
replaces a worker that exits (SIGTERM to one worker: it drains and exits, a new one starts); a
worker that dies before it was ever ready stops the server (a broken model would fail every
restart). SIGHUP to the main process is a rolling restart (each replacement ready before its
predecessor is retired), which is also how several workers pick up a new model: /admin/reload
would reload only the worker that answered it, so admin routes are not mounted with more than
one worker. SIGTERM/SIGINT to the main process drains every worker and exits. (uvicorn's own
--workers supervisor is not used: its workers are uvicorn Servers that cannot drain as above.)
Workers run in their own process group, so a terminal's Ctrl-C reaches the main process only,
which then stops each worker once (a second signal would make uvicorn skip the draining).

Feature log: every worker appends whole lines to the same file (O_APPEND, one write per record);
each rotates by its own count of the file's size, so with several workers a file may be rotated
early. The drift check (drift_watch.py), if configured, runs in every worker on the shared log.

Sharing memory: the workers are separate interpreters (spawned, not forked: a fork of a process
that has started JAX's threads can deadlock), so each would hold its own copy of the model's
arrays. `load_engine` memory-maps every array a model saved as `<attribute>.npy` (np.load with
mmap_mode="r") in place of the private copy its loader read: all workers then read the same pages
of the OS page cache. Families that keep their arrays that way (ease weights, als factors,
item2vec vectors, popularity and other counts, biasedmf factors, the dot test model's embeddings)
share them; weights held as JAX arrays (transformer, autoencoder: weights.npz) and sparse
matrices (itemknn) are per worker. The vocabulary and catalogue are Python objects, per worker.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from segue.config import Config
from segue.errors import ConfigError, SegueError
from segue.serving.drift_watch import DriftWatch, DriftWatchConfig
from segue.serving.index import IndexConfig
from segue.serving.lifecycle import GRACEFUL_TIMEOUT_S, DeferredApp

log = logging.getLogger("segue.serving")
RETRY_S = 5.0  # wait before replacing a replacement that failed to start


class ServeSettings(Config):
    """Everything a worker needs to build the app (sent to worker processes as JSON)."""

    model: Path
    store: Path | None = None
    index: IndexConfig = Field(default_factory=IndexConfig)
    feature_log: Path | None = None
    access_log: bool = True
    mmap: bool = True  # memory-map the model's .npy arrays (shared by workers)
    admin: bool = True  # mount /admin/reload when SEGUE_ADMIN_KEY is set
    drift: DriftWatchConfig | None = None


# --- loading ---------------------------------------------------------------------------------


def map_model_arrays(model: object, folder: str | Path) -> list[str]:
    """Replace each ndarray attribute `name` of `model` that was saved as `folder/<name>.npy` (same
    shape and dtype) by a read-only memory map of that file; returns the names mapped.

    A model may only read these arrays while serving: a write would raise (read-only), which is
    the point: pages that no worker writes stay shared."""
    folder = Path(folder)
    mapped = []
    for name, value in list(vars(model).items()):
        path = folder / f"{name}.npy"
        if not isinstance(value, np.ndarray) or isinstance(value, np.memmap) or not path.is_file():
            continue
        m = np.load(path, mmap_mode="r")
        if m.shape == value.shape and m.dtype == value.dtype:
            setattr(model, name, m)
            mapped.append(name)
    return mapped


def load_engine(
    folder: str | Path, *, store: str | Path | None = None, index_config: IndexConfig | None = None, mmap: bool = True
) -> Any:
    """Engine.load, with the model's .npy arrays memory-mapped first when `mmap` (see the module)."""
    from segue.models.base import load_model
    from segue.serving.catalogue import load_catalogue
    from segue.serving.dotmodel import register_dot_family
    from segue.serving.engine import Engine

    register_dot_family()  # the tests' and benches' stand-in family, served by workers too
    folder = Path(folder)
    model = load_model(folder)
    if mmap:
        names = map_model_arrays(model, folder)
        log.info("memory-mapped from %s: %s", folder, ", ".join(names) or "nothing")
    catalogue = load_catalogue(folder, model._check_fitted(), store)
    return Engine(model, folder, catalogue, index_config or IndexConfig())


def build_app(settings: ServeSettings) -> Any:
    """The FastAPI app for `settings`: load (and warm, via Engine) the model, set up the extras."""
    from segue.serving.app import create_app

    drift = None
    if settings.drift is not None:
        if settings.feature_log is None:
            raise ConfigError("the drift check reads the feature log: give --feature-log, not --no-feature-log")
        drift = DriftWatch(settings.drift, settings.feature_log)
    engine = load_engine(settings.model, store=settings.store, index_config=settings.index, mmap=settings.mmap)
    info = engine.info
    log.info("loaded %s model %s (%s, %d items, retrieval %s)", info.family, info.run_id, info.version, info.n_items, info.retrieval)
    return create_app(
        engine=engine,
        index_config=settings.index,
        feature_log=settings.feature_log,
        access_log=settings.access_log,
        drift_watch=drift,
        use_env_admin_key=settings.admin,
    )


def configure_logging() -> None:
    """segue's own log lines (loading, drift alerts) on stderr; access lines (JSON) on stdout."""
    from segue.serving.access_log import configure_access_logger

    root = logging.getLogger("segue")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    configure_access_logger()


# --- running ---------------------------------------------------------------------------------


def draining_server(app: Any, graceful_timeout: float, **kw: Any) -> Any:
    """A lifecycle.DrainingServer for `app` (wrapped to close keep-alive connections while it drains)."""
    import uvicorn

    from segue.serving.lifecycle import CloseWhenDraining, DrainingServer

    draining = threading.Event()
    config = uvicorn.Config(
        CloseWhenDraining(app, draining),
        log_level="info",
        access_log=False,  # ours are JSON (access_log.py)
        timeout_graceful_shutdown=graceful_timeout,
        **kw,
    )
    return DrainingServer(config, draining)


def _worker_main(settings_json: str, sock: socket.socket, ready: Connection, graceful_timeout: float) -> None:
    """A worker process: build the app (model loaded and warmed), then serve the shared socket."""
    os.setpgrp()  # Ctrl-C goes to the supervisor, which stops each worker once
    configure_logging()
    app = build_app(ServeSettings.model_validate_json(settings_json))
    server = draining_server(app, graceful_timeout)

    parent = os.getppid()

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if server.started:
            ready.send(os.getpid())
        while not server.should_exit:  # a supervisor killed outright leaves no orphan serving
            if os.getppid() != parent:
                log.warning("the supervisor is gone: worker %d drains and exits", os.getpid())
                server.should_exit = True
            time.sleep(1.0)

    threading.Thread(target=announce, daemon=True).start()
    server.run(sockets=[sock])


@dataclass
class _Worker:
    process: Any
    ready: Connection
    is_ready: bool = False
    retry_at: float = 0.0  # a failed replacement is replaced again from this time on

    def poll_ready(self) -> bool:
        if not self.is_ready and self.ready.poll():
            self.ready.recv()
            self.is_ready = True
            log.info("worker %d ready", self.process.pid)
        return self.is_ready


class Supervisor:
    """Keeps `n` worker processes serving one socket (see the module docstring)."""

    def __init__(self, settings: ServeSettings, sock: socket.socket, n: int, graceful_timeout: float) -> None:
        self.settings_json = settings.model_dump_json()
        self.sock = sock
        self.n = n
        self.graceful_timeout = graceful_timeout
        self.ctx = mp.get_context("spawn")  # not fork: JAX's threads do not survive a fork
        self.workers: list[_Worker] = []
        self.signals: list[int] = []

    def spawn(self) -> _Worker:
        receive, send = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(
            target=_worker_main,
            args=(self.settings_json, self.sock, send, self.graceful_timeout),
            name="segue-worker",
        )
        p.start()
        send.close()  # the child holds its end
        log.info("worker %d started", p.pid)
        return _Worker(p, receive)

    def stop(self, w: _Worker) -> None:
        if w.process.is_alive():
            os.kill(w.process.pid, signal.SIGTERM)
        w.process.join(self.graceful_timeout + 10)
        if w.process.is_alive():
            w.process.kill()
            w.process.join()

    def wait_ready(self, w: _Worker, timeout: float = 600.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and w.process.is_alive() and not self._exiting():
            if w.poll_ready() or w.ready.poll(0.1):
                return w.poll_ready()
        return w.poll_ready()

    def _exiting(self) -> bool:
        return any(s in (signal.SIGTERM, signal.SIGINT) for s in self.signals)

    def rolling_restart(self) -> None:
        for i, old in enumerate(list(self.workers)):
            new = self.spawn()
            if not self.wait_ready(new):
                log.error("replacement worker %d was not ready; keeping worker %d", new.process.pid, old.process.pid)
                self.stop(new)
                return
            self.workers[i] = new
            self.stop(old)
        log.info("rolling restart done: workers %s", [w.process.pid for w in self.workers])

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda s, _f: self.signals.append(s))
        self.workers = [self.spawn() for _ in range(self.n)]
        failed = None
        up = False  # every first worker has been ready once
        try:
            while not self._exiting() and failed is None:
                time.sleep(0.1)
                if signal.SIGHUP in self.signals:
                    self.signals.remove(signal.SIGHUP)
                    self.rolling_restart()
                for i, w in enumerate(self.workers):
                    w.poll_ready()
                    if w.process.is_alive() or self._exiting():
                        continue
                    w.process.join()
                    if not w.is_ready and not up:
                        # At start-up a broken model or port fails every worker alike: stop.
                        failed = f"worker {w.process.pid} exited ({w.process.exitcode}) before it was ready"
                        log.error("%s: stopping (see its error above)", failed)
                        break
                    if w.is_ready:
                        log.info("worker %d exited (%s); starting a replacement", w.process.pid, w.process.exitcode)
                    elif w.retry_at == 0.0:  # a replacement failed to start: the others serve
                        log.error("replacement worker %d failed before it was ready; retrying in %.0f s",
                                  w.process.pid, RETRY_S)
                        w.retry_at = time.monotonic() + RETRY_S
                        continue
                    elif time.monotonic() < w.retry_at:
                        continue
                    self.workers[i] = self.spawn()
                up = up or all(w.is_ready for w in self.workers)
        finally:
            for w in self.workers:  # SIGTERM to all first: they drain at the same time
                if w.process.is_alive():
                    os.kill(w.process.pid, signal.SIGTERM)
            for w in self.workers:
                self.stop(w)
            log.info("all workers stopped")
        if failed:
            raise SegueError(failed)


def run(
    settings: ServeSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    graceful_timeout: float = GRACEFUL_TIMEOUT_S,
) -> None:
    """Serve until SIGTERM/SIGINT (graceful: see segue.serving.lifecycle). A model that fails to
    load stops the server and is raised here (the CLI's one-line error)."""
    configure_logging()
    if workers > 1:
        if settings.admin and os.environ.get("SEGUE_ADMIN_KEY"):
            log.warning("%d workers: /admin/reload is not mounted (it would reload one worker); "
                        "send SIGHUP to pid %d for a rolling restart onto the model folder", workers, os.getpid())
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
        log.info("listening on %s:%d with %d workers (main pid %d)", host, port, workers, os.getpid())
        try:
            Supervisor(settings.model_copy(update={"admin": False}), sock, workers, graceful_timeout).run()
        finally:
            sock.close()
        return
    server: Any = None

    def stop(_: BaseException) -> None:
        if server is not None:
            server.should_exit = True

    deferred = DeferredApp(lambda: build_app(settings), on_failure=stop)
    server = draining_server(deferred, graceful_timeout, host=host, port=port)
    server.run()
    if isinstance(deferred.error, SegueError):
        raise deferred.error
    if deferred.error is not None:
        e = deferred.error
        raise SegueError(f"{settings.model}: the model could not be loaded ({type(e).__name__}: {e})") from e
