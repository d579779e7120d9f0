"""Browser tests (Playwright driving Debian's chromium) of the Review priors and Map pages: accept a
prior and correct one, lasso samples on the map into the queue; each result is read back through gRPC.
Screenshots: docs/img/priors.png, map.png, map-hover.png (with SHORTLIST_SCREENSHOTS=docs/img)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import client
from shortlist.v1 import agent_pb2
from tests.agent.web.conftest import (
    LABELLED,
    N_IMAGES,
    WebAgent,
    device_page,
    dismissed_dialogs,
    new_version_held,
    shape_image,
    shot,
    slow_labels,
    start_web_agent,
)

pytestmark = pytest.mark.browser
LABELLED_NOW = sum(1 for i in range(LABELLED) if i % 3 != 2)  # the fixture's labels (circles and squares)
MAP_POOL = 240  # a pool large enough for the map to show its clusters (and a screenshot worth looking at)


def label_triangles(wa: WebAgent, ids: list[int]) -> None:
    """The fixture labels circles and squares only: give a few triangles their class too."""
    reply = client.submit_labels(wa.stub, [(f"img{i:03d}.png", "triangle") for i in ids], annotator="setup")
    assert reply.accepted == len(ids)


@pytest.fixture
def live_map(tmp_path: Path) -> Iterator[WebAgent]:
    wa = start_web_agent(tmp_path, listen=True, n=MAP_POOL)
    label_triangles(wa, [2, 5])
    yield wa
    wa.stop()


def wait_map_ready(page: Any) -> None:
    page.wait_for_selector("canvas#map[data-ready='1']", timeout=60_000)


def header_counts(page: Any) -> dict[str, int]:
    """The Review priors page's counts: "N match" as ``match``, the "all" tab's as ``all``, each class tab's."""
    counts: dict[str, int] = page.evaluate("""() => Object.fromEntries([
        ["match", document.getElementById("stat-shown").textContent],
        ...[...document.querySelectorAll(".class-tabs .tab")].map((b) => [b.dataset.label || "all",
                                                                         b.querySelector(".count").textContent])]
        .map(([k, v]) => [k, parseInt(v.replace(/[^0-9]/g, ""), 10)]))""")
    return counts


def test_accept_and_correct_priors_in_the_browser(live_web: WebAgent, page: Any) -> None:
    label_triangles(live_web, [2, 5])
    page.goto(f"{live_web.url}/priors?method=knn")
    page.wait_for_selector(".tile.prior")
    tiles = page.locator(".tile.prior")
    # few labels: the agent's calibration warning (PriorLabel.calibration) is shown above the grid
    assert page.locator("#calibration").is_visible()
    cal = page.locator("#calibration").inner_text()  # in the words of a browser user, not the CLI
    assert "audit sample on the Progress page" in cal and "shortlist" not in cal
    unlabelled = N_IMAGES - LABELLED
    assert tiles.count() == min(unlabelled, live_web.config.page_size)
    # the thumbnails in view have loaded (the others load lazily as the page scrolls)
    page.wait_for_function("() => [...document.querySelectorAll('.tile img')].slice(0, 10)"
                           ".every((i) => i.complete && i.naturalWidth > 0)")
    shot(page, "priors")
    before = header_counts(page)
    first = tiles.nth(0)
    sid, prior = first.get_attribute("data-id"), first.get_attribute("data-label")
    first.locator("button[data-act=accept]").click()
    page.wait_for_selector(f".tile.done.accepted[data-id='{sid}']")
    second = tiles.nth(1)
    sid2, prior2 = second.get_attribute("data-id"), second.get_attribute("data-label")
    other = next(c for c in ("circle", "square", "triangle") if c != prior2)
    # keyboard: ArrowDown on the closed box changes its value (and fires change) in Chrome: nothing is saved
    second.locator("select[data-act=correct]").focus()
    page.keyboard.press("ArrowDown")
    page.wait_for_timeout(500)
    assert second.locator("select[data-act=correct]").input_value() != ""
    assert sid2 not in live_web.labels() and "done" not in str(second.get_attribute("class"))
    second.locator("select[data-act=correct]").select_option(other)
    page.wait_for_timeout(300)
    assert sid2 not in live_web.labels()
    # the controls are named after their image; Save stores the class chosen
    assert page.get_by_role("button", name=f"accept {prior2} for {sid2}").count() == 1
    page.get_by_role("button", name=f"save the corrected class of {sid2}").click()
    page.wait_for_selector(f".tile.done.corrected[data-id='{sid2}']")
    # the counts above the grid follow the two labels (they stayed as loaded until a reload)
    assert page.inner_text("#stat-labelled") == str(LABELLED + 2)
    assert page.inner_text("#stat-unlabelled") == f"{unlabelled - 2:,}"
    # and so do "N match", the "all" tab and each class's tab (they stayed at 292 while the others moved)
    after = header_counts(page)
    assert after["match"] == before["match"] - 2 and after["all"] == before["all"] - 2
    assert {c: before[c] - after[c] for c in after if c not in ("match", "all")} == \
        {c: (prior, prior2).count(c) for c in before if c not in ("match", "all")}
    labels = live_web.labels()  # through gRPC (ListSamples)
    assert labels[sid] == prior and labels[sid2] == other
    sources = {e.id: e.source for e in live_web.stub.ListLabels(agent_pb2.ListLabelsRequest())}
    assert (sources[sid], sources[sid2]) == ("prior:knn", "manual")
    # the class tab filters; the reloaded page no longer shows the two samples
    page.reload()
    page.wait_for_selector(".tile.prior")
    ids = page.locator(".tile.prior").evaluate_all("(els) => els.map((e) => e.dataset.id)")
    assert sid not in ids and sid2 not in ids
    page.locator(f".class-tabs .tab[data-label='{other}']").click()
    page.wait_for_function("(c) => [...document.querySelectorAll('.tile.prior')].every((t) => t.dataset.label === c)",
                           arg=other)


