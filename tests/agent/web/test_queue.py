"""Queue routes: ask the agent for the next N (strategies from the registry), the queue's pages, labels
as SubmitLabels with the annotator, marks, setting the queue from ids (the map's selections)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient

from agent import client
from agent.web.app import create_app
from shortlist.v1 import agent_pb2
from tests.agent.web.conftest import (
    BASE_URL,
    LABELLED,
    N_IMAGES,
    READ_TOKEN,
    WRITE_TOKEN,
    WebAgent,
    shape_of,
    start_web_agent,
)


def _data(html: str) -> dict:  # type: ignore[type-arg]
    m = re.search(r'<script type="application/json" id="queue-data">(.*?)</script>', html, re.S)
    assert m
    return json.loads(m.group(1))


def test_strategy_chooser_comes_from_the_registry(web_agent: WebAgent) -> None:
    from agent.strategies import STRATEGIES

    data = _data(web_agent.client().get("/queue").text)
    names = [s["name"] for s in data["strategies"]]
    assert names == sorted(STRATEGIES)
    typiclust = next(s for s in data["strategies"] if s["name"] == "typiclust")
    assert typiclust["params"] == STRATEGIES["typiclust"].describe()["params"]
    assert data["classes"] == [["1", "circle"], ["2", "square"]] and data["classes_open"] is True


def test_ask_label_mark_and_page(web_agent: WebAgent) -> None:
    c = web_agent.client(cookies={"shortlist_user": "Bea"})
    r = c.post("/api/queue/select", json={"strategy": "random", "budget": 20, "seed": 1})
    assert r.status_code == 200 and r.json()["total"] == 20
    q = c.get("/api/queue").json()
    assert q["total"] == 20 and q["strategy"] == "random" and len(q["items"]) == 20
    ids = [it["id"] for it in q["items"]]
    assert all(it["label"] == "" for it in q["items"])  # random picks unlabelled samples
    saved = c.post("/api/labels", json={"labels": [{"id": ids[0], "label": "square"}]}).json()
    assert saved == {"accepted": 1, "annotator": "Bea", "rejected": [], "rejected_count": 0, "agreed": [],
                     "agreed_count": 0, "overwritten": [], "twin_conflicts": []}
    assert web_agent.labels()[ids[0]] == "square"
    assert c.post("/api/queue/mark", json={"id": ids[1], "mark": "unsure"}).status_code == 200
    items = {it["id"]: it for it in c.get("/api/queue").json()["items"]}
    assert items[ids[0]]["label"] == "square" and items[ids[1]]["mark"] == "unsure"
    page = c.get("/queue")
    assert page.status_code == 200 and f'data-id="{ids[0]}" data-label="square"' in page.text
    # a new class name (the class list is open) is a label like any other
    assert c.post("/api/labels", json={"labels": [{"id": ids[2], "label": "hexagon"}]}).json()["accepted"] == 1
    assert "hexagon" in web_agent.stub.GetStatus(__import__("shortlist.v1.agent_pb2", fromlist=["x"])
                                                 .GetStatusRequest()).classes


def test_a_select_that_chooses_nothing_keeps_the_queue(web_agent: WebAgent) -> None:
    """A metadata filter that matches nothing: the team's queue and its marks stay, and the answer says why."""
    c = web_agent.client(cookies={"shortlist_user": "Bea"})
    first = c.post("/api/queue/select", json={"strategy": "random", "budget": 5, "seed": 1}).json()
    ids = [it["id"] for it in c.get("/api/queue").json()["items"]]
    assert len(ids) == 5 and c.post("/api/queue/mark", json={"id": ids[0], "mark": "skip"}).status_code == 200
    created = c.get("/api/queue").json()["created"]
    r = c.post("/api/queue/select", json={"strategy": "random", "budget": 5, "where": {"site": "reef"},
                                          "if_created": created})
    assert r.status_code == 404, r.text
    message = r.json()["message"]
    assert message.startswith("no unlabelled sample matches site=reef; the queue was kept"), message
    q = c.get("/api/queue").json()
    assert [it["id"] for it in q["items"]] == ids and q["created"] == created
    assert q["selection_id"] == first["selection_id"] and q["items"][0]["mark"] == "skip"


