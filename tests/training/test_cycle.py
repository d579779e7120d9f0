"""A full retraining cycle against a real agent on loopback: pull, train, export, publish, reload."""

from __future__ import annotations

import io
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
from training.cycle import run_cycle


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

        first = run_cycle(address, models, tmp_path / "run1", mode="full", steps=2, preprocess=PRE, threads=1)
        assert (first.version_before, first.published) == ("", "v0001")
        assert first.samples == 12 and first.labeled == 12  # full fine-tuning pulls labelled samples only
        status = _wait_embedded(stub, "v0001")
        assert status.samples == 30
        newest = newest_complete(models)
        assert newest is not None and newest[1].classes == CLASSES and newest[1].has_logits

        # AS3L: every sample, priors from the agent's PriorLabels over the v0001 embeddings
        second = run_cycle(address, models, tmp_path / "run2", mode="as3l", init=str(tmp_path / "run1"), steps=2,
                           prior_method="knn", preprocess=PRE, threads=1)
        assert (second.version_before, second.published) == ("v0001", "v0002")
        assert second.samples == 30 and second.labeled == 12
        assert second.summary["unlabeled"] == 18
        _wait_embedded(stub, "v0002")

        # the served model takes another input size than --init's run: the images are pulled at the run's
        # (was: at the newest registry version's, and the fine-tuning refused them)
        from agent.testing import publish_linear

        assert publish_linear(models, size=(12, 12), dim=8, classes=CLASSES) == "v0003"
        _wait_embedded(stub, "v0003")
        third = run_cycle(address, models, tmp_path / "run-linear", mode="linear", init=str(tmp_path / "run1"),
                          preprocess=PRE, threads=1)
        assert third.published == "v0004" and third.labeled == 12
        _wait_embedded(stub, "v0004")

        # published where the agent does not look: said, not reported as if served
        from rich.console import Console

        from training import cycle

        monkeypatch.setattr(cycle, "PICKUP_WAIT_S", 0.5)
        said = Console(file=io.StringIO(), width=400)
        run_cycle(address, tmp_path / "elsewhere", tmp_path / "run3", mode="linear", init=str(tmp_path / "run1"),
                  preprocess=PRE, threads=1, console=said)
        text = said.file.getvalue()  # type: ignore[attr-defined]
        assert "published v0001 (agent serving v0004)" in text
        assert f"the agent has not taken v0001 up: is {tmp_path / 'elsewhere'} the folder it serves" in text
    finally:
        stop_server(server, agent, grace=1.0)
