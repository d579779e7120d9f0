"""The Queue page for a keyboard-only user (shortcut keys only on the grid, no label for an unseen tile, the
large view as a dialog) and on a touch tablet in portrait (class bar at hand, Skip / Not sure / Undo buttons,
a refresh never moves the tile a tap labels). Defects of a tablet + keyboard walkthrough."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shortlist.v1 import agent_pb2
from tests.agent.web.conftest import WebAgent, device_page, dismissed_dialogs, focused_tile, open_queue

pytestmark = pytest.mark.browser


def _queue(web: WebAgent, page: Any, user: str = "ana", budget: int = 18) -> list[str]:
    """A fresh queue drawn by random, opened signed in as ``user``; the page's tile ids."""
    return open_queue(web, page, user, budget, replace=True)


def _on_screen(page: Any, selector: str) -> bool:
    """At least half of the element inside the window, below the top bar and above a fixed class bar."""
    return bool(page.evaluate("""(sel) => {
      const r = document.querySelector(sel).getBoundingClientRect();
      const lo = document.querySelector('.topbar').getBoundingClientRect().bottom;
      const bar = document.getElementById('class-panel');
      const hi = bar && getComputedStyle(bar).position === 'fixed' ? bar.getBoundingClientRect().top : innerHeight;
      return Math.min(r.bottom, hi) - Math.max(r.top, lo) >= r.height / 2; }""", selector))


@pytest.fixture
def tablet(browser: Any) -> Iterator[Any]:
    """A touch tablet in portrait (800x1280, touch, mobile)."""
    with device_page(browser, 800, 1280, touch=True) as pg:
        yield pg


@pytest.fixture
def zoomed(browser: Any) -> Iterator[Any]:
    """A desktop window at 200% zoom: a 640x400 CSS viewport at device scale 2."""
    with device_page(browser, 640, 400, scale=2) as pg:
        yield pg


def test_shortcut_keys_leave_links_buttons_and_the_ask_form_alone(live_web: WebAgent, page: Any) -> None:
    _queue(live_web, page)
    start = focused_tile(page)
    page.locator("#ask-button").focus()
    asked = dismissed_dialogs(page)
    page.keyboard.press(" ")  # Space on "Ask the agent" presses it (it asks first: the queue is open)
    for _ in range(50):
        if asked:
            break
        page.wait_for_timeout(100)
    assert asked and "open sample" in asked[0]
    page.locator("#ask-button").focus()
    page.keyboard.press("1")  # a class key on a button labels nothing
    page.keyboard.press("?")
    page.wait_for_timeout(500)
    assert page.locator(".tile.labelled, .tile.mark-skip, .tile.mark-unsure").count() == 0
    assert focused_tile(page) == start and start not in live_web.labels()
    page.locator("#skip-button").focus()  # Enter on a button of the class panel: that button, not the large view
    page.keyboard.press("Enter")
    page.wait_for_selector(f'.tile[data-id="{start}"].mark-skip')
    assert page.locator("#lightbox").is_hidden()
    page.locator("nav.nav a", has_text="Progress").focus()
    page.keyboard.press("Enter")  # a link: followed
    page.wait_for_url("**/progress")


def test_a_key_never_labels_a_tile_out_of_sight(live_web: WebAgent, zoomed: Any) -> None:
    page = zoomed
    ids = _queue(live_web, page)
    page.evaluate("() => window.scrollTo(0, 0)")
    far = ids[-1]
    page.locator(f'.tile[data-id="{far}"]').click()  # the focus on the last tile, then scrolled away from it
    page.evaluate("() => { document.activeElement.blur(); window.scrollTo(0, 0); }")
    assert not _on_screen(page, ".tile.focus")
    page.keyboard.press("1")  # not on screen: shown, not labelled
    page.wait_for_function("() => document.getElementById('toast').textContent.includes('off screen')")
    assert _on_screen(page, ".tile.focus") and focused_tile(page) == far
    page.wait_for_timeout(300)
    assert far not in live_web.labels()
    page.keyboard.press("1")  # now seen: labelled
    page.wait_for_selector(f'.tile[data-id="{far}"][data-saved="1"]')
    assert live_web.labels()[far] == "circle"
    # Tab reaching the grid brings its focused tile into view, with a visible ring
    page.evaluate("() => window.scrollTo(0, 0)")
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "grid":
            break
    assert page.evaluate("() => document.activeElement.id") == "grid"
    assert _on_screen(page, ".tile.focus")
    assert page.evaluate("() => getComputedStyle(document.getElementById('grid')).outlineColor") == "rgb(47, 111, 237)"


