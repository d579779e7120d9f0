"""Route tests of the Review priors page (agent/web/priors.py): grouping, order, filters, pages,
accepting (source "prior:METHOD") and correcting a prior, and the read-only role."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from agent.priors import PRIOR_METHODS
from shortlist.v1 import agent_pb2
from tests.agent.web.conftest import LABELLED, N_IMAGES, READ_TOKEN, SHAPES, WRITE_TOKEN, WebAgent, start_web_agent

# The fixture's labelled samples: the circles and squares among the first LABELLED (classes circle, square).
LABELLED_IDS = {f"img{i:03d}.png" for i in range(LABELLED) if i % 3 != 2}
UNLABELLED = N_IMAGES - len(LABELLED_IDS)


def history(wa: WebAgent, sample_id: str) -> list[tuple[str, str, str]]:
    """(label, annotator, source) of every label of ``sample_id``, read through gRPC (ListLabels)."""
    return [(e.label, e.annotator, e.source) for e in wa.stub.ListLabels(agent_pb2.ListLabelsRequest(history=True))
            if e.id == sample_id]


def test_priors_page_lists_the_registry(web_agent: WebAgent) -> None:
    r = web_agent.client().get("/priors")
    assert r.status_code == 200
    for method in PRIOR_METHODS:
        assert f'<option value="{method}"' in r.text
    assert '<a href="/priors" class="active" aria-current="page">Review priors</a>' in r.text


def test_priors_grouped_sorted_filtered_paginated(web_agent: WebAgent) -> None:
    c = web_agent.client()
    d = c.get("/api/priors", params={"method": "knn", "size": 200}).json()
    unlabelled = UNLABELLED
    assert (d["total"], d["unlabelled"], d["labeled_at"], d["pages"]) == (unlabelled, unlabelled, len(LABELLED_IDS), 1)
    assert {it["id"] for it in d["items"]} == {f"img{i:03d}.png" for i in range(N_IMAGES)} - LABELLED_IDS
    assert sum(d["counts"].values()) == unlabelled and set(d["counts"]) == {"circle", "square"}
    # PriorLabel.calibration: a few labels, so the page carries the agent's warning (priors.js shows it)
    cal = d["calibration"]
    assert cal["source"] in ("default", "labelled") and cal["held_out"] < 20
    # as everywhere else
    assert set(cal) == {"source", "held_out", "temperature", "audit_labels", "left_out", "warning"}
    assert cal["warning"].startswith("confidences calibrated on ")
    assert "audit sample on the Progress page" in cal["warning"] and "shortlist" not in cal["warning"]
    assert 'id="calibration"' in c.get("/priors").text
    classes = list(d["counts"])
    keys = [(classes.index(it["label"]), -it["confidence"]) for it in d["items"]]
    assert keys == sorted(keys)  # grouped by prior class, most confident first within a group
    assert all(0 <= it["confidence"] <= 1 and it["second"] not in ("", it["label"]) for it in d["items"])
    # the ascending order, one class, a confidence range
    asc = c.get("/api/priors", params={"method": "knn", "size": 200, "sort": "asc", "label": classes[0]}).json()
    confs = [it["confidence"] for it in asc["items"]]
    assert confs == sorted(confs) and {it["label"] for it in asc["items"]} == {classes[0]}
    assert asc["total"] == d["counts"][classes[0]]
    mid = sorted(it["confidence"] for it in d["items"])[len(d["items"]) // 2]
    hi = c.get("/api/priors", params={"method": "knn", "size": 200, "min": mid}).json()
    assert hi["total"] == sum(1 for it in d["items"] if it["confidence"] >= mid - 1e-6) and hi["total"] < unlabelled
    # pages of 7 (32 unlabelled: 4 full pages and 4 on the last)
    pages = [c.get("/api/priors", params={"method": "knn", "size": 7, "page": p}).json() for p in (1, 2, 3, 4, 5)]
    assert [p["pages"] for p in pages] == [5] * 5 and [len(p["items"]) for p in pages] == [7, 7, 7, 7, 4]
    assert [it["id"] for p in pages for it in p["items"]] == [it["id"] for it in d["items"]]


def test_bad_filters_are_400(web_agent: WebAgent) -> None:
    c = web_agent.client()
    for params in ({"method": "nope"}, {"min": 0.8, "max": 0.2}, {"max": 2}, {"label": "hexagon"},
                   {"size": -1}, {"size": 5000}, {"page": 0}):
        r = c.get("/api/priors", params=params)
        assert r.status_code == 400 and r.json()["error"] == "INVALID_ARGUMENT", params
        assert r.json()["message"]


def test_accept_and_correct(web_agent: WebAgent) -> None:
    c = web_agent.client()
    items: list[dict[str, Any]] = c.get("/api/priors", params={"method": "knn", "size": 200}).json()["items"]
    keep, fix = items[0], items[1]
    other = next(s for s in SHAPES if s != fix["label"])
    r = c.post("/api/priors/labels", json={"method": "knn", "labels": [
        {"id": keep["id"], "label": keep["label"]}, {"id": fix["id"], "label": other},
        {"id": "no-such.png", "label": other}]})
    assert r.status_code == 200
    body = r.json()
    assert (body["accepted"], body["accepted_priors"], body["corrected"]) == (2, 1, 1)
    assert [x["id"] for x in body["rejected"]] == ["no-such.png"]
    # through gRPC: both are labels now, by this annotator, the first marked as an accepted knn prior
    labels = web_agent.labels()
    assert labels[keep["id"]] == keep["label"] and labels[fix["id"]] == other
    assert history(web_agent, keep["id"]) == [(keep["label"], body["annotator"], "prior:knn")]
    assert history(web_agent, fix["id"]) == [(other, body["annotator"], "manual")]
    # they leave the review at once; the page says the priors predate 2 labels
    d = c.get("/api/priors", params={"method": "knn", "size": 200}).json()
    assert d["unlabelled"] == UNLABELLED - 2 and d["labeled_now"] - d["labeled_at"] == 2 and d["events_since"] == 2
    assert not {keep["id"], fix["id"]} & {it["id"] for it in d["items"]}
    # what the page compares with GET /api/progress/head to offer a Recompute
    head = c.get("/api/progress/head").json()
    assert d["label_events_now"] == head["label_events"] and d["embedded_at"] == head["embedded"] > 0
    fresh = c.get("/api/priors", params={"method": "knn", "size": 200, "refresh": "true"}).json()
    assert fresh["labeled_at"] == len(LABELLED_IDS) + 2 and fresh["total"] == UNLABELLED - 2


def test_counts_are_the_agents_not_the_stale_prior_lists(web_agent: WebAgent) -> None:
    """"unlabelled" is the pool's unlabelled count now (Status.samples - labeled), not the size of a prior list
    computed before others labelled (a labeller saw "273 unlabelled" beside "129 labelled" in a pool of 300);
    an accept's reply carries the labelled count after it, so one already labelled so by someone else (agreed)
    is not counted twice (the page said 177 labelled where the agent had 157)."""
    c = web_agent.client(cookies={"shortlist_user": "alice"})
    items = c.get("/api/priors", params={"method": "knn", "size": 200}).json()["items"]
    # bob labels three after the priors were computed: the same class as their prior (so an accept agrees)
    bobs = items[:3]
    web_agent.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id=x["id"], label=x["label"]) for x in bobs], annotator="bob"))
    d = c.get("/api/priors", params={"method": "knn", "size": 200}).json()
    status = web_agent.stub.GetStatus(agent_pb2.GetStatusRequest())
    assert (d["labeled_now"], d["unlabelled"]) == (status.labeled, status.samples - status.labeled)
    assert d["unlabelled"] == UNLABELLED - 3
    # accept six, three of them bob's already: three more labelled, not six
    page = items[:6]
    body = c.post("/api/priors/labels", json={"method": "knn", "labels": [
        {"id": x["id"], "label": x["label"]} for x in page]}).json()
    assert body["agreed_count"] == 3
    status = web_agent.stub.GetStatus(agent_pb2.GetStatusRequest())
    assert status.labeled == len(LABELLED_IDS) + 6
    assert (body["labeled_now"], body["unlabelled"]) == (status.labeled, status.samples - status.labeled)


def test_accepting_a_prior_leaves_a_label_given_since(web_agent: WebAgent) -> None:
    """The priors were computed while the samples were unlabelled: a label someone gave since stays, and the
    refusal says who gave it (if_current="")."""
    c = web_agent.client(cookies={"shortlist_user": "alice"})
    items = c.get("/api/priors", params={"method": "knn", "size": 200}).json()["items"]
    a, b = items[0], items[1]
    other = next(s for s in SHAPES if s != a["label"])
    web_agent.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id=a["id"], label=other)], annotator="bob"))
    body = c.post("/api/priors/labels", json={"method": "knn", "labels": [a, b]}).json()
    assert (body["accepted"], body["accepted_priors"]) == (1, 1)
    assert [(x["id"], x["changed"], x["label"], x["by"]) for x in body["rejected"]] == [(a["id"], True, other, "bob")]
    assert web_agent.labels()[a["id"]] == other and history(web_agent, a["id"]) == [(other, "bob", "manual")]
    left = c.get("/api/priors", params={"method": "knn", "size": 200}).json()["items"]
    assert a["id"] not in {it["id"] for it in left}


def test_a_retraction_and_a_new_label_count_as_two_changes(web_agent: WebAgent) -> None:
    """The page's "label changes since" follows Status.label_events: one label taken back and another given
    leave the labelled count as it was, yet the priors predate two changes."""
    c = web_agent.client()
    before = c.get("/api/priors", params={"method": "knn", "size": 200}).json()
    assert before["events_since"] == 0
    unlabelled = before["items"][0]["id"]
    taken_back = sorted(LABELLED_IDS)[0]
    assert web_agent.stub.RetractLabels(agent_pb2.RetractLabelsRequest(ids=[taken_back], annotator="t")).accepted == 1
    assert web_agent.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id=unlabelled, label=SHAPES[0])], annotator="t")).accepted == 1
    d = c.get("/api/priors", params={"method": "knn", "size": 200}).json()
    assert d["labeled_now"] == d["labeled_at"] == len(LABELLED_IDS) and d["events_since"] == 2
    fresh = c.get("/api/priors", params={"method": "knn", "size": 200, "refresh": "true"}).json()
    assert fresh["events_since"] == 0 and taken_back in {it["id"] for it in fresh["items"]}


def test_a_prior_not_shown_by_this_app_is_checked_with_the_agent(web_agent: WebAgent) -> None:
    c = web_agent.client()
    sid = f"img{LABELLED + 1:03d}.png"
    [prior] = list(web_agent.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="llgc", ids=[sid])))
    r = c.post("/api/priors/labels", json={"method": "llgc", "labels": [{"id": sid, "label": prior.label}]})
    assert r.json()["accepted_priors"] == 1 and history(web_agent, sid)[-1][2] == "prior:llgc"


def test_a_read_token_can_review_but_not_accept(token_web_agent: WebAgent) -> None:
    reader = token_web_agent.client(headers={"Authorization": f"Bearer {READ_TOKEN}"})
    items = reader.get("/api/priors", params={"method": "knn"}).json()["items"]
    r = reader.post("/api/priors/labels", json={"method": "knn", "labels": [{"id": items[0]["id"],
                                                                              "label": items[0]["label"]}]})
    assert r.status_code == 403 and r.json()["error"] == "PERMISSION_DENIED"
    writer = token_web_agent.client(headers={"Authorization": f"Bearer {WRITE_TOKEN}"})
    r = writer.post("/api/priors/labels", json={"method": "knn", "labels": [{"id": items[0]["id"],
                                                                              "label": items[0]["label"]}]})
    assert r.status_code == 200 and r.json()["accepted_priors"] == 1
    assert token_web_agent.client().get("/api/priors").status_code == 401


def test_a_prior_set_is_built_as_its_stream_arrives_with_bounded_messages_held(monkeypatch: Any) -> None:
    """PriorSet.from_stream converts the PriorLabels reply STREAM_CHUNK messages at a time: at most that many
    are alive at once (a list of the whole reply had taken the agent, which runs the app, from 870 MB to
    1.6 GB at 300,000 samples), and the set is what the whole list gave."""
    from agent.web import priors

    monkeypatch.setattr(priors, "STREAM_CHUNK", 4, raising=False)
    alive = [0]
    peak = [0]

    class Held:  # a PriorLabel that counts how many of its kind are alive
        def __init__(self, msg: agent_pb2.PriorLabel) -> None:
            self.msg = msg
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])

        def __getattr__(self, name: str) -> Any:
            return getattr(self.msg, name)

        def __del__(self) -> None:
            alive[0] -= 1

    classes = ["a", "b", "c"]

    def message(i: int) -> agent_pb2.PriorLabel:
        p = agent_pb2.PriorLabel(id=f"s{i}", label=classes[i % 3], confidence=0.5 + i / 100, model_version="v0001",
                                 probs={"a": 0.1 + i / 1000, "b": 0.3, "c": 0.6 - i / 1000})
        if i == 0:
            p.calibration.source = "labelled"
            p.calibration.temperature = 1.5
        return p

    status = agent_pb2.Status(labeled=3, label_events=4, embedded=30)
    streamed = priors.PriorSet.from_stream("knn", classes, status, (Held(message(i)) for i in range(30)))  # type: ignore[misc]
    assert peak[0] <= 4 + 1  # one chunk, and the message being read
    whole = priors.PriorSet.from_stream("knn", classes, status, [message(i) for i in range(30)])
    assert streamed.ids == whole.ids == [f"s{i}" for i in range(30)] and streamed.model_version == "v0001"
    for field in ("label", "confidence", "second", "second_p", "order"):
        assert (getattr(streamed, field) == getattr(whole, field)).all(), field
    assert streamed.calibration == whole.calibration and streamed.calibration["temperature"] == 1.5
    assert streamed.label.tolist() == [i % 3 for i in range(30)] and streamed.second.tolist()[:2] == [1, 1]
    empty = priors.PriorSet.from_stream("knn", classes, status, iter(()))
    assert empty.ids == [] and len(empty.label) == 0 and empty.calibration == {}


def test_a_deleted_sample_leaves_the_cached_priors(tmp_path: Path) -> None:
    """The app's prior sets were kept until the model version changed: samples deleted through gRPC
    (DeleteSamples: a patient's image, say) were still listed on Review priors and coloured on the Map.
    Status.samples_deleted changed: the set is computed again, without them."""
    wa = start_web_agent(tmp_path)
    try:
        c = wa.client()
        before = {it["id"] for it in c.get("/api/priors", params={"method": "knn", "size": 200}).json()["items"]}
        gone = sorted(before)[:2]
        assert set(gone) <= set(c.get("/api/priors/all", params={"method": "knn"}).json()["ids"])
        reply = wa.stub.DeleteSamples(agent_pb2.DeleteSamplesRequest(ids=gone, annotator="lead", reason="test"))
        assert reply.accepted == 2
        assert wa.stub.GetStatus(agent_pb2.GetStatusRequest()).samples_deleted == 2
        d = c.get("/api/priors", params={"method": "knn", "size": 200}).json()
        assert {it["id"] for it in d["items"]} == before - set(gone) and d["total"] == len(before) - 2
        assert not set(gone) & set(c.get("/api/priors/all", params={"method": "knn"}).json()["ids"])
    finally:
        wa.stop()


def test_two_annotators_accepting_the_same_priors_are_told_and_the_undo_leaves_the_others(
        web_agent: WebAgent) -> None:
    """alice and bob accept the same page of priors one after the other: bob's answer lists each label as
    ``agreed`` (alice gave it already), so his page's undo (a retract of what was not agreed, if_current: the
    label) leaves alice's labels; a single accept says so too."""
    alice = web_agent.client(cookies={"shortlist_user": "alice"})
    bob = web_agent.client(cookies={"shortlist_user": "bob"})
    items = alice.get("/api/priors", params={"method": "knn", "size": 6}).json()["items"]
    assert bob.get("/api/priors", params={"method": "knn", "size": 6}).json()["items"] == items
    page = [{"id": it["id"], "label": it["label"]} for it in items]
    mine = alice.post("/api/priors/labels", json={"method": "knn", "labels": page[:5]}).json()
    assert (mine["accepted_priors"], mine["agreed"]) == (5, [])
    theirs = bob.post("/api/priors/labels", json={"method": "knn", "labels": page}).json()
    assert theirs["rejected"] == [] and theirs["accepted_priors"] == 6
    assert theirs["agreed"] == [{"id": x["id"], "label": x["label"], "by": "alice"} for x in page[:5]]
    # bob's undo as priors.js sends it: only the labels that were not agreements
    agreed = {a["id"] for a in theirs["agreed"]}
    undo = [x for x in page if x["id"] not in agreed]
    r = bob.post("/api/labels/retract", json={"ids": [x["id"] for x in undo],
                                              "if_current": {x["id"]: x["label"] for x in undo}}).json()
    assert r["accepted"] == 1
    labels = web_agent.labels()
    want = {**{x["id"]: x["label"] for x in page[:5]}, page[5]["id"]: None}
    assert {x["id"]: labels.get(x["id"]) for x in page} == want
    # one accept of a prior alice accepted: agreed too
    one = alice.get("/api/priors", params={"method": "knn", "size": 6}).json()["items"][0]
    alice.post("/api/priors/labels", json={"method": "knn", "labels": [{"id": one["id"], "label": one["label"]}]})
    single = bob.post("/api/priors/labels", json={"method": "knn", "labels": [
        {"id": one["id"], "label": one["label"]}]}).json()
    assert single["agreed"] == [{"id": one["id"], "label": one["label"], "by": "alice"}]


