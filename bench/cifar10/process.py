"""The agent as a separate process: ``shortlist serve`` on a free loopback port, and waiting for it."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc

from agent.config import class_list
from agent.map_fit import isolated_env, isolated_module
from shortlist.v1 import agent_pb2, agent_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def declarable(classes: Sequence[str]) -> bool:
    """Whether ``shortlist serve --classes a,b,c`` can carry these names: unique, and read back as they are
    by the option's own parser (``agent.config.class_list``; a comma, surrounding whitespace or an empty
    name would not be)."""
    names = tuple(classes)
    return len(set(names)) == len(names) and class_list(",".join(names)) == names


@contextmanager
def agent_process(data_dir: Path, models: Path, log: Path, timeout: float = 60.0,
                  classes: Sequence[str] = ()) -> Iterator[str]:
    """Start ``shortlist serve`` as a separate process on a free loopback port; yields its address.
    ``classes``: declared as the agent's closed class list (``--classes``; ``declarable`` names only), as a
    team that knows its classes would; empty leaves the list as ``data_dir`` has it (open when new)."""
    if classes and not declarable(classes):
        raise ValueError(f"class names {list(classes)} cannot be passed to shortlist serve --classes")
    port = free_port()
    # isolated: a module-named file in the caller's working folder (queue.py, ...) is not imported by the agent
    cmd = isolated_module("shortlist.cli", "serve", "--data-dir", str(data_dir), "--models", str(models),
                          "--host", "127.0.0.1", "--port", str(port))
    if classes:
        cmd += ["--classes", ",".join(classes)]
    with open(log, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=isolated_env())
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the agent exited with {proc.returncode}; see {log}")
            try:
                with grpc.insecure_channel(address) as ch:
                    agent_pb2_grpc.AgentStub(ch).GetStatus(agent_pb2.GetStatusRequest(), timeout=2)
                break
            except grpc.RpcError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no answer from the agent on {address} in {timeout:.0f} s; see {log}") from e
                time.sleep(0.3)
        yield address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_embedded(stub: agent_pb2_grpc.AgentStub, n: int, version: str, timeout: float = 1800.0) -> None:
    """Block until the agent serves ``version`` with ``n`` samples embedded."""
    deadline = time.monotonic() + timeout
    while True:
        s = stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=30)
        if s.model_version == version and s.embedded >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"agent has {s.embedded}/{n} embedded under {s.model_version!r} (want {version})")
        time.sleep(0.5)
