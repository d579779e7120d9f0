"""The Queue page in a real browser: ask for samples, label with the keyboard (number keys, a new class,
skip, not sure, undo to the previous label and to unlabelled), and check the labels through gRPC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shortlist.v1 import agent_pb2
from tests.agent.web.conftest import WebAgent, focused_tile, shape_of, shot

pytestmark = pytest.mark.browser


def ask_random(live_web: WebAgent, page: Any, budget: int) -> None:
    """Open the Queue page as "ana" and ask the agent for ``budget`` random samples."""
    page.context.add_cookies([{"name": "shortlist_user", "value": "ana", "url": live_web.url}])
    page.goto(live_web.url + "/queue")
    page.select_option("#strategy", "random")
    page.fill("input[name=budget]", str(budget))
    page.click("#ask-button")
    page.wait_for_selector(".tile")


def test_keyboard_labelling(live_web: WebAgent, page: Any) -> None:
    ask_random(live_web, page, 18)
    tiles = page.locator(".tile")
    assert tiles.count() == 18
    ids = [str(tiles.nth(i).get_attribute("data-id")) for i in range(18)]
    # wait_for_function takes functions here: a bare expression is eval'd, which the app's CSP forbids
    page.wait_for_function("() => Array.from(document.querySelectorAll('.tile img'))"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    page.click(f'.tile[data-id="{ids[0]}"]')  # each annotator's focus starts elsewhere: begin at the first
    keys = {"circle": "1", "square": "2"}  # the class list on the page: triangle is not a class yet
    want: dict[str, str] = {}
    for i, sid in enumerate(ids[:9]):  # focus moves to the next tile after each action
        shape = shape_of(sid)
        if i == 5:
            page.keyboard.press(" ")  # skip
        elif i == 6:
            page.keyboard.press("?")  # not sure
        elif shape in keys:
            page.keyboard.press(keys[shape])
            want[sid] = shape
        else:  # a new class: "+" opens the box, Enter labels the focused tile with it
            page.keyboard.press("+")
            page.keyboard.type(shape)
            page.keyboard.press("Enter")
            page.wait_for_selector(f'.tile[data-id="{sid}"][data-saved="1"]')
            keys[shape] = "3"
            want[sid] = shape
        page.wait_for_selector(f'.tile[data-id="{sid}"]:not(.pending)')
    for sid in want:
        page.wait_for_selector(f'.tile[data-id="{sid}"][data-saved="1"]')
    assert [" ".join(t.split()) for t in page.locator("#classes li").all_inner_texts()] == [
        "1 circle", "2 square", "3 triangle"]
    labels = live_web.labels()
    assert {sid: labels.get(sid) for sid in want} == want
    assert ids[5] not in labels and ids[6] not in labels
    assert page.locator(f'.tile[data-id="{ids[6]}"] .badge').inner_text() == "not sure"
    # back to the first tile with the arrows, a wrong label, then undo: the right one is back
    for _ in range(9):
        page.keyboard.press("ArrowLeft")
    first, shape = ids[0], shape_of(ids[0])
    wrong = next(k for s, k in keys.items() if s != shape)
    page.keyboard.press(wrong)
    page.wait_for_selector(f'.tile[data-id="{first}"][data-saved="1"]:not([data-label="{shape}"])')
    page.keyboard.press("Backspace")
    page.wait_for_selector(f'.tile[data-id="{first}"][data-label="{shape}"]:not(.pending)')
    history = live_web.history(first)
    # the undo: ana's retraction, then her label before put back (RetractLabels with restore_previous)
    assert [a for _, a in history] == ["ana"] * 4 and history[0][0] == history[3][0] == shape != history[1][0]
    assert history[2][0] == ""
    assert live_web.labels()[first] == shape
    # Enter shows the focused image large (the stored image), Escape closes it
    page.keyboard.press("Enter")
    page.wait_for_function("() => { const i = document.querySelector('#lightbox img');"
                           " return !document.getElementById('lightbox').hidden"
                           " && i.complete && i.naturalWidth > 0 }")
    assert first in page.locator("#lightbox p").inner_text()
    page.keyboard.press("Escape")
    page.wait_for_selector("#lightbox", state="hidden")
    # undo of a first label takes it back: the sample is unlabelled again (RetractLabels), the history keeps both
    for _ in range(9):
        page.keyboard.press("ArrowRight")
    tenth, shape = ids[9], shape_of(ids[9])
    count = page.locator("#labelled-count").inner_text()
    page.keyboard.press(keys[shape])
    page.wait_for_selector(f'.tile[data-id="{tenth}"][data-saved="1"][data-label="{shape}"]')
    assert live_web.labels()[tenth] == shape
    page.keyboard.press("Control+z")
    page.wait_for_selector(f'.tile[data-id="{tenth}"][data-label=""]:not(.pending):not(.failed)')
    assert page.locator(f'.tile[data-id="{tenth}"] .badge').inner_text() == ""
    assert page.locator("#labelled-count").inner_text() == count
    assert tenth not in live_web.labels()
    records = [r for r in live_web.stub.ListLabels(agent_pb2.ListLabelsRequest(history=True)) if r.id == tenth]
    assert [(r.label, r.annotator, r.retracted) for r in records] == [(shape, "ana", False), ("", "ana", True)]
    # the queue and its marks are the agent's: a reload (or a restarted app) shows them as they were
    page.reload()
    page.wait_for_selector(".tile")
    assert [str(t.get_attribute("data-id")) for t in page.locator(".tile").all()] == ids
    assert page.locator(f'.tile[data-id="{ids[5]}"] .badge').inner_text() == "skipped"
    assert page.locator(f'.tile[data-id="{ids[6]}"] .badge').inner_text() == "not sure"
    for _ in range(9):
        page.keyboard.press("ArrowRight")
    page.mouse.move(0, 0)
    shot(page, "app-queue")


def test_filter_and_labels_from_elsewhere_show_up(live_web_fast: WebAgent, page: Any) -> None:
    """Ask with a metadata filter; a label given through gRPC (another client) appears on the open page."""
    web = live_web_fast
    page.goto(web.url + "/queue")
    page.fill("input[name=where]", "site=b")
    page.fill("input[name=budget]", "6")
    page.click("#ask-button")
    page.wait_for_selector(".tile")
    ids = [str(t.get_attribute("data-id")) for t in page.locator(".tile").all()]
    assert len(ids) == 6 and all(int(i[3:6]) % 2 == 1 for i in ids)  # site b: the odd ones
    web.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id=ids[2], label="octagon")], annotator="pipeline"))
    page.wait_for_selector(f'.tile[data-id="{ids[2]}"][data-label="octagon"]')
    assert " ".join(page.locator("#classes li").last.inner_text().split()) == "3 octagon"
    # taken back elsewhere: the tile is open again; the queue replaced elsewhere: the page says so
    web.stub.RetractLabels(agent_pb2.RetractLabelsRequest(ids=[ids[2]], annotator="pipeline"))
    page.wait_for_selector(f'.tile[data-id="{ids[2]}"][data-label=""]')
    assert page.locator("#queue-replaced").is_hidden()
    web.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(ids=ids[:2], source="api")))
    page.wait_for_selector("#queue-replaced:not([hidden])")
    page.click("#queue-replaced a")
    page.wait_for_function("() => document.querySelectorAll('.tile').length === 2")


def test_the_queue_speaks_to_screen_readers(live_web: WebAgent, page: Any) -> None:
    """The grid is a listbox whose active descendant is the tile in focus; each tile's accessible name says
    what it shows (its number and id) and its label, kept up to date; a label given or taken back is said once
    (a polite live region)."""
    ask_random(live_web, page, 4)
    first = page.locator(".tile").nth(0)
    sid = str(first.get_attribute("data-id"))
    first.click()
    grid = page.locator("#grid")
    assert grid.get_attribute("role") == "listbox" and first.get_attribute("role") == "option"
    assert grid.get_attribute("aria-activedescendant") == first.get_attribute("id")
    assert first.get_attribute("aria-selected") == "true"
    assert first.get_attribute("aria-label") == f"1 {sid}: not labelled"
    page.keyboard.press("1")
    page.wait_for_selector(f'.tile[data-id="{sid}"][data-saved="1"]')
    label = live_web.labels()[sid]
    assert first.get_attribute("aria-label") == f"1 {sid}: {label}"
    assert page.locator("#announce").inner_text() == f"{sid.split('/')[-1]} labelled {label}"
    assert page.locator("#announce").get_attribute("aria-live") == "polite"
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Backspace")  # undo: taken back
    page.wait_for_function("() => document.getElementById('announce').textContent.includes('taken back')")
    assert first.get_attribute("aria-label") == f"1 {sid}: not labelled"


def test_undo_survives_a_reload_and_back(live_web: WebAgent, page: Any) -> None:
    """The undo history is kept in the tab (sessionStorage): after Back from another page (which reloads the
    queue page) Backspace still takes the last label back."""
    ask_random(live_web, page, 4)
    first = page.locator(".tile").nth(0)
    sid = str(first.get_attribute("data-id"))
    first.click()
    page.keyboard.press("1")
    page.wait_for_selector(f'.tile[data-id="{sid}"][data-saved="1"]')
    assert sid in live_web.labels()
    page.goto(live_web.url + "/progress")
    page.go_back()
    page.wait_for_selector(f'.tile[data-id="{sid}"].labelled')
    page.locator("#grid").focus()
    page.keyboard.press("Backspace")
    page.wait_for_function("() => document.getElementById('announce').textContent.includes('taken back')")
    assert sid not in live_web.labels()


def test_skip_not_sure_and_undo_are_said_once(live_web: WebAgent, page: Any) -> None:
    """A screen reader hears a skip and a "not sure" mark (as it hears a label), and an undo once: in the
    page's #announce region, while the toast (a live region too) shows it without saying it again."""
    ask_random(live_web, page, 6)
    page.locator(".tile").nth(0).click()
    sid = str(page.locator(".tile").nth(0).get_attribute("data-id")).split("/")[-1]
    page.keyboard.press(" ")
    page.wait_for_function(f"() => document.getElementById('announce').textContent === '{sid} skipped'")
    sid2 = str(page.locator(".tile.focus").get_attribute("data-id")).split("/")[-1]
    page.keyboard.press("?")
    page.wait_for_function(f"() => document.getElementById('announce').textContent === '{sid2} marked not sure'")
    page.keyboard.press("1")
    page.wait_for_selector(".tile[data-saved='1']")
    page.keyboard.press("Backspace")  # the label taken back: said once
    page.wait_for_function("() => document.getElementById('announce').textContent.startsWith('undo:')")
    said = page.locator("#announce").inner_text()
    assert "taken back" in said and page.locator("#toast").text_content() == said
    assert page.locator("#toast > span[aria-hidden=true]").text_content() == said  # shown, not spoken


