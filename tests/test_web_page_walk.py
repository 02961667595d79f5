"""The web page's faults from the s10 web walk (F3-F5, F7-F9, F17, F19, F24), in headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from segue.data.sources.base import Chunk, ListSource
from segue.data.store import BuildConfig, build_store
from servinghelp import dot_folder, named_store
from test_serving_browser import CHROMIUM, opened_page
from test_serving_profiles import fit_biasedmf, rated_store

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")

LONG = "x" * 300  # a name without a single space


def long_named_store(path: Path, n_items: int = 30, n_seq: int = 80) -> Path:
    """Playlists over 'Song i' tracks where track:0 is named 300 x's and track:1's artist too."""
    items = pa.table(
        {
            "item_key": [f"track:{i}" for i in range(n_items)],
            "name": [LONG if i == 0 else f"Song {i}" for i in range(n_items)],
            "creator": ["y" * 200 if i == 1 else "Basalt" for i in range(n_items)],
        }
    )
    seq, item, pos = [], [], []
    for s in range(n_seq):
        picks = [(s + k) % n_items for k in range(6)]
        seq += [f"pl{s}"] * len(picks)
        item += [f"track:{i}" for i in picks]
        pos += list(range(len(picks)))
    events = pa.table({"seq_key": seq, "item_key": item, "position": pa.array(pos, pa.int32())})
    return build_store(ListSource([Chunk(events=events, items=items)]), path, BuildConfig(seed=0, splits=[{"kind": "random_sequence"}]))


def add_results(page: Any, query: str, k: int) -> list[str]:
    """Search `query` and add the first k results as seeds; their ids."""
    from playwright.sync_api import expect

    page.fill("#q", query)
    page.click("#search-btn")
    results = page.locator("#results li")
    expect(results.nth(k - 1)).to_be_visible()
    ids = [results.nth(i).get_attribute("data-id") for i in range(k)]
    for i in range(k):
        results.nth(i).locator("button.add").click()
    expect(page.locator("#seeds li")).to_have_count(k)
    return ids


def posts(page: Any) -> list[str]:
    """Paths of the POST requests the page sends from now on (a live list)."""
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url.split("/", 3)[3]) if r.method == "POST" else None)
    return sent


def test_a_failing_search_shows_its_error_and_clears_the_earlier_matches(tmp_path) -> None:
    """F3: a 422 from /v1/items/search was an uncaught rejection, the last query's list stayed."""
    from playwright.sync_api import expect

    store = named_store(tmp_path / "store.duckdb")
    with opened_page(dot_folder(store, tmp_path / "dot"), store) as (_, page):
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.fill("#q", "Song")
        page.click("#search-btn")
        expect(page.locator("#results li").first).to_contain_text("Song")
        page.fill("#q", "a" * 250)
        page.click("#search-btn")
        expect(page.locator("#search-error")).to_have_text(
            "error: /v1/items/search: q: String should have at most 200 characters"
        )
        expect(page.locator("#results li")).to_have_count(0)
        # The next good query clears the error.
        page.fill("#q", "Song 1")
        page.click("#search-btn")
        expect(page.locator("#results li").first).to_contain_text("Song 1")
        expect(page.locator("#search-error")).to_have_text("")
        assert errors == []


