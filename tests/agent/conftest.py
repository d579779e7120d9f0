"""Fixtures for the agent's tests: a registry with a tiny linear ONNX model (agent.testing, no torch)
and the real gRPC server on a loopback port."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from agent import client
from agent.config import AgentConfig
from agent.core import Agent
from agent.service import create_server, stop_server
from agent.testing import publish_linear
from shortlist.v1 import agent_pb2, agent_pb2_grpc

CLASSES = ["cat", "dog", "frog"]
SIZE = (8, 8)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def make_images(n: int, seed: int = 0, hw: tuple[int, int] = (12, 10)) -> list[np.ndarray]:
    """n random HxWx3 uint8 images in 3 colour clusters (class i has a bright channel i)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.integers(0, 80, (*hw, 3), dtype=np.uint8)
        img[:, :, i % 3] += 150
        out.append(img)
    return out


def make_samples(n: int, prefix: str = "s", seed: int = 0, labels: int = 0) -> list[agent_pb2.Sample]:
    """n PNG samples ``{prefix}{i}``; the first ``labels`` carry their cluster's class as label; each has
    metadata {"site": "a" if i is even else "b"}."""
    return [client.image_sample(f"{prefix}{i}", png(img), label=CLASSES[i % 3] if i < labels else "",
                                metadata={"site": "a" if i % 2 == 0 else "b"})
            for i, img in enumerate(make_images(n, seed))]


@dataclass
class Running:
    server: grpc.Server
    port: int
    agent: Agent
    stub: agent_pb2_grpc.AgentStub
    channel: grpc.Channel
    data: Path
    models: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.channel.close()
        stop_server(self.server, self.agent, grace=1.0)


def start(data: Path, models: Path, **kw: Any) -> Running:
    """A real agent on a free loopback port; ``kw`` are AgentConfig fields (``limits=Limits(...)``), and
    create_server's ``interceptors`` / ``credentials``."""
    hooks = {k: kw.pop(k) for k in ("interceptors", "credentials") if k in kw}
    server, port, agent = create_server(AgentConfig(data, models, port=0, poll_s=0.2, use_cuda=False, **kw), **hooks)
    # No busy retries: the tests look at the agent's own answers (tests/agent/test_client.py retries).
    ch = client.channel(f"127.0.0.1:{port}", config=client.ClientConfig(busy_retry=client.BusyRetry.OFF))
    return Running(server, port, agent, agent_pb2_grpc.AgentStub(ch), ch, data, models)


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    reg = tmp_path / "models"
    publish_linear(reg, size=SIZE, dim=16, classes=CLASSES, rotation=True, seed=0)
    return reg


@pytest.fixture
def running(tmp_path: Path, registry: Path) -> Iterator[Running]:
    r = start(tmp_path / "data", registry)
    yield r
    r.stop()
