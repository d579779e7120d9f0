"""The Label Studio ML backend (agent/web/labelstudio.py) against the real gRPC agent, with request bodies
written from Label Studio's published reference (tests/agent/web/data/labelstudio/README.md)."""

from __future__ import annotations

import base64
import copy
import json
import os
import random
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from agent import client
from agent.priors import PRIOR_METHODS
from agent.security import ServerSecurity
from agent.web import labelstudio
from agent.web.app import create_app
from agent.web.auth import token_of
from agent.web.config import LabelStudioConfig, MatchRule, WebConfig
from agent.web.errors import HttpError
from agent.web.labelstudio import (
    LABELLED_SCORE,
    MODEL_VERSION,
    SELECTED_SPAN,
    UNMATCHED_SCORE,
    BadRequest,
    LabelStudioBackend,
    SampleIndex,
    Unauthorized,
    match_task,
    order_score,
    parse_schema,
    request_token,
    url_paths,
)
from shortlist.cli import app as cli_app
from shortlist.v1 import agent_pb2, agent_pb2_grpc
from tests.agent.conftest import CLASSES, Running, make_images, make_samples, png, start
from tests.agent.test_cli import free_port, out
from tests.agent.web.conftest import BASE_URL
from tests.agent.web.test_cli import stop, wait_http

DATA = Path(__file__).parent / "data" / "labelstudio"
READ_TOKEN = "r" * 8 + "-read-token-0123456789"
WRITE_TOKEN = "w" * 8 + "-write-token-0123456789"
runner = CliRunner()
N = 20
LABELLED = 6  # img_0000 .. img_0005 carry their class at ingest
BUDGET = 5


def body(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / name).read_text())
    return loaded


CREATED = "webhook_annotation_created.json"
UPDATED = "webhook_annotation_updated.json"


def event(name: str, choices: Any = None) -> dict[str, Any]:
    """The webhook body ``data/labelstudio/<name>`` (a fresh copy); with ``choices`` (a list of choice values,
    or any JSON value for a malformed body) in place of its annotation's first result's choices."""
    e = body(name)
    if choices is not None:
        e["annotation"]["result"][0]["value"]["choices"] = choices
    return e


def sample_id(i: int) -> str:
    return f"reef/site-{'a' if i % 2 == 0 else 'b'}/img_{i:04d}.jpg"


def basic(token: str, user: str = "labelstudio") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def agent(tmp_path: Path, registry: Path) -> Iterator[Running]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"read:{READ_TOKEN}\nwrite:{WRITE_TOKEN}\n")
    r = start(tmp_path / "data", registry, security=ServerSecurity(tokens=tokens))
    writer = client.connect(r.address, config=client.ClientConfig(token=WRITE_TOKEN))
    samples = [client.image_sample(sample_id(i), png(img), label=CLASSES[i % 3] if i < LABELLED else "")
               for i, img in enumerate(make_images(N, seed=3))]
    assert client.ingest(writer, samples).accepted == N
    yield r
    r.stop()


def app_for(r: Running, config: LabelStudioConfig | None = None, **kw: Any) -> tuple[TestClient, FastAPI]:
    """The web app (create_app, as `shortlist web` builds it) on the agent, with its TestClient; ``kw``:
    more WebConfig fields."""
    web = WebConfig(port=0, agent=r.address, labelstudio=config or LabelStudioConfig(budget=BUDGET), **kw)
    app = create_app(web, lambda: client.channel(r.address))
    return TestClient(app, base_url=BASE_URL), app


def reader(r: Running) -> agent_pb2_grpc.AgentStub:
    return client.connect(r.address, config=client.ClientConfig(token=READ_TOKEN))


def writer(r: Running) -> agent_pb2_grpc.AgentStub:
    return client.connect(r.address, config=client.ClientConfig(token=WRITE_TOKEN))


def labels_of(r: Running) -> dict[str, str]:
    return {s.id: s.label for s in reader(r).ListSamples(agent_pb2.ListSamplesRequest(labeled_only=True))}


def ordered(http: TestClient) -> list[tuple[float, str]]:
    """(prediction score, sample id) of every sample's task, as Label Studio sorts them (ascending score)."""
    template = body("predict.json")["tasks"][0]
    tasks = []
    for i in range(N):
        t = copy.deepcopy(template)
        t["id"], t["data"]["image"] = 200 + i, f"/data/local-files/?d={sample_id(i)}"
        tasks.append(t)
    random.Random(0).shuffle(tasks)
    r = http.post("/labelstudio/predict", json=dict(body("predict.json"), tasks=tasks), headers=basic(READ_TOKEN))
    return sorted((res["score"], sample_id(t["id"] - 200)) for res, t in zip(r.json()["results"], tasks, strict=True))


# ---- pure parts ----------------------------------------------------------------------------------
def test_parse_schema_finds_the_choices_on_the_image() -> None:
    s = parse_schema(body("setup.json")["schema"])
    assert (s.from_name, s.to_name, s.data_key, s.choices) == ("species", "image", "image", ("cat", "dog", "frog"))
    aliased = parse_schema('<View><Text name="t" value="$text"/><Image name="img" value="$url"/>'
                           '<Choices name="c" toName="img"><Choice value="Felis catus" alias="cat"/>'
                           '<Choice value="dog"/></Choices></View>\n<!-- {"data": {"url": "x.jpg"}} -->')
    assert aliased.choices == ("cat", "dog") and aliased.data_key == "url"
    assert aliased.choice_for("Dog") == "dog" and aliased.choice_for("frog") is None
    dynamic = parse_schema('<View><Image name="i" value="$image"/><Choices name="c" toName="i" value="$options"/>'
                           '</View>')
    assert dynamic.choices == () and dynamic.choice_for("anything") == "anything"
    for xml, says in [("<View><Image", "not valid XML"), ("", "no label config"),
                      ('<View><Text name="t" value="$text"/><Choices name="c" toName="t"/></View>', "no <Image"),
                      ('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i"/></View>',
                       "no <Choices")]:
        with pytest.raises(BadRequest, match=says):
            parse_schema(xml)


def test_match_rules() -> None:
    index = SampleIndex([(sample_id(i), "") for i in range(N)] + [("other/img_0003.jpg", ""),
                                                                  ("x1", "/mnt/cam/2026/IMG_1.JPG")])
    schema = parse_schema(body("setup.json")["schema"])

    def m(image: str, rule: str = "url", **data: str) -> str | None:
        return match_task({"id": 1, "data": {"image": image, **data}}, schema, MatchRule.parse(rule), index)

    assert url_paths("/data/local-files/?d=reef/site-a/img_0000.jpg") == ["reef/site-a/img_0000.jpg",
                                                                          "data/local-files"]
    assert m("/data/local-files/?d=reef/site-a/img_0000.jpg") == "reef/site-a/img_0000.jpg"
    assert m("s3://bucket/reef/site-b/img_0001.jpg") == "reef/site-b/img_0001.jpg"
    assert m("https://h.example/media/reef/site-a/img%5F0002.jpg") == "reef/site-a/img_0002.jpg"
    # a file name alone matches only for an upload (below): a full path that matches no sample is no match,
    # even when a sample elsewhere has that file name
    assert m("https://h.example/flat/img_0004.jpg") is None
    assert m("https://h.example/flat/img_0003.jpg") is None  # two samples are called img_0003.jpg
    assert m("https://h.example/other/img_0003.jpg") == "other/img_0003.jpg"
    assert m("/mnt/cam/2026/IMG_1.JPG") == "x1"  # the sample's uri
    assert m("/data/upload/7/8f2a1c3e-img_0006.jpg") == "reef/site-a/img_0006.jpg"  # a file uploaded to LS
    assert m("/data/upload/7/8f2a1c3e-img_0003.jpg") is None
    assert m("/media/8f2a1c3e-img_0006.jpg") is None
    assert m("/data/upload/7/8f2a1c3e-img_0006.jpg", r"regex:[0-9a-f]{8}-(.+)$") is None  # group 1 is no id
    assert m("/data/upload/7/8f2a1c3e-img_0006.jpg", r"regex:[0-9a-f]{8}-(?P<n>img_\d+)\.jpg$") is None
    assert m("/u/8f2a1c3e-reef%2Fsite-a%2Fimg_0006.jpg", r"regex:[0-9a-f]{8}-(?P<id>.+)$") == \
        "reef/site-a/img_0006.jpg"
    assert m("whatever.png", "field:sample_id", sample_id="reef/site-b/img_0009.jpg") == "reef/site-b/img_0009.jpg"
    assert m("whatever.png", "field:sample_id", sample_id="nope") is None
    assert m("whatever.png", "field:sample_id") is None
    assert str(MatchRule.parse("field:sid")) == "field:sid"
    for bad in ["", "name", "field:", "regex:(", "url:x"]:
        with pytest.raises(ValueError, match="--labelstudio-match"):
            MatchRule.parse(bad)