def test_pages_of_the_queue(web_agent: WebAgent) -> None:
    c = web_agent.client()
    unlabelled = N_IMAGES - LABELLED + 2  # two of the first LABELLED (triangles) carry no label
    assert c.post("/api/queue/select", json={"strategy": "random", "budget": unlabelled}).json()["total"] == unlabelled
    web_agent.app.state.config.__dict__["page_size"] = 12  # frozen dataclass: tests only
    first, last = c.get("/api/queue?page=1").json(), c.get("/api/queue?page=99").json()
    assert (first["pages"], len(first["items"]), last["page"], len(last["items"])) == (3, 12, 3, 8)


def test_bad_requests_are_400_with_what_to_do(web_agent: WebAgent) -> None:
    c = web_agent.client()
    r = c.post("/api/queue/select", json={"strategy": "typiclust", "budget": 5, "params": {"knn": "1000"}})
    assert r.status_code == 400 and "knn" in r.json()["message"]
    r = c.post("/api/queue/select", json={"strategy": "nope", "budget": 5})
    assert r.status_code == 400 and "valid" in r.json()["message"]
    assert c.post("/api/queue/select", json={"strategy": "random", "budget": 0}).status_code == 400
    assert c.post("/api/queue", json={"ids": ["img001.png", "nope"]}).status_code == 404
    rejected = c.post("/api/labels", json={"labels": [{"id": "nope", "label": "circle"}]}).json()
    assert rejected["accepted"] == 0 and "unknown id" in rejected["rejected"][0]["reason"]
    assert c.post("/api/labels", content="id=1", headers={"content-type": "application/x-www-form-urlencoded"}
                  ).status_code == 422  # forms (another site's) cannot label: JSON only


def test_set_queue_from_ids(web_agent: WebAgent) -> None:
    c = web_agent.client()
    r = c.post("/api/queue", json={"ids": ["img030.png", "img031.png", "img030.png"], "source": "map"})
    assert r.json() == {"total": 2}
    q = c.get("/api/queue").json()
    assert [it["id"] for it in q["items"]] == ["img030.png", "img031.png"] and q["source"] == "map"


def test_ids_with_slashes_and_odd_characters(live_web: WebAgent) -> None:
    """Sample ids are paths inside a source: the grid's image URLs and the large view's reach them. (Over
    HTTP: Starlette's TestClient decodes a path twice, so "%20" in an id would not survive it.)"""
    import urllib.request
    from urllib.parse import quote

    from agent import client
    from tests.agent.web.conftest import shape_image

    odd = "site 2/cam#1/a?b%20c.png"
    client.ingest(live_web.stub, [client.image_sample(odd, shape_image(1))])
    c = live_web.client()
    assert c.post("/api/queue", json={"ids": [odd]}).status_code == 200
    page = c.get("/queue").text
    m = re.search(r'<img decoding="async" alt="[^"]*" src="([^"]+)"', page)
    assert m
    for url in (m.group(1).replace("&amp;", "&"), "/image/" + quote(odd, safe="")):  # the large view's URL
        with urllib.request.urlopen(live_web.url + url, timeout=10) as r:
            assert r.status == 200 and r.headers["content-type"].startswith("image/")


