"""Several annotators on one queue, in a real browser: undo reverses only the page's own label, a label
is stored only if the sample still has the label the page showed, and a label someone else gave meanwhile
is shown with who gave it instead of being overwritten. The other annotator ("bob") labels through gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import client
from shortlist.v1 import agent_pb2
from tests.agent.web.conftest import (
    WebAgent,
    dismissed_dialogs,
    focused_tile,
    open_queue,
    shape_of,
    slow_labels,
    start_web_agent,
)

pytestmark = pytest.mark.browser


@pytest.fixture
def slow_web(tmp_path: Path) -> Iterator[WebAgent]:
    """The app on a port, its pages not refreshing during a test: what a page shows is what it loaded."""
    wa = start_web_agent(tmp_path, listen=True, refresh_s=600)
    yield wa
    wa.stop()


def _bob(web: WebAgent, sid: str, label: str) -> None:
    reply = web.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id=sid, label=label)], annotator="bob"))
    assert reply.accepted == 1, reply


def test_undo_leaves_a_label_someone_else_gave_since(slow_web: WebAgent, page: Any) -> None:
    web = slow_web
    open_queue(web, page, "alice")
    first = focused_tile(page)
    page.keyboard.press("1")  # circle
    page.wait_for_selector(f'.tile[data-id="{first}"][data-saved="1"][data-label="circle"]')
    _bob(web, first, "square")  # bob relabels it before alice's page refreshes
    page.keyboard.press("Backspace")  # alice's undo: her circle is no longer there, so nothing is taken back
    page.wait_for_selector(f'.tile[data-id="{first}"].changed[data-label="square"]')
    assert "bob" in page.locator("#toast").inner_text() and "square" in page.locator("#toast").inner_text()
    assert web.labels()[first] == "square"
    assert web.history(first) == [("circle", "alice"), ("square", "bob")]


def test_undo_of_a_relabel_changed_meanwhile(slow_web: WebAgent, page: Any) -> None:
    web = slow_web
    ids = open_queue(web, page, "alice")
    sid = focused_tile(page)
    _bob(web, ids[-1], "circle")  # someone else's label elsewhere on the page: untouched by alice's undo
    page.keyboard.press("1")
    page.wait_for_selector(f'.tile[data-id="{sid}"][data-saved="1"][data-label="circle"]')
    page.click(f'.tile[data-id="{sid}"]')
    page.keyboard.press("2")  # alice changes her mind: square
    page.wait_for_selector(f'.tile[data-id="{sid}"][data-saved="1"][data-label="square"]:not(.pending)')
    _bob(web, sid, "triangle")
    page.keyboard.press("Control+z")  # would put circle back over bob's triangle: refused, left as it is
    page.wait_for_selector(f'.tile[data-id="{sid}"].changed[data-label="triangle"]')
    assert web.labels()[sid] == "triangle" and web.labels()[ids[-1]] == "circle"
    page.evaluate("() => { document.getElementById('toast').textContent = ''; }")
    page.keyboard.press("Control+z")  # the undo before: alice's first label (circle) on a sample bob relabelled
    page.wait_for_function("() => document.getElementById('toast').textContent.includes('your undo was not applied')")
    assert web.labels()[sid] == "triangle"
    assert [a for _, a in web.history(sid)] == ["alice", "alice", "bob"]


def test_a_label_is_refused_when_someone_labelled_the_sample_meanwhile(slow_web: WebAgent, page: Any) -> None:
    web = slow_web
    open_queue(web, page, "alice")
    sid = focused_tile(page)
    _bob(web, sid, "square")  # the page still shows it open (no refresh yet)
    page.keyboard.press("1")
    page.wait_for_selector(f'.tile[data-id="{sid}"].changed[data-label="square"]')
    toast = page.locator("#toast").inner_text()
    assert "your label was not saved: bob labelled it \"square\" meanwhile" in toast, toast
    assert web.labels()[sid] == "square" and web.history(sid) == [("square", "bob")]
    assert page.locator(f'.tile[data-id="{sid}"] .badge').inner_text() == "square"


def start_of(name: str, n_open: int) -> int:
    """The open tile (0-based, among the open ones) where ``name``'s focus starts: queue.js's hash."""
    h = 0
    for ch in name:
        h = (h * 31 + ord(ch)) & 0xFFFFFFFF
    return h % n_open


def test_annotators_start_on_different_tiles_and_keep_a_tile_others_labelled(live_web_fast: WebAgent,
                                                                          browser: Any) -> None:
    web = live_web_fast
    pages = {}
    for name in ("alice", "bob", "dave"):
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        pages[name] = context.new_page()
        ids = open_queue(web, pages[name], name)
    starts = {name: focused_tile(pg) for name, pg in pages.items()}
    assert starts == {name: ids[start_of(name, len(ids))] for name in pages}
    assert len(set(starts.values())) == 3, starts  # these three names: three different tiles
    # bob labels alice's focused tile: her page shows it within a refresh; her focus stays on it (a key or tap
    # meant for it never lands on another tile), and her key for the tile as she saw it is refused and moves on
    _bob(web, starts["alice"], "circle")
    alice = pages["alice"]
    alice.wait_for_selector(f'.tile[data-id="{starts["alice"]}"][data-label="circle"].focus')
    alice.keyboard.press("2")
    moved = ids[(ids.index(starts["alice"]) + 1) % len(ids)]
    alice.wait_for_selector(f'.tile[data-id="{moved}"].focus')
    alice.keyboard.press("2")
    alice.wait_for_selector(f'.tile[data-id="{moved}"][data-saved="1"][data-label="square"]')
    assert web.labels()[starts["alice"]] == "circle" and web.labels()[moved] == "square"
    for pg in pages.values():
        pg.context.close()


def test_class_keys_stay_put_and_the_page_says_when_a_reload_renumbers(live_web_fast: WebAgent, page: Any) -> None:
    web = live_web_fast
    ids = open_queue(web, page, "alice")
    keys = lambda: [" ".join(t.split()) for t in page.locator("#classes li").all_inner_texts()]  # noqa: E731
    assert keys() == ["1 circle", "2 square"]
    assert page.locator("#classes-changed").is_hidden()
    # two new classes given elsewhere, zebra first, in one request (two could straddle one of the page's
    # refreshes, which would then append zebra alone): the page appends them sorted (the same on every page)
    reply = web.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id=ids[0], label="zebra"),
                agent_pb2.LabelAssignment(id=ids[1], label="apple")], annotator="bob"))
    assert reply.accepted == 2, reply
    page.wait_for_function("() => document.querySelectorAll('#classes li').length === 4")
    assert keys() == ["1 circle", "2 square", "3 apple", "4 zebra"]
    page.wait_for_selector("#classes-changed:not([hidden])")  # the agent's order is zebra, apple
    # every circle label taken back: the agent's list drops circle, the page's keys stay as they are
    circles = [sid for sid, lab in web.labels().items() if lab == "circle"]
    web.stub.RetractLabels(agent_pb2.RetractLabelsRequest(ids=circles, annotator="bob"))
    assert "circle" not in web.stub.GetStatus(agent_pb2.GetStatusRequest()).classes
    page.wait_for_timeout(1000)
    assert keys() == ["1 circle", "2 square", "3 apple", "4 zebra"]
    sid = next(i for i in ids if i not in web.labels())  # an open tile (the focus stays on one bob labelled)
    page.click(f'.tile[data-id="{sid}"]')
    page.keyboard.press("2")
    page.wait_for_selector(f'.tile[data-id="{sid}"][data-saved="1"][data-label="square"]')
    # a reload numbers the keys in the agent's order now
    page.reload()
    page.wait_for_selector(".tile")
    assert keys() == ["1 square", "2 zebra", "3 apple"] and page.locator("#classes-changed").is_hidden()


def test_a_viewer_cannot_ask_mark_or_draw(tmp_path: Path, page: Any) -> None:
    """A read token: "Ask the agent" and the audit button are disabled with a tooltip naming the write
    token; Space (skip) says so instead of a 403; the team's queue is untouched."""
    from tests.agent.web.conftest import READ_TOKEN, WRITE_TOKEN

    web = start_web_agent(tmp_path, tokens=True, listen=True, refresh_s=600)
    try:
        ids = [s.id for s in web.stub.Select(agent_pb2.SelectRequest(budget=6, strategy="random")).selected]
        web.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(ids=ids, source="api")))
        page.goto(web.url + "/login")
        page.fill("input[name=name]", "viewer")
        page.fill("input[name=token]", READ_TOKEN)
        page.click("button[type=submit]")
        page.goto(web.url + "/queue")
        page.wait_for_selector(".tile.focus")
        ask = page.locator("#ask-button")
        assert ask.is_disabled() and "write token" in str(ask.get_attribute("title"))
        page.keyboard.press(" ")
        page.wait_for_function("() => document.getElementById('toast').textContent.includes('write token')")
        assert page.locator(".tile.mark-skip").count() == 0
        assert not web.stub.GetQueue(agent_pb2.GetQueueRequest(name="web")).marks
        page.goto(web.url + "/progress")
        audit = page.locator("#audit-button")
        assert audit.is_disabled() and "write token" in str(audit.get_attribute("title"))
        assert WRITE_TOKEN not in page.content()
    finally:
        web.stop()