def test_order_score_puts_shortlists_order_first() -> None:
    scores = [order_score(0, 4, False, 0.9), order_score(3, 4, False, 0.1), order_score(None, 4, False, 0.0),
              order_score(None, 4, False, 1.0), order_score(None, 4, False, None), order_score(None, 4, True, None),
              order_score(None, 0, False, None, matched=False)]
    assert scores == sorted(scores) and len(set(scores)) == len(scores)
    assert scores[0] == 0.0 and scores[-2:] == [LABELLED_SCORE, UNMATCHED_SCORE]


# ---- through the agent ---------------------------------------------------------------------------
def test_health_and_setup(agent: Running) -> None:
    http, app = app_for(agent)
    try:
        for path in ("/labelstudio/health", "/labelstudio/"):
            r = http.get(path)
            assert r.status_code == 200 and r.json()["status"] == "UP"
        setup = body("setup.json")
        r = http.post("/labelstudio/setup", json=setup, headers=basic(READ_TOKEN))
        assert r.status_code == 200, r.text
        assert r.json() == {"model_version": MODEL_VERSION, "agent_model_version": "v0001", "labelled": LABELLED}
        r = http.post("/labelstudio/setup", json=setup)
        assert r.status_code == 401 and "requires a token" in r.json()["message"]
        r = http.post("/labelstudio/setup", json=setup, headers=basic("x" * 32))
        assert r.status_code == 401 and "unknown token" in r.json()["message"]
        wrong = dict(setup, schema='<View><Image name="i" value="$image"/></View>')
        r = http.post("/labelstudio/setup", json=wrong, headers=basic(READ_TOKEN))
        assert r.status_code == 400 and "no <Choices" in r.json()["message"]
        r = http.post("/labelstudio/setup", json=setup, headers={"Authorization": "Digest abc"})
        assert r.status_code == 401 and "Basic" in r.json()["message"]
        r = http.post("/labelstudio/setup", json=setup, headers={"Authorization": "Basic %%%"})
        assert r.status_code == 401 and "malformed" in r.json()["message"]
        only_user = {"Authorization": "Basic " + base64.b64encode(f"{READ_TOKEN}:".encode()).decode()}
        for headers in (only_user, {"Authorization": f"Token {READ_TOKEN}"}, bearer(READ_TOKEN)):
            assert http.post("/labelstudio/setup", json=setup, headers=headers).status_code == 200
    finally:
        app.state.stub.close()


@pytest.mark.parametrize("first,second", [(basic(READ_TOKEN), bearer(WRITE_TOKEN)),
                                          (basic(WRITE_TOKEN), basic(READ_TOKEN))])
def test_more_than_one_authorization_header_is_401(agent: Running, first: dict[str, str],
                                                   second: dict[str, str]) -> None:
    """Two Authorization headers on the webhook (a read and a write token, either first): 401 "send one
    Authorization header" with Basic's WWW-Authenticate, nothing labelled; before, the first one decided (the
    write token's labelled). ``request_token`` and ``token_of`` refuse them too, behind the app's guard."""
    http, app = app_for(agent)
    try:
        two = [("Authorization", first["Authorization"]), ("Authorization", second["Authorization"])]
        for path, payload in (("/labelstudio/webhook", event(CREATED)), ("/labelstudio/setup", body("setup.json"))):
            r = http.post(path, json=payload, headers=two)
            assert r.status_code == 401, (path, r.status_code, r.text)
            assert "send one Authorization header" in r.json()["message"]
            assert r.headers["www-authenticate"] == 'Basic realm="shortlist"'
        assert labels_of(agent) == {sample_id(i): CLASSES[i % 3] for i in range(LABELLED)}
        scope = {"type": "http", "method": "POST", "path": "/labelstudio/webhook", "app": app, "query_string": b"",
                 "headers": [(b"authorization", v.encode()) for _, v in two]}
        with pytest.raises(Unauthorized, match="send one Authorization header"):
            request_token(Request(scope))
        with pytest.raises(HttpError, match="send one Authorization header"):
            token_of(Request(scope))
    finally:
        app.state.stub.close()


def test_health_without_an_agent() -> None:
    """Label Studio shows the model as disconnected: 503 while no agent answers."""
    dead = f"127.0.0.1:{free_port()}"
    app = create_app(WebConfig(port=0, agent=dead), lambda: client.channel(dead, timeout=0.5))
    with TestClient(app, base_url=BASE_URL) as http:
        r = http.get("/labelstudio/health")
        assert r.status_code == 503 and "connection refused" in r.json()["message"]
        r = http.post("/labelstudio/setup", json=body("setup.json"))
        assert r.status_code == 503


