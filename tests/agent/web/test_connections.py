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