def test_asking_for_a_new_queue_with_open_items_asks_first(slow_web: WebAgent, page: Any) -> None:
    web = slow_web
    ids = open_queue(web, page, "alice", budget=6)
    dialogs: list[str] = []

    def dismiss(d: Any) -> None:
        dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", dismiss)
    page.fill("input[name=budget]", "3")
    page.click("#ask-button")
    page.wait_for_timeout(500)
    assert dialogs and "6 open" in dialogs[0] and "replaces" in dialogs[0]
    assert list(web.stub.GetQueue(agent_pb2.GetQueueRequest(name="web")).ids) == ids  # dismissed: unchanged
    page.remove_listener("dialog", dismiss)
    page.on("dialog", lambda d: d.accept())
    page.click("#ask-button")
    page.wait_for_function("() => document.querySelectorAll('.tile').length === 3")


def test_pages_and_apis_are_not_stored_but_images_are(web_agent: WebAgent) -> None:
    c = web_agent.client()
    for url in ("/queue", "/api/queue", "/progress", "/login", "/api/nope"):
        assert c.get(url).headers["cache-control"] == "no-store", url
    assert "no-store" not in c.get("/static/app.js").headers.get("cache-control", "")
    assert c.get("/thumb/img001.png").headers["cache-control"].startswith("private, max-age=")


