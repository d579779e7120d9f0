"""Browser test (Playwright driving Debian's chromium) of the Progress page's export: the "Download zip"
button in a real browser gives a zip whose labels.csv, priors.csv and ImageFolder tree read back (through
agent/exports.py's readers) to exactly what gRPC says the labels are."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest

from agent import client, exports
from tests.agent.web.conftest import WebAgent
from tests.agent.web.test_progress import label_some

pytestmark = pytest.mark.browser


def test_export_download_from_the_progress_page(live_web: WebAgent, page: Any, tmp_path: Path) -> None:
    label_some(live_web)
    page.goto(f"{live_web.url}/progress")
    page.wait_for_selector("#export-button")
    page.uncheck("#export-form input[name=format][value=fiftyone]")
    with page.expect_download() as info:
        page.click("#export-button")
    download = info.value
    assert download.suggested_filename == "shortlist-export.zip"
    zipped = tmp_path / download.suggested_filename
    download.save_as(zipped)
    with zipfile.ZipFile(zipped) as z:
        z.extractall(tmp_path)
    out = tmp_path / "shortlist-export"
    assert not (out / "fiftyone").exists()  # the unticked format is left out
    current = {r.id: r.label for r in client.list_labels(live_web.stub)}
    assert {r["id"]: r["label"] for r in exports.read_csv_rows(out / "labels.csv")} == current
    assert {r["id"]: r["label"] for r in exports.read_jsonl_rows(out / "labels.jsonl")} == current
    priors = exports.read_csv_rows(out / "priors.csv")  # knn priors for every unlabelled sample
    assert priors and {r["id"] for r in priors}.isdisjoint(current)
    tree = out / "imagefolder"
    files = exports.read_ids(tree)  # CLASS/FILE -> id: the class folder is the label
    assert {sid: Path(f).parts[0] for f, sid in files.items()} == current
    assert all((tree / f).is_file() for f in files)


def test_progress_page_notices_new_labels_and_asks_before_replacing_an_open_queue(
        live_web_fast: WebAgent, page: Any) -> None:
    from shortlist.v1 import agent_pb2

    wa = live_web_fast
    ids = ["img010.png", "img011.png"]
    queue = agent_pb2.Queue(ids=ids, source="map")
    wa.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name=wa.config.queue, queue=queue))
    page.goto(f"{wa.url}/progress")
    page.wait_for_selector("#annotators")
    assert page.locator("#progress-notice").is_hidden()
    client.submit_labels(wa.stub, [("img013.png", "circle")], "erin")
    page.locator("#progress-notice").wait_for(state="visible")
    assert "labelled" in page.inner_text("#progress-notice")
    page.click("#progress-reload")
    page.wait_for_selector("tr[data-annotator='erin']")
    # the audit button asks first: the queue has 2 open samples; dismissed, the queue stays
    dialogs: list[str] = []

    def answer(d: Any, accept: bool) -> None:
        dialogs.append(d.message)
        d.accept() if accept else d.dismiss()

    page.once("dialog", lambda d: answer(d, False))
    page.fill("#audit-form input[name=budget]", "3")
    page.click("#audit-button")
    page.wait_for_function("() => !document.getElementById('audit-button').disabled")
    assert dialogs and "2 of 2 samples unlabelled" in dialogs[0]
    assert list(wa.stub.GetQueue(agent_pb2.GetQueueRequest(name=wa.config.queue)).ids) == ids
    # someone replaces the queue while the confirmation is open: the draw is a 409, their queue stays
    other = agent_pb2.Queue(ids=["img020.png"], source="map")

    def replaced_meanwhile(d: Any) -> None:
        wa.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name=wa.config.queue, queue=other))
        answer(d, True)

    page.once("dialog", replaced_meanwhile)
    page.click("#audit-button")
    page.locator("#audit-replaced").wait_for(state="visible")
    assert "replaced meanwhile by a map selection" in page.inner_text("#toast")
    assert list(wa.stub.GetQueue(agent_pb2.GetQueueRequest(name=wa.config.queue)).ids) == ["img020.png"]
    page.wait_for_function("() => !document.getElementById('audit-button').disabled")
    page.once("dialog", lambda d: answer(d, True))
    page.click("#audit-button")
    page.wait_for_url("**/queue")
    assert len(dialogs) == 3 and "1 of 1 samples unlabelled" in dialogs[2]


def test_charts_read_as_their_figures_in_words_to_a_screen_reader(live_web: WebAgent, page: Any) -> None:
    """The three charts are matplotlib SVGs: the accessibility tree had their tick labels and legend as loose
    words ("0", "2", "alice (labels given)", ...) and no summary. Each is now hidden from it, with a visually
    hidden paragraph of its figures in words after it."""
    label_some(live_web)
    page.goto(f"{live_web.url}/progress")
    page.wait_for_selector("#chart-classes svg")
    tree = page.locator("main").aria_snapshot()
    assert "alice (labels given)" not in tree and "labels (current)" not in tree  # the SVGs' legend and axis
    for chart in ("timeline", "class-timeline", "classes"):
        text = page.locator(f"#chart-{chart}-text")
        said = text.inner_text()
        assert said and said in tree, (chart, said)
        box = text.bounding_box()
        assert box is not None and box["width"] <= 1 and box["height"] <= 1  # not shown on screen
    assert "Class balance, current labels per class: square 4 (50%), circle 3 (38%), triangle 1 (12%)." in tree
    assert "Labels given per annotator: ingest 4, alice 3, bob 2." in tree


def test_annotators_table_fits_its_panel_at_1280_and_scrolls_in_it_on_a_phone(live_web: WebAgent, page: Any) -> None:
    """At 1280 px the Annotators table fits its panel (its first and last columns were cut at the panel's
    edge, to be scrolled to), with an e-mail address for a name and three sources; on a phone (375 px) it
    scrolls inside its panel (a named Tab stop), never the page."""
    label_some(live_web)
    who = "maria.gonzalez@example.org"
    for i, source in ((10, ""), (11, "prior:knn"), (12, "labelstudio")):
        client.submit_labels(live_web.stub, [(f"img{i:03d}.png", "circle")], annotator=who, source=source)
    measure = """() => { const t = document.getElementById('annotators'), panel = t.closest('section');
        const cut = (el) => { const a = el.getBoundingClientRect(), b = panel.getBoundingClientRect();
                              return a.left < b.left || a.right > b.right; };
        return { table: t.scrollWidth, panel: panel.clientWidth, panelScroll: panel.scrollWidth,
                 page: document.documentElement.scrollWidth, viewport: window.innerWidth,
                 cut: [...t.querySelectorAll('tr > :first-child, tr > :last-child')].filter(cut).length,
                 tabStop: panel.tabIndex, name: panel.getAttribute('aria-labelledby') }; }"""
    for width in (1280, 375):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(f"{live_web.url}/progress")
        page.wait_for_selector(f"tr[data-annotator='{who}']")
        m = page.evaluate(measure)
        assert m["page"] <= m["viewport"], (width, m)  # the page never scrolls sideways
        if width == 1280:
            assert m["table"] <= m["panel"] and m["panelScroll"] <= m["panel"], m  # nothing to scroll to
            assert m["cut"] == 0, m  # first and last columns inside the panel
        else:
            assert m["panelScroll"] > m["panel"] and m["tabStop"] == 0 and m["name"] == "annotators-h", m


def test_time_charts_are_readable_on_a_phone(live_web: WebAgent, page: Any) -> None:
    """At 390 px the time charts were shrunk to the panel: their text 4 px tall, the legend's annotator names
    unreadable. They keep a readable width (text at least 6 px) and scroll in their panel, never the page."""
    label_some(live_web)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_web.url}/progress")
    page.wait_for_selector("#chart-timeline svg text")
    m = page.evaluate("""() => {
        const texts = [...document.querySelectorAll('#chart-timeline svg text, #chart-class-timeline svg text')]
            .map((t) => t.getBoundingClientRect().height).filter((h) => h > 0);
        const panel = document.getElementById('chart-timeline').closest('section');
        return { smallest: Math.min(...texts), n: texts.length, page: document.documentElement.scrollWidth,
                 panel: panel.clientWidth, panelScroll: panel.scrollWidth, tabStop: panel.tabIndex }; }""")
    assert m["n"] > 0 and m["smallest"] >= 6, m
    assert m["page"] <= 390 and m["panelScroll"] > m["panel"] and m["tabStop"] == 0, m