def test_undo_of_a_first_label_retracts_it(web_agent: WebAgent) -> None:
    c = web_agent.client(cookies={"shortlist_user": "Bea"})
    sid = "img020.png"
    assert c.post("/api/labels", json={"labels": [{"id": sid, "label": "circle"}]}).json()["accepted"] == 1
    r = c.post("/api/labels/retract", json={"ids": [sid, "nope", "img021.png"]}).json()
    assert r["accepted"] == 1 and r["annotator"] == "Bea"
    assert {x["id"]: x["reason"] for x in r["rejected"]} == {
        "nope": "unknown id \"nope\": ingest it first", "img021.png": "not labelled: nothing to retract"}
    assert sid not in web_agent.labels()
    history = [(e.label, e.annotator, e.retracted) for e in web_agent.stub.ListLabels(
        agent_pb2.ListLabelsRequest(history=True)) if e.id == sid]
    assert history == [("circle", "Bea", False), ("", "Bea", True)]
    assert c.post("/api/labels/retract", json={"ids": []}).status_code == 422
    # a prior accepted on the Review priors page, then taken back: the sample is on that page again
    prior = c.get("/api/priors", params={"method": "knn"}).json()["items"][0]
    assert c.post("/api/priors/labels", json={"method": "knn", "labels": [prior]}).json()["accepted"] == 1

    def ids() -> set[str]:
        return {it["id"] for it in c.get("/api/priors", params={"method": "knn", "size": 100}).json()["items"]}

    assert prior["id"] not in ids()
    assert c.post("/api/labels/retract", json={"ids": [prior["id"]]}).json()["accepted"] == 1
    assert prior["id"] in ids()


def test_undo_of_a_change_puts_the_label_before_back_in_its_givers_name(web_agent: WebAgent) -> None:
    """``restore_previous`` (the Queue's undo of a change): Bea's change of Ann's label taken back gives the
    sample Ann's label again, recorded as Ann's; refused while the label is not Bea's "square" any more."""
    ann = web_agent.client(cookies={"shortlist_user": "Ann"})
    bea = web_agent.client(cookies={"shortlist_user": "Bea"})
    sid = "img022.png"
    assert ann.post("/api/labels", json={"labels": [{"id": sid, "label": "circle"}]}).json()["accepted"] == 1
    assert bea.post("/api/labels", json={"labels": [{"id": sid, "label": "square", "if_current": "circle"}]}
                    ).json()["accepted"] == 1
    stale = bea.post("/api/labels/retract", json={"ids": [sid], "if_current": {sid: "triangle"},
                                                   "restore_previous": True}).json()
    assert stale["accepted"] == 0 and stale["rejected"][0]["changed"] and stale["rejected"][0]["by"] == "Bea"
    r = bea.post("/api/labels/retract", json={"ids": [sid], "if_current": {sid: "square"},
                                               "restore_previous": True}).json()
    assert r["accepted"] == 1 and not r["rejected"]
    now = {e.id: (e.label, e.annotator, e.source) for e in web_agent.stub.ListLabels(agent_pb2.ListLabelsRequest())}
    assert now[sid] == ("circle", "Ann", "restored")


def test_conditional_labels_and_retractions(web_agent: WebAgent) -> None:
    """``if_current``: a label or an undo is stored only while the sample has the label the page showed; a
    refusal says what it is now and who gave it, and carries the label now for the page to show."""
    alice, bob = (web_agent.client(cookies={"shortlist_user": n}) for n in ("alice", "bob"))
    sid = "img020.png"
    assert alice.post("/api/labels", json={"labels": [{"id": sid, "label": "circle", "if_current": ""}]}
                      ).json()["accepted"] == 1
    r = bob.post("/api/labels", json={"labels": [{"id": sid, "label": "square", "if_current": ""}]}).json()
    assert r["accepted"] == 0 and r["rejected"] == [{
        "id": sid, "changed": True, "label": "circle", "by": "alice", "code": "REJECTION_CODE_CONFLICT",
        "reason": "labelled \"circle\" by alice meanwhile (expected unlabelled)"}]
    assert bob.post("/api/labels", json={"labels": [{"id": sid, "label": "square", "if_current": "circle"}]}
                    ).json()["accepted"] == 1
    r = alice.post("/api/labels/retract", json={"ids": [sid], "if_current": {sid: "circle"}}).json()  # alice's undo
    assert r["accepted"] == 0 and r["rejected"][0]["changed"] and r["rejected"][0]["label"] == "square"
    assert "by bob" in r["rejected"][0]["reason"]
    assert web_agent.labels()[sid] == "square"
    assert alice.post("/api/labels", json={"labels": [{"id": sid, "label": "circle", "if_current": "circle"}]}
                      ).json()["rejected"][0]["changed"]
    # without a condition the last write wins (API clients that want it)
    assert alice.post("/api/labels", json={"labels": [{"id": sid, "label": "circle"}]}).json()["accepted"] == 1
    assert bob.post("/api/labels/retract", json={"ids": [sid], "if_current": {sid: "circle"}}).json()["accepted"] == 1
    assert sid not in web_agent.labels()