def test_agreements_the_agent_did_not_list_are_counted(web_agent: WebAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    """SubmitLabels lists the first agreements only (its reply's lists are capped, agreed_count counts them all);
    the app passed the list on alone, so a page whose list was cut short took the agreements left out for its
    own labels, and its undo of "Accept all" would take back the other annotator's. Both label APIs now pass
    ``agreed_count`` on (the pages then offer no undo of that batch, and say so)."""
    import agent.service as service

    real = service.capped
    monkeypatch.setattr(service, "capped", lambda items, make, budget=0: real(items, make, budget=60))  # ~1 entry
    alice = web_agent.client(cookies={"shortlist_user": "alice"})
    bob = web_agent.client(cookies={"shortlist_user": "bob"})
    items = alice.get("/api/priors", params={"method": "knn", "size": 4}).json()["items"]
    page = [{"id": it["id"], "label": it["label"]} for it in items]
    assert alice.post("/api/priors/labels", json={"method": "knn", "labels": page}).json()["accepted_priors"] == 4
    theirs = bob.post("/api/priors/labels", json={"method": "knn", "labels": page}).json()
    assert theirs["accepted_priors"] == 4 and 1 <= len(theirs["agreed"]) < 4, theirs
    assert theirs["agreed_count"] == 4
    again = bob.post("/api/labels", json={"labels": [{**x, "if_current": ""} for x in page[:3]]}).json()
    assert again["accepted"] == 3 and len(again["agreed"]) < 3 and again["agreed_count"] == 0  # his own now
    r = alice.post("/api/labels", json={"labels": [{**x, "if_current": ""} for x in page[:3]]}).json()
    assert r["accepted"] == 3 and 1 <= len(r["agreed"]) < 3 and r["agreed_count"] == 3, r


def test_accept_all_then_next_reaches_every_sample_once(web_agent: WebAgent) -> None:
    """"Accept all on this page", then Next (``after`` = the page's last id), again and again: every sample of
    the list is shown exactly once, though each accepted page leaves the list (page numbers would skip the
    samples that moved up); Previous (``offset``) then shows the page before the one shown."""
    c = web_agent.client()
    everything = [it["id"] for it in c.get("/api/priors", params={"method": "knn", "size": 200}).json()["items"]]
    seen: list[str] = []
    d = c.get("/api/priors", params={"method": "knn", "size": 5}).json()
    while True:
        seen += [it["id"] for it in d["items"]]
        if len(seen) // 5 % 2:  # every other page accepted, the others only looked at
            body = c.post("/api/priors/labels", json={"method": "knn", "labels": [
                {"id": it["id"], "label": it["label"]} for it in d["items"]]}).json()
            assert body["accepted_priors"] == len(d["items"])
        if d["offset"] + len(d["items"]) >= d["total"]:
            break
        d = c.get("/api/priors", params={"method": "knn", "size": 5, "page": d["page"] + 1,
                                         "after": d["items"][-1]["id"]}).json()
    assert seen == everything
    left = [it["id"] for it in c.get("/api/priors", params={"method": "knn", "size": 200}).json()["items"]]
    assert len(left) < len(everything)
    last = c.get("/api/priors", params={"method": "knn", "size": 5, "after": left[-1]}).json()
    assert last["offset"] == (math.ceil(len(left) / 5) - 1) * 5  # past the end: the last page
    back = c.get("/api/priors", params={"method": "knn", "size": 5, "offset": last["offset"] - 5}).json()
    assert [it["id"] for it in back["items"]] == left[last["offset"] - 5: last["offset"]]
    assert c.get("/api/priors", params={"method": "knn", "offset": -1}).status_code == 400


def test_refusals_the_agent_did_not_list_are_counted(web_agent: WebAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    """SubmitLabels lists the first refusals only (``rejected_count`` counts them all); the app passed the list
    on alone, so a page whose items were partly refused was told of the listed ones only, and the app took the
    unlisted refused samples for stored (off the priors). Both label APIs pass ``rejected_count`` on; the priors
    API then keeps the batch's unlisted samples on the page (which of them were stored cannot be told)."""
    import agent.service as service

    def other(label: str) -> str:
        return next(s for s in SHAPES if s != label)

    real = service.capped
    monkeypatch.setattr(service, "capped", lambda items, make, budget=0: real(items, make, budget=60))  # ~1 entry
    c = web_agent.client(cookies={"shortlist_user": "alice"})
    items = c.get("/api/priors", params={"method": "knn", "size": 4}).json()["items"]
    page = [{"id": it["id"], "label": it["label"]} for it in items]
    # three of the four labelled by bob meanwhile: refused (if_current=""), their labels stay
    web_agent.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id=x["id"], label=other(x["label"])) for x in page[1:]], annotator="bob"))
    body = c.post("/api/priors/labels", json={"method": "knn", "labels": page}).json()
    assert (body["accepted"], body["accepted_priors"]) == (1, 1) and len(body["rejected"]) < 3, body
    assert body["rejected_count"] == 3
    left = {it["id"] for it in c.get("/api/priors", params={"method": "knn", "size": 200}).json()["items"]}
    listed = {x["id"] for x in body["rejected"]}
    assert {x["id"] for x in page} - listed <= left  # not taken for stored: shown until a Recompute
    r = c.post("/api/labels", json={"labels": [{**x, "if_current": ""} for x in page[1:]]}).json()  # as the Queue
    assert r["accepted"] == 0 and len(r["rejected"]) < 3 and r["rejected_count"] == 3, r
