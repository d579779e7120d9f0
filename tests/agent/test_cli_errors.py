"""The agent commands' answers to bad input that used to end in a traceback or a misleading message: numbers
past their request field's range, an ids file csv cannot read, a --timeout gRPC cannot turn into a deadline."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent import client
from agent.cli_options import AgentTarget
from shortlist.cli import app

runner = CliRunner()
AGENT = "127.0.0.1:57299"  # nothing listens there: a command that got as far as calling would fail otherwise


class _NoCalls:
    """A stub whose every RPC fails the test: the command must stop before it sends anything."""

    def __getattr__(self, name: str) -> Any:
        def call(*_a: Any, **_kw: Any) -> Any:
            raise AssertionError(f"{name} was called")
        return call


@pytest.fixture
def no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connecting succeeds at once (no agent needed) and any call fails the test."""
    monkeypatch.setattr(AgentTarget, "connect", lambda self: _NoCalls())


def one_line(text: str) -> str:
    """``text`` on one line, without the box rich draws around a usage error."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize(("args", "bound"), [
    (["select", "--budget", "99999999999999999999"], "2147483647"),
    (["select", "--budget", "3", "--seed", "18446744073709551616"], "18446744073709551615"),
    (["list-labels", "--after-seq", "99999999999999999999999"], "9223372036854775807"),
    (["list-labels", "--limit", "99999999999999999999999"], "9223372036854775807"),
])
def test_a_number_past_its_request_fields_range_is_a_usage_error(no_agent: None, args: list[str],
                                                                  bound: str) -> None:
    res = runner.invoke(app, [*args, "--agent", AGENT])
    assert res.exit_code == 2, res.output  # was: ValueError: Value out of range (protobuf), exit 1
    assert bound in one_line(res.stderr)


def test_the_largest_values_of_the_fields_are_still_taken(no_agent: None, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []

    def list_labels(stub: Any, history: bool = False, after_seq: int = 0, limit: int = 0) -> Any:
        seen.append((after_seq, limit))
        return iter(())

    monkeypatch.setattr(client, "list_labels", list_labels)
    res = runner.invoke(app, ["list-labels", "--after-seq", str(2**63 - 1), "--limit", str(2**63 - 1),
                              "--agent", AGENT])
    assert res.exit_code == 0, res.output
    assert seen == [(2**63 - 1, 2**63 - 1)]


@pytest.mark.parametrize("command", [["retract-labels"], ["delete-samples", "--yes"]])
def test_an_ids_file_with_a_field_over_csvs_limit_is_a_usage_error(tmp_path: Path, no_agent: None,
                                                                   command: list[str]) -> None:
    big = tmp_path / "big.csv"
    big.write_text("cat/0001.jpg," + "x" * 1_000_000 + "\n")
    res = runner.invoke(app, [*command, "--file", str(big), "--agent", AGENT])
    assert res.exit_code == 2, res.output  # was: Error: field larger than field limit (131072), exit 1
    assert "not readable as CSV (field larger than field limit (131072))" in one_line(res.stderr)


@pytest.mark.parametrize("value", ["1e10", "1e12", "1e300", "inf", "1e309", "nan", "-1"])
@pytest.mark.parametrize("command", [["select", "--budget", "2"], ["prior"]])
def test_a_timeout_grpc_cannot_take_is_a_usage_error(no_agent: None, command: list[str], value: str) -> None:
    res = runner.invoke(app, [*command, "--timeout", value, "--agent", AGENT])
    assert res.exit_code == 2, res.output  # was: DEADLINE_EXCEEDED at once, "give it a longer --timeout"
    assert "--timeout" in res.stderr


def test_a_timeout_grpc_cannot_take_is_refused_from_the_environment_too(no_agent: None) -> None:
    res = runner.invoke(app, ["select", "--budget", "2", "--agent", AGENT], env={"SHORTLIST_TIMEOUT": "1e12"})
    assert res.exit_code == 2 and "1000000000" in one_line(res.stderr), res.output


def test_the_largest_timeout_is_a_deadline_grpc_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """MAX_TIMEOUT_S against a real gRPC call: the call is answered, not failed at once for its deadline."""
    from concurrent import futures

    import grpc

    from agent.cli import MAX_TIMEOUT_S

    server = grpc.server(futures.ThreadPoolExecutor(1))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "t.T", {"M": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"ok")})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary("/t.T/M")
            assert call(b"x", timeout=MAX_TIMEOUT_S) == b"ok"
            with pytest.raises(grpc.RpcError) as e:  # the overflow MAX_TIMEOUT_S keeps clear of
                call(b"x", timeout=1e10)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        server.stop(None)


def test_ctrl_c_while_the_executable_imports_its_commands_says_interrupted_in_one_line() -> None:
    """The console script as pip writes it (import the [project.scripts] target's module, call the function),
    with a Ctrl-C arriving while the commands are imported (here: when typer is imported)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    code = """
import importlib, sys, tomllib
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "typer":
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
target = tomllib.load(open("pyproject.toml", "rb"))["project"]["scripts"]["shortlist"]
module, _, function = target.partition(":")
sys.exit(getattr(importlib.import_module(module), function)())
"""
    done = subprocess.run([sys.executable, "-c", code, "status"], cwd=root, capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stderr, done.stdout) == (130, "interrupted\n", ""), done.stderr[-2000:]


class _CtrlCOnSecondDelete:
    """A stub whose first DeleteSamples deletes every id it names and whose second is hit by Ctrl-C."""

    def __init__(self) -> None:
        self.calls = 0

    def DeleteSamples(self, req: Any, **_kw: Any) -> Any:
        from shortlist.v1 import agent_pb2

        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return agent_pb2.DeleteSamplesReply(accepted=len(req.ids), payloads_removed=len(req.ids))


def test_ctrl_c_during_delete_samples_says_what_the_agent_may_have_deleted(monkeypatch: pytest.MonkeyPatch) -> None:
    import functools
    import json

    monkeypatch.setattr(client, "delete_samples", functools.partial(client.delete_samples, chunk=2))  # 3 requests
    ids = [f"s{i}" for i in range(6)]
    monkeypatch.setattr(AgentTarget, "connect", lambda self: _CtrlCOnSecondDelete())
    res = runner.invoke(app, ["delete-samples", "--yes", *ids, "--agent", AGENT])
    assert res.exit_code == 130, res.output  # was: 130 and nothing said at all
    assert res.stdout.splitlines() == ["deleted 2, rejected 0 (2 payload file(s) removed)"]
    said = one_line(res.stderr)
    assert "interrupted (Ctrl-C): the agent answered for 2 of the 6 ids" in said
    assert "2 ids were sent without an answer: the agent may have deleted them (each request is one " \
        "transaction" in said and "shortlist status" in said
    res = runner.invoke(app, ["delete-samples", "--yes", *ids, "--agent", AGENT, "--json"])
    assert res.exit_code == 130 and json.loads(res.stdout) == {
        "deleted": 2, "payloads_removed": 2, "rejected": [], "rejected_count": 0, "interrupted": True, "sent": 4,
        "unconfirmed": 2, "total": 6}


class _CtrlCOnEveryCall:
    def __getattr__(self, name: str) -> Any:
        def call(*_a: Any, **_kw: Any) -> Any:
            raise KeyboardInterrupt
        return call


@pytest.mark.parametrize(("args", "said"), [
    (["select", "--budget", "2"], "interrupted (Ctrl-C)"),
    (["prior"], "interrupted (Ctrl-C)"),
    (["status"], "interrupted (Ctrl-C)"),
    (["rename-class", "cat", "feline"], "interrupted (Ctrl-C): the agent may have made the rename"),
])
def test_ctrl_c_during_a_call_says_interrupted(monkeypatch: pytest.MonkeyPatch, args: list[str], said: str) -> None:
    monkeypatch.setattr(AgentTarget, "connect", lambda self: _CtrlCOnEveryCall())
    res = runner.invoke(app, [*args, "--agent", AGENT])
    assert res.exit_code == 130 and said in one_line(res.stderr), res.output  # was: 130, silent


@pytest.mark.parametrize("args", [
    ["status"], ["select", "--budget", "2"], ["prior"], ["list-labels"], ["delete-samples", "--yes", "a"],
    ["label", "{missing}"], ["ingest", "{missing}"], ["export-labels", "--out", "{tmp}/x"],
    ["backup", "--data-dir", "{missing}", "--out", "{tmp}/b"], ["restore", "{missing}", "{tmp}/r"],
    ["check", "--data-dir", "{missing}"], ["models", "list", "--models", "{missing}"],
    ["models", "rollback", "v0001", "--models", "{missing}"], ["select", "--budget", "0"],
    ["status", "--no-such-option"],
])
def test_json_on_a_failure_prints_an_error_object_and_the_message_on_stderr(tmp_path: Path,
                                                                            args: list[str]) -> None:
    """One rule for --json when a command fails (docs/agent.md, "Exit status"): {"error": MESSAGE} on stdout,
    the message on stderr as without --json, the same exit status."""
    import json

    argv = [a.format(missing=tmp_path / "missing", tmp=tmp_path) for a in args]
    agent = [] if argv[0] in ("backup", "restore", "check", "models") else ["--agent", AGENT]
    plain = runner.invoke(app, [*argv, *agent])
    res = runner.invoke(app, [*argv, *agent, "--json"])
    assert plain.exit_code == res.exit_code != 0, res.output
    error = json.loads(res.stdout)["error"]  # was: nothing on stdout (only rollback printed an object)
    assert error and one_line(error) in one_line(res.stderr), (res.stdout, res.stderr)


class _UnknownIds:
    """A stub that rejects every id of RetractLabels and DeleteSamples as unknown, as the agent does."""

    def _reply(self, reply: Any, req: Any) -> Any:
        from shortlist.v1 import agent_pb2

        reply.rejected.extend(agent_pb2.Rejection(id=i, code=agent_pb2.REJECTION_CODE_UNKNOWN_ID,
                                                  reason=f"unknown id {i!r}") for i in req.ids)
        reply.rejected_count = len(req.ids)
        return reply

    def RetractLabels(self, req: Any, **_kw: Any) -> Any:
        from shortlist.v1 import agent_pb2

        return self._reply(agent_pb2.RetractLabelsReply(), req)

    def DeleteSamples(self, req: Any, **_kw: Any) -> Any:
        from shortlist.v1 import agent_pb2

        return self._reply(agent_pb2.DeleteSamplesReply(), req)


@pytest.mark.parametrize("command", [["retract-labels"], ["delete-samples", "--yes"]])
def test_unknown_ids_that_look_like_a_command_line_slip_get_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   command: list[str]) -> None:
    monkeypatch.setattr(AgentTarget, "connect", lambda self: _UnknownIds())
    answers = tmp_path / "r.csv"
    answers.write_text("cat/0010.jpg,cat\ndog/0003.jpg,dog\n")  # the rows `label` takes, no header line
    res = runner.invoke(app, [*command, "--file", str(answers), "--agent", AGENT])
    assert res.exit_code == 1, res.output
    assert 'hint: 2 unknown id(s) of' in one_line(res.stderr) and "add the header line id,label" in res.stderr
    res = runner.invoke(app, [*command, str(answers), "--agent", AGENT])  # the file given as an id
    assert res.exit_code == 1 and f"did you mean --file {answers}?" in one_line(res.stderr), res.output
    res = runner.invoke(app, [*command, "cat/0010.jpg", "--agent", AGENT])  # an unknown id, no more
    assert res.exit_code == 1 and "hint" not in res.stderr, res.output