def test_back_shows_the_labels_now_and_not_a_signed_out_queue(tmp_path: Path, page: Any) -> None:
    from tests.agent.web.conftest import WRITE_TOKEN

    web = start_web_agent(tmp_path, tokens=True, listen=True, refresh_s=600)
    try:
        ids = [s.id for s in web.stub.Select(agent_pb2.SelectRequest(budget=6, strategy="random")).selected]
        web.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(ids=ids, source="api")))
        page.goto(web.url + "/login?next=/queue")
        page.fill("input[name=name]", "alice")
        page.fill("input[name=token]", WRITE_TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector(".tile.focus")
        page.click(f'.tile[data-id="{ids[0]}"]')
        page.keyboard.press("1")
        page.wait_for_selector(f'.tile[data-id="{ids[0]}"][data-saved="1"]')
        page.goto(web.url + "/progress")
        page.go_back()
        page.wait_for_selector(f'.tile[data-id="{ids[0]}"][data-label="circle"]')
        assert page.locator(f'.tile[data-id="{ids[0]}"] .badge').inner_text() == "circle"
        assert focused_tile(page) != ids[0]
        # signed out, Back: the sign-in page, not the queue with alice's name
        page.click("button:has-text('Sign out')")
        page.wait_for_url("**/login")
        page.go_back()
        page.wait_for_url("**/login**")
        assert "alice" not in page.locator("header").inner_text()
    finally:
        web.stop()


def _toast_has(page: Any, text: str) -> None:
    page.wait_for_function("(t) => document.getElementById('toast').textContent.includes(t)", arg=text)


def _first_label_saved(web: WebAgent, page: Any) -> tuple[str, str]:
    """alice's queue page: her first tile labelled "circle" (key 1) and saved; (that tile, the tile focused next)."""
    open_queue(web, page, "alice")
    first = focused_tile(page)
    page.keyboard.press("1")
    page.wait_for_selector(f'.tile[data-id="{first}"][data-saved="1"]')
    return first, focused_tile(page)


def test_undo_after_a_refused_label_takes_nothing_back(slow_web: WebAgent, page: Any) -> None:
    """A label the agent refused (bob labelled the sample meanwhile) is the last key press: Backspace says there
    is nothing to undo instead of taking back the page's previous, saved label on another sample."""
    web = slow_web
    first, second = _first_label_saved(web, page)
    _bob(web, second, "circle")
    page.keyboard.press("2")  # refused: bob's circle
    page.wait_for_selector(f'.tile[data-id="{second}"].changed')
    page.keyboard.press("Backspace")
    _toast_has(page, "nothing to undo: your last label \"square\" on")
    page.wait_for_timeout(300)
    assert web.labels()[first] == "circle" and web.labels()[second] == "circle"
    assert page.locator(f'.tile[data-id="{first}"]').get_attribute("data-label") == "circle"
    page.keyboard.press("Backspace")  # the next one back: alice's own first label, said with the tile's name
    _toast_has(page, f"undo: {first}: your label \"circle\" taken back")
    assert first not in web.labels()


def test_undo_while_the_label_is_saving_undoes_that_label(slow_web: WebAgent, page: Any) -> None:
    """Backspace pressed while the label is still on its way waits for it and takes back that label, not the
    one before it."""
    web = slow_web
    first, second = _first_label_saved(web, page)
    with slow_labels(web.agent):
        page.keyboard.press("2")
        page.wait_for_timeout(150)
        page.keyboard.press("Backspace")
        _toast_has(page, f"undo: {second}: your label \"square\" taken back")
    assert second not in web.labels() and web.labels()[first] == "circle"
    assert page.locator(f'.tile[data-id="{second}"]').get_attribute("data-label") == ""


def test_undo_of_an_agreeing_label_leaves_the_other_annotators_label(slow_web: WebAgent, page: Any) -> None:
    """bob labels X before alice's page refreshes; alice gives the same label (accepted: an agreement) and
    presses Backspace: X keeps bob's label."""
    web = slow_web
    open_queue(web, page, "alice")
    x = focused_tile(page)
    _bob(web, x, "circle")
    page.keyboard.press("1")
    page.wait_for_selector(f'.tile[data-id="{x}"][data-saved="1"]')
    page.keyboard.press("Backspace")
    _toast_has(page, f"{x} was already labelled \"circle\" by bob; left as it is")
    page.wait_for_timeout(300)
    assert web.labels()[x] == "circle"


def test_a_stale_page_cannot_replace_the_queue(slow_web: WebAgent, page: Any) -> None:
    """The lead replaces the queue after alice's page loaded: alice's "Ask the agent" is refused (409, the
    queue the lead drew stays) and her page shows the queue now."""
    web = slow_web
    open_queue(web, page, "alice", budget=6)
    lead = [s.id for s in web.stub.Select(agent_pb2.SelectRequest(budget=4, strategy="random", seed=9)).selected]
    web.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(ids=lead, source="audit")))
    page.on("dialog", lambda d: d.accept())
    page.fill("input[name=budget]", "3")
    page.click("#ask-button")
    _toast_has(page, "replaced meanwhile")
    page.wait_for_function("() => document.querySelectorAll('.tile').length === 4")
    assert list(web.stub.GetQueue(agent_pb2.GetQueueRequest(name="web")).ids) == lead