def test_predict_gives_priors_in_the_tasks_order(agent: Running) -> None:
    http, app = app_for(agent)
    try:
        r = http.post("/labelstudio/predict", json=body("predict.json"), headers=basic(READ_TOKEN))
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == 5
        ids = ["reef/site-b/img_0007.jpg", "reef/site-a/img_0012.jpg", "reef/site-a/img_0010.jpg"]
        stub = reader(agent)
        rows = list(stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn", ids=ids)))
        priors = {p.id: p for p in rows}
        cal = rows[0].calibration  # 6 labels, 2 a class: few held out, so the agent warns
        assert cal.source in ("default", "labelled") and cal.warning.startswith("confidences calibrated on ")
        selected = stub.Select(agent_pb2.SelectRequest(budget=BUDGET, strategy="typiclust", seed=0)).selected
        rank = {s.id: k for k, s in enumerate(selected)}
        for res, sid in zip(results[:3], ids, strict=True):
            (region,) = res["result"]
            assert region["from_name"] == "species" and region["to_name"] == "image" and region["type"] == "choices"
            assert region["value"]["choices"] == [priors[sid].label]
            assert region["score"] == pytest.approx(priors[sid].confidence, abs=1e-5)
            assert region["meta"] == {"text": [cal.warning]}  # the calibration warning, on every prior
            want = order_score(rank.get(sid), len(rank), False, priors[sid].confidence)
            assert res["score"] == pytest.approx(want, abs=1e-6)
            assert res["model_version"] == MODEL_VERSION
        assert results[3] == {"result": [], "score": UNMATCHED_SCORE, "model_version": results[0]["model_version"]}
        (region,) = results[4]["result"]  # img_0000 is labelled: its label, sorted after the unlabelled
        assert region["value"]["choices"] == [CLASSES[0]] and region["score"] == 1.0 and "meta" not in region
        assert r.json()["calibration"] == client.calibration_dict(cal)  # the whole provenance (Label Studio ignores it)
        assert results[4]["score"] == LABELLED_SCORE
        # a task alone gets the same answer as in the batch (scores do not depend on the batch)
        one = dict(body("predict.json"), tasks=body("predict.json")["tasks"][1:2])
        r = http.post("/labelstudio/predict", json=one, headers=bearer(READ_TOKEN))
        assert r.json()["results"] == results[1:2]
    finally:
        app.state.stub.close()


def test_sorting_by_prediction_score_follows_the_selection(agent: Running) -> None:
    http, app = app_for(agent)
    try:
        by_score = [sid for _, sid in ordered(http)]
        selected = [s.id for s in reader(agent).Select(
            agent_pb2.SelectRequest(budget=BUDGET, strategy="typiclust", seed=0)).selected]
        assert by_score[:BUDGET] == selected
        assert set(by_score[-LABELLED:]) == {sample_id(i) for i in range(LABELLED)}
        # the rest: least confident prior first
        rest = by_score[BUDGET:-LABELLED]
        conf = {p.id: p.confidence for p in reader(agent).PriorLabels(agent_pb2.PriorLabelsRequest(method="knn",
                                                                                                     ids=rest))}
        assert [conf[i] for i in rest] == sorted(conf[i] for i in rest)
    finally:
        app.state.stub.close()


def test_webhook_refuses_cross_site_posts(agent: Running) -> None:
    """A page on another site cannot make a visitor's browser post webhook events, even to an app with a
    default token (`shortlist web --token`, the worst case: no sign-in needed): the body must be declared
    application/json (which a cross-site form or no-cors fetch cannot send without a CORS preflight) and a
    foreign Origin is refused. Label Studio's own requests (JSON, no Origin) still label."""
    http, app = app_for(agent, default_token=WRITE_TOKEN)
    try:
        raw = json.dumps(event(CREATED)).encode()
        csrf = [({"Content-Type": "text/plain", "Origin": "https://evil.example"}, 403),  # a text/plain form
                ({"Content-Type": "text/plain"}, 415),  # the same, from a browser that would send no Origin
                ({}, 415),  # a no-cors fetch of a Blob without a type: no Content-Type at all
                ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
                ({"Content-Type": "application/json", "Origin": "https://evil.example"}, 403),
                ({"Content-Type": "application/json", "Origin": "null"}, 403)]  # a sandboxed frame
        for headers, status in csrf:
            r = http.post("/labelstudio/webhook", content=raw, headers=headers)
            assert r.status_code == status, (headers, r.text)
            assert r.json()["error"] in ("CROSS_ORIGIN", "UNSUPPORTED_MEDIA_TYPE")
        assert "application/json" in http.post("/labelstudio/webhook", content=raw).json()["message"]
        assert "evil.example" in http.post("/labelstudio/webhook", json=event(CREATED),
                                           headers={"Origin": "https://evil.example"}).json()["message"]
        assert labels_of(agent) == {sample_id(i): CLASSES[i % 3] for i in range(LABELLED)}  # nothing labelled
        for path in ("setup", "predict"):  # the other POSTs of the backend take JSON only too
            r = http.post(f"/labelstudio/{path}", content=json.dumps(body(f"{path}.json")).encode(),
                          headers={"Content-Type": "text/plain", **basic(READ_TOKEN)})
            assert r.status_code == 415, (path, r.text)
        # what Label Studio sends (requests.post(url, json=...): application/json, no Origin) labels
        r = http.post("/labelstudio/webhook", content=raw, headers={"Content-Type": "application/json; charset=utf-8"})
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        assert len(labels_of(agent)) == LABELLED + 1
    finally:
        app.state.stub.close()


def test_webhook_annotations_become_labels(agent: Running) -> None:
    http, app = app_for(agent)
    try:
        created = event(CREATED)
        r = http.post("/labelstudio/webhook", json=created, headers=basic(READ_TOKEN))
        assert r.status_code == 403 and "role write" in r.json()["message"]
        r = http.post("/labelstudio/webhook", json=created, headers=basic(WRITE_TOKEN))
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 1
        updated = event(UPDATED)
        assert http.post("/labelstudio/webhook", json=updated, headers=bearer(WRITE_TOKEN)).json()["accepted"] == 1
        labels = labels_of(agent)
        assert labels["reef/site-b/img_0007.jpg"] == "frog" and labels["reef/site-a/img_0010.jpg"] == "dog"
        assert len(labels) == LABELLED + 2
        given = {(r.id, r.label, r.annotator, r.source)
                 for r in reader(agent).ListLabels(agent_pb2.ListLabelsRequest(history=True))}
        assert {("reef/site-b/img_0007.jpg", "frog", "labelstudio:1", "labelstudio"),
                ("reef/site-a/img_0010.jpg", "dog", "labelstudio:2", "labelstudio")} <= given
        # a skipped task labels nothing; other events change nothing and answer 200
        r = http.post("/labelstudio/webhook", json=body("webhook_annotation_skipped.json"), headers=basic(WRITE_TOKEN))
        assert r.status_code == 200 and r.json()["accepted"] == 0 and "skipped" in r.json()["skipped"][0]["reason"]
        for name in ("webhook_tasks_created.json", "webhook_start_training.json"):
            r = http.post("/labelstudio/webhook", json=body(name), headers=basic(WRITE_TOKEN))
            assert r.status_code == 200 and r.json()["status"] == "ignored", name
        assert labels_of(agent) == labels
        # the bulk event (annotations created by an import or an action) pairs annotations with their tasks
        bulk = {"action": "ANNOTATIONS_CREATED", "project": created["project"],
                "annotation": [event(CREATED, ["cat"])["annotation"], event(UPDATED)["annotation"]],
                "task": [updated["task"], created["task"]]}
        r = http.post("/labelstudio/webhook", json=bulk, headers=basic(WRITE_TOKEN))
        assert r.status_code == 200 and r.json()["accepted"] == 1  # 18 gave dog already: sent again, unchanged
        assert [x["annotation"] for x in r.json()["skipped"]] == [18] and "already" in r.json()["skipped"][0]["reason"]
        labels["reef/site-b/img_0007.jpg"] = "cat"
        assert labels_of(agent) == labels
        # the next predictions show the new labels
        res = http.post("/labelstudio/predict", json=body("predict.json"), headers=basic(READ_TOKEN)).json()
        assert res["results"][0]["result"][0]["value"]["choices"] == ["cat"]
        assert res["results"][0]["score"] == LABELLED_SCORE
        assert res["labelled"] == LABELLED + 2
        # annotations deleted: 17's label (cat, from the bulk event) is current, so it is taken back; 18's
        # sample was labelled by someone else since, so that label stays; 99 this app never saw
        client.submit_labels(writer(agent), [("reef/site-a/img_0010.jpg", "frog")], annotator="ann")
        deleted = body("webhook_annotations_deleted.json")
        deleted["annotations"] += [{"id": 18}, {"id": 99}]
        assert http.post("/labelstudio/webhook", json=deleted).status_code == 401
        r = http.post("/labelstudio/webhook", json=deleted, headers=basic(READ_TOKEN))
        assert r.status_code == 403  # and nothing forgotten: the write token's event below still retracts
        r = http.post("/labelstudio/webhook", json=deleted, headers=basic(WRITE_TOKEN))
        assert r.status_code == 200 and r.json()["retracted"] == 1, r.text
        assert sorted(x["annotation"] for x in r.json()["skipped"]) == [18, 99]
        del labels["reef/site-b/img_0007.jpg"]
        labels["reef/site-a/img_0010.jpg"] = "frog"
        assert labels_of(agent) == labels
        last = [(x.label, x.annotator, x.source, x.retracted) for x in reader(agent).ListLabels(
            agent_pb2.ListLabelsRequest(history=True)) if x.id == "reef/site-b/img_0007.jpg"][-1]
        assert last == ("", "labelstudio", "labelstudio", True)
        # deleted twice (Label Studio retries a webhook): nothing more
        r = http.post("/labelstudio/webhook", json=deleted, headers=basic(WRITE_TOKEN))
        assert r.json()["retracted"] == 0 and labels_of(agent) == labels
        res = http.post("/labelstudio/predict", json=body("predict.json"), headers=basic(READ_TOKEN)).json()
        assert res["results"][0]["score"] < LABELLED_SCORE  # unlabelled again: ordered by its prior
    finally:
        app.state.stub.close()


def test_two_annotations_of_one_sample_in_a_bulk_event_give_the_later_label(agent: Running) -> None:
    """SubmitLabels takes one label per sample and request: a bulk event holding two annotations of one task
    by one annotator sends the later one, rather than having the agent refuse the repeat."""
    http, app = app_for(agent)
    try:
        created = event(CREATED)
        bulk = {"action": "ANNOTATIONS_CREATED", "project": created["project"],
                "annotation": [event(CREATED, ["cat"])["annotation"], event(CREATED, ["frog"])["annotation"]],
                "task": [created["task"], created["task"]]}
        before = labels_of(agent)
        r = http.post("/labelstudio/webhook", json=bulk, headers=basic(WRITE_TOKEN))
        assert r.status_code == 200 and (r.json()["accepted"], r.json()["rejected"]) == (1, []), r.text
        after = labels_of(agent)
        assert [after[i] for i in set(after) - set(before)] == ["frog"]
    finally:
        app.state.stub.close()


def test_webhook_bad_bodies_are_400(agent: Running) -> None:
    http, app = app_for(agent)
    created = event(CREATED)
    no_task = {k: v for k, v in created.items() if k != "task"}
    bad_choices = event(CREATED, "frog")
    two = event(CREATED, ["frog", "dog"])
    try:
        w = basic(WRITE_TOKEN)
        cases: list[tuple[Any, str]] = [
            (b"{not json", "not JSON"), ([1, 2], "JSON object"), ({"annotation": {}}, "no `action`"),
            (no_task, "without `task`"), (dict(created, annotation={"id": 3}), "without `annotation`"),
            (bad_choices, "value.choices"),
            (dict(created, project={"id": 99}), "no label config")]
        for payload, says in cases:
            kw: dict[str, Any] = {"content": payload} if isinstance(payload, bytes) else {"json": payload}
            r = http.post("/labelstudio/webhook", headers={**w, "Content-Type": "application/json"}, **kw)
            assert r.status_code == 400 and says in r.json()["message"], (says, r.text)
        r = http.post("/labelstudio/webhook", json=two, headers=w)  # valid body, but not one class: not labelled
        assert r.status_code == 200 and r.json()["accepted"] == 0 and "2 choices" in r.json()["skipped"][0]["reason"]
        r = http.post("/labelstudio/predict", json={"tasks": "x"}, headers=basic(READ_TOKEN))
        assert r.status_code == 400 and "`tasks`" in r.json()["message"]
        assert labels_of(agent) == {sample_id(i): CLASSES[i % 3] for i in range(LABELLED)}
    finally:
        app.state.stub.close()


def test_setup_schema_serves_predictions_without_label_config(agent: Running) -> None:
    http, app = app_for(agent)
    try:
        req = {k: v for k, v in body("predict.json").items() if k != "label_config"}
        r = http.post("/labelstudio/predict", json=req, headers=basic(READ_TOKEN))
        assert r.status_code == 400 and "no label config" in r.json()["message"]
        # (a write token's /setup: only that is remembered, test_a_read_tokens_setup_is_answered_but_not_remembered)
        assert http.post("/labelstudio/setup", json=body("setup.json"), headers=basic(WRITE_TOKEN)).status_code == 200
        r = http.post("/labelstudio/predict", json=req, headers=basic(READ_TOKEN))
        assert r.status_code == 200 and len(r.json()["results"]) == 5
    finally:
        app.state.stub.close()


def test_bodies_recorded_from_label_studio(agent: Running) -> None:
    """The requests a live Label Studio 1.23.2 sent (data/labelstudio/recorded/README.md): its /setup and
    /predict (Basic auth), and the webhook events of its annotation created, updated, skipped, deleted."""
    http, app = app_for(agent)
    rec = DATA / "recorded"

    def post(path: str, name: str, token: str) -> dict[str, Any]:
        r = http.post(f"/labelstudio/{path}", json=json.loads((rec / name).read_text()), headers=basic(token))
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer

    try:
        assert post("setup", "setup.json", READ_TOKEN)["model_version"] == MODEL_VERSION
        results = post("predict", "predict.json", READ_TOKEN)["results"]
        ids = ["reef/site-b/img_0007.jpg", "reef/site-a/img_0012.jpg"]
        priors = {p.id: p for p in reader(agent).PriorLabels(agent_pb2.PriorLabelsRequest(method="knn", ids=ids))}
        assert [r["result"][0]["value"]["choices"][0] for r in results] == [priors[i].label for i in ids]
        assert post("webhook", "webhook_annotation_created.json", WRITE_TOKEN)["accepted"] == 1
        assert labels_of(agent)[ids[0]] == "frog"
        assert post("webhook", "webhook_annotation_updated.json", WRITE_TOKEN)["accepted"] == 1
        assert post("webhook", "webhook_annotation_skipped.json", WRITE_TOKEN)["accepted"] == 0
        assert labels_of(agent)[ids[0]] == "cat"
        # the deleted annotation (3) gave the sample's current label: it is taken back
        assert post("webhook", "webhook_annotations_deleted.json", WRITE_TOKEN)["retracted"] == 1
        labels = labels_of(agent)
        assert ids[0] not in labels and ids[1] not in labels
    finally:
        app.state.stub.close()


def test_a_retraction_and_a_new_label_refresh_the_ordering(agent: Running) -> None:
    """The cached selection is keyed on Status.label_events: after one label taken back and another given
    (the labelled count as before) the next /predict orders by a new Select."""
    http, app = app_for(agent)
    try:
        first = ordered(http)[0][1]  # rank 0 of the current selection, unlabelled
        w = writer(agent)
        assert w.RetractLabels(agent_pb2.RetractLabelsRequest(ids=[sample_id(0)], annotator="t")).accepted == 1
        assert client.submit_labels(w, [(first, CLASSES[0])], annotator="t").accepted == 1
        assert reader(agent).GetStatus(agent_pb2.GetStatusRequest()).labeled == LABELLED
        order = ordered(http)
        selected = [s.id for s in reader(agent).Select(
            agent_pb2.SelectRequest(budget=BUDGET, strategy="typiclust", seed=0)).selected]
        assert first not in selected
        # a stale selection would rank only BUDGET - 1 tasks (its first is labelled now) and none of the new one
        assert [sid for score, sid in order if score < SELECTED_SPAN] == selected
    finally:
        app.state.stub.close()


# ---- the command line ----------------------------------------------------------------------------
def test_flags_reach_the_backend(tmp_path: Path, registry: Path) -> None:
    """`serve --web-port` with the match rule from the environment: a task whose `sample_id` field names a
    sample gets its prior, over real HTTP with Basic auth (what Label Studio sends)."""
    port, web_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "shortlist.cli", "serve", "--data-dir", str(tmp_path / "d"),
                             "--models", str(registry), "--port", str(port), "--cpu", "--web-port", str(web_port),
                             "--labelstudio-budget", "3"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "SHORTLIST_LABELSTUDIO_MATCH": "field:sample_id"})
    try:
        stub = client.connect(f"127.0.0.1:{port}", starting=True, timeout=60)
        client.ingest(stub, make_samples(12, labels=6))
        url = f"http://127.0.0.1:{web_port}/labelstudio"
        assert json.loads(wait_http(f"{url}/health", proc))["status"] == "UP"
        req = body("predict.json")
        req["tasks"] = [dict(req["tasks"][0], data={"image": "x.jpg", "sample_id": "s7"}),
                        dict(req["tasks"][1], data={"image": "reef/site-b/img_0007.jpg"})]
        post = urllib.request.Request(f"{url}/predict", data=json.dumps(req).encode(), method="POST",
                                      headers={"Content-Type": "application/json", **basic("anything")})
        with urllib.request.urlopen(post, timeout=60) as r:
            results = json.loads(r.read())["results"]
        (prior,) = stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn", ids=["s7"]))
        assert results[0]["result"][0]["value"]["choices"] == [prior.label]
        assert results[1] == {"result": [], "score": UNMATCHED_SCORE, "model_version": results[0]["model_version"]}
    finally:
        stop(proc)


