"""agent/meta_csv.py: the file `shortlist ingest --meta-csv` reads (the CLI test runs it through an agent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.limits import Limits
from agent.meta_csv import MetaFileError, check_paths, over_limits, read_meta_csv


def test_tab_separated_escaped_and_empty_cells(tmp_path: Path) -> None:
    f = tmp_path / "m.tsv"
    f.write_text("\ufeffpath\tevent\tnote\n\na.jpg\tev1\t'@home\nb.jpg\t\t, comma\n", encoding="utf-8")
    t = read_meta_csv(f)
    assert t.keys == ["event", "note"] and t.lines == {"a.jpg": 3, "b.jpg": 4}
    assert t.rows == {"a.jpg": {"event": "ev1", "note": "@home"}, "b.jpg": {"note": ", comma"}}


def test_unknown_paths_name_the_first_ten_and_count_the_rest(tmp_path: Path) -> None:
    f = tmp_path / "m.csv"
    f.write_text("path,k\n" + "".join(f"x{i}.jpg,v\n" for i in range(13)) + "a.jpg,v\n", encoding="utf-8")
    with pytest.raises(MetaFileError) as e:
        check_paths(read_meta_csv(f), ["a.jpg", "b.jpg"], "src")
    said = str(e.value)
    assert "13 of its 14 paths are not images of src" in said and "'x9.jpg' (line 11)" in said
    assert "x10.jpg" not in said and "and 3 more" in said and "look like 'a.jpg'" in said


def test_limits_count_the_merged_metadata(tmp_path: Path) -> None:
    f = tmp_path / "m.csv"
    f.write_text("path,a,b\none.jpg,1,2\ntwo.jpg,1,\n", encoding="utf-8")
    t = read_meta_csv(f)
    assert over_limits(t, {"c": "3"}, Limits(max_metadata_entries=3)) == []
    over = over_limits(t, {"c": "3", "d": "4"}, Limits(max_metadata_entries=3))
    assert len(over) == 1 and over[0].startswith("line 2 (one.jpg): metadata has 4 entries")


@pytest.mark.parametrize(("text", "said"), [
    ("", "is empty"), ("path\na.jpg\n", "has no metadata column"),
    ("path,k\n,v\n", "line 2: no path"), ("path,k\na.jpg,1,2\n", "line 2: 3 cells, more than the header's 2"),
    ("path, k\u200b\na.jpg,v\n", "invisible"),
    ("a.jpg,ev1\nb.jpg,ev2\n", "must be named 'path'"),  # no header line: a.jpg's values would become keys
    # export-labels' samples.csv: said what it is and what to use instead (it was "must be named 'path'")
    ("id,uri,site\ncam1/a.jpg,file:///x,north\n", "looks like an export's samples.csv.*shortlist backup"),
])
def test_unusable_files(tmp_path: Path, text: str, said: str) -> None:
    f = tmp_path / "m.csv"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(MetaFileError, match=said):
        read_meta_csv(f)


def test_a_quoted_cell_keeps_its_line_break(tmp_path: Path) -> None:
    f = tmp_path / "m.csv"
    f.write_text('path,note\na.jpg,"line one\nline two"\nb.jpg,x\n', encoding="utf-8")
    assert read_meta_csv(f).rows == {"a.jpg": {"note": "line one\nline two"}, "b.jpg": {"note": "x"}}
