"""``bench strategies`` reads back OUT/cells.json, the cells an earlier run finished. One that is not whole JSON
(torn by a crash of an older version, or edited by hand) is one ``error:`` line naming it and what to do (--fresh,
or another --out), exit 2: not a usage box quoting the bare JSON error; a record in it that names no cell is left
out (that cell runs again), not a KeyError traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from bench.strategies import Cells
from shortlist.cli import app
from tests.agent.strategies.pools import blobs


def _args(tmp_path: Path) -> list[str]:
    x, y = blobs(clusters=3, per_cluster=8, dim=8, spread=0.3, seed=3)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return ["bench", "strategies", "--embeddings", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
            "--budgets", "3", "--strategies", "random", "--priors", "knn", "--seeds", "1", "--out",
            str(tmp_path / "out")]


def test_a_torn_cells_json_is_one_error_line_and_fresh_starts_over(tmp_path: Path) -> None:
    args = _args(tmp_path)
    cells = tmp_path / "out" / "cells.json"
    cells.parent.mkdir()
    cells.write_text('{"settings": {"calibrated": tr')
    r = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "Usage:" not in r.output
    assert r.output.startswith(f"error: {cells} is not valid JSON (line 1 column 29: torn by a crash, or edited by "
                               "hand?); it holds the cells an earlier run finished: pass --fresh to start over")
    assert len(r.output.strip().splitlines()) == 1
    assert cells.read_text() == '{"settings": {"calibrated": tr'  # the user's to give up, not replaced
    fresh = CliRunner().invoke(app, [*args, "--fresh"])
    assert fresh.exit_code == 0, fresh.output
    assert len(json.loads(cells.read_text())["records"]) == 1


def test_records_that_name_no_cell_are_left_out(tmp_path: Path) -> None:
    settings = {"calibrated": True}
    good = {"strategy": "random", "budget": 3, "seed": 0, "prior_method": "knn"}
    (tmp_path / "cells.json").write_text(json.dumps({"settings": settings,
                                                     "records": [good, {"strategy": "random"}, 7, None]}))
    assert Cells.open(tmp_path, settings).done == {("random", 3, 0, "knn"): good}
    (tmp_path / "cells.json").write_text(json.dumps({"settings": settings, "records": {"a": 1}}))
    assert Cells.open(tmp_path, settings).done == {}