def test_touch_skip_not_sure_class_and_undo_buttons(live_web: WebAgent, tablet: Any) -> None:
    page = tablet
    ids = _queue(live_web, page)
    page.locator(f'.tile[data-id="{ids[0]}"]').tap()
    # portrait: the classes, Skip / Not sure / Undo are on screen next to the tapped tile, which they name
    assert _on_screen(page, f'.tile[data-id="{ids[0]}"]')
    for sel in ("#classes .class-btn >> nth=0", "#skip-button", "#unsure-button", "#undo-button"):
        box = page.locator(sel).bounding_box()
        assert box and box["y"] + box["height"] <= 1280, sel
    assert ids[0] in page.locator("#target").inner_text()
    page.locator("#skip-button").tap()
    page.wait_for_selector(f'.tile[data-id="{ids[0]}"].mark-skip')
    assert focused_tile(page) == ids[1] and ids[1] in page.locator("#target").inner_text()
    page.locator("#unsure-button").tap()
    page.wait_for_selector(f'.tile[data-id="{ids[1]}"].mark-unsure')
    page.get_by_role("button", name="circle").tap()
    page.wait_for_selector(f'.tile[data-id="{ids[2]}"][data-saved="1"]')
    assert live_web.labels()[ids[2]] == "circle"
    # the next focused tile is on screen, not under the top bar or the class bar
    assert _on_screen(page, ".tile.focus")
    page.locator("#undo-button").tap()  # the same undo as Backspace: the label taken back
    page.wait_for_function(f"() => document.querySelector('.tile[data-id=\"{ids[2]}\"]').dataset.label === ''")
    assert ids[2] not in live_web.labels()
    page.locator("#undo-button").tap()  # then the not sure mark
    page.wait_for_selector(f'.tile[data-id="{ids[1]}"]:not(.mark-unsure)')
    queue = live_web.stub.GetQueue(agent_pb2.GetQueueRequest(name="web"))
    assert dict(queue.marks).get(ids[1], "") == "" and dict(queue.marks).get(ids[0]) == "skip"
    # no sideways scrolling in portrait
    assert page.evaluate("() => document.documentElement.scrollWidth <= innerWidth")


def test_a_refresh_never_moves_the_tile_a_tap_labels(live_web_fast: WebAgent, tablet: Any) -> None:
    web, page = live_web_fast, tablet
    ids = _queue(web, page)
    mine = ids[3]
    page.locator(f'.tile[data-id="{mine}"]').tap()
    web.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id=mine, label="square")], annotator="bob"))
    page.wait_for_selector(f'.tile[data-id="{mine}"][data-label="square"]')
    page.wait_for_timeout(700)  # a couple more refreshes
    assert focused_tile(page) == mine  # the selection stays on the tile the annotator tapped
    assert "square" in page.locator("#target").inner_text()
    page.get_by_role("button", name="circle").tap()  # meant for the tile as it was: refused, bob's label stays
    page.wait_for_function("() => document.getElementById('toast').textContent.includes('meanwhile')")
    page.wait_for_timeout(300)
    labels = web.labels()
    assert labels[mine] == "square"
    assert not [sid for sid in ids if sid != mine and labels.get(sid) == "circle"]


def test_class_buttons_and_the_large_view_dialog(live_web: WebAgent, page: Any) -> None:
    ids = _queue(live_web, page)
    assert page.get_by_role("button", name="circle").count() == 1
    page.locator(f'.tile[data-id="{ids[0]}"]').click()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    assert dialog.get_attribute("aria-modal") == "true" and ids[0] in str(dialog.get_attribute("aria-label"))
    assert page.evaluate("() => document.getElementById('lightbox').contains(document.activeElement)")
    assert page.get_by_role("img", name=ids[0]).count() >= 1
    page.keyboard.press("Escape")
    page.wait_for_selector("#lightbox", state="hidden")
    assert page.evaluate("() => document.activeElement.id") == "grid"
    page.keyboard.press("1")  # the keys work on again
    page.wait_for_selector(f'.tile[data-id="{ids[0]}"][data-saved="1"]')


def test_no_sideways_scrolling_in_portrait_or_at_200_percent(live_web: WebAgent, tablet: Any, zoomed: Any) -> None:
    for page in (tablet, zoomed):
        _queue(live_web, page)
        for path in ("/queue", "/priors", "/progress", "/map"):
            page.goto(live_web.url + path)
            page.wait_for_load_state("networkidle")
            assert page.evaluate("() => document.documentElement.scrollWidth <= innerWidth"), (path, page.viewport_size)


