"""`segue serve`: the command function the CLI registers, and an in-thread server for tests/demo."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from segue.errors import SegueError


def bind_port(host: str, port: int, hint: str) -> socket.socket:
    """A socket bound to host:port, or a SegueError naming the port and `hint` (how to choose
    another). Checked before anything is announced: a taken port had printed the page's address,
    loaded the model, and only then failed in uvicorn with "address already in use"."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise SegueError(f"port {port} on {host} is not free ({e.strerror or e}): {hint}") from None
    return sock


@dataclass
class RunningServer:
    """A uvicorn server running in a background thread on a loopback port."""

    server: Any
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(
    app: Any,
    port: int = 0,
    host: str = "127.0.0.1",
    *,
    log_level: str = "warning",
    timeout: float = 30.0,
) -> RunningServer:
    """Start `app` under uvicorn in a daemon thread; port 0 binds a free port (no race: the socket
    is bound here and handed to uvicorn). Returns once the server accepts connections."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"uvicorn:{port}"
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            with contextlib.suppress(OSError):
                sock.close()
            raise RuntimeError(f"the server on {host}:{port} did not start")
        time.sleep(0.02)
    return RunningServer(server, thread, host, port)


def trained_store_checksum(model: Path, header: dict[str, Any]) -> str | None:
    """The content checksum of the store `model` was trained on: its store_checksum.txt (segue
    train), else model.toml's meta; None when neither records one."""
    from segue.models.base import model_meta

    path = model / "store_checksum.txt"
    if path.is_file():
        return path.read_text(encoding="utf-8").strip() or None
    got = model_meta(header).get("store_checksum")
    return str(got) if got else None


def store_mismatch(model: Path, header: dict[str, Any], store: Path) -> str | None:
    """A warning when `store` is not the store the model was trained on (its content checksum
    differs from the one the model folder records), else None. Only a warning: a rebuilt store
    of the same corpus (more items, new names) is a fair source of names; one of another corpus
    whose ids overlap would otherwise serve wrong names with no more than a coverage warning."""
    from segue.data.store import Store

    trained = trained_store_checksum(model, header)
    if trained is None:
        return None
    with Store.open(store) as s:
        checksum = s.checksum
    if checksum == trained:
        return None
    where = "store_checksum.txt" if (model / "store_checksum.txt").is_file() else "model.toml"
    return (f"--store {store} is not the store {model} was trained on (content checksum {checksum[:12]}, "
            f"the model's {where} says {trained[:12]}): names and creators come from it wherever ids match; "
            "pass the training store for the names the model was trained with")


def resolve_model(model: str, registry: str | None = None) -> Path:
    """A model folder, or a registry URI (models:/NAME@ALIAS, models:/NAME/VERSION) downloaded to
    the registry's local cache (segue.ops.registry)."""
    if not model.startswith("models:/"):
        return Path(model)
    from segue.ops.registry import Registry, default_cache

    reg = Registry(registry)
    folder, _ = reg.resolve(model, default_cache(reg))
    return folder


