"""The HTTP service: FastAPI over an `Engine`, with metrics, a feature log and atomic reloads.

Every response carries the model's run id and version (in the body of /v1 answers and in the
`X-Segue-Run-Id` / `X-Segue-Model-Version` headers of all of them). Requests are validated by
pydantic models with limits, so a malformed body is answered with 422 naming the field and never
reaches the model. Unknown item ids become `<unk>` and are listed in `warnings`.

Bad input never reaches a 5xx: validation errors echo the offending value made JSON-safe
(segue.serving.validation), floats must be finite, item ids valid UTF-8, and a body over
MAX_BODY_BYTES is answered 413. `/docs` loads Swagger UI from this server (the fastapi-offline
package ships Swagger UI 5), so it works without internet; there is no /redoc.

Reload: `POST /admin/reload` loads the new folder completely, then replaces the engine reference in
one assignment; requests already running keep the engine they started with, so none fails. Admin
routes exist only when an API key is configured (SEGUE_ADMIN_KEY); without one they are not mounted.

Profiles: /v1/recommend and /v1/explain take `ratings`, a list aligned with `history` (null =
unrated). Aligned lists rather than `{"id", "rating"}` objects keep `history: list[str]` exactly as
before, so old clients and the feature log's schema are untouched, and the OpenAPI schema shows two
plain arrays. Ratings outside the model's scale (`/healthz` rating_scale) are a 422 naming the item;
a family that does not use ratings accepts them with a warning. `niche_boost` (b >= 0) ranks by
s - b log(training count + 1) on every retrieval path (segue.models.filters).

Events: /v1/recommend, /v1/rank and /v1/explain also take per-event `feedback`, `timestamps` and `event_context`
(aligned with `history`) and the next event's `ts` (segue.serving.events); /v1/rank scores a given
candidate list and returns each candidate's predicted feedback (segue.serving.rank).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from threadpoolctl import threadpool_limits

from segue import __version__
from segue.data.vocab import N_SPECIAL
from segue.errors import SegueError
from segue.models.filters import niche_boost as niche_boost_scores
from segue.models.pipeline import NAMES_GENERATOR
from segue.serving.access_log import AccessLog, current_request_id
from segue.serving.admin_auth import admin_refusal
from segue.serving.drift_watch import DRIFT_FAMILIES, DriftWatch
from segue.serving.encoding import EncodedHistory
from segue.serving.engine import PIPELINE_EMPTY_WARNING, POPULARITY_WARNING, Engine, Ranked
from segue.serving.events import HistoryEvents, WholeNumber, input_rating_scale, request_events
from segue.serving.events import describe as describe_events
from segue.serving.explain import explain_profile
from segue.serving.feature_log import FeatureLog
from segue.serving.index import IndexConfig
from segue.serving.lifecycle import (
    Family,
    MetricValues,
    Sample,
    loading_metrics,
    readiness,
    render_metrics,
    warm_up,
)
from segue.serving.pipeline_engine import events_view, pipeline_request_events, reads_history_times
from segue.serving.rank import rank_candidates
from segue.serving.validation import error_details, query_error

log = logging.getLogger("segue.serving")
_JSON = msgspec.json.Encoder()
WEB_DIR = Path(__file__).parent / "web"
ADMIN_KEY_ENV = "SEGUE_ADMIN_KEY"

MAX_BODY_BYTES = 1 << 20
MAX_HISTORY = 5_000
MAX_LIST = 10_000
MAX_N = 1_000


# ---------------------------------------------------------------------------------------------
# request and response models


class _Request(BaseModel):
    # NaN and +-inf (JSON's 1e400, or Python's NaN literal) are no temperature or count.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _utf8(s: str) -> str:
    """JSON strings may hold lone surrogates ("\\ud800"); ids are echoed and logged as UTF-8."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid UTF-8 text (it holds a lone surrogate such as \\ud800)") from None
    return s


def _text(max_length: int, min_length: int = 0) -> Any:
    """A string of min_length..max_length characters, valid UTF-8. The length check comes before the
    UTF-8 one: a constraint placed after an AfterValidator is checked as a generic length ("at
    most 512 items"), which read as if the list were too long."""
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length), AfterValidator(_utf8)]


ItemId = _text(512, min_length=1)
ItemIds = list[ItemId]
ContextValue = _text(256)
Context = dict[ContextValue, ContextValue]
Title = _text(512)
FolderPath = _text(4096)
# Numbers and flags are strict: JSON's true is no rating of 1 and "3" no count of 3 (lax pydantic
# turned both into numbers without a word). An int is still a float, and an integral float (3.0)
# still a whole number (WholeNumber).
Rating = Annotated[float, Field(strict=True)]
Ratings = list[Rating | None]
# Deprecated request field names -> their current name (accepted, announced in a header).
DEPRECATED_FIELDS = {"seed": "history"}
DEPRECATION_DATE = 1795910400  # 2026-11-29T00:00:00Z, when /v1/continue's `seed` became `history`


def _aligned_ratings(ratings: list[float | None] | None, info: ValidationInfo) -> list[float | None] | None:
    """`ratings` must give one value (or null) per history item."""
    history = info.data.get("history")
    if ratings is not None and history is not None and len(ratings) != len(history):
        raise ValueError(
            f"ratings has {len(ratings)} values but history has {len(history)} items: "
            "give one rating per history item, null for an unrated one"
        )
    return ratings


RATINGS_DESCRIPTION = (
    "Ratings of the history items, aligned with `history` (null = unrated), on the model's scale "
    "(`rating_scale` in /healthz). Families that do not use ratings ignore them (with a warning)."
)
NICHE_BOOST_DESCRIPTION = (
    "Niche boost b >= 0: rank by score - b log(training count + 1), pushing rarer items up "
    "(0 = off; returned scores are the boosted ones)"
)


class RecommendRequest(_Request, HistoryEvents):
    history: ItemIds = Field(
        default_factory=list, max_length=MAX_HISTORY, description="External item ids, oldest first"
    )
    ratings: Ratings | None = Field(None, max_length=MAX_HISTORY, description=RATINGS_DESCRIPTION)
    n: WholeNumber = Field(10, ge=1, le=MAX_N, description="Number of items to return")
    context: Context | None = Field(
        None, max_length=32
    )
    exclude_seen: bool = Field(True, strict=True)
    exclude: ItemIds = Field(default_factory=list, max_length=MAX_LIST)
    allow: ItemIds | None = Field(
        None, max_length=100_000, description="Only these items may be returned"
    )
    deny: ItemIds = Field(default_factory=list, max_length=MAX_LIST)
    niche_boost: float = Field(0.0, ge=0, le=1_000, strict=True, description=NICHE_BOOST_DESCRIPTION)
    name: Title | None = Field(
        None, description="Playlist title: two-stage pipelines match it to item and playlist names"
    )

    _check_ratings = field_validator("ratings")(_aligned_ratings)


