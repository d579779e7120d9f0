"""Route tests (FastAPI's TestClient) of the app skeleton: pages, thumbnails with HTTP caching, the
gRPC -> HTTP mapping, and auth (bearer header, login cookie, read vs write tokens)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image

from agent import client
from agent.limits import MIB
from agent.web import auth
from agent.web.app import MODULES, create_app
from agent.web.config import WebConfig
from agent.web.errors import HTTP_STATUS, http_status
from tests.agent.web.conftest import READ_TOKEN, WRITE_TOKEN, WebAgent, start_web_agent


def test_home_and_nav(web_agent: WebAgent) -> None:
    c = web_agent.client()
    r = c.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/queue"
    page = c.get("/queue")
    assert page.status_code == 200
    assert '<a href="/queue" class="active" aria-current="page">Queue</a>' in page.text
    assert c.get("/static/app.css").status_code == 200


def test_thumbnail_is_small_upright_and_cacheable(web_agent: WebAgent) -> None:
    c = web_agent.client()
    r = c.get("/thumb/img000.png?size=48")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.size == (48, 48)
    etag = r.headers["etag"]
    assert "private" in r.headers["cache-control"] and "max-age" in r.headers["cache-control"]
    again = c.get("/thumb/img000.png?size=48", headers={"If-None-Match": etag})
    assert again.status_code == 304 and not again.content
    full = c.get("/image/img000.png")
    assert full.headers["content-type"] == "image/png" and full.headers["etag"] != etag


@pytest.mark.parametrize(("url", "status", "code"), [
    ("/thumb/nope.png", 404, "NOT_FOUND"),
    ("/thumb/img000.png?size=5", 400, "INVALID_ARGUMENT"),
    ("/thumb/img000.png?size=64&format=gif", 400, "INVALID_ARGUMENT"),
])
def test_grpc_errors_map_to_http(web_agent: WebAgent, url: str, status: int, code: str) -> None:
    r = web_agent.client().get(url)
    assert r.status_code == status
    assert r.json()["error"] == code and r.json()["message"]


def test_status_table_covers_what_the_agent_answers() -> None:
    assert http_status(grpc.StatusCode.UNAUTHENTICATED) == 401
    assert http_status(grpc.StatusCode.PERMISSION_DENIED) == 403
    assert http_status(grpc.StatusCode.RESOURCE_EXHAUSTED) == 429
    assert http_status(grpc.StatusCode.UNAVAILABLE) == 503
    assert all(400 <= v < 600 for v in HTTP_STATUS.values())


def test_tokens_header_cookie_and_roles(token_web_agent: WebAgent) -> None:
    c = token_web_agent.client()
    # no token: pages send the browser to /login, APIs answer 401
    r = c.get("/queue", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=/queue")
    assert c.get("/thumb/img000.png").status_code == 401
    # a bearer header is forwarded to the agent
    assert c.get("/thumb/img000.png", headers={"Authorization": f"Bearer {READ_TOKEN}"}).status_code == 200
    assert c.get("/thumb/img000.png", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    # a read token can view, not label
    read = token_web_agent.client()
    bad = read.post("/login", data={"name": "viewer", "token": "nope-nope-nope-nope"}, follow_redirects=False)
    assert bad.status_code == 401 and "This token is not known to the agent; check it with whoever runs" in bad.text
    assert "--token" not in bad.text and "SHORTLIST_TOKEN" not in bad.text  # a browser user's words, not the CLI's
    ok = read.post("/login", data={"name": "viewer", "token": READ_TOKEN, "next": "/queue"}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/queue"
    assert "httponly" in ok.headers["set-cookie"].lower() and "samesite=strict" in ok.headers["set-cookie"].lower()
    page = read.get("/queue")
    assert page.status_code == 200 and "read only" in page.text
    denied = read.post("/api/labels", json={"labels": [{"id": "img010.png", "label": "circle"}]})
    assert denied.status_code == 403 and denied.json()["error"] == "PERMISSION_DENIED"
    assert denied.json()["message"].startswith("Your token can view but not change anything: SubmitLabels needs a "
                                               "write token. Sign in with a write token")
    # a write token labels, recorded under the login name
    write = token_web_agent.client()
    write.post("/login", data={"name": "Ana", "token": WRITE_TOKEN})
    saved = write.post("/api/labels", json={"labels": [{"id": "img010.png", "label": "circle"}]})
    assert saved.status_code == 200 and saved.json()["accepted"] == 1 and saved.json()["annotator"] == "Ana"
    assert token_web_agent.labels()["img010.png"] == "circle"
    rec = token_web_agent.agent.state.lookup("img010.png")
    assert rec is not None and token_web_agent.agent.state.label_history(rec.seq)[-1][1] == "Ana"
    # logging out drops the cookies
    out = write.post("/logout", follow_redirects=False)
    assert out.status_code == 303
    assert write.get("/api/queue").status_code == 401


@pytest.mark.parametrize("first,second", [(READ_TOKEN, WRITE_TOKEN), (WRITE_TOKEN, READ_TOKEN)])
def test_more_than_one_authorization_header_is_401(token_web_agent: WebAgent, caplog: pytest.LogCaptureFixture,
                                                   first: str, second: str) -> None:
    """Two Authorization headers (a proxy adding its own in front of the client's): 401 "send one Authorization
    header" for an API, a write included, and for a page (its error page, not the sign-in redirect, which would
    come back with the same headers), whichever token comes first, as the agent answers two ``authorization``
    metadata entries (agent/security.py ``bearer``). Before, the first header won: the read token's POST was
    refused as read-only, the write token's first labelled."""
    c = token_web_agent.client(follow_redirects=False)
    two = [("Authorization", f"Bearer {first}"), ("Authorization", f"Bearer {second}")]
    label = {"labels": [{"id": "img011.png", "label": "square"}]}
    with caplog.at_level(logging.WARNING, logger="agent.web.auth"):
        for method, path, body in (("POST", "/api/labels", label), ("GET", "/api/queue", None),
                                   ("GET", "/thumb/img000.png", None)):
            r = c.request(method, path, json=body, headers=two)
            assert r.status_code == 401, (path, r.status_code, r.text)
            assert r.json() == {"error": "UNAUTHENTICATED", "message": auth.REPEATED_AUTHORIZATION}, path
        page = c.get("/queue", headers=two)
        assert page.status_code == 401 and "send one Authorization header" in page.text
        assert "read only" not in page.text  # no session read from the refused headers
    assert "img011.png" not in token_web_agent.labels()
    assert any("more than one Authorization header" in m for m in caplog.messages)
    # one header of either still works
    assert c.get("/api/queue", headers={"Authorization": f"Bearer {first}"}).status_code == 200
    assert c.get("/api/queue", headers={"Authorization": f"Bearer {second}"}).status_code == 200


