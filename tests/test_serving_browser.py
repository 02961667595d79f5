"""The web page in headless Chromium (Playwright driving Debian's chromium by executable path)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from segue.serving.app import create_app
from segue.serving.cli import serve_in_thread
from servinghelp import dot_folder, named_store
from test_serving_profiles import fit_autoencoder, fit_biasedmf, rated_store

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()), None)
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


@contextmanager
def opened_page(folder: Path, store: Path) -> Iterator[tuple[str, Any]]:
    """The page of a real server of `folder` (names from `store`) in headless Chromium: (the
    server's URL, the Playwright page at /)."""
    from playwright.sync_api import sync_playwright

    app = create_app(folder, store=store, use_env_admin_key=False)
    with serve_in_thread(app) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            yield server.url, page
        finally:
            browser.close()


def test_search_add_two_seeds_continue_shows_new_items(tmp_path) -> None:
    from playwright.sync_api import expect

    store = named_store(tmp_path / "store.duckdb")
    folder = dot_folder(store, tmp_path / "dot")
    with opened_page(folder, store) as (_, page):
        # The run of this model is called after its family: the header names it once.
        expect(page.locator("#model")).to_have_text(re.compile(r"^dot model · version dot-\w+ · \d+ items · exact search$"))
        page.fill("#q", "Basalt")
        page.click("#search-btn")
        results = page.locator("#results li")
        expect(results.first).to_contain_text("Basalt")
        seeds = [results.nth(0).get_attribute("data-id"), results.nth(1).get_attribute("data-id")]
        results.nth(0).locator("button.add").click()
        results.nth(1).locator("button.add").click()
        expect(page.locator("#seeds li")).to_have_count(2)
        page.fill("#n", "5")
        page.click("#continue-btn")
        shown = page.locator("#continuation li")
        expect(shown).to_have_count(5)
        ids = [shown.nth(i).get_attribute("data-id") for i in range(5)]
        assert len(set(ids)) == 5 and not set(ids) & set(seeds)
        assert all(text.strip().startswith(str(i + 1)) for i, text in enumerate(shown.all_inner_texts()))
        expect(shown.first).to_contain_text("Song")  # names, not ids
        expect(shown.first.locator(".why")).not_to_be_empty()  # each item carries its explanation
        # Regenerate at another temperature: still 5 new items.
        page.locator("#temperature").fill("2.5")
        page.click("#continue-btn")
        expect(shown).to_have_count(5)
        again = [shown.nth(i).get_attribute("data-id") for i in range(5)]
        assert not set(again) & set(seeds)
        assert page.locator("#warnings").inner_text() == ""


def _rate_two_mecha_titles(page) -> list[str]:  # noqa: ANN001 (a Playwright page)
    """Profile mode: search "Mecha", add the first two results, rate them 5 and 4; their ids."""
    from playwright.sync_api import expect

    page.fill("#q", "Mecha")
    page.click("#search-btn")
    results = page.locator("#results li")
    expect(results.first).to_contain_text("Mecha Saga")
    ids = [results.nth(i).get_attribute("data-id") for i in range(2)]
    for i in range(2):
        results.nth(i).locator("button.add").click()
    seeds = page.locator("#seeds li")
    expect(seeds).to_have_count(2)
    seeds.nth(0).locator("input.rating").fill("5")
    seeds.nth(1).locator("input.rating").fill("4")
    return ids


def test_profile_mode_rated_items_recommendations_explanations_and_scale(tmp_path) -> None:
    from playwright.sync_api import expect

    store = rated_store(tmp_path / "store.duckdb")
    with opened_page(fit_biasedmf(store, tmp_path / "bmf"), store) as (_, page):
        expect(page.locator("#model")).to_contain_text("biasedmf model")
        page.select_option("#mode", "profile")
        expect(page.locator("#scale")).to_have_text(re.compile(r"from 1 to 5 \(the model's scale\)"))
        expect(page.locator("#continue-btn")).to_be_hidden()
        _rate_two_mecha_titles(page)
        seeds = page.locator("#seeds li")
        page.fill("#rec-n", "5")
        page.click("#recommend-btn")
        shown = page.locator("#recommendations li")
        expect(shown).to_have_count(5)
        # A Mecha fan gets Mecha titles, each with the profile item that raised it.
        expect(shown.first).to_contain_text("Mecha Saga")
        expect(shown.first.locator(".why")).to_contain_text("because of Mecha Saga")
        expect(shown.first).to_contain_text("predicted")
        surprising = page.locator("#surprising li")
        expect(surprising).to_have_count(2)  # both rated items, largest surprise first
        expect(surprising.first).to_contain_text(re.compile(r"you gave [45], the model expected \d\.\d"))
        assert page.locator("#warnings").inner_text() == ""
        # A rating above the scale: the input is marked and the server's refusal is shown.
        first_id = seeds.nth(0).get_attribute("data-id")
        box = seeds.nth(0).locator("input.rating")
        box.fill("9")
        assert box.evaluate("el => el.validity.rangeOverflow")
        page.click("#recommend-btn")
        expect(page.locator("#warnings")).to_have_text(
            f"error: /v1/recommend: ratings[0]: rating 9 of item '{first_id}' (history[0]) is outside the model's rating scale [1, 5]"
        )


def test_profile_mode_shows_the_autoencoders_predicted_ratings_not_its_scores(tmp_path) -> None:
    """The autoencoder ranks by log probabilities: the page shows each recommendation's predicted
    rating on the model's scale (from /v1/explain), not its score."""
    import httpx
    from playwright.sync_api import expect

    store = rated_store(tmp_path / "store.duckdb")
    with opened_page(fit_autoencoder(store, tmp_path / "ae"), store) as (url, page):
        expect(page.locator("#model")).to_contain_text("autoencoder model")
        page.select_option("#mode", "profile")
        ids = _rate_two_mecha_titles(page)
        page.fill("#rec-n", "3")
        page.click("#recommend-btn")
        shown = page.locator("#recommendations li")
        expect(shown).to_have_count(3)
        expect(shown.first).to_contain_text(re.compile(r"predicted [1-5]\.\d"))
        body = {"history": ids, "ratings": [5, 4], "items": [shown.nth(i).get_attribute("data-id") for i in range(3)]}
        want = httpx.post(url + "/v1/explain", json=body).json()["items"]
        for i, item in enumerate(want):
            expect(shown.nth(i)).to_contain_text(f"predicted {item['predicted_rating']:.1f}")
            assert f"{item['score']:.2f}" not in shown.nth(i).inner_text()
        assert page.locator("#warnings").inner_text() == ""


def test_header_names_family_run_and_retrieval_sensibly(tmp_path) -> None:
    store = named_store(tmp_path / "store.duckdb")
    health = {"model": {"family": "transformer", "run_id": "transformer", "version": "v1"}, "n_items": 12101, "retrieval": "hnsw"}
    with opened_page(dot_folder(store, tmp_path / "dot"), store) as (_, page):
        line = page.evaluate("(h) => modelLine(h)", health)
        assert line == "transformer model · version v1 · 12,101 items · HNSW search"
        health["model"]["run_id"] = "beauty-1"
        health["retrieval"] = "score"
        line = page.evaluate("(h) => modelLine(h)", health)
        assert line == "transformer model · run beauty-1 · version v1 · 12,101 items · scored by the model"


def test_api_docs_render_offline_from_this_server(tmp_path) -> None:
    from playwright.sync_api import expect, sync_playwright

    store = named_store(tmp_path / "store.duckdb", n_items=20, n_seq=40)
    app = create_app(dot_folder(store, tmp_path / "dot"), store=store, use_env_admin_key=False)
    with serve_in_thread(app) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page()
            requested: list[str] = []
            failed: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(server.url + "/docs")
            ops = page.locator(".opblock-summary-path")  # Swagger UI: one per operation
            expect(ops.first).to_be_visible(timeout=20_000)
            text = " ".join(ops.all_inner_texts())
            for op in ("/v1/recommend", "/v1/continue", "/v1/explain", "/v1/items/search"):
                assert op in text, (op, text[:500])
            page.wait_for_load_state("networkidle")
        finally:
            browser.close()
    # Everything the page needed came from this server: with Chromium's network closed here, a
    # CDN script would have failed and left the page blank.
    assert requested and all(u.startswith(server.url) or u.startswith("data:") or u.startswith("blob:") for u in requested), requested
    assert failed == []
    assert any(u.endswith("/swagger-ui-bundle.js") for u in requested)