def test_long_unbroken_names_stay_inside_their_column(tmp_path) -> None:
    """F4: a 300-character name without spaces ran across the score and the buttons and made the
    page 3228 px wide; it now wraps inside its column (3 lines at most, the whole name as title)."""
    from playwright.sync_api import expect

    store = long_named_store(tmp_path / "store.duckdb")
    with opened_page(dot_folder(store, tmp_path / "dot"), store) as (_, page):
        for k, query in enumerate(("xxxx", "yyyy", "Song 2")):
            page.fill("#q", query)
            page.click("#search-btn")
            page.locator("#results li").first.locator("button.add").click()
            expect(page.locator("#seeds li")).to_have_count(k + 1)
        page.fill("#q", "xxxx")
        page.click("#search-btn")
        page.click("#continue-btn")
        expect(page.locator("#continuation li").first).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        long_rows = page.locator("li[data-id='track:0'], li[data-id='track:1']")
        expect(long_rows).to_have_count(3)  # two seeds and the search result
        for i in range(long_rows.count()):
            row = long_rows.nth(i)
            box = row.bounding_box()
            for part in (".what", "button", "input", ".figure"):
                for j in range(row.locator(part).count()):
                    b = row.locator(part).nth(j).bounding_box()
                    assert b["x"] >= box["x"] - 0.5 and b["x"] + b["width"] <= box["x"] + box["width"] + 0.5, (part, b, box)
            what = row.locator(".what").bounding_box()
            for part in ("button", ".figure"):  # nothing the name could cover
                for j in range(row.locator(part).count()):
                    assert row.locator(part).nth(j).bounding_box()["x"] >= what["x"] + what["width"] - 0.5
        name = page.locator("#seeds li[data-id='track:0'] .name")
        assert name.get_attribute("title") == LONG
        assert name.bounding_box()["height"] < 4 * 22  # cut to 3 lines


def test_items_and_niche_boost_are_refused_beside_their_box_not_replaced(tmp_path) -> None:
    """F5: Items 0 / empty became 10 and an empty Niche boost 0, silently; an error left the
    earlier results on screen."""
    from playwright.sync_api import expect

    store = named_store(tmp_path / "store.duckdb")
    with opened_page(dot_folder(store, tmp_path / "dot"), store) as (_, page):
        add_results(page, "Basalt", 2)
        sent = posts(page)
        page.fill("#n", "3")
        page.click("#continue-btn")
        expect(page.locator("#continuation li")).to_have_count(3)
        warnings = page.locator("#warnings")
        for typed, said in (("0", "is 0"), ("", "is empty"), ("2.5", "is 2.5")):
            sent.clear()
            page.fill("#n", typed)
            page.click("#continue-btn")
            expect(warnings).to_have_text(f"error: Items {said}: expected a whole number from 1 to 100")
            expect(page.locator("#continuation li")).to_have_count(0)  # nothing stale under the error
            expect(page.locator("label:has(#n) + .field-error")).to_have_text("a whole number from 1 to 100")
            assert page.locator("#n").get_attribute("aria-invalid") == "true"
            assert sent == []
        page.fill("#n", "3")
        page.click("#continue-btn")
        expect(page.locator("#continuation li")).to_have_count(3)
        expect(page.locator(".field-error")).to_have_count(0)
        assert page.locator("#n").get_attribute("aria-invalid") is None

        page.select_option("#mode", "profile")
        page.fill("#rec-n", "4")
        page.click("#recommend-btn")
        expect(page.locator("#recommendations li")).to_have_count(4)
        sent.clear()
        page.fill("#rec-n", "")
        page.fill("#niche", "")
        page.click("#recommend-btn")
        expect(warnings).to_have_text(
            "error: Items is empty: expected a whole number from 1 to 100; "
            "Niche boost is empty: expected a number from 0 to 1000"
        )
        expect(page.locator("#recommendations li")).to_have_count(0)
        expect(page.locator(".field-error")).to_have_count(2)
        assert sent == []
        # A niche boost between the old 0.1 steps is a number the API takes: sent as typed.
        page.fill("#rec-n", "4")
        page.fill("#niche", "0.25")
        with page.expect_request("**/v1/recommend") as req:
            page.click("#recommend-btn")
        assert req.value.post_data_json["niche_boost"] == 0.25 and req.value.post_data_json["n"] == 4
        expect(page.locator("#recommendations li")).to_have_count(4)


