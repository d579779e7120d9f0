"""A full retraining cycle against a real agent on loopback: pull, train, export, publish, reload."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent import client
from agent.config import AgentConfig
from agent.service import create_server, stop_server
from shortlist.manifest import newest_complete
from shortlist.v1 import agent_pb2
from tests.training.conftest import CLASSES, PRE, make_images
from training.cycle import CycleConfig, run_cycle


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _wait_embedded(stub: object, version: str, timeout: float = 60.0) -> agent_pb2.Status:
    deadline = time.monotonic() + timeout
    while True:
        st: agent_pb2.Status = stub.GetStatus(agent_pb2.GetStatusRequest())  # type: ignore[attr-defined]
        if st.model_version == version and st.embedded == st.samples and not st.pending_model_version:
            return st
        assert time.monotonic() < deadline, f"agent did not finish embedding {version}: {st}"
        time.sleep(0.2)


def test_cycle_against_real_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    models.mkdir()
    server, port, agent = create_server(AgentConfig(tmp_path / "data", models, port=0, classes=tuple(CLASSES),
                                                    poll_s=0.2, use_cuda=False))
    try:
        address = f"127.0.0.1:{port}"
        stub = client.connect(address)
        imgs, labels = make_images(30, seed=3)
        samples = [client.image_sample(f"s{i}", _png(img), label=CLASSES[c] if i < 12 else "")
                   for i, (img, c) in enumerate(zip(imgs, labels, strict=True))]
        reply = client.ingest(stub, samples)
        assert reply.accepted == 30

        first = run_cycle(address, CycleConfig(models, tmp_path / "run1", mode="full", steps=2, preprocess=PRE,
                                               threads=1))
        assert (first.version_before, first.published) == ("", "v0001")
        assert first.samples == 12 and first.labeled == 12  # full fine-tuning pulls labelled samples only
        status = _wait_embedded(stub, "v0001")
        assert status.samples == 30
        newest = newest_complete(models)
        assert newest is not None and newest[1].classes == CLASSES and newest[1].has_logits

        # AS3L: every sample, priors from the agent's PriorLabels over the v0001 embeddings
        second = run_cycle(address, CycleConfig(models, tmp_path / "run2", mode="as3l", init=str(tmp_path / "run1"),
                                                steps=2, prior_method="knn", preprocess=PRE, threads=1))
        assert (second.version_before, second.published) == ("v0001", "v0002")
        assert second.samples == 30 and second.labeled == 12
        assert second.summary["unlabeled"] == 18
        _wait_embedded(stub, "v0002")

        # the served model takes another input size than --init's run: the images are pulled at the run's
        # (was: at the newest registry version's, and the fine-tuning refused them)
        from agent.testing import publish_linear

        assert publish_linear(models, size=(12, 12), dim=8, classes=CLASSES) == "v0003"
        _wait_embedded(stub, "v0003")
        third = run_cycle(address, CycleConfig(models, tmp_path / "run-linear", mode="linear",
                                               init=str(tmp_path / "run1"), preprocess=PRE, threads=1))
        assert third.published == "v0004" and third.labeled == 12
        _wait_embedded(stub, "v0004")

        # a registry the agent does not serve from (it serves v0004, which neither holds): refused before training,
        # naming both (was: trained, published there and exited 0 with "the agent has not taken v0001 up")
        from training.cycle import CycleRefused

        other = tmp_path / "other"
        assert publish_linear(other, size=(12, 12), dim=8, classes=CLASSES) == "v0001"
        for registry, has in ((tmp_path / "elsewhere", "it holds no version"),
                              (other, "its newest version is v0001")):
            with pytest.raises(CycleRefused) as refused:
                run_cycle(address, CycleConfig(registry, tmp_path / "run3", mode="linear",
                                               init=str(tmp_path / "run1"), preprocess=PRE, threads=1))
            said = str(refused.value)
            assert f"the agent at {address} serves v0004, which --models {registry} does not hold ({has})" in said
            assert "Pass the registry the agent serves (the --models of its `shortlist serve`)" in said
        assert not (tmp_path / "run3").exists() and not (tmp_path / "elsewhere").exists()
        assert [p.name for p in other.iterdir() if not p.name.startswith(".")] == ["v0001"]  # nothing published
    finally:
        stop_server(server, agent, grace=1.0)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _said(result: object) -> str:
    return " ".join(result.output.split())  # type: ignore[attr-defined]  # rich wraps long lines


def test_cycle_checks_its_options_before_connecting_or_training(tmp_path: Path) -> None:
    """A --models that is a file or a training run folder, and every other option that can be checked, is
    refused before the agent is asked anything (it was found at publishing, after the whole training budget);
    nothing listens at the address, so a check made after connecting would say UNAVAILABLE instead."""
    from typer.testing import CliRunner

    from shortlist.cli import app
    from training import loop

    nobody = f"127.0.0.1:{_free_port()}"
    run = tmp_path / "pre"  # a training run folder (what `shortlist pretrain --out` makes)
    run.mkdir()
    (run / loop.ENCODER).write_bytes(b"weights")
    (run / loop.SUMMARY).write_text("{}")
    notes = tmp_path / "make_data.py"
    notes.write_text("print()\n")
    out = tmp_path / "cycle"
    for kwargs, said in (({"models": notes}, "make_data.py is a file: --models takes the registry folder"),
                         ({"models": run}, "is a training run folder, not a model registry"),
                         ({"mode": "simsiam", "init": str(run)}, "does not use --init"),
                         ({"mode": "full", "init": str(run), "out": run}, "is the --init run"),
                         ({"device": "gpu"}, "--device 'gpu': give auto, cpu or cuda"),
                         ({"arch": "resnet7"}, "unknown arch 'resnet7'"),
                         ({"mode": "lineer"}, "unknown cycle mode 'lineer'"),
                         ({"mode": "rotnet", "method_options": {"proj_dim": 8}},
                          "rotnet has no option proj_dim; valid: none"),
                         ({"mode": "full", "method_options": {"tau": "0.1"}},
                          "--method-option sets the options of a pretraining method (simsiam, rotnet or moby); "
                          "--mode full has none"),
                         ({"mode": "full", "prior_method": "nope"},  # trained and published with exit 0
                          "--prior-method sets where the unlabelled samples' priors come from, which only --mode "
                          "as3l trains on; --mode full uses none: leave it out"),
                         ({"mode": "linear", "init": str(run), "prior_method": "knn"}, "--mode linear uses none"),
                         ({"mode": "simsiam", "prior_method": "knn"}, "--mode simsiam uses none")):
        args: dict[str, object] = {"models": tmp_path / "models", "out": out, "mode": "full", "steps": 1, **kwargs}
        with pytest.raises(ValueError, match=re.escape(said)):
            run_cycle(nobody, CycleConfig(**args))  # type: ignore[arg-type]
    (run / loop.CHECKPOINT).write_bytes(b"state")  # stopped by a signal in an older version: unfinished
    (run / loop.SUMMARY).unlink()
    with pytest.raises(ValueError, match="unfinished training run"):
        run_cycle(nobody, CycleConfig(tmp_path / "models", out, mode="linear", init=str(run)))
    assert not out.exists() and not (tmp_path / "models").exists()

    # the CLI: a bad option is a usage error (2); an agent that cannot be reached is 1, as for `shortlist status`
    base = ["cycle", "--agent", nobody, "--out", str(out), "--mode", "full", "--steps", "1"]
    bad = CliRunner().invoke(app, [*base, "--models", str(notes)], env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "--models takes the registry folder" in _said(bad) and "Traceback" not in bad.output
    away = CliRunner().invoke(app, [*base, "--models", str(tmp_path / "models")], env={"COLUMNS": "200"})
    assert away.exit_code == 1 and "UNAVAILABLE" in _said(away) and "connection refused" in _said(away)
    prior = CliRunner().invoke(app, [*base, "--models", str(tmp_path / "models"), "--prior-method", "nope"],
                               env={"COLUMNS": "200"})
    assert prior.exit_code == 2 and "--mode full uses none: leave it out" in _said(prior)
    assert not out.exists()


def test_a_cycle_stopped_by_ctrl_c_publishes_nothing_and_says_what_to_do(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 130, nothing published, and a hint cycle takes (it said "continue with --resume", which cycle has
    not); the run folder is unfinished, so `shortlist export` refuses it too."""
    import os
    import signal

    from typer.testing import CliRunner

    from shortlist.cli import app
    from tests.agent.conftest import make_samples, start
    from training import finetune as finetune_module
    from training import loop

    real, calls = finetune_module.augment, [0]

    def augment(*args: object, **kwargs: object) -> object:  # Ctrl-C at the second training step
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(finetune_module, "augment", augment)
    models, out = tmp_path / "models", tmp_path / "cycle"
    agent = start(tmp_path / "data", models)
    try:
        assert client.ingest(agent.stub, make_samples(6, labels=6)).accepted == 6  # 3 classes
        res = CliRunner().invoke(app, ["cycle", "--agent", agent.address, "--models", str(models), "--out", str(out),
                                       "--mode", "full", "--steps", "1000", "--threads", "1"], env={"COLUMNS": "200"})
    finally:
        agent.stop()
    said = _said(res)
    assert res.exit_code == 130, said
    assert "SIGINT: training stopped at step 2" in said and "nothing was published" in said
    assert "run `shortlist cycle` again" in said and "--resume" not in said
    assert [p.name for p in models.iterdir()] == [".cycle.lock"]  # nothing published, and the lock released
    assert not _holds_lock(models / ".cycle.lock")
    assert (out / loop.CHECKPOINT).is_file() and not (out / loop.ENCODER).exists()
    refused = CliRunner().invoke(app, ["export", "--run", str(out), "--models", str(models)], env={"COLUMNS": "200"})
    assert refused.exit_code == 2 and "unfinished training run" in _said(refused)
    assert "run `shortlist cycle` again" in _said(refused)


