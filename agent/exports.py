"""Exports of an agent's labels and priors (``shortlist export-labels`` and the app's Progress page).

What one export folder holds (each part optional, see ``FORMATS``)::

    OUT/labels.csv, labels.jsonl   one row per labelled sample (or per label given, with history):
                                   id, label, annotator, time (ISO 8601, UTC), source, model_version, audit
    OUT/samples.csv, samples.jsonl one row per labelled sample: id, uri and its metadata as given at ingest
                                   (CSV: a column per metadata key, the keys of every row, "" where a
                                   sample has none; a key named id or uri, or starting "metadata.", is
                                   written with "metadata." before it; JSONL: {"id", "uri", "metadata":
                                   {...}}), to join on id
    OUT/priors.csv, priors.jsonl   one row per unlabelled sample: id, label (the prior's top class),
                                   confidence, method, model_version (+ probs, class -> probability, in JSONL)
    OUT/priors.meta.json           with the priors: how their confidences were calibrated
                                   {"method", "model_version", "priors": N, "calibration": {"source",
                                   "held_out", "temperature", "audit_labels", "left_out", "warning"} or null}
                                   (PriorLabel.calibration; docs/agent.md "Calibration provenance")
    OUT/imagefolder/CLASS/NAME.EXT the labelled images, one folder per class (``class_folders``: a name
                                   Windows cannot create is made safe; ids.csv has the exact class): what torchvision's
                                   ImageFolder and ``shortlist finetune --data`` read; ids.csv maps
                                   each file back to its sample id; a payload torchvision would read
                                   otherwise than Shortlist decodes it is a PNG of that decode
                                   (``image_file``, also for FiftyOne's files)
    OUT/fiftyone/data/NAME.EXT     FiftyOne's FiftyOneImageClassificationDataset: labels.json is
    OUT/fiftyone/labels.json       {"classes": [...], "labels": {NAME: class index}} (NAME = file stem)
    OUT/problems.csv               only when some are: id, label, problem of each labelled sample whose
                                   image is left out of imagefolder/fiftyone (its stored payload cannot be read)

Every part comes from one read of the labels (``export_labels``), so they agree with each other while labelling
goes on. The folders are 0700 and the files 0600 (``ExportConfig.owner_only``), as in the data folder.

``labels.csv`` is also what ``shortlist label`` reads (columns id,label), so labels move between agents.
CSV cells are written with ``csv_escape`` (a cell a spreadsheet would run as a formula starts with ``'``) and
every reader of them here, in agent/cli.py, agent/labels_csv.py and agent/meta_csv.py undoes it with
``csv_unescape``.
Every format has its reader here (``read_*``), and tests/agent/test_exports.py round-trips each one.
Everything comes from the agent over gRPC (ListLabels, PriorLabels, ListSamples): nothing else is read.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from agent.client import calibration_dict, first_calibration
from agent.errors import quoted
from agent.limits import folder_name_problem
from shortlist.atomic import fsync_path, fsync_tree
from shortlist.images import decode_image, encode_png, open_image, tensor_pixels
from shortlist.v1 import agent_pb2, agent_pb2_grpc

FORMATS = ("csv", "jsonl", "imagefolder", "fiftyone")
IMAGE_FORMATS = ("imagefolder", "fiftyone")
LABEL_FIELDS = ["id", "label", "annotator", "time", "source", "model_version", "audit"]
PRIOR_FIELDS = ["id", "label", "confidence", "method", "model_version"]
PRIORS_META = "priors.meta.json"  # the priors' provenance (calibration), next to priors.csv / priors.jsonl
IDS_FILE = "ids.csv"  # in imagefolder/ and fiftyone/: file (relative path), id, label
PROBLEMS_FILE = "problems.csv"  # labelled samples whose images are left out: id, label, problem
PROBLEM_FIELDS = ["id", "label", "problem"]
# Pillow format -> file extension torchvision's ImageFolder accepts (its IMG_EXTENSIONS: .jpg .jpeg .png .ppm
# .bmp .pgm .tif .tiff .webp); a payload of any other format is re-encoded as PNG (``image_file``).
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif", "PPM": ".ppm"}
# Extensions dropped from a sample id to make its file stem (``file_stem``)
ID_SUFFIXES = frozenset({*EXTENSIONS.values(), ".jpeg", ".tiff", ".gif"})
MAX_STEM = 120  # a class folder's characters; a file stem's UTF-8 bytes (with a hash and extension < 255 bytes)


class ExportError(ValueError):
    """An export that cannot be written as asked (nothing is left behind); the message says what to do."""


@dataclass(frozen=True)
class ExportConfig:
    """What ``export_labels`` writes: ``formats`` (a subset of FORMATS), the priors of ``prior_method``
    for the unlabelled samples ("" = none), every label ever given (``history``) or only the current ones."""

    formats: tuple[str, ...] = FORMATS
    prior_method: str = "knn"
    history: bool = False
    # folders 0700 and files 0600, as the data folder's (an export holds its images and metadata); False: as
    # the umask makes them (e.g. readable by a group)
    owner_only: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown or not self.formats:
            raise ExportError(f"unknown export format(s) {unknown}; valid: {', '.join(FORMATS)}")


@dataclass
class ExportSummary:
    labels: int = 0
    priors: int = 0
    images: int = 0
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # labelled samples whose images are not in the export (their payload cannot be read; problems.csv says why)
    left_out: list[str] = field(default_factory=list)
    # PriorLabel.calibration of the exported priors as JSON (agent.client.calibration_dict); None when no
    # priors were exported or the agent sent none
    calibration: dict[str, object] | None = None


# ---- rows ------------------------------------------------------------------------------------------
def iso_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")


def unix_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# Spreadsheet formula ("CSV") injection, OWASP's rule: Excel and LibreOffice run a cell starting with one of
# these as a formula (=HYPERLINK(...) can send other cells away), and names and ids are chosen by users.
FORMULA_START = frozenset("=+-@\t\r")
_ESCAPED = FORMULA_START | {"'"}


def csv_escape(value: str) -> str:
    """``value`` as a CSV cell no spreadsheet runs as a formula: a ``'`` before a first character in
    FORMULA_START (OWASP's rule; a spreadsheet shows the text). A value that starts with ``'`` gets one
    too, so the escaping can be undone exactly (``csv_unescape``): every string round-trips."""
    return f"'{value}" if value and value[0] in _ESCAPED else value


def csv_unescape(cell: str) -> str:
    """The value ``csv_escape`` wrote as ``cell``: one leading ``'`` dropped when a character of
    FORMULA_START or another ``'`` follows it (only csv_escape writes those); any other cell as it is, so a
    hand-made CSV reads as before unless a cell starts with ``'=``, ``'+``, ``'-``, ``'@`` or ``''``."""
    return cell[1:] if len(cell) >= 2 and cell[0] == "'" and cell[1] in _ESCAPED else cell


def _csv_cell(v: Any) -> Any:
    if isinstance(v, bool):
        return str(v).lower()
    return csv_escape(v) if isinstance(v, str) else v


def label_row(r: agent_pb2.LabelRecord, history: bool = False) -> dict[str, Any]:
    """A labels.csv / labels.jsonl row; with ``history`` also ``retracted`` (a retraction's label is "")."""
    row: dict[str, Any] = {"id": r.id, "label": r.label, "annotator": r.annotator, "time": iso_time(r.time),
                           "source": r.source, "model_version": r.model_version, "audit": r.audit}
    if history:
        row["retracted"] = r.retracted
    return row


def prior_row(p: agent_pb2.PriorLabel, method: str) -> dict[str, Any]:
    return {"id": p.id, "label": p.label, "confidence": round(float(p.confidence), 6), "method": method,
            "model_version": p.model_version, "probs": {k: round(float(v), 6) for k, v in sorted(p.probs.items())}}


SAMPLE_FIELDS = ["id", "uri"]


def write_samples(samples: Iterable[agent_pb2.Sample], csv_path: Path | None, jsonl_path: Path | None) -> int:
    """samples.csv / samples.jsonl (module docstring) from ListSamples' samples (without payloads); the count.
    The CSV's columns are the union of the metadata keys, so the rows are read once and kept (metadata only)."""
    kept = [(s.id, s.uri, dict(sorted(s.metadata.items()))) for s in samples]
    keys = sorted({k for _, _, meta in kept for k in meta})
    # id/uri, and any key starting "metadata.", get the prefix: one column per key, none shadowing another
    column = {k: f"metadata.{k}" if k in SAMPLE_FIELDS or k.startswith("metadata.") else k for k in keys}
    rows = [{"id": i, "uri": uri, "metadata": meta} for i, uri, meta in kept]
    flat = ({"id": i, "uri": uri, **{column[k]: v for k, v in meta.items()}} for i, uri, meta in kept)
    if csv_path is not None:
        write_rows(flat, [*SAMPLE_FIELDS, *column.values()], csv_path, None)
    if jsonl_path is not None:
        write_rows(rows, [], None, jsonl_path)
    return len(rows)


def write_rows(rows: Iterable[dict[str, Any]], fields: list[str], csv_path: Path | None,
               jsonl_path: Path | None) -> int:
    """Write ``rows`` to a CSV (``fields`` only) and/or a JSON Lines file (every key); returns the count."""
    with RowWriter(fields, csv_path, jsonl_path) as writer:
        for row in rows:
            writer.write(row)
    return writer.count


class RowWriter:
    """A CSV (``fields`` only; its header written on entering) and/or a JSON Lines file (every key) written
    one row at a time, for a caller that reads a stream once and keeps something of each row; ``count``:
    the rows written."""

    def __init__(self, fields: list[str], csv_path: Path | None, jsonl_path: Path | None) -> None:
        self.fields, self.csv_path, self.jsonl_path = fields, csv_path, jsonl_path
        self.count = 0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> RowWriter:
        with contextlib.ExitStack() as stack:  # a second open that fails closes the first
            cf = stack.enter_context(open(self.csv_path or os.devnull, "w", newline="", encoding="utf-8"))
            self._jf = stack.enter_context(open(self.jsonl_path or os.devnull, "w", encoding="utf-8"))
            self._stack = stack.pop_all()
        self._writer = csv.DictWriter(cf, fieldnames=self.fields, extrasaction="ignore")
        if self.csv_path is not None:
            self._writer.writeheader()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def write(self, row: dict[str, Any]) -> None:
        if self.csv_path is not None:
            self._writer.writerow({k: _csv_cell(v) for k, v in row.items()})
        if self.jsonl_path is not None:
            self._jf.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.count += 1


def write_priors_meta(path: Path, method: str, rows: Sequence[agent_pb2.PriorLabel], count: int) -> dict[str, Any]:
    """Write ``priors.meta.json``: the method, model version, number of priors and the reply's calibration
    (``rows``: the first rows of the PriorLabels stream, which carry it); returns what was written."""
    cal = first_calibration(rows)
    meta = {"method": method, "model_version": rows[0].model_version if rows else "", "priors": count,
            "calibration": None if cal is None else calibration_dict(cal)}
    path.write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return meta


def read_priors_meta(path: Path) -> dict[str, Any]:
    """An exported ``priors.meta.json`` (``path``: the file or the export folder)."""
    if path.is_dir():
        path = path / PRIORS_META
    meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return meta


def read_csv_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an exported labels.csv / priors.csv with their types back (time as Unix seconds)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [_typed({k: csv_unescape(v) for k, v in r.items()}) for r in csv.DictReader(f)]


def read_jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an exported labels.jsonl / priors.jsonl (time as Unix seconds)."""
    with open(path, encoding="utf-8") as f:
        return [_typed(json.loads(line)) for line in f if line.strip()]


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    if "time" in row:
        row["time"] = unix_time(str(row["time"]))
    for flag in ("audit", "retracted"):
        if isinstance(row.get(flag), str):
            row[flag] = row[flag] == "true"
    if isinstance(row.get("confidence"), str):
        row["confidence"] = float(row["confidence"])
    return row


# ---- images ----------------------------------------------------------------------------------------
def image_file(sample: agent_pb2.Sample) -> tuple[bytes, str]:
    """(file bytes, extension) of a sample's payload, for the ImageFolder and FiftyOne exports: the stored
    bytes when torchvision's default loader reads them as the pixels Shortlist decodes (``keeps_pixels``),
    else a PNG of Shortlist's own decode (``shortlist.images.decode_image``: upright, 8-bit, transparency on
    its background), as for raw tensors."""
    if sample.WhichOneof("payload") == "tensor":
        t = sample.tensor
        return encode_png(tensor_pixels(t.dtype, tuple(int(d) for d in t.shape), t.data)), ".png"
    data = sample.encoded_image
    ext = keeps_pixels(data)
    if ext:
        return data, ext
    return encode_png(decode_image(data)), ".png"


# Modes whose ``Image.convert("RGB")`` (torchvision's loader) is what shortlist.images' decode gives; the
# others (16-bit, float, alpha, ...) are scaled or composited there.
_SAME_MODES = frozenset({"RGB", "L", "P", "1", "CMYK", "YCbCr"})


def keeps_pixels(data: bytes) -> str:
    """The extension to keep encoded image ``data`` under, "" when it must be re-encoded: torchvision's
    ImageFolder opens a file with PIL and ``convert("RGB")``, and only under an extension of its
    IMG_EXTENSIONS; that gives Shortlist's pixels only for a format in EXTENSIONS (not GIF, AVIF, MPO,
    ICO, TGA, JPEG 2000, ...) with no EXIF rotation, no transparency, and a mode ``convert`` maps alike
    (not 16-bit, float or alpha; CMYK without an ICC profile). The header alone decides: nothing is
    decoded."""
    try:
        with open_image(io.BytesIO(data)) as im:  # the raster formats only: never EPS (Ghostscript)
            if im.format not in EXTENSIONS or im.mode not in _SAME_MODES or "transparency" in im.info:
                return ""
            if im.mode == "CMYK" and im.info.get("icc_profile"):
                return ""
            # a PNG's getexif() decodes the image to find an eXIf chunk after the pixels: without any chunk an
            # orientation can come from (EXIF, ImageMagick's raw profile, XMP), there is none to read
            if (im.format != "PNG" or any(m in data for m in _PNG_ORIENTATION_CHUNKS)) and \
                    im.getexif().get(_ORIENTATION, 1) not in (0, 1):
                return ""
            return EXTENSIONS[im.format]
    except (OSError, SyntaxError, ValueError):  # decode_image says what is wrong
        return ""


_ORIENTATION = 0x0112
_PNG_ORIENTATION_CHUNKS = (b"eXIf", b"Raw profile type exif", b"XML:com.adobe.xmp")


def _kept(c: str) -> bool:
    """Whether ``c`` stays in a file stem: a letter, mark or digit of any script (Unicode categories L*, M*,
    N*: ``é``, ``鹿``, Devanagari vowel signs) or ``._-``. Everything else, path separators, what Windows
    refuses, control, format (zero-width, bidirectional) and white space characters among them, is not."""
    return c in "._-" or unicodedata.category(c)[0] in "LMN"


def file_stem(sample_id: str, taken: set[str]) -> str:
    """A file-name stem for ``sample_id``, safe on Windows, macOS and Linux file systems: the id in NFC
    (macOS stores names decomposed: two ids that differ only in Unicode form are one name there), an image
    extension dropped, each run of characters ``_kept`` refuses as one ``_``, cut to MAX_STEM UTF-8 bytes
    (file systems limit a name to 255 bytes, or UTF-16 units), ``._`` stripped from both ends, a Windows
    device name such as ``CON`` prefixed with ``_`` (as ``class_folders`` does), and made unique among ``taken``
    (case-insensitively, for case-insensitive file systems) with a short hash."""
    base = unicodedata.normalize("NFC", sample_id)
    if Path(base).suffix.lower() in ID_SUFFIXES:
        base = base[: -len(Path(base).suffix)]
    safe = "".join("".join(run) if keep else "_" for keep, run in itertools.groupby(base, _kept))
    stem = safe.encode()[:MAX_STEM].decode(errors="ignore").strip("._") or "sample"  # never half a character
    if stem.split(".")[0].upper() in _DEVICE_NAMES:  # CON.png, nul.jpg: a device on Windows, as class folders
        stem = f"_{stem}"
    if stem.casefold() in taken:
        stem = f"{stem}-{hashlib.sha256(sample_id.encode()).hexdigest()[:10]}"
    taken.add(stem.casefold())
    return stem


# What Windows cannot have in a file or folder name (also for a zip extracted there): these characters, control
# characters, a trailing dot or space, and the device names (CON, NUL, COM1, ...; with any extension)
_NOT_ON_WINDOWS = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')
# (Windows reads the superscripts ¹²³ as digits: COM¹ is a device too)
_DEVICE_NAMES = frozenset({"CON", "PRN", "AUX", "NUL",
                           *(f"{d}{i}" for d in ("COM", "LPT") for i in (*range(1, 10), "¹", "²", "³"))})


def _windows_safe(name: str) -> str:
    safe = _NOT_ON_WINDOWS.sub("_", name).rstrip(". ")[:MAX_STEM] or "class"
    return f"_{safe}" if safe.split(".")[0].upper() in _DEVICE_NAMES else safe


def class_folders(classes: Iterable[str]) -> dict[str, str]:
    """class -> its folder in the ImageFolder tree: the name itself when every system can create it, else
    with each character Windows refuses (``<>:"/\\|?*``, control characters) as ``_``, a trailing dot or
    space dropped and a device name (``CON``, ``NUL``, ...) prefixed with ``_``; unique case-insensitively
    (names that are safe as they are keep them; another class that would land on one gets a short hash of
    its name). ids.csv, FiftyOne and the CSV files keep the exact class name."""
    names = list(dict.fromkeys(classes))
    folders = {c: c for c in names if _windows_safe(c) == c}
    for c in names:
        add_class_folder(folders, c)
    return folders


def add_class_folder(folders: dict[str, str], name: str) -> str:
    """The folder of class ``name`` in ``folders`` (``class_folders``' map), added there when it has none yet:
    a folder already given is never changed (its files may be written)."""
    if name not in folders:
        safe = _windows_safe(name)
        if safe.casefold() in {f.casefold() for f in folders.values()}:
            safe = f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"
        folders[name] = safe
    return folders[name]


def check_class_folder(name: str) -> None:
    """An ImageFolder class is a folder name: refuse names that cannot be one (or would be hidden)."""
    if not name or "\0" in name or folder_name_problem(name, "class"):  # a class stored before the agent refused them
        raise ExportError(f"class {quoted(name)} cannot be a folder name, so it cannot be written as an ImageFolder "
                          "tree; export with --format csv,jsonl,fiftyone")


def write_images(samples: Iterable[agent_pb2.Sample], out: Path, formats: tuple[str, ...],
                 classes: list[str], left_out: list[tuple[str, str, str]] | None = None) -> int:
    """Write labelled samples (with payloads) as an ImageFolder tree (out/imagefolder) and/or FiftyOne's
    image classification layout (out/fiftyone); returns the number of images. A sample whose payload the
    agent could not read (ListSamples sent it without one, metadata ``shortlist.payload_error`` saying why)
    or that does not decode is left out and appended to ``left_out`` as (id, label, why); without
    ``left_out`` it is an ExportError."""
    with ImageWriter(out, formats, classes, keep_going=left_out is not None) as writer:
        for s in samples:
            writer.add(s)
    if left_out is not None:
        left_out.extend(writer.left_out)
    return writer.count


class ImageWriter:
    """``write_images`` one sample at a time (``add``): the ImageFolder tree and/or FiftyOne's layout under
    ``out`` for ``formats``, ids.csv beside each, FiftyOne's labels.json written on a clean exit. ``count``:
    the images written; ``left_out``: (id, label, why) of each sample whose payload cannot be read, kept
    when ``keep_going``, else an ExportError."""

    def __init__(self, out: Path, formats: tuple[str, ...], classes: list[str], keep_going: bool) -> None:
        self.tree = out / "imagefolder" if "imagefolder" in formats else None
        self.fo = out / "fiftyone" if "fiftyone" in formats else None
        self.keep_going = keep_going
        self.count = 0
        self.left_out: list[tuple[str, str, str]] = []
        self._taken: set[str] = set()
        self._fo_labels: dict[str, int] = {}
        self._index = {c: i for i, c in enumerate(classes)}
        self._folders = class_folders(classes)
        self._ids_files: list[tuple[Path, Any]] = []  # (folder, csv writer of its ids.csv)
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ImageWriter:
        with contextlib.ExitStack() as stack:  # a later open that fails closes the earlier ones
            for folder in (self.tree, self.fo):
                if folder is not None:
                    folder.mkdir(parents=True)
                    f = stack.enter_context(open(folder / IDS_FILE, "w", newline="", encoding="utf-8"))
                    w = csv.writer(f)
                    w.writerow(["file", "id", "label"])  # rows escaped: ids and class names are users' (csv_escape)
                    self._ids_files.append((folder, w))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._stack.close()
        if exc_type is None and self.fo is not None:
            names = sorted(self._index, key=self._index.__getitem__)
            (self.fo / "labels.json").write_text(json.dumps({"classes": names, "labels": self._fo_labels},
                                                            ensure_ascii=False, indent=1), encoding="utf-8")

    def add(self, s: agent_pb2.Sample) -> None:
        """Write the image of labelled sample ``s`` (with its payload); an unlabelled one is skipped."""
        if not s.label:
            return
        problem = payload_problem(s)
        if problem is None:
            try:
                data, ext = image_file(s)
            except (ValueError, OSError) as e:  # a stored payload that no longer decodes
                problem = f"its payload cannot be decoded ({e})"
        if problem is not None:
            if not self.keep_going:
                raise ExportError(f"sample {quoted(s.id)}: {problem}")
            self.left_out.append((s.id, s.label, problem))
            return
        stem = file_stem(s.id, self._taken)
        folder_name = add_class_folder(self._folders, s.label)  # a label outside GetStatus' classes gets one too
        if self.tree is not None:
            check_class_folder(s.label)
            (self.tree / folder_name).mkdir(exist_ok=True)
            (self.tree / folder_name / f"{stem}{ext}").write_bytes(data)
        if self.fo is not None:
            (self.fo / "data").mkdir(exist_ok=True)
            (self.fo / "data" / f"{stem}{ext}").write_bytes(data)
            self._fo_labels[stem] = self._index.setdefault(s.label, len(self._index))
        for folder, w in self._ids_files:
            rel = f"{folder_name}/{stem}{ext}" if folder == self.tree else f"data/{stem}{ext}"
            w.writerow([csv_escape(rel), csv_escape(s.id), csv_escape(s.label)])
        self.count += 1


def payload_problem(sample: agent_pb2.Sample) -> str | None:
    """Why ListSamples (with payloads) sent ``sample`` without its payload, None when it has one."""
    if sample.WhichOneof("payload") is not None:
        return None
    from agent.ingest import PAYLOAD_ERROR_KEY  # lazily: agent.ingest brings the embedding machinery

    return sample.metadata.get(PAYLOAD_ERROR_KEY) or "the agent sent no payload for it"


def write_left_out(path: Path, left_out: Sequence[tuple[str, str, str]]) -> None:
    """``problems.csv``: id, label, problem of each labelled sample whose image is not in the export."""
    write_rows(({"id": i, "label": lab, "problem": why} for i, lab, why in left_out), PROBLEM_FIELDS, path, None)


def left_out_note(left_out: Sequence[tuple[str, str, str]], parts: str) -> str:
    """The note (CLI, web app) on samples whose images ``write_images`` left out, and how to repair them."""
    sid, _, why = left_out[0]
    return (f"{len(left_out)} labelled sample(s) left out of {parts}, their stored payload cannot be read (e.g. "
            f"{quoted(sid)}: {why}); they are listed in {PROBLEMS_FILE} and are in the label and sample files. Repair: "
            "ingest the same images again under the same ids (shortlist ingest; counted as duplicates, their "
            "labels kept), or restore the data folder from a backup, then export again")


def read_ids(folder: Path) -> dict[str, str]:
    """file (relative to ``folder``) -> sample id, from an exported image tree's ids.csv."""
    with open(folder / IDS_FILE, newline="", encoding="utf-8") as f:
        return {csv_unescape(r["file"]): csv_unescape(r["id"]) for r in csv.DictReader(f)}


def read_fiftyone_classification(folder: Path) -> dict[str, str]:
    """FiftyOneImageClassificationDataset at ``folder`` -> {data/FILE: class name}: labels.json maps each
    file stem in data/ to an index into ``classes`` (or to the class name itself when there is no
    ``classes``); ``None`` (unlabelled) is left out."""
    doc = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    classes = doc.get("classes")
    files = {p.stem: p.name for p in (folder / "data").iterdir() if p.is_file()}
    out: dict[str, str] = {}
    for stem, target in doc["labels"].items():
        if target is None:
            continue
        out[f"data/{files[stem]}"] = classes[target] if classes else str(target)
    return out


# ---- the whole export ------------------------------------------------------------------------------
Metadata = Sequence[tuple[str, str]]


def _fetch_priors(stub: agent_pb2_grpc.AgentStub, method: str,
                  metadata: Metadata) -> tuple[Iterator[agent_pb2.PriorLabel] | None, str | None]:
    """(the streamed priors, None), or (None, a note) when the agent cannot give any yet (no model, no
    labels): its first row is read here, so that refusal comes before the labels are read."""
    stream = stub.PriorLabels(agent_pb2.PriorLabelsRequest(method=method), metadata=metadata)
    try:
        first = next(iter(stream), None)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
            return None, f"no priors exported: {e.details()}"
        raise
    return (iter(()) if first is None else itertools.chain([first], stream)), None


SAMPLES_PER_REQUEST = 10_000  # ids a ListSamples asks for: well below the agent's --max-ids-per-request (100,000)


def _samples_of(stub: agent_pb2_grpc.AgentStub, ids: Sequence[str], payload: bool, metadata: Metadata,
                gone: list[str]) -> Iterator[agent_pb2.Sample]:
    """ListSamples of ``ids``, in their order, SAMPLES_PER_REQUEST at a time; an id deleted since the labels
    were read (the request is NOT_FOUND) is appended to ``gone`` and left out."""
    for start in range(0, len(ids), SAMPLES_PER_REQUEST):
        yield from _listed(stub, list(ids[start:start + SAMPLES_PER_REQUEST]), payload, metadata, gone)


def _listed(stub: agent_pb2_grpc.AgentStub, ids: list[str], payload: bool, metadata: Metadata,
            gone: list[str]) -> Iterator[agent_pb2.Sample]:
    stream = iter(stub.ListSamples(agent_pb2.ListSamplesRequest(ids=ids, include_payload=payload),
                                   metadata=metadata))
    try:  # the agent checks every id before it sends the first sample
        first = next(stream, None)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        if len(ids) == 1:
            gone.append(ids[0])
            return
        half = len(ids) // 2  # halves until the deleted ids are alone: a few requests per deleted sample
        yield from _listed(stub, ids[:half], payload, metadata, gone)
        yield from _listed(stub, ids[half:], payload, metadata, gone)
        return
    if first is not None:
        yield first
        yield from stream


def owner_only(folder: Path) -> None:
    """Make ``folder`` and everything in it readable by its owner only (agent.security OWNER_DIR / OWNER_FILE),
    as the data folder and backups are: an export holds the same images and metadata."""
    from agent.security import OWNER_DIR, OWNER_FILE

    folder.chmod(OWNER_DIR)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), OWNER_DIR)
        for f in files:
            os.chmod(os.path.join(root, f), OWNER_FILE)


