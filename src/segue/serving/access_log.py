"""Structured access logs: one JSON line per HTTP request, and the request id that ties it together.

    {"ts": "2026-11-30T01:02:03.456Z", "event": "access", "request_id": "9f0c...", "method": "POST",
     "path": "/v1/recommend", "status": 200, "latency_ms": 2.41, "model_version": "ease-1a2b...",
     "run_id": "...", "client": "127.0.0.1", "pid": 4242}

The request id is the client's `X-Request-ID` when it sends a usable one (1-128 visible ASCII
characters; anything else is replaced, so a log line cannot be forged through it), else a fresh
uuid4 hex. It is echoed in the `X-Request-ID` response header, is the body's `request_id` and the
feature log's, so one id finds a request in all three. The model version and run id are read from
the response's `X-Segue-*` headers (the engine that answered, even across a reload).

Lines go to the `segue.access` logger; `configure_access_logger` sends them to a stream (stdout
for `segue serve`) as bare JSON. Logging is a handful of dict operations and one write per request.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
import uuid
from typing import Any, TextIO

access_log = logging.getLogger("segue.access")
REQUEST_ID_HEADER = b"x-request-id"
_VALID_ID = re.compile(rb"[\x21-\x7e]{1,128}")  # visible ASCII: no spaces, quotes stay escaped by JSON
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("segue_request_id", default=None)


def current_request_id() -> str:
    """The id of the request being handled (set by AccessLog), or a fresh one outside it."""
    return _request_id.get() or uuid.uuid4().hex


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID if usable, else a new uuid4 hex."""
    for name, value in headers:
        if name.lower() == REQUEST_ID_HEADER and _VALID_ID.fullmatch(value):
            return value.decode("ascii")
    return uuid.uuid4().hex


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class AccessLog:
    """Pure ASGI middleware (outermost): request id in and out, one JSON log record per request."""

    def __init__(self, app: Any, logger: logging.Logger = access_log) -> None:
        self.app = app
        self.logger = logger
        self.pid = os.getpid()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        start = time.time()
        rid = request_id_from(scope.get("headers", []))
        token = _request_id.set(rid)
        seen: dict[str, Any] = {"status": 500, "version": None, "run_id": None}

        async def send_wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                headers = list(message.get("headers", []))
                for name, value in headers:
                    if name == b"x-segue-model-version":
                        seen["version"] = value.decode("latin-1")
                    elif name == b"x-segue-run-id":
                        seen["run_id"] = value.decode("latin-1")
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, rid.encode("ascii"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapped)
        finally:
            _request_id.reset(token)
            if self.logger.isEnabledFor(logging.INFO):
                client = scope.get("client")
                record = {
                    "ts": _utc(start),
                    "event": "access",
                    "request_id": rid,
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": seen["status"],
                    "latency_ms": round((time.perf_counter() - t0) * 1000, 3),
                    "model_version": seen["version"],
                    "run_id": seen["run_id"],
                    "client": client[0] if client else None,
                    "pid": self.pid,
                }
                self.logger.info(json.dumps(record, separators=(",", ":")))


class _Bare(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


def configure_access_logger(stream: TextIO | None = None) -> logging.Logger:
    """Send `segue.access` records to `stream` (default stdout) as bare JSON lines, once."""
    if not any(getattr(h, "_segue_access", False) for h in access_log.handlers):
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(_Bare())
        handler._segue_access = True  # type: ignore[attr-defined]
        access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False  # JSON lines only: not again through the root logger's format
    return access_log