def test_accept_all_leaves_a_label_given_meanwhile(live_web: WebAgent, page: Any) -> None:
    """"Accept all on this page" after someone labelled one of its samples: theirs stays, the toast says so."""
    page.goto(f"{live_web.url}/priors?method=knn")
    page.wait_for_selector(".tile.prior")
    first = page.locator(".tile.prior").nth(0)
    sid, prior = str(first.get_attribute("data-id")), first.get_attribute("data-label")
    other = next(c for c in ("circle", "square", "triangle") if c != prior)
    live_web.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id=sid, label=other)], annotator="bob"))
    n = page.locator(".tile.prior").count()
    page.once("dialog", lambda d: d.accept())
    page.click("#accept-page")
    page.wait_for_selector(f".tile.done.changed[data-id='{sid}']")
    toast = page.locator("#toast").inner_text()
    assert f"{n - 1} accepted prior(s)" in toast and "1 labelled meanwhile by bob: left as it is" in toast, toast
    assert live_web.labels()[sid] == other and live_web.history(sid) == [(other, "bob")]


def test_accept_all_says_how_many_were_refused_when_the_agent_listed_only_some(
        live_web: WebAgent, page: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent lists the first refusals only (rejected_count counts them all): the page showed the unlisted
    ones accepted and the toast counted the listed ones. Now the toast counts them all, the batch's unlisted
    tiles stay open saying they may have been refused, and that Accept all offers no undo."""
    import agent.service as service

    real = service.capped
    monkeypatch.setattr(service, "capped", lambda items, make, budget=0: real(items, make, budget=60))  # ~1 entry
    page.goto(f"{live_web.url}/priors?method=knn")
    page.wait_for_selector(".tile.prior")
    tiles = page.locator(".tile.prior")
    taken = [(str(tiles.nth(k).get_attribute("data-id")), str(tiles.nth(k).get_attribute("data-label")))
             for k in range(3)]
    live_web.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(labels=[
        agent_pb2.LabelAssignment(id=i, label=next(c for c in ("circle", "square", "triangle") if c != p))
        for i, p in taken], annotator="bob"))
    page.once("dialog", lambda d: d.accept())
    page.click("#accept-page")
    page.wait_for_selector(".tile.prior.failed")
    toast = page.locator("#toast").inner_text()
    assert "not listed by the agent" in toast and "refused" in toast, toast
    assert page.locator("#undo-accept-page").is_hidden()
    assert page.locator(".tile.prior.done.accepted").count() == 0


def test_accept_all_asks_first_and_can_be_undone(live_web: WebAgent, page: Any) -> None:
    """"Accept all on this page" (key A) asks first, with the count and the lowest confidence; dismissed, nothing
    is stored; accepted, "Undo accept all" takes back exactly those labels, leaving one changed since."""
    page.goto(f"{live_web.url}/priors?method=knn")
    page.wait_for_selector(".tile.prior")
    n = page.locator(".tile.prior").count()
    lowest = min(float(c) for c in page.evaluate("() => [...document.querySelectorAll("
                                                  "'.tile.prior .conf')].map((e) => parseFloat(e.textContent))"))
    before = live_web.labels()
    asked = dismissed_dialogs(page, once=True)
    page.keyboard.press("a")
    page.wait_for_timeout(300)
    assert asked and f"{n} sample(s)" in asked[0] and f"lowest confidence among them is {lowest:.0f}%" in asked[0]
    assert "audit has not measured" in asked[0]
    assert live_web.labels() == before and page.locator(".tile.done").count() == 0
    shown, labelled = header_counts(page)["match"], int(page.inner_text("#stat-labelled").replace(",", ""))
    page.once("dialog", lambda d: d.accept())
    page.click("#accept-page")
    page.wait_for_selector("#undo-accept-page:not([hidden])")
    assert page.locator(".tile.done.accepted").count() == n
    assert header_counts(page)["match"] == shown - n  # labelled: no longer among the unlabelled that match
    ids = page.locator(".tile.prior").evaluate_all("(els) => els.map((e) => e.dataset.id)")
    other = next(c for c in ("circle", "square", "triangle") if c != live_web.labels()[ids[0]])
    live_web.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(  # bob changes one of them meanwhile
        labels=[agent_pb2.LabelAssignment(id=ids[0], label=other)], annotator="bob"))
    page.click("#undo-accept-page")
    page.wait_for_function("() => document.getElementById('toast').textContent.includes('taken back')")
    assert f"undo: {n - 1} accepted prior(s) taken back · 1 changed since" in page.locator("#toast").inner_text()
    assert live_web.labels() == {**before, ids[0]: other}
    assert page.locator(".tile.done.accepted").count() == 1 and page.locator("#undo-accept-page").is_hidden()
    assert header_counts(page)["match"] == shown - 1  # the n - 1 taken back match again; bob's label stays
    assert page.inner_text("#stat-labelled") == f"{labelled + 1:,}"


def test_priors_counts_follow_the_agent_after_labels_elsewhere_and_accept_all(live_web: WebAgent, page: Any) -> None:
    """The header's "labelled" / "unlabelled" are the agent's, not the (stale) prior list's; after "Accept all"
    with some already labelled so by someone else they are the agent's still (they were counted twice), and
    the range line follows "N match" (it stayed "1–48 of 273, page 1 of 6" beside "225 match")."""
    page.goto(f"{live_web.url}/priors?method=knn")
    page.wait_for_selector(".tile.prior")
    tiles = page.locator(".tile.prior")
    n = tiles.count()
    taken = [(str(tiles.nth(k).get_attribute("data-id")), str(tiles.nth(k).get_attribute("data-label")))
             for k in range(2)]
    live_web.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(labels=[  # bob accepts two of them elsewhere
        agent_pb2.LabelAssignment(id=i, label=p) for i, p in taken], annotator="bob"))
    page.reload()  # the priors as cached (computed before bob's labels)
    page.wait_for_selector(".tile.prior")

    def agent_counts() -> tuple[str, str]:
        st = live_web.stub.GetStatus(agent_pb2.GetStatusRequest())
        return f"{st.labeled:,}", f"{st.samples - st.labeled:,}"

    assert (page.inner_text("#stat-labelled"), page.inner_text("#stat-unlabelled")) == agent_counts()
    page.once("dialog", lambda d: d.accept())
    page.click("#accept-page")
    page.wait_for_selector("#undo-accept-page:not([hidden])")
    assert live_web.stub.GetStatus(agent_pb2.GetStatusRequest()).labeled == LABELLED_NOW + n
    assert (page.inner_text("#stat-labelled"), page.inner_text("#stat-unlabelled")) == agent_counts()
    match = header_counts(page)["match"]
    assert page.inner_text("#page-info").endswith(f" of {match:,}")
    assert page.inner_text("#page-label") == f"page 1 of {max(1, math.ceil(match / live_web.config.page_size))}"


def test_key_a_accepts_the_page_with_the_focus_on_a_tiles_button(live_web: WebAgent, page: Any) -> None:
    """After ✓ the focus is on the next tile's Accept button; A (accept all) did nothing there (the page's keys
    ignored every button). A is no button's key: it asks to accept the page."""
    page.goto(f"{live_web.url}/priors?method=knn")
    page.wait_for_selector(".tile.prior")
    first = page.locator(".tile.prior").nth(0)
    sid = first.get_attribute("data-id")
    first.locator("button[data-act=accept]").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector(f".tile.done.accepted[data-id='{sid}']")
    assert page.evaluate("() => document.activeElement.dataset.act") == "accept"
    asked = dismissed_dialogs(page, once=True)
    page.keyboard.press("a")
    page.wait_for_timeout(300)
    assert len(asked) == 1 and "Accept the prior of" in asked[0], asked


