"""``bench cifar10`` and ``bench report`` read back run files (the pretraining run's config.json, results.json).
One that is not whole JSON (torn by a crash of an older version, or edited by hand) is either a resume that
reuses nothing, with a line naming the file (results.json of a rerun), or one ``error:`` line naming the file
and what to do, exit 2 (the pretraining run's config.json, a run given to ``bench report``); never a
JSONDecodeError traceback."""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

import bench.cifar10.run as cifar10_run
from bench.cifar10.encoder import PoolSplits, earlier_pretraining, prepare_encoder
from bench.cifar10.evaluation import Run, finished_runs
from bench.cifar10.ingest import ingest_pool
from bench.cifar10.profiles import Profile, hash_ids
from bench.report import write_report
from shortlist.atomic import NotWholeJson
from shortlist.cli import app
from shortlist.datasets import iter_images
from training.pretrain import PretrainConfig

TORN = '{"data": "cifar10", "meth'


def _flat(text: str) -> str:
    return "".join(text.split())  # rich wraps long lines (paths too): compare without any whitespace


def _pretrain_run(tmp_path: Path) -> tuple[Path, PretrainConfig]:
    run_dir = tmp_path / "out" / "pretrain"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"hours of pretraining")
    (run_dir / "config.json").write_text(TORN)
    return run_dir, PretrainConfig(data="cifar10", method="simsiam", arch="resnet18", minutes=1.0, out=str(run_dir))


def test_a_torn_pretraining_config_names_the_file_and_the_fix(tmp_path: Path) -> None:
    run_dir, config = _pretrain_run(tmp_path)
    with pytest.raises(NotWholeJson) as e:
        earlier_pretraining(run_dir, config, {})
    said = str(e.value)
    assert said.startswith(f"{run_dir / 'config.json'} is not valid JSON (line 1 column 21")
    assert "remove that folder to pretrain again, or pass another --out" in said
    assert "(not recorded)" not in said  # not "other settings": it could not be read
    assert (run_dir / "checkpoint.pt").is_file()


def _data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (data / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / split / c / "0.png")
    return data


def test_bench_cifar10_says_it_in_one_line_and_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the CLI, the benchmark stubbed past the data: the pretraining run's config.json is torn."""
    run_dir, config = _pretrain_run(tmp_path)

    def run_benchmark(*a: Any, **k: Any) -> None:
        earlier_pretraining(run_dir, config, {})

    monkeypatch.setattr("bench.cifar10.commands.run_benchmark", run_benchmark)
    r = CliRunner().invoke(app, ["bench", "cifar10", "--data", str(_data(tmp_path)), "--out", str(run_dir.parent)])
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    assert _flat(r.output).startswith(_flat(f"error: {run_dir / 'config.json'} is not valid JSON"))


def _run() -> Run:
    return Run(profile="quick", data="d", seeds=[0], budgets=[3, 6], strategies=["random"], prior_methods=["knn"],
               pool_size=10, test_size=4, model_version="v0001", encoder={}, git_commit="c")


@pytest.mark.parametrize("content", [TORN, "[]"])
def test_a_torn_results_json_resumes_nothing_and_says_which_file(tmp_path: Path, content: str) -> None:
    (tmp_path / "results.json").write_text(content)
    done, kept, note = finished_runs(tmp_path, _run())
    assert done == {} and kept == {}
    assert note.startswith(f"not resuming: {tmp_path / 'results.json'} ")
    assert ("is not valid JSON" if content == TORN else "holds an array, not a JSON object") in note
    assert note.endswith("its runs are run again and it will be replaced")
    assert cifar10_run.earlier_walls(tmp_path, {}) == {}


def test_records_edited_by_hand_are_run_again_not_a_key_error(tmp_path: Path) -> None:
    run = _run()
    whole = [{"strategy": "random", "seed": 0, "budget": b} for b in (3, 6)]
    (tmp_path / "results.json").write_text(json.dumps({**asdict(run), "records": [*whole, {"strategy": "x"}, 7]}))
    done, _, _ = finished_runs(tmp_path, run)
    assert done == {("random", 0): whole}


def test_bench_report_of_a_torn_results_json_is_one_error_line(tmp_path: Path) -> None:
    good, torn = tmp_path / "good", tmp_path / "torn"
    good.mkdir()
    (good / "results.json").write_text(json.dumps({**asdict(_run()), "records": []}))
    torn.mkdir()
    (torn / "results.json").write_text('{"profile": "quick", "reco')
    r = CliRunner().invoke(app, ["bench", "report", str(good), str(torn), "--out", str(tmp_path / "report")])
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    said = _flat(r.output)
    assert said.startswith(_flat(f"error: {torn / 'results.json'} is not valid JSON (line 1 column 22"))
    assert _flat("or leave that run out of the report") in said
    assert not (tmp_path / "report").exists()


# ---- paths through rich markup ----------------------------------------------------------------------------
BRACKETED = "out[x]"  # a folder name rich read as a style tag, printing "out" (and "[/]" raised MarkupError)


def _console() -> tuple[Console, io.StringIO]:
    said = io.StringIO()
    return Console(file=said, width=1000, color_system=None, highlight=False), said


@pytest.mark.parametrize("name", [BRACKETED, "out[/]"])
def test_the_not_resuming_line_prints_a_bracketed_path_as_it_is(tmp_path: Path, name: str) -> None:
    out = tmp_path / name  # ("out[/]": the folder "]" in the folder "out[")
    out.mkdir(parents=True)
    (out / "results.json").write_text(TORN)
    console, said = _console()
    done, kept = cifar10_run.resumed_runs(out, _run(), console)
    assert done == {} and kept == {}
    assert said.getvalue().startswith(f"not resuming: {out / 'results.json'} is not valid JSON"), said.getvalue()


def test_the_reused_ingest_and_pretraining_lines_print_a_bracketed_path_as_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(tmp_path)
    out = tmp_path / BRACKETED
    base = out / "base"
    base.mkdir(parents=True)
    ids = [it.id for it in iter_images(data, "train")]
    (base / "bench-ingested.json").write_text(json.dumps(
        {"model_version": "v0001", "ids": len(ids), "digest": hash_ids(ids), "classes": ["[b]"]}))
    console, said = _console()
    ingest_pool(data, ids, "v0001", out / "models", base, out / "log", console, classes=["[b]"])
    assert f"reusing the ingested pool in {base}\n" in said.getvalue()
    # the encoder pretrained by an earlier run into this --out (its export stubbed: no torch run here)
    monkeypatch.setattr("bench.cifar10.encoder.earlier_pretraining", lambda *a: "finished")
    monkeypatch.setattr("exporters.export.export_run", lambda run_dir, registry: "v0001")
    profile = Profile(name="t", pool_size=None, test_size=None, pretrain_minutes=1.0, arch="resnet18", method="moby",
                      seeds=1, budgets=("2",), strategies=("random",), prior_methods=("knn",),
                      pretrain_options={"batch_size": 2})
    version, _ = prepare_encoder(None, profile, PoolSplits(data, np.arange(4)), out, console)
    assert version == "v0001"
    assert f"reusing the encoder pretrained in {out / 'pretrain'} by an earlier run" in said.getvalue()


@pytest.mark.filterwarnings("ignore:No artists with labels")  # (a run with no records: empty plots)
def test_the_report_line_prints_a_bracketed_path_as_it_is(tmp_path: Path) -> None:
    run_dir, out = tmp_path / "run", tmp_path / BRACKETED
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps({**asdict(_run()), "records": []}))
    console, said = _console()
    write_report([run_dir], out, console)
    assert f"report: {out / 'results.md'}, " in said.getvalue()