def solid_png(rgb: tuple[int, int, int], side: int = 64) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), rgb).save(buf, format="PNG")
    return buf.getvalue()


# the centre pixel of an <img> as the page shows it (a canvas of a same-origin image may be read)
CENTRE_PIXEL = """(img) => { if (!img.naturalWidth) return [-999, -999, -999];
  const c = document.createElement("canvas"); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext("2d"); g.drawImage(img, 0, 0);
  return Array.from(g.getImageData(c.width >> 1, c.height >> 1, 1, 1).data.slice(0, 3)); }"""


def test_every_tile_shows_its_own_image(live_web: WebAgent, page: Any) -> None:
    """Ids with "." and ".." segments (or that are "..") reach their own images on the Queue's tiles and in the
    large view: the tile of "ward7/../img000.png" showed img000.png's image (/thumb/img000.png), so someone
    labelled one patient's sample looking at another's."""
    from agent import client

    colours = {"ward7/../img000.png": (255, 0, 0), "./img001.png": (0, 0, 255), "..": (0, 160, 0),
               "a/./b/../c.png": (255, 255, 0)}
    client.ingest(live_web.stub, [client.image_sample(sid, solid_png(rgb)) for sid, rgb in colours.items()])
    live_web.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(ids=list(colours))))
    page.goto(live_web.url + "/queue")
    page.wait_for_function("() => Array.from(document.querySelectorAll('.tile img')).every(i => i.complete)")
    for sid, rgb in colours.items():
        tile = page.locator(".tile").filter(has=page.locator(f'img[alt="{sid}"]'))
        shown = tile.locator("img").evaluate(CENTRE_PIXEL)
        assert all(abs(a - b) < 40 for a, b in zip(shown, rgb, strict=True)), (sid, shown, rgb)
        tile.click()
        page.keyboard.press("Enter")  # the large view: the stored image
        page.wait_for_function("(n) => { const i = document.querySelector('#lightbox img');"
                               " return !document.getElementById('lightbox').hidden && i.alt === n"
                               " && i.complete }", arg=sid)
        big = page.locator("#lightbox img").evaluate(CENTRE_PIXEL)
        assert all(abs(a - b) < 40 for a, b in zip(big, rgb, strict=True)), (sid, big, rgb)
        page.keyboard.press("Escape")
        page.wait_for_selector("#lightbox", state="hidden")


