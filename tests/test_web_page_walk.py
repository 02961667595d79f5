"""The web page's faults from the s10 web walk (F4, F9, F17, F19, F24), in headless Chromium."""

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
