"""``shortlist bench load`` at tiny scale: the structure of what it prints and writes, never its timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent import client
from agent.testing import publish_linear
from bench.load import (
    QUIET_S,
    Call,
    LoadConfig,
    LoadError,
    busy_threads,
    listening_pid,
    load_channel,
    parse_mix,
    quiet,
    require_loopback,
    warmup_errors,
)
from shortlist.cli import app
from tests.agent.conftest import CLASSES, SIZE, start

RPC_NAMES = {"Ingest", "Select", "SubmitLabels", "PriorLabels", "GetStatus"}


def test_load_starts_an_agent_builds_a_pool_and_reports(tmp_path: Path) -> None:
    args = ["bench", "load", "--pool", "200", "--clients", "3", "--seconds", "3", "--warmup", "1",
            "--data-dir", str(tmp_path / "d"), "--strategies", "random,margin,coreset", "--solo", "random,coreset",
            "--priors", "knn", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "d" / "results.json").read_text())
    assert json.loads(result.stdout.strip().splitlines()[-1]) == res
    assert res["agent"]["started_here"] and res["agent"]["pid"] > 0
    assert res["agent"]["samples_before"] == 200 and res["agent"]["labeled_before"] >= 50
    assert res["warmup"]["seconds"] == 1 and res["warmup"]["requests"] > 0
    assert res["config"]["clients"] == 3 and res["machine"]["cpus"] >= 1 and len(res["machine"]["loadavg_before"]) == 3
    load = res["load"]
    rows = {r["name"]: r for r in load["rpcs"]}
    # a row per RPC called and per strategy / prior method it used (which ones depends on the machine's speed)
    variants = {"Select random", "Select margin", "Select coreset", "PriorLabels knn"}
    assert {"GetStatus", "Select"} <= set(rows) <= RPC_NAMES | variants, rows.keys()
    assert load["requests"] == sum(rows[n]["requests"] for n in RPC_NAMES if n in rows) > 0
    assert rows["Select"]["requests"] == sum(rows[n]["requests"] for n in variants & set(rows) if "Select" in n)
    for r in rows.values():
        assert r["ok"] + sum(r["errors"].values()) == r["requests"]
        assert 0 <= r["p50_s"] <= r["p99_s"] <= r["max_s"]
    assert [(s["rpc"], s["name"]) for s in res["solo"]] == [("Select", "random"), ("Select", "coreset"),
                                                           ("PriorLabels", "knn")]
    assert set(res["rss"]) == {"start", "before", "after", "drained", "peak", "idle_start", "idle_before", "idle_after"}
    assert all(v > 0 for v in res["rss"].values())
    # the growth goal compares the agent idle (its calls and its malloc trim done) before and after the load
    assert res["idle"]["quiet_start"] and res["idle"]["quiet_before"] and res["idle"]["quiet_after"], res["idle"]
    assert res["idle"]["wait_before_s"] >= 3 and res["idle"]["wait_after_s"] >= 3
    assert "RSS growth < 10% (idle before -> idle after the load)" in {g["goal"] for g in res["goals"]}
    # every accepted sample is counted by the agent
    assert load["ingested"] == 8 * rows.get("Ingest", {"ok": 0})["ok"]
    assert res["agent"]["samples_after"] == 200 + res["warmup"]["ingested"] + load["ingested"]
    goals = {g["goal"] for g in res["goals"]}
    assert {"no error but RESOURCE_EXHAUSTED", "GetStatus p99 < 1 s (answered calls)"} <= goals

    # a second run on the same folder reuses the pool it built
    again = CliRunner().invoke(app, [*args[:-1], "--seconds", "0.5", "--warmup", "0", "--solo", "none",
                                     "--clients", "1"])
    assert again.exit_code == 0, again.output
    assert "already there (reused)" in again.output


def test_load_against_a_running_agent(tmp_path: Path) -> None:
    publish_linear(tmp_path / "models", size=SIZE, dim=16, classes=CLASSES)
    r = start(tmp_path / "data", tmp_path / "models")
    try:
        args = ["bench", "load", "--agent", r.address, "--pool", "30", "--clients", "2", "--seconds", "1",
                "--strategies", "random", "--solo", "none", "--out", str(tmp_path / "out")]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        res = json.loads((tmp_path / "out" / "results.json").read_text())
        assert not res["agent"]["started_here"] and res["agent"]["samples_before"] == 30
        assert res["rss"]["before"] > 0  # found this process from its listening port
        # no --warmup: one as long as the load, so the growth is measured once the working set is reached
        assert res["config"]["warmup"] == res["warmup"]["seconds"] == 1 and res["warmup"]["requests"] > 0
        # the agent is this process: the thread reading /proc is not taken for a busy one
        assert res["idle"]["quiet_before"] and res["idle"]["quiet_after"], res["idle"]
    finally:
        r.stop()


def test_idle_means_quiet_cpu_and_no_thread_kept_busy() -> None:
    step = 0.25
    n = int(QUIET_S / step) + 1  # readings spanning QUIET_S

    def readings(cpu_per_s: float, busy: list[frozenset[int]]) -> list[tuple[float, float, frozenset[int]]]:
        return [(i * step, i * step * cpu_per_s, busy[i]) for i in range(len(busy))]

    none: list[frozenset[int]] = [frozenset()] * n
    assert quiet(readings(0.0, none))
    assert not quiet(readings(0.0, none[:-2]))  # not QUIET_S seconds of readings yet
    assert not quiet(readings(0.5, none))  # half a core
    # a call starved of CPU (a niced lane thread on a busy machine): little CPU, but its thread always runnable
    assert not quiet(readings(0.01, [frozenset({42})] * n))
    # a thread that wakes up now and then (a timer, a poller) is idle
    assert quiet(readings(0.01, [frozenset({42}) if i % 4 == 0 else frozenset() for i in range(n)]))


def eventually(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``cond()`` holds within ``timeout`` seconds (polled): a thread just started may not have
    reached its wait yet, nor a process its loop, on a loaded machine."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def test_busy_threads_sees_running_threads_not_waiting_ones() -> None:
    stop = threading.Event()
    waiting = threading.Thread(target=stop.wait)
    waiting.start()
    try:
        assert waiting.native_id is not None
        assert eventually(lambda: waiting.native_id not in busy_threads(os.getpid()))  # once it sleeps
        assert threading.get_native_id() not in busy_threads(os.getpid())  # the thread reading /proc is left out
    finally:
        stop.set()
        waiting.join()
    assert busy_threads(2**22 + 1) == frozenset()  # no such process
    spinning = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:  # running, or runnable waiting for a CPU, once its interpreter has started
        assert eventually(lambda: busy_threads(spinning.pid) == {spinning.pid})
    finally:
        spinning.kill()
        spinning.wait()


@pytest.mark.parametrize("address", ["10.1.2.3:50051", "8.8.8.8:1", "[2001:db8::1]:50051"])
def test_load_refuses_non_loopback_targets(address: str) -> None:
    with pytest.raises(LoadError, match="not a loopback"):
        require_loopback(address)
    result = CliRunner().invoke(app, ["bench", "load", "--agent", address, "--seconds", "1"])
    assert result.exit_code == 2 and "not a loopback" in " ".join(result.output.split())


def test_load_against_no_agent_exits_1_as_every_agent_command() -> None:
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(app, ["bench", "load", "--agent", f"127.0.0.1:{port}", "--seconds", "1"])
    assert result.exit_code == 1 and "no agent listens there" in result.output, result.output


def test_load_arguments() -> None:
    assert require_loopback("127.0.0.1:5") == ("127.0.0.1", 5) and require_loopback("[::1]:7") == ("::1", 7)
    with pytest.raises(LoadError, match="HOST:PORT"):
        require_loopback("localhost")
    assert parse_mix("status=1,select=0.5") == {"GetStatus": 1.0, "Select": 0.5}
    for bad in ("nope=1", "status", "status=x", "status=-1", "status=0"):
        with pytest.raises(LoadError):
            parse_mix(bad)
    assert listening_pid(1) == 0  # nothing listens on port 1
    result = CliRunner().invoke(app, ["bench", "load", "--seconds", "1"])
    assert result.exit_code == 2 and "--pool" in result.output


def test_load_channels_never_busy_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both of the load's channels (the set-up's and each client's) keep --agent's TLS and token and turn
    busy retries off: the load counts the agent's own refusals."""
    opened: list[tuple[str, float | None, client.ClientConfig]] = []
    monkeypatch.setattr(client, "channel", lambda address, timeout=None, config=None: opened.append(
        (address, timeout, config)))
    conn = client.ClientConfig(token="t0k", tls_ca=Path("ca.pem"))
    cfg = LoadConfig(agent="127.0.0.1:5", connection=conn)
    load_channel(cfg)
    load_channel(cfg, timeout=30)
    assert [(a, t) for a, t, _ in opened] == [("127.0.0.1:5", None), ("127.0.0.1:5", 30)]
    for _, _, config in opened:
        assert config.busy_retry == client.BusyRetry.OFF and (config.token, config.tls_ca) == ("t0k", Path("ca.pem"))
    assert conn.busy_retry != client.BusyRetry.OFF  # the caller's config is left as it was