def test_wrong_key_undo_right_key_stores_the_right_key(live_web: WebAgent, page: Any) -> None:
    """Key, Backspace, key, each pressed once the one before is answered (a local agent answers before the next
    key): the second key is stored, for a first label (the sample unlabelled after the undo) and for a change
    (the label before back after the undo). The undo's own result is what the next key is sent against, not
    the label the tile showed when the Backspace brought it back into focus (refused: "ana took its label
    back meanwhile")."""
    ask_random(live_web, page, 6)
    sid = str(page.locator(".tile").nth(0).get_attribute("data-id"))
    tile = f'.tile[data-id="{sid}"]'
    page.locator(tile).click()

    def undone(label: str) -> None:
        page.keyboard.press("Backspace")
        page.wait_for_function("() => document.getElementById('announce').textContent.startsWith('undo:')")
        page.wait_for_selector(f'{tile}[data-label="{label}"]:not(.pending)')
        page.evaluate("() => { document.getElementById('announce').textContent = '' }")

    page.keyboard.press("2")  # square, wrong
    page.wait_for_selector(f'{tile}[data-saved="1"][data-label="square"]')
    undone("")
    assert sid not in live_web.labels() and focused_tile(page) == sid
    page.keyboard.press("1")  # circle, right
    answered = f'{tile}:is([data-saved="1"][data-label="{{}}"], .changed, .failed):not(.pending)'
    page.wait_for_selector(answered.format("circle"))
    assert live_web.labels()[sid] == "circle"
    assert "not saved" not in (page.locator("#toast").text_content() or "")
    # a change: circle -> square (wrong), Backspace (circle back), square again on purpose -> stored
    page.locator(tile).click()
    page.keyboard.press("2")
    page.wait_for_selector(f'{tile}[data-saved="1"][data-label="square"]')
    undone("circle")
    assert live_web.labels()[sid] == "circle"
    page.keyboard.press("2")
    page.wait_for_selector(answered.format("square"))
    assert live_web.labels()[sid] == "square"
    assert not page.locator(f"{tile}.changed, {tile}.failed").count()