def test_items_over_100_refused_before_any_call_and_api_errors_name_call_and_field(tmp_path) -> None:
    """F7: Items 150 fetched 150 results, then /v1/explain refused them with a message naming no
    field ("List should have at most 100 items"); 422s shown by the page dropped `loc`."""
    from playwright.sync_api import expect

    store = named_store(tmp_path / "store.duckdb")
    with opened_page(dot_folder(store, tmp_path / "dot"), store) as (_, page):
        add_results(page, "Basalt", 2)
        sent = posts(page)
        page.fill("#n", "150")
        page.click("#continue-btn")
        expect(page.locator("#warnings")).to_have_text("error: Items is 150: expected a whole number from 1 to 100")
        assert sent == []
        page.fill("#n", "100")
        page.click("#continue-btn")
        expect(page.locator("#continuation li").first).to_be_visible()
        assert not page.locator("#warnings").inner_text().startswith("error")
        assert sent == ["v1/continue", "v1/explain"]
        # A 422 from the API names the call and each field.
        detail = [
            {"loc": ["body", "items"], "msg": "List should have at most 100 items after validation, not 150"},
            {"loc": ["body", "ratings", 2], "msg": "bad"},
            {"loc": [], "msg": "whole"},
        ]
        assert page.evaluate("(d) => detailText(d)", detail) == (
            "items: List should have at most 100 items after validation, not 150; ratings[2]: bad; whole"
        )
        said = page.evaluate("() => api('/v1/explain', {history: [], items: Array.from({length: 101}, (_, i) => `track:${i}`)}).catch((e) => e.message)")
        assert said.startswith("/v1/explain: items: List should have at most 100 items"), said


def test_a_rating_the_browser_cannot_parse_is_refused_naming_the_item(tmp_path) -> None:
    """F8: "5e" in a rating box reads as "" in JS and was sent as unrated without a word."""
    from playwright.sync_api import expect

    store = rated_store(tmp_path / "store.duckdb")
    with opened_page(fit_biasedmf(store, tmp_path / "bmf"), store) as (_, page):
        page.select_option("#mode", "profile")
        add_results(page, "Mecha", 2)
        seeds = page.locator("#seeds li")
        name = seeds.nth(1).locator(".name").inner_text()
        seeds.nth(0).locator("input.rating").fill("5")
        box = seeds.nth(1).locator("input.rating")
        box.click()
        box.press_sequentially("5e")
        assert box.evaluate("el => el.validity.badInput && el.value === ''")
        sent = posts(page)
        page.click("#recommend-btn")
        expect(page.locator("#warnings")).to_have_text(f"error: the rating of '{name}' (profile item 2) is not a number")
        expect(seeds.nth(1).locator(".field-error")).to_have_text("not a number")
        assert box.get_attribute("aria-invalid") == "true"
        assert sent == []
        box.fill("4")
        with page.expect_request("**/v1/recommend") as req:
            page.click("#recommend-btn")
        assert req.value.post_data_json["ratings"] == [5, 4]
        expect(page.locator("#recommendations li").first).to_be_visible()
        expect(page.locator(".field-error")).to_have_count(0)
        # An API refusal names the call and the field, and leaves no earlier results on screen.
        first = seeds.nth(0).get_attribute("data-id")
        seeds.nth(0).locator("input.rating").fill("9")
        page.click("#recommend-btn")
        expect(page.locator("#warnings")).to_have_text(
            f"error: /v1/recommend: ratings[0]: rating 9 of item '{first}' (history[0]) is outside the model's rating scale [1, 5]"
        )
        expect(page.locator("#recommendations li")).to_have_count(0)
        expect(page.locator("#surprise-box")).to_be_hidden()