def test_cycle_refuses_a_pool_without_labels_of_two_classes(tmp_path: Path) -> None:
    """No labels: said as such, with how to label (was "no samples to train on"); labels of one class only: refused
    before training (a one-class classifier was published, and the uncertainty strategies then ranked the pool on
    all-zero scores). Both exit 1 (the agent's pool is not ready; the options are right) and publish nothing."""
    from typer.testing import CliRunner

    from shortlist.cli import app
    from tests.agent.conftest import make_samples, start

    models, out = tmp_path / "models", tmp_path / "cycle"
    agent = start(tmp_path / "data", models)
    try:
        assert client.ingest(agent.stub, make_samples(6)).accepted == 6
        cmd = ["cycle", "--agent", agent.address, "--models", str(models), "--out", str(out), "--mode", "full",
               "--steps", "1"]
        none = CliRunner().invoke(app, cmd, env={"COLUMNS": "200"})
        assert none.exit_code == 1, none.output
        assert "none of the agent's 6 samples is labelled" in _said(none) and "shortlist select" in _said(none)
        client.submit_labels(agent.stub, [("s0", "cat"), ("s3", "cat")])
        one = CliRunner().invoke(app, cmd, env={"COLUMNS": "200"})
        assert one.exit_code == 1, one.output
        assert "all of one class ('cat')" in _said(one) and "at least one sample of another class" in _said(one)
        # a mode that trains on priors: its --prior-method is checked against the agent's list before the pull
        client.submit_labels(agent.stub, [("s1", "dog")])
        as3l = [*cmd[:-4], "--mode", "as3l", "--steps", "1"]
        prior = CliRunner().invoke(app, [*as3l, "--prior-method", "nope"], env={"COLUMNS": "200"})
        assert prior.exit_code == 2, prior.output
        assert "--prior-method 'nope' is not one of the agent's prior methods: " in _said(prior)
        assert "knn" in _said(prior).split("prior methods: ")[1]
        assert not out.exists() and not models.exists()  # nothing trained, nothing published
    finally:
        agent.stop()