class ContinueRequest(_Request):
    history: ItemIds = Field(
        default_factory=list,
        max_length=MAX_HISTORY,
        description="The playlist so far (seed item ids), oldest first",
    )
    seed: ItemIds | None = Field(
        None,
        max_length=MAX_HISTORY,
        description="Deprecated: the old name of `history` (still accepted; not with `history`)",
        json_schema_extra={"deprecated": True},
    )
    n: WholeNumber = Field(20, ge=1, le=500)
    temperature: float = Field(1.0, gt=0, le=100, strict=True)
    top_k: WholeNumber = Field(50, ge=1, le=MAX_N)
    greedy: bool = Field(False, strict=True)
    random_seed: WholeNumber | None = Field(None, ge=0, le=2**63 - 1)


class ExplainRequest(_Request, HistoryEvents):
    history: ItemIds = Field(default_factory=list, max_length=1_000)
    ratings: Ratings | None = Field(None, max_length=1_000, description=RATINGS_DESCRIPTION)
    items: ItemIds | None = Field(
        None, max_length=100, description="Items to explain (default: the top n)"
    )
    n: WholeNumber = Field(10, ge=1, le=100)
    top: WholeNumber = Field(
        5, ge=1, le=100, description="History items listed per explained item, and surprising items listed"
    )
    niche_boost: float = Field(
        0.0,
        ge=0,
        le=1_000,
        strict=True,
        description="As in /v1/recommend: the default top n items are the boosted top n, and every returned "
        "`score` is boosted; impacts are the same either way (the boost depends on the item alone)",
    )
    context: Context | None = Field(
        None, max_length=32, description="Context of the event to predict, as in /v1/recommend"
    )
    # /v1/recommend's list fields choose the default top n (the list it served); `name` also
    # reaches a two-stage pipeline's scores, whose candidate pool it shapes.
    exclude_seen: bool = Field(True, strict=True, description="As in /v1/recommend (for the default top n)")
    exclude: ItemIds = Field(default_factory=list, max_length=MAX_LIST, description="As in /v1/recommend (for the default top n)")
    allow: ItemIds | None = Field(None, max_length=100_000, description="As in /v1/recommend (for the default top n)")
    deny: ItemIds = Field(default_factory=list, max_length=MAX_LIST, description="As in /v1/recommend (for the default top n)")
    name: Title | None = Field(None, description="Playlist title, as in /v1/recommend")

    _check_ratings = field_validator("ratings")(_aligned_ratings)


class RankRequest(_Request, HistoryEvents):
    history: ItemIds = Field(default_factory=list, max_length=MAX_HISTORY, description="External item ids, oldest first")
    ratings: Ratings | None = Field(None, max_length=MAX_HISTORY, description=RATINGS_DESCRIPTION)
    items: ItemIds = Field(min_length=1, max_length=MAX_N, description="Candidate item ids to score and rank")
    context: Context | None = Field(
        None, max_length=32, description="Context of the event to predict (e.g. the platform of the request)"
    )
    # A two-stage pipeline scores the candidates of its pool, which these shape as on
    # /v1/recommend, so a candidate gets the score /v1/recommend gives it for the same body.
    name: Title | None = Field(None, description="Playlist title, as in /v1/recommend (two-stage pipelines read it)")
    exclude_seen: bool = Field(
        True,
        strict=True,
        description="As in /v1/recommend: false lets a two-stage pipeline's pool hold the history's items, "
        "so history candidates get a score (other models score every candidate either way)",
    )

    _check_ratings = field_validator("ratings")(_aligned_ratings)


class SearchQuery(_Request):
    """Query parameters are a model too, so a misspelt one (`?limt=5`) is a 422, not ignored."""

    q: str = Field(min_length=1, max_length=200, description="Words to find in name, artist, album or id")
    limit: int = Field(20, ge=1, le=100)


class SimilarQuery(_Request):
    n: int = Field(10, ge=1, le=MAX_N)


class ReloadRequest(_Request):
    model: FolderPath | None = Field(
        None, description="Model folder (default: the current one)"
    )
    store: FolderPath | None = None


class ModelOut(BaseModel):
    run_id: str
    version: str
    family: str


class ItemOut(BaseModel):
    id: str | None
    name: str | None = None
    creator: str | None = None
    album: str | None = None
    score: float | None = None
    probability: float | None = None
    generators: list[str] | None = Field(None, description="Two-stage pipelines: the generators that proposed the item")
    features_only: bool | None = None  # an item added without retraining (scored by its features)


class RankedItemOut(ItemOut):
    feedback: dict[str, float] | None = Field(
        None, description="Predicted feedback if this item came next, per column on its own scale (absent: none predicted)"
    )


class RankResponse(BaseModel):
    request_id: str
    model: ModelOut
    items: list[RankedItemOut] = Field(description="The known candidates, best score first")
    warnings: list[str]


class RecommendResponse(BaseModel):
    request_id: str
    model: ModelOut
    items: list[ItemOut]
    warnings: list[str]
    retrieval: str


class ContinueResponse(BaseModel):
    request_id: str
    model: ModelOut
    history: list[ItemOut]
    seed: list[ItemOut] = Field(
        description="Deprecated: the same as `history`", json_schema_extra={"deprecated": True}
    )
    items: list[ItemOut]
    warnings: list[str]


class ItemsResponse(BaseModel):
    request_id: str
    model: ModelOut
    items: list[ItemOut]
    warnings: list[str] = []


class ContributionOut(ItemOut):
    position: int = Field(description="Index in the request's history (as sent, before the cut to the model's context)")
    impact: float | None = Field(description="score(history)[item] - score(history without this one)[item]; absent when `pool` is set")
    pool: Literal["leaves", "joins"] | None = Field(
        None,
        description="Two-stage pipelines: the item leaves (or joins) the candidate pool without this history item, so no score difference exists",
    )


class ExplainedItem(ItemOut):
    predicted_rating: float | None = Field(
        None,
        description="The model's rating of the item on its scale, given the whole profile (families "
        "that predict ratings; `score` is a ranking score: for the autoencoder a log score, a log "
        "probability only with score = \"presence\", the default with a rating head being the "
        "unified alpha log p + (1 - alpha) log q)",
    )
    contributions: list[ContributionOut]


