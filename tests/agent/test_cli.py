"""The agent's commands against a real agent: ``shortlist serve`` as a process (SIGTERM shutdown), and
ingest/select/label/prior/status --json through typer's runner."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

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
        stub = client.connect(f"127.0.0.1:{port}", timeout=60)
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
        stub = client.connect(f"127.0.0.1:{port}", timeout=60)
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