def test_sign_in_names_beyond_latin1_are_kept_as_typed(token_web_agent: WebAgent) -> None:
    for i, name in enumerate(["Łukasz Żółć", "张伟", "Zoë O'Brien", 'a "quoted" name; x=1%41']):
        c = token_web_agent.client()
        assert c.post("/login", data={"name": name, "token": WRITE_TOKEN}, follow_redirects=False).status_code == 303
        saved = c.post("/api/labels", json={"labels": [{"id": f"img01{i}.png", "label": "circle"}]})
        assert saved.status_code == 200 and saved.json()["annotator"] == name
        assert name in c.get("/queue").text.replace("&#34;", '"').replace("&#39;", "'")  # the top bar says who


def test_login_next_stays_on_this_site(token_web_agent: WebAgent) -> None:
    c = token_web_agent.client()
    r = c.post("/login", data={"token": READ_TOKEN, "next": "https://evil.example/"}, follow_redirects=False)
    assert r.headers["location"] == "/"
    r = c.post("/login", data={"token": READ_TOKEN, "next": "//evil.example/"}, follow_redirects=False)
    assert r.headers["location"] == "/"


def test_signing_in_without_a_name_drops_the_previous_name(token_web_agent: WebAgent) -> None:
    """A shared browser: Maria signed in, then someone clears the name box and signs in with a token. The
    labels go under the token's fingerprint (docs/app.md), not under Maria (the old cookie was kept)."""
    c = token_web_agent.client()
    assert c.post("/login", data={"name": "Maria", "token": WRITE_TOKEN}, follow_redirects=False).status_code == 303
    assert 'value="Maria"' in c.get("/login").text  # the form offers the name signed in with
    r = c.post("/login", data={"name": "", "token": WRITE_TOKEN}, follow_redirects=False)
    assert r.status_code == 303
    saved = c.post("/api/labels", json={"labels": [{"id": "img011.png", "label": "circle"}]}).json()
    assert saved["annotator"].startswith("token-"), saved
    assert "Maria" not in c.get("/queue").text.split("<main", 1)[0]


