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
predecessor is retired). SIGTERM/SIGINT to the main process drains every worker and exits.

Reloading several workers: a worker's own /admin/reload would reload only the worker that
answered it, so the workers mount no admin routes. Instead the supervisor answers the same
`POST /admin/reload {"model": folder}` (same key, same answer) on its own port (`--admin-port`,
`AdminServer`): it rolls the workers onto the new folder one by one, each replacement loaded,
warmed and ready before its predecessor drains, and answers once every worker serves the new
model (422 and the old model everywhere if a replacement fails to start). Later replacements
(a worker that exits, SIGHUP) use the new folder too. `GET /admin/workers` lists each worker's
pid and model. A promotion (segue.ops.registry.switch_production, `segue retrain`'s [server]
admin_url) posts there exactly as it would to a one-worker server's own port. (uvicorn's own
--workers supervisor is not used: its workers are uvicorn Servers that cannot drain as above.)
Workers run in their own process group, so a terminal's Ctrl-C reaches the main process only,
which then stops each worker once (a second signal would make uvicorn skip the draining).

Metrics: every worker answers the /metrics scrapes it accepts with the whole server's figures.
The supervisor makes a folder (a temporary one, removed at exit) where each worker, and the
supervisor for its admin-port reloads, keeps its values in a memory-mapped file
(lifecycle.MetricValues): counters are summed over every file, an exited worker's included (they
never go back when a worker is replaced), and gauges (model, catalogue size, drift figures) are
shown per live worker, labelled `worker="PID"`.

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

import json
import logging
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import sys
import tempfile
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
from segue.serving.admin_auth import admin_refusal
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
    metrics_dir: Path | None = None  # the workers' shared /metrics values (the supervisor makes it)


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
    from segue.serving.dotmodel import register_dot_family
    from segue.serving.engine import Engine

    register_dot_family()  # the tests' and benches' stand-in family, served by workers too
    folder = Path(folder)
    model = load_model(folder)
    if mmap:
        names = map_model_arrays(model, folder)
        log.info("memory-mapped from %s: %s", folder, ", ".join(names) or "nothing")
    return Engine.from_model(model, folder, store=store, index_config=index_config)


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
    app = create_app(
        engine=engine,
        index_config=settings.index,
        feature_log=settings.feature_log,
        access_log=settings.access_log,
        drift_watch=drift,
        use_env_admin_key=settings.admin,
        metrics_dir=settings.metrics_dir,
    )
    app.state.segue_model = info.public()  # a worker announces it to the supervisor
    return app


def configure_logging() -> None:
    """segue's own log lines (loading, drift alerts) on stderr; access lines (JSON) on stdout.

    The handler goes on the root logger, and only when it has none (an embedding application's
    or pytest's own stay): importing orbax logs through absl, which otherwise gives the root
    logger basicConfig's handler, and every segue line was printed twice."""
    from segue.serving.access_log import configure_access_logger

    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.addHandler(handler)
    logging.getLogger("segue").setLevel(logging.INFO)
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
            ready.send((os.getpid(), dict(getattr(app.state, "segue_model", {}))))
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
    model: dict[str, str] | None = None  # what it serves (announced when ready)

    def poll_ready(self) -> bool:
        if not self.is_ready and self.ready.poll():
            try:
                _, self.model = self.ready.recv()
            except EOFError:  # it died before announcing
                return False
            self.is_ready = True
            log.info("worker %d ready (%s)", self.process.pid, (self.model or {}).get("run_id", "?"))
        return self.is_ready


@dataclass
class _Reload:
    """A reload asked for on the admin port, answered by the supervisor's main loop."""

    folder: str
    done: threading.Event
    answer: dict[str, Any] | None = None
    error: str | None = None
    store: str | None = None  # None: the workers keep the store they serve with
    status: int = 422  # of the answer when `error` is set (503: the server is shutting down)