def export_labels(stub: agent_pb2_grpc.AgentStub, out: Path, config: ExportConfig,
                  metadata: Metadata = ()) -> ExportSummary:
    """Write the export into ``out`` (which must not exist or be empty): into a sibling folder first,
    renamed into place once complete, so a failed export leaves nothing half-written. ``metadata`` goes
    with every call (the web app forwards its caller's token).

    One snapshot: the labels are read once (one ListLabels, the labels stored when it starts), and labels.csv,
    samples.csv and the images all come from that read (ListSamples is asked for those ids, and its own
    labels, a later snapshot, are not used), so labelling meanwhile cannot make the parts disagree. A sample
    deleted meanwhile is in the label files only (a note says so); priors of samples labelled in the snapshot
    are left out. Labelled samples whose payload cannot be read are left out of the images, listed in
    problems.csv and noted. With ``config.owner_only`` every folder is 0700 and every file 0600."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not an empty folder; choose a new folder (or remove it)")
    part = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(mode=0o700 if config.owner_only else 0o777, parents=True)  # nobody else enters while it is written
    try:
        summary = _write_parts(stub, part, config, metadata)
        _publish(part, out, config.owner_only)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return summary


def _paths(part: Path, name: str, formats: tuple[str, ...]) -> tuple[Path | None, Path | None]:
    """``part``/NAME.csv and ``part``/NAME.jsonl, each None when ``formats`` leaves it out."""
    return (part / f"{name}.csv" if "csv" in formats else None,
            part / f"{name}.jsonl" if "jsonl" in formats else None)


def _write_parts(stub: agent_pb2_grpc.AgentStub, part: Path, config: ExportConfig,
                 metadata: Metadata) -> ExportSummary:
    """Every part of the export into the folder ``part``, in the order of ``export_labels``' calls: the
    priors' first row (a refusal is a note), the labels (the snapshot), the samples and images, the priors."""
    fmt = config.formats
    want_rows = "csv" in fmt or "jsonl" in fmt
    priors, note = _fetch_priors(stub, config.prior_method, metadata) if config.prior_method and want_rows \
        else (None, None)
    summary = ExportSummary(notes=[note] if note else [])
    history = config.history and want_rows
    records = stub.ListLabels(agent_pb2.ListLabelsRequest(history=history), metadata=metadata)
    current, summary.labels = _write_label_files(records, part, fmt, history)
    images = _write_image_files(stub, part, fmt, current, metadata)
    summary.images, summary.left_out = images.count, [i for i, _, _ in images.left_out]
    summary.notes += images.notes()
    if want_rows:
        write_samples(images.rows, *_paths(part, "samples", fmt))
    if priors is not None:
        summary.priors, summary.calibration = _write_priors(priors, part, fmt, config.prior_method, current)
        if summary.calibration and summary.calibration["warning"]:
            summary.notes.append(f"priors: {summary.calibration['warning']}")
    summary.files = sorted(str(p.relative_to(part)) for p in part.iterdir())
    return summary


