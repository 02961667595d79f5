"""Schemathesis fuzzing of every operation in the served OpenAPI schema, against a real server.

Each operation gets EXAMPLES requests that fit its schema and EXAMPLES that do not (wrong types,
out-of-range numbers, missing or extra fields, odd strings); the admin route gets both sets once
without and once with the API key. No answer may be a 5xx: bad input is the client's error.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from segue.serving.app import create_app
from segue.serving.cli import serve_in_thread
from servinghelp import dot_folder, named_store

ADMIN_KEY = "fuzz-admin-key"
EXAMPLES = 250  # per operation, mode and key setting


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root: Path = tmp_path_factory.mktemp("fuzz")
    store = named_store(root / "store.duckdb", n_items=30, n_seq=60)
    folder = dot_folder(store, root / "dot", dim=8)
    # The feature log is on: it writes every request's inputs, another place odd values could fail.
    app = create_app(folder, store=store, feature_log=root / "flog", admin_key=ADMIN_KEY)
    with serve_in_thread(app) as running:
        yield running


def fuzz(op, mode: GenerationMode, url: str, session: requests.Session, headers: dict | None) -> list:
    """(status, case, body text) of EXAMPLES generated requests to one operation."""
    out: list = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests on every run
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case) -> None:
        r = case.call(base_url=url, session=session, headers=headers, timeout=60)
        out.append((r.status_code, case, r.text if r.status_code >= 500 else ""))

    # Nothing to break (GET /healthz has no parameters): no negative request exists.
    with contextlib.suppress(Unsatisfiable):
        run()
    return out


@pytest.mark.slow
def test_no_generated_request_gets_a_5xx(server) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {"POST /v1/recommend", "POST /v1/rank", "POST /v1/continue", "POST /v1/explain", "POST /admin/reload",
            "GET /v1/items/search", "GET /v1/items/{item_id}/similar", "GET /healthz",
            "GET /metrics"} <= labels, labels
    session = requests.Session()
    statuses: Counter[int] = Counter()
    sent: Counter[tuple[str, int]] = Counter()
    took: Counter[str] = Counter()
    failures: list[str] = []
    t0 = time.perf_counter()
    for op in operations:
        label = f"{op.method.upper()} {op.path}"
        keys = [None, {"X-API-Key": ADMIN_KEY}] if op.path.startswith("/admin") else [None]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for headers in keys:
                t1 = time.perf_counter()
                for status, case, text in fuzz(op, mode, server.url, session, headers):
                    statuses[status] += 1
                    sent[label, status] += 1
                    if status >= 500 and len(failures) < 20:
                        failures.append(f"{status} {case.as_curl_command()} -> {text[:300]}")
                took[label] += time.perf_counter() - t1
    seconds = time.perf_counter() - t0
    total = sum(statuses.values())
    print(f"\nfuzz: {total} requests in {seconds:.1f} s; by status {dict(sorted(statuses.items()))}")
    for (label, status), n in sorted(sent.items()):
        print(f"  {label} {status}: {n}")
    print("  seconds by operation:", {k: round(v, 1) for k, v in took.items()})
    assert failures == []
    assert total >= 3000
    # The fuzzer reached the model, and the validators, and (with the key) the admin route itself.
    assert statuses[200] > 300 and statuses[422] > 300 and statuses[401] > 0
