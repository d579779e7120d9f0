"""The agent's commands against a real agent: ``shortlist serve`` as a process (SIGTERM shutdown), and
ingest/select/label/prior/status --json through typer's runner."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent import client
from shortlist.cli import app
from tests.agent.conftest import Running, make_images, png

runner = CliRunner()


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def image_folder(root: Path, n: int) -> Path:
    """An ImageFolder tree root/<class>/<i>.png with 2 classes."""
    for i, img in enumerate(make_images(n)):
        cls = ["cat", "dog"][i % 2]
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / f"{i:03d}.png").write_bytes(png(img))
    return root


def test_commands_json(tmp_path: Path, running: Running) -> None:
    src = image_folder(tmp_path / "imgs", 12)
    out = json.loads(run("ingest", str(src), "--agent", running.address, "--json", "--batch", "5", "--limit", "8",
                         "--meta", "site=north"))
    assert out == {"accepted": 8, "duplicates": 0, "rejected": []}
    out = json.loads(run("ingest", str(src), "--agent", running.address, "--json", "--with-labels"))
    assert (out["accepted"], out["duplicates"]) == (4, 8)
    st = json.loads(run("status", "--agent", running.address, "--json"))
    assert st["samples"] == 12 and st["labeled"] == 4 and st["model_version"] == "v0001"
    sel = json.loads(run("select", "--agent", running.address, "--budget", "3", "--strategy", "coreset",
                         "--seed", "2", "--json"))
    ids = [s["id"] for s in sel["selected"]]
    assert len(ids) == 3 and sel["model_version"] == "v0001" and sel["details"] == {}
    pc = json.loads(run("select", "--agent", running.address, "--budget", "2", "--strategy", "probcover", "--json"))
    assert float(pc["details"]["delta"]) > 0
    assert "delta: " in run("select", "--agent", running.address, "--budget", "2", "--strategy", "probcover")
    north = json.loads(run("select", "--agent", running.address, "--budget", "50", "--where", "site=north", "--json"))
    assert len(north["selected"]) == 8  # the first 8 files (the second ingest's duplicates stay unlabelled)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("id,label\n" + "".join(f"{i},cat\n" for i in ids) + "missing,cat\n")
    lab = json.loads(run("label", str(csv_path), "--agent", running.address, "--json"))
    assert lab["accepted"] == 3 and [r["id"] for r in lab["rejected"]] == ["missing"]
    lines = run("prior", "--agent", running.address, "--method", "knn", "--json").strip().splitlines()
    priors = [json.loads(line) for line in lines]
    assert len(priors) == 12 - 4 - 3 and all(p["model_version"] == "v0001" for p in priors)
    bad = runner.invoke(app, ["select", "--agent", running.address, "--budget", "0"])
    assert bad.exit_code == 1 and "INVALID_ARGUMENT" in bad.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bench_agent_command_prints_figures(registry: Path) -> None:
    out = json.loads(run("bench", "agent", "--models", str(registry), "--n", "128", "--batch", "64",
                         "--rounds", "2", "--cpu", "--json"))
    assert out["rounds"] == 2 and len(out["ratios"]) == 2 and out["provider"] == "CPUExecutionProvider"
    assert out["raw_median"] > 0 and out["ingest_median"] > 0


def test_kill_9_loses_no_acknowledged_sample(tmp_path: Path, registry: Path) -> None:
    """``shortlist serve`` as a process: SIGKILL it while a stream is being ingested; after a restart
    every sample of an acknowledged Ingest is there, embedded, and nothing is half-stored; then SIGTERM
    stops it cleanly."""
    from tests.agent.conftest import make_samples

    data = tmp_path / "d"

    def serve(port: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "shortlist.cli", "serve", "--data-dir", str(data),
                                 "--models", str(registry), "--port", str(port), "--cpu"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    port = free_port()
    proc = serve(port)
    try:
        stub = client.connect(f"127.0.0.1:{port}", timeout=60, starting=True)
        acked: list[str] = []
        for k in range(3):
            batch = make_samples(20, prefix=f"a{k}-", seed=k)
            assert client.ingest(stub, batch, batch=8).accepted == 20
            acked += [s.id for s in batch]
        big = iter(make_samples(400, prefix="b-", seed=9))
        call = stub.Ingest.future(client.batches(big, 8))  # in flight when the process dies
        proc.kill()
        proc.wait()
        assert call.exception(timeout=60) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    port = free_port()
    proc = serve(port)
    try:
        stub = client.connect(f"127.0.0.1:{port}", timeout=60, starting=True)
        from shortlist.v1 import agent_pb2

        st = stub.GetStatus(agent_pb2.GetStatusRequest())
        ids = {s.id for s in client.list_samples(stub, include_payload=True)}
        assert set(acked) <= ids and st.samples == len(ids) and st.embedded == st.samples
        assert client.ingest(stub, make_samples(20, prefix="a0-", seed=0)).duplicates == 20
        proc.send_signal(signal.SIGTERM)  # graceful: exit 0 with the index snapshot written
        assert proc.wait(timeout=30) == 0
        assert (data / "index" / "v0001" / "meta.json").is_file()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- connecting: TLS, tokens, fast and precise failures -----------------------------------------------
def out(result: Any) -> str:
    return " ".join(result.output.split())  # rich wraps long lines


@pytest.mark.parametrize("command", ["ingest", "select", "label", "prior", "status", "cycle"])
def test_every_agent_command_takes_the_connection_options(command: str) -> None:
    text = out(runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}))
    for flag in ("--agent", "--tls-ca", "--tls-cert", "--tls-key", "--token", "--connect-timeout",
                 "SHORTLIST_TLS_CA", "SHORTLIST_TOKEN"):
        assert flag in text, (command, flag)


def test_a_bad_agent_address_fails_fast_and_says_why() -> None:
    t = time.monotonic()
    refused = runner.invoke(app, ["status", "--agent", f"127.0.0.1:{free_port()}"])
    assert refused.exit_code == 1 and "connection refused" in out(refused)
    unresolved = runner.invoke(app, ["select", "--budget", "1", "--agent", "no-such-host.invalid:50051"])
    assert unresolved.exit_code == 1 and "cannot resolve the agent's host name" in out(unresolved)
    assert time.monotonic() - t < 5  # was 10-17 s each


def test_tls_and_tokens_from_flags_and_environment(tmp_path: Path, registry: Path) -> None:
    from agent.config import AgentConfig
    from agent.security import ServerSecurity
    from agent.service import create_server, stop_server
    from tests.agent.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    read, write = "read-token-" + "r" * 20, "write-token-" + "w" * 20
    tokens = tmp_path / "tokens"
    tokens.write_text(f"read:{read}\nwrite:{write}\n")
    security = ServerSecurity(tls_cert=pki.server_cert, tls_key=pki.server_key, tokens=tokens)
    server, port, agent = create_server(AgentConfig(tmp_path / "data", registry, port=0, poll_s=0.2, use_cuda=False,
                                                    security=security))
    address = f"localhost:{port}"
    try:
        ok = runner.invoke(app, ["status", "--agent", address, "--tls-ca", str(pki.ca), "--token", read, "--json"])
        assert ok.exit_code == 0, ok.output
        assert json.loads(ok.stdout)["warnings"] == []
        env = {"SHORTLIST_AGENT": address, "SHORTLIST_TLS_CA": str(pki.ca), "SHORTLIST_TOKEN": write}
        folder = image_folder(tmp_path / "imgs", 4)
        ingest = runner.invoke(app, ["ingest", str(folder), "--json"], env=env)
        assert ingest.exit_code == 0 and json.loads(ingest.stdout)["accepted"] == 4, ingest.output
        plain = runner.invoke(app, ["status", "--agent", address])
        assert plain.exit_code == 1 and "uses TLS: pass --tls-ca" in out(plain)
        no_token = runner.invoke(app, ["status"], env={**env, "SHORTLIST_TOKEN": ""})
        assert no_token.exit_code == 1 and "UNAUTHENTICATED" in out(no_token) and "--token" in out(no_token)
        labels = tmp_path / "labels.csv"
        labels.write_text("id,label\ncat/000.png,cat\n")
        denied = runner.invoke(app, ["label", str(labels)], env={**env, "SHORTLIST_TOKEN": read})
        assert denied.exit_code == 1 and "PERMISSION_DENIED" in out(denied) and "role write" in out(denied)
        assert read not in denied.output and write not in ingest.output
    finally:
        stop_server(server, agent, grace=0.5)


def test_serve_refuses_an_exposed_address_and_a_bad_tokens_file(tmp_path: Path, registry: Path) -> None:
    umask = os.umask(0o022)  # serve sets the process umask; keep the test process's
    try:
        exposed = runner.invoke(app, ["serve", "--data-dir", str(tmp_path / "d"), "--models", str(registry),
                                      "--host", "0.0.0.0", "--port", "0", "--cpu"])
        assert exposed.exit_code == 2
        assert "--tls-cert" in out(exposed) and "--tokens" in out(exposed) and "--insecure" in out(exposed)
        secret = "a-secret-in-a-line-with-no-role-xyz"
        tokens = tmp_path / "tokens"
        tokens.write_text(f"# ok\n{secret}\n")
        bad = runner.invoke(app, ["serve", "--data-dir", str(tmp_path / "d"), "--models", str(registry),
                                  "--tokens", str(tokens), "--port", "0", "--cpu"])
        assert bad.exit_code == 2 and "line 2" in out(bad) and secret not in bad.output
        assert not (tmp_path / "d").exists()
    finally:
        os.umask(umask)