def test_an_agent_address_with_a_scheme_is_refused_at_once() -> None:
    res = runner.invoke(app, ["status", "--agent", "http://127.0.0.1:57299", "--connect-timeout", "10"])
    assert res.exit_code == 2, res.output  # was: a 10 s wait, then "no agent answers"
    assert "drop 'http://'" in one_line(res.stderr)


def test_max_per_group_with_a_number_past_its_range_says_so(no_agent: None) -> None:
    res = runner.invoke(app, ["select", "--budget", "2", "--max-per-group", "x=99999999999999999999",
                              "--agent", AGENT])
    assert res.exit_code == 2, res.output
    said = one_line(res.stderr)
    assert "N must be from 1 to 2147483647" in said and "must look like" not in said


def test_a_backup_that_cannot_write_its_folder_is_a_usage_error(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/agent.md: a backup that cannot start exits 2. (Simulated: the tests may run as root, who may write
    in any folder.)"""
    import agent.backup

    def denied(tmp: Path) -> None:
        raise PermissionError(13, "Permission denied", str(tmp))

    monkeypatch.setattr(agent.backup, "_start_copy", denied)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "state.sqlite").write_bytes(b"")
    (tmp_path / "ro").mkdir()
    res = runner.invoke(app, ["backup", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "ro" / "b")])
    assert res.exit_code == 2, res.output  # was: exit 1, "backup failed: the backup failed and nothing was left"
    said = one_line(res.stderr)
    assert f"cannot back up: cannot write in {tmp_path / 'ro'} for the backup: Permission denied" in said
    assert not list((tmp_path / "ro").iterdir())


def test_ingest_of_a_folder_it_cannot_read_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Simulated: the tests may run as root, who may read any folder.)"""
    import os

    import shortlist.datasets

    folder = tmp_path / "nodir"
    folder.mkdir()
    listdir = os.listdir

    def no_access(path: Any = ".") -> list[str]:
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return listdir(path)

    def resolve(where: str, split: str) -> Any:  # as resolve_source meets it: probing for a CIFAR folder first
        raise PermissionError(13, "Permission denied", os.path.join(where, "batches.meta"))

    monkeypatch.setattr(os, "listdir", no_access)
    monkeypatch.setattr(shortlist.datasets, "resolve_source", resolve)
    res = runner.invoke(app, ["ingest", str(folder), "--agent", AGENT])
    assert res.exit_code == 2, res.output
    said = one_line(res.stderr)
    assert "the folder is not readable (permission denied)" in said and "batches.meta" not in said


@pytest.mark.parametrize("args", [["ingest", "SRC", "--batch-mb", "inf"], ["serve", "--poll", "inf"],
                                  ["serve", "--min-free-mb", "inf"]])
def test_an_infinite_float_option_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    """`ingest --batch-mb inf` ended in OverflowError (int(inf * 2**20)); nan was refused by the range, inf
    passed it. Refused with exit 2 before anything starts (serve: before its data folder is made)."""
    (tmp_path / "src").mkdir()
    args = [str(tmp_path / "src") if a == "SRC" else a for a in args]
    extra = ["--data-dir", str(tmp_path / "d"), "--models", str(tmp_path / "m")] if args[0] == "serve" else []
    res = runner.invoke(app, [*args, *extra])
    assert res.exit_code == 2 and "inf is not a number this option can use" in one_line(res.output), res.output
    assert "Traceback" not in res.output and not (tmp_path / "d").exists()


def test_serve_on_a_data_folder_whose_blobs_is_a_file_says_what_to_do(tmp_path: Path, registry: Path) -> None:
    """It said only "cannot start: [Errno 17] File exists: '.../blobs'"; now which path is wrong, what it should
    be and what to do (exit 2, no traceback, nothing created in the folder)."""
    data = tmp_path / "d"
    data.mkdir()
    (data / "blobs").write_text("x")
    res = runner.invoke(app, ["serve", "--data-dir", str(data), "--models", str(registry), "--port", "0"])
    said = " ".join(res.output.split())  # rich wraps lines
    assert res.exit_code == 2 and "Traceback" not in said, said
    assert (f"cannot start: {data / 'blobs'} should be a folder (the samples' payloads) but is a file: the data "
            "folder is damaged or not a Shortlist data folder; restore it from a backup (`shortlist restore`), or "
            "move that file away") in said, said
    assert sorted(p.name for p in data.iterdir()) == ["blobs"]