def test_bad_flags_are_usage_errors(running: Running, tmp_path: Path, registry: Path) -> None:
    for args, says in [(["--labelstudio-match", "regex:("], "not a regular expression"),
                       (["--labelstudio-strategy", "nope"], "not a strategy of the agent; valid: "),
                       (["--labelstudio-prior", "nope"],
                        "not a prior method of the agent; valid: " + ", ".join(sorted(PRIOR_METHODS)))]:
        res = runner.invoke(cli_app, ["web", "--agent", running.address, "--port", "0", *args])
        assert res.exit_code == 2 and says in out(res), out(res)
    res = runner.invoke(cli_app, ["serve", "--data-dir", str(tmp_path / "d"), "--models", str(registry), "--port",
                                  "0", "--cpu", "--web-port", "0", "--labelstudio-strategy", "nope"])
    assert res.exit_code == 2 and "not a strategy of the agent" in out(res) and not (tmp_path / "d").exists()


def test_bad_flags_are_refused_against_a_token_agent_without_a_token(tmp_path: Path, registry: Path) -> None:
    """An agent that requires tokens cannot be asked for its strategies without one: the flags are checked
    against this installation's registries instead of not at all."""
    from tests.agent.web.conftest import READ_TOKEN, WRITE_TOKEN

    tokens = tmp_path / "tokens"
    tokens.write_text(f"read:{READ_TOKEN}\nwrite:{WRITE_TOKEN}\n")
    r = start(tmp_path / "data", registry, security=ServerSecurity(tokens=tokens))
    try:
        for args, says in [(["--labelstudio-strategy", "nope"], "not a strategy of the agent; valid: "),
                           (["--labelstudio-prior", "nope"], "not a prior method of the agent; valid: ")]:
            res = runner.invoke(cli_app, ["web", "--agent", f"127.0.0.1:{r.port}", "--port", "0", *args],
                                env={"SHORTLIST_TOKEN": None})
            assert res.exit_code == 2 and says in out(res), out(res)
            assert "the agent requires tokens and no --token was given" in out(res)
    finally:
        r.stop()


