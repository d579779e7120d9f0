"""A miniature of ``shortlist bench cifar10``: tiny generated data, 2 strategies, 1 seed, through a real
agent process; checks that results.json is complete and consistent."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

import bench.cifar10.run as cifar10_run
from agent.testing import foreign_encoder, publish_linear, publish_model
from shortlist.cli import app
from shortlist.manifest import Preprocess, list_versions
from tests.bench.helpers import colour_folders

CLASSES = ["circle", "square", "stripe"]


def _make_split(root: Path, n_per_class: int, rng: np.random.Generator) -> None:
    for ci, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            base = np.zeros((8, 8, 3), np.float64)
            base[..., ci] = 200  # each class has its own dominant colour channel
            img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / c / f"{i:04d}.png")


@pytest.fixture()
def tiny_cifar(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    _make_split(tmp_path / "data" / "train", 20, rng)
    _make_split(tmp_path / "data" / "test", 6, rng)
    return tmp_path / "data"


def test_mini_benchmark_through_agent(tiny_cifar: Path, tmp_path: Path) -> None:
    encoder = tmp_path / "encoder"
    publish_linear(encoder, size=(8, 8), dim=16)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "bench", "cifar10", "--data", str(tiny_cifar), "--profile", "quick", "--encoder", str(encoder),
        "--strategies", "random,kmedoids", "--seeds", "1", "--budgets", "3,6,20%", "--prior-methods", "knn",
        "--semi-supervised-at", "12", "--semi-supervised-steps", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    run = json.loads((out / "results.json").read_text())
    assert run["profile"] == "quick" and run["pool_size"] == 60 and run["test_size"] == 18
    assert run["budgets"] == [3, 6, 12] and run["model_version"] == "v0001" and not run["skipped"] and run["complete"]
    records = run["records"]
    assert {(r["strategy"], r["budget"]) for r in records} == {
        (s, b) for s in ("random", "kmedoids") for b in (3, 6, 12)}
    for r in records:
        assert r["prior_method"] == "knn" and r["n_labeled"] == r["budget"] and r["seed"] == 0
        assert 1 <= r["coverage"] <= 3
        assert 0.0 <= r["linear_accuracy"] <= 1.0 and 0.0 <= r["prior_accuracy"] <= 1.0 and 0.0 <= r["ece"] <= 1.0
        # and the balanced accuracies (mean per-class recall) beside them
        assert 0.0 <= r["linear_balanced_accuracy"] <= 1.0 and 0.0 <= r["prior_balanced_accuracy"] <= 1.0
        # Three classes: the max probability of a distribution is at least 1/3.
        assert 1 / 3 - 1e-6 <= r["mean_confidence"] <= 1.0
        # No audit labels: the temperature is fitted on the labelled set, or is the default.
        assert r["audit_labels"] == 0 and r["calibration"] in ("labelled", "default")
    # The AS3L semi-supervised stage ran (one step, from a random init: only its plumbing is checked) at 12 only.
    assert all((r["semi_supervised_accuracy"] is not None) == (r["budget"] == 12) for r in records)
    assert all(0.0 <= r["semi_supervised_accuracy"] <= 1.0 for r in records if r["budget"] == 12)
    # Colour-separable classes: with 12 labels the probe and the priors must be far above chance (1/3).
    last = [r for r in records if r["budget"] == 12]
    assert all(r["linear_accuracy"] > 0.8 and r["prior_accuracy"] > 0.8 for r in last), last
    assert (out / "results.md").read_text().count("| kmedoids |") >= 5  # with the two balanced-accuracy tables
    assert "## Prior-label balanced accuracy" in (out / "results.md").read_text()
    # The agent was told the data set's classes (a team declares them), so a prior can name a class no label
    # covers yet; the ingested base that every run copies records them.
    assert json.loads((out / "agent-base" / "bench-ingested.json").read_text())["classes"] == CLASSES
    # The title names the data set it was given (its folder), not CIFAR-10.
    assert (out / "results.md").read_text().startswith(f"# Low-budget benchmark through the agent: data ({tiny_cifar})")
    assert (out / "accuracy_vs_labels.png").stat().st_size > 1000
    assert np.load(out / "embeddings" / "pool_x.npy").shape == (60, 16)
    # what the embeddings are, for `bench strategies` titles; the classes, so no CIFAR-10 reference sits beside them
    meta = json.loads((out / "embeddings" / "meta.json").read_text())
    assert meta["data"] == str(tiny_cifar) and meta["pool_size"] == 60 and meta["model_version"] == "v0001"
    assert run["classes"] == sorted(CLASSES) and "(published, CIFAR-10" not in (out / "results.md").read_text()
    # bench report re-renders from results.json alone
    again = CliRunner().invoke(app, ["bench", "report", str(out), "--out", str(tmp_path / "report")])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "report" / "results.md").read_text() == (out / "results.md").read_text()


def test_audit_labels_are_drawn_once_and_fit_the_temperature(tiny_cifar: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """--audit N: after the first budget's picks, N audit labels (a uniform sample) are labelled and kept; the
    priors' temperature is then fitted on them, and the budgets still count the strategy's picks."""
    encoder = tmp_path / "encoder"
    publish_linear(encoder, size=(8, 8), dim=16)
    out = tmp_path / "out"
    args = ["bench", "cifar10", "--data", str(tiny_cifar), "--profile", "quick", "--encoder", str(encoder),
            "--strategies", "kmedoids", "--seeds", "1", "--budgets", "3,6", "--prior-methods", "knn", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--audit", "21"])
    assert result.exit_code == 0, result.output
    run = json.loads((out / "results.json").read_text())
    assert run["audit"] == 21 and run["complete"] and not run["skipped"]
    assert [(r["budget"], r["n_labeled"], r["audit_labels"]) for r in run["records"]] == [(3, 24, 21), (6, 27, 21)]
    # 21 audit labels of 3 classes all count (each class keeps labels outside its fold): fitted on them.
    assert [r["calibration"] for r in run["records"]] == ["audit", "audit"]
    assert "21 audit labels drawn after the first budget's picks" in (out / "results.md").read_text()
    # The plots' x axis counts the strategy's picks, so it says the audit labels come on top.
    import bench.report as report

    seen: list[str] = []
    monkeypatch.setattr(report, "plot_curves", lambda *a, **k: seen.append(k["xlabel"]))
    report.plot([report.load_run(out)], "linear_accuracy", "accuracy", tmp_path / "x.png")
    assert seen == ["labels picked by the strategy (+ 21 audit labels)"]
    # Another audit count into the same folder is not mixed with these records.
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "not resuming" in again.output and "audit" in again.output
    assert {r["audit_labels"] for r in json.loads((out / "results.json").read_text())["records"]} == {0}


def test_benchmark_pretrains_its_own_encoder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The profile path without --encoder: pretrain on the pool rows of the already-decoded split (32x32,
    the model's size), export, publish, serve; the run records the pool subset it trained on."""
    from bench.cifar10 import Profile, run_benchmark

    colour_folders(tmp_path / "data", CLASSES, (("train", 12), ("test", 4)), seed=1)
    profile = Profile(name="tiny", pool_size=30, test_size=12, pretrain_minutes=0.02, arch="resnet18_w32",
                      method="simsiam", seeds=1, budgets=("3", "6"), strategies=("random",), prior_methods=("knn",),
                      pretrain_options={"batch_size": 8, "threads": 1, "progress": False})
    run = run_benchmark(tmp_path / "data", profile, tmp_path / "out")
    assert run.complete and run.pool_size == 30 and run.encoder["kind"] == "pretrained here"
    config = json.loads((tmp_path / "out" / "pretrain" / "config.json").read_text())
    assert len(config["subset"]) == 30 and config["batch_size"] == 8
    summary = json.loads((tmp_path / "out" / "pretrain" / "summary.json").read_text())
    assert summary["train_images"] == 30 and summary["knn_test"] == 12
    assert {r["budget"] for r in run.records} == {3, 6}
    # The kNN check's k (200) is above the bank's 10 images per class: said, naming the smallest class and no
    # --knn-k, which bench cifar10 does not accept (`shortlist pretrain` does)
    printed = " ".join(capsys.readouterr().out.split())
    assert "k=200 is more than the 10 images of the bank's smallest class" in printed and "--knn-k" not in printed
    # Run again into the same folder (the quickstart twice): the encoder is reused, not retrained or
    # re-exported.
    encoder_bytes = (tmp_path / "out" / "pretrain" / "encoder.pt").read_bytes()
    again = run_benchmark(tmp_path / "data", profile, tmp_path / "out")
    assert again.complete and again.encoder["kind"] == "pretrained here by an earlier run"
    assert again.model_version == "v0001" and list_versions(tmp_path / "out" / "models") == ["v0001"]  # no second
    assert (tmp_path / "out" / "pretrain" / "encoder.pt").read_bytes() == encoder_bytes
    # Interrupted after its checkpoint: the rerun resumes it (the time budget is already spent, so it
    # only writes the encoder), exports it and runs the benchmark.
    for name in ("encoder.pt", "summary.json"):
        (tmp_path / "out" / "pretrain" / name).unlink()
    resumed = run_benchmark(tmp_path / "data", profile, tmp_path / "out")
    assert resumed.complete and (tmp_path / "out" / "pretrain" / "encoder.pt").is_file()
    # Other settings into the same folder: refused, naming what differs, and nothing is touched.
    with pytest.raises(typer.BadParameter, match=r"minutes 0.02 there, 0.05 now.*another --out"):
        run_benchmark(tmp_path / "data", replace(profile, pretrain_minutes=0.05), tmp_path / "out")


