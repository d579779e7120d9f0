"""TLS and mutual TLS, bearer tokens and roles, the exposure rule, one agent per port and per data
folder, owner-only files, and ids/uris/metadata that try to steer paths out of the data folder."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from agent import client, security
from agent.config import AgentConfig
from agent.core import Agent
from agent.errors import PermissionDenied
from agent.security import (
    RPC_ROLES,
    DataDirLock,
    DataDirLocked,
    RefusalLog,
    SecurityError,
    ServerSecurity,
    TokenStore,
    check_roles,
    parse_tokens,
)
from agent.service import create_server, stop_server
from shortlist.cli import app
from shortlist.v1 import agent_pb2, agent_pb2_grpc
from tests.agent.conftest import make_samples
from tests.agent.pki import Pki, make_pki

READ_TOKEN = "r" * 8 + "-read-token-0123456789"
WRITE_TOKEN = "w" * 8 + "-write-token-0123456789"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# annotators\nread:{READ_TOKEN}\n\n  write:{WRITE_TOKEN}  \n")
    return path


def offline(data: Path, registry: Path) -> AgentConfig:
    """An Agent's config without the background thread or CUDA."""
    return AgentConfig(data, registry, use_cuda=False, background=False)


def serve(tmp_path: Path, registry: Path, sec: ServerSecurity, host: str = "127.0.0.1",
          data: str = "data") -> tuple[grpc.Server, int, Agent]:
    return create_server(AgentConfig(tmp_path / data, registry, host=host, port=0, poll_s=0.2, use_cuda=False,
                                     security=sec))


@pytest.fixture
def tls_server(tmp_path: Path, registry: Path, pki: Pki) -> Iterator[int]:
    server, port, agent = serve(tmp_path, registry, ServerSecurity(tls_cert=pki.server_cert, tls_key=pki.server_key))
    yield port
    stop_server(server, agent, grace=0.5)


@pytest.fixture
def mtls_server(tmp_path: Path, registry: Path, pki: Pki) -> Iterator[int]:
    server, port, agent = serve(tmp_path, registry, ServerSecurity(tls_cert=pki.server_cert, tls_key=pki.server_key,
                                                                   tls_client_ca=pki.ca))
    yield port
    stop_server(server, agent, grace=0.5)


@pytest.fixture
def token_server(tmp_path: Path, registry: Path, tokens_file: Path) -> Iterator[int]:
    server, port, agent = serve(tmp_path, registry, ServerSecurity(tokens=tokens_file))
    yield port
    stop_server(server, agent, grace=0.5)


def status(port: int, config: client.ClientConfig | None = None, host: str = "localhost") -> agent_pb2.Status:
    stub = client.connect(f"{host}:{port}", timeout=5, config=config)
    reply: agent_pb2.Status = stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=10)
    return reply


# ---- TLS ---------------------------------------------------------------------------------------------
def test_tls_with_the_right_ca(tls_server: int, pki: Pki) -> None:
    assert status(tls_server, client.ClientConfig(tls_ca=pki.ca)).strategies
    # by IP address too (the certificate names 127.0.0.1)
    assert status(tls_server, client.ClientConfig(tls_ca=pki.ca), host="127.0.0.1").strategies


def test_tls_wrong_ca_or_plaintext_client_is_refused_with_the_reason(tls_server: int, pki: Pki) -> None:
    with pytest.raises(client.AgentUnavailable, match=r"not trusted.*--tls-ca"):
        status(tls_server, client.ClientConfig(tls_ca=pki.other_ca))
    with pytest.raises(client.AgentUnavailable, match="uses TLS: pass --tls-ca"):
        status(tls_server)


def test_tls_client_against_a_plaintext_agent(running: object, pki: Pki) -> None:
    port = running.port  # type: ignore[attr-defined]
    with pytest.raises(client.AgentUnavailable, match="does not speak TLS"):
        status(port, client.ClientConfig(tls_ca=pki.ca))


def test_mutual_tls_needs_a_client_certificate_from_the_ca(mtls_server: int, pki: Pki) -> None:
    with pytest.raises(client.AgentUnavailable, match=r"requires a client certificate.*--tls-cert"):
        status(mtls_server, client.ClientConfig(tls_ca=pki.ca))
    with pytest.raises(client.AgentUnavailable, match="refused the client certificate"):
        status(mtls_server, client.ClientConfig(tls_ca=pki.ca, tls_cert=pki.other_client_cert,
                                                tls_key=pki.other_client_key))
    ok = client.ClientConfig(tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key)
    assert status(mtls_server, ok).strategies


def test_tls_files_are_checked_at_start(tmp_path: Path, registry: Path, pki: Pki) -> None:
    with pytest.raises(SecurityError, match="both --tls-cert FILE and --tls-key FILE"):
        serve(tmp_path, registry, ServerSecurity(tls_cert=pki.server_cert))
    with pytest.raises(SecurityError, match="not a PEM certificate and its matching private key"):
        serve(tmp_path, registry, ServerSecurity(tls_cert=pki.server_cert, tls_key=pki.client_key))
    with pytest.raises(SecurityError, match="cannot read --tls-client-ca"):
        serve(tmp_path, registry, ServerSecurity(tls_cert=pki.server_cert, tls_key=pki.server_key,
                                                 tls_client_ca=tmp_path / "missing.pem"))
    assert not (tmp_path / "data").exists()  # refused before the data folder was opened