def agent_away(page: Any) -> dict[str, bool]:
    """Label requests fail (the agent away) while the returned dict's "down" is set; a beforeunload question,
    answered "Leave" ("asked"), brings it back once the next page is there (so that it can ask the agent).
    Not at the answer itself: the page being left still retries its requests until it goes, and on a loaded
    machine one got through in between (CI: the undo the test keeps unanswered was applied)."""
    state = {"down": True, "asked": False}
    page.route("**/api/labels**", lambda route: route.abort() if state["down"] else route.continue_())

    def leave(d: Any) -> None:
        if d.type == "beforeunload":
            state["asked"] = True
        d.accept()

    def arrived(frame: Any) -> None:
        if state["asked"] and frame == page.main_frame:
            state["down"] = False

    page.on("dialog", leave)
    page.on("framenavigated", arrived)
    return state


def ana_presses_1_while_the_agent_is_away(live_web: WebAgent, page: Any) -> tuple[list[str], str]:
    """ana's queue of 6; the agent made unreachable (``agent_away``); key 1 on the third image, until the page
    says the agent is not reachable: the queue's ids and that image's id."""
    from tests.agent.web.conftest import open_queue

    ids = open_queue(live_web, page, "ana", budget=6)
    sid = ids[2]
    agent_away(page)
    page.locator(f'.tile[data-id="{sid}"]').click()
    page.keyboard.press("1")
    page.wait_for_function("() => document.getElementById('toast').textContent.includes('not reachable')")
    return list(ids), str(sid)


