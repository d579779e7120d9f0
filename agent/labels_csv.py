"""The labels CSV of ``shortlist label FILE``: rows id,label (a header line optional), read and checked as a
whole before anything is sent (``read_labels_csv``).

An exported labels.csv (agent.exports) is such a file: its columns annotator and source give each row's
provenance, a column current (written by hand or by a tool) the label each sample is expected to have now
(``--if-current``). Whole-file problems raise LabelFileError (the CLI prints it and exits 2, nothing sent).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from agent import exports
from agent.errors import quoted


class LabelFileError(ValueError):
    """A labels CSV that cannot be used as a whole (nothing is sent): the message lists its problems."""


PROVENANCE_COLUMNS = ("annotator", "source")  # a labels CSV's columns `label` takes per row (an exported labels.csv)


@dataclass(frozen=True)
class Provenance:
    """Who gave each label of a labels CSV and how, from its columns ``annotator`` / ``source`` when its header
    has them (``read_labels_csv``): ``columns`` those it has, ``rows`` id -> (annotator, source), "" where the
    file has no such column or an empty cell."""

    columns: list[str]
    rows: dict[str, tuple[str, str]]


@dataclass(frozen=True)
class LabelsFile:
    """A labels CSV as ``read_labels_csv`` read it: ``rows`` (line number, id, label), in the file's order;
    ``current`` id -> the label the sample is expected to have now (its column current, "" = unlabelled; empty
    when the file has no such column); ``provenance`` its annotator / source columns."""

    rows: list[tuple[int, str, str]]
    current: dict[str, str]
    provenance: Provenance


def read_labels_csv(path: Path, if_current: bool = False) -> LabelsFile:
    """Every row of a labels CSV, with its columns current, annotator and source when its header has them.

    Columns ``id,label``; the first row is a header when its cells include ``id`` and ``label`` (any
    case; then other columns are ignored and the two may be in any order), else it is data. A cell an
    export escaped against spreadsheet formulas (a leading ``'``: exports.csv_escape) is read unescaped. UTF-8
    with or without a byte order mark (Excel's "CSV UTF-8"); comma-separated, or semicolon / tab when the
    first row has no comma. Blank lines are skipped; cells are stripped. Raises LabelFileError naming
    the lines of rows without an id or a label or with an id already given, and when no row is left.
    ``if_current``: the header must also have a ``current`` column (the label each sample is expected to have
    now, an empty cell = unlabelled; shortlist label --if-current). A file with a ``retracted`` column (an
    export's label history, several rows per id) is refused with a pointer to the current labels' file.
    """
    delimiter, rows = _csv_rows(path)
    cols = _columns(path, rows[0][1]) if rows else _Columns()
    if cols.header:
        rows = rows[1:]
    if if_current and cols.current < 0:
        raise LabelFileError(f"{path}: --if-current needs a header line with the columns id,label,current (current: "
                             "the label each sample has now as far as the file knows, empty = unlabelled); nothing "
                             "was sent")
    out: list[tuple[int, str, str]] = []
    current: dict[str, str] = {}
    given: dict[str, tuple[str, str]] = {}  # id -> (annotator, source)
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for n, cells in rows:
        sid, lab = _cell(cells, cols.id), _cell(cells, cols.label)
        if not sid or not lab:
            problems.append(f"line {n}: {'no id' if not sid else 'no label'} in {quoted(delimiter.join(cells))}")
        elif sid in first_line:  # which of the two is meant is the file's author's to say
            problems.append(f"line {n}: id {quoted(sid)} again (first on line {first_line[sid]}): one label per sample")
        else:
            first_line[sid] = n
            out.append((n, sid, lab))
            if cols.current >= 0:
                current[sid] = _cell(cells, cols.current)
            if cols.provenance:
                who, how = (_cell(cells, cols.provenance.get(c, -1)) for c in PROVENANCE_COLUMNS)
                given[sid] = (who, how)
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise LabelFileError(f"{path}: rows need an id and a label (columns id,label), one row per id; nothing was "
                             "sent:\n  " + "\n  ".join(problems[:10]) + more)
    if not out:
        raise LabelFileError(f"{path} has no labels: it needs rows 'id,label' (a header line 'id,label' is "
                             "optional)")
    return LabelsFile(out, current, Provenance(list(cols.provenance), given))


def _csv_rows(path: Path) -> tuple[str, list[tuple[int, list[str]]]]:
    """The delimiter of the file at ``path`` and its non-blank rows: (line number, cells stripped and
    unescaped). The delimiter is a comma unless the first non-blank line has none and has a semicolon (then
    that) or a tab: csv.Sniffer would read some files otherwise (it refuses a one-column first line and
    splits '"a,b";cat' at the semicolon)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise LabelFileError(f"{path} is not UTF-8 text ({e}); save it as CSV UTF-8") from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    delimiter = "," if "," in first or not ({";", "\t"} & set(first)) else (";" if ";" in first else "\t")
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        return delimiter, [(reader.line_num, [exports.csv_unescape(c.strip()) for c in cells]) for cells in reader
                           if any(c.strip() for c in cells)]
    except csv.Error as e:  # a NUL byte, an unterminated quote at the end, a huge field
        raise LabelFileError(f"{path} line {reader.line_num}: not readable as CSV ({e})") from None


@dataclass(frozen=True)
class _Columns:
    """Where a labels CSV's values are (column indexes; -1: the file has no such column). Without a header:
    id first, label second."""

    header: bool = False
    id: int = 0
    label: int = 1
    current: int = -1
    provenance: dict[str, int] = field(default_factory=dict)  # those of PROVENANCE_COLUMNS the header has


def _columns(path: Path, first: list[str]) -> _Columns:
    """The columns a labels CSV's ``first`` row names when it is a header (it has id and label), else the
    defaults. A label history (a column retracted) raises LabelFileError."""
    head = [c.lower() for c in first]
    if "id" not in head or "label" not in head:
        return _Columns()
    if "retracted" in head:  # labels.csv of export-labels --history: every label given, retractions
        raise LabelFileError(
            f"{path} is a label history (export-labels --history: a row per label ever given, retractions "
            "with an empty label), not one label per sample; nothing was sent. Import the current labels: "
            "the labels.csv of an export made without --history (shortlist export-labels --out DIR "
            "--format csv). Only a backup (shortlist backup) carries the history to another data folder")
    return _Columns(header=True, id=head.index("id"), label=head.index("label"),
                    current=head.index("current") if "current" in head else -1,
                    provenance={c: head.index(c) for c in PROVENANCE_COLUMNS if c in head})


def _cell(cells: list[str], col: int) -> str:
    """``cells[col]``, "" when the row is shorter or ``col`` is -1 (no such column)."""
    return cells[col] if 0 <= col < len(cells) else ""