def test_rating_boxes_show_unrated_whole_and_only_for_models_that_read_ratings(tmp_path) -> None:
    """F9: the 64 px box cut its placeholder to "unra"; models without ratings got boxes too."""
    from playwright.sync_api import expect

    store = rated_store(tmp_path / "store.duckdb")
    with opened_page(fit_biasedmf(store, tmp_path / "bmf"), store) as (_, page):
        page.select_option("#mode", "profile")
        add_results(page, "Mecha", 1)
        box = page.locator("#seeds input.rating")
        fits = box.evaluate(
            """(el) => {
                const cs = getComputedStyle(el), s = document.createElement("span");
                s.style.font = cs.font; s.style.whiteSpace = "pre"; s.textContent = el.placeholder;
                document.body.append(s);
                const text = s.getBoundingClientRect().width; s.remove();
                const room = el.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
                return [el.placeholder, text, room];
            }"""
        )
        assert fits[0] == "unrated" and fits[1] + 16 <= fits[2], fits  # 16 px: Chromium's spin buttons
    named = named_store(tmp_path / "named.duckdb")
    with opened_page(dot_folder(named, tmp_path / "dot"), named) as (_, page):
        page.select_option("#mode", "profile")
        expect(page.locator("#scale")).to_contain_text("does not use ratings")
        add_results(page, "Basalt", 2)
        expect(page.locator("#seeds input.rating")).to_have_count(0)
        with page.expect_request("**/v1/recommend") as req:
            page.click("#recommend-btn")
        assert req.value.post_data_json["ratings"] is None
        expect(page.locator("#recommendations li").first).to_be_visible()
        assert page.locator("#warnings").inner_text() == ""


def test_phone_width_is_one_column_without_sideways_scroll(tmp_path) -> None:
    """F17: at 390 px the fixed two-column grid made the page 648 px wide, search cut off."""
    from playwright.sync_api import expect

    store = named_store(tmp_path / "store.duckdb")
    with opened_page(dot_folder(store, tmp_path / "dot"), store) as (_, page):
        page.set_viewport_size({"width": 390, "height": 844})
        add_results(page, "Basalt", 3)
        page.click("#continue-btn")
        expect(page.locator("#continuation li").first).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        search = page.locator("main > div").bounding_box()
        results = page.locator("main > section").bounding_box()
        for b in (search, results, page.locator("header").bounding_box()):
            assert b["x"] >= 0 and b["x"] + b["width"] <= 390, b
        assert results["y"] >= search["y"] + search["height"]  # stacked: search first


def test_greedy_continuation_shows_the_apis_probability_and_says_what_it_is(tmp_path) -> None:
    """F19 (the page's part): each pick's figure is the API's probability, with its meaning as the
    title (it read p=1.000 on every greedy pick, with nothing saying what p is)."""
    import httpx
    from playwright.sync_api import expect

    store = named_store(tmp_path / "store.duckdb")
    with opened_page(dot_folder(store, tmp_path / "dot"), store) as (url, page):
        ids = add_results(page, "Basalt", 2)
        page.fill("#n", "4")
        page.check("#greedy")
        page.click("#continue-btn")
        shown = page.locator("#continuation li")
        expect(shown).to_have_count(4)
        want = httpx.post(url + "/v1/continue", json={"history": ids, "n": 4, "greedy": True}).json()["items"]
        for i, item in enumerate(want):
            figure = shown.nth(i).locator(".figure")
            assert shown.nth(i).get_attribute("data-id") == item["id"]
            expect(figure).to_have_text(f"p={item['probability']:.3f}")
            assert re.search(r"probability of this pick.*temperature 1\.0 \(greedy", figure.get_attribute("title") or "")


def test_each_warning_is_shown_once(tmp_path) -> None:
    """F24: the page joined /v1/recommend's and /v1/explain's warnings, so each came twice."""
    from playwright.sync_api import expect

    store = named_store(tmp_path / "store.duckdb")
    with opened_page(dot_folder(store, tmp_path / "dot"), store) as (_, page):
        add_results(page, "Basalt", 2)
        page.evaluate("() => { seeds.push({id: 'nope', name: 'nope'}); renderSeeds(); }")
        for mode, button, ol in (("playlist", "#continue-btn", "#continuation"), ("profile", "#recommend-btn", "#recommendations")):
            page.select_option("#mode", mode)
            page.click(button)
            expect(page.locator(f"{ol} li").first).to_be_visible()
            text = page.locator("#warnings").inner_text()
            assert text.count("'nope'") == 1, text