def serve(
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="Trained model folder (a run's model), or models:/NAME@production from the registry"
        ),
    ],
    store: Annotated[
        Path | None,
        typer.Option(help="Store to take item names from (saved into the model folder)"),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on")] = 8000,
    feature_log: Annotated[
        Path | None, typer.Option(help="Folder for the request feature log")
    ] = Path("feature-log"),
    no_feature_log: Annotated[
        bool, typer.Option("--no-feature-log", help="Do not log requests")
    ] = False,
    index: Annotated[
        str,
        typer.Option(
            help="Stage-one retrieval of a model with item embeddings: auto, exact or hnsw (others, such as "
            "a two-stage pipeline, have no index and ignore it with a warning)"
        ),
    ] = "auto",
    ef: Annotated[int, typer.Option(help="HNSW search expansion (recall vs speed); models without an index ignore it with a warning")] = 100,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes sharing the port (the model's .npy arrays memory-mapped)")
    ] = 1,
    graceful_timeout: Annotated[
        float, typer.Option(min=0, help="On SIGTERM, seconds to let requests in flight finish")
    ] = 30.0,
    admin_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="With --workers > 1: the supervisor's port for /admin/reload (rolls every worker onto a model)"),
    ] = None,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="JSON access lines on stdout")
    ] = True,
    drift_reference: Annotated[
        str | None,
        typer.Option(help="Check the feature log for drift against this event set (segue validate's REFERENCE)"),
    ] = None,
    drift_interval: Annotated[float, typer.Option(min=0.001, help="Seconds between drift checks")] = 3600.0,
    drift_thresholds: Annotated[
        Path | None, typer.Option(help="Drift thresholds TOML (default: segue validate's)")
    ] = None,
    drift_webhook: Annotated[str | None, typer.Option(help="POST a failing drift check's JSON here")] = None,
    registry: Annotated[
        str | None, typer.Option(help="Model registry folder or MLflow URI for models:/ (default: $SEGUE_REGISTRY)")
    ] = None,
) -> None:
    """Serve a trained model over HTTP: /v1/recommend, /v1/rank, /v1/continue, /v1/explain, /v1/items/search, the web page at /.

    Admin routes (/admin/reload) are mounted only when SEGUE_ADMIN_KEY is set: on the server's port
    with one worker, on --admin-port (the supervisor's) with several.
    /healthz answers once the port is open; /readyz only once the model is loaded and warmed up.
    SIGTERM drains requests in flight, then exits. With --drift-reference the feature log is
    checked every --drift-interval seconds; the latest distances are on /metrics.
    """
    from rich.console import Console
    from rich.markup import escape

    from segue.models.base import read_model_header
    from segue.serving.drift_watch import DriftWatchConfig, check_drift_config
    from segue.serving.index import IndexConfig
    from segue.serving.workers import ServeSettings, check_run_options, run

    console = Console(stderr=True)
    if index not in ("auto", "exact", "hnsw"):
        raise typer.BadParameter("expected auto, exact or hnsw", param_hint="--index")
    # A SegueError (no such folder, bad model) reaches the CLI's handler: one escaped line, exit 2.
    model = resolve_model(model, registry)  # models:/NAME@ALIAS -> a local cached folder
    # The header is checked before the port opens; the model itself loads behind it (/readyz).
    header = read_model_header(model)
    drift = None
    if drift_reference is None:  # these only tune the drift check: alone they would do nothing
        given = [
            name
            for name, value in (("--drift-interval", drift_interval != 3600.0), ("--drift-thresholds", drift_thresholds), ("--drift-webhook", drift_webhook))
            if value
        ]
        if given:
            raise typer.BadParameter(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --drift-reference (no drift check runs without it)", param_hint=given[0])
    if drift_reference is not None:
        drift = DriftWatchConfig(
            reference=drift_reference, interval_s=drift_interval, thresholds=drift_thresholds, webhook=drift_webhook
        )
        check_drift_config(drift)  # a bad spec or thresholds file is refused before the port opens
    settings = ServeSettings(
        model=model,
        store=store,
        index=IndexConfig(kind=index, expansion_search=ef),  # type: ignore[arg-type]
        feature_log=None if no_feature_log else feature_log,
        access_log=access_log,
        drift=drift,
    )
    if store is not None and (mismatch := store_mismatch(model, header, store)) is not None:
        console.print(f"[yellow]warning:[/] {escape(mismatch)}", highlight=False, soft_wrap=True)
    check_run_options(workers, admin_port, port=port)  # before the banner: "serving ..." then an error misled
    bind_port(host, port, "choose another with --port").close()
    if admin_port is not None:
        bind_port(host, admin_port, "choose another with --admin-port").close()
    console.print(
        f"serving {header['family']} model {model} with {workers} worker(s); ready when /readyz says so",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"page: http://{host}:{port}/   API docs (offline): http://{host}:{port}/docs", soft_wrap=True)
    run(settings, host=host, port=port, workers=workers, graceful_timeout=graceful_timeout, admin_port=admin_port)