def test_undo_accept_all_leaves_a_label_someone_else_had_given_the_same(live_web: WebAgent, page: Any) -> None:
    """bob accepted the same prior just before this page's "Accept all": the tile and the toast say his label
    was there, and "Undo accept all" takes back the others only, leaving bob's label."""
    page.goto(f"{live_web.url}/priors?method=knn")
    page.wait_for_selector(".tile.prior")
    first = page.locator(".tile.prior").nth(0)
    sid, prior = str(first.get_attribute("data-id")), str(first.get_attribute("data-label"))
    n = page.locator(".tile.prior").count()
    before = live_web.labels()
    live_web.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id=sid, label=prior)], annotator="bob", source="prior:knn"))
    page.once("dialog", lambda d: d.accept())
    page.click("#accept-page")
    page.wait_for_selector("#undo-accept-page:not([hidden])")
    assert f"already labelled {prior} by bob" in first.locator(".done-note").inner_text()
    assert "1 already labelled so by bob: undo leaves them" in page.locator("#toast").inner_text()
    assert page.inner_text("#undo-accept-page") == f"Undo accept all ({n - 1})"
    page.click("#undo-accept-page")
    page.wait_for_function("() => document.getElementById('toast').textContent.includes('taken back')")
    assert f"undo: {n - 1} accepted prior(s) taken back" in page.locator("#toast").inner_text()
    assert live_web.labels() == {**before, sid: prior}


