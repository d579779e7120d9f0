"""``bench as3l`` reads back the files of earlier runs (cells/settings.json, each cell's cell.json, an arm's
summary.json, the encoder run's config.json): one that is not whole JSON (torn by a crash of an older version,
or edited by hand) is one ``error:`` line naming the file and what to do, exit 2, never a JSONDecodeError
traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from bench import as3l
from shortlist.atomic import NotWholeJson
from shortlist.cli import app
from tests.bench.helpers import split_folder

TORN = '{"strategy": "random", "bud'


def _cells(tmp_path: Path) -> Path:
    cells = tmp_path / "out" / "cells"
    cells.mkdir(parents=True)
    return cells


def test_torn_settings_json_names_the_file_and_the_fix(tmp_path: Path) -> None:
    cells = _cells(tmp_path)
    (cells / "settings.json").write_text(TORN)
    with pytest.raises(NotWholeJson) as e:
        as3l.check_settings(cells, {"steps": {"3": 4}})
    said = str(e.value)
    assert f"{cells / 'settings.json'} is not valid JSON" in said and "torn by a crash" in said
    assert f"delete {cells} to run every cell again" in said and "another --out" in said


def test_torn_label_cell_json_names_the_file_and_says_delete_it(tmp_path: Path) -> None:
    folders = as3l.Folders(tmp_path / "out")
    folder = folders.cells / "labels" / "random-3-seed0"
    folder.mkdir(parents=True)
    (folder / "cell.json").write_text(TORN)
    data = as3l.LabelData([], {}, [], np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(NotWholeJson, match=r"cell\.json is not valid JSON .*delete it to re-run that cell") as e:
        as3l.label_cell(folders, "random", 3, 0, data)
    assert str(folder / "cell.json") in str(e.value)


def _setup(cells: Path, ids: list[str]) -> as3l.ArmSetup:
    import torch

    from training.data import TensorData

    pool = TensorData(torch.zeros((len(ids), 3, 8, 8), dtype=torch.uint8), torch.arange(len(ids)) % 2, ["a", "b"],
                      ids)
    return as3l.ArmSetup(profile=as3l.PROFILES["smoke"], init=cells / "init", preprocess="cifar10@8", pool=pool,
                         test=pool, cells=cells)


def test_torn_arm_cell_json_names_the_file_and_says_delete_it(tmp_path: Path) -> None:
    cells = _cells(tmp_path)
    arm = as3l.ARMS[0]
    folder = cells / "arms" / f"{arm.name}-3-seed0"
    folder.mkdir(parents=True)
    (folder / "cell.json").write_text("[1, 2]")  # valid JSON, not a cell
    with pytest.raises(NotWholeJson) as e:
        as3l.arm_cell(_setup(cells, ["p0", "p1"]), arm, 3, 0, {"labeled": ["p0"]}, console=None)  # type: ignore[arg-type]
    assert str(e.value).startswith(f"{folder / 'cell.json'} holds an array, not a JSON object")
    assert "delete it to re-run that cell" in str(e.value)


def test_a_torn_summary_after_an_arms_training_says_run_again(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import training.finetune as ft

    def torn_finetune(cfg: ft.FinetuneConfig, *a: object, **k: object) -> Path:
        run = Path(cfg.out)
        run.mkdir(parents=True)
        (run / "summary.json").write_text('{"steps": 4, "ev')
        return run

    monkeypatch.setattr(ft, "finetune", torn_finetune)
    cells = _cells(tmp_path)
    arm = as3l.ARMS[0]
    with pytest.raises(NotWholeJson) as e:
        as3l.arm_cell(_setup(cells, ["p0", "p1"]), arm, 3, 0, {"labeled": ["p0"]}, console=None)  # type: ignore[arg-type]
    summary = cells / "arms" / f"{arm.name}-3-seed0" / "run" / "summary.json"
    assert str(e.value).startswith(f"{summary} is not valid JSON (line 1 column 14")
    assert "run the same command again" in str(e.value)
    assert not (summary.parent.parent / "cell.json").exists()


def test_the_encoder_runs_config_json(tmp_path: Path) -> None:
    init = tmp_path / "run"
    init.mkdir()
    assert as3l.init_preprocess(init) == "cifar10"  # none: the default
    (init / "config.json").write_text('{"preprocess": "imagenet@224"}')
    assert as3l.init_preprocess(init) == "imagenet"
    (init / "config.json").write_text("")  # emptied
    with pytest.raises(NotWholeJson, match="restore it, or pass another --encoder") as e:
        as3l.init_preprocess(init)
    assert str(e.value).startswith(f"{init / 'config.json'} is not valid JSON")


def test_the_command_says_it_in_one_line_and_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the CLI: the benchmark (stubbed past the data and the encoder) meets a torn cells/settings.json."""
    data = split_folder(tmp_path / "data")
    out = tmp_path / "out"
    cells = out / "cells"

    def benchmark(*a: Any, **k: Any) -> None:
        as3l.check_settings(cells, {"steps": {"3": 4}})

    cells.mkdir(parents=True)
    (cells / "settings.json").write_text(TORN)
    monkeypatch.setattr(as3l, "run_benchmark", benchmark)
    r = CliRunner().invoke(app, ["bench", "as3l", "--data", str(data), "--profile", "smoke", "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit)  # not a JSONDecodeError
    assert "Traceback" not in r.output
    assert r.output.startswith(f"error: {cells / 'settings.json'} is not valid JSON")