def test_the_confirmation_counts_the_whole_queues_open_samples(tmp_path: Path, page: Any) -> None:
    """The queue spans 3 pages of 4; page 1 is all labelled, the other pages are open: the confirmation before
    replacing it counts the whole queue's open samples (GET /api/queue?open=true), not page 1's none."""
    web = start_web_agent(tmp_path, listen=True, refresh_s=600, page_size=4)
    try:
        ids = [f"img{i:03d}.png" for i in range(10, 20)]
        web.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(ids=ids, source="map")))
        client.submit_labels(web.stub, [(i, shape_of(i)) for i in ids[:4]], "setup")
        page.context.add_cookies([{"name": "shortlist_user", "value": "lead", "url": web.url}])
        page.goto(web.url + "/queue")
        page.wait_for_selector(".tile")
        dialogs = dismissed_dialogs(page)
        page.fill("input[name=budget]", "3")
        page.click("#ask-button")
        # the confirmation comes after the page counted the open samples (a request): wait for it, not a fixed
        # time (a fixed 300 ms after the button came back was too short once beside other suites)
        for _ in range(100):
            if dialogs:
                break
            page.wait_for_timeout(100)
        page.wait_for_function("() => !document.getElementById('ask-button').disabled")
        assert dialogs and "6 open sample(s) of 10" in dialogs[0]
        assert list(web.stub.GetQueue(agent_pb2.GetQueueRequest(name="web")).ids) == ids  # dismissed: unchanged
    finally:
        web.stop()