def reload_request(body: bytes) -> Any:
    """The supervisor's /admin/reload body parsed exactly as a one-worker server's (app.py's
    ReloadRequest: `model`, `store`, nothing else): the request, or the 422 detail list."""
    from pydantic import ValidationError

    from segue.serving.app import ReloadRequest, json_error
    from segue.serving.validation import error_details

    if body.strip() in (b"", b"null"):
        return ReloadRequest()
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:
        return error_details([json_error(e)])
    try:
        return ReloadRequest.model_validate(data)
    except ValidationError as e:
        return error_details([{**err, "loc": ("body", *err["loc"])} for err in e.errors()])


class AdminServer:
    """The supervisor's admin port: POST /admin/reload, GET /admin/workers (both need the key).

    Plain http.server in a thread: the supervisor process has no event loop, and these routes see
    one call per promotion. A reload is queued for the supervisor's main loop, which owns the
    workers; the handler waits for its answer."""

    def __init__(self, supervisor: Supervisor, host: str, port: int, key: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sup = supervisor

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
                log.info("admin %s", format % args)

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError as e:  # the caller went away (Ctrl-C, a timeout): nobody to answer
                    log.warning("admin: could not answer %s %s (%s: the caller has gone)", self.command, self.path, type(e).__name__)

            def _authorised(self) -> bool:
                refusal = admin_refusal(self.headers.get("X-API-Key"), self.headers.get("Authorization"), key)
                if refusal is not None:
                    self._reply(refusal[0], {"detail": refusal[1]})
                return refusal is None

            def _route(self, want: str) -> bool:
                """Whether the request is for `want`, else answered: 404 for another path, and a
                422 naming the query parameters on it, as a one-worker server answers them (its
                routes read no query; `?` alone is none)."""
                from urllib.parse import urlsplit

                from segue.serving.validation import query_error

                url = urlsplit(self.path)
                if url.path != want:
                    self._reply(404, {"detail": "not found"})
                    return False
                if url.query:
                    self.close_connection = True  # a POST body left unread
                    self._reply(422, {"detail": [query_error(want, url.query, post=self.command == "POST")]})
                    return False
                return True

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if not self._route("/admin/workers"):
                    return
                if self._authorised():
                    self._reply(200, {"model": sup.settings().model.as_posix(), "workers": sup.describe()})

            def do_POST(self) -> None:  # noqa: N802
                if not self._route("/admin/reload"):
                    return
                if not self._authorised():
                    return
                body = self._read_body()
                if body is None:
                    return
                parsed = reload_request(body)
                if isinstance(parsed, list):  # the same 422 as a one-worker server's /admin/reload
                    return self._reply(422, {"detail": parsed})
                model = str(parsed.model) if parsed.model else str(sup.settings().model)
                req = _Reload(model, threading.Event(), store=str(parsed.store) if parsed.store else None)
                sup.reloads.put(req)
                req.done.wait()
                if req.error is not None:
                    return self._reply(req.status, {"detail": req.error})
                self._reply(200, req.answer or {})

            def _read_body(self) -> bytes | None:
                """The body as Content-Length declares it, or None once answered: 400 for a length
                that is no byte count (-1 read until the client gave up), 413 past the main port's
                limit (a huge one was a MemoryError), nothing for a client gone before the end."""
                from segue.serving.app import MAX_BODY_BYTES

                declared = (self.headers.get("Content-Length") or "0").strip()
                if not declared.isdigit():
                    self.close_connection = True
                    self._reply(400, {"detail": f"Content-Length must be a number of bytes (got {declared[:40]!r})"})
                    return None
                if int(declared) > MAX_BODY_BYTES:
                    self.close_connection = True
                    self._reply(413, {"detail": [{"type": "too_large", "loc": ["body"], "msg": f"request body is larger than {MAX_BODY_BYTES} bytes"}]})
                    return None
                body = self.rfile.read(int(declared))
                if len(body) < int(declared):  # the client went away mid-body: no reload
                    self.close_connection = True
                    return None
                return body

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="segue-admin")

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


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
        self.reloads: queue.Queue[_Reload] = queue.Queue()  # from the admin port
        self.metric_values: Any = None  # lifecycle.MetricValues, once running

    def settings(self) -> ServeSettings:
        return ServeSettings.model_validate_json(self.settings_json)

    def describe(self) -> list[dict[str, Any]]:
        return [{"pid": w.process.pid, "ready": w.is_ready, "model": w.model} for w in list(self.workers)]

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

    def rolling_restart(self, indices: list[int] | None = None) -> int | None:
        """Replace the workers at `indices` (default: all) one by one, each replacement ready before
        its predecessor drains. Returns None when done, else the index whose replacement failed
        (that worker and the later ones keep running)."""
        for i in range(len(self.workers)) if indices is None else indices:
            old = self.workers[i]
            new = self.spawn()
            if not self.wait_ready(new):
                if self._exiting():  # SIGTERM/SIGINT stopped the wait: no failure of the worker's
                    log.info("the server is shutting down: replacement worker %d stopped before it was ready", new.process.pid)
                else:
                    log.error("replacement worker %d was not ready; keeping worker %d", new.process.pid, old.process.pid)
                self.stop(new)
                return i
            self.workers[i] = new
            self.stop(old)
        log.info("rolling restart done: workers %s", [w.process.pid for w in self.workers])
        return None

    def reload(self, req: _Reload) -> None:
        """Roll every worker onto `req.folder`; on a failure, the ones already moved roll back."""
        from segue.models.base import read_model_header

        previous = self.workers[0].model if self.workers else None
        old_json = self.settings_json
        try:  # a missing or foreign folder or store: refused before any worker moves
            read_model_header(Path(req.folder))
            if req.store is not None:
                from segue.data.store import Store

                Store.open(req.store).close()
        except Exception as e:  # noqa: BLE001 (its message is the answer)
            req.error = f"could not load {req.folder}: {e}"
            return
        update: dict[str, Any] = {"model": Path(req.folder)} | ({"store": Path(req.store)} if req.store else {})
        self.settings_json = self.settings().model_copy(update=update).model_dump_json()
        failed = self.rolling_restart()
        if failed is not None:
            self.settings_json = old_json
            if self._exiting():  # the model was not at fault, and no worker is to start now
                req.error, req.status = f"the server is shutting down: the reload to {req.folder} did not finish", 503
                return
            if failed and self.rolling_restart(list(range(failed))) is not None:
                log.error("workers could not be moved back to the previous model: some may serve %s", req.folder)
            req.error = f"could not load {req.folder}: a new worker failed to start (see the server's log)"
            return
        if self.metric_values is not None:
            self.metric_values.count([(("segue_reloads_total", ""), 1.0)])
        req.answer = {
            "previous": previous,
            "model": self.workers[0].model,
            "folder": req.folder,
            "workers": self.describe(),
        }
        log.info("reloaded %s -> %s on %d workers", (previous or {}).get("version"), (req.answer["model"] or {}).get("version"), len(self.workers))

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda s, _f: self.signals.append(s))
        made = None
        if self.settings().metrics_dir is None:  # for the workers' shared /metrics (see Metrics)
            made = Path(tempfile.mkdtemp(prefix="segue-metrics-"))
            self.settings_json = self.settings().model_copy(update={"metrics_dir": made}).model_dump_json()
        try:
            self._run()
        finally:
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)

    def _run(self) -> None:
        from segue.serving.lifecycle import MetricValues

        # The supervisor's own counter: a reload on the admin port (the workers mount no /admin/reload).
        self.metric_values = MetricValues(self.settings().metrics_dir)
        self.metric_values.count([(("segue_reloads_total", ""), 0.0)])
        self.workers = [self.spawn() for _ in range(self.n)]
        failed = None
        up = False  # every first worker has been ready once
        try:
            while not self._exiting() and failed is None:
                time.sleep(0.1)
                if signal.SIGHUP in self.signals:
                    self.signals.remove(signal.SIGHUP)
                    self.rolling_restart()
                if up:
                    try:
                        req = self.reloads.get_nowait()
                    except queue.Empty:
                        req = None
                    if req is not None:
                        try:
                            self.reload(req)
                        except Exception as e:  # noqa: BLE001 (the caller gets the reason; the loop goes on)
                            log.exception("reload failed")
                            req.error = req.error or f"reload failed: {e}"
                        finally:
                            req.done.set()
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
            # The supervisor's copy of the listening socket first: once each worker closes its own
            # on SIGTERM, new connections are refused at once (as with one worker) instead of
            # being queued by the kernel until the last worker has drained and exited.
            self.sock.close()
            for w in self.workers:  # SIGTERM to all first: they drain at the same time
                if w.process.is_alive():
                    os.kill(w.process.pid, signal.SIGTERM)
            for w in self.workers:
                self.stop(w)
            while not self.reloads.empty():  # a reload asked for while stopping: refused, not hung
                req = self.reloads.get_nowait()
                req.error, req.status = "the server is shutting down", 503
                req.done.set()
            log.info("all workers stopped")
        if failed:
            raise SegueError(failed)


