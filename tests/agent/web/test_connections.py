"""The web app's connection limits (agent.web.server.guarded_protocol): a client that sends its request headers
slowly is closed after the header timeout, connections beyond the cap are closed (the oldest one still waiting
for its headers first) while normal requests still work, and asyncio's accept errors are throttled."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI, Request

from agent.web.config import WebConfig
from agent.web.guards import BodyPaceGuard
from agent.web.server import WebServer


@pytest.fixture
def server() -> Iterator[WebServer]:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"ok": "yes"}

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    web = WebServer(app, WebConfig(host="127.0.0.1", port=0), header_timeout_s=1.0, max_connections=4).start()
    try:
        yield web
    finally:
        web.stop()


def _get(web: WebServer) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{web.port}/ping", timeout=5) as r:
        return int(r.status)


def _closed(sock: socket.socket, within_s: float) -> bool:
    """Whether the server closed ``sock`` (EOF or reset) within ``within_s`` seconds."""
    sock.settimeout(within_s)
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_headers_sent_one_byte_a_second_are_cut_off_after_the_header_timeout(server: WebServer) -> None:
    request = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 20
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        start = time.monotonic()
        closed_at = None
        for byte in request:
            try:
                s.sendall(bytes([byte]))
            except (ConnectionResetError, BrokenPipeError):
                closed_at = time.monotonic() - start
                break
            if _closed(s, 0.3):  # ~0.3 s between bytes
                closed_at = time.monotonic() - start
                break
        assert closed_at is not None and closed_at < 2.5, closed_at
    assert _get(server) == 200
    # a keep-alive connection gets the same time for its next request's headers
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(0.2)
        assert b"200 OK" in s.recv(4096)
        s.sendall(b"GET /ping HTTP/1.1\r\n")
        assert _closed(s, 3.0)


def test_connections_beyond_the_cap_close_the_oldest_waiting_one_and_requests_still_work(server: WebServer) -> None:
    with contextlib.ExitStack() as stack:
        idle = []
        for _ in range(4):
            s = stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
            s.sendall(b"GET /ping HTTP/1.1\r\n")  # half a request
            idle.append(s)
            time.sleep(0.05)
        extra = stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
        extra.sendall(b"GET /ping HTTP/1.1\r\n")
        assert _closed(idle[0], 0.5)  # the oldest half-sent one made room
        assert not _closed(idle[1], 0.05)
        assert _get(server) == 200  # evicts the next oldest
        assert _closed(idle[1], 0.5)
        assert len(server.server.server_state.connections) <= 4


def test_when_every_connection_is_busy_one_more_gets_503(server: WebServer) -> None:
    with contextlib.ExitStack() as stack:
        for _ in range(4):  # each has sent its headers; the app waits for a body that does not come
            s = stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
            s.sendall(b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n")
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", server.port)) as extra:
            extra.settimeout(3)
            assert extra.recv(4096).startswith(b"HTTP/1.1 503")


def test_over_https_a_handshake_or_headers_that_do_not_come_are_cut_off(tmp_path: Path) -> None:
    """asyncio waits 60 s for a TLS handshake by default (uvicorn does not pass a shorter one): here the
    handshake has the header timeout's few seconds too; a normal HTTPS request works."""
    from tests.agent.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"ok": "yes"}

    web = WebServer(app, WebConfig(host="127.0.0.1", port=0, https_cert=pki.server_cert, https_key=pki.server_key),
                    header_timeout_s=1.0, tls_handshake_timeout_s=1.0).start()
    try:
        context = ssl.create_default_context(cafile=str(pki.ca))
        with urllib.request.urlopen(f"https://127.0.0.1:{web.port}/ping", context=context, timeout=5) as r:
            assert r.status == 200
        with socket.create_connection(("127.0.0.1", web.port)) as s:  # no handshake at all
            assert _closed(s, 3.0)
        with context.wrap_socket(socket.create_connection(("127.0.0.1", web.port)), server_hostname="127.0.0.1") as s:
            s.sendall(b"GET /ping HTTP/1.1\r\n")  # half the headers, then nothing
            s.settimeout(3.0)
            assert s.recv(1024) == b""
    finally:
        web.stop()


@pytest.fixture
def paced() -> Iterator[WebServer]:
    """The same app with the body pace guard: 1 s of grace, then 100 bytes a second."""
    app = FastAPI()

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.post("/json")
    def parsed(body: dict[str, int]) -> dict[str, int]:  # FastAPI reads and parses the body (the app's /api routes)
        return {"keys": len(body)}

    app.add_middleware(BodyPaceGuard, grace_s=1.0, min_rate=100.0)
    web = WebServer(app, WebConfig(host="127.0.0.1", port=0), header_timeout_s=1.0, max_connections=4).start()
    try:
        yield web
    finally:
        web.stop()


def _post(web: WebServer, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{web.port}/upload", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return int(r.status), r.read()


@pytest.mark.parametrize("route", ["/upload", "/json"])
def test_a_body_sent_a_byte_now_and_then_is_answered_408_and_closed(paced: WebServer, route: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """(On a route whose body FastAPI parses, the cut read was answered by FastAPI's own 400 "There was an error
    parsing the body", the connection kept and nothing logged: the guard now drops the route's answer to it.)"""
    with socket.create_connection(("127.0.0.1", paced.port)) as s:
        s.sendall(f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n".encode()
                  + b"Content-Type: application/json\r\nAccept: application/json\r\n\r\n")
        start = time.monotonic()
        answer = b""
        s.settimeout(0.4)
        while time.monotonic() - start < 6:
            try:
                s.sendall(b"x")
                chunk = s.recv(4096)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                break
            if not chunk:
                break
            answer += chunk
        took = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"came too slowly" in answer and 1.0 < took < 4.0, took
    assert any("cut a request body" in r.getMessage() for r in caplog.records)
    assert _post(paced, b"y" * 5000) == (200, b'{"bytes":5000}')  # a body sent whole is served


def test_bodies_that_never_come_no_longer_hold_every_connection(paced: WebServer) -> None:
    """(without the guard, one more request got 503 for as long as the four waited: test above,
    test_when_every_connection_is_busy_one_more_gets_503)"""
    with contextlib.ExitStack() as stack:
        for _ in range(4):
            s = stack.enter_context(socket.create_connection(("127.0.0.1", paced.port)))
            s.sendall(b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n")
        time.sleep(1.5)  # past the grace
        assert _post(paced, b"z" * 10) == (200, b'{"bytes":10}')