def test_a_pretraining_cycle_on_a_pool_smaller_than_the_methods_batch(tmp_path: Path) -> None:
    """The user of a cycle does not choose the pool's size: a method's default batch (rotnet 128) larger than the
    agent's 20 samples is lowered to 20 and said (was: "lower --batch-size", an option cycle did not have). An
    explicit --batch-size larger than the pool is refused before training, naming it (exit 2, nothing published);
    --method-option reaches the method."""
    from typer.testing import CliRunner

    from shortlist.cli import app
    from tests.agent.conftest import make_samples, start
    from training import loop

    models, out, refused = tmp_path / "models", tmp_path / "cycle", tmp_path / "refused"
    agent = start(tmp_path / "data", models)
    try:
        assert client.ingest(agent.stub, make_samples(20)).accepted == 20
        cmd = ["cycle", "--agent", agent.address, "--models", str(models), "--steps", "1", "--threads", "1"]
        ok = CliRunner().invoke(app, [*cmd, "--out", str(out), "--mode", "moby", "--method-option", "queue=64",
                                      "--method-option", "hidden=32", "--json"], env={"COLUMNS": "200"})
        assert ok.exit_code == 0, ok.output
        said = json.loads(ok.stdout)  # --json: one line on stdout, the progress on stderr
        assert said["published"] == "v0001" and said["taken_up"] and said["mode"] == "moby"
        assert said["samples"] == 20 and said["steps"] == 1 and said["run"] == str(out)
        assert ("moby's default batch of 512 is larger than the agent's pool of 20 samples: training with batch 20"
                in _said(ok))
        config = json.loads((out / loop.CONFIG).read_text())
        assert config["batch_size"] == 20 and config["method_options"]["queue"] == 64
        assert config["method_options"]["hidden"] == 32
        newest = newest_complete(models)
        assert newest is not None and newest[0] == "v0001"

        big = CliRunner().invoke(app, [*cmd, "--out", str(refused), "--mode", "rotnet", "--batch-size", "64"],
                                 env={"COLUMNS": "200"})
        assert big.exit_code == 2, big.output
        assert "--batch-size 64 is larger than the agent's pool of 20 samples: give at most 20" in _said(big)
        bad = CliRunner().invoke(app, [*cmd, "--out", str(refused), "--mode", "moby", "--method-option",
                                       "temperature=0.1"], env={"COLUMNS": "200"})
        assert bad.exit_code == 2 and "moby has no option temperature; valid: hidden" in _said(bad), bad.output
        assert not (refused / loop.CONFIG).exists() and newest_complete(models)[0] == "v0001"  # type: ignore[index]
    finally:
        agent.stop()


