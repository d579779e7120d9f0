"""The web app on a phone held upright (390x844, touch): the top bar keeps two short lines (every page
link whole) and the class bar only what it needs, so the tiles keep most of the screen; a tile's state (a
label or skip on its way, waiting for the agent) is readable in full; the sign-in page shows no one signed
in. Defects of a labeller's walkthrough."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from agent import client
from shortlist.v1 import agent_pb2
from tests.agent.web.conftest import WebAgent, device_page, focused_tile, open_queue, shape_image, shot

pytestmark = pytest.mark.browser

NAME = "Jörg Müller-Lüdenscheidt"  # a long name: cut short in the top bar
# two lines, 72 px: the brand and the page links, then the name and Sign out. It was 108 here (153 with four
# links stacked), wrapping to three lines; then one line of 44 px whose links scrolled sideways, cut ("eue")
TOP_BAR_MAX_PX = 80
CLASS_BAR_MAX_PX = 160  # two classes, the new-class field, Skip / Not sure / Undo: 135 px; it was 185



def _height(page: Any, selector: str) -> float:
    return float(page.evaluate("(s) => document.querySelector(s).getBoundingClientRect().height", selector))


def _cut(page: Any, selector: str) -> bool:
    """The element's text is cut short (an ellipsis): wider than the element shows."""
    return bool(page.evaluate("(s) => { const e = document.querySelector(s); return e.scrollWidth > e.clientWidth; }",
                              selector))


def test_the_top_bar_and_the_class_bar_leave_the_screen_to_the_tiles(live_web: WebAgent, phone: Any) -> None:
    open_queue(live_web, phone, NAME, budget=24, replace=True)
    shot(phone, "phone_queue")
    top, bar = _height(phone, ".topbar"), _height(phone, "#class-panel")
    print(f"390x844: top bar {top:.0f} px, class bar {bar:.0f} px")  # the figures in docs/app.md (pytest -s)
    assert top <= TOP_BAR_MAX_PX, f"the top bar is {top} px tall on a phone"
    assert bar <= CLASS_BAR_MAX_PX, f"the class bar is {bar} px tall on a phone"
    # the page links stay links, every one whole (test_every_page_link_is_whole_on_a_phone); the page itself never
    # scrolls sideways
    links = phone.locator("nav.nav a")
    assert [links.nth(i).inner_text() for i in range(links.count())] == ["Queue", "Review priors", "Map", "Progress"]
    assert all(links.nth(i).get_attribute("href") for i in range(links.count()))
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    # the name has a line of its own (cut short only when longer than it), its whole in the title; Sign out is there
    assert not _cut(phone, ".who .user")
    assert NAME in str(phone.locator(".who .user").get_attribute("title"))
    assert phone.locator(".who button", has_text="Sign out").is_visible()
    # a link the Tab key reaches is in view, with its focus ring inside the row
    phone.locator("nav.nav a", has_text="Progress").focus()
    inside = """() => { const a = document.activeElement.getBoundingClientRect(),
                               n = document.querySelector('.nav').getBoundingClientRect();
                        return a.left >= n.left && a.right <= n.right; }"""
    assert phone.evaluate(inside)
    assert phone.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    # another page: its link is brought into view (the bar says where one is)
    phone.goto(live_web.url + "/progress")
    assert _height(phone, ".topbar") <= TOP_BAR_MAX_PX
    assert phone.evaluate("""() => { const a = document.querySelector('.nav a.active').getBoundingClientRect(),
                                           n = document.querySelector('.nav').getBoundingClientRect();
                                     return a.left >= n.left && a.right <= n.right; }""")