def test_a_read_token_cannot_retract(token_web_agent: WebAgent) -> None:
    reader = token_web_agent.client(headers={"Authorization": f"Bearer {READ_TOKEN}"})
    r = reader.post("/api/labels/retract", json={"ids": ["img000.png"]})
    assert r.status_code == 403 and r.json()["error"] == "PERMISSION_DENIED"
    assert "img000.png" in token_web_agent.labels()


def test_the_queue_survives_a_restart_of_the_app_and_of_the_agent(tmp_path: Path) -> None:
    wa = start_web_agent(tmp_path)
    try:
        c = wa.client(cookies={"shortlist_user": "Bea"})
        c.post("/api/queue/select", json={"strategy": "random", "budget": 8, "seed": 3})
        ids = [it["id"] for it in c.get("/api/queue").json()["items"]]
        c.post("/api/labels", json={"labels": [{"id": ids[0], "label": "circle"}]})
        c.post("/api/queue/mark", json={"id": ids[1], "mark": "skip"})
        assert c.post("/api/queue/mark", json={"id": "img000.png", "mark": "skip"}).status_code == 404  # not queued
        # another app process on the same agent (e.g. `shortlist web` beside `serve --web-port`) sees the same
        other = create_app(wa.config, wa.local.factory())
        with TestClient(other, base_url=BASE_URL) as c2:
            assert [it["id"] for it in c2.get("/api/queue").json()["items"]] == ids
        other.state.stub.close()
        before = c.get("/api/queue").json()
    finally:
        wa.stop()
    again = start_web_agent(tmp_path)  # agent and app restarted on the same data folder
    try:
        c = again.client()
        after = c.get("/api/queue").json()
        assert after == before and after["strategy"] == "random" and after["source"] == "select"
        items = {it["id"]: it for it in after["items"]}
        assert items[ids[0]]["label"] == "circle" and items[ids[1]]["mark"] == "skip"
        assert f'data-id="{ids[1]}"' in c.get("/queue").text
    finally:
        again.stop()


def test_an_agreeing_label_says_who_gave_it_first(web_agent: WebAgent) -> None:
    """A label the sample already had (given by someone else before the page saw it) is accepted and comes
    back in ``agreed`` with who gave it, so the page's undo leaves it; a resend of one's own label does not."""
    alice, ben = (web_agent.client(cookies={"shortlist_user": n}) for n in ("alice", "ben"))
    sid = "img021.png"
    r = ben.post("/api/labels", json={"labels": [{"id": sid, "label": "circle", "if_current": ""}]}).json()
    assert r["accepted"] == 1 and r["agreed"] == []
    r = alice.post("/api/labels", json={"labels": [{"id": sid, "label": "circle", "if_current": ""}]}).json()
    assert r["accepted"] == 1 and r["agreed"] == [{"id": sid, "label": "circle", "by": "ben"}]
    r = ben.post("/api/labels", json={"labels": [{"id": sid, "label": "circle", "if_current": ""}]}).json()
    assert r["agreed"] == [{"id": sid, "label": "circle", "by": "alice"}]  # alice's row is the latest now
    r = ben.post("/api/labels", json={"labels": [{"id": sid, "label": "circle", "if_current": ""}]}).json()
    assert r["accepted"] == 1 and r["agreed"] == []  # his own resend
    r = alice.post("/api/labels", json={"labels": [{"id": sid, "label": "circle", "if_current": "circle"}]}).json()
    assert r["agreed"] == []  # the label the page showed: nothing it had not seen