class SurpriseOut(ItemOut):
    position: int = Field(description="Index in the request's history")
    given: float = Field(description="The rating the request gave the item")
    predicted: float = Field(description="The model's rating for it, given the whole profile")
    difference: float = Field(description="given - predicted")


class ExplainResponse(BaseModel):
    request_id: str
    model: ModelOut
    items: list[ExplainedItem]
    surprising: list[SurpriseOut] | None = Field(
        None,
        description="Rated profile items whose rating differs most from the model's prediction "
        "(largest |given - predicted| first); absent for families that predict no ratings",
    )
    warnings: list[str]


BODY_PARSE_ERROR = "There was an error parsing the body"  # FastAPI's bare 400, naming nothing


def json_error(e: Exception) -> dict[str, Any]:
    """The 422 detail of a body json.loads could not read, saying where or why: a syntax error at
    its offset, nesting deeper than the parser recurses, or an integer past Python's digit limit."""
    if isinstance(e, json.JSONDecodeError):
        return {"type": "json_invalid", "loc": ("body", e.pos), "msg": f"JSON decode error: {e.msg}", "input": {}}
    if isinstance(e, RecursionError):
        msg = "JSON nested too deeply: more levels of [ ] or { } than the server reads"
    elif "digits" in str(e):
        msg = f"JSON number too long: an integer of more than {sys.get_int_max_str_digits()} digits"
    else:
        msg = f"JSON not readable: {type(e).__name__}"
    return {"type": "json_invalid", "loc": ("body",), "msg": msg, "input": {}}


# ---------------------------------------------------------------------------------------------
# metrics

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


METRIC_FAMILIES: list[Family] = [
    ("segue_requests_total", "counter", "HTTP requests by method, route and status."),
    ("segue_request_seconds", "histogram", "Request latency."),
    ("segue_items_requested_total", "counter", "Item ids received in histories and seeds."),
    ("segue_items_unknown_total", "counter", "Item ids not in the model's vocabulary (served as <unk>)."),
    ("segue_unknown_item_rate", "gauge", "Unknown item ids / item ids received."),
    ("segue_popularity_fallbacks_total", "counter", "Requests with an empty history, answered by popularity."),
    ("segue_reloads_total", "counter", "Successful model reloads."),
    ("segue_model_info", "gauge", "The model being served."),
    ("segue_catalogue_items", "gauge", "Items in the served model's catalogue."),
]


class Metrics:
    """Counters and latency histograms, rendered as Prometheus text.

    With `folder` (the workers of one server share it: segue.serving.workers), the values live in
    lifecycle.MetricValues files there and a scrape shows every worker's counters summed and each
    live worker's gauges (model, catalogue, drift) labelled `worker`."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.values = MetricValues(folder)
        self._labels: dict[tuple[str, str, str], list[str]] = {}  # (method, route, status) -> label texts
        self._model: Sample | None = None
        zero = ("segue_items_requested_total", "segue_items_unknown_total", "segue_popularity_fallbacks_total", "segue_reloads_total")
        self.values.count(((name, ""), 0.0) for name in zero)  # shown from the first scrape

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, str(status))
        labels = self._labels.get(key)
        if labels is None:
            r = _esc(route)
            labels = self._labels[key] = [
                f'method="{method}",route="{r}",status="{status}"',
                *(f'route="{r}",le="{b}"' for b in (*LATENCY_BUCKETS, "+Inf")),
                f'route="{r}"',
            ]
        buckets = [(("segue_request_seconds_bucket", lab), float(seconds <= b)) for lab, b in zip(labels[1:-2], LATENCY_BUCKETS, strict=True)]
        self.values.count([
            (("segue_requests_total", labels[0]), 1.0),
            *buckets,
            (("segue_request_seconds_bucket", labels[-2]), 1.0),
            (("segue_request_seconds_sum", labels[-1]), seconds),
            (("segue_request_seconds_count", labels[-1]), 1.0),
        ])

    def fallback(self) -> None:
        self.values.count([(("segue_popularity_fallbacks_total", ""), 1.0)])

    def reloaded(self) -> None:
        self.values.count([(("segue_reloads_total", ""), 1.0)])

    def items(self, requested: int, unknown: int) -> None:
        self.values.count([(("segue_items_requested_total", ""), requested), (("segue_items_unknown_total", ""), unknown)])

    def serving(self, engine: Engine) -> None:
        """The model gauges for `engine` (at start and after each reload)."""
        info = engine.info
        model = ("segue_model_info", f'run_id="{_esc(info.run_id)}",version="{_esc(info.version)}",'
                 f'family="{_esc(info.family)}",retrieval="{info.retrieval}"')
        old = [(self._model, math.nan)] if self._model not in (None, model) else []
        self.values.gauge([*old, (model, 1.0), (("segue_catalogue_items", ""), float(info.n_items))])  # type: ignore[list-item]
        self._model = model

    def render(self, extra: list[Family] | None = None) -> str:
        """Prometheus text for every worker's values (see the class), `extra` families too."""
        counters, gauges = self.values.gather()
        requested = counters.get(("segue_items_requested_total", ""), 0.0)
        unknown = counters.get(("segue_items_unknown_total", ""), 0.0)
        gauges[("segue_unknown_item_rate", "")] = round(unknown / requested if requested else 0.0, 6)
        return render_metrics([*METRIC_FAMILIES, *(extra or [])], counters, gauges)


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Envelope:
    """Pure ASGI middleware: body size limit (413 naming `body`), metrics, model headers."""

    def __init__(self, app: Any, state: dict[str, Any], routes: list[BaseRoute]) -> None:
        self.app = app
        self.state = state
        self.routes = routes  # the app's routes, to label those FastAPI does not put in the scope

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        engine: Engine = self.state["engine"]
        status = {"code": 500}
        headers = [
            (b"x-segue-run-id", engine.info.run_id.encode("latin-1", "replace")),
            (b"x-segue-model-version", engine.info.version.encode("latin-1", "replace")),
        ]

        async def send_wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message = {**message, "headers": list(message.get("headers", [])) + headers}
            await send(message)

        # Routing rewrites the scope (a mount moves `path` into `root_path`): keep what matching
        # needs to label the request afterwards.
        where = {
            "type": "http",
            "path": scope.get("path", ""),
            "root_path": scope.get("root_path", ""),
            "method": scope.get("method", "GET"),
        }

        async def refuse(code: int, loc: list, msg: str, kind: str) -> None:
            data = json.dumps({"detail": [{"loc": loc, "msg": msg, "type": kind}]}).encode()
            await send_wrapped(
                {
                    "type": "http.response.start",
                    "status": code,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(data)).encode()),
                        # A refused body may be partly unread: the connection is not reused.
                        (b"connection", b"close"),
                    ],
                }
            )
            await send_wrapped({"type": "http.response.body", "body": data})
            self._observe(where, status["code"], t0)

        query = scope.get("query_string", b"")
        if query and where["method"] == "POST" and self._full_match(where):
            # The POST routes read their JSON body only: `?n=2` was ignored without a word (the
            # GET routes refuse unknown parameters for the same reason).
            err = query_error(where["path"], query.decode("latin-1"), post=True)
            await refuse(422, err["loc"], err["msg"], err["type"])
            return
        too_large = (413, ["body"], f"request body is larger than {MAX_BODY_BYTES} bytes", "too_large")
        request_headers = dict(scope.get("headers", ()))
        declared = request_headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            await refuse(*too_large)  # refused before reading a byte of it
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:  # chunked bodies declare no length
                await refuse(*too_large)
                return
        if body and b"json" in request_headers.get(b"content-type", b""):
            # FastAPI answers a JSON body that is not UTF-8 with a bare 400 "error parsing the
            # body"; like other malformed JSON it is a 422 saying where.
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as e:
                msg = f"JSON must be UTF-8 text: byte {body[e.start]:#04x} at offset {e.start} is not"
                await refuse(422, ["body", e.start], msg, "json_invalid")
                return
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        try:
            await self.app(scope, replay, send_wrapped)
        finally:
            route = scope.get("route")
            self._observe(where, status["code"], t0, getattr(route, "path", None))

    def _observe(self, where: dict, status: int, t0: float, path: str | None = None) -> None:
        # FastAPI records its own API routes in the scope; Starlette routes it adds itself
        # (/openapi.json) and mounts (the docs' static files) are found by matching again.
        name = path or self._route_path(where)
        self.state["metrics"].observe(where["method"], name, status, time.perf_counter() - t0)

    def _full_match(self, where: dict) -> bool:
        """Does a route take this path and method (not a 404 or 405)?"""
        return any(route.matches(where)[0] is Match.FULL for route in self.routes)

    def _route_path(self, where: dict) -> str:
        partial = None
        for route in self.routes:
            match, _ = route.matches(where)
            if match is Match.FULL:
                return getattr(route, "path", None) or "<unmatched>"
            if match is Match.PARTIAL and partial is None:
                partial = route  # the path matches, the method does not (a 405)
        return getattr(partial, "path", None) or "<unmatched>"