def check_run_options(workers: int, admin_port: int | None, admin: bool = True, port: int | None = None) -> None:
    """The options of `run` that cannot go together: a ConfigError naming them (the CLI checks
    them before it says it is serving)."""
    key = os.environ.get("SEGUE_ADMIN_KEY") or None
    if admin_port is not None and workers < 2:
        raise ConfigError("--admin-port is for several workers: one worker takes /admin/reload on its own port")
    if admin_port is not None and admin_port == port and port != 0:  # 0: each a free port of its own
        raise ConfigError(f"--admin-port must differ from --port (both {port}): the supervisor's admin port is a port of its own")
    if admin_port is not None and not (admin and key):
        raise ConfigError("--admin-port needs the admin key in $SEGUE_ADMIN_KEY")


def run(
    settings: ServeSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    graceful_timeout: float = GRACEFUL_TIMEOUT_S,
    admin_port: int | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (graceful: see segue.serving.lifecycle). A model that fails to
    load stops the server and is raised here (the CLI's one-line error). With several workers,
    `admin_port` opens the supervisor's admin port (needs $SEGUE_ADMIN_KEY; see the module)."""
    configure_logging()
    key = os.environ.get("SEGUE_ADMIN_KEY") or None
    check_run_options(workers, admin_port, settings.admin, port)
    if workers > 1:
        if settings.admin and not key:  # said once here: the workers take no key (admin=False below)
            log.warning("SEGUE_ADMIN_KEY is not set: admin routes (/admin/reload) are not mounted")
        if settings.admin and key and admin_port is None:
            log.warning("%d workers: /admin/reload is not mounted (it would reload one worker); give --admin-port "
                        "for the supervisor's, or send SIGHUP to pid %d for a rolling restart", workers, os.getpid())
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
        log.info("listening on %s:%d with %d workers (main pid %d)", host, port, workers, os.getpid())
        supervisor = Supervisor(settings.model_copy(update={"admin": False}), sock, workers, graceful_timeout)
        admin = None
        try:
            if admin_port is not None:
                assert key is not None
                try:
                    admin = AdminServer(supervisor, host, admin_port, key)
                except OSError as e:  # taken since the CLI's check, or not checked (a caller of run)
                    raise SegueError(f"port {admin_port} on {host} is not free ({e.strerror or e}): choose another with --admin-port") from None
                admin.start()
                log.info("admin port %s:%d: POST /admin/reload rolls every worker onto a model folder", host, admin_port)
            supervisor.run()
        finally:
            if admin is not None:
                admin.close()
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
