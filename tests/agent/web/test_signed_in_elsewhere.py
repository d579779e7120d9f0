"""A page's writes carry the annotator it was loaded for (X-Shortlist-As): on a shared computer, a tab opened
as "ana" after the browser signed in as "ben" in another tab is refused (409), nothing stored; and Sign out
clears the tab's kept lists (sessionStorage) itself, since browsers ignore Clear-Site-Data over plain http."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import pytest

from shortlist.v1 import agent_pb2
from tests.agent.web.conftest import WebAgent, open_queue

ELSEWHERE = "you are signed in as ben in another tab: reload this page to label as ben"


def _queue(web: WebAgent) -> list[str]:
    web.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(
        ids=[s.id for s in web.stub.Select(agent_pb2.SelectRequest(budget=6, strategy="random")).selected],
        source="select")))
    return list(web.stub.GetQueue(agent_pb2.GetQueueRequest(name="web")).ids)


def test_a_write_from_a_page_loaded_for_someone_else_is_refused(web_agent: WebAgent) -> None:
    ids = _queue(web_agent)
    ben = web_agent.client(cookies={"shortlist_user": "ben"})  # the browser's cookies: ben signed in last
    page = ben.get("/queue").text
    assert re.search(r'<meta name="shortlist-as" content="ben">', page)  # what a page sends back
    ana = {"X-Shortlist-As": "ana"}  # the tab still showing ana
    writes: list[tuple[str, dict[str, Any]]] = [
        ("/api/labels", {"labels": [{"id": ids[0], "label": "square"}]}),
        ("/api/labels/retract", {"ids": [ids[0]]}),
        ("/api/queue/mark", {"id": ids[1], "mark": "skip"}),
        ("/api/priors/labels", {"method": "knn", "labels": [{"id": ids[2], "label": "circle"}]}),
        ("/api/queue", {"ids": ids[:2]}),
        ("/api/queue/select", {"strategy": "random", "budget": 3}),
    ]
    for path, body in writes:
        r = ben.post(path, json=body, headers=ana)
        assert r.status_code == 409, (path, r.text)
        assert r.json() == {"error": "SIGNED_IN_ELSEWHERE", "message": ELSEWHERE}, path
    assert not any(r.annotator in ("ana", "ben") for r in
                   web_agent.stub.ListLabels(agent_pb2.ListLabelsRequest(history=True)))
    q = ben.get("/api/queue").json()
    assert [it["id"] for it in q["items"]] == ids and not any(it["mark"] for it in q["items"])
    # the page loaded for ben (a name beyond latin-1, percent-encoded as app.js sends it) writes as before
    r = ben.post("/api/labels", json={"labels": [{"id": ids[0], "label": "square"}]}, headers={"X-Shortlist-As": "ben"})
    assert r.status_code == 200 and r.json()["annotator"] == "ben"
    zw = web_agent.client(cookies={"shortlist_user": quote("张伟", safe="")})
    r = zw.post("/api/labels", json={"labels": [{"id": ids[1], "label": "circle"}]},
                headers={"X-Shortlist-As": quote("张伟", safe="")})
    assert r.status_code == 200 and r.json()["annotator"] == "张伟"
    # signed out in the other tab (no name: labels would go under "web"): refused, said so
    r = web_agent.client().post("/api/labels", json={"labels": [{"id": ids[2], "label": "circle"}]}, headers=ana)
    assert r.status_code == 409 and "signed out in another tab" in r.json()["message"]
    assert ids[2] not in web_agent.labels()


@pytest.mark.browser
def test_two_tabs_a_label_in_the_tab_of_the_earlier_sign_in_is_refused(live_web: WebAgent, page: Any) -> None:
    web = live_web
    ids = open_queue(web, page, "ana")  # tab 1: ana
    tab2 = page.context.new_page()
    tab2.set_default_timeout(15_000)
    open_queue(web, tab2, "ben")  # tab 2, same browser: ben signs in (the cookie is ben's now)
    page.bring_to_front()
    sid = str(page.locator(".tile.focus").get_attribute("data-id"))
    page.keyboard.press("1")
    page.wait_for_selector(f'.tile[data-id="{sid}"].failed')
    assert page.locator("#elsewhere").inner_text() == ELSEWHERE
    assert sid not in web.labels() and len(ids) > 1
    history = web.stub.ListLabels(agent_pb2.ListLabelsRequest(history=True))
    assert not any(r.annotator in ("ana", "ben") for r in history)


@pytest.mark.browser
def test_sign_out_clears_the_tabs_kept_lists(live_web: WebAgent, page: Any) -> None:
    """The Queue's kept history and what was not answered go at Sign out, on any origin: the page clears them
    (the test's origin, 127.0.0.1, is a secure context where Clear-Site-Data would too: the answer's header is
    taken out here, as browsers ignore it over plain http)."""
    web = live_web

    def without_clear_site_data(route: Any) -> None:
        resp = route.fetch(max_redirects=0)
        route.fulfill(response=resp, headers={k: v for k, v in resp.headers.items() if k != "clear-site-data"})

    page.route("**/logout", without_clear_site_data)
    open_queue(web, page, "ana")
    sid = str(page.locator(".tile.focus").get_attribute("data-id"))
    page.keyboard.press("2")
    page.wait_for_selector(f'.tile[data-id="{sid}"][data-saved="1"]')
    page.route("**/api/labels", lambda route: None)  # never answered: pending, kept as not sent
    page.keyboard.press("ArrowRight")
    page.keyboard.press("1")
    page.wait_for_function("Object.keys(sessionStorage).some((k) => k.startsWith('shortlist.unsent:ana'))")
    asked: list[str] = []

    def accept(d: Any) -> None:
        asked.append(d.message)
        d.accept()

    page.on("dialog", accept)
    page.click("text=Sign out")
    page.wait_for_url("**/login*")
    assert page.evaluate("Object.keys(sessionStorage).filter((k) => k.startsWith('shortlist.'))") == []
    assert len(asked) == 1 and "1 action(s) not saved yet" in asked[0] and "will be dropped" in asked[0]