def test_labelstudio_flags_without_a_web_port_are_said_to_have_no_effect(tmp_path: Path, registry: Path) -> None:
    """The Label Studio backend is part of the web app: `serve --labelstudio-strategy random` without
    --web-port would be silently ignored; it is said at start (a warning, the agent serves)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "shortlist.cli", "serve", "--data-dir", str(tmp_path / "d"),
                             "--models", str(registry), "--port", str(port), "--cpu", "--labelstudio-strategy",
                             "random"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    client.connect(f"127.0.0.1:{port}", starting=True, timeout=60)
    proc.send_signal(signal.SIGTERM)
    said, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "have no effect without --web-port" in said + err


def test_without_a_token_the_app_answers_when_the_agent_requires_one(agent: Running,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """As every other route of the app (auth.caller): with tokens required, a Label Studio request without a
    token is 401 from the app and no Agent call the agent would refuse and log; /health (anyone may open it)
    asks the agent's gRPC health service, which needs no token."""
    import logging

    caplog.set_level(logging.INFO)
    http, app = app_for(agent, tokens_required=True)
    try:
        for path in ("/labelstudio/health", "/labelstudio/"):
            r = http.get(path)
            assert r.status_code == 200 and r.json()["status"] == "UP"
        for path, doc in (("/labelstudio/setup", "setup.json"), ("/labelstudio/predict", "predict.json"),
                          ("/labelstudio/webhook", "webhook_annotations_deleted.json")):
            r = http.post(path, json=body(doc))
            assert r.status_code == 401 and "requires a token" in r.json()["message"], (path, r.text)
        assert not [r for r in caplog.records if "refused" in r.getMessage()], caplog.text
        r = http.post("/labelstudio/setup", json=body("setup.json"), headers=basic(READ_TOKEN))
        assert r.status_code == 200, r.text
    finally:
        app.state.stub.close()
    dead = f"127.0.0.1:{free_port()}"
    app = create_app(WebConfig(port=0, agent=dead, tokens_required=True), lambda: client.channel(dead, timeout=0.5))
    with TestClient(app, base_url=BASE_URL) as down:
        r = down.get("/labelstudio/health")
        assert r.status_code == 503 and "connection refused" in r.json()["message"], r.text


def test_an_annotation_the_agent_refuses_is_warned_about_with_its_sample_and_reason(
        agent: Running, caplog: pytest.LogCaptureFixture) -> None:
    """An annotation whose choice the agent refuses (here a class renamed since the project was set up) is
    answered 200 as Label Studio needs (it ignores the body; an error would only make it resend), and logged at
    WARNING with the sample and the agent's reason (was: an INFO count only), at most one line every 10 s."""
    import logging

    caplog.set_level(logging.INFO)
    http, app = app_for(agent)
    try:
        writer(agent).RenameClass(agent_pb2.RenameClassRequest(from_class="cat", to_class="kitty", annotator="lead"))
        for _ in range(2):
            r = http.post("/labelstudio/webhook", json=event(CREATED, ["cat"]), headers=basic(WRITE_TOKEN))
            assert r.status_code == 200 and r.json()["accepted"] == 0, r.text
            assert [x["reason"] for x in r.json()["rejected"]] == ["\"cat\" was renamed to \"kitty\"; label with that"]
        warned = [x.getMessage() for x in caplog.records if x.levelno == logging.WARNING and "Label Studio" in
                  x.getMessage()]
        assert warned == ["Label Studio ANNOTATION_CREATED: the agent refused the annotation of sample "
                          "reef/site-b/img_0007.jpg: \"cat\" was renamed to \"kitty\"; label with that; it is kept in "
                          "Label Studio, not in Shortlist"], caplog.text
    finally:
        app.state.stub.close()


# ---- fixes found by the exploratory test (/work/explore-ls) -------------------------------------
def history(r: Running, sid: str) -> list[tuple[str, str, bool]]:
    """(label, annotator, retracted) of every label row of ``sid``, oldest first."""
    return [(x.label, x.annotator, x.retracted) for x in reader(r).ListLabels(agent_pb2.ListLabelsRequest(history=True))
            if x.id == sid]


def annotation(aid: int, user: int, choices: list[str], task: int = 101) -> dict[str, Any]:
    a = event(CREATED, choices)["annotation"]
    a.update(id=aid, completed_by=user, task=task)
    return a


