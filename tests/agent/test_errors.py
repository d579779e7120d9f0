"""Every error of every RPC becomes a status code in one place (agent.errors): domain exceptions,
storage problems (full / read-only disk), bugs (INTERNAL), errors raised mid-stream, and malformed
request bytes (INVALID_ARGUMENT, not gRPC's default INTERNAL). Never UNKNOWN."""

from __future__ import annotations

import ast
import errno
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError

from agent import client
from agent.errors import (
    RETRY_AFTER_KEY,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RepeatedWarning,
    ResourceExhausted,
    map_exception,
    storage_problem,
)
from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_samples, start

SVC = "/shortlist.v1.Agent/"
CODE = grpc.StatusCode


def rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    assert e.value.code() not in (CODE.UNKNOWN, None)
    return e.value


@pytest.mark.parametrize(("exc", "code", "words"), [
    (OSError(errno.ENOSPC, "No space left on device"), CODE.RESOURCE_EXHAUSTED, "free space"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), CODE.RESOURCE_EXHAUSTED, "free space"),
    (sqlite3.OperationalError("database or disk is full"), CODE.RESOURCE_EXHAUSTED, "free space"),
    (OSError(errno.EROFS, "Read-only file system"), CODE.FAILED_PRECONDITION, "make it writable"),
    (PermissionError(errno.EACCES, "Permission denied"), CODE.FAILED_PRECONDITION, "make it writable"),
    (sqlite3.OperationalError("attempt to write a readonly database"), CODE.FAILED_PRECONDITION, "writable"),
    (sqlite3.OperationalError("disk I/O error"), CODE.UNAVAILABLE, "check its disk"),
    (OSError(errno.EIO, "Input/output error"), CODE.UNAVAILABLE, "check its disk"),
    (sqlite3.DatabaseError("database disk image is malformed"), CODE.DATA_LOSS, "backup"),
    (DecodeError("Error parsing message"), CODE.INVALID_ARGUMENT, "malformed request"),
    (ResourceExhausted("too many", retry_after_s=2), CODE.RESOURCE_EXHAUSTED, "too many"),
    (NotFound("unknown id 'x'"), CODE.NOT_FOUND, "unknown id"),
    (KeyError("bug"), CODE.INTERNAL, "bug in the agent"),
])
def test_mapping(exc: BaseException, code: grpc.StatusCode, words: str) -> None:
    m = map_exception(exc)
    assert m.code == code and words in m.message


def test_real_sqlite_errors_by_result_code(tmp_path: Path) -> None:
    db = tmp_path / "x.sqlite"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.commit()
    ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as e:
        ro.execute("INSERT INTO t VALUES (1)")
    assert map_exception(e.value).code == CODE.FAILED_PRECONDITION
    full = sqlite3.connect(tmp_path / "full.sqlite")
    full.execute("PRAGMA max_page_count=2")  # SQLite's own way to make a database "full"
    with pytest.raises(sqlite3.OperationalError) as e:
        full.execute("CREATE TABLE t (x)").execute("INSERT INTO t VALUES (randomblob(100000))")
    assert map_exception(e.value).code == CODE.RESOURCE_EXHAUSTED


def test_notes_and_retry_hint() -> None:
    e = sqlite3.OperationalError("database or disk is full")
    e.add_note("3 samples of this stream were stored")
    m = map_exception(e)
    assert m.message.endswith("; 3 samples of this stream were stored") and m.retry_after_s
    assert map_exception(ResourceExhausted("busy", retry_after_s=1.5)).retry_after_s == 1.5


def test_domain_exceptions_keep_their_old_homes() -> None:
    from agent.core import NotFound as CoreNotFound
    from agent.pool import FailedPrecondition as PoolFP
    from agent.pool import InvalidArgument as PoolIA

    assert (PoolIA, PoolFP, CoreNotFound) == (InvalidArgument, FailedPrecondition, NotFound)
    assert issubclass(InvalidArgument, ValueError)  # callers catching ValueError keep working


def _raise(e: BaseException) -> Callable[..., Any]:
    def fn(*args: Any, **kw: Any) -> Any:
        raise e
    return fn


