"""``bench recipe`` reads back what earlier runs wrote into --out (cells/settings.json, each cell's cell.json and
rounds.json). One that is not whole JSON (torn by a crash of an older version, or edited by hand): a cell's file
makes that cell run again (a warning naming it), the settings file is one ``error:`` line naming it and what to
do (exit 2); never a JSONDecodeError traceback."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from bench import cifar10
from bench.recipes import RECIPES, loop
from shortlist.atomic import NotWholeJson
from shortlist.cli import app
from tests.bench.helpers import split_folder

TORN = '{"arm": "das", "seed": 0, "rou'


def _flat(text: str) -> str:
    return "".join(text.split())  # rich wraps long lines (paths too): compare without any whitespace


def _context(out: Path) -> loop.Context:
    recipe = RECIPES["das"]
    base, registry = out / "agent-base", out / "models"
    base.mkdir(parents=True)
    (registry / "v0001").mkdir(parents=True)
    return loop.Context(recipe=recipe, scale=recipe.profiles["smoke"], out=out, registry=registry, version="v0001",
                        pretext_run=None, base=base, pool_ids=["p0", "p1"], truth={"p0": 0, "p1": 1},
                        classes=["a", "b"], budgets=[1, 2], test_images=np.zeros((0, 8, 8, 3), np.uint8),
                        test_y=np.zeros(0, np.int64))


@pytest.fixture
def fake_rounds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """No agent, no training: each round returns a record at once; the rounds run are listed."""
    ran: list[int] = []

    @contextmanager
    def no_agent(*a: Any, **k: Any) -> Iterator[str]:
        yield "127.0.0.1:56700"

    def fake_round(ctx: loop.Context, arm: Any, seed: int, r: int, where: Any, console: Any) -> dict[str, Any]:
        ran.append(r)
        return {"round": r, "labeled": ctx.budgets[r], "strategy": "random", "test_accuracy": 0.5,
                "select_seconds": 0.0, "train_seconds": 0.0, "swap_seconds": 0.0}

    monkeypatch.setattr(cifar10, "agent_process", no_agent)
    monkeypatch.setattr(loop, "run_round", fake_round)
    return ran


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=400), buf


@pytest.mark.parametrize("content", [TORN, "[1, 2]"])
def test_a_torn_cell_json_runs_that_cell_again_with_a_warning(tmp_path: Path, fake_rounds: list[int],
                                                              content: str) -> None:
    ctx = _context(tmp_path / "out")
    arm = ctx.recipe.arms[0]
    folder = ctx.out / "cells" / f"{arm.name}-seed0"
    folder.mkdir(parents=True)
    (folder / "cell.json").write_text(content)
    console, said = _console()
    cell = loop.run_cell(ctx, arm, 0, tmp_path / "agent.log", console)
    assert fake_rounds == [0, 1] and [r["round"] for r in cell["rounds"]] == [0, 1]
    assert json.loads((folder / "cell.json").read_text()) == cell  # rewritten whole
    out = said.getvalue()
    assert out.startswith(f"warning: {folder / 'cell.json'} ") and "that cell runs again" in out
    assert "Traceback" not in out


def test_a_whole_cell_json_is_reused(tmp_path: Path, fake_rounds: list[int]) -> None:
    ctx = _context(tmp_path / "out")
    arm = ctx.recipe.arms[0]
    folder = ctx.out / "cells" / f"{arm.name}-seed0"
    folder.mkdir(parents=True)
    (folder / "cell.json").write_text('{"arm": "x", "rounds": []}')
    assert loop.run_cell(ctx, arm, 0, tmp_path / "agent.log", _console()[0]) == {"arm": "x", "rounds": []}
    assert fake_rounds == []


@pytest.mark.parametrize("content", [TORN, '{"round": 0}', "[]", "[3]"])
def test_a_torn_rounds_json_starts_that_cell_over_with_a_warning(tmp_path: Path, fake_rounds: list[int],
                                                                 content: str) -> None:
    ctx = _context(tmp_path / "out")
    arm = ctx.recipe.arms[0]
    folder = ctx.out / "cells" / f"{arm.name}-seed0"
    (folder / "agent").mkdir(parents=True)  # an interrupted cell: its agent's data folder is there
    (folder / "agent" / "stale").write_text("labels of the interrupted run")
    (folder / "rounds.json").write_text(content)
    console, said = _console()
    cell = loop.run_cell(ctx, arm, 0, tmp_path / "agent.log", console)
    assert fake_rounds == [0, 1] and len(cell["rounds"]) == 2
    out = said.getvalue()
    assert out.startswith(f"warning: {folder / 'rounds.json'} ") and "starts over from its first round" in out
    assert "resuming" not in out and "Traceback" not in out


def test_a_whole_rounds_json_resumes(tmp_path: Path, fake_rounds: list[int]) -> None:
    ctx = _context(tmp_path / "out")
    arm = ctx.recipe.arms[0]
    folder = ctx.out / "cells" / f"{arm.name}-seed0"
    (folder / "agent").mkdir(parents=True)
    (folder / "rounds.json").write_text('[{"round": 0, "labeled": 1}]')
    console, said = _console()
    loop.run_cell(ctx, arm, 0, tmp_path / "agent.log", console)
    assert fake_rounds == [1] and "resuming" in said.getvalue() and "warning" not in said.getvalue()


def test_a_torn_settings_json_names_the_file_and_the_fix(tmp_path: Path) -> None:
    cells = tmp_path / "out" / "cells"
    cells.mkdir(parents=True)
    (cells / "settings.json").write_text(TORN)
    with pytest.raises(NotWholeJson) as e:
        loop.check_settings(cells, {"recipe": "das"})
    said = str(e.value)
    assert said.startswith(f"{cells / 'settings.json'} is not valid JSON (line 1 column 27")
    assert f"delete {cells} to run every cell again" in said and "another --out" in said
    assert (cells / "settings.json").read_text() == TORN  # left for the user to look at


def test_the_command_says_it_in_one_line_and_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the CLI, the run stubbed past the data: a torn cells/settings.json."""
    data = split_folder(tmp_path / "data")
    out = tmp_path / "out"
    cells = out / "cells"
    cells.mkdir(parents=True)
    (cells / "settings.json").write_text(TORN)

    def run_recipe(*a: Any, **k: Any) -> None:
        loop.check_settings(cells, {"recipe": "das"})

    monkeypatch.setattr(loop, "run_recipe", run_recipe)
    r = CliRunner().invoke(app, ["bench", "recipe", "das", "--profile", "smoke", "--data", str(data),
                                 "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit)  # not a JSONDecodeError
    assert "Traceback" not in r.output
    assert _flat(r.output).startswith(_flat(f"error: {cells / 'settings.json'} is not valid JSON"))