def test_a_class_added_while_the_cycle_pulls_is_trained_and_said(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An annotator labels a sample with a NEW class between the cycle's GetStatus and its ListSamples (the window
    of a long pull; here a hook on client.list_labels, which run_cycle calls in it): the class is trained, and a
    line says so (was: ValueError "sample ... has label 'badger', not among [...]" after the whole pull, nothing
    trained)."""
    from rich.console import Console

    from tests.agent.conftest import make_samples, start

    models = tmp_path / "models"
    agent = start(tmp_path / "data", models)  # an open class list
    try:
        assert client.ingest(agent.stub, make_samples(12, labels=9)).accepted == 12
        real = client.list_labels

        def labelling_meanwhile(stub: object, *a: object, **k: object) -> list[object]:
            out: list[object] = list(real(stub, *a, **k))  # type: ignore[arg-type]
            client.submit_labels(agent.stub, [("s11", "badger")])
            return out

        monkeypatch.setattr(client, "list_labels", labelling_meanwhile)
        console = Console(file=io.StringIO(), width=300)
        result = run_cycle(agent.address, CycleConfig(models, tmp_path / "run", mode="full", steps=1,
                                                      preprocess=PRE, threads=1), console=console)
        said = console.file.getvalue()  # type: ignore[attr-defined]
        assert result.published == "v0001" and result.labeled == 10
        assert "badger" in result.classes and result.classes == list(
            agent.stub.GetStatus(agent_pb2.GetStatusRequest()).classes)
        assert "class list changed while the samples were pulled: training 'badger' too" in said, said
        newest = newest_complete(models)
        assert newest is not None and newest[1].classes == result.classes
    finally:
        agent.stop()


def test_a_version_the_agent_does_not_take_up_exits_1_with_the_reason(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent that serves no model yet cannot be told apart from the registry's contents before training; a
    version published where it does not look is then said as an error and the command exits 1 (was: a yellow
    line and exit 0); --json still prints what changed, with taken_up false and the reason."""
    from typer.testing import CliRunner

    from shortlist.cli import app
    from tests.agent.conftest import make_samples, start
    from training import cycle

    monkeypatch.setattr(cycle, "PICKUP_WAIT_S", 0.5)
    agent = start(tmp_path / "data", tmp_path / "served")  # no model there
    try:
        assert client.ingest(agent.stub, make_samples(6, labels=6)).accepted == 6
        other, out = tmp_path / "other", tmp_path / "run"
        res = CliRunner().invoke(app, ["cycle", "--agent", agent.address, "--models", str(other), "--out", str(out),
                                       "--mode", "full", "--steps", "1", "--threads", "1", "--json"],
                                 env={"COLUMNS": "200"})
        said = _said(res)
        assert res.exit_code == 1, said
        assert f"error: the agent has not taken v0001 up: is {other} the folder it serves" in said
        line = json.loads(res.stdout.strip().splitlines()[-1])
        assert line["published"] == "v0001" and line["taken_up"] is False
        assert line["not_taken_up"].startswith("the agent has not taken v0001 up")
    finally:
        agent.stop()