def test_unary_rpcs_map_storage_errors_and_bugs(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    client.ingest(running.stub, make_samples(4))
    agent = running.agent
    monkeypatch.setattr(agent, "submit_labels", _raise(OSError(errno.ENOSPC, "No space left on device")))
    err = rpc_error(lambda: client.submit_labels(running.stub, [("s0", "cat")]))
    assert err.code() == CODE.RESOURCE_EXHAUSTED and "free space" in err.details()
    assert dict(err.trailing_metadata())[RETRY_AFTER_KEY] == "30000"
    monkeypatch.setattr(agent, "status", _raise(sqlite3.OperationalError("attempt to write a readonly database")))
    err = rpc_error(lambda: running.stub.GetStatus(agent_pb2.GetStatusRequest()))
    assert err.code() == CODE.FAILED_PRECONDITION and "writable" in err.details()
    monkeypatch.setattr(agent.manager, "reload", _raise(ZeroDivisionError("oops")))
    err = rpc_error(lambda: running.stub.ReloadModel(agent_pb2.ReloadModelRequest()))
    assert err.code() == CODE.INTERNAL and "ZeroDivisionError" in err.details()
    monkeypatch.setattr(agent, "select", _raise(sqlite3.OperationalError("database or disk is full")))
    err = rpc_error(lambda: running.stub.Select(agent_pb2.SelectRequest(budget=1, strategy="random")))
    assert err.code() == CODE.RESOURCE_EXHAUSTED
    monkeypatch.undo()
    assert running.stub.GetStatus(agent_pb2.GetStatusRequest()).samples == 4  # still serving


def test_errors_mid_stream_are_mapped(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    client.ingest(running.stub, make_samples(6, labels=3))
    agent = running.agent
    real_list = agent.list_samples_at

    def failing_rows(rows: Iterator[Any]) -> Iterator[Any]:
        yield next(iter(rows))
        raise OSError(errno.EROFS, "Read-only file system")

    def failing_list(labeled_only: bool, include_payload: bool, ids: Any = ()) -> tuple[int, Iterator[Any]]:
        events, rows = real_list(labeled_only, include_payload, ids)
        return events, failing_rows(rows)

    monkeypatch.setattr(agent, "list_samples_at", failing_list)
    got: list[str] = []
    err = rpc_error(lambda: got.extend(s.id for s in client.list_samples(running.stub)))
    assert got == ["s0"] and err.code() == CODE.FAILED_PRECONDITION

    real_priors = agent.prior_labels

    def failing_priors(*args: Any) -> Iterator[Any]:
        yield from list(real_priors(*args))[:1]
        raise NotFound("sample 's5' vanished")

    monkeypatch.setattr(agent, "prior_labels", failing_priors)
    first: list[str] = []
    err = rpc_error(lambda: first.extend(p.id for p in running.stub.PriorLabels(
        agent_pb2.PriorLabelsRequest(method="knn"))))
    assert len(first) == 1 and err.code() == CODE.NOT_FOUND and "vanished" in err.details()


def test_ingest_commit_failure_says_what_was_stored(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(running.agent.ingest, "store", _raise(sqlite3.OperationalError("database or disk is full")))
    err = rpc_error(lambda: client.ingest(running.stub, make_samples(3)))
    assert err.code() == CODE.RESOURCE_EXHAUSTED
    assert "free space" in err.details() and "0 samples of this stream were stored" in err.details()
    monkeypatch.undo()
    assert client.ingest(running.stub, make_samples(3)).accepted == 3


BAD_UTF8_SELECT = b"\x08\x01\x12\x02\xff\xfe"  # budget=1, strategy=<2 bytes that are not UTF-8>


@pytest.mark.parametrize(("method", "kind"), [
    ("Select", "uu"), ("SubmitLabels", "uu"), ("GetStatus", "uu"), ("ReloadModel", "uu"),
    ("RetractLabels", "uu"), ("GetQueue", "uu"), ("UpdateQueue", "uu"),
    ("PriorLabels", "us"), ("ListSamples", "us"), ("GetMap", "us"), ("Ingest", "su"),
])
def test_malformed_bytes_are_invalid_argument(running: Running, method: str, kind: str) -> None:
    ch = running.channel
    bad = b"\xff\xff"
    if kind == "uu":
        err = rpc_error(lambda: ch.unary_unary(SVC + method)(bad, timeout=10))
    elif kind == "us":
        err = rpc_error(lambda: list(ch.unary_stream(SVC + method)(bad, timeout=10)))
    else:
        err = rpc_error(lambda: ch.stream_unary(SVC + method)(iter([bad]), timeout=10))
    assert err.code() == CODE.INVALID_ARGUMENT and "malformed request" in err.details()


def test_invalid_utf8_is_invalid_argument_and_changes_nothing(running: Running) -> None:
    err = rpc_error(lambda: running.channel.unary_unary(SVC + "Select")(BAD_UTF8_SELECT, timeout=10))
    assert err.code() == CODE.INVALID_ARGUMENT
    good = agent_pb2.IngestRequest(samples=make_samples(2)).SerializeToString()
    sample = agent_pb2.Sample(id="x", encoded_image=b"1").SerializeToString().replace(b"x", b"\xff", 1)
    bad = agent_pb2.IngestRequest.FromString(good).SerializeToString() + b"\x0a" + bytes([len(sample)]) + sample
    err = rpc_error(lambda: running.channel.stream_unary(SVC + "Ingest")(iter([bad]), timeout=10))
    assert err.code() == CODE.INVALID_ARGUMENT
    assert running.stub.GetStatus(agent_pb2.GetStatusRequest()).samples == 0


class _Guard(grpc.ServerInterceptor):
    """What a security layer plugs into create_server: Select raises a domain exception, GetStatus aborts
    itself, everything else passes."""

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if details.method.endswith("/Select"):  # type: ignore[attr-defined]
            def deny(request: Any, context: grpc.ServicerContext) -> Any:
                raise PermissionDenied("a read token cannot do that")
            return grpc.unary_unary_rpc_method_handler(deny, handler.request_deserializer,
                                                       handler.response_serializer)
        if details.method.endswith("/GetStatus"):  # type: ignore[attr-defined]
            def refuse(request: Any, context: grpc.ServicerContext) -> Any:
                context.abort(CODE.UNAUTHENTICATED, "no token")
            return grpc.unary_unary_rpc_method_handler(refuse, handler.request_deserializer,
                                                       handler.response_serializer)
        return handler


def test_extra_interceptors_run_inside_the_mapping(tmp_path: Path, registry: Path) -> None:
    r = start(tmp_path / "data", registry, interceptors=[_Guard()])
    try:
        err = rpc_error(lambda: r.stub.Select(agent_pb2.SelectRequest(budget=1, strategy="random")))
        assert err.code() == CODE.PERMISSION_DENIED and "read token" in err.details()
        err = rpc_error(lambda: r.stub.GetStatus(agent_pb2.GetStatusRequest()))
        assert err.code() == CODE.UNAUTHENTICATED and err.details() == "no token"  # its own abort stands
        err = rpc_error(lambda: r.channel.unary_unary(SVC + "Select")(b"\xff", timeout=10))
        assert err.code() == CODE.INVALID_ARGUMENT  # still parsed inside the mapping
        assert client.ingest(r.stub, make_samples(2)).accepted == 2
    finally:
        r.stop()


def test_a_repeated_warning_is_logged_once_per_interval_with_its_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    warn = RepeatedWarning(logging.getLogger("test.repeated"), every_s=600.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.repeated"):
        for _ in range(300):  # a full disk, tried every 2 s for 10 minutes
            warn.warning("disk full", key=28)
            now[0] += 2.0
        warn.warning("disk full", key=28)  # 600 s after the first: logged, with the count
        warn.warning("read-only", key=13)  # another fault: at once
        warn.clear("saved again")
        warn.warning("read-only", key=13)  # after a recovery: at once
    assert [r.getMessage() for r in caplog.records] == [
        "disk full", "disk full (299 more time(s) in the last 600 s)", "read-only", "saved again", "read-only"]


def test_background_storage_messages_say_no_request_was_cut_short() -> None:
    """The model check's log line and Select's unrecorded detail: the fault and what to do, without Ingest's
    "nothing of this request ... was stored", which means nothing there."""
    for e, starts in ((OSError(errno.ENOSPC, "No space left on device"), "the agent's data folder is full"),
                      (sqlite3.OperationalError("database or disk is full"), "the agent's data folder is full"),
                      (OSError(errno.EIO, "Input/output error"), "the agent could not read or write"),
                      (OSError(errno.EACCES, "Permission denied"), "the agent's data folder is not writable")):
        whole, background = storage_problem(e), storage_problem(e, request=False)
        assert whole is not None and background is not None and whole.code == background.code
        assert background.message.startswith(starts) and "retry" not in background.message, background.message
        assert "this request" not in background.message and str(e) in background.message


def test_only_agent_errors_ends_a_call_with_a_status() -> None:
    """No module of agent/ but agent/errors.py calls ``context.abort(code, message)``: the others raise (or pass
    ``abort``) an AgentError, so every status and its message comes from the one mapping."""
    root = Path(__file__).resolve().parents[2] / "agent"
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "abort"
                    and len(node.args) == 2):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert found == []