def test_undo_of_a_change_to_someone_elses_label_gives_it_back_in_their_name(slow_web: WebAgent, page: Any) -> None:
    """bob labelled X "circle"; alice changes it to "square" and presses Backspace: X is bob's "circle" again,
    recorded in bob's name (RetractLabels with restore_previous). Was: the undo sent SubmitLabels(X, "circle")
    as alice, so bob's label came back as alice's and Progress credited her with it."""
    web = slow_web
    ids = open_queue(web, page, "alice")
    x = next(i for i in ids if i not in web.labels())
    _bob(web, x, "circle")
    page.reload()
    page.wait_for_selector(f'.tile[data-id="{x}"][data-label="circle"]')
    page.click(f'.tile[data-id="{x}"]')
    page.keyboard.press("2")
    page.wait_for_selector(f'.tile[data-id="{x}"][data-saved="1"][data-label="square"]')
    page.keyboard.press("Backspace")
    _toast_has(page, f'undo: {x} is bob\'s "circle" again (your "square" taken back)')
    page.wait_for_selector(f'.tile[data-id="{x}"][data-label="circle"]:not(.pending)')
    now = {r.id: (r.label, r.annotator) for r in web.stub.ListLabels(agent_pb2.ListLabelsRequest())}
    assert now[x] == ("circle", "bob")
    assert web.history(x) == [("circle", "bob"), ("square", "alice"), ("", "alice"), ("circle", "bob")]
    assert "recorded as yours" not in page.locator("#toast").inner_text()


def test_undo_of_a_change_to_ones_own_label_puts_it_back(slow_web: WebAgent, page: Any) -> None:
    """alice labels X "circle", changes it to "square", presses Backspace: her "circle" is back, in her name,
    not a label of hers given again (a restore row)."""
    web = slow_web
    open_queue(web, page, "alice")
    x = focused_tile(page)
    page.keyboard.press("1")
    page.wait_for_selector(f'.tile[data-id="{x}"][data-saved="1"][data-label="circle"]')
    page.click(f'.tile[data-id="{x}"]')
    page.keyboard.press("2")
    page.wait_for_selector(f'.tile[data-id="{x}"][data-saved="1"][data-label="square"]:not(.pending)')
    page.keyboard.press("Backspace")
    _toast_has(page, f'undo: {x} is "circle" again (your "square" taken back)')
    page.wait_for_selector(f'.tile[data-id="{x}"][data-label="circle"]:not(.pending)')
    assert web.labels()[x] == "circle"
    assert web.history(x) == [("circle", "alice"), ("square", "alice"), ("", "alice"), ("circle", "alice")]


def test_wrong_key_undo_right_key_on_a_slow_connection(slow_web: WebAgent, page: Any) -> None:
    """Every request takes 0.8 s more (the browser's network emulation): "1", Backspace, "2" pressed at once go
    to the agent in that order, so the sample ends "square" (alice's last key), and no notice says that alice
    labelled it meanwhile."""
    web = slow_web
    open_queue(web, page, "alice")
    x = focused_tile(page)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions",
             {"offline": False, "latency": 800, "downloadThroughput": -1, "uploadThroughput": -1})
    toasts: list[str] = []
    page.expose_function("noteToast", lambda t: toasts.append(t))
    page.evaluate("""() => new MutationObserver(() => window.noteToast(document.getElementById('toast').textContent))
                   .observe(document.getElementById('toast'), {childList: true, characterData: true, subtree: true})""")
    page.keyboard.press("1")
    page.wait_for_timeout(100)
    page.keyboard.press("Backspace")
    page.wait_for_timeout(100)
    assert focused_tile(page) == x
    page.keyboard.press("2")
    page.wait_for_selector(f'.tile[data-id="{x}"][data-saved="1"][data-label="square"]:not(.pending)', timeout=20_000)
    assert web.labels()[x] == "square"
    assert web.history(x) == [("circle", "alice"), ("", "alice"), ("square", "alice")]
    assert not [t for t in toasts if "meanwhile" in t or "not saved" in t], toasts