def reloaded_report(page: Any) -> str:
    """Reload, answer "Leave", and wait for the page's report of what the page before left unanswered."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.reload()
    try:
        page.wait_for_selector("#grid[data-reported]", timeout=10000)
    except PlaywrightTimeout:  # a page without the report (the tests' outcomes then say what went wrong)
        page.wait_for_timeout(1000)
    return str(page.locator("#announce").inner_text())


def bob_labels(live_web: WebAgent, sid: str, label: str) -> None:
    live_web.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id=sid, label=label)], annotator="bob"))


def history(live_web: WebAgent, sid: str) -> list[tuple[str, str]]:
    return [(r.label, r.annotator) for r in live_web.stub.ListLabels(agent_pb2.ListLabelsRequest(history=True))
            if r.id == sid]


def test_labels_not_answered_are_reported_after_a_reload_not_sent(live_web: WebAgent, page: Any) -> None:
    """The agent unreachable: two labels wait, a Backspace undoes an earlier saved one. The reload asks first
    (beforeunload); left anyway, nothing is sent again: the page says which were not saved (and the undo), and
    Backspace then takes back the last label that was saved."""
    from tests.agent.web.conftest import open_queue

    ids = open_queue(live_web, page, "ana", budget=6)
    page.locator(f'.tile[data-id="{ids[0]}"]').click()
    page.keyboard.press("2")
    page.wait_for_selector(f'.tile[data-id="{ids[0]}"][data-saved="1"]')
    page.keyboard.press("1")  # ids[1]: saved, then undone while the agent is away
    page.wait_for_selector(f'.tile[data-id="{ids[1]}"][data-saved="1"]')
    state = agent_away(page)
    page.keyboard.press("Backspace")
    page.wait_for_selector(f'.tile[data-id="{ids[1]}"].pending')
    page.locator(f'.tile[data-id="{ids[2]}"]').click()
    page.keyboard.press("1")
    page.keyboard.press("2")  # ids[3]
    page.wait_for_function("() => document.getElementById('toast').textContent.includes('not reachable')")
    said = reloaded_report(page)
    assert state["asked"] and not state["down"]  # the browser asked first (beforeunload)
    assert said.startswith("not saved before the page was left: ") and f"{ids[2]} (circle)" in said
    assert f"{ids[3]} (square)" in said and f'your undo on {ids[1]} (it still has your "circle"' in said
    labels = live_web.labels()
    assert (labels.get(ids[0]), labels.get(ids[1]), ids[2] in labels, ids[3] in labels) == (
        "square", "circle", False, False)
    page.locator("#grid").focus()
    page.keyboard.press("Backspace")  # the undo not applied went back on the history: it goes first
    page.wait_for_selector(f'.tile[data-id="{ids[1]}"][data-label=""]:not(.pending)')
    assert ids[1] not in live_web.labels() and live_web.labels().get(ids[0]) == "square"


def test_a_key_behind_an_unanswered_one_never_overwrites_a_label_given_meanwhile(live_web: WebAgent,
                                                                                   page: Any) -> None:
    """Agent away: 1, Backspace, 2 on one image (the 2 waits behind the undo); bob labels it triangle; the page
    is reloaded. Bob's label stays, and the page says the square was not saved and what the image has now."""
    _, sid = ana_presses_1_while_the_agent_is_away(live_web, page)
    page.keyboard.press("Backspace")
    page.keyboard.press("2")
    page.wait_for_function("() => Object.values(sessionStorage).some((v) => v.includes('square'))")
    bob_labels(live_web, sid, "triangle")
    said = reloaded_report(page)
    page.wait_for_timeout(1500)  # anything sent would have landed by now
    assert history(live_web, sid) == [("triangle", "bob")]
    assert f'{sid} (square; it has "triangle" by bob now)' in said