def test_the_top_bar_keeps_one_line_on_a_portrait_tablet(live_web: WebAgent, tablet: Any) -> None:
    _queue(live_web, tablet, user="Dr. Maria Fernández-Oliveira")
    for path in ("/queue", "/priors", "/progress", "/map"):
        tablet.goto(live_web.url + path)
        bar = tablet.locator(".topbar").bounding_box()
        assert bar is not None and bar["height"] <= 48, (path, bar)
        for link in tablet.locator(".topbar a, .topbar button").all():  # nothing wraps onto a second line
            box = link.bounding_box()
            assert box is not None and box["height"] < 40, (path, link.inner_text(), box)


def test_the_map_leaves_room_to_scroll_past_it_on_a_phone(live_web: WebAgent, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    page = context.new_page()
    _queue(live_web, page)
    page.goto(live_web.url + "/map")
    box = page.locator(".map-wrap").bounding_box()
    assert box is not None and box["height"] <= 0.9 * 390 + 1, box  # a finger on the page, not the canvas, scrolls
    context.close()


def test_the_message_before_a_navigation_is_shown_on_the_next_page(live_web: WebAgent, page: Any) -> None:
    _queue(live_web, page)
    page.once("dialog", lambda d: d.accept())  # the open queue's question
    with page.expect_navigation():
        page.click("#ask-button")
    page.wait_for_load_state()
    page.wait_for_function("() => document.getElementById('toast').textContent.includes('samples from random')")
    assert page.url.endswith("/queue")


def test_the_large_view_opened_from_the_page_gives_the_keys_back(live_web: WebAgent, page: Any) -> None:
    ids = _queue(live_web, page)
    page.locator(f'.tile[data-id="{ids[0]}"]').click()
    page.evaluate("() => document.activeElement.blur()")  # the focus on nothing: the page's body
    page.keyboard.press("Enter")
    page.get_by_role("dialog").wait_for()
    page.keyboard.press("Escape")
    page.wait_for_selector("#lightbox", state="hidden")
    page.keyboard.press("ArrowRight")  # not lost on the hidden Close button
    assert focused_tile(page) == ids[1]



def test_a_class_button_never_labels_a_tile_out_of_sight(live_web: WebAgent, phone: Any) -> None:
    """On a phone the focused tile is brought into view on load; a class button (like a key) pressed while the
    focused tile is off screen shows it first instead of labelling an image the annotator has not seen."""
    page = phone
    ids = _queue(live_web, page, user="sam", budget=30)
    start = focused_tile(page)
    assert ids.index(start) > 4  # this name's focus starts far down the page (queue.js's hash)
    assert _on_screen(page, ".tile.focus")  # shown on load
    page.evaluate("() => window.scrollTo(0, 0)")
    page.wait_for_timeout(200)
    assert not _on_screen(page, ".tile.focus")
    page.get_by_role("button", name="circle").tap()  # off screen: shown, not labelled
    page.wait_for_function("() => document.getElementById('toast').textContent.includes('off screen')")
    assert _on_screen(page, ".tile.focus") and focused_tile(page) == start
    page.evaluate("() => window.scrollTo(0, 0)")
    page.wait_for_timeout(200)
    page.locator("#skip-button").tap()  # Skip likewise
    page.wait_for_timeout(500)
    assert focused_tile(page) == start and start not in live_web.labels()
    assert not dict(live_web.stub.GetQueue(agent_pb2.GetQueueRequest(name="web")).marks)
    page.get_by_role("button", name="circle").tap()  # now seen: labelled
    page.wait_for_selector(f'.tile[data-id="{start}"][data-saved="1"]')
    assert live_web.labels()[start] == "circle"


def test_a_double_click_on_a_class_button_labels_one_image(live_web: WebAgent, page: Any) -> None:
    ids = _queue(live_web, page, user="ana")
    first = focused_tile(page)
    second = ids[(ids.index(first) + 1) % len(ids)]
    page.dblclick("#classes button.class-btn >> nth=0")
    page.wait_for_selector(f'.tile[data-id="{first}"][data-saved="1"]')
    page.wait_for_timeout(700)
    assert live_web.labels().get(first) == "circle" and second not in live_web.labels()
    assert focused_tile(page) == second and "double click" in page.locator("#toast").inner_text()
    page.dblclick("#skip-button")  # Skip: one tile skipped too
    page.wait_for_selector(f'.tile[data-id="{second}"].mark-skip')
    page.wait_for_timeout(500)
    assert dict(live_web.stub.GetQueue(agent_pb2.GetQueueRequest(name="web")).marks) == {second: "skip"}
    page.click("#classes button.class-btn >> nth=0")  # single clicks, one after the other, each label
    page.wait_for_timeout(600)
    page.click("#classes button.class-btn >> nth=0")
    page.wait_for_function("() => document.querySelectorAll('.tile[data-saved=\"1\"]').length === 3")


@pytest.fixture
def sideways(browser: Any) -> Iterator[Any]:
    """A phone held sideways (844x390, touch, mobile): less than 600 px of height."""
    context = browser.new_context(viewport={"width": 844, "height": 390}, device_scale_factor=1,
                                  has_touch=True, is_mobile=True)
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    yield pg
    context.close()


def test_a_short_window_labels_by_tap_and_click(live_web: WebAgent, sideways: Any, zoomed: Any) -> None:
    """Below 600 px of height (a phone sideways, 200% zoom) the class buttons stay at hand in the bottom bar,
    so a tap on a tile then on a class labels it, and the next tile is brought into view above the bar."""
    for page, user, touch in ((sideways, "kim", True), (zoomed, "lee", False)):
        ids = _queue(live_web, page, user=user, budget=30)
        assert page.evaluate("() => getComputedStyle(document.getElementById('class-panel')).position") == "fixed"
        tile = next(i for i in ids[3:] if i not in live_web.labels() and i != focused_tile(page))
        loc = page.locator(f'.tile[data-id="{tile}"]')
        loc.scroll_into_view_if_needed()
        loc.tap() if touch else loc.click()
        button = page.get_by_role("button", name="square")
        assert button.is_visible() and _on_screen(page, ".tile.focus")
        button.tap() if touch else button.click()
        page.wait_for_selector(f'.tile[data-id="{tile}"][data-saved="1"]')
        assert live_web.labels()[tile] == "square"
        assert _on_screen(page, ".tile.focus")  # the next open tile, shown above the bar


def test_a_button_labels_the_tile_the_person_picked_even_scrolled_away(live_web: WebAgent,
                                                                        sideways: Any) -> None:
    """A tile the person tapped is labelled by a class button even once scrolled off screen (they picked that
    image); a tile the focus moved to by itself is shown first, and the notice says to tap, not press a key."""
    page = sideways
    ids = _queue(live_web, page, user="kim", budget=30)
    far = ids[-1]
    page.locator(f'.tile[data-id="{far}"]').tap()
    page.evaluate("() => window.scrollTo(0, 0)")
    page.wait_for_timeout(200)
    assert not _on_screen(page, ".tile.focus")
    page.get_by_role("button", name="circle").tap()  # picked by the person: labelled
    page.wait_for_selector(f'.tile[data-id="{far}"][data-saved="1"]')
    assert live_web.labels()[far] == "circle"
    nxt = focused_tile(page)  # moved there by itself
    assert nxt != far
    page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)" if ids.index(nxt) < 10
                  else "() => window.scrollTo(0, 0)")
    page.wait_for_timeout(700)  # not a double tap (the second tap of one is ignored)
    assert not _on_screen(page, ".tile.focus")
    page.get_by_role("button", name="circle").tap()  # not picked, off screen: shown, not labelled
    page.wait_for_function("() => document.getElementById('toast').textContent.includes('off screen')")
    assert "tap the button again" in page.locator("#toast").inner_text()
    assert nxt not in live_web.labels() and _on_screen(page, ".tile.focus")


def test_targets_current_page_and_skip_link_on_a_phone(live_web: WebAgent, phone: Any) -> None:
    """On a 390 px phone Sign out and the checkboxes are at least 24x24 px; the nav says which page is open
    (aria-current); the first Tab stop is a skip link that takes the keyboard past the top bar."""
    page = phone
    _queue(live_web, page)
    assert page.locator("nav.nav a[aria-current=page]").inner_text() == "Queue"
    assert page.locator("nav.nav a[aria-current]").count() == 1
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"
    page.keyboard.press("Tab")  # on into the page, not back to the top bar
    assert page.evaluate("() => !document.activeElement.closest('.topbar')")
    for path in ("/progress", "/map"):
        page.goto(live_web.url + path)
        page.wait_for_selector("input[type=checkbox]")
        sizes = [page.locator(sel).bounding_box() for sel in ("button.link", "input[type=checkbox] >> nth=0")]
        assert all(b is not None and b["width"] >= 24 and b["height"] >= 24 for b in sizes), (path, sizes)