def test_a_label_sent_while_the_agent_is_away_is_sent_again_when_it_answers(slow_web: WebAgent, page: Any) -> None:
    """`serve --web-port` restarting takes the app away with the agent: the label's request gets no answer at
    all (the browser's "Failed to fetch"). The page says its own server, the web app, is not reachable (not
    the browser's words, nor "the agent", which a labeller saw with the app stopped and the agent up), and sends
    the label again once it answers; while `shortlist web` answers 503 "not reachable", it says the agent."""
    web = slow_web
    answer = _labels_answered(page)
    open_queue(web, page, "alice")
    x = focused_tile(page)
    answer[0] = "none"  # no answer: the app is down with the agent
    page.keyboard.press("1")
    _toast_has(page, f"{x}: the web app (this page's server) is not reachable; your label \"circle\" is sent "
                     "again as soon as it answers")
    assert "Failed to fetch" not in page.locator("#toast").inner_text()
    page.wait_for_timeout(1500)
    assert x not in web.labels()
    answer[0] = "app"
    page.wait_for_selector(f'.tile[data-id="{x}"][data-saved="1"][data-label="circle"]', timeout=10_000)
    assert web.labels()[x] == "circle"
    _toast_has(page, f"the agent answers again: {x} labelled circle")
    y = focused_tile(page)
    answer[0] = "503"  # `shortlist web` answers, its agent does not
    page.keyboard.press("2")
    _toast_has(page, f"{y}: the agent is not reachable; your label \"square\" is sent again")
    answer[0] = "app"
    page.wait_for_selector(f'.tile[data-id="{y}"][data-saved="1"][data-label="square"]', timeout=10_000)
    assert web.labels()[y] == "square"


# Routes are registered before the page loads. Registered on a loaded page, a request sent at the next key press
# went out uncaught now and then (two of these tests each failed so once in CI, the handler never called): most
# likely chromium starts intercepting a loaded page's requests some time after page.route() returns, once the
# page has new loader factories.
def _labels_answered(page: Any) -> list[str]:
    """Route the page's POST /api/labels by the list's one item, set by the test as it goes: "app" (the
    request goes through), "none" (no answer at all, as when the app is down with the agent) or "503" (the app
    answers that its agent is not reachable)."""
    answer = ["app"]

    def route_by_answer(route: Any) -> None:
        if answer[0] == "none":
            route.abort()
        elif answer[0] == "503":
            route.fulfill(status=503, content_type="application/json", body=(
                '{"error": "UNAVAILABLE", "message": "the agent is not reachable; retrying: this page works again as '
                'soon as it is back"}'))
        else:
            route.continue_()

    page.route("**/api/labels", route_by_answer)
    return answer


def _first_answer_lost(page: Any, pattern: str) -> list[int]:
    """Route the page's first request to ``pattern`` to the app (which acts on it) and drop the answer, as when
    the app went down with it; later ones go through. The list gets an item once that happened. Called before
    the page loads (above)."""
    lost: list[int] = []

    def stored_then_lost(route: Any) -> None:
        if not lost:
            lost.append(1)  # first: a handler that raises is skipped, and the request would go through as it is
            try:
                route.fetch(timeout=60_000)  # the app and the agent act on it ...
            finally:
                route.abort()  # ... and the answer never comes
        else:
            route.continue_()

    page.route(pattern, stored_then_lost)
    return lost


def test_a_label_stored_but_unanswered_and_sent_again_is_still_undone(slow_web: WebAgent, page: Any) -> None:
    """The agent stored the label but its answer was lost (the app went down with it): the page sends it again,
    the agent takes the resend as the same label (no agreement with someone else, no second row), the tile
    shows it saved, and Backspace takes it back."""
    web = slow_web
    lost = _first_answer_lost(page, "**/api/labels")
    open_queue(web, page, "alice")
    x = focused_tile(page)
    page.keyboard.press("1")
    page.wait_for_selector(f'.tile[data-id="{x}"][data-saved="1"][data-label="circle"]', timeout=20_000)
    assert lost and web.labels()[x] == "circle"
    page.keyboard.press("Backspace")
    _toast_has(page, f"undo: {x}: your label \"circle\" taken back")
    assert x not in web.labels()


