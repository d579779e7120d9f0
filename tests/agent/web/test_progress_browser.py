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