def test_key_undo_same_key_with_the_answer_lost_keeps_the_last_key(live_web: WebAgent, page: Any) -> None:
    """1, Backspace, 1 on one image; the first label reaches the agent but its answer never comes back, and the
    page is reloaded: the image keeps circle (the last key), reported saved, and Backspace takes it back."""
    from tests.agent.web.conftest import open_queue

    ids = open_queue(live_web, page, "ana", budget=6)
    sid = ids[2]
    hold = {"on": True}
    held: list[Any] = []
    page.route("**/api/labels**", lambda route: held.append(route.fetch()) if hold["on"] else route.continue_())

    def leave(d: Any) -> None:
        hold["on"] = False
        d.accept()

    page.on("dialog", leave)
    page.locator(f'.tile[data-id="{sid}"]').click()
    for key in ["1", "Backspace", "1"]:
        page.keyboard.press(key)
        page.wait_for_timeout(300)
    assert live_web.labels().get(sid) == "circle" and len(held) == 1
    said = reloaded_report(page)
    page.wait_for_timeout(1500)
    assert live_web.labels().get(sid) == "circle"
    assert said == f"saved before the page was left: {sid}"
    page.locator("#grid").focus()
    page.keyboard.press("Backspace")
    page.wait_for_selector(f'.tile[data-id="{sid}"][data-label=""]:not(.pending)')
    assert sid not in live_web.labels()


def test_an_agreement_found_after_a_reload_is_not_undone_as_ones_own(live_web: WebAgent, page: Any) -> None:
    """Agent away: ana presses 1 (circle); bob labels the image circle; ana reloads: the page says bob gave it,
    and her Backspace leaves bob's label."""
    _, sid = ana_presses_1_while_the_agent_is_away(live_web, page)
    bob_labels(live_web, sid, "circle")
    said = reloaded_report(page)
    page.locator("#grid").focus()
    page.keyboard.press("Backspace")
    page.wait_for_timeout(1500)
    assert history(live_web, sid) == [("circle", "bob")]
    assert said.startswith(f'{sid} already had "circle" from bob (left as it is)')
    assert "left as it is" in page.locator("#toast").inner_text()


def test_a_label_not_answered_is_reported_after_the_queue_was_replaced(live_web: WebAgent, page: Any) -> None:
    """Agent away: 1 on an image; someone replaces the queue (the image still in it); the reload shows the new
    queue and says the label was not saved (unsent actions are kept per person, not per queue)."""
    ids, sid = ana_presses_1_while_the_agent_is_away(live_web, page)
    new = [sid, *[i for i in ids if i != sid][:3]]
    live_web.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(ids=new, source="api")))
    said = reloaded_report(page)
    assert said == f"not saved before the page was left: {sid} (circle) — label or mark it again"
    assert sid not in live_web.labels()  # not sent: the person was told
    assert page.evaluate("() => sessionStorage.getItem('shortlist.unsent:ana')") is None