def test_an_undo_of_a_change_applied_but_unanswered_and_sent_again_is_shown_done(slow_web: WebAgent,
                                                                                   page: Any) -> None:
    """alice changes her "circle" to "square" and undoes it; the agent puts "circle" back but its answer is lost,
    so the page sends the undo again: the agent refuses the resend as already applied by her (``changed``). The
    tile showed "your undo was not applied ... meanwhile" (a change by someone else); it shows the undo done."""
    web = slow_web
    lost = _first_answer_lost(page, "**/api/labels/retract")
    open_queue(web, page, "alice")
    x = focused_tile(page)
    page.keyboard.press("1")  # circle
    page.wait_for_selector(f'.tile[data-id="{x}"][data-saved="1"][data-label="circle"]')
    page.keyboard.press("ArrowLeft")
    assert focused_tile(page) == x
    page.keyboard.press("2")  # square: a change
    page.wait_for_selector(f'.tile[data-id="{x}"][data-saved="1"][data-label="square"]')
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Backspace")
    page.wait_for_selector(f'.tile[data-id="{x}"][data-saved="1"][data-label="circle"]:not(.pending)', timeout=20_000)
    assert lost and web.labels()[x] == "circle"
    assert page.locator(f'.tile[data-id="{x}"].changed').count() == 0
    assert "not applied" not in page.locator("#toast").inner_text()


def test_the_last_open_page_done_says_the_queue_is_done(tmp_path: Path, page: Any) -> None:
    """A queue of 3 pages of 4 whose pages 2 and 3 the team has labelled: finishing page 1 says the whole queue is
    done (it said "Page done: ] for the next page" whenever the queue had more than one page)."""
    web = start_web_agent(tmp_path, listen=True, refresh_s=600, page_size=4)
    try:
        ids = [f"img{i:03d}.png" for i in range(10, 20)]
        web.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(ids=ids, source="map")))
        client.submit_labels(web.stub, [(i, shape_of(i)) for i in ids[4:]], "team")
        page.context.add_cookies([{"name": "shortlist_user", "value": "lead", "url": web.url}])
        page.goto(web.url + "/queue?page=1")
        page.wait_for_selector(".tile")
        for sid in ids[:4]:
            page.click(f'.tile[data-id="{sid}"]')
            page.keyboard.press("1")
            page.wait_for_selector(f'.tile[data-id="{sid}"][data-saved="1"]')
        _toast_has(page, "Queue done: ask the agent for the next samples")
    finally:
        web.stop()


@pytest.mark.parametrize("https", [False, True])
def test_sign_out_clears_the_cached_images(tmp_path: Path, browser: Any, https: bool) -> None:
    """Images are kept in the browser's cache for a day; "Sign out" makes chromium drop them (Clear-Site-Data:
    "cache"), over http://127.0.0.1 and over https: after signing in again the image comes from the app, not
    from the disk of a shared workstation."""
    from tests.agent.pki import make_pki
    from tests.agent.web.conftest import WRITE_TOKEN, start_web_agent

    tls: dict[str, Any] = {}
    if https:
        import base64
        import hashlib

        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        from tests.agent.web.conftest import CHROMIUM, CHROMIUM_ARGS

        pki = make_pki(tmp_path / "pki")
        tls = {"https_cert": pki.server_cert, "https_key": pki.server_key}
        # chromium caches nothing from a site whose certificate it had to ignore: trust the test's certificate
        # by its key instead, so that the site counts as a valid https one
        key = x509.load_pem_x509_certificate(pki.server_cert.read_bytes()).public_key()
        spki = base64.b64encode(hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
                                .digest()).decode()
        browser = browser.browser_type.launch(executable_path=CHROMIUM, headless=True, args=[
            *CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={spki}"])
    wa = start_web_agent(tmp_path, tokens=True, listen=True, **tls)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        cached: dict[str, bool] = {}
        cdp.on("Network.responseReceived", lambda e: cached.__setitem__(
            e["response"]["url"], bool(e["response"].get("fromDiskCache") or e["response"].get("fromMemoryCache"))))

        def sign_in() -> None:
            page.goto(wa.url + "/login")
            page.fill("input[name=name]", "ana")
            page.fill("input[name=token]", WRITE_TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url("**/queue*")

        url = wa.url + "/image/img003.png"
        sign_in()
        for _ in range(2):
            page.goto(url)
        assert cached[url], "the second view of an image should come from the cache"  # the test can see it
        page.goto(wa.url + "/queue")
        page.click("text=Sign out")
        page.wait_for_url("**/login*")
        assert not [c for c in context.cookies() if c["name"] == "shortlist_token"]
        sign_in()
        page.goto(url)
        assert not cached[url], "the image came from the cache after Sign out"
    finally:
        context.close()
        if https:
            browser.close()
        wa.stop()
