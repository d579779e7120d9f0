"""Accessibility of the pages (the review in docs/app.md, "Accessibility"): what a keyboard, a screen reader or
Windows' forced colours (High Contrast) get. Browser tests drive Debian's chromium; the others read the HTML."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.web.conftest import (
    READ_TOKEN,
    WebAgent,
    open_queue,
    start_web_agent,
)
from tests.agent.web.test_pages_browser import label_triangles

browser = pytest.mark.browser


@pytest.fixture
def live_tokens(tmp_path: Path) -> Iterator[WebAgent]:
    """The app on a free port, on an agent that requires tokens."""
    wa = start_web_agent(tmp_path, tokens=True, listen=True)
    yield wa
    wa.stop()


def outline(page: Any, selector: str) -> list[str]:
    return list(page.locator(selector).first.evaluate(
        "(e) => { const s = getComputedStyle(e); return [s.outlineStyle, s.outlineWidth]; }"))


@browser
def test_the_focused_tile_is_seen_in_forced_colours(live_web: WebAgent, browser: Any) -> None:
    """Forced colours drop border colours and shadows: the focused Queue tile keeps an outline the others lack;
    the Map's active tool and legend swatches keep a mark of their own."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, forced_colors="active")
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        open_queue(live_web, page, "ana")
        page.keyboard.press("ArrowRight")
        focused, other = outline(page, ".tile.focus"), outline(page, ".tile:not(.focus)")
        assert focused[0] == "solid" and focused != other, (focused, other)
        page.goto(live_web.url + "/map")
        assert outline(page, ".seg button[aria-pressed=true]")[0] == "solid"
        assert outline(page, ".seg button[aria-pressed=false]")[0] == "none"
    finally:
        context.close()


@browser
def test_a_tiles_name_says_not_saved(live_web: WebAgent, page: Any) -> None:
    """A label refused: the tile's caption says "not saved", and so do its accessible name and the Classes
    panel, which copies it (they said "not labelled"). The name begins with what the tile shows."""
    open_queue(live_web, page, "ana")
    tile = page.locator(".tile.focus")
    tid = str(tile.get_attribute("id"))
    num = page.locator(f"#{tid} .num").inner_text()
    assert str(tile.get_attribute("aria-label")).startswith(f"{num} ")
    assert page.evaluate("() => document.querySelector('.tile').tagName") == "DIV"  # role=option, not on <figure>
    page.route("**/api/labels", lambda r: r.fulfill(status=400, content_type="application/json",
                                                    body='{"error": "INVALID_ARGUMENT", "message": "refused"}'))
    page.keyboard.press("1")
    page.wait_for_selector(f"#{tid}.failed")
    assert page.locator(f"#{tid} .badge").inner_text() == "not saved"
    assert str(page.locator(f"#{tid}").get_attribute("aria-label")).endswith(": not saved")
    page.locator(f"#{tid}").click()
    assert "not saved" in page.locator("[data-role=target-name]").inner_text()


@browser
def test_priors_grid_is_summed_up_not_read_out(live_web: WebAgent, page: Any) -> None:
    """The grid is no live region; a short summary in #priors-status follows each new grid."""
    label_triangles(live_web, [2, 5])
    page.goto(f"{live_web.url}/priors?method=knn")
    page.wait_for_selector(".tile.prior")
    assert page.locator("#grid").get_attribute("aria-live") is None
    assert page.locator("#priors-status").get_attribute("aria-live") == "polite"
    page.wait_for_function("() => document.getElementById('priors-status').textContent.startsWith('page 1 of')")
    assert "all classes" in page.inner_text("#priors-status")
    page.click(".class-tabs .tab[data-label=circle]")
    page.wait_for_function("() => document.getElementById('priors-status').textContent.endsWith('class circle')")