def test_a_full_path_matching_no_sample_is_not_matched_by_its_file_name() -> None:
    """A deleted extra/siteA/reef_77.jpg must not match extra/siteB/reef_77.jpg (the file-name fallback is for
    files uploaded to Label Studio only, whose stored names say nothing of their folder)."""
    index = SampleIndex([("extra/siteB/reef_77.jpg", ""), ("a/twin.jpg", ""), ("b/twin.jpg", "")])
    schema = parse_schema(body("setup.json")["schema"])

    def m(image: str) -> str | None:
        return match_task({"id": 1, "data": {"image": image}}, schema, MatchRule.parse("url"), index)

    assert m("/data/local-files/?d=extra/siteA/reef_77.jpg") is None
    assert m("s3://bucket/extra/siteA/reef_77.jpg") is None
    assert m("https://h.example/img/reef_77.jpg") is None
    assert m("/data/local-files/?d=extra/siteB/reef_77.jpg") == "extra/siteB/reef_77.jpg"
    assert m("/data/upload/3/0a1b2c3d-reef_77.jpg") == "extra/siteB/reef_77.jpg"  # an upload: its name is unique
    assert m("/data/upload/3/0a1b2c3d-twin.jpg") is None  # two samples are called twin.jpg: no guess


def test_several_annotators_in_one_bulk_event_apply_in_order_and_resends_change_nothing(agent: Running) -> None:
    """ANNOTATIONS_CREATED [901 user1 cat, 902 user2 dog, 903 user1 frog] on one task: the sample's label is
    903's (the last), 901 and 902 are listed as skipped (superseded), a resend adds no history row, and
    deleting 903 takes its label back."""
    http, app = app_for(agent)
    try:
        created = event(CREATED)
        sid = "reef/site-b/img_0007.jpg"
        bulk = {"action": "ANNOTATIONS_CREATED", "project": created["project"],
                "annotation": [annotation(901, 1, ["cat"]), annotation(902, 2, ["dog"]), annotation(903, 1, ["frog"])],
                "task": [created["task"]]}
        r = http.post("/labelstudio/webhook", json=bulk, headers=basic(WRITE_TOKEN))
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        assert sorted(x["annotation"] for x in r.json()["skipped"]) == [901, 902]
        assert all("superseded" in x["reason"] for x in r.json()["skipped"])
        assert labels_of(agent)[sid] == "frog"
        assert history(agent, sid) == [("frog", "labelstudio:1", False)]
        for _ in range(3):  # Label Studio resends the event (or an import runs twice)
            r = http.post("/labelstudio/webhook", json=bulk, headers=basic(WRITE_TOKEN))
            assert r.status_code == 200 and r.json()["accepted"] == 0, r.text
        assert history(agent, sid) == [("frog", "labelstudio:1", False)]
        # a single event of an earlier annotation, resent after a later one, does not flip the label back
        two = {"action": "ANNOTATIONS_CREATED", "project": created["project"],
               "annotation": [annotation(911, 2, ["dog"])], "task": [created["task"]]}
        three = {"action": "ANNOTATIONS_CREATED", "project": created["project"],
                 "annotation": [annotation(912, 3, ["cat"])], "task": [created["task"]]}
        for e in (two, three, two):
            assert http.post("/labelstudio/webhook", json=e, headers=basic(WRITE_TOKEN)).status_code == 200
        assert labels_of(agent)[sid] == "cat"
        deleted = {"action": "ANNOTATIONS_DELETED", "project": created["project"], "annotations": [{"id": 912}]}
        r = http.post("/labelstudio/webhook", json=deleted, headers=basic(WRITE_TOKEN))
        assert r.status_code == 200 and r.json()["retracted"] == 1, r.text
        assert sid not in labels_of(agent)
    finally:
        app.state.stub.close()


def test_a_choice_predict_showed_for_a_class_is_stored_as_that_class(agent: Running) -> None:
    """A config whose choices differ from the classes only in case or Unicode form: /predict shows class
    `cat` as `CAT`, and `CAT` submitted comes back as `cat`; a choice two classes could map to is not guessed."""
    http, app = app_for(agent)
    try:
        xml = ('<View><Image name="image" value="$image"/><Choices name="species" toName="image">'
               '<Choice value="CAT"/><Choice value="Dog"/><Choice value="frog"/></Choices></View>')
        pred = dict(body("predict.json"), label_config=xml)
        pred["tasks"] = [dict(pred["tasks"][0], data={"image": f"/data/local-files/?d={sample_id(0)}"})]
        res = http.post("/labelstudio/predict", json=pred, headers=basic(READ_TOKEN)).json()
        assert res["results"][0]["result"][0]["value"]["choices"] == ["CAT"]  # sample 0 is labelled cat
        created = event(CREATED, ["CAT"])
        created["project"]["label_config"] = xml
        r = http.post("/labelstudio/webhook", json=created, headers=basic(WRITE_TOKEN))
        assert r.status_code == 200 and (r.json()["accepted"], r.json()["rejected"]) == (1, []), r.text
        assert labels_of(agent)["reef/site-b/img_0007.jpg"] == "cat"
        assert parse_schema(xml).class_for("Dog", ["cat", "dog", "frog"]) == "dog"
        nfd = parse_schema(xml.replace('value="frog"', 'value="Cafe\u0301"'))  # the NFD spelling of Café
        assert nfd.choice_for("Café") == "Cafe\u0301" and nfd.class_for("Cafe\u0301", ["Café", "cat"]) == "Café"
        twins = parse_schema(xml.replace('<Choice value="frog"/>', '<Choice value="cat"/>'))
        assert twins.choice_for("cat") == "cat" and twins.class_for("CAT", ["cat", "dog"]) == "CAT"  # no guess
    finally:
        app.state.stub.close()


def test_an_update_that_clears_the_choice_takes_its_label_back(agent: Running) -> None:
    """ANNOTATION_UPDATED with `result: []`: the label that annotation gave is retracted if it is still the
    sample's current one; when someone else labelled the sample since, that label stays."""
    http, app = app_for(agent)
    try:
        sid = "reef/site-b/img_0007.jpg"
        post = http.post("/labelstudio/webhook", json=event(CREATED), headers=basic(WRITE_TOKEN))
        assert post.json()["accepted"] == 1
        cleared = event(CREATED)
        cleared["action"], cleared["annotation"]["result"] = "ANNOTATION_UPDATED", []
        r = http.post("/labelstudio/webhook", json=cleared, headers=basic(WRITE_TOKEN))
        assert r.status_code == 200 and r.json()["retracted"] == 1, r.text
        assert sid not in labels_of(agent)
        post = http.post("/labelstudio/webhook", json=event(CREATED), headers=basic(WRITE_TOKEN))
        assert post.json()["accepted"] == 1
        client.submit_labels(writer(agent), [(sid, "dog")], annotator="ann")
        r = http.post("/labelstudio/webhook", json=cleared, headers=basic(WRITE_TOKEN))
        assert r.status_code == 200 and r.json()["retracted"] == 0, r.text
        assert labels_of(agent)[sid] == "dog"
    finally:
        app.state.stub.close()


def test_an_update_is_credited_to_who_updated_it(agent: Running) -> None:
    """ANNOTATION_UPDATED with `completed_by: 1, updated_by: 5` (a reviewer's correction): the label's annotator
    is labelstudio:5, who chose it; a created annotation stays its author's."""
    http, app = app_for(agent)
    try:
        sid = "reef/site-b/img_0007.jpg"
        created = event(CREATED)
        created["annotation"]["updated_by"] = 1
        assert http.post("/labelstudio/webhook", json=created, headers=basic(WRITE_TOKEN)).json()["accepted"] == 1
        fixed = event(CREATED, ["dog"])
        fixed["action"], fixed["annotation"]["updated_by"] = "ANNOTATION_UPDATED", 5
        r = http.post("/labelstudio/webhook", json=fixed, headers=basic(WRITE_TOKEN))
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        assert history(agent, sid) == [("frog", "labelstudio:1", False), ("dog", "labelstudio:5", False)]
    finally:
        app.state.stub.close()


