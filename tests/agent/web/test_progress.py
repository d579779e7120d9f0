"""The Progress page (agent/web/progress.py): route tests with TestClient, and in a real browser the audit
button, the audit estimate once its samples are labelled, the charts and the export download."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agent import client, exports
from shortlist.v1 import agent_pb2
from tests.agent.web.conftest import LABELLED, READ_TOKEN, WebAgent, shape_of, shot

INGESTED = len([i for i in range(LABELLED) if shape_of(f"img{i:03d}.png") != "triangle"])  # labelled at ingest


def label_some(wa: WebAgent) -> None:
    """alice labels img006-008 (a triangle among them: a new class), bob img009 and relabels img006 from
    its prior."""
    wa.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(labels=[
        agent_pb2.LabelAssignment(id=f"img{i:03d}.png", label=shape_of(f"img{i:03d}.png")) for i in (6, 7, 8)],
        annotator="alice"))
    wa.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(labels=[
        agent_pb2.LabelAssignment(id="img009.png", label="circle"), agent_pb2.LabelAssignment(id="img006.png",
                                                                                              label="square")],
        annotator="bob", source="prior:knn"))


def wait_audit(wa: WebAgent, labelled: int) -> agent_pb2.PriorAudit:
    deadline = time.monotonic() + 60
    while True:
        a = wa.stub.GetStatus(agent_pb2.GetStatusRequest()).audit
        if a.current and a.labelled == labelled and a.methods:
            return a
        assert time.monotonic() < deadline, a
        time.sleep(0.05)


def test_progress_page_and_api(web_agent: WebAgent, web_client: TestClient) -> None:
    label_some(web_agent)
    page = web_client.get("/progress")
    assert page.status_code == 200
    html = page.text
    for part in ("Labels over time", "Class balance", "Annotators", "How good are the priors?", "No audit yet",
                 'id="chart-timeline" aria-hidden="true"><svg', "/progress/export", "v0001"):
        assert part in html, part
    data = web_client.get("/api/progress").json()
    # bob's square on alice's circle img006: a change to another class, not a repeat
    assert (data["labelled"], data["labels_given"], data["labels_new"], data["labels_repeated"],
            data["labels_changed"]) == (INGESTED + 4, INGESTED + 5, INGESTED + 4, 0, 1)
    assert data["model_version"] == "v0001" and data["pending_model_version"] == ""
    assert {c: v["labels"] for c, v in data["classes"].items()} == {"circle": 3, "square": 4, "triangle": 1}
    by_name = {a["name"]: a for a in data["annotators"]}
    assert by_name["bob"]["sources"] == {"prior:knn": 2} and by_name["alice"]["labels"] == 3
    assert data["sources"] == {"ingest": INGESTED, "manual": 2, "prior:knn": 2}
    assert data["audit"]["drawn"] == 0
    # an audit drawn and labelled shows its estimates with their intervals
    drawn = [s.id for s in web_agent.stub.Select(agent_pb2.SelectRequest(budget=8, strategy="audit", seed=1)).selected]
    client.submit_labels(web_agent.stub, [(i, shape_of(i)) for i in drawn], "carol")
    a = wait_audit(web_agent, 8)
    html = web_client.get("/progress").text
    assert 'id="audit-table"' in html and 'id="chart-audit" aria-hidden="true"><svg' in html
    assert 'id="chart-audit-text">Accuracy of each prior method on the audit labels' in html
    for m in a.methods:
        assert f'data-method="{m.method}"' in html
        assert f"{m.overall.low:.1%} – {m.overall.high:.1%}" in html
    assert web_client.get("/api/progress").json()["audit"]["labelled"] == 8
    # a label taken back: the sample counts as unlabelled again (and as an open audit draw), nothing is lost
    assert client.retract_labels(web_agent.stub, [drawn[0]], annotator="carol").accepted == 1
    data = web_client.get("/api/progress").json()
    assert (data["labelled"], data["retracted"], data["audit"]["labelled"]) == (INGESTED + 4 + 8 - 1, 1, 7)
    assert sum(v["labels"] for v in data["classes"].values()) == INGESTED + 4 + 8 - 1
    assert "<b>1</b> taken back" in web_client.get("/progress").text
    # label_events is GetStatus' figure, as `shortlist status` prints it: the retraction is a label event too
    assert data["label_events"] == web_agent.stub.GetStatus(agent_pb2.GetStatusRequest()).label_events == \
        data["labels_given"] + data["retracted"]


def test_audit_draws_labelled_by_accepting_their_prior_are_shown_apart(web_agent: WebAgent,
                                                                       web_client: TestClient) -> None:
    """The audit's labelled count leaves out draws labelled by accepting their prior (PriorAudit.left_out): the
    page says how many and does not ask to label the rest when every draw is labelled (it said "3 of 6
    labelled ... Label the rest" when three had been accepted)."""
    drawn = [s.id for s in web_agent.stub.Select(agent_pb2.SelectRequest(budget=6, strategy="audit", seed=2)).selected]
    client.submit_labels(web_agent.stub, [(i, shape_of(i)) for i in drawn[:3]], "carol")
    client.submit_labels(web_agent.stub, [(i, shape_of(i)) for i in drawn[3:]], "carol", source="prior:knn")
    a = wait_audit(web_agent, 3)
    assert (a.drawn, a.left_out) == (6, 3), a
    html = " ".join(web_client.get("/progress").text.split())
    assert ("<b>3</b> of <b>6</b> audit samples labelled and scored; <b id=\"audit-left-out\">3</b> more labelled "
            "by accepting their prior") in html
    assert "Label the rest" not in html
    assert web_client.get("/api/progress").json()["audit"]["left_out"] == 3


def test_export_download_round_trips(web_agent: WebAgent, web_client: TestClient) -> None:
    label_some(web_agent)
    res = web_client.get("/progress/export", params=[("format", "csv"), ("format", "fiftyone"),
                                                     ("prior_method", "knn")])
    assert res.status_code == 200 and res.headers["content-type"] == "application/zip"
    assert "shortlist-export.zip" in res.headers["content-disposition"]
    z = zipfile.ZipFile(io.BytesIO(res.content))
    names = set(z.namelist())
    assert {"shortlist-export/labels.csv", "shortlist-export/priors.csv", "shortlist-export/fiftyone/labels.json",
            "shortlist-export/fiftyone/ids.csv"} <= names
    assert not any(n.startswith("shortlist-export/imagefolder") for n in names)
    with z.open("shortlist-export/labels.csv") as f:
        text = f.read().decode()
    current = {r.id: r.label for r in client.list_labels(web_agent.stub)}
    rows = [line.split(",")[:2] for line in text.splitlines()[1:]]
    assert dict((i, lab) for i, lab in rows) == current
    assert sum(1 for n in names if n.startswith("shortlist-export/fiftyone/data/")) == len(current)
    # errors are the app's error page (the link is followed by a browser), with the agent's message
    bad = web_client.get("/progress/export", params={"format": "xml"})
    assert bad.status_code == 400 and "xml" in bad.text
    bad = web_client.get("/progress/export", params={"prior_method": "nope"})
    assert bad.status_code == 400 and "unknown prior method" in bad.text


def test_export_download_leaves_out_a_damaged_image_and_says_so(web_agent: WebAgent,
                                                                web_client: TestClient) -> None:
    """A labelled sample's payload damaged: the zip is still sent (it was a bare 500), without that image,
    with problems.csv naming it and why."""
    rec = web_agent.agent.state.lookup("img000.png")
    assert rec is not None and web_agent.agent.blobs is not None
    web_agent.agent.blobs.path(rec.sha256).write_bytes(b"junk")
    res = web_client.get("/progress/export", params=[("format", "csv"), ("format", "imagefolder"),
                                                     ("prior_method", "")])
    assert res.status_code == 200, res.text
    z = zipfile.ZipFile(io.BytesIO(res.content))
    with z.open(f"shortlist-export/{exports.PROBLEMS_FILE}") as f:
        rows = [line.split(",", 2) for line in f.read().decode().splitlines()]
    assert rows[0] == ["id", "label", "problem"] and [r[0] for r in rows[1:]] == ["img000.png"]
    assert "corrupt" in rows[1][2]
    with z.open("shortlist-export/imagefolder/ids.csv") as f:
        ids = {line.split(",")[1] for line in f.read().decode().splitlines()[1:]}
    assert ids == set(web_agent.labels()) - {"img000.png"} and len(ids) == INGESTED - 1


def test_a_read_token_sees_progress_and_downloads_but_cannot_draw(token_web_agent: WebAgent) -> None:
    anonymous = token_web_agent.client()
    assert anonymous.get("/api/progress").status_code == 401
    reader = token_web_agent.client(headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert reader.get("/api/progress").status_code == 200
    assert reader.get("/progress/export", params={"format": "csv"}).status_code == 200
    # an audit draw is recorded for everyone, and the queue is the team's: both need a write token
    drawn = reader.post("/api/queue/select", json={"strategy": "audit", "budget": 3})
    assert drawn.status_code == 403
    assert "an audit draw (Select strategy audit) needs a write token. Sign in" in drawn.json()["message"]
    assert reader.post("/api/queue/select", json={"strategy": "random", "budget": 3}).status_code == 403
    assert token_web_agent.stub.GetStatus(agent_pb2.GetStatusRequest()).audit.drawn == 0
    assert reader.post("/api/labels", json={"labels": [{"id": "img010.png", "label": "circle"}]}).status_code == 403
    assert token_web_agent.stub.GetStatus(agent_pb2.GetStatusRequest()).labeled == INGESTED


@pytest.mark.browser
def test_progress_in_a_browser_audit_button_estimate_and_download(live_web: WebAgent, page: Any,
                                                                  tmp_path: Path) -> None:
    label_some(live_web)
    page.goto(live_web.url + "/progress")
    page.wait_for_selector("#chart-timeline svg")
    assert "No audit yet" in page.inner_text("#audit-state")
    page.fill("#audit-form input[name=budget]", "9")
    page.click("#audit-button")
    page.wait_for_url("**/queue")
    page.wait_for_selector(".tile")
    ids = [page.locator(".tile").nth(i).get_attribute("data-id") for i in range(page.locator(".tile").count())]
    assert len(ids) == 9
    # label them with the keyboard, in the Queue, as an annotator would
    keys = {name: str(i + 1) for i, name in enumerate(list(live_web.stub.GetStatus(
        agent_pb2.GetStatusRequest()).classes))}
    page.wait_for_function("Array.from(document.querySelectorAll('.tile img'))"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    page.locator(".tile").first.click()  # the focus starts at a tile of its own per annotator: take the first
    for sid in ids:
        page.keyboard.press(keys[shape_of(str(sid))])
    page.wait_for_selector(f'.tile[data-id="{ids[-1]}"][data-saved="1"]')
    wait_audit(live_web, 9)
    page.goto(live_web.url + "/progress")
    page.wait_for_selector("#audit-table")
    text = page.inner_text("#audit-state")
    assert "9 of 9 audit samples labelled" in " ".join(text.split())
    assert page.locator("#audit-table tbody tr").count() == len(live_web.stub.GetStatus(
        agent_pb2.GetStatusRequest()).prior_methods)
    with page.expect_download() as info:
        page.click("#export-button")
    path = info.value.path()
    with zipfile.ZipFile(path) as z:  # the same folder as `shortlist export-labels` writes
        z.extractall(tmp_path)
    rows = exports.read_csv_rows(tmp_path / "shortlist-export" / "labels.csv")
    assert {r["id"]: r["label"] for r in rows} == {r.id: r.label for r in client.list_labels(live_web.stub)}
    page.mouse.move(0, 0)
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "app-progress")
    page.locator("#audit-panel").scroll_into_view_if_needed()
    shot(page, "app-progress-audit")


def test_annotator_speed_and_agreeing_repeats() -> None:
    """Per annotator: first and last label, labels per hour over that span (none under a minute), and the
    labels that repeated another annotator's label of the same sample (not new work)."""
    from agent.progress import collect

    def rec(sid: str, label: str, who: str, t: float, retracted: bool = False) -> agent_pb2.LabelRecord:
        return agent_pb2.LabelRecord(id=sid, label=label, annotator=who, time=t, retracted=retracted)

    p = collect([rec("a", "cat", "ana", 1000), rec("a", "cat", "ben", 1005),  # ben repeats ana: agreeing
                 rec("b", "dog", "ana", 1300), rec("b", "cat", "ben", 1310),  # ben disagrees: a correction
                 rec("c", "cat", "ana", 1400), rec("c", "", "ana", 1401, retracted=True),
                 rec("c", "cat", "ben", 1402),  # after a retraction: not a repeat
                 rec("b", "cat", "ana", 4600),  # ana agrees with ben's correction
                 rec("d", "cat", "cy", 2000), rec("e", "dog", "cy", 2030)])  # cy: a burst of 30 s
    ana, ben = p.annotators["ana"], p.annotators["ben"]
    assert (ana.labels, ana.agreeing, ana.first, ana.last) == (4, 1, 1000, 4600)
    assert ana.per_hour == 4 * 3600 / 3600
    assert (ben.labels, ben.agreeing) == (3, 1)
    assert ben.per_hour == pytest.approx(3 * 3600 / 397)
    assert p.annotators["cy"].per_hour is None and p.annotators["cy"].agreeing == 0


def test_progress_head_and_queue_state(web_agent: WebAgent, web_client: TestClient) -> None:
    """The open page's cheap poll (GetStatus counts) and the queue the audit button would replace."""
    head = web_client.get("/api/progress/head").json()
    assert (head["labelled"], head["samples"], head["model_version"]) == (INGESTED, 36, "v0001")
    assert web_client.get("/api/progress/queue").json() == {"total": 0, "open": 0, "source": "", "strategy": "",
                                                            "created": 0.0}
    ids = ["img010.png", "img011.png", "img012.png"]
    assert web_client.post("/api/queue", json={"ids": ids, "source": "map"}).status_code == 200
    client.submit_labels(web_agent.stub, [(ids[0], shape_of(ids[0]))], "dora")
    q = web_client.get("/api/progress/queue").json()
    assert (q["total"], q["open"], q["source"]) == (3, 2, "map")
    assert q["created"] == web_client.get("/api/queue").json()["created"] > 0  # the audit's if_created
    assert web_client.get("/api/progress/head").json()["labelled"] == INGESTED + 1
    html = web_client.get("/progress").text
    assert 'data-annotator="dora"' in html and "agreeing repeats" in html and "per hour" in html


def test_progress_tells_repeats_from_changes_and_label_events_means_what_status_says(
        web_agent: WebAgent, web_client: TestClient) -> None:
    """A team of three on one sample: a teammate agreeing is "the same class again", a correction "changed to
    another class", a retraction no label given but a label event. Was: /api/progress' label_events left out
    the retractions (339 against `shortlist status`' 341) and the header's "80 relabelled" counted samples
    labelled more than once, almost all agreeing teammates."""
    sid = "img010.png"
    client.submit_labels(web_agent.stub, [(sid, "circle")], "lead")
    client.submit_labels(web_agent.stub, [(sid, "circle")], "kim")  # agrees
    client.submit_labels(web_agent.stub, [(sid, "square")], "sam", if_current={sid: "circle"})  # corrects
    assert client.retract_labels(web_agent.stub, [sid], annotator="sam").accepted == 1
    data = web_client.get("/api/progress").json()
    status = web_agent.stub.GetStatus(agent_pb2.GetStatusRequest())
    assert (data["labels_given"], data["labels_new"], data["labels_repeated"], data["labels_changed"],
            data["retracted"]) == (INGESTED + 3, INGESTED + 1, 1, 1, 1)
    assert data["label_events"] == status.label_events == INGESTED + 4
    by = {a["name"]: a for a in data["annotators"]}
    assert (by["kim"]["labels_repeated"], by["kim"]["agreeing"], by["kim"]["current"]) == (1, 1, 0)
    assert (by["sam"]["labels_changed"], by["sam"]["retracted"], by["sam"]["current"]) == (1, 1, 0)
    html = web_client.get("/progress").text
    assert (f"<b>{INGESTED + 3}</b> labels given ({INGESTED + 1} to unlabelled samples, 1 the same class again, "
            "1 changed to another class), <b>1</b> taken back") in html
    assert "relabelled" not in html


def _time_ticks(svg: str) -> tuple[list[str], str]:
    """A chart's time axis as drawn: its tick labels and its offset (the text at the axis' right end, "" if
    none). matplotlib's SVG groups the x axis as ``matplotlib.axis_1``: one ``xtick_N`` group a tick."""
    import xml.etree.ElementTree as ET

    ns = {"s": "http://www.w3.org/2000/svg"}
    axis = next(g for g in ET.fromstring(svg).iter(f"{{{ns['s']}}}g") if g.get("id") == "matplotlib.axis_1")
    ticks = ["".join(t.itertext()) for g in axis.findall("s:g", ns) if (g.get("id") or "").startswith("xtick_")
             for t in g.iter(f"{{{ns['s']}}}text")]
    offset = ["".join(t.itertext()) for g in axis.findall("s:g", ns) if not (g.get("id") or "").startswith("xtick_")
              for t in g.iter(f"{{{ns['s']}}}text")]
    return ticks, "".join(offset)


T0 = 1_796_000_000.0  # 2026-11-30 00:53:20 UTC


@pytest.mark.parametrize(("step", "tick", "offset"), [
    # labels seconds apart (a run of a few seconds; 0: all at one moment): clock times, the date beside them
    (0.0, r"\d\d:\d\d:\d\d", r"2026-11-30 \(UTC\)"),
    (2.0, r"\d\d:\d\d:\d\d", r"2026-11-30 \(UTC\)"),
    (0.05, r"\d\d:\d\d:\d\d\.\d", r"2026-11-30 \(UTC\)"),
    (600.0, r"\d\d:\d\d", r"2026-11-30 \(UTC\)"),  # minutes apart: hh:mm
    (3 * 86400.0, r"(Nov|Dec) \d\d", r"2026 \(UTC\)"),  # days apart: dates
])
def test_time_axis_says_what_its_ticks_are_for_any_span(step: float, tick: str, offset: str) -> None:
    """The charts' time axis reads as times for any span: a run of seconds was labelled "51.00", "51.05" (the
    seconds alone), days apart "03", "05"; now clock times, or dates, with the date (or year) and "UTC" at the
    axis' end, and ticks within the labels' span (a moment is not widened to years)."""
    import re
    from datetime import UTC, datetime

    from agent.progress import class_timeline_svg, collect, timeline_svg

    p = collect([agent_pb2.LabelRecord(id=f"s{i}", label="cat" if i % 2 else "dog", annotator="ana",
                                       time=T0 + i * step, current=True, source="manual") for i in range(8)])
    first, last = datetime.fromtimestamp(T0, UTC), datetime.fromtimestamp(T0 + 7 * step, UTC)
    for svg in (timeline_svg(p), class_timeline_svg(p)):
        ticks, drawn_offset = _time_ticks(svg)
        assert len(ticks) >= 3 and all(re.fullmatch(tick, t) for t in ticks), ticks
        assert re.fullmatch(offset, drawn_offset), drawn_offset
        if step < 86400:  # clock times: the first tick at most a minute (or the span) before the first label
            h, m, s = [*ticks[0].split(":"), "0"][:3]
            at = first.replace(hour=int(h), minute=int(m), second=int(float(s)), microsecond=0)
            assert abs((at - first).total_seconds()) <= max(60.0, 7 * step), (ticks, first)
        else:
            assert ticks[0][:3] in (first.strftime("%b"), last.strftime("%b")), (ticks, first)