@browser
def test_priors_focus_moves_on_after_accept(live_web: WebAgent, page: Any) -> None:
    """Accept by keyboard: the focus goes to the next tile's Accept, not to the page's body."""
    label_triangles(live_web, [2, 5])
    page.goto(f"{live_web.url}/priors?method=knn")
    page.wait_for_selector(".tile.prior")
    second = str(page.locator(".tile.prior").nth(1).get_attribute("data-id"))
    page.locator(".tile.prior button[data-act=accept]").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector(".tile.prior.done")
    assert page.evaluate("() => document.activeElement.tagName") == "BUTTON"
    assert page.evaluate("() => document.activeElement.closest('.tile').dataset.id") == second


@browser
def test_priors_range_error_marks_its_fields(live_web: WebAgent, page: Any) -> None:
    page.goto(f"{live_web.url}/priors?method=knn")
    page.wait_for_selector(".tile.prior")
    page.fill("#min", "80")
    page.fill("#max", "20")
    page.click("#apply")
    assert page.locator("#min").get_attribute("aria-invalid") == "true"
    assert page.locator("#max").get_attribute("aria-describedby") == "range-error"
    assert page.locator("#range-error").get_attribute("role") == "alert"
    assert "0 ≤ from ≤ to ≤ 100" in page.inner_text("#range-error")
    page.fill("#min", "10")
    page.click("#apply")
    assert page.locator("#min").get_attribute("aria-invalid") is None
    assert page.locator("#range-error").is_hidden()


@browser
def test_prior_method_loads_only_when_committed(live_web: WebAgent, page: Any) -> None:
    """ArrowDown on the closed "Prior method" box loads nothing; Enter loads the method shown."""
    page.goto(f"{live_web.url}/priors?method=knn")
    page.wait_for_selector(".tile.prior")
    if page.locator("#method option").count() < 2:
        pytest.skip("one prior method only")
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/priors?" in r.url else None)
    page.focus("#method")
    page.keyboard.press("ArrowDown")
    page.wait_for_timeout(600)
    assert asked == []
    chosen = page.input_value("#method")
    page.keyboard.press("Enter")
    page.wait_for_function("(m) => location.search.includes('method=' + m)", arg=chosen)
    assert asked and f"method={chosen}" in asked[0]


@browser
def test_a_wrong_token_is_announced_and_tied_to_the_token_field(live_tokens: WebAgent, page: Any) -> None:
    page.goto(live_tokens.url + "/login")
    page.fill("input[name=name]", "ana")
    page.fill("input[name=token]", READ_TOKEN[:-1] + "x")
    page.click("button[type=submit]")
    page.wait_for_selector("#login-error")
    assert page.locator("#login-error").get_attribute("role") == "alert"
    token = page.locator("input[name=token]")
    assert token.get_attribute("aria-invalid") == "true"
    assert token.get_attribute("aria-describedby") == "login-error"
    assert page.locator("input[name=name]").get_attribute("aria-invalid") is None
    assert page.evaluate("() => document.activeElement.name") == "token"


def test_a_bad_name_is_tied_to_the_name_field(token_web_agent: WebAgent) -> None:
    html = token_web_agent.client().post("/login", data={"name": "x" * 200, "token": READ_TOKEN}).text
    name = re.search(r'<input name="name"[^>]*>', html)
    token = re.search(r'<input name="token"[^>]*>', html)
    assert name and 'aria-invalid="true"' in name.group(0) and "autofocus" in name.group(0)
    assert token and "aria-invalid" not in token.group(0)


def test_an_unknown_address_answers_the_apps_error_page(web_agent: WebAgent) -> None:
    c = web_agent.client()
    r = c.get("/nope")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert '<html lang="en">' in r.text and "<title>404 NOT_FOUND" in r.text and 'id="back"' in r.text
    assert "/nope" in r.text
    api = c.get("/api/nope")  # an API client keeps its JSON
    assert api.status_code == 404 and api.headers["content-type"].startswith("application/json")