def test_signing_in_never_leads_back_to_the_sign_in_page(token_web_agent: WebAgent) -> None:
    c = token_web_agent.client()
    page = c.get("/login?next=/queue")
    assert 'href="/login"' in page.text and "next=%2Flogin" not in page.text and "next=/login" not in page.text
    for target in ("/login", "/login?next=/queue", "/logout", "/login/"):
        r = c.post("/login", data={"token": READ_TOKEN, "next": target}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/", (target, r.headers["location"])
    assert 'name="next" value="/"' in c.get("/login?next=/login").text


def test_route_modules_are_one_typed_registry() -> None:
    """Each route module of agent/web/ is one ``WebModule`` (router, nav entry, setup, smaller body limit) in
    ``MODULES``, which mypy checks (were string-named module attributes ``create_app`` probed for). The app
    built from them: the nav in its order, the sign-in routes' smaller body limit with its advice, and each
    module's per-app state; no request is made, so the agent is never reached."""
    from agent.web.module import WebModule

    assert MODULES and all(isinstance(m, WebModule) for m in MODULES)
    app = create_app(WebConfig(port=0, agent="127.0.0.1:1"), lambda: pytest.fail("create_app reached the agent"))
    assert app.state.nav == [("Queue", "/queue"), ("Review priors", "/priors"), ("Map", "/map"),
                             ("Progress", "/progress")]
    small = (auth.MAX_BODY_BYTES, auth.BODY_LIMIT_ADVICE)
    assert app.state.body_limits == {"/login": small, "/logout": small}
    for state in ("sign_in_throttle", "known_tokens", "queue_presence", "priors", "labelstudio"):
        assert hasattr(app.state, state), state


def test_no_state_change_from_another_site(web_agent: WebAgent) -> None:
    """Cross-site request forgery: on an agent without tokens (like an app with a default token, anyone who
    reaches it may label), a page of another site can make the browser post, without a CORS preflight,
    a form, text/plain or a typeless body; every POST route refuses a foreign Origin (403) and the JSON
    APIs refuse bodies not declared JSON (422), so nothing changes. The sign-in cookies are
    SameSite=Strict (test_tokens_header_cookie_and_roles)."""
    c = web_agent.client()
    before = web_agent.labels()
    posts = sorted(getattr(r, "path", "") for module in MODULES for r in module.router.routes
                   if "POST" in getattr(r, "methods", ()))
    assert {"/login", "/logout", "/api/labels", "/api/labels/retract", "/api/queue", "/api/queue/select",
            "/api/queue/mark", "/api/priors/labels", "/labelstudio/webhook"} <= set(posts)
    label = b'{"labels": [{"id": "img010.png", "label": "circle"}], "ids": ["img000.png"], "strategy": "random",' \
            b' "budget": 3, "id": "img000.png", "mark": "skip", "action": "ANNOTATION_CREATED"}'
    for path in posts:
        for headers in ({"Content-Type": "text/plain", "Origin": "https://evil.example"},
                        {"Content-Type": "application/json", "Origin": "https://evil.example"},
                        {"Content-Type": "application/x-www-form-urlencoded", "Origin": "null"}):
            r = c.post(path, content=label, headers=headers, follow_redirects=False)
            assert r.status_code == 403 and "cross-origin request refused" in r.text, (path, headers, r.text)
    for path in (p for p in posts if p.startswith("/api/")):  # without an Origin (an old browser): not JSON
        for headers in ({"Content-Type": "text/plain"}, {}):
            r = c.post(path, content=label, headers=headers)
            assert r.status_code == 422, (path, headers, r.text)
    assert web_agent.labels() == before
    assert web_agent.agent.state.lookup("img010.png") is not None
    # the app's own pages (same origin, default port written or not) and scripts (no Origin) still work
    ok = c.post("/api/labels", json={"labels": [{"id": "img010.png", "label": "circle"}]},
                headers={"Origin": "http://127.0.0.1"})
    assert ok.status_code == 200 and ok.json()["accepted"] == 1
    assert c.post("/api/labels/retract", json={"ids": ["img010.png"]},
                  headers={"Origin": "http://127.0.0.1:80"}).status_code == 200
    assert c.post("/logout", follow_redirects=False).status_code == 303
    assert web_agent.labels() == before


def test_dns_rebinding_refused(web_agent: WebAgent) -> None:
    """A rebinding page's requests carry its own name in Host: refused (400, saying which option adds a
    name), pages and APIs alike; loopback names, with any port, pass."""
    c = web_agent.client()
    for host in ("localhost", "localhost:8080", "127.0.0.1:1", "[::1]:8080", "LOCALHOST"):
        assert c.get("/api/queue", headers={"Host": host}).status_code == 200, host
    for path in ("/api/queue", "/thumb/img000.png", "/labelstudio/health"):
        r = c.get(path, headers={"Host": "attacker.example:8080"})
        assert r.status_code == 400 and r.json()["error"] == "UNKNOWN_HOST", path
        assert "--web-allowed-hosts attacker.example" in r.json()["message"]
        assert "localhost, 127.0.0.1, [::1]" in r.json()["message"]
    page = c.get("/queue", headers={"Host": "attacker.example"})
    assert page.status_code == 400 and "--web-allowed-hosts attacker.example" in page.text
    assert "img000.png" not in page.text
    assert c.post("/api/labels", json={"labels": [{"id": "img010.png", "label": "circle"}]},
                  headers={"Host": "attacker.example"}).status_code == 400
    assert "img010.png" not in web_agent.labels()


def test_allowed_hosts_defaults_and_option(tmp_path: Path) -> None:
    """Loopback: loopback names only. Another address: also it, the machine's names and the certificate's
    (not a wildcard address). --web-allowed-hosts adds names (e.g. the one Label Studio calls the app by)."""
    import socket

    from agent.web.config import WebConfig
    from agent.web.guards import LOOPBACK_HOSTS, allowed_hosts
    from tests.agent.pki import make_pki
    from tests.agent.web.conftest import start_web_agent

    assert allowed_hosts(WebConfig()) == list(LOOPBACK_HOSTS) == allowed_hosts(WebConfig(host="localhost"))
    pki = make_pki(tmp_path / "pki", names=("labelling.example", "10.1.2.3"))
    exposed = allowed_hosts(WebConfig(host="0.0.0.0", https_cert=pki.server_cert, https_key=pki.server_key))
    assert set(LOOPBACK_HOSTS) <= set(exposed) and "0.0.0.0" not in exposed
    assert {socket.gethostname().lower(), socket.getfqdn().lower(), "labelling.example", "10.1.2.3"} <= set(exposed)
    assert "192.0.2.7" in allowed_hosts(WebConfig(host="192.0.2.7", insecure=True))
    # the URL printed for a wildcard address names the machine (allowed), not 0.0.0.0 (refused)
    from urllib.parse import urlsplit

    from fastapi import FastAPI

    from agent.web.server import WebServer

    wildcard = WebConfig(host="0.0.0.0", port=0, insecure=True)
    server = WebServer(FastAPI(), wildcard)
    try:
        assert (urlsplit(server.url).hostname or "").lower() in allowed_hosts(wildcard)
    finally:
        server.sock.close()
    # with HTTPS, the certificate's first name: the one a browser can verify
    secure = WebConfig(host="0.0.0.0", port=0, https_cert=pki.server_cert, https_key=pki.server_key)
    server = WebServer(FastAPI(), secure)
    try:
        assert urlsplit(server.url).hostname == "labelling.example" and server.url.startswith("https://")
    finally:
        server.sock.close()
    added = WebConfig(allowed_hosts=("LS.example:8080", "fd00::5", "*.corp.example"))
    assert added.allowed_hosts == ("ls.example", "[fd00::5]", "*.corp.example")
    for bad in ("a/b", "x.*.example", "*example.com", ""):
        with pytest.raises(ValueError, match="--web-allowed-hosts"):
            WebConfig(allowed_hosts=(bad,))
    wa = start_web_agent(tmp_path / "a", allowed_hosts=("labelstudio.internal", "*.corp.example"))
    try:
        c = wa.client()
        for host in ("labelstudio.internal:8080", "app.corp.example", "127.0.0.1"):
            assert c.get("/labelstudio/health", headers={"Host": host}).status_code == 200, host
        assert c.get("/labelstudio/health", headers={"Host": "corp.example.attacker"}).status_code == 400
    finally:
        wa.stop()


def test_agent_gone_is_503(web_agent: WebAgent) -> None:
    c = web_agent.client()
    web_agent.app.state.stub.close()
    web_agent.local.cleanup()  # the socket is gone: the next channel cannot connect
    web_agent.app.state.stub._factory = lambda: __import__("agent.client", fromlist=["channel"]).channel(
        "unix:/nonexistent/agent.sock", timeout=0.5)
    r = c.get("/api/queue")
    assert r.status_code == 503 and r.json()["error"] == "UNAVAILABLE"
    assert r.json()["message"].startswith("the agent is not reachable; retrying")
    page = c.get("/queue")
    assert page.status_code == 503 and "the agent is not reachable; retrying" in page.text
    assert "nonexistent" not in page.text and "failed to connect" not in page.text  # the detail is in the log


def test_the_app_reconnects_soon_after_the_agent_comes_back(tmp_path: Path) -> None:
    """The app's channel is long-lived: after the agent was away a while, the first pages after its return
    work within a couple of seconds (gRPC's default reconnect backoff had grown to ~26 s), and while it is
    away the page says so plainly, without gRPC's connection text."""
    from agent.config import AgentConfig
    from agent.service import create_server, stop_server

    wa = start_web_agent(tmp_path)
    c = wa.client()
    try:
        assert c.get("/api/queue").status_code == 200
        config = wa.agent.config
        stop_server(wa.server, wa.agent, grace=1.0)
        end = time.monotonic() + 10  # away 10 s, asked all along: the backoff grows
        while time.monotonic() < end:
            r = c.get("/queue")
            assert r.status_code == 503 and "the agent is not reachable; retrying" in r.text
            assert "failed to connect" not in r.text and "UNAVAILABLE" not in r.text.split("<main", 1)[-1]
            time.sleep(0.5)
        wa.server, _, wa.agent = create_server(AgentConfig(config.data_dir, config.models, port=0, poll_s=0.2,
                                                           use_cuda=False), local_socket=wa.local.path)
        back = time.monotonic()
        while c.get("/api/queue").status_code != 200:
            assert time.monotonic() - back < 3, "the app did not reconnect within 3 s of the agent's return"
            time.sleep(0.1)
    finally:
        wa.stop()


def test_retry_after_from_the_agents_hint(web_agent: WebAgent) -> None:
    """RESOURCE_EXHAUSTED with the agent's retry-after-ms trailer: 429 with Retry-After in seconds."""
    from agent.errors import RETRY_AFTER_KEY

    class Exhausted(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.RESOURCE_EXHAUSTED

        def details(self) -> str:
            return "8 Selects are queued; retry later"

        def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
            return ((RETRY_AFTER_KEY, "2500"),)

    class Busy:
        def Select(self, *args: object, **kw: object) -> None:
            raise Exhausted()

        def GetStatus(self, *args: object, **kw: object) -> None:
            raise Exhausted()

    web_agent.app.state.stub._stub = Busy()  # the shared stub, as the app created it, answers like a busy agent
    c = web_agent.client()
    r = c.post("/api/queue/select", json={"strategy": "random", "budget": 3})
    assert r.status_code == 429 and r.headers["retry-after"] == "3" and "queued" in r.json()["message"]
    page = c.get("/queue")
    assert page.status_code == 429 and "retry later" in page.text and "<nav" in page.text


def test_https_and_secure_cookies(tmp_path: Path) -> None:
    import ssl
    import urllib.parse
    import urllib.request

    from tests.agent.pki import make_pki
    from tests.agent.web.conftest import start_web_agent

    pki = make_pki(tmp_path / "pki")
    wa = start_web_agent(tmp_path, tokens=True, listen=True, https_cert=pki.server_cert, https_key=pki.server_key)
    try:
        assert wa.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(pki.ca))

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: object, **kw: object) -> None:
                return None

        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), NoRedirect())
        body = urllib.parse.urlencode({"name": "ana", "token": WRITE_TOKEN}).encode()
        with pytest.raises(urllib.error.HTTPError) as e:  # the 303 after a good login
            opener.open(wa.url + "/login", data=body, timeout=10)
        assert e.value.code == 303
        cookies = e.value.headers.get_all("set-cookie")
        assert cookies and all("Secure" in c and "HttpOnly" in c for c in cookies)
    finally:
        wa.stop()


