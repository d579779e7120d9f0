"""Fixtures every web test shares: a tiny agent with a few dozen generated images, the web app on it
(through the same in-process Unix-socket channel as `shortlist serve --web-port`), FastAPI's TestClient,
and for ``@pytest.mark.browser`` tests the app on a free port driven by Debian's chromium via Playwright.

Browser tests are skipped when /usr/bin/chromium or playwright is missing, unless SHORTLIST_REQUIRE_BROWSER=1
(set by .ci/run, which installs both): then they fail. SHORTLIST_SCREENSHOTS=DIR makes ``shot`` save the
pages' screenshots there (docs/img for the docs).
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from agent import client
from agent.config import AgentConfig
from agent.core import Agent
from agent.pool_map import PoolMapData
from agent.security import ServerSecurity
from agent.service import create_server, stop_server
from agent.testing import publish_linear
from agent.web.app import create_app
from agent.web.config import WebConfig
from agent.web.server import LocalSocket, WebServer
from shortlist.v1 import agent_pb2, agent_pb2_grpc

BASE_URL = "http://127.0.0.1"  # TestClient's; the app's default names on loopback include 127.0.0.1
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SHAPES = ["circle", "square", "triangle"]
READ_TOKEN = "r" * 24
WRITE_TOKEN = "w" * 24
N_IMAGES = 36
LABELLED = 6  # the circles and squares among the first ones carry their shape as label (the class list
# starts as circle, square: "triangle" is a new class for the browser test to type)


def shape_image(i: int, side: int = 96) -> bytes:
    """Image ``i``: a shape (circle / square / triangle by i % 3) in a varied colour on a varied background."""
    rng = np.random.default_rng(i)
    bg = tuple(int(v) for v in rng.integers(150, 240, 3))
    fg = tuple(int(v) for v in rng.integers(20, 140, 3))
    img = Image.new("RGB", (side, side), bg)
    d = ImageDraw.Draw(img)
    m = int(rng.integers(12, 24))
    kind = SHAPES[i % 3]
    if kind == "circle":
        d.ellipse((m, m, side - m, side - m), fill=fg)
    elif kind == "square":
        d.rectangle((m, m, side - m, side - m), fill=fg)
    else:
        d.polygon([(side // 2, m), (side - m, side - m), (m, side - m)], fill=fg)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def shape_samples(n: int = N_IMAGES, labelled: int = LABELLED) -> list[agent_pb2.Sample]:
    return [client.image_sample(f"img{i:03d}.png", shape_image(i),
                                label=SHAPES[i % 3] if i < labelled and i % 3 != 2 else "",
                                metadata={"site": "a" if i % 2 == 0 else "b"})
            for i in range(n)]


def shape_of(sample_id: str) -> str:
    """The shape drawn in sample ``imgNNN.png``."""
    return SHAPES[int(sample_id[3:6]) % 3]


@dataclass
class WebAgent:
    """An agent and its web app (``url`` is set when the app listens on a port)."""

    agent: Agent
    server: Any
    local: LocalSocket
    stub: agent_pb2_grpc.AgentStub  # carries WRITE_TOKEN when the agent requires tokens
    app: FastAPI
    config: WebConfig
    tokens: bool = False  # the agent requires READ_TOKEN / WRITE_TOKEN
    web: WebServer | None = None
    closers: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.web is not None, "this WebAgent has no HTTP server (listen=True)"
        return self.web.url

    def labels(self) -> dict[str, str]:
        """Current labels by id, read back through gRPC (ListSamples)."""
        return {s.id: s.label for s in self.stub.ListSamples(agent_pb2.ListSamplesRequest(labeled_only=True))}

    def history(self, sample_id: str) -> list[tuple[str, str]]:
        """(label, annotator) of every label ``sample_id`` was given, oldest first, through gRPC (ListLabels)."""
        return [(r.label, r.annotator) for r in self.stub.ListLabels(agent_pb2.ListLabelsRequest(history=True))
                if r.id == sample_id]

    def client(self, **kw: Any) -> TestClient:
        """FastAPI's TestClient, sending ``Host: 127.0.0.1`` (its default, testserver, is not a name the app
        answers to)."""
        c = TestClient(self.app, **{"base_url": BASE_URL, **kw})
        self.closers.append(c)
        return c

    def stop(self) -> None:
        for c in self.closers:
            c.close()
        if self.web is not None:
            self.web.stop()
        self.app.state.stub.close()
        stop_server(self.server, self.agent, grace=1.0)
        self.local.cleanup()


def start_web_agent(tmp: Path, tokens: bool = False, listen: bool = False, n: int = N_IMAGES,
                    **web: Any) -> WebAgent:
    """A real agent (tiny linear model without classes: an open class list) holding ``n`` shape images,
    and the web app on it (a second call on the same ``tmp`` restarts the agent on its data folder).
    ``tokens``: the agent requires READ_TOKEN / WRITE_TOKEN. ``listen``: serve the app on a free loopback
    port. ``web``: WebConfig fields."""
    registry = tmp / "models"
    if not registry.exists():  # else: the agent of an earlier start_web_agent(tmp), restarted
        publish_linear(registry, size=(8, 8), dim=16, seed=0)
    security = ServerSecurity()
    if tokens:
        path = tmp / "tokens"
        path.write_text(f"read:{READ_TOKEN}\nwrite:{WRITE_TOKEN}\n")
        path.chmod(0o600)
        security = ServerSecurity(tokens=path)
    local = LocalSocket()
    server, port, agent = create_server(AgentConfig(tmp / "data", registry, port=0, poll_s=0.2, use_cuda=False,
                                                    security=security), local_socket=local.path)
    ch = client.channel(f"127.0.0.1:{port}", config=client.ClientConfig(token=WRITE_TOKEN if tokens else ""))
    stub = agent_pb2_grpc.AgentStub(ch)
    reply = client.ingest(stub, shape_samples(n))
    assert reply.accepted + reply.duplicates == n, reply
    config = WebConfig(port=0, agent=f"127.0.0.1:{port}", **{"tokens_required": tokens, **web})
    app = create_app(config, local.factory())
    wa = WebAgent(agent, server, local, stub, app, config, tokens)
    wa.closers.append(ch)
    if listen:
        wa.web = WebServer(app, config).start()
    return wa


@contextmanager
def new_version_held(wa: WebAgent) -> Iterator[threading.Event]:
    """Publish and serve model v0002 with its map's fit held until the yielded event is set (or the
    block ends), so the new map stays "computing" meanwhile."""
    agent: Agent = wa.agent
    gate = threading.Event()
    real = agent.map._fit

    def held(version: str, view: Any) -> PoolMapData:
        gate.wait(60)
        return real(version, view)

    agent.map._fit = held  # type: ignore[method-assign]
    try:
        publish_linear(agent.models, size=(8, 8), dim=16, seed=1)
        end = time.monotonic() + 60
        while wa.stub.ReloadModel(agent_pb2.ReloadModelRequest()).model_version != "v0002":
            assert time.monotonic() < end, "v0002 not served"
            time.sleep(0.2)
        yield gate
    finally:
        gate.set()


@pytest.fixture
def web_agent(tmp_path: Path) -> Iterator[WebAgent]:
    wa = start_web_agent(tmp_path)
    yield wa
    wa.stop()


@pytest.fixture
def token_web_agent(tmp_path: Path) -> Iterator[WebAgent]:
    wa = start_web_agent(tmp_path, tokens=True)
    yield wa
    wa.stop()


@pytest.fixture
def web_client(web_agent: WebAgent) -> TestClient:
    return web_agent.client()


# ---- browser tests --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    required = os.environ.get("SHORTLIST_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            raise
        pytest.skip("playwright is not installed (pip install -r requirements-dev.txt)")
    if not os.access(CHROMIUM, os.X_OK):
        if required:
            raise FileNotFoundError(f"{CHROMIUM} is missing: apt-get install -y chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def live_web(tmp_path: Path) -> Iterator[WebAgent]:
    """The agent and the web app listening on a free loopback port (for the browser)."""
    wa = start_web_agent(tmp_path, listen=True)
    yield wa
    wa.stop()


@pytest.fixture
def live_web_fast(tmp_path: Path) -> Iterator[WebAgent]:
    """``live_web`` whose pages re-read their labels every 0.3 s."""
    wa = start_web_agent(tmp_path, listen=True, refresh_s=0.3)
    yield wa
    wa.stop()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser page; at the end, the test fails if a Content-Security-Policy blocked anything
    (chromium reports each blocked script, style or image on the console). Not for tests marked
    ``labelstudio``: their pages are Label Studio's, whose policy is not the app's."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    violations: list[str] = []
    pg.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    yield pg
    context.close()
    if request.node.get_closest_marker("labelstudio") is None:
        assert not violations, f"the pages broke their Content-Security-Policy: {violations}"



@contextmanager
def device_page(browser: Any, width: int, height: int, scale: float = 1, touch: bool = False) -> Iterator[Any]:
    """A page in a browser context of its own: a ``width`` x ``height`` CSS px viewport at device scale
    ``scale``; ``touch``: a touch screen of a mobile browser."""
    context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=scale,
                                  has_touch=touch, is_mobile=touch)
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    yield pg
    context.close()


@pytest.fixture
def phone(browser: Any) -> Iterator[Any]:
    """A phone held upright (390x844 CSS px, touch, mobile): the grid runs far below the screen."""
    with device_page(browser, 390, 844, touch=True) as pg:
        yield pg

def shot(page: Any, name: str) -> None:
    """Save a screenshot of ``page`` as SHORTLIST_SCREENSHOTS/NAME.png, in 256 colours (nothing when the
    variable is unset)."""
    folder = os.environ.get("SHORTLIST_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with Image.open(io.BytesIO(page.screenshot())) as img:  # 256 colours: a third of the bytes, same look
            img.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(
                Path(folder) / f"{name}.png", optimize=True)


@contextmanager
def slow_labels(agent: Agent, seconds: float = 0.7) -> Iterator[None]:
    """Within the block every SubmitLabels of ``agent`` takes ``seconds`` longer (a slow agent, so a page's
    second key press or click comes while the first label is still being saved)."""
    real = agent.submit_labels

    def slow(*args: Any, **kw: Any) -> Any:
        time.sleep(seconds)
        return real(*args, **kw)

    agent.submit_labels = slow  # type: ignore[method-assign]
    try:
        yield
    finally:
        agent.submit_labels = real  # type: ignore[method-assign]


def dismissed_dialogs(page: Any, once: bool = False) -> list[str]:
    """The messages of the page's dialogs (confirm, alert) from now on, each dismissed (``once``: only the next)."""
    asked: list[str] = []

    def dismiss(d: Any) -> None:
        asked.append(d.message)
        d.dismiss()

    (page.once if once else page.on)("dialog", dismiss)
    return asked


def open_queue(web: WebAgent, page: Any, user: str, budget: int = 12, replace: bool = False) -> list[str]:
    """Sign ``page`` in as ``user``, fill the queue by random through gRPC (when it is empty, or always with
    ``replace``) and open it; the page's tile ids, in order."""
    page.context.add_cookies([{"name": "shortlist_user", "value": quote(user, safe=""), "url": web.url}])  # as sign-in
    if replace or not web.stub.GetQueue(agent_pb2.GetQueueRequest(name="web")).ids:
        web.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(
            ids=[s.id for s in web.stub.Select(agent_pb2.SelectRequest(budget=budget, strategy="random")).selected],
            source="select")))
    page.goto(web.url + "/queue")
    page.wait_for_selector(".tile.focus")
    return [str(t.get_attribute("data-id")) for t in page.locator(".tile").all()]


def focused_tile(page: Any) -> str:
    """The id of the Queue page's focused tile."""
    return str(page.locator(".tile.focus").get_attribute("data-id"))