# ---------------------------------------------------------------------------------------------


def create_app(
    model_folder: str | Path | None = None,
    *,
    engine: Engine | None = None,
    store: str | Path | None = None,
    index_config: IndexConfig | None = None,
    feature_log: str | Path | FeatureLog | None = None,
    admin_key: str | None = None,
    use_env_admin_key: bool = True,
    blas_threads: int | None = 1,
    access_log: bool = False,
    drift_watch: DriftWatch | None = None,
    metrics_dir: str | Path | None = None,
) -> FastAPI:
    """The service for `model_folder` (or a loaded `engine`).

    `admin_key` defaults to $SEGUE_ADMIN_KEY (unless `use_env_admin_key` is False); without a key
    the admin routes are not mounted. `feature_log` is a folder (or FeatureLog) receiving one
    JSON line per request; None disables it. `blas_threads` caps BLAS threads while the server
    runs (restored on shutdown): requests already run in parallel, and OpenBLAS threads inside
    concurrent requests fight each other (measured: 16 clients on a 50k catalogue, 7.6 req/s with
    the default 2 BLAS threads per call against 160 req/s with 1). None leaves BLAS alone.
    `access_log` adds JSON access lines and X-Request-ID (segue.serving.access_log); a
    `drift_watch` runs on its schedule while the app is up, its figures on /metrics.
    `metrics_dir` is the folder the workers of one server share their /metrics values through
    (segue.serving.workers makes it; see Metrics); None: this process's own.
    /readyz is 503 until start-up has sent a warm-up request through the engine (lifecycle).
    """
    if engine is None:
        if model_folder is None:
            raise ValueError("create_app needs a model folder or an engine")
        engine = Engine.load(model_folder, store=store, index_config=index_config)
    if admin_key is None and use_env_admin_key:
        admin_key = os.environ.get(ADMIN_KEY_ENV) or None
    flog = FeatureLog(feature_log) if isinstance(feature_log, str | Path) else feature_log
    state: dict[str, Any] = {
        "engine": engine,
        "metrics": Metrics(metrics_dir),
        "feature_log": flog,
        "index_config": index_config,
        "ready": False,
        "drift_watch": drift_watch,
    }
    state["metrics"].serving(engine)
    if drift_watch is not None:
        drift_watch.attach(state["metrics"].values)
    reload_lock = threading.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        limits = None if blas_threads is None else threadpool_limits(limits=blas_threads, user_api="blas")
        # The loaded model (vocabulary, names: up to millions of objects) never becomes garbage
        # while it serves; moving it out of the collector's generations spares every full
        # collection a walk over it (a pause inside whichever request triggers the collection).
        gc.collect()
        gc.freeze()
        log.info("warm-up request through the engine: %.3f s", warm_up(state["engine"]))
        state["ready"] = True
        state["metrics"].values.serving(True)
        if drift_watch is not None:
            drift_watch.start()
        try:
            yield
        finally:
            state["ready"] = False
            state["metrics"].values.serving(False)
            if drift_watch is not None:
                drift_watch.stop()
            if limits is not None:
                limits.restore_original_limits()

    # FastAPIOffline is FastAPI with a /docs page whose script, style and favicon come from its
    # package (mounted at /static-offline-docs), not from a CDN. No /redoc: ReDoc 2's side menu
    # always fetches its vendor's logo from cdn.redoc.ly (seen in the browser test), and /docs
    # renders the same schema.
    app = FastAPIOffline(
        redoc_url=None,
        lifespan=lifespan,
        title="segue",
        version=__version__,
        description="Sequential recommendations: continue playlists, recommend, explain. "
        "Item ids are the external ids of the training data.",
    )
    app.state.segue = state

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each error's input as is: 1e400 or NaN made that 422 fail
        # to serialise (a 500). These details are JSON-safe and bounded.
        errors = error_details(exc.errors())
        ctype = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in ctype.lower():
            # curl -d sends application/x-www-form-urlencoded: FastAPI then reads no JSON at all and
            # said "Input should be a valid dictionary" of a body that is one
            errors = [{"type": "content_type", "loc": ["header", "content-type"], "input": ctype or None,
                       "msg": f"the body is read as JSON only: send Content-Type: application/json (got {ctype or 'none'})"}]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # A body json.loads fails on past its syntax (deep nesting: RecursionError; a 5000-digit
        # integer: ValueError) reached FastAPI's bare 400 naming nothing; like other malformed
        # JSON it is a 422 saying why.
        cause = exc.__cause__
        if exc.status_code == 400 and exc.detail == BODY_PARSE_ERROR and isinstance(cause, ValueError | RecursionError):
            return JSONResponse({"detail": error_details([json_error(cause)])}, status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(SegueError)
    async def _segue_error(request: Request, exc: SegueError) -> JSONResponse:
        # Errors segue raises on purpose describe bad input found past validation.
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)

    def events_description(engine: Engine) -> dict[str, Any] | None:
        """What the model reads per event (/healthz): a pipeline's event-reading generator's
        inputs, and `time` also when its ranker reads the history's times (send `timestamps`)."""
        got = describe_events(events_view(engine))  # type: ignore[arg-type]
        if not reads_history_times(engine.model):
            return got
        got = got or {"rating": False, "feedback": {}, "context": [], "time": False, "predicts": []}
        return got | {"time": True}

    def current() -> Engine:
        return state["engine"]

    def envelope(engine: Engine, request_id: str, **body: Any) -> dict[str, Any]:
        return {"request_id": request_id, "model": engine.info.public(), **body}

    def log_request(
        engine: Engine,
        endpoint: str,
        request_id: str,
        inputs: dict,
        outputs: dict,
        warnings: list[str],
    ) -> None:
        if state["feature_log"] is None:
            return
        state["feature_log"].append(
            {
                "ts": time.time(),
                "request_id": request_id,
                "endpoint": endpoint,
                "model": engine.info.public(),
                "inputs": inputs,
                "outputs": outputs,
                "warnings": warnings,
            }
        )

    def encode_ids(
        engine: Engine,
        ids: list[str],
        what: str,
        warnings: list[str],
        *,
        truncation: bool = True,
        ratings: list[float | None] | None = None,
        events: HistoryEvents | None = None,
        context: dict[str, str] | None = None,
        takes_ratings: bool = True,
    ) -> EncodedHistory:
        """The shared training/serving encoding of request ids; counts unknown ids for /metrics.

        Callers use `.all_tokens` (the whole history): the model sees its last context_length
        items (Engine.arrays crops), and every item of it counts as seen, as in evaluation.
        `ratings` (aligned) are checked against the model's scale and kept for rating-aware
        families (`.all_ratings`); other families get none, with a warning. `takes_ratings`: whether
        the route has a `ratings` field to advise (/v1/continue has none)."""
        unrated_warning(engine, ids, ratings, warnings, takes_ratings)
        ratings = profile_ratings(engine, ids, ratings, warnings)
        if events is None:
            ev = None
        elif engine.pipeline:  # the ranker reads the history's times; the rest as its generators do
            ev = pipeline_request_events(engine, events, ids, context, warnings)
        else:
            ev = request_events(engine, events, ids, context, warnings)
        enc = engine.encoder.encode(ids, ratings, ev)
        warnings += enc.warnings(what, truncation=truncation)
        state["metrics"].items(len(ids), len(enc.unknown))
        return enc

    def boost_scores(engine: Engine, items: list[dict[str, Any]], tokens: np.ndarray, b: float) -> None:
        """Explained items' scores s - b log(count + 1), as /v1/recommend returns them; items[i] is
        token tokens[i]. Unscored items (a pipeline's outside its pool) stay unscored."""
        boosted = niche_boost_scores(
            np.array([np.nan if i["score"] is None else i["score"] for i in items], np.float64),
            engine.counts[np.asarray(tokens, np.int64)],
            b,
        )
        for item, s in zip(items, boosted.tolist(), strict=True):
            if item["score"] is not None:
                item["score"] = s

    def name_warning(engine: Engine, req: RecommendRequest | ExplainRequest | RankRequest, items: list[dict[str, Any]], warnings: list[str]) -> None:
        """`name` is read by two-stage pipelines only (others ignore it, with a warning, as they do
        ratings they cannot read); a pipeline says when the name matched nothing it knows."""
        if req.name is None:
            return
        if not engine.pipeline:
            warnings.append(f"name: the {engine.info.family} model does not read playlist names; it was ignored")
        elif not any(NAMES_GENERATOR in (i.get("generators") or []) for i in items):
            warnings.append(f"name {req.name!r}: matched no item or playlist name the pipeline knows; it did not shape the list")

    def short_list(engine: Engine, req: RecommendRequest, got: int) -> str:
        """Why fewer than n items came back: exclusions, or a pipeline's candidate pool."""
        if not engine.pipeline:
            return f"only {got} items could be returned after exclusions (n={req.n})"
        excluded = bool(req.exclude or req.deny or req.allow is not None or (req.exclude_seen and req.history))
        after = ", after exclusions" if excluded else ""
        return f"only {got} items could be returned: the pipeline's candidate pool (what its generators propose{after}) holds {got} (n={req.n})"

    def fell_back(engine: Engine, warnings: list[str]) -> None:
        """An empty history: say how it was answered, and count it (segue_popularity_fallbacks_total)
        on every endpoint that scores one."""
        warnings.append(PIPELINE_EMPTY_WARNING if engine.pipeline else POPULARITY_WARNING)
        state["metrics"].fallback()

    def unrated_warning(
        engine: Engine, ids: list[str], ratings: list[float | None] | None, warnings: list[str], takes_ratings: bool = True
    ) -> None:
        """A model that reads only rated items (Engine.reads_unrated) ignores the unrated ones: say
        so, above all when none is rated and the answer is the same for every such history. The
        advice is one the route can follow: a route without `ratings` points to /v1/recommend."""
        if engine.reads_unrated or not ids:
            return
        unrated = len(ids) if ratings is None else sum(r is None for r in ratings)
        family = engine.info.family
        if unrated == len(ids):
            warnings.append(
                f"history: the {family} model reads only rated items and none of the {len(ids)} is rated: "
                + (
                    "the answer is not personalised (give `ratings`)"
                    if takes_ratings
                    else "the answer is not personalised, and this route takes no ratings (/v1/recommend does)"
                )
            )
        elif unrated:
            warnings.append(f"history: the {family} model reads only rated items; {unrated} unrated item(s) ignored")

    def profile_ratings(
        engine: Engine, ids: list[str], ratings: list[float | None] | None, warnings: list[str]
    ) -> list[float | None] | None:
        """The request's ratings if the model uses them (422 naming each out-of-scale one)."""
        if ratings is None or all(r is None for r in ratings):
            return None
        scale = input_rating_scale(events_view(engine))  # type: ignore[arg-type]  # a pipeline: its event generator's
        if scale is None:
            warnings.append(
                f"ratings: the {engine.info.family} model does not use ratings; they were ignored"
            )
            return None
        low, high = scale
        bad = [
            {
                "type": "value_error",
                "loc": ("body", "ratings", i),
                "msg": f"rating {r:g} of item '{ids[i]}' (history[{i}]) is outside the model's "
                f"rating scale [{low:g}, {high:g}]",
                "input": r,
            }
            for i, r in enumerate(ratings)
            if r is not None and not low <= r <= high
        ]
        if bad:
            raise RequestValidationError(bad[:20])
        given: dict[str, set[float]] = {}
        for i, r in zip(ids, ratings, strict=True):
            if r is not None:
                given.setdefault(i, set()).add(float(r))
        clash = [(i, sorted(v)) for i, v in given.items() if len(v) > 1]
        if clash:  # a profile holds an item once: which rating counts is the family's choice
            shown = "; ".join(f"'{i}': {', '.join(f'{x:g}' for x in v)}" for i, v in clash[:5])
            warnings.append(
                f"ratings: {len(clash)} item(s) rated more than once with different ratings ({shown}); "
                + ("the model holds each item once, with its last rating" if engine.model.profile_set else "the model reads each")
            )
        return ratings

    def known(engine: Engine, ids: list[str], what: str, warnings: list[str]) -> np.ndarray:
        """Tokens of the known ids in an exclusion/allow list (unknown ones are only reported)."""
        tokens, unknown = engine.vocab.encode_external([str(i) for i in ids])
        if unknown:
            warnings.append(
                f"{what}: {len(unknown)} unknown item id(s) ignored: {', '.join(repr(u) for u in unknown[:10])}"
            )
        return tokens[tokens >= N_SPECIAL].astype(np.int64)

    def deprecated_alias(
        req: BaseModel, old: str, response: Response, warnings: list[str]
    ) -> list[str]:
        """The value of `old`'s current name, taken from `old` if the request used that instead.

        A request using the old name is answered as before, with a `Deprecation` header (RFC 9745),
        a `Warning` header and a warning in the body; giving both names is a 422 naming `old`."""
        new = DEPRECATED_FIELDS[old]
        value = req.__dict__[old]  # not getattr: pydantic warns on access to deprecated fields
        if value is None:
            return req.__dict__[new]
        if new in req.model_fields_set:
            raise RequestValidationError(
                [
                    {
                        "type": "value_error",
                        "loc": ("body", old),
                        "msg": f"give `{new}` only: `{old}` is its deprecated old name",
                        "input": value,
                    }
                ]
            )
        note = f"`{old}` is deprecated: send the same list as `{new}`"
        response.headers["Deprecation"] = f"@{DEPRECATION_DATE}"
        response.headers["Warning"] = f'299 - "{note}"'
        warnings.append(note)
        return value

    def ranker_features(engine: Engine, ranked: Ranked, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Two-stage pipelines log the ranker's features of each served item (for retraining)."""
        if ranked.features is None or state["feature_log"] is None:  # no log: spare the 100 x F tolist
            return {}
        return {
            "feature_names": engine.model.state.names,  # type: ignore[attr-defined]
            "features": ranked.features[: len(items)].tolist(),
            "generators": [i.get("generators", []) for i in items],
        }

    def items_out(engine: Engine, ranked: Ranked) -> list[dict[str, Any]]:
        # None fields are left out, as response_model_exclude_none does for the other routes.
        describe = engine.catalogue.describe_known
        out = [
            describe(t, s)
            for t, s in zip(ranked.tokens.tolist(), ranked.scores.tolist(), strict=True)
            if t >= N_SPECIAL
        ]
        if ranked.sources is not None:  # two-stage pipeline: which generators proposed each item
            for item, src in zip(out, ranked.sources, strict=False):
                item["generators"] = src
        mark_features_only(engine, out, [t for t in ranked.tokens.tolist() if t >= N_SPECIAL])
        return out

    def mark_features_only(engine: Engine, items: list[dict[str, Any]], tokens: list[int]) -> None:
        """Items added without retraining say so (`features_only`); items[i] is token tokens[i]."""
        for d, t in zip(items, tokens, strict=True):
            if t in engine.features_only:
                d["features_only"] = True

    # Routes go on the app itself, not through included APIRouters: FastAPI (0.165) wraps an
    # included router in one routing entry without a path, so a request the envelope refuses
    # before routing (413) could not be labelled with its route in /metrics.

    @app.post(
        "/v1/recommend",
        response_model=RecommendResponse,
        response_model_exclude_none=True,
        summary="Rank the catalogue after a history",
    )
    async def recommend(req: RecommendRequest) -> Response:
        # Exact search spreads over the cores by itself, so behind a cheap query (the dot model)
        # it runs right here on the event loop, which is cheaper than the hop to the thread pool
        # and back (measured at 50k items: p50 3.1 -> 2.8 ms, and 16 clients 228 -> 380-490
        # req/s). A graph search or a transformer's forward pass uses one core: those go to the
        # pool so that concurrent requests overlap on the other cores (transformer, 50k, 16
        # clients: 171 req/s, p99 283 ms on the loop; 227 req/s, p99 127 ms in the pool).
        # The answer is encoded here: FastAPI would validate the 100-item body against
        # RecommendResponse again and encode it with json.dumps (0.3 ms). The schema still
        # documents the answer; a test checks answers against it.
        engine = current()  # one engine for the whole request, even if a reload lands meanwhile
        if engine.cheap_on_loop:
            body = recommend_body(engine, req)
        else:
            body = await run_in_threadpool(recommend_body, engine, req)
        return Response(_JSON.encode(body), media_type="application/json")

    def recommend_body(engine: Engine, req: RecommendRequest) -> dict[str, Any]:
        rid = current_request_id()
        warnings: list[str] = []
        enc = encode_ids(engine, req.history, "history", warnings, ratings=req.ratings, events=req, context=req.context)
        history = enc.all_tokens
        exclude = known(engine, req.exclude, "exclude", warnings)
        deny = known(engine, req.deny, "deny", warnings)
        allow = known(engine, req.allow, "allow", warnings) if req.allow is not None else None
        ranked = engine.rank(
            [history],
            req.n,
            exclude_seen=req.exclude_seen,
            exclude=[exclude],
            allow=allow,
            deny=deny,
            context=[req.context],
            ratings=[enc.all_ratings],
            niche_boost=req.niche_boost,
            events=[enc.all_events],
            names=[req.name],
        )[0]
        if ranked.fallback:
            fell_back(engine, warnings)
        items = items_out(engine, ranked)
        name_warning(engine, req, items, warnings)
        if len(items) < req.n:
            warnings.append(short_list(engine, req, len(items)))
        log_request(
            engine,
            "/v1/recommend",
            rid,
            req.model_dump(exclude_none=True),
            {"items": [{"id": i["id"], "score": i["score"]} for i in items]} | ranker_features(engine, ranked, items),
            warnings,
        )
        return envelope(
            engine,
            rid,
            items=items,
            warnings=warnings,
            retrieval="popularity" if ranked.fallback and not engine.pipeline else engine.info.retrieval,
        )

    @app.post(
        "/v1/rank",
        response_model=RankResponse,
        response_model_exclude_none=True,
        summary="Score and rank given candidates after a history, with predicted feedback",
    )
    def rank(req: RankRequest) -> dict[str, Any]:
        engine = current()
        rid = current_request_id()
        warnings: list[str] = []
        enc = encode_ids(engine, req.history, "history", warnings, ratings=req.ratings, events=req, context=req.context)
        cands = known(engine, req.items, "items", warnings)
        uniq, first = np.unique(cands, return_index=True)
        if len(uniq) < len(cands):
            warnings.append(f"items: {len(cands) - len(uniq)} repeated candidate(s) scored once")
        cands = cands[np.sort(first)]
        if len(cands):
            ranked = rank_candidates(
                engine, enc.all_tokens, cands, context=req.context, ratings=enc.all_ratings, events=enc.all_events,
                name=req.name, exclude_seen=req.exclude_seen,
            )  # fmt: skip
        else:
            ranked = None
        items: list[dict[str, Any]] = []
        if ranked is not None:
            if ranked.fallback:
                fell_back(engine, warnings)
            if ranked.in_history:
                warnings.append(
                    f"items: {ranked.in_history} candidate(s) in the history: the pipeline's candidate pools leave "
                    "out the history's items (as /v1/recommend does), so they are listed last, by popularity, "
                    "without a score; send \"exclude_seen\": false to let them in"
                )
            if ranked.outside_pool:
                warnings.append(
                    f"items: {ranked.outside_pool} candidate(s) outside the pipeline's candidate pool "
                    "(no generator proposed them): listed last, by popularity, without a score "
                    "(/v1/recommend with `allow` has the generators propose from the allowed items only, "
                    "which can bring such items into its pool, scored against that pool)"
                )
            for j, (t, s) in enumerate(zip(ranked.tokens.tolist(), ranked.scores.tolist(), strict=True)):
                item = engine.catalogue.describe_known(t, s if np.isfinite(s) else None)  # type: ignore[arg-type]
                if ranked.sources is not None:  # two-stage pipeline: which generators proposed it
                    item["generators"] = ranked.sources[j]
                if ranked.feedback:
                    item["feedback"] = {k: float(v[j]) for k, v in ranked.feedback.items()}
                items.append(item)
            mark_features_only(engine, items, ranked.tokens.tolist())
            name_warning(engine, req, items, warnings)
        outputs: dict[str, Any] = {"items": [{"id": i["id"], "score": i.get("score")} for i in items]}
        if ranked is not None and ranked.features is not None and state["feature_log"] is not None:
            # As /v1/recommend logs them (for retraining); a candidate outside the pool has none.
            outputs |= {
                "feature_names": engine.model.state.names,  # type: ignore[attr-defined]
                "features": [None if f is None else f.tolist() for f in ranked.features],
                "generators": [i.get("generators", []) for i in items],
            }
        log_request(engine, "/v1/rank", rid, req.model_dump(exclude_none=True), outputs, warnings)
        return envelope(engine, rid, items=items, warnings=warnings)

    @app.post(
        "/v1/continue",
        response_model=ContinueResponse,
        response_model_exclude_none=True,
        summary="Continue a playlist from seed items",
    )
    def continue_(req: ContinueRequest, response: Response) -> dict[str, Any]:
        engine = current()
        rid = current_request_id()
        warnings: list[str] = []
        history = deprecated_alias(req, "seed", response, warnings)
        # Generation masks every seed item, even those older than the model's context, so the
        # context cut is no loss worth a warning here.
        enc = encode_ids(engine, history, "history", warnings, truncation=False, takes_ratings=False)
        full = enc.all_tokens
        rng = np.random.default_rng(req.random_seed)
        picks, probs, popular = engine.continue_(
            full.astype(np.int64),
            req.n,
            temperature=req.temperature,
            top_k_=req.top_k,
            greedy=req.greedy,
            rng=rng,
        )
        if popular:
            fell_back(engine, warnings)
        if len(picks) < req.n:
            warnings.append(f"only {len(picks)} items could be continued (the catalogue ran out)")
        items = [
            {**engine.catalogue.describe(t), "probability": p}
            for t, p in zip(picks, probs, strict=True)
        ]
        history_out = [
            engine.catalogue.describe(int(t)) if t >= N_SPECIAL else {"id": s, "name": s}
            for s, t in zip(history, full, strict=True)
        ]
        log_request(
            engine,
            "/v1/continue",
            rid,
            {**req.model_dump(exclude_none=True, exclude={"seed"}), "history": history},
            {"items": [i["id"] for i in items]},
            warnings,
        )
        return envelope(
            engine, rid, history=history_out, seed=history_out, items=items, warnings=warnings
        )

    @app.post(
        "/v1/explain",
        response_model=ExplainResponse,
        response_model_exclude_none=True,
        summary="Leave-one-out explanation of recommendations",
    )
    def explain(req: ExplainRequest) -> dict[str, Any]:
        engine = current()
        rid = current_request_id()
        warnings: list[str] = []
        # The request's ratings, events and context reach the model as /v1/recommend passes them
        # (with the server's clock as `ts` for a time-aware model), so the explained score is the
        # served one.
        enc = encode_ids(engine, req.history, "history", warnings, ratings=req.ratings, events=req, context=req.context)
        allow = known(engine, req.allow, "allow", warnings) if req.allow is not None else None
        if req.items is None:  # the top n /v1/recommend serves for the same body
            ranked = engine.rank(
                [enc.all_tokens],
                req.n,
                exclude_seen=req.exclude_seen,
                exclude=[known(engine, req.exclude, "exclude", warnings)],
                allow=allow,
                deny=known(engine, req.deny, "deny", warnings),
                context=[req.context],
                ratings=[enc.all_ratings],
                niche_boost=req.niche_boost,
                events=[enc.all_events],
                names=[req.name],
            )[0]
            targets = ranked.tokens[ranked.tokens >= N_SPECIAL]
        else:
            targets = known(engine, req.items, "items", warnings)
        if not engine.pipeline:
            name_warning(engine, req, [], warnings)  # a name the model does not read, as /v1/recommend says
        if len(enc.tokens) == 0:
            fell_back(engine, warnings)  # scored as /v1/recommend's empty history, and counted
            warnings.append("empty history: nothing to explain")
        out, surprising = explain_profile(
            engine, enc.tokens, targets, top=req.top, history_ids=enc.external_ids, ratings=enc.ratings, offset=enc.truncated,
            events=enc.events, context=req.context, name=req.name, exclude_seen=req.exclude_seen,
            allow=allow if engine.pipeline else None,  # (an allow list shapes a pipeline's pools only)
        )
        if req.niche_boost:
            boost_scores(engine, out, targets, req.niche_boost)
        body: dict[str, Any] = {"items": out, "warnings": warnings}
        if surprising is not None:
            body["surprising"] = surprising
        log_request(
            engine,
            "/v1/explain",
            rid,
            req.model_dump(exclude_none=True),
            {"items": [i["id"] for i in out]},
            warnings,
        )
        return envelope(engine, rid, **body)

    @app.get(
        "/v1/items/search",
        response_model=ItemsResponse,
        response_model_exclude_none=True,
        summary="Search the catalogue by name, artist or album",
    )
    def search(query: Annotated[SearchQuery, Query()]) -> dict[str, Any]:
        engine = current()
        tokens = engine.catalogue.search(query.q, query.limit)
        return envelope(
            engine,
            current_request_id(),
            items=[engine.catalogue.describe(t) for t in tokens],
            warnings=[],
        )

    @app.get(
        "/v1/items/{item_id:path}/similar",
        response_model=ItemsResponse,
        response_model_exclude_none=True,
        summary="Items the model ranks highest after this one",
    )
    def similar(
        item_id: Annotated[str, PathParam(min_length=1, max_length=512)],
        query: Annotated[SimilarQuery, Query()],
    ) -> dict[str, Any]:
        n = query.n
        engine = current()
        token = engine.encoder.encode_one(item_id)
        if token is None:
            raise HTTPException(
                404, detail=f"unknown item id '{item_id}' (not in the model's vocabulary)"
            )
        ranked = engine.rank([np.array([token])], n)[0]
        return envelope(engine, current_request_id(), items=items_out(engine, ranked), warnings=[])

    @app.get("/healthz", summary="Liveness and the model being served")
    def healthz() -> dict[str, Any]:
        engine = current()
        return {
            "status": "ok",
            "model": engine.info.public(),
            "n_items": engine.info.n_items,
            "retrieval": engine.info.retrieval,
            "context_length": engine.encoder.context_length,
            "has_names": engine.catalogue.has_names,
            # [low, high] of the ratings the model takes with a profile; null: it uses none.
            "rating_scale": None if (scale := input_rating_scale(events_view(engine))) is None else list(scale),  # type: ignore[arg-type]
            # what the model reads per history event (feedback kinds, context names, time); null: none
            "events": events_description(engine),
            "admin": admin_key is not None,
        }

    @app.get("/readyz", summary="Readiness: 200 once the model is loaded and warmed up, else 503")
    def readyz() -> JSONResponse:
        code, body = readiness(state["ready"], current())
        return JSONResponse(body, status_code=code)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def metrics() -> str:
        return state["metrics"].render(DRIFT_FAMILIES) + loading_metrics(False)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (WEB_DIR / "index.html").read_text(encoding="utf-8")

    if admin_key:
        # The body is read by the handler, after the key check: FastAPI validates a body parameter
        # before the handler runs, which told a caller without a key the schema (a 422 naming a
        # misspelt field) where any other request got 401. The schema is still documented.
        reload_body = {"content": {"application/json": {"schema": ReloadRequest.model_json_schema()}}, "required": False}

        @app.post(
            "/admin/reload",
            summary="Swap to another model folder without dropping requests",
            openapi_extra={"requestBody": reload_body},
        )
        async def reload(
            request: Request,
            x_api_key: Annotated[str | None, Header()] = None,
            authorization: Annotated[str | None, Header()] = None,
        ) -> dict[str, Any]:
            refusal = admin_refusal(x_api_key, authorization, admin_key)
            if refusal is not None:
                raise HTTPException(refusal[0], detail=refusal[1])
            req = reload_request(await request.body())
            return await run_in_threadpool(reload_to, req)

        def reload_request(body: bytes) -> ReloadRequest:
            """The reload body (none or null: reload the current folder), or a 422 naming the field."""
            if body.strip() in (b"", b"null"):
                return ReloadRequest()
            try:  # parsed as FastAPI parses the other bodies (json.loads, then the model)
                data = json.loads(body)
            except (ValueError, RecursionError) as e:
                raise RequestValidationError([json_error(e)]) from None
            try:
                return ReloadRequest.model_validate(data)
            except ValidationError as e:
                raise RequestValidationError(
                    [{**err, "loc": ("body", *err["loc"])} for err in e.errors()]
                ) from None

        def reload_to(req: ReloadRequest) -> dict[str, Any]:
            with reload_lock:
                old = current()
                folder = Path(req.model) if req.model else Path(old.info.folder)
                try:
                    new = Engine.load(folder, store=req.store, index_config=state["index_config"])
                except Exception as e:  # noqa: BLE001 (any failure leaves the old model serving)
                    raise HTTPException(422, detail=f"could not load {folder}: {e}") from None
                warm_up(new)  # warmed before the swap: readiness never drops during a reload
                state["engine"] = new  # one reference swap: in-flight requests keep `old`
                state["metrics"].reloaded()
                state["metrics"].serving(new)
                # As at start-up. Garbage cycles left by the load are collected first, or they would
                # be frozen for good; the old engine itself is freed by reference counting.
                gc.collect()
                gc.freeze()
            log.info("reloaded %s -> %s", old.info.version, new.info.version)
            return {
                "previous": old.info.public(),
                "model": new.info.public(),
                "folder": str(folder),
            }

    elif use_env_admin_key:  # the caller (a supervisor's worker) that took the key out says why itself
        log.warning("%s is not set: admin routes (/admin/reload) are not mounted", ADMIN_KEY_ENV)

    app.add_middleware(_Envelope, state=state, routes=app.router.routes)
    if access_log:
        app.add_middleware(AccessLog)  # outermost: its latency and status cover everything
    return app