def test_accept_all_then_next_shows_the_samples_that_followed(tmp_path: Path, page: Any) -> None:
    """Pages of 5: "Accept all on this page", then → shows the samples that were page 2 (the accepted ones
    left the list, so "page 2" by number would be the old page 3); ← then shows the page before."""
    wa = start_web_agent(tmp_path, listen=True, page_size=5, refresh_s=600)
    try:
        c = wa.client()
        order = [it["id"] for it in c.get("/api/priors", params={"method": "knn", "size": 200}).json()["items"]]
        page.goto(f"{wa.url}/priors?method=knn")
        page.wait_for_selector(".tile.prior")
        shown = "() => [...document.querySelectorAll('.tile.prior')].map((t) => t.dataset.id)"
        assert page.evaluate(shown) == order[:5]
        page.once("dialog", lambda d: d.accept())
        page.keyboard.press("a")
        page.wait_for_selector("#undo-accept-page:not([hidden])")
        page.keyboard.press("ArrowRight")
        page.wait_for_function(f"() => ({shown})()[0] === {order[5]!r}")
        assert page.evaluate(shown) == order[5:10]
        assert page.inner_text("#page-info").startswith("1–5 of ")
        page.click("#next-page")
        page.wait_for_function(f"() => ({shown})()[0] === {order[10]!r}")
        page.click("#prev-page")
        page.wait_for_function(f"() => ({shown})()[0] === {order[5]!r}")
        assert page.locator("#prev-page").is_disabled()
    finally:
        wa.stop()


def test_a_second_accept_while_the_first_is_saving_is_not_dropped(live_web: WebAgent, page: Any) -> None:
    page.goto(f"{live_web.url}/priors?method=knn")
    page.wait_for_selector(".tile.prior")
    tiles = page.locator(".tile.prior")
    a, b = str(tiles.nth(0).get_attribute("data-id")), str(tiles.nth(1).get_attribute("data-id"))
    with slow_labels(live_web.agent):
        tiles.nth(0).locator("button[data-act=accept]").click()
        tiles.nth(1).locator("button[data-act=accept]").click()
        assert tiles.nth(1).evaluate("(t) => t.classList.contains('pending')")
        page.wait_for_selector(f".tile.done.accepted[data-id='{b}']")
    labels = live_web.labels()
    assert a in labels and b in labels


def test_the_map_draws_each_point_once_after_a_deletion(live_web: WebAgent, page: Any) -> None:
    """After DeleteSamples the stored map still counts the deleted sample (its header's total) until it is
    made again: the page draws every live point once and counts the live points."""
    c = live_web.client()
    end = time.monotonic() + 60
    while (d := c.get("/api/map").json())["state"] != "ready" or d["total"] != N_IMAGES:
        assert time.monotonic() < end, d
        time.sleep(0.2)
    gone = d["ids"][0]  # not the map's last place: a page asked again from the ids received would repeat it
    assert live_web.stub.DeleteSamples(agent_pb2.DeleteSamplesRequest(ids=[gone], annotator="lead",
                                                                      reason="test")).accepted == 1
    page.goto(f"{live_web.url}/map")
    wait_map_ready(page)
    ids = page.evaluate("() => window.ShortlistMap.points().ids")
    assert sorted(ids) == sorted(set(d["ids"]) - {gone})
    assert page.inner_text("#stat-points") == str(N_IMAGES - 1)


def test_selected_points_keep_their_class_shape_on_the_map(live_web: WebAgent, page: Any) -> None:
    """Coloured by prior ("filled: labels · outlined: priors"), a selected point gets a ring in its class's
    shape: round around a point of the class drawn as circles (class 1), not round around another class's."""
    page.goto(f"{live_web.url}/map")
    wait_map_ready(page)
    page.select_option("#colour", "prior")
    page.wait_for_function("() => window.ShortlistMap.points().prior !== null")
    assert page.evaluate("() => window.ShortlistMap.shapeOf(1)") == "circle"
    rings = page.evaluate("""() => {
        const p = window.ShortlistMap.points(), ctx = document.getElementById('map').getContext('2d');
        const calls = { arc: 0 }, arc = ctx.arc;
        ctx.arc = function (...a) { calls.arc += 1; return arc.apply(this, a); };
        const one = (i) => { calls.arc = 0; p.selected = new Uint8Array(p.n); p.selected[i] = 1;
                             window.dispatchEvent(new Event('resize')); return { ...calls }; };
        const group = (i) => (p.label[i] >= 0 ? p.label[i] : p.prior[i]);
        const prior = [...p.label].findIndex((l, i) => l < 0 && p.prior[i] === 1);
        const labelled = [...p.label].findIndex((l) => l >= 0 && l !== 1);
        const out = { prior: one(prior), labelled: one(labelled) };
        const circles = [...p.label].filter((l, i) => group(i) === 1).length;
        ctx.arc = arc;
        return { ...out, circles, found: [prior, labelled] };
    }""")
    assert min(rings["found"]) >= 0, rings
    # each point of class 1 is drawn with arc (a circle); the selected one's ring is one more
    assert rings["prior"] == {"arc": rings["circles"] + 1}, rings
    assert rings["labelled"] == {"arc": rings["circles"]}, rings