def test_landmarks_and_scrolling_panels_have_names(web_agent: WebAgent) -> None:
    """Two <nav>s on a page (the top bar's, a pager's) each have a name; the Progress page's Annotators panel,
    whose table scrolls inside it, is a named Tab stop; the new-class field has a name besides its placeholder."""
    c = web_agent.client()
    c.cookies.set("shortlist_user", "ana")
    assert c.post("/api/queue/select", json={"strategy": "random", "budget": 4}).status_code == 200
    for path in ("/queue", "/priors", "/progress", "/map"):
        navs = re.findall(r"<nav[^>]*>", c.get(path).text)
        assert navs and all("aria-label=" in n for n in navs), (path, navs)
    progress = c.get("/progress").text
    assert re.search(r'<section class="panel" tabindex="0" aria-labelledby="annotators-h">', progress)
    assert 'id="annotators-h"' in progress
    queue = c.get("/queue").text
    assert re.search(r'<input name="name" id="new-class-input"[^>]*aria-label="new class"', queue)


# what covers the centre of the focused control (null: nothing, the control itself is on top; "out": off screen)
# (the Queue's grid is left out: taller than the window, it brings its focused tile into view itself)
COVERED = """() => { const e = document.activeElement; if (!e || e === document.body || e.id === 'grid') return null;
  const r = e.getBoundingClientRect(), x = r.x + r.width / 2, y = r.y + r.height / 2;
  if (x < 0 || y < 0 || x >= innerWidth || y >= innerHeight) return 'out ' + (e.textContent || e.name || e.id);
  const top = document.elementFromPoint(x, y);
  return top && (top === e || e.contains(top) || top.contains(e)) ? null
    : `${(e.textContent || e.name || e.id).trim().slice(0, 30)} under ${top ? top.className || top.tagName : '?'}`; }"""


def covered_on_tab(page: Any, presses: int) -> list[str]:
    """What the Tab key reached that was covered (by the fixed Classes bar, the top bar's brand) or off screen."""
    found = []
    for _ in range(presses):
        page.keyboard.press("Tab")
        page.wait_for_timeout(40)  # the page's own scroll (next frame) after the browser's
        if (hit := page.evaluate(COVERED)) is not None:
            found.append(str(hit))
    return found


@browser
def test_tab_never_lands_under_the_class_bar(live_web: WebAgent, browser: Any) -> None:
    """At 200% zoom (640x400 CSS px) the Queue's fixed Classes bar covers no control reached with Tab (Ask the
    agent, the metadata and How many fields were under it)."""
    context = browser.new_context(viewport={"width": 640, "height": 400})
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        open_queue(live_web, page, "ana")
        page.locator("#grid").focus()
        assert covered_on_tab(page, 30) == []
    finally:
        context.close()


@browser
def test_a_top_bar_link_reached_with_tab_is_shown_whole_on_a_phone(live_web: WebAgent, browser: Any) -> None:
    """On a 390 px phone a top-bar link reached with Tab is not half under the brand (docs/app.md)."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.context.add_cookies([{"name": "shortlist_user", "value": "ana", "url": live_web.url}])
        for path in ("/progress", "/map"):
            page.goto(live_web.url + path)
            page.wait_for_load_state("networkidle")
            for _ in range(5):
                page.keyboard.press("Tab")
                page.wait_for_timeout(40)  # app.js scrolls the row on the next frame
                # a link of the row: its left edge right of the brand's (the row scrolled it in, not under it)
                hidden = page.evaluate("""() => { const e = document.activeElement;
                  if (!e.closest('.nav')) return null;
                  const left = e.getBoundingClientRect().left;
                  return left < document.querySelector('.brand').getBoundingClientRect().right
                    ? `${e.textContent} at x=${Math.round(left)}` : null; }""")
                assert hidden is None, (path, hidden)
    finally:
        context.close()


@browser
def test_a_key_with_no_class_says_so(live_web: WebAgent, page: Any) -> None:
    """Key 3 with two classes (circle, square): a notice, not silence; nothing is labelled."""
    open_queue(live_web, page, "ana")
    before = live_web.labels()
    page.keyboard.press("3")
    page.wait_for_function("() => document.getElementById('toast').textContent.startsWith('no class on key 3')")
    assert live_web.labels() == before