def test_an_older_update_arriving_late_does_not_win(agent: Running) -> None:
    """Two updates of annotation 17 arrive out of order (updated_at 08:10 dog, then 08:05 bird): dog stays."""
    http, app = app_for(agent)
    try:
        sid = "reef/site-b/img_0007.jpg"
        for choice, at in (("dog", "2026-11-30T08:10:00.000000Z"), ("cat", "2026-11-30T08:05:00.000000Z")):
            e = event(CREATED, [choice])
            e["action"], e["annotation"]["updated_at"] = "ANNOTATION_UPDATED", at
            r = http.post("/labelstudio/webhook", json=e, headers=basic(WRITE_TOKEN))
            assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 0 and "older" in r.json()["skipped"][0]["reason"], r.text
        assert labels_of(agent)[sid] == "dog"
    finally:
        app.state.stub.close()


# ---- webhooks out of order (/work/notes/s20.md) ---------------------------------------------------
def deleted(e: dict[str, Any], *ids: int) -> dict[str, Any]:
    """Label Studio's delete event of annotations ``ids`` in the project of event ``e``."""
    return {"action": "ANNOTATIONS_DELETED", "project": e["project"], "annotations": [{"id": i} for i in ids]}


def test_a_create_arriving_after_its_delete_labels_nothing(agent: Running, caplog: pytest.LogCaptureFixture) -> None:
    """Webhooks are not ordered: annotation 17's delete arrives before its create (and an update of it).
    Neither labels the sample (was: the late create stored a label Label Studio had already deleted); the
    answer says why and the log has one line naming the annotation. A read token's delete is refused (403)
    and blocks nothing."""
    import logging

    caplog.set_level(logging.INFO)
    http, app = app_for(agent)
    try:
        sid = "reef/site-b/img_0007.jpg"
        created = event(CREATED)
        r = http.post("/labelstudio/webhook", json=deleted(created, 17), headers=basic(WRITE_TOKEN))
        assert r.status_code == 200 and r.json()["retracted"] == 0, r.text
        r = http.post("/labelstudio/webhook", json=created, headers=basic(WRITE_TOKEN))
        assert r.status_code == 200 and r.json()["accepted"] == 0, r.text
        assert [x["annotation"] for x in r.json()["skipped"]] == [17]
        assert "deleted in Label Studio" in r.json()["skipped"][0]["reason"]
        updated = event(CREATED, ["dog"])
        updated["action"], updated["annotation"]["updated_at"] = "ANNOTATION_UPDATED", "2026-11-30T08:00:00Z"
        r = http.post("/labelstudio/webhook", json=updated, headers=basic(WRITE_TOKEN))
        assert r.status_code == 200 and r.json()["accepted"] == 0, r.text
        assert sid not in labels_of(agent) and history(agent, sid) == []
        said = [x.getMessage() for x in caplog.records if "before this event arrived" in x.getMessage()]
        assert said == ["Label Studio ANNOTATION_CREATED: annotation(s) 17 skipped: deleted in Label Studio before "
                        "this event arrived (webhooks are not ordered)",
                        "Label Studio ANNOTATION_UPDATED: annotation(s) 17 skipped: deleted in Label Studio before "
                        "this event arrived (webhooks are not ordered)"], caplog.text
        # a token that may not write cannot make annotations be skipped
        other = event(CREATED)
        other["annotation"]["id"] = 18
        r = http.post("/labelstudio/webhook", json=deleted(other, 18), headers=basic(READ_TOKEN))
        assert r.status_code == 403, r.text
        r = http.post("/labelstudio/webhook", json=other, headers=basic(WRITE_TOKEN))
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        assert labels_of(agent)[sid] == "frog"
    finally:
        app.state.stub.close()


def test_an_older_cleared_choice_arriving_late_does_not_retract_a_newer_label(agent: Running) -> None:
    """Updates of annotation 17 out of order: 08:10 dog, then 08:05 cleared (older): dog stays (was: retracted).
    And the other way round: 08:20 cleared, then 08:15 cat (older than the clear): the sample stays
    unlabelled."""
    http, app = app_for(agent)
    try:
        sid = "reef/site-b/img_0007.jpg"

        def update(choices: list[str] | None, at: str) -> dict[str, Any]:
            e = event(CREATED, choices)
            e["action"], e["annotation"]["updated_at"] = "ANNOTATION_UPDATED", at
            if choices is None:
                e["annotation"]["result"] = []
            r = http.post("/labelstudio/webhook", json=e, headers=basic(WRITE_TOKEN))
            assert r.status_code == 200, r.text
            answer: dict[str, Any] = r.json()
            return answer

        assert update(["dog"], "2026-11-30T08:10:00Z")["accepted"] == 1
        late = update(None, "2026-11-30T08:05:00Z")
        assert late["retracted"] == 0 and "older" in late["skipped"][0]["reason"], late
        assert labels_of(agent)[sid] == "dog"
        assert update(None, "2026-11-30T08:20:00Z")["retracted"] == 1
        late = update(["cat"], "2026-11-30T08:15:00Z")
        assert late["accepted"] == 0 and "older" in late["skipped"][0]["reason"], late
        assert sid not in labels_of(agent)
        assert update(["cat"], "2026-11-30T08:25:00Z")["accepted"] == 1  # a newer choice labels again
        assert labels_of(agent)[sid] == "cat"
    finally:
        app.state.stub.close()


def test_a_webhook_from_a_throttled_address_is_applied_at_its_first_send(agent: Running) -> None:
    """Label Studio does not resend a webhook: one answered 429 because its address had spent its allowance of
    failed tries (someone there guessing tokens) was lost, since a token got the agent's check at its second
    try only. A webhook's token now takes that check at its first; the guesses (to any route, the webhook
    included) are still answered 429 without asking the agent."""
    from agent.web import auth

    _, app = app_for(agent, tokens_required=True)
    check_s = 60.0  # one check for the whole test
    app.state.sign_in_throttle = auth.SignInThrottle(burst=3, per_s=0.001, check_s=check_s)  # no refill here
    http = TestClient(app, base_url=BASE_URL, client=("10.0.0.31", 50000))  # Label Studio and the guesser
    codes = [http.post("/labelstudio/setup", json={}, headers=basic(f"guess-{i:020d}")).status_code
             for i in range(6)]
    assert codes == [401] * 3 + [429] * 3, codes  # the address is throttled
    created = event(CREATED)
    r = http.post("/labelstudio/webhook", json=created, headers=basic(WRITE_TOKEN))
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    assert labels_of(agent)["reef/site-b/img_0007.jpg"] == "frog"
    wrong = [http.post("/labelstudio/webhook", json=created, headers=basic(f"hook-guess-{i:015d}")).status_code
             for i in range(5)]
    assert wrong == [429] * 5, wrong  # no more checks for this address until check_s has passed


_XML = ('<View><Image name="image" value="$image"/><Choices name="choice" toName="image"><Choice value="cat"/>'
        '</Choices></View>')
_A = {"id": 1, "task": 5, "result": []}
_T = {"id": 5, "data": {"image": "x"}}
_P = {"id": 3, "label_config": _XML}
_TASK_MISSING = ("without `task` (an object with its `data`, its `id` a number or a string): use Label Studio >= 1.4, "
                 "whose annotation webhooks carry the task")
_NO_CONFIG = labelstudio.NO_CONFIG