def test_map_classes_differ_by_shape_in_points_and_legend(live_map: WebAgent, browser: Any) -> None:
    """A class is told apart by its shape as well as its colour: each class's legend swatch has its own shape,
    the one its points are drawn in, and forced colours (which drop colours) keep the swatches' shapes."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, forced_colors="active")
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(f"{live_map.url}/map")
        wait_map_ready(page)
        page.wait_for_function("() => document.querySelectorAll('#legend li[data-class]').length >= 2")
        legend = page.evaluate("""() => [...document.querySelectorAll('#legend li[data-class]')].map((li) => {
            const svg = li.querySelector('svg.swatch'), shape = svg.firstElementChild;
            const box = svg.getBoundingClientRect();
            return { name: li.dataset.class, shape: svg.dataset.shape,
                     drawn: shape.tagName + ':' + (shape.getAttribute('points') || ''),
                     adjust: getComputedStyle(svg).forcedColorAdjust, stroke: getComputedStyle(shape).stroke,
                     width: box.width, height: box.height };
        })""")
        assert len(legend) >= 2
        shapes = [e["shape"] for e in legend]
        assert len(set(shapes)) == len(shapes), legend  # a shape each
        assert len({e["drawn"] for e in legend}) == len(legend), legend  # drawn differently, not only named
        assert all(e["adjust"] == "none" and e["width"] > 8 and e["height"] > 8 for e in legend), legend
        assert all(e["stroke"] != "none" for e in legend), legend  # outlined in forced colours
        assert shapes == [page.evaluate(f"() => window.ShortlistMap.shapeOf({k})") for k in range(len(legend))]
        # the canvas draws a circle (arc) for each point whose class's shape is the circle, and only those
        drawn = page.evaluate("""() => {
            const p = window.ShortlistMap.points(), ctx = document.getElementById('map').getContext('2d');
            let arcs = 0; const arc = ctx.arc;
            ctx.arc = function (...a) { arcs += 1; return arc.apply(this, a); };
            window.dispatchEvent(new Event('resize'));
            ctx.arc = arc;
            const labels = [...p.label];
            return { arcs, circles: labels.filter((l) => l >= 0 && window.ShortlistMap.shapeOf(l) === 'circle').length,
                     labelled: labels.filter((l) => l >= 0).length };
        }""")
        assert drawn["arcs"] == drawn["circles"] < drawn["labelled"], drawn
    finally:
        context.close()


def test_unlabelled_points_have_a_shape_no_class_has(live_map: WebAgent, browser: Any) -> None:
    """The unlabelled points are told from every class's points by their shape, not by colour or lightness
    alone (they were squares, the shape of class 0): on the canvas, in the legend, and in forced colours."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, forced_colors="active")
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(f"{live_map.url}/map")
        wait_map_ready(page)
        page.wait_for_function("() => document.querySelectorAll('#legend li[data-class]').length >= 2")
        legend = page.evaluate("""() => [...document.querySelectorAll('#legend li')]
            .filter((li) => li.querySelector('svg'))
            .map((li) => { const svg = li.querySelector('svg.swatch'), shape = svg.firstElementChild;
                return { name: li.dataset.class || li.textContent.trim(), shape: svg.dataset.shape,
                         drawn: shape.tagName + ':' + (shape.getAttribute('points') || shape.getAttribute('d') || ''),
                         adjust: getComputedStyle(svg).forcedColorAdjust, stroke: getComputedStyle(shape).stroke,
                         strokeWidth: parseFloat(getComputedStyle(shape).strokeWidth) }; })""")
        *classes, unlabelled = legend
        assert unlabelled["name"].startswith("unlabelled"), legend
        # class k's shape, for as many classes as there are colours (the shapes repeat sooner)
        every_class_shape = page.evaluate("() => [...Array(20).keys()].map((k) => window.ShortlistMap.shapeOf(k))")
        assert unlabelled["shape"] not in every_class_shape, (unlabelled, every_class_shape)
        assert all(unlabelled["drawn"] != c["drawn"] for c in classes), legend  # drawn differently, not only named
        # forced colours keep it, as thick as drawn (the classes' outlines are thinner)
        assert unlabelled["adjust"] == "none" and unlabelled["stroke"] != "none", unlabelled
        assert unlabelled["strokeWidth"] > 0.4, unlabelled
        # the canvas: no unlabelled point is a filled rectangle, nor a filled path; each is two strokes
        drawn = page.evaluate("""() => {
            const p = window.ShortlistMap.points(), ctx = document.getElementById('map').getContext('2d');
            const n = { fillRect: 0, moveTo: 0 }, orig = { fillRect: ctx.fillRect, moveTo: ctx.moveTo };
            ctx.fillRect = function (...a) { n.fillRect += 1; return orig.fillRect.apply(this, a); };
            ctx.moveTo = function (...a) { n.moveTo += 1; return orig.moveTo.apply(this, a); };
            window.dispatchEvent(new Event('resize'));
            Object.assign(ctx, orig);
            const labels = [...p.label];
            return { fillRect: n.fillRect, moveTo: n.moveTo, unlabelled: labels.filter((l) => l < 0).length,
                     labelled: labels.filter((l) => l >= 0).length };
        }""")
        assert drawn["unlabelled"] > 0, drawn
        assert drawn["fillRect"] == 1, drawn  # the background only
        # two strokes (moveTo each) an unlabelled point; one moveTo a labelled point's closed shape
        assert drawn["moveTo"] == 2 * drawn["unlabelled"] + drawn["labelled"], drawn
    finally:
        context.close()


