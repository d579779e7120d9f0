"""README "Running the agent on a network", followed literally: its OpenSSL and tokens commands run
here, its ``serve`` command starts an agent in one network namespace (10.77.0.1), and a client in
another namespace (10.77.0.2, joined by a veth pair: another host, as far as the network goes) reaches
it with TLS and tokens. Skipped, with the reason, where ``ip netns`` is not permitted."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SERVER_IP, CLIENT_IP, PORT = "10.77.0.1", "10.77.0.2", 50051


def readme_blocks() -> list[str]:
    """The bash blocks of the README section "Running the agent on a network", in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Running the agent on a network", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair: (server ns at 10.77.0.1, client ns at 10.77.0.2)."""
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) on this machine")
    tag = f"{os.getpid() % 100000}"
    srv, cli = f"slsrv{tag}", f"slcli{tag}"
    made = sh("ip", "netns", "add", srv)
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` is not permitted here: {made.stderr.strip()}")
    try:
        steps = [("ip", "netns", "add", cli),
                 ("ip", "link", "add", f"vs{tag}", "netns", srv, "type", "veth", "peer", "name", f"vc{tag}",
                  "netns", cli),
                 ("ip", "-n", srv, "addr", "add", f"{SERVER_IP}/24", "dev", f"vs{tag}"),
                 ("ip", "-n", cli, "addr", "add", f"{CLIENT_IP}/24", "dev", f"vc{tag}"),
                 *[("ip", "-n", ns, "link", "set", dev, "up")
                   for ns, dev in ((srv, "lo"), (cli, "lo"), (srv, f"vs{tag}"), (cli, f"vc{tag}"))]]
        for step in steps:
            r = sh(*step)
            if r.returncode != 0:
                pytest.skip(f"`{' '.join(step)}` failed: {r.stderr.strip()}")
        yield srv, cli
    finally:
        for ns in (cli, srv):  # deleting a namespace deletes its end of the veth pair, and so the pair
            sh("ip", "netns", "del", ns)


def test_readme_tls_and_token_agent_reached_from_another_host(tmp_path: Path, registry: Path,
                                                             namespaces: tuple[str, str]) -> None:
    srv, cli = namespaces
    certs, tokens_block, serve_block, _client_block = readme_blocks()
    env = {**os.environ, "AGENT_NAME": "agent.lab", "AGENT_IP": SERVER_IP,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for block in (certs, tokens_block):
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "ca.pem").is_file() and (tmp_path / "agent.pem").is_file()
    assert oct((tmp_path / "agent.key").stat().st_mode & 0o777) == "0o600"
    lines = [ln for ln in (tmp_path / "tokens").read_text().splitlines() if ln and not ln.startswith("#")]
    tokens = dict(ln.split(":", 1) for ln in lines)
    assert set(tokens) == {"read", "write"} and all(len(t) == 64 for t in tokens.values())

    # The README's serve command, with this test's folders (and no GPU).
    words = shlex.split(serve_block.replace("\\\n", " "))
    assert words[:2] == ["shortlist", "serve"] and "--tls-cert" in words and "--tokens" in words
    words = [str(tmp_path / "data") if w == "/srv/shortlist/agent" else str(registry) if w == "/srv/shortlist/models"
             else w for w in words]
    server = subprocess.Popen(["ip", "netns", "exec", srv, sys.executable, "-m", "shortlist.cli", *words[1:],
                               "--cpu", "--poll", "0.2"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        def in_client(*args: str, token: str | None = None, tls: bool = True) -> subprocess.CompletedProcess[str]:
            e = {**env, "SHORTLIST_AGENT": f"{SERVER_IP}:{PORT}"}
            if tls:
                e["SHORTLIST_TLS_CA"] = str(tmp_path / "ca.pem")
            if token is not None:
                e["SHORTLIST_TOKEN"] = token
            return subprocess.run(["ip", "netns", "exec", cli, *args], cwd=tmp_path, env=e, capture_output=True,
                                  text=True, timeout=180)

        # A pipeline with the write token: wait for the agent, ingest, over TLS across the veth pair.
        script = (f"from agent import client\nfrom tests.agent.conftest import make_samples\n"
                  f"stub = client.connect('{SERVER_IP}:{PORT}', timeout=120, starting=True, "
                  f"config=client.ClientConfig.from_env())\n"
                  f"print(client.ingest(stub, make_samples(6)).accepted)\n")
        r = in_client(sys.executable, "-c", script, token=tokens["write"])
        assert r.returncode == 0 and r.stdout.split()[-1] == "6", r.stdout + r.stderr
        # An annotator's tool with the read token: the CLI as the README shows it.
        cmd = [sys.executable, "-m", "shortlist.cli"]
        r = in_client(*cmd, "status", "--json", token=tokens["read"])
        assert r.returncode == 0, r.stdout + r.stderr
        st = json.loads(r.stdout)
        assert st["samples"] == 6 and st["warnings"] == []
        labels = tmp_path / "labels.csv"
        labels.write_text("id,label\ns0,cat\n")
        r = in_client(*cmd, "label", str(labels), token=tokens["read"])
        assert r.returncode == 1 and "PERMISSION_DENIED" in r.stderr
        r = in_client(*cmd, "status")
        assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr and "--token" in " ".join(r.stderr.split())
        r = in_client(*cmd, "status", tls=False, token=tokens["read"])
        assert r.returncode == 1 and "uses TLS: pass --tls-ca" in " ".join(r.stderr.split())
        # Nothing reaches it from this (the host's) namespace: it listens inside its own.
        from agent import client

        with pytest.raises(client.AgentUnavailable):
            client.connect(f"{SERVER_IP}:{PORT}", timeout=1)
    finally:
        server.terminate()
        try:
            out, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            out, _ = server.communicate()
    assert "security: TLS, tokens required" in out, out
    assert tokens["read"] not in out and tokens["write"] not in out
