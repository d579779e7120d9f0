"""agent/labels_csv.py: the labels CSV of ``shortlist label`` read into a LabelsFile (rows, the column
current, the columns annotator / source), or refused as a whole with LabelFileError."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.labels_csv import LabelFileError, LabelsFile, Provenance, read_labels_csv


def _file(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "labels.csv"
    f.write_text(text, encoding="utf-8")
    return f


def test_a_labels_file_is_its_rows_current_labels_and_provenance(tmp_path: Path) -> None:
    """An exported labels.csv with a current column: rows (line, id, label), the current label per id and who
    gave each label, returned (nothing filled in place); the LabelsFile cannot be changed afterwards."""
    f = _file(tmp_path, "Label,ID,current,annotator\n\ns1,cat,,ana\n'=s2, dog ,cat,\n")
    got = read_labels_csv(f, if_current=True)
    assert got == LabelsFile(rows=[(3, "cat", "s1"), (4, "dog", "=s2")], current={"cat": "", "dog": "cat"},
                             provenance=Provenance(columns=["annotator"], rows={"cat": ("ana", ""), "dog": ("", "")}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.rows = []  # type: ignore[misc]


def test_provenance_and_current_labels_come_from_their_columns(tmp_path: Path) -> None:
    f = _file(tmp_path, "id,label,source,annotator,current\ns1,cat,prior:knn,ana,dog\ns2,dog,,,\n")
    got = read_labels_csv(f, if_current=True)
    assert got.rows == [(2, "s1", "cat"), (3, "s2", "dog")]
    assert got.current == {"s1": "dog", "s2": ""}
    assert got.provenance == Provenance(columns=["annotator", "source"],
                                        rows={"s1": ("ana", "prior:knn"), "s2": ("", "")})
    plain = read_labels_csv(_file(tmp_path, "s1,cat\n"))  # no header: data from the first row, no provenance
    assert plain == LabelsFile(rows=[(1, "s1", "cat")], current={}, provenance=Provenance(columns=[], rows={}))


def test_if_current_needs_the_current_column(tmp_path: Path) -> None:
    with pytest.raises(LabelFileError, match="--if-current needs a header line with the columns id,label,current"):
        read_labels_csv(_file(tmp_path, "id,label\ns1,cat\n"), if_current=True)


def test_the_delimiter_is_a_comma_unless_the_first_row_has_none(tmp_path: Path) -> None:
    """Comma, else semicolon, else tab, from the first non-blank row: a row with a comma and a semicolon is
    split at the comma, a one-column row is one id without a label (csv.Sniffer refuses a one-column row and
    splits '"a,b";cat' at the semicolon, so it would read such files otherwise)."""
    for text in ("id;label\ns1;cat\n", "\nid\tlabel\ns1\tcat\n", "s1,cat\n"):
        assert read_labels_csv(_file(tmp_path, text)).rows[0][1:] == ("s1", "cat"), text
    assert read_labels_csv(_file(tmp_path, "s1;x,cat\n")).rows == [(1, "s1;x", "cat")]
    with pytest.raises(LabelFileError, match='line 1: no label in "s1"'):
        read_labels_csv(_file(tmp_path, "s1\n"))


def test_label_file_problems_quote_ids_as_json(tmp_path: Path) -> None:
    f = _file(tmp_path, "id,label\ncafé,cat\nx;y\ncafé,dog\n")
    with pytest.raises(LabelFileError) as e:
        read_labels_csv(f)
    assert str(e.value).splitlines()[1:] == [
        '  line 3: no label in "x;y"', '  line 4: id "café" again (first on line 2): one label per sample']


def test_a_label_history_is_refused_with_a_pointer_to_the_current_labels(tmp_path: Path) -> None:
    f = _file(tmp_path, "id,label,retracted\ns1,cat,false\ns1,,true\n")
    with pytest.raises(LabelFileError, match="is a label history"):
        read_labels_csv(f)