def test_an_empty_priors_view_offers_no_accept_and_no_pages(live_web: WebAgent, page: Any) -> None:
    """A filter that matches nothing: no "Accept all on this page", no pager, and no "1–0 of 0"."""
    page.goto(f"{live_web.url}/priors?method=knn&min=100&max=100&label=circle")
    page.wait_for_selector("#grid p.muted:has-text('No unlabelled sample')")
    assert page.locator("#accept-page").is_hidden() and page.locator("#next-page").is_hidden()
    assert page.inner_text("#page-info") == "none" and "1–0" not in page.inner_text("body")


def test_lasso_on_the_map_fills_the_queue(live_map: WebAgent, page: Any) -> None:
    live_web = live_map
    page.goto(f"{live_web.url}/map")
    wait_map_ready(page)
    page.wait_for_timeout(200)
    box = page.locator("canvas#map").bounding_box()
    # Screen positions of the unlabelled points; lasso a polygon around the left half of them.
    pts = page.evaluate("""() => { const p = window.ShortlistMap.points(), v = window.ShortlistMap.view();
        return p.ids.map((id, i) => ({id, x: p.x[i] * v.sx + v.tx, y: p.y[i] * v.sy + v.ty,
                                      labelled: p.label[i] >= 0})); }""")
    unl = sorted((p for p in pts if not p["labelled"]), key=lambda p: p["x"])
    cut = (unl[len(unl) // 2 - 1]["x"] + unl[len(unl) // 2]["x"]) / 2
    want = {p["id"] for p in unl if p["x"] < cut}
    x0 = min(p["x"] for p in pts) - 15
    y0, y1 = min(p["y"] for p in pts) - 15, max(p["y"] for p in pts) + 15
    poly = [(x0, y0), (cut, y0), (cut, y1), (x0, y1)]
    page.mouse.move(box["x"] + poly[0][0], box["y"] + poly[0][1])
    page.mouse.down()
    for a, b in zip(poly, poly[1:] + poly[:1], strict=True):
        for t in (0.25, 0.5, 0.75, 1.0):
            page.mouse.move(box["x"] + a[0] + t * (b[0] - a[0]), box["y"] + a[1] + t * (b[1] - a[1]))
    page.mouse.up()
    assert set(page.evaluate("() => window.ShortlistMap.selectedIds()")) == want
    assert page.locator("#stat-selected").inner_text() == str(len(want))
    # hover a point: its thumbnail shows
    p = unl[-1]
    page.mouse.move(box["x"] + p["x"], box["y"] + p["y"])
    page.wait_for_selector("#hover:not([hidden])")
    page.wait_for_function("() => { const i = document.getElementById('hover-img'); "
                           "return i.complete && i.naturalWidth > 0; }")
    assert p["id"] in page.locator("#hover-text").inner_text()
    shot(page, "map-hover")
    page.select_option("#colour", "prior")
    page.wait_for_function("() => window.ShortlistMap.points().prior !== null")
    page.mouse.move(box["x"] + p["x"], box["y"] + p["y"] + 1)
    page.wait_for_selector("#hover:not([hidden])")
    shot(page, "map")
    # someone replaces the queue after this page was drawn: sending is a 409 that says so, nothing replaced
    other = agent_pb2.Queue(ids=["img030.png"], source="select", strategy="uncertainty")
    live_web.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=other))
    page.on("dialog", lambda d: d.accept())  # "the queue still has 1 open sample(s)...": go on
    page.locator("#to-queue").click()
    page.wait_for_selector("#queue-link:not([hidden])")
    page.wait_for_function("() => document.getElementById('toast').textContent.includes('replaced meanwhile')")
    assert "by strategy uncertainty" in page.inner_text("#toast")
    assert list(live_web.stub.GetQueue(agent_pb2.GetQueueRequest(name="web")).ids) == ["img030.png"]
    # the page knows that queue now: a second click replaces it knowingly
    page.wait_for_function("() => !document.getElementById('to-queue').disabled")
    page.locator("#to-queue").click()
    page.wait_for_function("() => document.getElementById('toast').textContent.includes('are the queue now')")
    # the queue holds exactly the lassoed samples, in the map's order
    queue = live_web.stub.GetQueue(agent_pb2.GetQueueRequest(name="web"))  # kept by the agent
    assert set(queue.ids) == want and len(queue.ids) == len(want) and queue.source == "map"
    page.select_option("#colour", "queue")
    page.wait_for_function("() => document.getElementById('legend').textContent.includes('in the queue')")
    assert f"in the queue {len(want)}" in " ".join(page.locator("#legend").inner_text().split())
    # label the queue's first sample there with the keyboard, and read it back through gRPC
    page.goto(f"{live_web.url}/queue")
    page.wait_for_selector(".tile")
    first = page.locator(".tile").first.get_attribute("data-id")
    assert first == queue.ids[0]
    page.locator(".tile").first.click()  # the focus starts at a tile of its own per annotator: take the first
    page.keyboard.press("1")
    end = time.monotonic() + 10
    while first not in live_web.labels():
        assert time.monotonic() < end
        time.sleep(0.1)