def _holds_lock(path: Path) -> bool:
    import fcntl
    import os

    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_one_cycle_at_a_time_per_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second cycle into a registry a cycle holds is refused at once (exit 1, nothing trained), naming the
    holder's pid, start time and run folder (was: both trained on the same labels and published the same model
    twice); the lock is held during the training and released however the cycle ends."""
    import os

    from typer.testing import CliRunner

    from shortlist.cli import app
    from tests.agent.conftest import make_samples, start
    from training import cycle

    models = tmp_path / "models"
    lock = models / cycle.CYCLE_LOCK_NAME
    agent = start(tmp_path / "data", models)
    try:
        assert client.ingest(agent.stub, make_samples(6, labels=6)).accepted == 6
        with cycle.cycle_lock(models, agent.address, tmp_path / "first"):  # another cycle, in its training
            res = CliRunner().invoke(app, ["cycle", "--agent", agent.address, "--models", str(models), "--out",
                                           str(tmp_path / "second"), "--mode", "full", "--steps", "1"],
                                     env={"COLUMNS": "200"})
        said = _said(res)
        assert res.exit_code == 1, said
        assert f"another `shortlist cycle` is publishing into {models}: pid {os.getpid()}, started 20" in said
        assert f"training into {tmp_path / 'first'}" in said
        assert not (tmp_path / "second").exists() and newest_complete(models) is None
        assert not _holds_lock(lock) and lock.read_text() == ""  # released, and no holder named any more

        seen: list[bool] = []
        real_train = cycle._train

        def train(*args: object) -> None:
            seen.append(_holds_lock(lock))
            real_train(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(cycle, "_train", train)
        result = run_cycle(agent.address, CycleConfig(models, tmp_path / "run", mode="full", steps=1,
                                                      preprocess=PRE, threads=1))
        assert result.published == "v0001" and seen == [True] and not _holds_lock(lock)

        def failing(*args: object) -> None:
            raise RuntimeError("out of memory")

        monkeypatch.setattr(cycle, "_train", failing)
        with pytest.raises(RuntimeError, match="out of memory"):
            run_cycle(agent.address, CycleConfig(models, tmp_path / "run2", mode="full", steps=1,
                                                 preprocess=PRE, threads=1))
        assert not _holds_lock(lock)
    finally:
        agent.stop()


def test_a_cycle_records_the_labels_it_trained_on_and_verifies_on_pulled_images(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run folder gets labels.csv (id,label of each labelled sample trained on) and pull.json (the agent's
    label revision they are a snapshot of), and the printout names both; a label given during the training is
    in neither. The export is verified on real images, the pulled ones (was: on a random batch only, as the
    run's data set `agent:HOST:PORT` cannot be read back)."""
    import csv

    from rich.console import Console

    from tests.agent.conftest import CLASSES as AGENT_CLASSES
    from tests.agent.conftest import make_samples, start
    from training import cycle

    models, out = tmp_path / "models", tmp_path / "run"
    agent = start(tmp_path / "data", models)
    try:
        assert client.ingest(agent.stub, make_samples(12, labels=9)).accepted == 12
        client.submit_labels(agent.stub, [("s0", "dog")])  # a change: the revision is not the labelled count
        revision = agent.stub.GetStatus(agent_pb2.GetStatusRequest()).label_events
        assert revision == 10
        real_train = cycle._train

        def labelling_meanwhile(*args: object) -> None:
            client.submit_labels(agent.stub, [("s10", "frog"), ("s1", "cat")])
            real_train(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(cycle, "_train", labelling_meanwhile)
        console = Console(file=io.StringIO(), width=1000)
        result = run_cycle(agent.address, CycleConfig(models, out, mode="full", steps=1, preprocess=PRE,
                                                      threads=1), console=console)
        said = console.file.getvalue()  # type: ignore[attr-defined]
        with open(out / cycle.LABELS_FILE, newline="") as f:
            rows = list(csv.reader(f))
        expected = [("s0", "dog")] + [(f"s{i}", AGENT_CLASSES[i % 3]) for i in range(1, 9)]
        assert rows == [["id", "label"], *map(list, expected)]
        pull = json.loads((out / cycle.PULL_FILE).read_text())
        assert (pull["label_events"], pull["labeled"], pull["samples"]) == (revision, 9, 9)
        assert pull["agent"] == agent.address and result.label_events == revision
        assert f"9 labelled at the agent's label revision {revision}, listed in {out / 'labels.csv'}" in said
        assert f"9 labels (label revision {revision})" in said and result.as_json("full")["label_events"] == revision

        newest = newest_complete(models)
        assert newest is not None and newest[0] == result.published == "v0001"
        for runtime in ("onnx", "torchscript"):
            assert set(newest[1].verification[runtime]) == {"random", "real"}
            assert re.search(rf"verify {runtime} +real +batch +9:", said), said
    finally:
        agent.stop()