def _write_label_files(records: Iterable[agent_pb2.LabelRecord], part: Path, formats: tuple[str, ...],
                       history: bool) -> tuple[dict[str, str], int]:
    """labels.csv / labels.jsonl (those of ``formats``; with ``history`` every label given) from one read of
    ``records`` (ListLabels); returns the snapshot (id -> current label, in ListLabels' order) and the rows
    written (0 when ``formats`` has neither file: the records are still read for the snapshot)."""
    current: dict[str, str] = {}
    fields = [*LABEL_FIELDS, "retracted"] if history else LABEL_FIELDS
    csv_path, jsonl_path = _paths(part, "labels", formats)
    want_rows = csv_path is not None or jsonl_path is not None
    with RowWriter(fields, csv_path, jsonl_path) as writer:
        for r in records:
            if r.current and not r.retracted:
                current[r.id] = r.label
            if want_rows:
                writer.write(label_row(r, history))
    return current, writer.count


@dataclass(frozen=True)
class _ImagesPart:
    """What ``_write_image_files`` read and wrote: ``count`` images, ``left_out`` (id, label, why) of those
    whose payload cannot be read, the ids ``gone`` (deleted since the labels were read) and the ``rows`` of
    samples.csv (id, uri and metadata of each labelled sample ListSamples sent)."""

    count: int
    left_out: list[tuple[str, str, str]]
    gone: list[str]
    rows: list[agent_pb2.Sample]
    formats: str  # the image formats written ("imagefolder and fiftyone"), for the note on ``left_out``

    def notes(self) -> list[str]:
        """The summary's notes on the samples left out of the images, then on those deleted meanwhile."""
        notes = [left_out_note(self.left_out, self.formats)] if self.left_out else []
        if self.gone:
            notes.append(f"{len(self.gone)} sample(s) deleted while exporting (e.g. {quoted(self.gone[0])}) are in "
                         "the label files only")
        return notes