def test_send_to_queue_asks_before_replacing_open_samples(live_web: WebAgent, page: Any) -> None:
    """The Map's Send to queue asks first, as the Queue page's Ask the agent does, while the team's queue has
    open samples; dismissed, the queue (and its not-sure marks) stays as it was."""
    old = agent_pb2.Queue(ids=["img030.png", "img031.png", "img032.png"], source="select", strategy="random")
    live_web.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=old))
    page.goto(f"{live_web.url}/map")
    wait_map_ready(page)
    page.locator("[data-tool=box]").click()
    box = page.locator("canvas#map").bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] - 2)
    page.mouse.up()
    assert page.evaluate("() => window.ShortlistMap.selectedIds().length") > 0
    asked = dismissed_dialogs(page)
    page.locator("#to-queue").click()
    page.wait_for_function("() => !document.getElementById('to-queue').disabled")
    assert len(asked) == 1, asked
    assert "The queue still has 3 open sample(s) of 3." in asked[0] and "Send to queue anyway?" in asked[0]
    assert list(live_web.stub.GetQueue(agent_pb2.GetQueueRequest(name="web")).ids) == list(old.ids)


def test_the_old_map_stays_while_the_new_versions_map_computes(live_web: WebAgent, page: Any) -> None:
    page.goto(f"{live_web.url}/map")
    wait_map_ready(page)
    notice = page.locator("#map-notice")
    assert notice.is_hidden()
    with new_version_held(live_web) as gate:
        page.reload()  # a page opened now gets the old map too, not an empty canvas
        page.wait_for_selector("canvas#map[data-ready='1'][data-shown='v0001']")
        notice.wait_for(state="visible")
        text = notice.inner_text()
        assert "newer map is being computed for model v0002" in text and "showing the map of v0001" in text, text
        assert page.evaluate("window.ShortlistMap.points().n") == N_IMAGES and page.locator("#map-state").is_hidden()
        shot(page, "map-computing")
        gate.set()
        # the page notices the new map by itself and draws it
        page.wait_for_selector("canvas#map[data-ready='1'][data-shown='v0002']", timeout=60_000)
    notice.wait_for(state="hidden")
    assert page.evaluate("window.ShortlistMap.header().model_version") == "v0002"


def test_an_open_map_redraws_when_samples_arrive(live_web_fast: WebAgent, page: Any) -> None:
    """A map drawn and up to date keeps watching its header: samples ingested later appear without a reload
    (so a lasso can pick them), with a toast saying what changed."""
    wa = live_web_fast
    page.goto(f"{wa.url}/map")
    wait_map_ready(page)
    assert page.evaluate("window.ShortlistMap.points().n") == N_IMAGES
    from tests.agent.web.conftest import shape_samples

    extra = shape_samples(N_IMAGES + 4, labelled=0)[N_IMAGES:]
    assert client.ingest(wa.stub, extra).accepted == 4
    page.wait_for_function(f"() => window.ShortlistMap.points().n === {N_IMAGES + 4}", timeout=30_000)
    assert page.locator("#stat-points").inner_text() == str(N_IMAGES + 4)
    assert "4 new sample(s)" in (page.locator("#toast").text_content() or "")


def test_priors_page_offers_a_recompute_once_labels_change_elsewhere(live_web_fast: WebAgent, page: Any) -> None:
    wa = live_web_fast
    label_triangles(wa, [2, 5])
    page.goto(f"{wa.url}/priors?method=knn")
    page.wait_for_selector(".tile.prior")
    # this page's own labels are not "changes": no notice after accepting one and a few polls
    first = page.locator(".tile.prior").nth(0)
    sid = first.get_attribute("data-id")
    first.locator("button[data-act=accept]").click()
    page.wait_for_selector(f".tile.done.accepted[data-id='{sid}']")
    page.wait_for_timeout(1200)  # 4 polls at refresh_s = 0.3
    assert page.locator("#priors-notice").is_hidden()
    # someone labels elsewhere: the notice offers a Recompute, without redrawing the grid by itself
    other = page.locator(".tile.prior:not(.done)").nth(0).get_attribute("data-id")
    assert other and other != sid
    client.submit_labels(wa.stub, [(other, "circle")], "erin")
    page.locator("#priors-notice").wait_for(state="visible")
    assert "New priors: labels changed (1)" in page.inner_text("#priors-notice")
    assert page.locator(f".tile.done.accepted[data-id='{sid}']").count() == 1  # not redrawn
    page.click("#priors-notice-recompute")
    page.locator("#priors-notice").wait_for(state="hidden")
    page.wait_for_selector(".tile.prior")
    assert page.locator(f".tile.prior[data-id='{other}']").count() == 0  # labelled: off the page
    page.wait_for_timeout(900)
    assert page.locator("#priors-notice").is_hidden()