# ---- tokens ------------------------------------------------------------------------------------------
# The role each RPC should have, said here a second time on purpose: RPC_ROLES changing an RPC's role (a write
# RPC that a read token could call) must fail a test. A new RPC is added to one of the two.
WRITE_RPCS = {"Ingest", "SubmitLabels", "RetractLabels", "ReloadModel", "UpdateQueue", "RenameClass", "DeleteSamples"}
READ_RPCS = {"Select", "PriorLabels", "ListSamples", "GetStatus", "ListLabels", "GetMap", "GetImages", "GetQueue"}


def test_every_agent_rpc_has_a_role() -> None:
    check_roles()
    methods = {m.name for m in agent_pb2.DESCRIPTOR.services_by_name["Agent"].methods}
    assert set(RPC_ROLES) == methods
    new = sorted(methods - WRITE_RPCS - READ_RPCS)
    assert not new, (f"RPC(s) {', '.join(new)}: add each to WRITE_RPCS (it changes the data folder) or READ_RPCS "
                     "in tests/agent/test_security.py, as RPC_ROLES in agent/security.py has it")
    assert {n for n, r in RPC_ROLES.items() if r == "write"} == WRITE_RPCS
    assert {n for n, r in RPC_ROLES.items() if r == "read"} == READ_RPCS & methods


def test_an_rpc_without_a_role_stops_serve_with_one_line(tmp_path: Path, registry: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's mistake (a new RPC not given a role) is said in one line at start, not a traceback."""
    monkeypatch.setattr(security, "RPC_ROLES", {k: v for k, v in RPC_ROLES.items() if k != "GetQueue"})
    says = "RPC GetQueue has no role in agent/security.py RPC_ROLES: add it as read or write"
    res = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path / "d"), "--models", str(registry),
                                   "--port", "0", "--cpu"], env={"COLUMNS": "200"})
    assert res.exit_code == 2, res.output
    assert says in " ".join(res.output.split()) and "Traceback" not in res.output
    assert not (tmp_path / "d").exists()  # refused before the data folder was opened
    with pytest.raises(security.RolesOutOfDate, match=re.escape(says)):
        create_server(AgentConfig(tmp_path / "d", registry, port=0, use_cuda=False))
    with pytest.raises(security.RolesOutOfDate, match=r"RPCs Select, GetQueue have no role .*: add each as read"):
        check_roles({k: v for k, v in RPC_ROLES.items() if k not in ("Select", "GetQueue")})
    with pytest.raises(security.RolesOutOfDate, match="gives Select='reed': a role is read or write"):
        check_roles({**RPC_ROLES, "Select": "reed"})
    with pytest.raises(security.RolesOutOfDate, match=re.escape("names Ping, which shortlist.v1.Agent has no RPC of")):
        check_roles({**RPC_ROLES, "Ping": "read"})