def test_a_label_given_as_the_sign_in_ends_is_reported_after_signing_in(tmp_path: Path, page: Any) -> None:
    """The sign-in cookie gone: the next key goes to the sign-in page, which says why and which label was not
    saved; another person signing in on that tab is told of it (never sent in their name); the first person,
    signed in again, is not told twice, and nothing was stored."""
    from tests.agent.web.conftest import WRITE_TOKEN, start_web_agent

    web = start_web_agent(tmp_path, tokens=True, listen=True, refresh_s=600)
    try:
        ids = [s.id for s in web.stub.Select(agent_pb2.SelectRequest(budget=6, strategy="random")).selected]
        web.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(ids=ids, source="api")))

        def sign_in(name: str) -> None:
            page.fill("input[name=name]", name)
            page.fill("input[name=token]", WRITE_TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url("**/queue*")

        page.goto(web.url + "/login?next=/queue")
        sign_in("ana")
        page.wait_for_selector(".tile.focus")
        page.locator(f'.tile[data-id="{ids[0]}"]').click()
        page.context.clear_cookies()
        page.keyboard.press("2")
        page.wait_for_url("**/login?next=%2Fqueue%3Fpage%3D1")
        page.wait_for_function("() => document.getElementById('toast').textContent.includes('was not saved')")
        said = page.locator("#toast").inner_text()
        assert said == (f'your sign-in is no longer accepted: sign in again. your label "square" on {ids[0]} was '
                        "not saved: give it again after you sign in")
        sign_in("bob")
        page.wait_for_function("() => document.getElementById('toast').textContent.includes('sign-in ended')")
        assert page.locator("#toast").inner_text() == (
            f"ana's {ids[0]} (square) not saved in this tab before ana's sign-in ended: that person should give "
            "them again")
        assert ids[0] not in web.labels()
    finally:
        web.stop()


def test_a_malformed_metadata_filter_is_refused_before_anything_is_drawn(live_web: WebAgent, page: Any) -> None:
    """A filter part that is not key=value ("camera 3", "site: a", "garbage") is refused in the page with what to
    write; nothing is drawn and the team's queue stays (it was dropped, and the unfiltered draw replaced it)."""
    from tests.agent.web.conftest import open_queue

    ids = open_queue(live_web, page, "ana", budget=4)
    for bad in ("garbage", "site=a, camera 3", "site: a"):
        page.fill("input[name=where]", bad)
        page.click("#ask-button")
        page.wait_for_function("() => document.getElementById('toast').textContent.includes('is not key=value')")
        assert live_web.stub.GetQueue(agent_pb2.GetQueueRequest(name="web")).ids == ids
        page.evaluate("() => { document.getElementById('toast').textContent = '' }")
    assert page.locator(".tile").count() == 4


def test_marking_on_a_replaced_queue_says_so_in_a_labellers_words(live_web: WebAgent, page: Any) -> None:
    """Space on a page whose queue someone replaced: the notice says the queue was replaced and how to see the
    new one (not the agent's internal queue name), and the banner with its link shows."""
    from tests.agent.web.conftest import open_queue

    ids = open_queue(live_web, page, "ana", budget=4)
    new = agent_pb2.Queue(ids=ids[:1], source="api")
    live_web.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=new))
    page.locator(f'.tile[data-id="{ids[2]}"]').click()
    page.keyboard.press(" ")
    page.wait_for_function("() => document.getElementById('toast').textContent.includes('replaced the queue')")
    said = page.locator("#toast").inner_text()
    assert said.startswith(f"{ids[2]} was not skipped: someone replaced the queue") and '"web"' not in said
    assert page.locator("#queue-replaced").is_visible()


@pytest.mark.parametrize("slow", [0.0, 0.4])
def test_fast_keys_then_a_reload_say_what_was_not_saved(live_web: WebAgent, page: Any, slow: float) -> None:
    """Seven keys in a burst (a Backspace among them) and a reload at once (with a slow agent, requests still on
    their way): each image has what the keys meant, or the page's report names it as not saved."""
    from tests.agent.web.conftest import slow_labels

    ask_random(live_web, page, 8)
    ids = [str(t.get_attribute("data-id")) for t in page.locator(".tile").all()]
    page.locator(f'.tile[data-id="{ids[0]}"]').click()
    page.on("dialog", lambda d: d.accept())
    with slow_labels(live_web.agent, slow):
        for key in ["1", "2", "1", "2", "Backspace", "1", "2"]:
            page.keyboard.press(key)
        said = reloaded_report(page)
    want = {ids[0]: "circle", ids[1]: "square", ids[2]: "circle", ids[3]: "circle", ids[4]: "square"}
    labels = live_web.labels()
    for sid, shape in want.items():
        assert labels.get(sid) == shape or f"{sid} ({shape}" in said, (sid, labels.get(sid), said)
    shown = {sid: page.locator(f'.tile[data-id="{sid}"]').get_attribute("data-label") for sid in want}
    assert shown == {sid: labels.get(sid, "") for sid in want}