def test_a_finger_lassos_boxes_and_pinches_on_the_map(live_map: WebAgent, browser: Any) -> None:
    """Touch (real touch events through CDP) on a landscape tablet: a finger's lasso selects the points it
    encloses, the Box tool too, and two fingers pinch to zoom without selecting anything."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto(f"{live_map.url}/map")
    wait_map_ready(page)
    cdp = context.new_cdp_session(page)
    page.evaluate("() => window.scrollTo(0, 0)")
    box = page.locator("canvas#map").bounding_box()

    def touch(kind: str, *points: tuple[float, float]) -> None:
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [
            {"x": box["x"] + x, "y": box["y"] + y, "id": k} for k, (x, y) in enumerate(points)]})

    pts = page.evaluate("""() => { const p = window.ShortlistMap.points(), v = window.ShortlistMap.view();
        return p.ids.map((id, i) => ({x: p.x[i] * v.sx + v.tx, y: p.y[i] * v.sy + v.ty})); }""")
    x0, x1 = min(p["x"] for p in pts) - 15, max(p["x"] for p in pts) + 15
    y0, y1 = min(p["y"] for p in pts) - 15, max(p["y"] for p in pts) + 15
    poly = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    touch("touchStart", poly[0])
    for a, b in zip(poly, poly[1:] + poly[:1], strict=True):
        for t in (0.25, 0.5, 0.75, 1.0):
            touch("touchMove", (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])))
    touch("touchEnd")
    page.wait_for_timeout(200)
    n = len(page.evaluate("() => window.ShortlistMap.selectedIds()"))
    assert n > 0 and page.locator("#to-queue").is_enabled()
    page.locator("#clear-sel").tap()
    page.locator("[data-tool=box]").tap()
    assert page.locator("[data-tool=box]").get_attribute("aria-pressed") == "true"
    touch("touchStart", (x0, y0))
    touch("touchMove", ((x0 + x1) / 2, (y0 + y1) / 2))
    touch("touchMove", (x1, y1))
    touch("touchEnd")
    page.wait_for_timeout(200)
    assert len(page.evaluate("() => window.ShortlistMap.selectedIds()")) == n
    # a click, not a tap: headless Chromium sometimes makes no click of a CDP tap right after a touch drag (seen
    # on a busy CI machine), which is the harness, not the page; what follows tests the pinch alone
    page.locator("#clear-sel").click()
    page.wait_for_function("() => window.ShortlistMap.selectedIds().length === 0")
    before = page.evaluate("() => window.ShortlistMap.view().sx")
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    touch("touchStart", (cx - 20, cy), (cx + 20, cy))
    for d in (40, 60, 80):
        touch("touchMove", (cx - d, cy), (cx + d, cy))
    touch("touchEnd")
    page.wait_for_timeout(200)
    assert page.evaluate("() => window.ShortlistMap.view().sx") > before * 1.5
    assert page.evaluate("() => window.ShortlistMap.selectedIds()") == []
    assert page.get_by_role("img", name="map of the pool").count() == 1
    context.close()


def test_priors_class_tabs_and_focus_ring_by_keyboard(live_web: WebAgent, page: Any) -> None:
    """The class tabs are one Tab stop: ← → move between them (not the page), Enter shows one and the focus
    stays on it; a keyboard-focused control has a ring of the accent colour (a checkbox too)."""
    label_triangles(live_web, [2, 5])
    page.goto(f"{live_web.url}/priors?method=knn")
    page.wait_for_selector(".tile.prior")
    tabs = page.locator(".class-tabs .tab")
    assert [t.get_attribute("tabindex") for t in tabs.all()].count("0") == 1
    assert tabs.first.get_attribute("aria-controls") == "grid"
    tabs.first.focus()
    page.keyboard.press("ArrowRight")
    second = str(tabs.nth(1).get_attribute("data-label"))
    assert page.evaluate("() => document.activeElement.dataset.label") == second
    page.keyboard.press("Enter")
    page.wait_for_selector(f".class-tabs .tab.active[data-label='{second}']")
    assert page.evaluate("() => document.activeElement.dataset.label") == second
    assert "page=1" in page.url
    page.goto(f"{live_web.url}/progress")
    box = page.locator("input[type=checkbox]").first
    box.focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")  # reached by the keyboard: :focus-visible
    assert page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle") == "solid"
    assert page.evaluate("() => getComputedStyle(document.activeElement).outlineColor") == "rgb(47, 111, 237)"


@pytest.mark.parametrize("width,height", [(1280, 800), (390, 844)])
def test_priors_tiles_show_their_controls_whole(live_web: WebAgent, browser: Any, width: int, height: int) -> None:
    """Each Review priors tile holds its name, confidence, Accept, correction box and Save: at 1280 and 390 px
    Save ended 6 px past its tile ("Sav") and the confidence lost its "%"."""
    names = [f"triangle/triangle_{130 + i}.jpg" for i in range(6)]  # a folder in the id, as the labeller's
    reply = client.ingest(live_web.stub, [client.image_sample(n, shape_image(2 + 3 * i)) for i, n in enumerate(names)])
    assert reply.accepted == len(names)
    with device_page(browser, width, height, touch=width < 600) as pg:
        pg.goto(f"{live_web.url}/priors?method=knn")
        pg.wait_for_selector(".tile.prior")
        out = pg.evaluate("""() => [...document.querySelectorAll('.tile.prior')].flatMap((t) => {
            const b = t.getBoundingClientRect();
            return [...t.querySelectorAll('.sid, .conf, .actions > *')].filter((e) => {
                const r = e.getBoundingClientRect();
                return r.left < b.left - 0.5 || r.right > b.right + 0.5 || e.scrollWidth > e.clientWidth + 0.5;
            }).map((e) => `${t.dataset.id}: ${e.className || e.tagName} ${e.textContent.trim().slice(0, 20)}`);
        })""")
        assert out == []
