"""The web page's faults from the s12 web walk (F1-F9), in headless Chromium against a real server.

A slow or stuck server is a request the test holds in the browser's network layer (page.route, let
go with route.continue_ to the real server, or never): the page sees what it sees of a server
that has taken the request and not answered yet."""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from segue.serving.app import WEB_DIR, create_app
from segue.serving.cli import serve_in_thread
from segue.serving.lifecycle import DeferredApp
from servinghelp import dot_folder, named_store
from test_serving_browser import CHROMIUM, LAUNCH_ARGS, opened_page
from test_web_page_walk import add_results

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def dot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a dot model folder, its named store)."""
    root = tmp_path_factory.mktemp("fweb-dot")
    store = named_store(root / "store.duckdb")
    return dot_folder(store, root / "dot"), store


def hold(page: Any, pattern: str) -> list[Any]:
    """Requests matching `pattern` from now on wait, unanswered, in the returned list."""
    held: list[Any] = []
    page.route(pattern, lambda route: held.append(route))
    return held


def test_a_call_without_an_answer_says_working_then_times_out_naming_the_call(dot) -> None:
    """F1: a server that took the request and never answered left the button greyed, silently."""
    from playwright.sync_api import expect

    with opened_page(*dot) as (_, page):
        add_results(page, "Basalt", 2)
        page.evaluate("requestTimeoutMs = 2000")
        hold(page, "**/v1/continue")
        page.click("#continue-btn")
        expect(page.locator("#busy")).to_contain_text("working… waiting for /v1/continue")
        expect(page.locator("#continue-btn")).to_be_disabled()
        expect(page.locator("#warnings")).to_have_text(
            "error: /v1/continue: the server did not answer within 2 s (busy or stuck); try again"
        )
        expect(page.locator("#busy")).to_have_text("")
        expect(page.locator("#continue-btn")).to_be_enabled()
        hold(page, "**/v1/items/search*")
        page.fill("#q", "Song")
        page.press("#q", "Enter")
        expect(page.locator("#search-busy")).to_contain_text(
            "working… waiting for /v1/items/search"
        )
        expect(page.locator("#search-error")).to_have_text(
            "error: /v1/items/search: the server did not answer within 2 s (busy or stuck); try again"
        )
        # The server answering again: the next click is answered.
        page.unroute_all(behavior="ignoreErrors")
        page.click("#continue-btn")
        expect(page.locator("#continuation li").first).to_be_visible()
        assert page.locator("#warnings").inner_text() == ""


def test_an_edit_during_a_request_drops_its_answer_and_marks_a_shown_list_stale(dot) -> None:
    """F8: removing a profile item while /v1/recommend ran re-enabled the button mid-request, and
    the late answer was shown explained by the removed item."""
    from playwright.sync_api import expect

    with opened_page(*dot) as (_, page):
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.select_option("#mode", "profile")
        add_results(page, "Basalt", 3)
        removed = page.locator("#seeds li .name").first.inner_text()
        held = hold(page, "**/v1/recommend")
        page.click("#recommend-btn")
        expect(page.locator("#recommend-btn")).to_be_disabled()
        page.locator("#seeds li button.remove").first.click()
        # The request is dropped with the edit: nothing under way, the button asks anew.
        expect(page.locator("#recommend-btn")).to_be_enabled()
        page.unroute_all(behavior="ignoreErrors")
        for route in held:  # the old request reaches the server late; its answer must not show
            with contextlib.suppress(Exception):  # the page has aborted it already
                route.continue_()
        page.wait_for_timeout(700)
        expect(page.locator("#recommendations li")).to_have_count(0)
        assert page.locator("#warnings").inner_text() == ""
        expect(page.locator("#busy")).to_have_text("")
        page.click("#recommend-btn")
        rows = page.locator("#recommendations li")
        expect(rows.first).to_be_visible()
        assert removed not in page.locator("#recommendations .why b").all_inner_texts()
        # A shown list answers the profile beside it: after an edit it is dimmed, with a note.
        expect(page.locator("#stale-profile")).to_be_hidden()
        page.fill("#q", "Echo")
        page.click("#search-btn")
        page.locator("#results li button.add").first.click()
        expect(page.locator("#recommendations")).to_have_class(re.compile(r"\bstale\b"))
        expect(page.locator("#stale-profile")).to_be_visible()
        page.click("#recommend-btn")
        expect(page.locator("#stale-profile")).to_be_hidden()
        expect(page.locator("#recommendations")).not_to_have_class(re.compile(r"\bstale\b"))
        assert errors == []


def test_keyboard_removal_keeps_focus_in_the_list_and_enter_in_a_box_asks(dot) -> None:
    """F4: a removal dropped focus to <body>; F7: Enter in Items / Niche boost did nothing."""
    from playwright.sync_api import expect

    with opened_page(*dot) as (_, page):
        ids = add_results(page, "Basalt", 3)
        focused = "() => [document.activeElement.className, document.activeElement.closest('li')?.dataset.id ?? null]"
        page.locator("#seeds li button.remove").nth(1).focus()
        page.keyboard.press("Enter")
        expect(page.locator("#seeds li")).to_have_count(2)
        assert page.evaluate(focused) == ["remove", ids[2]]  # the next row's
        page.keyboard.press("Enter")
        expect(page.locator("#seeds li")).to_have_count(1)
        assert page.evaluate(focused) == ["remove", ids[0]]  # the last row went: the one before
        page.keyboard.press("Enter")
        expect(page.locator("#seeds li")).to_have_count(0)
        assert page.evaluate("document.activeElement.id") == "q"
        add_results(page, "Basalt", 2)
        page.fill("#n", "3")
        page.press("#n", "Enter")
        expect(page.locator("#continuation li")).to_have_count(3)
        page.select_option("#mode", "profile")
        page.fill("#rec-n", "4")
        page.press("#rec-n", "Enter")
        expect(page.locator("#recommendations li")).to_have_count(4)
        page.fill("#niche", "2")
        with page.expect_request("**/v1/recommend") as req:
            page.press("#niche", "Enter")
        assert req.value.post_data_json["niche_boost"] == 2
        # Enter with a refused box says so, as the button does.
        page.fill("#rec-n", "0")
        page.press("#rec-n", "Enter")
        expect(page.locator("#warnings")).to_have_text(
            "error: Items is 0: expected a whole number from 1 to 100"
        )


def test_an_ids_only_model_says_to_search_by_id(dot, tmp_path) -> None:
    """F5: a model served without names answered "no matches" to a title, with no hint why."""
    from playwright.sync_api import expect

    bare = tmp_path / "bare"  # the model without its items table: ids only, as a pipeline folder
    shutil.copytree(dot[0], bare)
    (bare / "items.parquet").unlink()
    with opened_page(bare, None) as (url, page):
        import httpx

        assert httpx.get(url + "/healthz").json()["has_names"] is False
        expect(page.locator("#search-hint")).to_have_text(
            "This model has no item names (served without its store): search by item id, or part of one."
        )
        assert (
            page.locator("#q").get_attribute("placeholder") == "item id (this model has no names)"
        )
        page.fill("#q", "track:1")
        page.press("#q", "Enter")
        expect(page.locator("#results li").first).to_contain_text("track:1")
    with opened_page(*dot) as (_, page):  # a named model: no hint
        expect(page.locator("#model")).to_contain_text("dot model")
        expect(page.locator("#search-hint")).to_be_hidden()
        assert page.locator("#q").get_attribute("placeholder") == "track, artist or album"


def test_a_page_load_requests_no_favicon_and_logs_no_error(dot) -> None:
    """F2: every load logged GET /favicon.ico 404 as a console error."""
    from playwright.sync_api import expect, sync_playwright

    app = create_app(dot[0], store=dot[1], use_env_admin_key=False)
    with serve_in_thread(app) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page()
            said: list[str] = []
            asked: list[str] = []
            page.on(
                "console",
                lambda m: (
                    said.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None
                ),
            )
            page.on("request", lambda r: asked.append(r.url))
            page.goto(server.url + "/")
            expect(page.locator("#model")).to_contain_text("dot model")
            page.wait_for_timeout(500)
            assert said == [] and not [u for u in asked if "favicon" in u], (said, asked)
        finally:
            browser.close()


def test_the_page_opened_while_the_model_loads_waits_and_comes_up_by_itself(dot) -> None:
    """F3 (the page's part): opened while /healthz says "loading", the page said "server
    unavailable" and never recovered. It now says the model is loading, keeps its buttons off,
    and asks /healthz again until the model is there. (The page is served here as the loading
    server should serve it; that the loading server answers / with it is the server's part.)"""
    from playwright.sync_api import expect, sync_playwright

    go = threading.Event()

    def build() -> Any:
        go.wait(30)
        return create_app(dot[0], store=dot[1], use_env_admin_key=False)

    html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    with serve_in_thread(DeferredApp(build)) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page()
            page.route(
                server.url + "/",
                lambda route: route.fulfill(status=200, content_type="text/html", body=html),
            )
            page.goto(server.url + "/")
            expect(page.locator("#model")).to_have_text("the model is loading…")
            expect(page.locator("#search-btn")).to_be_disabled()
            go.set()
            expect(page.locator("#model")).to_contain_text("dot model", timeout=15000)
            add_results(page, "Basalt", 1)
            page.click("#continue-btn")
            expect(page.locator("#continuation li").first).to_be_visible()
        finally:
            go.set()
            browser.close()


def test_a_warning_about_a_field_the_page_never_sends_is_one_quiet_note(dot) -> None:
    """F6: a served pipeline's "timestamps: not given ..." warning, which no box on the page can
    answer, was shown in orange on every answer. Other warnings stay on the warning line."""
    from playwright.sync_api import expect

    standing = (
        "timestamps: not given; the pipeline's ranker reads the time of the history's last event "
        "(pop_window_log, age_at_query_days), as training and evaluation did"
    )
    with opened_page(*dot) as (_, page):
        expect(page.locator("#model")).to_contain_text("dot model")
        for _ in range(2):  # as two answers in a row would carry it
            page.evaluate(
                "(w) => showWarnings([w, 'history: 1 unknown item id(s) ignored'], [w])", standing
            )
        expect(page.locator("#warnings")).to_have_text("history: 1 unknown item id(s) ignored")
        notes = page.locator("#model-notes > div")
        expect(notes).to_have_count(1)
        expect(notes).to_have_text(
            f"About this model: {standing} (the page sends no such field, so this holds for every answer here)."
        )
        color = page.locator("#model-notes").evaluate("(el) => getComputedStyle(el).color")
        assert color == "rgb(107, 114, 128)"  # the muted grey of notes, not the warnings' orange


def test_a_reason_never_reads_plus_zero(dot) -> None:
    """F9: a history item whose impact rounded to 0.000 was listed as a reason "(+0.000)"."""
    with opened_page(*dot) as (_, page):
        why = "(cs) => whyLine(cs, 'none').textContent"
        said = page.evaluate(
            why, [{"name": "Velvet", "impact": 1.055}, {"name": "Silver", "impact": 0.0001}]
        )
        assert said == "because of Velvet (+1.055)"  # next to +1.055, 0.0001 is no reason
        # A model scoring on a small scale: its reasons keep enough digits not to read as 0.
        said = page.evaluate(
            why, [{"name": "A", "impact": 0.00031}, {"name": "B", "impact": 0.000123}]
        )
        assert said == "because of A (+0.00031), B (+0.00012)"
        assert (
            page.evaluate(why, [{"name": "A", "impact": 0.0}, {"name": "B", "impact": -0.2}])
            == "none"
        )
        said = page.evaluate(
            why, [{"name": "P", "impact": None, "pool": "leaves"}, {"name": "A", "impact": 0.5}]
        )
        assert said == "because of P (proposes it), A (+0.500)"


@pytest.fixture(scope="module")
def timed_pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a two-stage pipeline whose ranker reads the history's last event time, its store)."""
    from rankhelp import feedback_store
    from segue.data.arrays import SplitData
    from segue.data.store import Store
    from segue.models.pipeline import PipelineConfig, PipelineRecommender

    root = tmp_path_factory.mktemp("fweb-pipe")
    store = feedback_store(root / "store.duckdb")
    cfg = PipelineConfig.from_dict(
        {
            "generators": [
                {"name": "pop", "family": "popularity", "n": 20},
                {"name": "knn", "family": "itemknn", "n": 20},
            ],
            "name_candidates": 0,
            "ranker": {"n_estimators": 10, "early_stopping_rounds": 5},
        }
    )
    with Store.open(store) as s:
        model = PipelineRecommender(cfg).fit(SplitData.load(s, "loo"))
    return model.save(root / "pipe"), store


def test_a_served_pipelines_time_warning_is_said_once_as_a_note(timed_pipeline) -> None:
    """F6 with the real server: the pipeline's "timestamps: not given" came on every answer."""
    from playwright.sync_api import expect

    with opened_page(*timed_pipeline) as (_, page):
        expect(page.locator("#model")).to_contain_text("pipeline model")
        ids = page.evaluate(
            "() => api('/v1/recommend', {history: [], n: 3}).then((r) => r.items.map((i) => i.id))"
        )
        page.evaluate(
            "(ids) => { for (const id of ids) seeds.push({id, name: id}); renderSeeds(); }", ids
        )
        notes = page.locator("#model-notes > div")
        for mode, button, ol in (
            ("playlist", "#continue-btn", "#continuation"),
            ("playlist", "#continue-btn", "#continuation"),
            ("profile", "#recommend-btn", "#recommendations"),
        ):
            page.select_option("#mode", mode)
            with page.expect_response("**/v1/explain") as answer:
                page.click(button)
            assert any(
                w.startswith("timestamps: not given") for w in answer.value.json()["warnings"]
            )
            expect(page.locator(f"{ol} li").first).to_be_visible()
            assert "timestamps" not in page.locator("#warnings").inner_text()
            expect(notes).to_have_count(1)
            expect(notes).to_contain_text(
                "About this model: timestamps: not given; the pipeline's ranker reads"
            )


def test_enter_in_a_rating_box_asks_and_a_rating_typed_mid_request_drops_it(tmp_path) -> None:
    """F7 (rating boxes): Enter there did nothing; F8: a rating changed while /v1/recommend ran
    let the answer for the old ratings show."""
    from playwright.sync_api import expect

    from test_serving_profiles import fit_biasedmf, rated_store

    store = rated_store(tmp_path / "store.duckdb")
    with opened_page(fit_biasedmf(store, tmp_path / "bmf"), store) as (_, page):
        page.select_option("#mode", "profile")
        add_results(page, "Mecha", 2)
        box = page.locator("#seeds li input.rating").first
        box.fill("4")
        with page.expect_request("**/v1/recommend") as req:
            box.press("Enter")
        assert req.value.post_data_json["ratings"] == [4, None]
        expect(page.locator("#recommendations li").first).to_be_visible()
        held = hold(page, "**/v1/recommend")
        page.click("#recommend-btn")
        expect(page.locator("#recommend-btn")).to_be_disabled()
        box.fill("2")
        expect(page.locator("#recommend-btn")).to_be_enabled()
        expect(page.locator("#recommendations")).to_have_class(re.compile(r"\bstale\b"))
        page.unroute_all(behavior="ignoreErrors")
        for route in held:
            with contextlib.suppress(Exception):  # the page has aborted it already
                route.continue_()
        page.wait_for_timeout(700)
        expect(page.locator("#stale-profile")).to_be_visible()  # still the earlier answer, marked
        with page.expect_request("**/v1/recommend") as req:
            box.press("Enter")
        assert req.value.post_data_json["ratings"] == [2, None]
        expect(page.locator("#stale-profile")).to_be_hidden()