def _code(fn: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        fn()  # type: ignore[operator]
    return e.value.code()  # type: ignore[no-any-return]


def test_tokens_and_roles(token_server: int) -> None:
    address = f"127.0.0.1:{token_server}"
    none = client.connect(address)
    unknown = client.connect(address, config=client.ClientConfig(token="x" * 32))
    reader = client.connect(address, config=client.ClientConfig(token=READ_TOKEN))
    writer = client.connect(address, config=client.ClientConfig(token=WRITE_TOKEN))
    get = agent_pb2.GetStatusRequest()
    with pytest.raises(grpc.RpcError) as e:
        none.GetStatus(get)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "--token" in str(e.value.details())
    assert "SHORTLIST_TOKEN" in str(e.value.details())
    with pytest.raises(grpc.RpcError) as e:
        unknown.GetStatus(get)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "unknown token" in str(e.value.details())
    # read: every read RPC works, every write RPC (unary, client-streaming) is PERMISSION_DENIED
    assert reader.GetStatus(get).strategies
    assert reader.Select(agent_pb2.SelectRequest(budget=1, strategy="random")).strategy == "random"
    assert list(reader.ListSamples(agent_pb2.ListSamplesRequest())) == []
    with pytest.raises(grpc.RpcError) as e:
        client.ingest(reader, make_samples(2))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "role write" in str(e.value.details())
    assert _code(lambda: client.submit_labels(reader, [("s0", "cat")])) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: reader.ReloadModel(agent_pb2.ReloadModelRequest())) == grpc.StatusCode.PERMISSION_DENIED
    # a viewer neither replaces the team's queue nor starts an audit draw (recorded for everyone)
    assert _code(lambda: reader.UpdateQueue(agent_pb2.UpdateQueueRequest(queue=agent_pb2.Queue(ids=[])))) == \
        grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as e:
        reader.Select(agent_pb2.SelectRequest(budget=1, strategy="audit"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert e.value.details() == ("an audit draw (Select strategy audit) needs a token with role write; this token "
                                 "has role read (ask the agent's operator for a write token)")
    assert reader.GetQueue(agent_pb2.GetQueueRequest()).name == "default"
    assert _code(lambda: list(none.ListSamples(agent_pb2.ListSamplesRequest()))) == \
        grpc.StatusCode.UNAUTHENTICATED
    # write implies read
    assert client.ingest(writer, make_samples(4)).accepted == 4
    assert client.submit_labels(writer, [("s0", "cat")]).accepted == 1
    assert writer.GetStatus(get).labeled == 1
    assert len(list(writer.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn")))) == 3
    assert writer.Select(agent_pb2.SelectRequest(budget=1, strategy="audit")).strategy == "audit"
    assert reader.GetStatus(get).audit.drawn == 1
    # a malformed header is UNAUTHENTICATED too
    raw = agent_pb2_grpc.AgentStub(grpc.insecure_channel(address))
    assert _code(lambda: raw.GetStatus(get, metadata=[("authorization", f"Basic {WRITE_TOKEN}")])) == \
        grpc.StatusCode.UNAUTHENTICATED


def test_more_than_one_authorization_header_is_unauthenticated(token_server: int) -> None:
    # The first header used to win: [read, write] was PERMISSION_DENIED, [write, read] wrote.
    raw = agent_pb2_grpc.AgentStub(grpc.insecure_channel(f"127.0.0.1:{token_server}"))
    read, write = ("authorization", f"Bearer {READ_TOKEN}"), ("authorization", f"Bearer {WRITE_TOKEN}")
    for metadata in ([read, write], [write, read], [write, write], [write, ("authorization", "Bearer nope")]):
        with pytest.raises(grpc.RpcError) as e:
            raw.Ingest(iter([agent_pb2.IngestRequest(samples=make_samples(1))]), metadata=metadata)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert "send one authorization header" in str(e.value.details())
        with pytest.raises(grpc.RpcError) as e:
            raw.GetStatus(agent_pb2.GetStatusRequest(), metadata=metadata)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert raw.GetStatus(agent_pb2.GetStatusRequest(), metadata=[write]).samples == 0  # nothing was ingested


def test_health_and_reflection_need_no_token(token_server: int) -> None:
    ch = grpc.insecure_channel(f"127.0.0.1:{token_server}")
    reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="shortlist.v1.Agent"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(ch)
    answers = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert "shortlist.v1.Agent" in {s.name for s in answers[0].list_services_response.service}
    ch.close()


def test_tokens_are_compared_in_constant_time_against_every_token(tokens_file: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = TokenStore(tokens_file)
    calls: list[tuple[bytes, bytes]] = []
    real = security.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    assert store.role(READ_TOKEN) == "read"  # matches the first token, and still compares with the second
    assert len(calls) == 2 and {b for _, b in calls} == {READ_TOKEN.encode(), WRITE_TOKEN.encode()}
    calls.clear()
    assert store.role("nope") is None and len(calls) == 2


def test_bad_tokens_file_names_the_line_never_the_token(tmp_path: Path, registry: Path) -> None:
    secret = "s3cr3t-but-in-a-broken-line-0123"
    cases = {f"read:{READ_TOKEN}\nadmin:{secret}\n": "line 2: expected `role:token` with role read or write",
             f"# c\n\nwrite {secret}\n": "line 3: expected `role:token`",
             "read:short\n": "line 1: a token must be at least 16",
             f"read:{secret}\nwrite:{secret}\n": "line 2: the same token is already given on line 1",
             "# nothing\n": "no tokens"}
    for text, message in cases.items():
        path = tmp_path / "tokens"
        path.write_text(text)
        with pytest.raises(SecurityError) as e:
            parse_tokens(text, str(path))
        assert message in str(e.value) and secret not in str(e.value)
        with pytest.raises(SecurityError):
            serve(tmp_path, registry, ServerSecurity(tokens=path))
    assert not (tmp_path / "data").exists()


def test_tokens_file_is_reread_when_it_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"read:{READ_TOKEN}\n")
    store = TokenStore(path, recheck_s=0.0)
    assert store.role(READ_TOKEN) == "read" and store.role(WRITE_TOKEN) is None
    path.write_text(f"write:{WRITE_TOKEN}\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert store.role(WRITE_TOKEN) == "write" and store.role(READ_TOKEN) is None
    secret = "half-typed-token-that-is-long-enough"
    path.write_text(f"write:{WRITE_TOKEN}\nwrite {secret}\n")  # broken: the previous tokens stay
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    with caplog.at_level(logging.DEBUG):
        assert store.role(WRITE_TOKEN) == "write"
    assert "line 2" in caplog.text and secret not in caplog.text


def touch_later(path: Path, seconds: int) -> None:
    """Give ``path`` a later mtime, so a rewrite within the same clock tick is seen as a change."""
    os.utime(path, ns=(time.time_ns(), time.time_ns() + seconds * 10**9))


def test_removing_the_last_token_revokes_it_and_a_broken_file_fails_closed_after_its_grace(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"write:{WRITE_TOKEN}\n")
    store = TokenStore(path, recheck_s=0.0, broken_grace_s=0.3)
    assert store.role(WRITE_TOKEN) == "write" and store.refusal() == ""
    with caplog.at_level(logging.INFO):
        path.write_text("# revoked\n")  # the last token's line removed: nobody is admitted, at once
        touch_later(path, 1)
        assert store.role(WRITE_TOKEN) is None and store.refusal() == security.NO_TOKENS
        assert store.role(WRITE_TOKEN) is None
    assert caplog.text.count("holds no tokens") == 1  # logged once, not per call
    path.write_text(f"read:{READ_TOKEN}\n")  # fixed: admitted again
    touch_later(path, 2)
    assert store.role(READ_TOKEN) == "read" and store.refusal() == ""
    # A half-written save keeps the previous tokens for the grace period only.
    path.write_text("read:")
    touch_later(path, 3)
    assert store.role(READ_TOKEN) == "read" and store.refusal() == ""
    time.sleep(0.35)
    assert store.role(READ_TOKEN) is None and store.refusal() == security.BROKEN_TOKENS
    path.write_text(f"read:{READ_TOKEN}\n")
    touch_later(path, 4)
    assert store.role(READ_TOKEN) == "read" and store.refusal() == ""
    # A broken file after an empty one does not bring the old tokens back.
    path.write_text("")
    touch_later(path, 5)
    assert store.role(READ_TOKEN) is None
    path.write_text("read:")
    touch_later(path, 6)
    assert store.role(READ_TOKEN) is None and store.refusal() == security.BROKEN_TOKENS


def test_a_caller_is_told_when_the_tokens_file_holds_no_tokens(tmp_path: Path, registry: Path,
                                                              tokens_file: Path) -> None:
    server, port, agent = serve(tmp_path, registry, ServerSecurity(tokens=tokens_file))
    try:
        stub = client.connect(f"127.0.0.1:{port}", config=client.ClientConfig(token=WRITE_TOKEN))
        stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=10)
        tokens_file.write_text("")
        touch_later(tokens_file, 1)
        time.sleep(1.1)  # the file is looked at at most every second
        with pytest.raises(grpc.RpcError) as e:
            stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        details = str(e.value.details())
        assert "tokens file holds no tokens" in details and "operator" in details and str(tokens_file) not in details
    finally:
        stop_server(server, agent, grace=0.5)


def test_no_token_in_the_logs(tmp_path: Path, registry: Path, tokens_file: Path,
                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        server, port, agent = serve(tmp_path, registry, ServerSecurity(tokens=tokens_file))
        try:
            address = f"127.0.0.1:{port}"
            for token in ("", READ_TOKEN, WRITE_TOKEN, "not-a-known-token-000000"):
                stub = client.connect(address, config=client.ClientConfig(token=token))
                with contextlib.suppress(grpc.RpcError):
                    stub.GetStatus(agent_pb2.GetStatusRequest())
                with contextlib.suppress(grpc.RpcError):
                    client.ingest(stub, make_samples(2, prefix=f"t{len(token)}-"))
                with contextlib.suppress(grpc.RpcError):
                    stub.ReloadModel(agent_pb2.ReloadModelRequest())
        finally:
            stop_server(server, agent, grace=0.5)
    assert "refused" in caplog.text  # the refusals are logged ...
    for token in (READ_TOKEN, WRITE_TOKEN, "not-a-known-token-000000"):
        assert token not in caplog.text  # ... without the token


def test_refusals_are_logged_with_the_client_and_throttled(token_server: int,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A client looping on a bad token gets every refusal, the log one line per reason and address per 10 s."""
    stub = client.connect(f"127.0.0.1:{token_server}", config=client.ClientConfig(token="x" * 32))
    with caplog.at_level(logging.WARNING, logger="agent.security"):
        for _ in range(50):
            assert _code(lambda: stub.GetStatus(agent_pb2.GetStatusRequest())) == grpc.StatusCode.UNAUTHENTICATED
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert lines == ["refused GetStatus: unknown token from ipv4:127.0.0.1"]
    log = RefusalLog(interval_s=0.05)
    with caplog.at_level(logging.WARNING, logger="agent.security"):
        caplog.clear()
        for port in range(3):  # a new connection per call: a new port, the same client
            log.refused("Select: no token", f"ipv4:10.0.0.9:{5000 + port}")
        log.refused("Select: no token", "ipv6:[::1]:5000")
        time.sleep(0.06)
        log.refused("Select: no token", "ipv4:10.0.0.9:6000")
    assert [r.getMessage() for r in caplog.records] == [
        "refused Select: no token from ipv4:10.0.0.9", "refused Select: no token from ipv6:[::1]",
        "refused Select: no token from ipv4:10.0.0.9 (2 more from it in the last 0 s, not logged)"]


# ---- exposure ----------------------------------------------------------------------------------------
def test_non_loopback_without_tls_and_tokens_is_refused(tmp_path: Path, registry: Path, pki: Pki,
                                                        tokens_file: Path) -> None:
    with pytest.raises(SecurityError) as e:
        serve(tmp_path, registry, ServerSecurity(), host="0.0.0.0")
    msg = str(e.value)
    assert "--tls-cert" in msg and "--tokens" in msg and "--insecure" in msg and "127.0.0.1" in msg
    with pytest.raises(SecurityError, match="without tokens"):
        serve(tmp_path, registry, ServerSecurity(tls_cert=pki.server_cert, tls_key=pki.server_key), host="0.0.0.0")
    with pytest.raises(SecurityError, match=r"without TLS \(--tls-cert"):
        serve(tmp_path, registry, ServerSecurity(tokens=tokens_file), host="0.0.0.0")
    assert not (tmp_path / "data").exists()
    server, port, agent = serve(tmp_path, registry, ServerSecurity(insecure=True), host="0.0.0.0")
    try:
        st = status(port, host="127.0.0.1")
        assert any(w.startswith("insecure: serving on 0.0.0.0") for w in st.warnings)
    finally:
        stop_server(server, agent, grace=0.5)
    server, port, agent = serve(tmp_path, registry, ServerSecurity(tls_cert=pki.server_cert, tls_key=pki.server_key,
                                                                   tokens=tokens_file), host="0.0.0.0")
    try:
        st = status(port, client.ClientConfig(tls_ca=pki.ca, token=READ_TOKEN))
        assert not any("insecure" in w for w in st.warnings)
    finally:
        stop_server(server, agent, grace=0.5)


def test_loopback_names() -> None:
    assert all(security.is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.3.2.1"))
    assert not any(security.is_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "example.invalid"))


# ---- one agent per port and per data folder ----------------------------------------------------------
def test_a_port_held_by_another_agent_is_refused(tmp_path: Path, registry: Path) -> None:
    server, port, agent = serve(tmp_path, registry, ServerSecurity())
    try:
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}: the port is in use"):
            create_server(AgentConfig(tmp_path / "other", registry, port=port, use_cuda=False))
        # the refused agent let go of its folder
        Agent(offline(tmp_path / "other", registry)).close()
        assert status(port, host="127.0.0.1").strategies  # the first one still answers
    finally:
        stop_server(server, agent, grace=0.5)


def test_a_data_folder_held_by_another_agent_is_refused(tmp_path: Path, registry: Path) -> None:
    first = Agent(offline(tmp_path / "d", registry))
    try:
        with pytest.raises(DataDirLocked, match=f"{tmp_path / 'd'} is in use by another agent \\(pid {os.getpid()}\\)"):
            Agent(offline(tmp_path / "d", registry))
    finally:
        first.close()
    Agent(offline(tmp_path / "d", registry)).close()  # free again after close


def test_the_lock_is_per_process_and_dies_with_a_sigkilled_agent(tmp_path: Path, registry: Path) -> None:
    """A second ``shortlist serve`` on a folder a running agent holds exits with a clear message; once
    that agent is SIGKILLed the folder opens at once (the kernel dropped the flock)."""
    data = tmp_path / "d"
    cmd = [sys.executable, "-m", "shortlist.cli", "serve", "--data-dir", str(data), "--models", str(registry),
           "--cpu", "--poll", "0.2"]
    first = subprocess.Popen([*cmd, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (data / security.LOCK_FILE).is_file() or not (data / security.LOCK_FILE).read_text().strip():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        umask = os.umask(0o022)
        try:  # `shortlist serve` in this process: a second agent beside the first one's process
            second = CliRunner().invoke(app, [*cmd[3:], "--port", "0"])
        finally:
            os.umask(umask)
        assert second.exit_code == 2
        assert f"is in use by another agent (pid {first.pid})" in " ".join(second.output.split())
        with pytest.raises(DataDirLocked):
            DataDirLock(data)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        lock = DataDirLock(data)  # at once: no stale lock
        lock.release()
        Agent(offline(data, registry)).close()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        if first.stdout is not None:
            first.stdout.close()


# ---- owner-only files --------------------------------------------------------------------------------
def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_data_folder_and_files_are_owner_only(tmp_path: Path, registry: Path) -> None:
    old = os.umask(0o022)  # a permissive umask, as a service manager might leave it
    try:
        server, port, agent = serve(tmp_path, registry, ServerSecurity())
        try:
            stub = client.connect(f"127.0.0.1:{port}")
            assert client.ingest(stub, make_samples(6)).accepted == 6
            data = tmp_path / "data"
            for name in ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm", security.LOCK_FILE):
                assert _mode(data / name) == 0o600, name
            blobs = [p for p in (data / "blobs").rglob("*")]
            assert blobs and all(_mode(p) == (0o700 if p.is_dir() else 0o600) for p in blobs)
            assert _mode(data) == 0o700 and _mode(data / "blobs") == 0o700
        finally:
            stop_server(server, agent, grace=0.5)  # writes the index snapshot
        snapshot = [data / "index", *(data / "index").rglob("*")]
        assert len(snapshot) > 2 and all(_mode(p) == (0o700 if p.is_dir() else 0o600) for p in snapshot)
        # an existing folder made with a wider mode is narrowed when an agent opens it
        wide = tmp_path / "wide"
        wide.mkdir(mode=0o755)
        Agent(offline(wide, registry)).close()
        assert _mode(wide) == 0o700
    finally:
        os.umask(old)


# ---- ids, uris and metadata never steer a path -------------------------------------------------------
def test_ids_uris_and_metadata_stay_inside_the_data_folder(tmp_path: Path, registry: Path) -> None:
    before = {p for p in tmp_path.rglob("*")}
    data = tmp_path / "a" / "data"
    server, port, agent = create_server(AgentConfig(data, registry, port=0, poll_s=0.2, use_cuda=False))
    try:
        stub = client.connect(f"127.0.0.1:{port}")
        hostile = ["../../escape", "/tmp/absolute", "..\\..\\win", "../" * 30 + "etc/passwd",
                   str(tmp_path / "outside"), "blobs/../../x", "."]
        samples = make_samples(len(hostile))
        for s, sid in zip(samples, hostile, strict=True):
            s.id = sid
            s.uri = "../" * 10 + "etc/shadow" if sid != "." else "/etc/passwd\x00.png"
            s.metadata["../path"] = "/abs/../../x\x00"
        reply = client.ingest(stub, samples)
        assert reply.accepted == len(hostile), reply.rejected
        assert client.submit_labels(stub, [(sid, "cat") for sid in hostile]).accepted == len(hostile)
        listed = {s.id: s for s in client.list_samples(stub, include_payload=True)}
        assert set(listed) == set(hostile) and listed["."].metadata["../path"] == "/abs/../../x\x00"
        nul = client.ingest(stub, [client.image_sample("a\x00b", samples[0].encoded_image)])  # refused, not stored
        assert nul.accepted == 0 and "control characters or invisible ones (U+0000)" in nul.rejected[0].reason
    finally:
        stop_server(server, agent, grace=0.5)
    new = {p for p in tmp_path.rglob("*")} - before
    assert new and all(p == data.parent or p.is_relative_to(data) for p in new), sorted(new)
    assert not (tmp_path / "outside").exists()
    for p in (data / "blobs").rglob("*"):  # blobs are named by their content's sha256 only
        rel = p.relative_to(data / "blobs").as_posix()
        assert re.fullmatch(r"[0-9a-f]{2}(/[0-9a-f]{62})?", rel), rel


def test_secret_files_readable_by_others_are_warned_about(tmp_path: Path, pki: Pki,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"read:{READ_TOKEN}\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        TokenStore(path)
    assert "can be read by other users (mode 644); `chmod 600" in caplog.text and READ_TOKEN not in caplog.text
    caplog.clear()
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        TokenStore(path)
    assert "other users" not in caplog.text


def test_a_denied_call_ends_with_its_code_whatever_kind_of_method_and_never_runs_the_handler() -> None:
    """``_deny`` for each of the four kinds of gRPC method, and for a handler with no behaviour at all: a
    bidirectional-stream handler (gRPC calls it before any request message is read) that aborts with the
    code given without reading a request, and the method's own behaviour never runs."""
    ran: list[str] = []

    def behaviour(_request: object, _context: object) -> None:
        ran.append("ran")

    class Aborted(Exception):
        pass

    class Context:
        def abort(self, code: grpc.StatusCode, message: str) -> None:
            raise Aborted(code, message)

    def unread() -> Iterator[object]:
        ran.append("read a request")
        yield object()

    handlers = [grpc.unary_unary_rpc_method_handler(behaviour), grpc.unary_stream_rpc_method_handler(behaviour),
                grpc.stream_unary_rpc_method_handler(behaviour), grpc.stream_stream_rpc_method_handler(behaviour),
                grpc.unary_unary_rpc_method_handler(None)]  # type: ignore[arg-type]
    for handler in handlers:
        denied = security._deny(handler, PermissionDenied("no"))
        assert denied.stream_stream is not None and denied.request_deserializer is None
        assert denied.response_serializer is handler.response_serializer
        with pytest.raises(Aborted) as aborted:
            denied.stream_stream(unread(), Context())
        assert aborted.value.args == (grpc.StatusCode.PERMISSION_DENIED, "no")
    assert not ran


def test_the_cli_does_not_advise_a_rerun_after_a_refusal(token_server: int, tmp_path: Path) -> None:
    """`shortlist ingest` with a read token: PERMISSION_DENIED and what to do, without the "run the same
    command again" hint of a broken stream (again would fail the same way)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for s in make_samples(2):
        (folder / f"{s.id}.png").write_bytes(s.encoded_image)
    result = CliRunner().invoke(app, ["ingest", str(folder), "--agent", f"127.0.0.1:{token_server}",
                                      "--token", READ_TOKEN])
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "PERMISSION_DENIED: Ingest needs a token with role write" in said
    assert "run the same command again" not in said


def test_a_read_tokens_select_is_answered_not_recorded(tmp_path: Path, registry: Path, tokens_file: Path) -> None:
    """A viewer's or dashboard's Selects change nothing: not in the selections table (each distinct one grew
    it), not a draw for the calibration; the reply says so. A write token's Select is recorded as before."""
    server, port, agent = serve(tmp_path, registry, ServerSecurity(tokens=tokens_file))
    try:
        address = f"127.0.0.1:{port}"
        reader = client.connect(address, config=client.ClientConfig(token=READ_TOKEN))
        writer = client.connect(address, config=client.ClientConfig(token=WRITE_TOKEN))
        client.ingest(writer, make_samples(40))
        for seed in range(5):
            reply = reader.Select(agent_pb2.SelectRequest(budget=30, strategy="random", seed=seed))
            assert len(reply.selected) == 30 and "made with a read token" in reply.details["selection_not_recorded"]
            # no id of a selection that was never stored, as on a full disk (a fresh uuid was returned)
            assert reply.selection_id == "" and "no selection_id (empty)" in reply.details["selection_not_recorded"]
        assert agent.state.selections() == [] and not agent._draws
        again = reader.Select(agent_pb2.SelectRequest(budget=30, strategy="random", seed=4))  # from the cache
        assert [s.id for s in again.selected] == [s.id for s in reply.selected] and again.selection_id == ""
        mine = writer.Select(agent_pb2.SelectRequest(budget=30, strategy="random", seed=4))  # the same, recorded
        assert [s.id for s in mine.selected] == [s.id for s in reply.selected] and not mine.details
        assert [sid for sid, *_ in agent.state.selections()] == [mine.selection_id] and len(agent._draws) == 1
        # once recorded, a read token's repeat gets the recorded selection and its id (from the cache)
        seen = reader.Select(agent_pb2.SelectRequest(budget=30, strategy="random", seed=4))
        assert seen.selection_id == mine.selection_id != "" and "selection_not_recorded" not in seen.details
    finally:
        stop_server(server, agent, grace=0.5)


def test_a_publisher_with_a_read_token_watches_the_agent_take_the_version_up(token_server: int,
                                                                            registry: Path) -> None:
    """ReloadModel needs write; a publisher holding a read token (`shortlist cycle`, `models rollback`) is not
    refused after its publish: it watches GetStatus while the agent takes the version up at its next registry
    check (it had exited 1 with the model published and soon served)."""
    from agent.testing import publish_linear

    reader = client.connect(f"127.0.0.1:{token_server}", config=client.ClientConfig(token=READ_TOKEN))
    assert _code(lambda: reader.ReloadModel(agent_pb2.ReloadModelRequest())) == grpc.StatusCode.PERMISSION_DENIED
    new = publish_linear(registry, seed=1)
    st = client.reload_model(reader, new, wait_s=30)
    assert new in (st.model_version, st.pending_model_version)


def test_a_tcp_client_cannot_lower_its_refusals_log_level(token_server: int, caplog: pytest.LogCaptureFixture) -> None:
    """The web app's sign-in marks its role check (security.ROLE_CHECK_KEY) so that an expected refusal is logged at
    INFO; believed on the app's local socket only: a client over TCP sending it is logged at WARNING as any."""
    reader = client.connect(f"127.0.0.1:{token_server}", config=client.ClientConfig(token=READ_TOKEN))
    with caplog.at_level(logging.INFO, logger="agent.security"):
        with pytest.raises(grpc.RpcError) as e:
            reader.ReloadModel(agent_pb2.ReloadModelRequest(), metadata=((security.ROLE_CHECK_KEY, "1"),))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    refused = [r for r in caplog.records if "refused ReloadModel" in r.getMessage()]
    assert refused and all(r.levelno == logging.WARNING for r in refused), caplog.text
    # nor make its refusal read as the web app's harmless probe: the mark is ignored entirely over TCP
    assert not [r for r in caplog.records if "role check" in r.getMessage()], caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="agent.security"), pytest.raises(grpc.RpcError):
        reader.SubmitLabels(agent_pb2.SubmitLabelsRequest(), metadata=((security.ROLE_CHECK_KEY, "1"),))
    refused = [r for r in caplog.records if "refused SubmitLabels" in r.getMessage()]
    assert refused and all(r.levelno == logging.WARNING and "role check" not in r.getMessage() for r in refused)


def test_a_call_without_a_token_is_refused_before_its_request_is_read(token_server: int) -> None:
    """The refusal does not wait for the request message: a client that sends its call's headers and never
    its message is refused at once (a unary handler waits for the message in a gRPC thread: 120 such calls
    froze the agent for callers with a token, and 30 calls of 60 MB took it from 159 MB to 1.8 GB)."""
    ch = grpc.insecure_channel(f"127.0.0.1:{token_server}")
    stop = threading.Event()

    def never() -> Iterator[bytes]:
        stop.wait(30)
        yield from ()

    try:
        for method in ("GetStatus", "ListSamples", "SubmitLabels"):
            path = f"/shortlist.v1.Agent/{method}"
            call = (ch.stream_stream(path)(never(), timeout=20) if method == "ListSamples"
                    else ch.stream_unary(path).future(never(), timeout=20))
            with pytest.raises(grpc.RpcError) as e:
                call.result() if method != "ListSamples" else next(call)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED  # not DEADLINE_EXCEEDED after 20 s
            read_only = ch.stream_unary(path).future(never(), timeout=20,
                                                     metadata=(("authorization", f"Bearer {READ_TOKEN}"),))
            if method == "SubmitLabels":  # a read token on a write RPC: the same
                with pytest.raises(grpc.RpcError) as e:
                    read_only.result()
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            else:
                read_only.cancel()
    finally:
        stop.set()
        ch.close()


def test_the_cli_refuses_a_token_that_is_not_printable_ascii_before_connecting(tmp_path: Path) -> None:
    """`shortlist status --token "\u00e9\u00e9"`: a usage error naming --token (exit 2), not gRPC's C-core trace and
    INTERNAL "Invalid metadata" after connecting; the same for SHORTLIST_TOKEN and a control character."""
    for args, env in ((["--token", "\u00e9\u00e9\u00e9\u00e9"], {}), ([], {"SHORTLIST_TOKEN": "abc\x01def0123456789"})):
        result = CliRunner().invoke(app, ["status", "--agent", "127.0.0.1:1", *args], env=env)
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and "a token is printable ASCII" in said and "--token" in said, said
        assert "INTERNAL" not in said and "Invalid metadata" not in said
    with pytest.raises(ValueError, match="a token is printable ASCII"):
        client.ClientConfig(token="\u00e9t\u00e9")


def test_weak_tokens_are_warned_about_naming_the_line_never_the_token(caplog: pytest.LogCaptureFixture) -> None:
    """`write:aaaaaaaaaaaaaaaa` and `read:passwordpassword` are accepted (a test setup may use such) but each gets a
    warning saying how to make a strong one; a token from `openssl rand -hex 32` gets none."""
    import logging

    caplog.set_level(logging.WARNING, logger="agent.security")
    strong = "3f1c9a0b7e5d2c4f8a6b1e0d9c7f5a3b2e4d6c8a0f1b3d5e7c9a2b4d6f8e0c1a"
    pairs = security.parse_tokens(f"write:aaaaaaaaaaaaaaaa\nread:passwordpassword\nwrite:{strong}\n"
                                  "read:abcdefghijklmnopqrs", "tokens")
    assert len(pairs) == 4
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("tokens line 1: a weak write token (16 characters, fewer than 20)")
    assert "tokens line 2: a weak read token" in lines[1] and "tokens line 4: a weak read token (19" in lines[2]
    assert all("secrets.token_urlsafe(32)" in line and "openssl rand -hex 32" in line for line in lines)
    assert not any(t in " ".join(lines) for t in ("aaaaaaaaaaaaaaaa", "passwordpassword", strong, "abcdefghijk"))
    caplog.clear()
    security.parse_tokens("write:" + "ab" * 12, "tokens")
    assert "only 2 different characters" in caplog.records[0].getMessage()


# ---- the TLS certificate's validity at start (the operator's walk-through, item 3) -----------------------
def _self_signed(tmp_path: Path, name: str, not_before: Any, not_after: Any) -> tuple[Path, Path]:
    """A self-signed EC certificate valid from ``not_before`` to ``not_after`` (datetimes) and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent.lab")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.mark.parametrize("name,start_days,end_days,says", [
    ("expired", -400, -2, "expired on"),
    ("future", 3, 400, "is not valid before"),
    ("soon", -300, 10, "expires on"),
    ("today", -300, 0.9, "in 22 hours"),  # was "in 0 days"
    ("fine", -1, 365, None),
])
def test_serve_warns_about_a_certificate_out_of_its_validity(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             name: str, start_days: float, end_days: float,
                                                             says: str | None) -> None:
    """An expired, not yet valid, or soon expiring --tls-cert is a WARNING at start naming the file and its
    dates (was: nothing, and every client then failed its handshake); the agent still starts with it (an
    operator may be rotating)."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    cert, key = _self_signed(tmp_path, name, now + dt.timedelta(days=start_days), now + dt.timedelta(days=end_days))
    caplog.set_level(logging.WARNING)
    assert ServerSecurity(tls_cert=cert, tls_key=key).credentials() is not None
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and str(cert) in r.getMessage()]
    if says is None:
        assert warned == []
        return
    assert len(warned) == 1 and says in warned[0], warned
    end = (now + dt.timedelta(days=end_days)).strftime("%Y-%m-%d")
    start = (now + dt.timedelta(days=start_days)).strftime("%Y-%m-%d")
    assert end in warned[0] or start in warned[0], warned
    assert "clients will refuse it" in warned[0]


def test_a_missing_tokens_file_is_called_missing_and_the_grace_is_stated_as_configured(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The tokens file removed while serving: the previous tokens stay for the grace period, then callers are
    told the file is missing (was: "does not parse"), and the log states the grace as configured next to the
    time the file has not parsed for (was: "still does not parse after 44 s" for a 30 s grace, counted at
    the next call)."""
    now = [100.0]
    path = tmp_path / "tokens"
    path.write_text(f"read:{READ_TOKEN}\n")
    store = TokenStore(path, recheck_s=0.0, broken_grace_s=30.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO):
        path.unlink()
        assert store.role(READ_TOKEN) == "read" and store.refusal() == ""  # within the grace
        now[0] += 44.0  # the next call comes 44 s later
        assert store.role(READ_TOKEN) is None and store.refusal() == security.MISSING_TOKENS
    assert "is missing" in security.MISSING_TOKENS and "does not parse" not in security.MISSING_TOKENS
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all(str(path) in e and "is missing" in e for e in errors), errors
    assert "does not parse" not in caplog.text
    assert "30 s" in errors[1] and "44 s" in errors[1] and "grace" in errors[1], errors
    path.write_text("read:")  # back, but half written: now it does not parse
    touch_later(path, 1)
    assert store.refusal() == security.BROKEN_TOKENS
    path.write_text(f"read:{READ_TOKEN}\n")
    touch_later(path, 2)
    assert store.role(READ_TOKEN) == "read" and store.refusal() == ""