def _write_image_files(stub: agent_pb2_grpc.AgentStub, part: Path, formats: tuple[str, ...],
                       current: dict[str, str], metadata: Metadata) -> _ImagesPart:
    """The images of the labelled samples ``current`` (id -> label in the snapshot) for the image formats of
    ``formats``, and problems.csv when some are left out, from one ListSamples read of those ids (with
    payloads only when an image format is asked for), which also gives samples.csv its rows."""
    from agent.ingest import PAYLOAD_ERROR_KEY  # lazily: agent.ingest brings the embedding machinery

    image_formats = [f for f in formats if f in IMAGE_FORMATS]
    want_rows = "csv" in formats or "jsonl" in formats
    classes = list(stub.GetStatus(agent_pb2.GetStatusRequest(), metadata=metadata).classes) if image_formats else []
    gone: list[str] = []
    rows: list[agent_pb2.Sample] = []
    with ImageWriter(part, formats, classes, keep_going=True) as writer:
        for s in _samples_of(stub, list(current), bool(image_formats), metadata, gone):
            s.label = current[s.id]
            if want_rows:
                rows.append(agent_pb2.Sample(id=s.id, uri=s.uri, metadata={
                    k: v for k, v in s.metadata.items() if k != PAYLOAD_ERROR_KEY}))
            if image_formats:
                writer.add(s)
    if writer.left_out:
        write_left_out(part / PROBLEMS_FILE, writer.left_out)
    return _ImagesPart(writer.count, writer.left_out, gone, rows, " and ".join(image_formats))


