"""The web page is served while the model loads (walk s12 web F3): GET / answered the 503's JSON,
so a tab opened early never recovered by itself; now the page comes (it polls /healthz and
says the model is loading) and every API route still answers 503 until the model is there."""

from __future__ import annotations

import threading

import httpx

from segue.serving.cli import serve_in_thread
from segue.serving.lifecycle import DeferredApp


def test_the_page_is_served_while_loading_and_the_api_is_not() -> None:
    release = threading.Event()

    def build():  # never finishes within the test: loading the whole time
        release.wait(30)
        raise RuntimeError("not loaded in this test")

    try:
        with serve_in_thread(DeferredApp(build)) as server, httpx.Client(base_url=server.url, timeout=10) as c:
            r = c.get("/")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "/healthz" in r.text and "<html" in r.text.lower()
            assert c.head("/").status_code == 200
            assert c.post("/").status_code == 503
            assert c.post("/v1/recommend", json={"history": ["a"]}).status_code == 503
            assert c.get("/healthz").json()["loading"] is True
    finally:
        release.set()
