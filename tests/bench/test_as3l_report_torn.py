"""``bench as3l`` renders results.md from the results.json it has just written (as3l_report.write_report); one
that is not whole JSON anyway (something else wrote it meanwhile) is the command's one ``error:`` line naming it
and what to do (exit 2), not a JSONDecodeError traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bench import as3l, as3l_report
from shortlist.atomic import NotWholeJson
from shortlist.cli import app
from tests.bench.helpers import split_folder

TORN = '{"profile": "smoke", "resu'


def test_write_report_of_a_torn_results_json_names_it(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(TORN)
    with pytest.raises(NotWholeJson) as e:
        as3l_report.write_report(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'results.json'} is not valid JSON (line 1 column 22")
    assert str(e.value).endswith("run the same `shortlist bench as3l` command again (its finished cells are reused)")
    assert not (tmp_path / "results.md").exists()


def test_the_command_says_it_in_one_line_and_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = split_folder(tmp_path / "data")
    out = tmp_path / "out"

    def benchmark(*a: Any, **k: Any) -> None:  # stubbed past the cells: a results.json torn meanwhile
        (out / "results.json").write_text(TORN)
        as3l_report.write_report(out)

    monkeypatch.setattr(as3l, "run_benchmark", benchmark)
    r = CliRunner().invoke(app, ["bench", "as3l", "--data", str(data), "--profile", "smoke", "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    assert r.output.startswith(f"error: {out / 'results.json'} is not valid JSON")