def test_replacing_the_queue_is_conditional_on_the_queue_shown(web_agent: WebAgent) -> None:
    """``if_created``: a page that shows an older queue than the agent's cannot replace it (409, nothing
    changes, no Select spent); without it (API clients) the last write wins."""
    c = web_agent.client(cookies={"shortlist_user": "lead"})
    shown = c.get("/api/queue").json()["created"]
    assert c.post("/api/queue/select", json={"strategy": "random", "budget": 5, "if_created": shown}).status_code == 200
    now = c.get("/api/queue").json()
    assert now["created"] != shown
    stale = c.post("/api/queue/select", json={"strategy": "random", "budget": 7, "if_created": shown})
    assert stale.status_code == 409 and "replaced meanwhile" in stale.json()["message"]
    r = c.post("/api/queue", json={"ids": ["img000.png"], "if_created": shown})
    assert r.status_code == 409 and "replaced meanwhile by strategy random (5 samples" in r.json()["message"]
    assert c.get("/api/queue").json()["created"] == now["created"] and c.get("/api/queue").json()["total"] == 5
    # the agent checks it atomically too (UpdateQueue.if_created), for any client
    with pytest.raises(grpc.RpcError) as e:
        web_agent.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(
            name="web", queue=agent_pb2.Queue(ids=["img001.png"]), if_created=shown))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert c.post("/api/queue", json={"ids": ["img000.png"], "if_created": now["created"]}).status_code == 200
    assert c.post("/api/queue", json={"ids": ["img001.png"]}).json()["total"] == 1


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_non_finite_if_created_is_400_before_any_select(web_agent: WebAgent, monkeypatch: pytest.MonkeyPatch,
                                                          value: str) -> None:
    """``if_created`` NaN (JSON as Python reads it; JS's Number(undefined)) compared unequal to nothing, so the
    app's own check let it through and spent a Select before the agent refused the replacement: now 400 with
    what to send, no Select, the queue as it was (both the select and the set routes)."""
    c = web_agent.client(cookies={"shortlist_user": "lead"})
    assert c.post("/api/queue", json={"ids": ["img000.png", "img001.png"]}).status_code == 200
    before = c.get("/api/queue").json()
    selects: list[int] = []
    real = web_agent.agent.select

    def select(*a: Any, **kw: Any) -> Any:
        selects.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(web_agent.agent, "select", select)
    for path, body in (("/api/queue/select", '{"strategy": "random", "budget": 5, "if_created": %s}'),
                       ("/api/queue", '{"ids": ["img002.png"], "if_created": %s}')):
        r = c.post(path, content=body % value, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (path, r.status_code, r.text)
        assert r.json()["error"] == "INVALID_ARGUMENT"
        assert "is not a finite number" in r.json()["message"] and "GET /api/queue" in r.json()["message"]
    assert selects == []
    after = c.get("/api/queue").json()
    assert (after["created"], after["total"]) == (before["created"], 2)


def test_the_queue_api_counts_the_whole_queues_open_samples_on_request(tmp_path: Path) -> None:
    """``GET /api/queue?open=true``: how many of the whole queue's samples are unlabelled (every page, not
    the one asked for; the page's confirmation before replacing the queue); without it, no ``open``."""
    wa = start_web_agent(tmp_path, page_size=4)
    try:
        c = wa.client()
        ids = [f"img{i:03d}.png" for i in range(10, 20)]
        assert c.post("/api/queue", json={"ids": ids, "source": "map"}).status_code == 200
        client.submit_labels(wa.stub, [(i, shape_of(i)) for i in ids[:4]], "setup")
        assert "open" not in c.get("/api/queue").json()
        d = c.get("/api/queue", params={"open": "true"}).json()
        assert (d["open"], d["total"], len(d["items"])) == (6, 10, 4) and all(it["label"] for it in d["items"])
    finally:
        wa.stop()


def test_a_label_unlike_a_byte_identical_twins_is_reported(web_agent: WebAgent) -> None:
    """The same image under another id (a re-uploaded card) labelled otherwise: stored, and the answer says so."""
    sid = "img021.png"
    payload = next(s for s in web_agent.stub.ListSamples(agent_pb2.ListSamplesRequest(include_payload=True))
                   if s.id == sid).encoded_image
    assert client.ingest(web_agent.stub, [client.image_sample("again/" + sid, payload)]).same_payload == 1
    c = web_agent.client(cookies={"shortlist_user": "Bea"})
    assert c.post("/api/labels", json={"labels": [{"id": sid, "label": "circle"}]}).json()["twin_conflicts"] == []
    r = c.post("/api/labels", json={"labels": [{"id": "again/" + sid, "label": "square"}]}).json()
    assert r["accepted"] == 1 and r["twin_conflicts"] == [{"id": "again/" + sid, "twin_id": sid,
                                                           "twin_label": "circle"}]
    # the same through Review priors' correction (another copy, labelled there otherwise)
    assert client.ingest(web_agent.stub, [client.image_sample("third/" + sid, payload)]).same_payload == 1
    r = c.post("/api/priors/labels", json={"method": "knn", "labels": [{"id": "third/" + sid, "label": "square"}]})
    assert r.status_code == 200 and {"id": "third/" + sid, "twin_id": sid, "twin_label": "circle"} in r.json()[
        "twin_conflicts"], r.json()


def test_a_class_renamed_meanwhile_leaves_the_queues_class_list_and_a_stale_page_is_told_the_new_name(
        token_web_agent: WebAgent) -> None:
    """RenameClass (write role: a read token is refused): the Queue's class list shows the new name in the old
    one's place (its key); a page opened before the rename that sends the old name gets it back as a rejection
    that names the new name, and nothing is stored (the old name does not come back as a class)."""
    wa = token_web_agent
    reader = client.connect(wa.config.agent, config=client.ClientConfig(token=READ_TOKEN))
    request = agent_pb2.RenameClassRequest(from_class="circle", to_class="round", annotator="lead")
    with pytest.raises(grpc.RpcError) as e:
        reader.RenameClass(request)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    c = wa.client(cookies={"shortlist_user": "Bea"}, headers={"Authorization": f"Bearer {WRITE_TOKEN}"})
    assert c.get("/api/queue").json()["classes"] == ["circle", "square"]
    assert wa.stub.RenameClass(request).moved == 2
    assert c.get("/api/queue").json()["classes"] == ["round", "square"]
    said = c.post("/api/labels", json={"labels": [{"id": "img010.png", "label": "circle"}]}).json()
    assert said["accepted"] == 0 and [r["reason"] for r in said["rejected"]] == [
        "\"circle\" was renamed to \"round\"; label with that"]
    assert "img010.png" not in wa.labels() and c.get("/api/queue").json()["classes"] == ["round", "square"]
    assert wa.history("img000.png") == [("circle", "ingest"), ("round", "lead")]


def test_annotators_on_one_queue_get_different_pages(tmp_path: Path) -> None:
    """Opening the queue and Next (``/queue?after=P``, the ``]`` key) go to the first page with open samples
    that nobody else has open: three people on a 3-page queue start on pages 1, 2, 3, and Next passes by the
    pages someone else is on and the pages already done (falling back to a page with open samples someone
    else is on when no other is left)."""
    wa = start_web_agent(tmp_path, page_size=4)
    try:
        ids = [f"img{i:03d}.png" for i in range(LABELLED, LABELLED + 12)]  # unlabelled samples
        wa.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(ids=ids, source="api")))
        ana, bob, cy = (wa.client(cookies={"shortlist_user": n}) for n in ("ana", "bob", "cy"))
        assert [_data(c.get("/queue").text)["page"] for c in (ana, bob, cy)] == [1, 2, 3]
        nxt = ana.get("/queue?after=1", follow_redirects=False)
        assert nxt.status_code == 303 and nxt.headers["location"] == "/queue?page=2"  # all taken: the next open
        cy.get("/api/queue?page=1")  # cy polls from page 1 now: page 3 is free, page 2 is bob's
        assert ana.get("/queue?after=1", follow_redirects=False).headers["location"] == "/queue?page=3"
        client.submit_labels(wa.stub, [(i, "circle") for i in ids[8:12]], annotator="cy")  # page 3 done
        bob.get("/queue?page=1")  # bob moves to page 1 (a page load, like its polling, says where he is)
        cy.get("/api/queue?page=2")  # cy polls from page 2
        assert ana.get("/queue?after=1", follow_redirects=False).headers["location"] == "/queue?page=2"
        cy.get("/api/queue?page=1")  # cy moves to page 1 too: page 2 is free, page 3 done
        assert ana.get("/queue?after=3", follow_redirects=False).headers["location"] == "/queue?page=2"
        assert ana.get("/queue?after=99", follow_redirects=False).headers["location"] == "/queue?page=2"
        client.submit_labels(wa.stub, [(i, "circle") for i in ids[4:8]], annotator="cy")  # page 2 done too
        assert ana.get("/queue?after=2", follow_redirects=False).headers["location"] == "/queue?page=1"
        assert _data(ana.get("/queue").text)["page"] == 1
    finally:
        wa.stop()