def _write_priors(priors: Iterable[agent_pb2.PriorLabel], part: Path, formats: tuple[str, ...], method: str,
                  current: dict[str, str]) -> tuple[int, dict[str, object] | None]:
    """priors.csv / priors.jsonl (those of ``formats``) from the PriorLabels stream, without the samples
    labelled in the snapshot ``current`` (they are in labels.csv), and priors.meta.json; returns the rows
    written and the calibration (as in priors.meta.json) of the stream's first row."""
    first: agent_pb2.PriorLabel | None = None  # the stream's first row: it carries the calibration
    with RowWriter(PRIOR_FIELDS, *_paths(part, "priors", formats)) as writer:
        for p in priors:
            if first is None:
                first = p
            if p.id not in current:
                writer.write(prior_row(p, method))
    meta = write_priors_meta(part / PRIORS_META, method, [] if first is None else [first], writer.count)
    calibration: dict[str, object] | None = meta["calibration"]
    return writer.count, calibration


def _publish(part: Path, out: Path, private: bool) -> None:
    """Rename the complete export ``part`` to ``out`` (an empty folder or none), durably; ``private``: every
    folder 0700 and file 0600 first (``owner_only``)."""
    if private:
        owner_only(part)
    # Durable before it is in place: every file and folder fsynced (a power loss after the command exits
    # must not leave an empty labels.csv under OUT), then the rename, then the parent, so OUT stays.
    fsync_tree(part)
    if out.exists():
        out.rmdir()
    os.replace(part, out)
    fsync_path(out.parent)