def _http_response(sock: socket.socket, timeout: float) -> tuple[int, str]:
    """(status, body) of the HTTP/1.1 response read from ``sock`` (its Content-Length bytes of body)."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionError, socket.timeout):
        while chunk := sock.recv(65536):
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            if sep and length and len(body) >= int(length.group(1)):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), data[:200]
    return int(head.split()[1]), body.decode(errors="replace")


def test_request_bodies_are_capped_before_they_are_read(tmp_path: Path) -> None:
    """Bodies are read before the agent checks the token, so an unauthenticated client could make the app
    hold gigabytes: a declared Content-Length above the limit is refused at once, unread; a chunked body
    is cut where it passes the limit (the sender is stopped long before it is done); normal requests
    pass. The 413 says the limit and the option."""
    from tests.agent.web.conftest import start_web_agent

    wa = start_web_agent(tmp_path, tokens=True, listen=True, max_body_bytes=MIB)
    host, port = "127.0.0.1", int(wa.url.rpartition(":")[2])
    try:
        # 1 TB declared, nothing sent: answered at once (no wait for the body, no token needed to be refused)
        with socket.create_connection((host, port)) as s:
            start = time.monotonic()
            s.sendall(f"POST /api/labels HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {1 << 40}\r\n\r\n".encode())
            status, body = _http_response(s, timeout=10)
        assert status == 413 and time.monotonic() - start < 5
        message = json.loads(body)["message"]
        assert "1 MiB" in message and "--web-max-body-mb" in message
        # chunked, 1 GiB offered: cut at the limit, the generator stopped long before its end
        sent = 0
        total = 1 << 30

        def send_chunks(s: socket.socket) -> None:
            nonlocal sent
            chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"  # 64 KiB per chunk
            with contextlib.suppress(OSError):
                while sent < total:
                    s.sendall(chunk)
                    sent += 0x10000

        # (with a token: without one, or with one the agent does not know, the app answers 401 before reading
        # any body, agent/web/auth.py TokenFirstGuard)
        auth = f"Authorization: Bearer {WRITE_TOKEN}\r\n"
        for path in ("/api/labels", "/labelstudio/webhook"):
            sent = 0
            with socket.create_connection((host, port)) as s:
                s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}"
                          "Transfer-Encoding: chunked\r\n\r\n".encode())
                sender = threading.Thread(target=send_chunks, args=(s,), daemon=True)
                sender.start()
                status, body = _http_response(s, timeout=30)
                s.shutdown(socket.SHUT_RDWR)
                sender.join(10)
            assert status == 413 and "--web-max-body-mb" in json.loads(body)["message"], (path, body)
            assert not sender.is_alive() and sent < 64 * MIB, (path, sent)  # the rest was never taken
        # a labels batch well under the limit passes (to the agent, which wants a token)
        batch = json.dumps({"labels": [{"id": f"img{i:03d}.png", "label": "circle"} for i in range(30)]}).encode()
        req = urllib.request.Request(wa.url + "/api/labels", data=batch, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {WRITE_TOKEN}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200 and json.loads(r.read())["accepted"] == 30
    finally:
        wa.stop()


def test_body_limit_through_the_test_client(web_agent: WebAgent) -> None:
    """The 413 of a streamed (chunked) body and of a declared one, JSON for the APIs, the error page for
    pages; the default limit is 16 MiB."""
    from agent.web.config import WebConfig

    assert WebConfig().max_body_bytes == 16 * MIB
    c = web_agent.client()
    limit = web_agent.config.max_body_bytes

    def chunks() -> Iterator[bytes]:
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    r = c.post("/api/labels", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "CONTENT_TOO_LARGE" and "16 MiB" in r.json()["message"]
    page = c.post("/queue", content=b"x" * (limit + 1), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert page.status_code == 413 and "--web-max-body-mb" in page.text and "<nav" in page.text


def test_the_sign_in_form_has_a_small_body_limit_checked_before_it_is_read(token_web_agent: WebAgent) -> None:
    """/login parsed form bodies up to the app's 16 MiB limit before any check, for anyone who reached it (no token
    needed). Its limit is now MAX_BODY_BYTES (32 KiB: a name and a token of the agent's longest fit): a declared
    larger body is answered 413 before the route runs (no sign-in try taken), a streamed one is cut there, and
    the message says what a sign-in form holds; a sign-in with a 4,096-character token is still read."""
    from agent.web import auth

    limit = getattr(auth, "MAX_BODY_BYTES", 32 * 1024)
    assert limit <= 32 * 1024
    c = token_web_agent.client(client=("10.0.0.31", 50000), follow_redirects=False)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    big = b"name=x&token=" + b"t" * (limit + 1)
    r = c.post("/login", content=big, headers=form)
    assert r.status_code == 413 and "the limit of /login" in r.text and "a name and a token" in r.text, r.text[:300]
    assert token_web_agent.app.state.sign_in_throttle.wait("10.0.0.31") == 0.0
    for _ in range(auth.SIGN_IN_BURST):  # none of these took a try either: the route never ran
        assert c.post("/login", content=big, headers=form).status_code == 413

    def chunks() -> Iterator[bytes]:
        yield b"name=x&token="
        for _ in range(limit // 1024 + 2):
            yield b"t" * 1024

    r = c.post("/login", content=chunks(), headers=form)  # no Content-Length: cut as it is read
    assert r.status_code == 413 and "the limit of /login" in r.text
    r = c.post("/login", data={"name": "x", "token": "t" * 4096, "next": "/queue"})
    assert r.status_code == 401  # read and checked by the agent (an unknown token)
    assert c.post("/login", data={"name": "x", "token": WRITE_TOKEN}).status_code == 303


def test_hardening_headers_on_every_answer(web_agent: WebAgent) -> None:
    """nosniff, no framing, same-origin referrers and a CSP without inline script on pages, APIs, images,
    static files and refusals; the pages hold no inline script or javascript: URL (the browser tests check
    that chromium reports no CSP violation)."""
    from agent.web.guards import CONTENT_SECURITY_POLICY

    c = web_agent.client()
    answers = [c.get(p) for p in ("/queue", "/priors", "/map", "/progress", "/login", "/api/queue",
                                  "/thumb/img000.png", "/static/app.js", "/nope")]
    answers.append(c.get("/api/queue", headers={"Host": "attacker.example"}))
    answers.append(c.post("/api/labels", content=b"{}", headers={"Origin": "https://evil.example"}))
    for r in answers:
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "same-origin"
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY and "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    for r in answers[:5]:
        assert r.status_code == 200, r.url
        assert not re.search(r"<script(?![^>]*\b(src=|type=\"application/json\"))", r.text), r.url
        assert "javascript:" not in r.text and not re.search(r"\son[a-z]+=", r.text), r.url


def test_the_agents_cli_words_are_mapped_for_people() -> None:
    """The agent's messages name CLI options; the app shows people what to do in the browser instead."""
    from agent.priors.calibration import audit_todo
    from agent.web.errors import for_people

    assert for_people("this agent requires a token: pass --token TOKEN or set SHORTLIST_TOKEN (API clients send "
                      "the metadata `authorization: Bearer TOKEN`); ask the agent's operator for one").startswith(
        "This agent needs a token: sign in with the token you were given")
    todo = for_people(audit_todo(3))
    assert todo == "label 17 audit samples (draw an audit sample on the Progress page, then label it in the Queue) " \
                   "for trustworthy confidences"
    assert for_people("...: declare every class (shortlist serve --classes a,b,c)") == \
        "...: ask whoever runs the agent to declare every class"
    # a deadline refusal: the app sets the deadline, its user can only ask for less or wait
    head = "Select 'as3l' would take about 900.0 s (its recent runs), more than the 600.0 s left of the call's " \
           "deadline; it was not started; "
    assert for_people(head + "it needs a deadline of at least 1800 s (retrying with this deadline will not help: "
                      "give it a longer one, or make the call smaller)") == head + \
        "it would need about 1800 s, longer than this app waits: ask for fewer samples or a lighter strategy " \
        "(whoever runs the agent can run it from the command line with --timeout 1800)"
    wait = for_people(head + "it needs a deadline of at least 700 s, or a retry in about 2500 ms (once the calls "
                      "ahead of it have ended)")
    assert wait == head + "try again in a moment, once the calls ahead of it have ended"
    # and the agent's own words map (not a copy of them that could drift)
    from agent.admission import Admission

    lane = Admission(1, 1)
    too_long = str(lane._too_late("Select 'as3l'", wait=0.0, own=900.0, remaining=600.0))
    assert "longer than this app waits" in for_people(too_long) and "deadline of at least" not in for_people(too_long)
    queued = str(lane._too_late("Select 'as3l'", wait=500.0, own=10.0, remaining=100.0))
    assert for_people(queued).endswith("try again in a moment, once the calls ahead of it have ended"), queued
    assert for_people("unknown id 'x': ingest it first") == "unknown id 'x': ingest it first"  # others unchanged


def test_a_429_without_the_agents_hint_still_carries_retry_after(web_agent: WebAgent) -> None:
    """docs/app.md promises Retry-After on a 429; a refusal whose agent sent no retry-after-ms (a call too long
    for its deadline by itself) had none."""
    class Exhausted(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.RESOURCE_EXHAUSTED

        def details(self) -> str:
            return "a thumbnail would take about 40.0 s, more than the 30.0 s left of the call's deadline"

        def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
            return ()

    class Busy:
        def GetImages(self, *args: object, **kw: object) -> None:
            raise Exhausted()

    web_agent.app.state.stub._stub = Busy()
    r = web_agent.client().get("/thumb/img010.png?size=64")
    assert r.status_code == 429 and r.headers["retry-after"] == "10", (r.status_code, r.headers)
    assert "thumbnail" in r.json()["message"]


def test_the_header_shows_the_name_labels_are_recorded_under(token_web_agent: WebAgent) -> None:
    c = token_web_agent.client()
    assert c.post("/login", data={"name": "", "token": WRITE_TOKEN}, follow_redirects=False).status_code == 303
    saved = c.post("/api/labels", json={"labels": [{"id": "img010.png", "label": "circle"}]}).json()
    assert saved["annotator"].startswith("token-")
    header = c.get("/queue").text.split("<main", 1)[0]
    assert f">{saved['annotator']}" in header  # was "token"
    # a name over 64 characters is refused with what to do, not cut silently
    long = "a" * 70
    r = c.post("/login", data={"name": long, "token": WRITE_TOKEN}, follow_redirects=False)
    assert r.status_code == 400 and "70 characters; names may have at most 64" in r.text
    assert "shortlist_user" not in r.headers.get("set-cookie", "")


# ---- logs: the browser's address, refused sign-ins, no calls without a token -------------------------------
def test_refusals_name_the_browser_and_sign_ins_are_logged(token_web_agent: WebAgent,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """The agent logs a web refusal with the browser's address (not the socket's empty "unix:") and counts it
    under it; a refused sign-in is logged by the app with the address and the name, never the token; a page
    without a token is answered by the app (no agent call, no refusal logged); a read token's role check at
    sign-in is INFO."""
    import logging

    caplog.set_level(logging.INFO)
    c = token_web_agent.client(follow_redirects=False)
    for path in ("/queue", "/api/progress", "/map"):
        r = c.get(path)
        assert r.status_code in (303, 401), (path, r.status_code)
    assert not [r for r in caplog.records if "refused" in r.getMessage()], caplog.text
    bad = "x" * 24
    r = c.post("/login", data={"name": "mallory", "token": bad})
    assert r.status_code == 401
    app_lines = [r for r in caplog.records if r.name == "agent.web.auth"]
    assert len(app_lines) == 1 and app_lines[0].levelno == logging.WARNING
    line = app_lines[0].getMessage()
    assert "testclient" in line and "'mallory'" in line and "UNAUTHENTICATED" in line and bad not in caplog.text
    agent_lines = [r.getMessage() for r in caplog.records if r.name == "agent.security"]
    assert any("unknown token from testclient (web app)" in m for m in agent_lines), agent_lines
    caplog.clear()
    r = c.post("/login", data={"name": "rita", "token": READ_TOKEN})
    assert r.status_code == 303
    role = [r for r in caplog.records if "SubmitLabels: a read token" in r.getMessage()]
    assert role and all(r.levelno == logging.INFO for r in role), caplog.text
    caplog.clear()
    r = c.post("/login", data={"name": "nobody", "token": ""})
    assert r.status_code == 401 and "no token given" in caplog.text


def test_the_web_client_address_is_believed_on_the_local_socket_only() -> None:
    from agent.security import WEB_CLIENT_KEY, caller_address

    md = ((WEB_CLIENT_KEY, "10.1.2.3"),)
    assert caller_address("unix:", md) == "10.1.2.3 (web app)"
    assert caller_address("ipv4:10.9.9.9:5555", md) == "ipv4:10.9.9.9"  # over TCP anyone could write it
    assert caller_address("unix:", ((WEB_CLIENT_KEY, "x\nforged line"),)) == "unix:"
    assert caller_address("unix:", ((WEB_CLIENT_KEY, "fd00::5"),)) == "fd00::5 (web app)"


def test_the_first_model_is_logged_as_served(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="agent.models")
    wa = start_web_agent(tmp_path)
    try:
        assert any(r.getMessage().startswith("now serving v0001") for r in caplog.records), caplog.text
    finally:
        wa.stop()


def test_https_answers_carry_hsts(web_agent: WebAgent) -> None:
    from agent.web.guards import HSTS

    assert web_agent.client(base_url="https://127.0.0.1").get("/healthz").headers["strict-transport-security"] == HSTS
    assert "strict-transport-security" not in web_agent.client().get("/healthz").headers  # plain HTTP: none


def test_socket_folders_of_killed_processes_are_removed(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from agent.web.server import PID_FILE, remove_stale_sockets

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    gone, alive, old = (tmp_path / f"shortlist-web-{k}" for k in ("gone", "alive", "old"))
    for folder in (gone, alive, old):
        folder.mkdir()
        (folder / "agent.sock").write_text("")
    (gone / PID_FILE).write_text(dead.stdout)
    (alive / PID_FILE).write_text(f"{os.getpid()}\n")
    assert remove_stale_sockets(tmp_path) == [gone]
    assert not gone.exists() and alive.exists() and old.exists()  # old: no pid file, left alone


def test_a_living_process_keeps_its_socket_folder_whatever_its_pid_looks_like(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Liveness is the pid file's flock, not kill(pid, 0): a process in another pid namespace (a container
    sharing /tmp) has a pid this process cannot see, and its folder was removed under it. A damaged pid file
    stops no later start: a number beyond any pid (OverflowError in kill) is no process, so its unlocked
    folder is removed; one that is no number is left alone."""
    import subprocess
    import sys
    import tempfile

    from agent.web.server import PID_FILE, LocalSocket, remove_stale_sockets

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout
    live = LocalSocket()
    try:
        (live.folder / PID_FILE).write_text(dead)  # how its pid looks from another pid namespace: gone
        huge, junk = tmp_path / "shortlist-web-huge", tmp_path / "shortlist-web-junk"
        for folder, text in ((huge, "99999999999999999999\n"), (junk, "\xff\x00\n")):
            folder.mkdir()
            (folder / PID_FILE).write_text(text)
        assert remove_stale_sockets() == [huge]
        assert live.folder.exists() and not huge.exists() and junk.exists()
        other = LocalSocket()  # a later start
        other.cleanup()
    finally:
        live.cleanup()
    assert not live.folder.exists()


def test_forwarded_headers_are_never_believed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """X-Forwarded-For / -Proto from a loopback peer (uvicorn believes them by default) change neither the
    address the app logs and sends the agent as x-shortlist-web-client, nor the scheme (no HSTS on HTTP)."""
    import logging
    import urllib.error
    import urllib.parse
    import urllib.request

    from tests.agent.web.conftest import start_web_agent

    caplog.set_level(logging.INFO)
    wa = start_web_agent(tmp_path, tokens=True, listen=True)
    try:
        forged = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "Origin": wa.url}
        body = urllib.parse.urlencode({"name": "mallory", "token": "x" * 24}).encode()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(wa.url + "/login", data=body, headers=forged), timeout=10)
        assert e.value.code == 401
        with urllib.request.urlopen(urllib.request.Request(wa.url + "/healthz", headers=forged), timeout=10) as r:
            assert r.headers.get("strict-transport-security") is None
    finally:
        wa.stop()
    assert "203.0.113.7" not in caplog.text
    assert any("web sign-in refused from 127.0.0.1" in r.getMessage() for r in caplog.records), caplog.text
    assert any("unknown token from 127.0.0.1 (web app)" in r.getMessage() for r in caplog.records), caplog.text


def test_a_sign_in_name_with_control_characters_is_refused(token_web_agent: WebAgent) -> None:
    """The agent refuses such an annotator name (a terminal escape would reach other users' CLI output): the
    sign-in says so at once rather than every label failing later."""
    c = token_web_agent.client(follow_redirects=False)
    r = c.post("/login", data={"name": "eve\x1b[31mRED", "token": WRITE_TOKEN})
    assert r.status_code == 400 and "printable text" in r.text and "shortlist_user" not in r.headers.get(
        "set-cookie", "")
    assert c.post("/login", data={"name": "eve", "token": WRITE_TOKEN}).status_code == 303


def test_refused_sign_ins_are_logged_once_per_address_and_reason_a_while(token_web_agent: WebAgent,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Anyone who reaches the sign-in page can try, and each refusal's line carries a name they chose: one
    WARNING per (address, reason) every interval (the agent's RefusalLog), the next one counting the others,
    whatever names they sent."""
    import logging

    from agent.web.auth import SignInThrottle

    caplog.set_level(logging.INFO)
    # the log, not the throttle (test_failed_sign_ins_are_throttled_per_address): 60 failures may pass here
    token_web_agent.app.state.sign_in_throttle = SignInThrottle(burst=1000)
    c = token_web_agent.client(follow_redirects=False)
    for i in range(30):
        assert c.post("/login", data={"name": f"admin ALERT {i}", "token": "x" * 24}).status_code == 401
        assert c.post("/login", data={"name": f"nobody {i}", "token": ""}).status_code == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.web.auth"]
    assert len(lines) == 2 and "'admin ALERT 0'" in lines[0] and "no token given" in lines[1], lines
    token_web_agent.app.state.sign_in_refusals.interval_s = 0.0  # the interval is over
    caplog.clear()
    c.post("/login", data={"name": "again", "token": "x" * 24})
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.web.auth"]
    assert len(lines) == 1 and "(29 more from it in the last 0 s, not logged)" in lines[0], lines


def test_a_token_gRPC_cannot_send_is_an_unknown_token_logged_as_refusals_are(token_web_agent: WebAgent,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A token with a non-ASCII or control character (a header, a cookie, the sign-in form, Label Studio's Basic
    auth) is answered 401 "unknown token", as the agent answers tokens it does not know; it was a 500 "INTERNAL
    Invalid metadata" with ~5 log lines a request (gRPC's C-core trace). The app's line is throttled."""
    import base64
    import logging

    from agent.web.auth import SignInThrottle

    token_web_agent.app.state.sign_in_throttle = SignInThrottle(burst=1000)  # (this test is not about guessing)
    caplog.set_level(logging.INFO)
    c = token_web_agent.client(follow_redirects=False)
    for _ in range(10):
        r = c.get("/api/progress/head", headers={b"Authorization": b"Bearer \xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9"})
        assert r.status_code == 401 and r.json()["error"] == "UNAUTHENTICATED", r.text
        assert "This token is not known to the agent" in r.json()["message"]
    for cookie in (b"shortlist_token=abc\x01def0123456789", "shortlist_token=\u00e9t\u00e9-0123456789".encode()):
        r = c.get("/api/progress/head", headers={b"Cookie": cookie})
        assert r.status_code == 401 and r.json()["error"] == "UNAUTHENTICATED", r.text
    page = c.get("/queue", headers={b"Cookie": b"shortlist_token=abc\x01def0123456789"})
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    signed = c.post("/login", data={"name": "x", "token": "\u00e9" * 20})
    assert signed.status_code == 401 and "This token is not known to the agent" in signed.text
    basic = base64.b64encode("ls:\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9".encode()).decode()
    assert c.post("/labelstudio/setup", json={}, headers={"Authorization": f"Basic {basic}"}).status_code < 500
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    unusable = [line for line in lines if "not printable ASCII" in line]
    assert len(unusable) == 1 and "Invalid metadata" not in " ".join(lines), lines


def test_failed_sign_ins_are_throttled_per_address(token_web_agent: WebAgent,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A script guessing tokens (600 wrong tokens at 99 a second, all 401, in the security review) gets a few
    tries, then 429 with Retry-After for everything it sends, a right token included, until the allowance is
    back; another address signs in meanwhile; the log holds one line per address and reason."""
    from agent.web import auth

    burst, per_s = getattr(auth, "SIGN_IN_BURST", 5), getattr(auth, "SIGN_IN_PER_S", 1.0)
    guesser = token_web_agent.client(client=("10.0.0.7", 50000))
    with caplog.at_level(logging.WARNING):
        codes = [guesser.post("/login", data={"name": "x", "token": f"guess-{i:020d}"},
                              follow_redirects=False).status_code for i in range(3 * burst)]
    assert codes[:burst] == [401] * burst
    assert set(codes[burst + 1:]) == {429}, codes  # one more may pass as the allowance refills
    r = guesser.post("/login", data={"name": "x", "token": WRITE_TOKEN}, follow_redirects=False)
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 1 + 1 / per_s
    assert "Too many failed sign-ins" in r.text
    other = token_web_agent.client(client=("10.0.0.8", 50000))
    assert other.post("/login", data={"name": "y", "token": WRITE_TOKEN}, follow_redirects=False).status_code == 303
    time.sleep(int(r.headers["retry-after"]))
    assert guesser.post("/login", data={"name": "x", "token": WRITE_TOKEN},
                        follow_redirects=False).status_code == 303  # after the wait: in
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "agent.web.auth"]
    assert len(lines) == 2 and all("10.0.0.7" in line for line in lines), lines  # UNAUTHENTICATED, too many


def test_a_right_token_gets_in_at_its_second_try_while_the_address_guesses(token_web_agent: WebAgent) -> None:
    """Behind a proxy one address is everyone's: while a script there guessed tokens, a colleague's right token
    (one the agent had not answered since the app started) was answered 429 for as long as the guessing went on,
    the form's and a header's alike. Now a token's second try is checked by the agent (one such check per
    address every THROTTLED_CHECK_S) and gets in, the guessing going on meanwhile; a guess sent twice is
    checked once, then 429 again."""
    from agent.web import auth

    burst = getattr(auth, "SIGN_IN_BURST", 5)
    check_s = 1.0  # (THROTTLED_CHECK_S is 2 s: shorter here)
    try:
        throttle = auth.SignInThrottle(burst=burst, per_s=0.01, check_s=check_s)  # no refill here
    except TypeError:  # (the app before the second try)
        throttle = auth.SignInThrottle(burst=burst, per_s=0.01)
    token_web_agent.app.state.sign_in_throttle = throttle
    guesser = token_web_agent.client(client=("10.0.0.21", 50000))
    person = token_web_agent.client(client=("10.0.0.21", 50001))
    guesses = iter(range(10**6))

    def guess(n: int) -> list[int]:
        return [guesser.post("/login", data={"name": "x", "token": f"guess-{next(guesses):020d}"},
                             follow_redirects=False).status_code for _ in range(n)]

    assert set(guess(3 * burst)[burst:]) == {429}  # the address is throttled (for 100 s at this refill)
    t0 = time.monotonic()
    first = person.post("/login", data={"name": "p", "token": WRITE_TOKEN}, follow_redirects=False)
    assert first.status_code == 429 and int(first.headers["retry-after"]) <= check_s
    assert set(guess(20)) == {429}  # new guesses are never checked: the guessing rate stays the allowance's
    time.sleep(int(first.headers["retry-after"]))
    second = person.post("/login", data={"name": "p", "token": WRITE_TOKEN}, follow_redirects=False)
    assert second.status_code == 303, second.text
    assert time.monotonic() - t0 <= check_s + 1.5
    assert set(guess(5)) == {429}
    person.cookies.set("shortlist_token", WRITE_TOKEN)
    assert person.get("/api/progress/head").status_code == 200  # known now: never held up again

    hook = token_web_agent.client(client=("10.0.0.21", 50002), headers={"Authorization": f"Bearer {READ_TOKEN}"})
    r = hook.get("/api/progress/head")  # by header (Label Studio's webhooks): the same second try
    assert r.status_code == 429
    time.sleep(check_s)
    assert hook.get("/api/progress/head").status_code == 200
    wrong = {"Authorization": "Bearer guess-sent-twice-0000000"}
    assert guesser.get("/api/progress/head", headers=wrong).status_code == 429
    time.sleep(check_s)
    assert guesser.get("/api/progress/head", headers=wrong).status_code == 401  # its one check
    time.sleep(check_s)
    assert guesser.get("/api/progress/head", headers=wrong).status_code == 429  # never another


def test_tokens_guessed_by_header_or_cookie_are_throttled_as_sign_ins(token_web_agent: WebAgent) -> None:
    """The throttle covered the sign-in form only: 300 requests with `Authorization: Bearer wrong-N` (or a
    cookie) to /api/progress/head from an address /login was refusing all reached the agent (401, ~195 a second).
    Unknown tokens sent any way now use up the same allowance, then 429 without asking the agent; a token the
    agent answered lately is not held up at the same address (a signed-in person behind the same proxy)."""
    from agent.web import auth

    burst = getattr(auth, "SIGN_IN_BURST", 5)
    token_web_agent.app.state.sign_in_throttle = auth.SignInThrottle(burst=burst, per_s=0.01)  # no refill here
    guesser = token_web_agent.client(client=("10.0.0.9", 50000))
    person = token_web_agent.client(client=("10.0.0.9", 50001), headers={"Authorization": f"Bearer {WRITE_TOKEN}"})
    assert person.get("/api/progress/head").status_code == 200  # known to the agent: remembered
    codes = [guesser.get("/api/progress/head", headers={"Authorization": f"Bearer wrong-{i:020d}"}).status_code
             for i in range(3 * burst)]
    assert codes[:burst] == [401] * burst and set(codes[burst + 1:]) == {429}, codes
    r = guesser.get("/api/progress/head", headers={"Authorization": "Bearer wrong-again"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "Too many failed" in r.text
    guesser.cookies.set("shortlist_token", "wrong-cookie")
    assert guesser.get("/api/progress/head").status_code == 429  # by cookie as by header
    assert guesser.post("/api/labels", json={"labels": []},
                        headers={"Authorization": "Bearer wrong-post"}).status_code == 429  # body not read
    assert person.get("/api/progress/head").status_code == 200  # the known token still gets in


def test_labelstudio_health_tells_a_throttled_address_nothing_of_its_guesses(token_web_agent: WebAgent) -> None:
    """/labelstudio/health sent its token to the agent outside the throttle, and the agent's answer made a
    right token known: a throttled route then answered 200 for a right guess and 429 for a wrong one, without
    asking the agent (76 guesses decided a second; the security review's t6.py, this sequence). /health now
    sends no token: every guess, the right one included, is 429 on the throttled route at its first try."""
    from agent.web import auth

    burst = getattr(auth, "SIGN_IN_BURST", 5)
    token_web_agent.app.state.sign_in_throttle = auth.SignInThrottle(burst=burst, per_s=0.01)  # no refill here
    guesser = token_web_agent.client(client=("10.0.0.21", 50000))
    for i in range(2 * burst):
        guesser.get("/api/progress/head", headers={"Authorization": f"Bearer burn-{i:020d}"})
    guesses = [f"guess-{i:020d}" for i in range(5)] + [READ_TOKEN] + [f"after-{i:020d}" for i in range(3)]
    codes = {}
    for guess in guesses:
        r = guesser.get("/labelstudio/health", headers={"Authorization": f"Bearer {guess}"})
        assert r.status_code == 200 and r.json()["status"] == "UP", r.text
        codes[guess] = guesser.get("/api/progress/head", headers={"Authorization": f"Bearer {guess}"}).status_code
    assert set(codes.values()) == {429}, codes
    assert not token_web_agent.app.state.known_tokens.accepted(READ_TOKEN)


def test_a_token_the_agent_answered_is_never_throttled_however_long_idle(token_web_agent: WebAgent,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The exemption lasted KNOWN_TOKEN_S (10 s) after the agent last answered the token: a guess a second at the
    same address (a proxy) kept an idle person out for good (429 five times of five). It lasts until the agent
    refuses the token; a revoked token is then throttled as any unknown one."""
    from agent.web import auth

    monkeypatch.setattr(auth, "KNOWN_TOKEN_S", 0.05)
    burst = getattr(auth, "SIGN_IN_BURST", 5)
    token_web_agent.app.state.sign_in_throttle = auth.SignInThrottle(burst=burst, per_s=0.01)  # no refill here
    person = token_web_agent.client(client=("10.0.0.13", 50001), headers={"Authorization": f"Bearer {WRITE_TOKEN}"})
    guesser = token_web_agent.client(client=("10.0.0.13", 50000))
    assert person.get("/api/progress/head").status_code == 200
    for i in range(2 * burst):
        guesser.get("/api/progress/head", headers={"Authorization": f"Bearer wrong-{i:020d}"})
    time.sleep(0.2)  # idle past the short memory
    assert [person.get("/api/progress/head").status_code for _ in range(3)] == [200] * 3
    assert person.post("/api/labels", json={"labels": [{"id": "img010.png", "label": "circle"}]}).status_code == 200
    known = token_web_agent.app.state.known_tokens
    known.forget(WRITE_TOKEN)  # as a refusal of it (revoked) does
    assert person.get("/api/progress/head").status_code == 429


def test_sign_out_asks_the_browser_to_drop_its_cache(token_web_agent: WebAgent) -> None:
    """Images are cached a day; Sign out clears them (chromium: tests/agent/web/test_browser_multi.py)."""
    c = token_web_agent.client(follow_redirects=False)
    r = c.post("/logout")
    assert r.status_code == 303 and r.headers["clear-site-data"] == '"cache", "storage"'


def test_a_page_with_a_malformed_query_gets_the_error_page(web_agent: WebAgent) -> None:
    """/queue?page=abc answered FastAPI's raw JSON 422 ({"detail": [...]}) to a person in a browser; it is the
    app's error page now, saying which value is wrong. An API keeps its JSON 422."""
    c = web_agent.client()
    r = c.get("/queue?page=abc")
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/html"), r.text[:200]
    assert "page: Input should be a valid integer" in r.text and '"detail"' not in r.text
    api = c.get("/api/queue?page=abc")
    assert api.status_code == 422 and api.json()["detail"][0]["loc"] == ["query", "page"]


def test_large_view_of_an_exif_rotated_webp_is_upright(web_agent: WebAgent) -> None:
    """/image/ID of a WebP with EXIF orientation 6 came as stored, which browsers show unrotated (they ignore a
    WebP's EXIF orientation) while its thumbnail and the model saw it upright: it comes as the upright decode;
    a JPEG's orientation browsers apply, so it still comes as stored."""
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees: the 40x20 stored picture is 20 wide, 40 high
    payloads = {}
    for name, fmt in (("rot.webp", "WEBP"), ("rot.jpg", "JPEG")):
        buf = io.BytesIO()
        Image.new("RGB", (40, 20), (200, 30, 30)).save(buf, format=fmt, exif=exif.tobytes())
        payloads[name] = buf.getvalue()
    client.ingest(web_agent.stub, [client.image_sample(k, v) for k, v in payloads.items()])
    c = web_agent.client()
    r = c.get("/image/rot.webp")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.size == (20, 40)
    thumb = c.get("/thumb/rot.webp?size=32")
    with Image.open(io.BytesIO(thumb.content)) as img:
        assert img.size == (16, 32)  # the same way up as the large view
    r = c.get("/image/rot.jpg")
    assert r.headers["content-type"] == "image/jpeg" and r.content == payloads["rot.jpg"]


def test_stalled_streams_of_outside_clients_leave_the_app_its_streams(tmp_path: Path) -> None:
    """17 ListSamples(include_payload) with a read token, never read (the operator's walk-through): one token
    holds at most half of the 16 --max-server-streams slots, the rest are refused at once (was: all 16,
    re-openable); with the write token's 8 too every public slot is taken, yet the app, on the agent's local
    socket, has slots of its own: /api/queue and /api/progress answer 200 (were 429, and a Label Studio
    webhook lost)."""
    import numpy as np

    from agent.streams import STREAM_SHARE_WORDS
    from shortlist.v1 import agent_pb2, agent_pb2_grpc

    wa = start_web_agent(tmp_path, tokens=True)
    c = wa.client(headers={"Authorization": f"Bearer {WRITE_TOKEN}"})
    channels: list[grpc.Channel] = []
    calls: list[Any] = []
    try:
        rng = np.random.default_rng(0)
        big = []  # noise that does not compress: a ListSamples with payloads outgrows the client's 64 KiB window
        for i in range(4):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (256, 256, 3), np.uint8)).save(buf, "PNG")
            big.append(client.image_sample(f"noise{i}.png", buf.getvalue()))
        assert client.ingest(wa.stub, big).accepted == 4
        assert c.post("/api/queue/select", json={"strategy": "random", "budget": 3}).status_code == 200

        def stalled(token: str, n: int) -> list[Any]:
            ch = grpc.insecure_channel(wa.config.agent, options=[("grpc.http2.bdp_probe", 0)])
            channels.append(ch)
            stub = agent_pb2_grpc.AgentStub(ch)
            opened = [stub.ListSamples(agent_pb2.ListSamplesRequest(include_payload=True),
                                       metadata=(("authorization", f"Bearer {token}"),)) for _ in range(n)]
            for call in opened:
                call.initial_metadata()  # it started (held: its first large message waits) or was refused
            calls.extend(opened)
            return [call for call in opened if call.done()]

        refused = stalled(READ_TOKEN, 17)
        assert len(refused) == 9 and {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert STREAM_SHARE_WORDS in refused[0].details() and "--max-server-streams" in refused[0].details()
        assert stalled(WRITE_TOKEN, 8) == []  # another token has its share: now all 16 public slots are held
        assert stalled(WRITE_TOKEN, 1)[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for path in ("/api/queue", "/api/progress"):
            r = c.get(path)
            assert r.status_code == 200, (path, r.text)
    finally:
        for call in calls:
            call.cancel()
        for ch in channels:
            ch.close()
        wa.stop()