def test_labels_now_says_who_holds_each_label_to_any_signed_in_user(token_web_agent: WebAgent) -> None:
    """POST /api/labels/now: a read (ListSamples by ids) of each sample's current label and who gave it, for the
    Queue page's report after a reload; a read token may ask (it used to learn this from a refused RetractLabels,
    a write a read token cannot make); an id deleted since is in ``unknown``, not a failed request."""
    wa = token_web_agent
    writer = wa.client(headers={"Authorization": f"Bearer {WRITE_TOKEN}"}, cookies={"shortlist_user": "Bea"})
    reader = wa.client(headers={"Authorization": f"Bearer {READ_TOKEN}"}, cookies={"shortlist_user": "Viewer"})
    labelled, unlabelled = "img000.png", f"img0{LABELLED + 5}.png"  # ingested with / without a label
    sid = "img030.png"
    assert sid not in wa.labels() and unlabelled not in wa.labels() and labelled in wa.labels()
    assert writer.post("/api/labels", json={"labels": [{"id": sid, "label": "circle"}]}).json()["accepted"] == 1
    wa.stub.DeleteSamples(agent_pb2.DeleteSamplesRequest(ids=["img031.png"], annotator="lead", reason="test"))
    ids = [sid, unlabelled, "img031.png", labelled, "nope", sid]
    r = reader.post("/api/labels/now", json={"ids": ids})
    assert r.status_code == 200, r.text
    got = r.json()
    assert sorted(got["unknown"]) == ["img031.png", "nope"]
    now = got["labels"]
    assert set(now) == {sid, unlabelled, labelled}
    assert (now[sid]["label"], now[sid]["by"], now[sid]["source"]) == ("circle", "Bea", "manual")
    assert now[sid]["time"] > 0
    assert now[unlabelled] == {"label": "", "by": "", "time": 0, "source": ""}
    assert (now[labelled]["label"], now[labelled]["by"]) == (wa.labels()[labelled], "ingest")
    # bounded as the app's other id lists (1,000), and at least one
    assert reader.post("/api/labels/now", json={"ids": ["x"] * 1001}).status_code == 422
    assert reader.post("/api/labels/now", json={"ids": []}).status_code == 422
    assert reader.post("/api/labels/now", json={"ids": [sid]}).json()["labels"][sid]["by"] == "Bea"
    # nothing was written: the label history of sid is Bea's label alone
    assert wa.history(sid) == [("circle", "Bea")]