def test_bench_embeddings_writes_the_inputs_of_bench_strategies(tiny_cifar: Path, tmp_path: Path) -> None:
    encoder = tmp_path / "encoder"
    publish_linear(encoder, size=(8, 8), dim=16)
    out = tmp_path / "emb"
    result = CliRunner().invoke(app, ["bench", "embeddings", "--encoder", str(encoder), "--data", str(tiny_cifar),
                                      "--pool", "30", "--out", str(out)])
    assert result.exit_code == 0, result.output
    x, y = np.load(out / "pool_x.npy"), np.load(out / "pool_y.npy")
    assert x.shape == (30, 16) and x.dtype == np.float32 and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-4)
    assert np.bincount(y).tolist() == [10, 10, 10]  # class-balanced subset
    assert np.load(out / "test_x.npy").shape == (18, 16) and np.load(out / "test_y.npy").shape == (18,)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model_version"] == "v0001" and meta["classes"] == sorted(CLASSES) and meta["pool_size"] == 30
    assert "bench strategies --embeddings" in result.output
    # the files are what `bench strategies` takes
    bench = CliRunner().invoke(app, [
        "bench", "strategies", "--embeddings", str(out / "pool_x.npy"), "--labels", str(out / "pool_y.npy"),
        "--test-embeddings", str(out / "test_x.npy"), "--test-labels", str(out / "test_y.npy"), "--budgets", "3",
        "--seeds", "1", "--strategies", "random,kmedoids", "--priors", "knn", "--out", str(tmp_path / "b")])
    assert bench.exit_code == 0, bench.output
    records = json.loads((tmp_path / "b" / "results.json").read_text())
    assert {r["strategy"] for r in records} == {"random", "kmedoids"}
    assert (tmp_path / "b" / "results.md").read_text().startswith(  # the data set and encoder, from meta.json
        f"`bench strategies` on data, encoder {encoder / 'v0001'} (registry")
    # not an encoder: a clear usage error, nothing published
    bad = CliRunner().invoke(app, ["bench", "embeddings", "--encoder", str(tiny_cifar), "--data", str(tiny_cifar),
                                   "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "training run folder" in bad.output
    assert not (tmp_path / "bad" / "models").exists() or not any((tmp_path / "bad" / "models").iterdir())
    # a version the agent refuses (a fixed batch axis): its refusal, no traceback, nothing published
    fixed = tmp_path / "fixed"
    publish_model(fixed, foreign_encoder((8, 8), 16, batch=1), Preprocess(size=(8, 8)))
    for command in ("embeddings", "cifar10"):
        refused = CliRunner().invoke(app, ["bench", command, "--encoder", str(fixed / "v0001"), "--data",
                                           str(tiny_cifar), "--out", str(tmp_path / command)])
        assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
        words = " ".join(refused.output.replace("│", " ").split())
        assert "the agent refuses this model version: the batch axis is fixed at 1" in words
        assert not (tmp_path / command / "models").exists() or not any((tmp_path / command / "models").iterdir())


def test_the_agent_is_told_the_classes_and_priors_give_unlabelled_ones_their_share(tiny_cifar: Path,
                                                                                 tmp_path: Path) -> None:
    """``agent_process(classes=...)`` closes the agent's class list: after one label the calibrated prior
    spreads mass over the two classes nobody labelled (an open list would know only the labelled one and
    answer with confidence 1)."""
    from agent import client
    from bench.cifar10.ingest import ingest_items
    from bench.cifar10.process import agent_process, declarable, wait_embedded
    from shortlist.datasets import iter_images
    from shortlist.v1 import agent_pb2

    registry = tmp_path / "models"
    version = publish_linear(registry, size=(8, 8), dim=16)
    items = list(iter_images(tiny_cifar, "train"))
    with agent_process(tmp_path / "agent", registry, tmp_path / "agent.log", classes=CLASSES) as address:
        stub = client.connect(address)
        status = stub.GetStatus(agent_pb2.GetStatusRequest())
        assert list(status.classes) == CLASSES and not status.classes_open
        ingest_items(stub, items)
        wait_embedded(stub, len(items), version)
        first = next(it.id for it in items if it.id.startswith("circle"))
        assert not client.submit_labels(stub, [(first, "circle")]).rejected
        priors = list(stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn")))
    assert len(priors) == len(items) - 1
    assert all(set(p.probs) == set(CLASSES) for p in priors)
    assert all(p.probs["square"] > 0.05 and p.probs["stripe"] > 0.05 and p.confidence < 0.95 for p in priors)
    assert declarable(CLASSES) and not declarable(["a,b", "c"]) and not declarable([" a"]) and not declarable([])
    with pytest.raises(ValueError, match="--classes"), agent_process(tmp_path / "other", registry,
                                                                     tmp_path / "agent.log", classes=["a,b"]):
        pass


def test_a_wrong_data_folder_fails_at_once_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "only-train" / "train" / "cat").mkdir(parents=True)
    for data in (tmp_path / "missing", tmp_path / "only-train"):
        for cmd in (["bench", "cifar10", "--data", str(data), "--out", str(tmp_path / "out")],
                    ["bench", "embeddings", "--encoder", str(tmp_path), "--data", str(data), "--out",
                     str(tmp_path / "emb")]):
            result = CliRunner().invoke(app, cmd)
            assert result.exit_code == 2, result.output
            assert "pass --data" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_rerun_into_the_same_folder_resumes_the_finished_runs(tiny_cifar: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun reuses the (strategy, seed) runs results.json already holds with the same settings,
    embeddings and code, runs only the rest, and starts over (saying why) when one differs."""
    encoder = tmp_path / "encoder"
    publish_linear(encoder, size=(8, 8), dim=16)
    out = tmp_path / "out"
    common = ["bench", "cifar10", "--data", str(tiny_cifar), "--profile", "quick", "--encoder", str(encoder),
              "--seeds", "1", "--budgets", "3,6", "--out", str(out)]
    first = CliRunner().invoke(app, [*common, "--strategies", "random", "--prior-methods", "knn"])
    assert first.exit_code == 0, first.output
    before = json.loads((out / "results.json").read_text())["records"]

    more = CliRunner().invoke(app, [*common, "--strategies", "random,kmedoids", "--prior-methods", "knn"])
    assert more.exit_code == 0, more.output
    assert "resuming: 1 finished (strategy, seed) runs reused" in more.output
    run = json.loads((out / "results.json").read_text())
    assert run["complete"] and not run["skipped"]
    # random's records are the first run's, timings included (a re-run would have measured new ones)
    assert [r for r in run["records"] if r["strategy"] == "random"] == before
    assert {r["budget"] for r in run["records"] if r["strategy"] == "kmedoids"} == {3, 6}
    assert (out / "results.md").read_text().count("| kmedoids |") >= 3

    # fewer strategies: random is reused, kmedoids kept (it was deleted), and the reused runs' time is said
    fewer = CliRunner().invoke(app, [*common, "--strategies", "random", "--prior-methods", "knn"])
    assert fewer.exit_code == 0, fewer.output
    assert "kept 1 finished runs this command does not ask for (kmedoids seed 0)" in " ".join(fewer.output.split())
    again = json.loads((out / "results.json").read_text())
    assert sorted(map(json.dumps, again["records"])) == sorted(map(json.dumps, run["records"]))
    assert again["strategies"] == ["random", "kmedoids"]
    assert again["wall_seconds"]["reused_runs"] > 0
    assert "min of runs reused from an earlier run" in (out / "results.md").read_text()

    other = CliRunner().invoke(app, [*common, "--strategies", "random", "--prior-methods", "knn,llgc"])
    assert other.exit_code == 0, other.output
    assert "not resuming" in other.output and "prior_methods" in other.output
    assert {r["prior_method"] for r in json.loads((out / "results.json").read_text())["records"]} == {"knn", "llgc"}

    monkeypatch.setattr(cifar10_run, "code_fingerprint", lambda: "changed code")
    changed = CliRunner().invoke(app, [*common, "--strategies", "random", "--prior-methods", "knn,llgc"])
    assert changed.exit_code == 0, changed.output
    assert "not resuming" in changed.output and "code" in changed.output


def test_the_code_fingerprint_follows_the_code_not_the_docs(tmp_path: Path) -> None:
    """Uncommitted or committed, a change to a source file changes it; docs and caches do not."""
    from bench.cifar10.encoder import code_fingerprint

    (tmp_path / "agent" / "__pycache__").mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "agent" / "a.py").write_text("x = 1\n")
    (tmp_path / "docs" / "d.md").write_text("figures\n")
    first = code_fingerprint(tmp_path)
    (tmp_path / "docs" / "d.md").write_text("new figures\n")
    (tmp_path / "agent" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert code_fingerprint(tmp_path) == first
    (tmp_path / "agent" / "a.py").write_text("x = 2\n")
    assert code_fingerprint(tmp_path) != first
    (tmp_path / "agent" / "a.py").write_text("x = 1\n")
    (tmp_path / "agent" / "b.py").write_text("")
    assert code_fingerprint(tmp_path) != first


def test_a_training_run_already_exported_into_the_registry_is_served_again(tmp_path: Path) -> None:
    """publish_encoder's rerun rule: the newest version exported from this run's current encoder.pt is
    served as it is (ONNX export is not byte-for-byte repeatable); a newer encoder.pt is exported again."""
    import os
    from types import SimpleNamespace

    from bench.cifar10.encoder import _exported_from

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "encoder.pt").write_bytes(b"weights")
    os.utime(run_dir / "encoder.pt", (1_700_000_000, 1_700_000_000))  # 2023-11-14T22:13:20Z
    later, earlier = "2023-11-15T00:00:00+00:00", "2023-11-14T00:00:00+00:00"
    assert _exported_from(SimpleNamespace(source_run=str(run_dir), created=later), run_dir)
    assert not _exported_from(SimpleNamespace(source_run=str(run_dir), created=earlier), run_dir)  # retrained
    assert not _exported_from(SimpleNamespace(source_run=str(tmp_path / "other"), created=later), run_dir)
    assert not _exported_from(SimpleNamespace(source_run="", created=later), run_dir)


def test_unknown_strategy_or_prior_names_are_usage_errors_before_any_work() -> None:
    """A typo in --strategies or --prior-methods stops the command at once (each run would fail alone and
    the benchmark end 'complete' with an empty table)."""
    import typer

    from bench.cifar10.commands import check_names

    check_names(["random", "typiclust"], ["knn"])
    with pytest.raises(typer.BadParameter, match=r"unknown strategy randon; valid: as3l, audit"):
        check_names(["randon"], None)
    with pytest.raises(typer.BadParameter, match=r"unknown prior method knnn; valid: as3l, knn, llgc"):
        check_names(None, ["knnn"])


def test_budgets_that_reach_the_pool_are_refused_before_pretraining(tiny_cifar: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "cifar10", "--data", str(tiny_cifar), "--profile", "quick",
                                      "--strategies", "random", "--budgets", "3,5000", "--out", str(tmp_path / "o")])
    text = " ".join("".join(c for c in result.output if c not in "│╭╮╰╯─").split())
    assert result.exit_code == 2 and "reach the pool's 60 images; they must stay below it" in text, text
    assert not (tmp_path / "o" / "encoder").exists()


def test_a_run_skipped_on_an_agent_error_exits_1_and_a_rerun_retries_it(tiny_cifar: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent that dies under one (strategy, seed) run costs that run, not the others; the command then
    exits 1 (a backgrounded run ended 0 with holes in its table), and the same command again runs only it."""
    encoder = tmp_path / "encoder"
    publish_linear(encoder, size=(8, 8), dim=16)
    out = tmp_path / "out"
    args = ["bench", "cifar10", "--data", str(tiny_cifar), "--profile", "quick", "--encoder", str(encoder),
            "--seeds", "1", "--budgets", "3,6", "--out", str(out), "--strategies", "random,kmedoids",
            "--prior-methods", "knn"]

    class AgentDied(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

        def details(self) -> str:
            return "Socket closed"

    real = cifar10_run.run_strategy

    def dies_under_random(client_: object, strategy: str, *a: object, **k: object) -> object:
        if strategy == "random":
            raise AgentDied()
        return real(client_, strategy, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(cifar10_run, "run_strategy", dies_under_random)
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 1, first.output
    assert "skipped random seed 0: UNAVAILABLE: Socket closed" in first.output
    assert "1 (strategy, seed) run(s) skipped" in first.output and "run the same command again" in first.output
    run = json.loads((out / "results.json").read_text())
    assert run["skipped"] == [{"strategy": "random", "seed": 0, "error": "UNAVAILABLE: Socket closed"}]
    assert {r["strategy"] for r in run["records"]} == {"kmedoids"}

    monkeypatch.setattr(cifar10_run, "run_strategy", real)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "resuming: 1 finished (strategy, seed) runs reused" in again.output
    run = json.loads((out / "results.json").read_text())
    assert not run["skipped"] and {r["strategy"] for r in run["records"]} == {"random", "kmedoids"}


def test_a_torchvision_cifar10_folder_is_ingested_as_pixels(tmp_path: Path) -> None:
    """torchvision's CIFAR-10 batches hold pixels, no file bytes: the benchmark's ingest sent empty payloads
    (every sample rejected, "empty image payload"); it sends the pixels as a Tensor, as `shortlist ingest`."""
    import pickle

    from bench.cifar10.ingest import ingest_items
    from shortlist.datasets import iter_images
    from tests.agent.conftest import start

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane", b"automobile"]}, f)
    data = np.random.default_rng(0).integers(0, 256, size=(4, 3 * 32 * 32), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [0, 1, 1, 0]}, f)
    items = list(iter_images(tmp_path, "train"))
    assert items[0].encoded is None and items[0].pixels is not None
    registry = tmp_path / "models"
    publish_linear(registry, size=(8, 8), dim=16)
    r = start(tmp_path / "agent", registry)
    try:
        assert ingest_items(r.stub, items) == 20
    finally:
        r.stop()


def test_the_benchmarks_agent_does_not_import_from_the_working_folder(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``agent_process`` runs ``python -P -m shortlist.cli serve``: a json.py in the folder the benchmark was
    started from is not imported (nor run) by the agent, which starts and answers."""
    from agent import client
    from bench.cifar10.process import agent_process
    from shortlist.v1 import agent_pb2

    registry = tmp_path / "models"
    publish_linear(registry, size=(8, 8), dim=16)
    cwd = tmp_path / "started-from"
    cwd.mkdir()
    (cwd / "json.py").write_text(f"open({str(cwd / 'RAN')!r}, 'w').write('ran')\nraise SystemExit(3)\n")
    monkeypatch.chdir(cwd)
    with agent_process(tmp_path / "agent", registry, tmp_path / "agent.log") as address:
        assert client.connect(address).GetStatus(agent_pb2.GetStatusRequest(), timeout=30).model_version == "v0001"
    assert not (cwd / "RAN").exists()


def test_ctrl_c_says_what_is_kept_and_that_the_same_command_resumes(tiny_cifar: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (KeyboardInterrupt) during the second (strategy, seed) run: the command stops with exit 130 and
    one line naming the finished runs results.json keeps and the way to resume, not silently."""
    encoder = tmp_path / "encoder"
    publish_linear(encoder, size=(8, 8), dim=16)
    out = tmp_path / "out"
    real = cifar10_run.run_strategy

    def ctrl_c_under_kmedoids(client_: object, strategy: str, *a: object, **k: object) -> object:
        if strategy == "kmedoids":
            raise KeyboardInterrupt
        return real(client_, strategy, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(cifar10_run, "run_strategy", ctrl_c_under_kmedoids)
    result = CliRunner().invoke(app, [
        "bench", "cifar10", "--data", str(tiny_cifar), "--profile", "quick", "--encoder", str(encoder),
        "--seeds", "1", "--budgets", "3,6", "--out", str(out), "--strategies", "random,kmedoids",
        "--prior-methods", "knn"])
    assert result.exit_code == 130, result.output
    said = " ".join(result.output.split())
    assert (f"interrupted: {out / 'results.json'} keeps the 1 finished (strategy, seed) run; run the same "
            "`shortlist bench cifar10` command again to resume") in said, said
    assert not json.loads((out / "results.json").read_text())["complete"]


def test_a_pool_that_cannot_be_class_balanced_names_the_short_classes(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """--pool 30 of three classes asks 10 per class; square has 4: the subset takes all 4 and fills from the
    others, and a note says so (it filled silently, though the option is called class-balanced)."""
    from bench.cifar10.data import load_pool_and_test

    rng = np.random.default_rng(0)
    for split, counts in (("train", (20, 4, 20)), ("test", (3, 3, 3))):
        for c, n in zip(CLASSES, counts, strict=True):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "d" / split / c / f"{i}.png")
    train, pool_idx, _, _ = load_pool_and_test(tmp_path / "d", 30, None)
    assert np.bincount(train.labels[pool_idx]).tolist() == [13, 4, 13]  # circle, square, stripe (sorted)
    err = " ".join(capsys.readouterr().err.split())
    assert (f"note: {tmp_path / 'd'} (pool): the 30-image subset is class-balanced (10 per class) only where a "
            "class has 10 images; square 4 (all taken), so the rest came from the other classes at random: per "
            "class circle 13, square 4, stripe 13") in err, err
    load_pool_and_test(tmp_path / "d", 12, None)  # 4 per class: every class has them, no note
    assert "note" not in capsys.readouterr().err


def _folder(root: Path, splits: dict[str, tuple[str, ...]]) -> Path:
    """An ImageFolder under ``root`` with 3 tiny images per class of each split."""
    rng = np.random.default_rng(0)
    for split, classes in splits.items():
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_one_class_or_a_test_class_the_train_split_lacks_is_one_error_line(tmp_path: Path) -> None:
    """Both bench commands that read a folder refuse, exit 2, in one line: one class (every accuracy would be
    100%), and a test class that no training image has (naming the split and the class)."""
    one = _folder(tmp_path / "one", {"train": ("a",), "test": ("a",)})
    mism = _folder(tmp_path / "mism", {"train": ("a", "b"), "test": ("a", "c")})
    for data, said in ((one, f"error: {one} (split 'train') has 1 class; a benchmark needs at least 2 (every "
                              "accuracy would be 100%)"),
                       (mism, f"error: labels ['c'] of {mism} (split 'test') are not among the classes ['a', 'b']; "
                              "every test class needs training images")):
        for cmd in (["bench", "cifar10", "--data", str(data), "--out", str(tmp_path / "out")],
                    ["bench", "embeddings", "--encoder", str(tmp_path), "--data", str(data), "--out",
                     str(tmp_path / "emb")]):
            result = CliRunner().invoke(app, cmd)
            assert result.exit_code == 2, result.output
            assert result.output.strip() == said


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_during_its_own_pretraining_says_to_rerun_the_same_command(tmp_path: Path, signal_name: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C or SIGTERM while `bench cifar10` pretrains its encoder: the training loop checkpoints and stops;
    the command prints its one interrupted line (rerun the same `bench cifar10` command, which has no
    --resume), exit 130, no traceback naming `shortlist pretrain`'s --resume."""
    from bench.cifar10 import Profile
    from bench.cifar10.profiles import PROFILES
    from training import loop

    colour_folders(tmp_path / "data", CLASSES, (("train", 12), ("test", 4)), seed=1)
    monkeypatch.setitem(PROFILES, "quick", Profile(
        name="quick", pool_size=30, test_size=12, pretrain_minutes=0.02, arch="resnet18_w32", method="simsiam",
        seeds=1, budgets=("3",), strategies=("random",), prior_methods=("knn",),
        pretrain_options={"batch_size": 8, "threads": 1, "progress": False}))

    class SignalledAtOnce(loop.StopFlag):  # the signal, as its handler records it, before the first step ends
        def __enter__(self) -> loop.StopFlag:
            super().__enter__()
            self._handle(getattr(signal, signal_name), None)
            return self

    import signal

    monkeypatch.setattr(loop, "StopFlag", SignalledAtOnce)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", "cifar10", "--data", str(tmp_path / "data"), "--profile", "quick",
                                      "--out", str(out)])
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output and "--resume" not in result.output
    said = " ".join(result.output.split())
    assert (f"interrupted: no (strategy, seed) run had finished; {out / 'pretrain'} keeps the pretraining's last "
            "checkpoint; run the same `shortlist bench cifar10` command again to resume") in said, said
    assert (out / "pretrain" / loop.CHECKPOINT).is_file() and not (out / "pretrain" / loop.SUMMARY).exists()


@pytest.mark.parametrize(("budgets", "said"), [
    ("0", "budget '0' gives 0 labels; budgets must be positive"),
    ("3,-2", "budget '-2' gives -2 labels; budgets must be positive"),
    ("0%", "budget '0%': a percentage of the pool must be above 0 and below 100%"),
    ("inf%", "budget 'inf%': a percentage of the pool must be above 0 and below 100%"),
    ("ten", "budget 'ten' is neither a count nor a percentage like 1%"),
])
def test_bad_budgets_are_refused_before_the_data_is_loaded(tiny_cifar: Path, tmp_path: Path, budgets: str,
                                                           said: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """--budgets 0 was refused only once the data was loaded (CIFAR-10: about 100 s of silence first); every
    entry that cannot be a budget whatever the pool is now refused at once, exit 2, nothing written."""
    def not_yet(*a: object, **k: object) -> None:
        raise AssertionError("the data was loaded before --budgets was checked")

    monkeypatch.setattr(cifar10_run, "load_pool_and_test", not_yet)
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["bench", "cifar10", "--data", str(tiny_cifar), "--profile", "quick",
                                      "--budgets", budgets, "--out", str(out)], env={"COLUMNS": "300"})
    text = " ".join("".join(c for c in result.output if c not in "│╭╮╰╯─").split())
    assert result.exit_code == 2 and f"Invalid value for '--budgets': {said}" in text, text
    assert not out.exists()
    from bench.cifar10.profiles import PROFILES

    with pytest.raises(typer.BadParameter, match="budget"):  # run_benchmark, called from Python, checks them too
        cifar10_run.run_benchmark(tiny_cifar, PROFILES["quick"], out, overrides=cifar10_run.Overrides(
            budgets=budgets.split(",")))
    assert not out.exists()


def test_a_semi_supervised_point_that_is_no_label_count_is_a_usage_error(tiny_cifar: Path, tmp_path: Path) -> None:
    """--semi-supervised-at abc ended in a ValueError traceback from int()."""
    for at in ("abc", "10,0"):
        result = CliRunner().invoke(app, ["bench", "cifar10", "--data", str(tiny_cifar), "--semi-supervised-at", at,
                                          "--out", str(tmp_path / "o")], env={"COLUMNS": "300"})
        assert result.exit_code == 2 and "Invalid value for '--semi-supervised-at'" in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / "o").exists()