def test_load_against_an_agent_with_tls_and_tokens(tmp_path: Path) -> None:
    from agent.config import AgentConfig
    from agent.security import ServerSecurity
    from agent.service import create_server, stop_server
    from tests.agent.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    write = "write-token-" + "w" * 20
    (tmp_path / "tokens").write_text(f"write:{write}\n")
    publish_linear(tmp_path / "models", size=SIZE, dim=16, classes=CLASSES)
    security = ServerSecurity(tls_cert=pki.server_cert, tls_key=pki.server_key, tokens=tmp_path / "tokens")
    server, port, agent = create_server(AgentConfig(tmp_path / "data", tmp_path / "models", port=0, poll_s=0.2,
                                                    use_cuda=False, security=security))
    try:
        args = ["bench", "load", "--agent", f"localhost:{port}", "--tls-ca", str(pki.ca), "--pool", "20",
                "--clients", "2", "--seconds", "1", "--warmup", "0", "--strategies", "random", "--solo", "none",
                "--out", str(tmp_path / "out")]
        result = CliRunner().invoke(app, args, env={"SHORTLIST_TOKEN": write})
        assert result.exit_code == 0, result.output
        text = (tmp_path / "out" / "results.json").read_text()
        res = json.loads(text)
        assert res["config"]["tls"] and res["config"]["token"] and write not in text + result.output
        assert res["agent"]["samples_before"] == 20 and all(not r["errors"] for r in res["load"]["rpcs"])
    finally:
        stop_server(server, agent)


def test_warmup_errors_are_counted_by_call_and_code() -> None:
    calls = [Call("Select", "typiclust", "RESOURCE_EXHAUSTED", 0.01), Call("Select", "typiclust", "OK", 0.5),
             Call("Select", "typiclust", "DEADLINE_EXCEEDED", 30.0), Call("GetStatus", "", "OK", 0.01),
             Call("Select", "typiclust", "RESOURCE_EXHAUSTED", 0.02), Call("Ingest", "", "UNAVAILABLE", 0.1)]
    assert warmup_errors(calls) == {"Ingest": {"UNAVAILABLE": 1},
                                    "Select typiclust": {"DEADLINE_EXCEEDED": 1, "RESOURCE_EXHAUSTED": 2}}
    assert warmup_errors(calls[1:2]) == {}