@pytest.mark.parametrize(("payload", "says"), [
    ({}, "not a Label Studio webhook event: no `action`"),
    ({"action": 3}, "not a Label Studio webhook event: no `action`"),
    ({"action": ""}, "not a Label Studio webhook event: no `action`"),
    ({"action": "ANNOTATIONS_DELETED"}, 'ANNOTATIONS_DELETED without `annotations` (a list of {"id": ...})'),
    ({"action": "ANNOTATION_DELETED", "annotations": "x"}, "ANNOTATION_DELETED without `annotations`"),
    ({"action": "ANNOTATIONS_DELETED", "annotations": [{"x": 1}]}, "ANNOTATIONS_DELETED without `annotations`"),
    ({"action": "ANNOTATIONS_DELETED", "annotations": [1]}, "ANNOTATIONS_DELETED without `annotations`"),
    ({"action": "ANNOTATION_CREATED", "task": _T, "project": _P},
     "ANNOTATION_CREATED without `annotation` (an object with a `result` list, its `id` and `task` numbers or "
     "strings)"),
    ({"action": "ANNOTATIONS_CREATED", "annotation": [dict(_A, task={"id": 5})], "task": [_T], "project": _P},
     "ANNOTATIONS_CREATED without `annotation`"),  # a task id that is an object: was a 500 (unhashable dict)
    ({"action": "ANNOTATIONS_CREATED", "annotation": [_A, dict(_A, id=2, task=6)],
      "task": [_T, {"id": {"n": 6}, "data": {}}], "project": _P}, "ANNOTATIONS_CREATED " + _TASK_MISSING),
    ({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": [1]}]}, "ANNOTATIONS_DELETED without `annotations`"),
    ({"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "result": {}}, "task": _T, "project": _P},
     "ANNOTATION_CREATED without `annotation`"),
    ({"action": "ANNOTATION_UPDATED", "annotation": {"id": 1, "result": "ab"}, "task": _T, "project": _P},
     "ANNOTATION_UPDATED without `annotation`"),
    ({"action": "ANNOTATION_CREATED", "annotation": _A, "project": _P}, "ANNOTATION_CREATED " + _TASK_MISSING),
    ({"action": "ANNOTATION_CREATED", "annotation": _A, "task": {"id": 5, "data": []}, "project": _P},
     "ANNOTATION_CREATED " + _TASK_MISSING),
    ({"action": "ANNOTATIONS_CREATED", "annotation": [_A, dict(_A, id=2, task=6)], "task": [_T, dict(_T, id=7)],
      "project": _P}, "ANNOTATIONS_CREATED: annotation 2 is for task 6, which is not in `task`"),
    ({"action": "ANNOTATIONS_CREATED", "annotation": [_A, 3], "task": [_T], "project": _P},
     "ANNOTATIONS_CREATED without `annotation`"),
    ({"action": "ANNOTATIONS_CREATED", "annotation": [_A], "task": [_T, None], "project": _P},
     "ANNOTATIONS_CREATED " + _TASK_MISSING),
    ({"action": "ANNOTATION_CREATED", "annotation": _A, "task": _T, "project": {"id": 4}}, _NO_CONFIG),
    ({"action": "ANNOTATION_CREATED", "annotation": _A, "task": _T, "project": "4.123"}, _NO_CONFIG),
])
def test_a_malformed_webhook_body_is_refused_before_the_agent_is_asked(payload: dict[str, Any], says: str) -> None:
    """Each malformed body (checked against the webhook's pydantic models) answers BadRequest (400 at the route)
    with what to send, and calls the agent for nothing."""

    class NoAgent:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the agent was asked ({name})")

    with pytest.raises(BadRequest) as e:
        LabelStudioBackend(LabelStudioConfig()).webhook(NoAgent(), payload)  # type: ignore[arg-type]
    assert says in str(e.value)


def test_an_event_of_another_kind_is_answered_ignored_whatever_else_it_holds() -> None:
    backend = LabelStudioBackend(LabelStudioConfig())
    answer = backend.webhook(None, {"action": "PROJECT_UPDATED", "annotation": 5})  # type: ignore[arg-type]
    assert answer == {"status": "ignored", "action": "PROJECT_UPDATED"}


# ---- a read token changes nothing (operator walk-through, item 1) ----------------------------------
def test_a_read_tokens_webhook_is_403_and_leaves_no_trace(agent: Running) -> None:
    """A read token's cleared-choice update dated 2099 of annotation 17 (was: answered 200 and remembered as the
    annotation's newest update, so that the real create that followed was skipped as "older" and its label
    lost) and a read token's event that labels nothing (a cancelled annotation) are both 403; the write
    token's create then labels the sample."""
    http, app = app_for(agent)
    try:
        sid = "reef/site-b/img_0007.jpg"
        poison = event(CREATED)
        poison["action"], poison["annotation"]["result"] = "ANNOTATION_UPDATED", []
        poison["annotation"]["updated_at"] = "2099-01-01T00:00:00Z"
        r = http.post("/labelstudio/webhook", json=poison, headers=basic(READ_TOKEN))
        assert r.status_code == 403 and "write" in r.json()["message"], r.text
        cancelled = event(CREATED)
        cancelled["annotation"]["was_cancelled"] = True
        r = http.post("/labelstudio/webhook", json=cancelled, headers=basic(READ_TOKEN))
        assert r.status_code == 403, r.text
        r = http.post("/labelstudio/webhook", json=event(CREATED), headers=basic(WRITE_TOKEN))
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        assert labels_of(agent)[sid] == "frog"
    finally:
        app.state.stub.close()


def test_a_read_tokens_setup_is_answered_but_not_remembered(agent: Running) -> None:
    """/setup with a read token checks the config and answers 200, but the config a write token's /setup
    remembered for the project stays (was: replaced, so that webhooks without `label_config` matched
    nothing); a project only a read token set up has no config remembered."""
    http, app = app_for(agent)
    try:
        setup = body("setup.json")
        bad = dict(setup, schema=setup["schema"].replace('name="species"', 'name="zzz"'))
        assert bad != setup
        req = {k: v for k, v in body("predict.json").items() if k != "label_config"}
        assert http.post("/labelstudio/setup", json=bad, headers=basic(READ_TOKEN)).status_code == 200
        r = http.post("/labelstudio/predict", json=req, headers=basic(READ_TOKEN))
        assert r.status_code == 400 and r.json()["message"] == labelstudio.NO_CONFIG, r.text
        assert "a token that may write" in labelstudio.NO_CONFIG
        assert http.post("/labelstudio/setup", json=setup, headers=basic(WRITE_TOKEN)).status_code == 200
        assert http.post("/labelstudio/setup", json=bad, headers=basic(READ_TOKEN)).status_code == 200
        r = http.post("/labelstudio/predict", json=req, headers=basic(READ_TOKEN))
        assert r.status_code == 200, r.text
        given = http.post("/labelstudio/predict", json=dict(req, label_config=setup["schema"]),
                          headers=basic(READ_TOKEN))
        assert r.json() == given.json() and any(res["result"] for res in r.json()["results"]), r.text
    finally:
        app.state.stub.close()


class _Refused(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "refused by the test"


@pytest.mark.parametrize(("code", "may"), [
    (grpc.StatusCode.PERMISSION_DENIED, False),  # a read token
    (grpc.StatusCode.FAILED_PRECONDITION, False),  # an agent that takes no writes now
    (grpc.StatusCode.UNAUTHENTICATED, None),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, None),  # busy: was False, and a write token's /setup was not remembered
    (grpc.StatusCode.UNAVAILABLE, None),
    (grpc.StatusCode.DEADLINE_EXCEEDED, None),
])
def test_the_role_check_escapes_what_is_no_answer_about_the_role(code: grpc.StatusCode, may: bool | None) -> None:
    """_may_write is False only for the refusals that say the token may not write; the others (None here)
    escape, so that /setup answers them instead of 200 with the config silently not remembered."""
    from types import SimpleNamespace

    def submit(*_: Any, **__: Any) -> None:
        raise _Refused(code)

    call = SimpleNamespace(stub=SimpleNamespace(SubmitLabels=submit), metadata=(),
                           config=SimpleNamespace(rpc_timeout_s=1.0))
    if may is None:
        with pytest.raises(grpc.RpcError):
            labelstudio._may_write(call)  # type: ignore[arg-type]
    else:
        assert labelstudio._may_write(call) is may  # type: ignore[arg-type]