def test_a_tile_waiting_for_the_agent_says_so_in_full(live_web: WebAgent, phone: Any) -> None:
    ids = open_queue(live_web, phone, NAME, budget=12, replace=True)
    away = {"error": "unavailable", "message": "the agent is not reachable; retrying"}

    def unreachable(route: Any) -> None:
        route.fulfill(status=503, content_type="application/json", body=json.dumps(away))

    phone.route("**/api/labels", unreachable)
    phone.route("**/api/queue/mark", unreachable)
    first = focused_tile(phone)
    phone.locator("#grid").focus()
    phone.keyboard.press("1")  # circle
    phone.wait_for_selector(f'.tile[data-id="{first}"] .badge:text("… waiting")')
    second = focused_tile(phone)
    phone.keyboard.press(" ")  # skip
    phone.wait_for_selector(f'.tile[data-id="{second}"] .badge:text("skip … waiting")')
    # grey, as a label on its way: not saved yet
    assert "sending" in str(phone.locator(f'.tile[data-id="{second}"] .badge').get_attribute("class"))
    phone.locator(f'.tile[data-id="{second}"]').scroll_into_view_if_needed()
    shot(phone, "phone_waiting")
    for sid, state in ((first, "circle … waiting"), (second, "skip … waiting")):
        tile = f'.tile[data-id="{sid}"]'
        assert phone.locator(f"{tile} .badge").inner_text() == state
        assert not _cut(phone, f"{tile} .badge"), f"{sid}'s state is cut short"
        assert not _cut(phone, f"{tile} .sid"), f"{sid}'s name is cut short"
    # the agent answers again: both are stored and the tiles say what they are
    phone.unroute("**/api/labels")
    phone.unroute("**/api/queue/mark")
    phone.wait_for_selector(f'.tile[data-id="{first}"] .badge:text-is("circle")', timeout=20_000)
    phone.wait_for_selector(f'.tile[data-id="{second}"] .badge:text-is("skipped")', timeout=20_000)
    assert "sending" not in str(phone.locator(f'.tile[data-id="{second}"] .badge').get_attribute("class"))
    assert live_web.labels()[first] == "circle" and first in ids


def test_the_sign_in_page_shows_no_one_signed_in(live_web: WebAgent, phone: Any) -> None:
    # reached when the sign-in is no longer accepted: the cookie with the name is still there
    phone.context.add_cookies([{"name": "shortlist_user", "value": quote(NAME, safe=""), "url": live_web.url}])
    phone.goto(live_web.url + "/queue")
    assert phone.locator(".who .user").count() == 1  # signed in: the name is shown elsewhere
    phone.goto(live_web.url + "/login?next=%2Fqueue")
    shot(phone, "phone_login")
    top = phone.locator(".topbar").inner_text()
    assert "Müller" not in top and "Sign out" not in top
    assert phone.locator(".who .user").count() == 0
    assert phone.locator(".who a", has_text="Sign in").is_visible()  # as for anyone signed out
    assert _height(phone, ".topbar") <= TOP_BAR_MAX_PX


# Each page link whole on the screen: its box inside the viewport, its text not cut (scrollWidth <= clientWidth),
# the row of links not scrolled, the page not scrollable sideways. A JS expression over the page.
NAV_WHOLE = """() => { const w = innerWidth, nav = document.querySelector('.nav');
  const links = [...nav.querySelectorAll('a')].map(a => { const r = a.getBoundingClientRect();
    return {text: a.textContent.trim(), left: r.left, right: r.right, top: r.top, bottom: r.bottom,
            cut: a.scrollWidth > a.clientWidth}; });
  return {links, w, h: innerHeight, navScrolls: nav.scrollWidth > nav.clientWidth, navLeft: nav.scrollLeft,
          pageWide: document.documentElement.scrollWidth > w,
          top: document.querySelector('.topbar').getBoundingClientRect().height}; }"""


@pytest.mark.parametrize("width", [375, 320])
def test_every_page_link_is_whole_on_a_phone(live_web: WebAgent, browser: Any, width: int) -> None:
    """At 375 px (and 320 px, the narrowest phones) every page link reads whole: before, the row of links
    scrolled sideways under a fade and the first read "eue" (the start of "Queue" cut off) on the Progress page,
    where the current page's link was scrolled into view. Signed in with a long name and signed out, each page."""
    with device_page(browser, width, 667, touch=True) as pg:
        open_queue(live_web, pg, NAME, budget=12, replace=True)
        for path in ("/queue", "/priors", "/map", "/progress", "/login"):
            pg.goto(live_web.url + path)
            pg.wait_for_load_state("networkidle")
            got = pg.evaluate(NAV_WHOLE)
            assert [a["text"] for a in got["links"]] == ["Queue", "Review priors", "Map", "Progress"], path
            for a in got["links"]:
                assert a["left"] >= 0 and a["right"] <= width and a["top"] >= 0, (path, a)
                assert not a["cut"], (path, a)
            assert not got["navScrolls"] and got["navLeft"] == 0, (path, got)
            assert not got["pageWide"], (path, got)
            assert got["top"] <= TOP_BAR_MAX_PX, (path, got["top"])
            if path == "/progress":
                print(f"{width}x667: top bar {got['top']:.0f} px")  # the figure in docs/app.md (pytest -s)



@pytest.mark.parametrize("width,height", [(1280, 800), (390, 844)])
def test_labelled_tiles_show_their_file_names_whole(live_web: WebAgent, browser: Any, width: int,
                                                    height: int) -> None:
    """A labelled tile's file name ("triangle_134.jpg") is not cut beside its label: it was "triangle_1…" on 47
    of 48 tiles at 1280 px and on all at 390 px (the name claimed 8ch before the label moved to a line of its
    own). A name longer than the tile wraps rather than being cut."""
    names = [f"triangle_{130 + i}.jpg" for i in range(9)] + ["a_very_long_file_name_from_a_camera_0001.jpg"]
    reply = client.ingest(live_web.stub, [client.image_sample(n, shape_image(i)) for i, n in enumerate(names)])
    assert reply.accepted == len(names)
    client.submit_labels(live_web.stub, [(n, "circle" if i % 2 else "skipped") for i, n in enumerate(names[:-2])],
                         annotator="setup")
    live_web.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(ids=names,
                                                                                               source="select")))
    with device_page(browser, width, height, touch=width < 600) as pg:
        open_queue(live_web, pg, NAME)
        assert pg.locator(".tile.labelled").count() == len(names) - 2
        cut = pg.evaluate("""() => [...document.querySelectorAll('.tile .sid, .tile .badge')]
            .filter((e) => e.scrollWidth > e.clientWidth || e.scrollHeight > e.clientHeight + 1)
            .map((e) => e.textContent)""")
        assert cut == []
        # each name is on the screen whole: inside its tile
        assert pg.evaluate("""() => [...document.querySelectorAll('.tile .sid')].every((e) => {
            const r = e.getBoundingClientRect(), t = e.closest('.tile').getBoundingClientRect();
            return r.left >= t.left && r.right <= t.right; })""")


@pytest.mark.parametrize("width,height", [(1280, 800), (390, 844)])
def test_class_buttons_and_the_target_line_are_not_cut(live_web: WebAgent, browser: Any, width: int,
                                                       height: int) -> None:
    """Four classes on a phone: a class button read "trian…" (54 px of text in 50 px); at 1280 the Classes
    panel's line read "labels 1 square_109.jpg: not la…". Both show their whole text now (they wrap)."""
    client.submit_labels(live_web.stub, [("img002.png", "triangle"), ("img005.png", "stripes_diagonal")],
                         annotator="setup")
    names = [f"square_{100 + i}.jpg" for i in range(6)]
    reply = client.ingest(live_web.stub, [client.image_sample(n, shape_image(1 + 3 * i)) for i, n in enumerate(names)])
    assert reply.accepted == len(names)
    live_web.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(ids=names,
                                                                                               source="select")))
    with device_page(browser, width, height, touch=width < 600) as pg:
        open_queue(live_web, pg, NAME)
        assert pg.locator(".class-btn").count() == 4
        cut = pg.evaluate("""() => [...document.querySelectorAll(
            '.class-btn, .class-btn span, #target, #target > span')]
            .filter((e) => e.scrollWidth > e.clientWidth + 0.5).map((e) => e.textContent.trim())""")
        assert cut == []
        assert "stripes_diagonal" in pg.locator(".class-btn").nth(3).inner_text()
        # "triangle" on one line, not broken in two ("triangl / e")
        assert pg.evaluate("""() => { const s = document.querySelector('.class-btn[data-class="triangle"] span');
            return s.getBoundingClientRect().height < 1.5 * parseFloat(getComputedStyle(s).fontSize) * 1.3; }""")
        assert "not labelled" in pg.locator("#target").inner_text()
