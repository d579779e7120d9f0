"""A full and a read-only data folder, for real: a small tmpfs mounted as the data folder (needs root;
skipped with the reason otherwise). Every RPC answers a clear status, reads and Select keep working,
nothing acknowledged is lost, and the agent recovers by itself once space is back."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from agent import client
from agent.config import MIB, AgentConfig
from agent.core import SELECTION_NOT_RECORDED, DataFolderError
from agent.service import create_server
from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_samples, start

CODE = grpc.StatusCode


def sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True)


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs as the data folder needs root")
    r = sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        sh("umount", "-l", str(path))


def fill(folder: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    try:  # the last partial page too
        with open(filler, "ab", buffering=0) as f:
            while True:
                f.write(b"\0" * 512)
    except OSError:
        pass
    return filler


def rpc_error(fn: object, *args: object, **kw: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        fn(*args, **kw)  # type: ignore[operator]
    return e.value


def status(r: Running) -> agent_pb2.Status:
    return r.stub.GetStatus(agent_pb2.GetStatusRequest())


def test_full_disk_every_rpc_answers_and_recovers(tmp_path: Path, registry: Path) -> None:
    with tmpfs(tmp_path / "data", "6m") as data:
        r = start(data, registry, min_free_bytes=1 * MIB)
        try:
            assert client.ingest(r.stub, make_samples(30, labels=6)).accepted == 30
            acked_labels = []
            assert not [w for w in status(r).warnings if "MiB free" in w]
            filler = fill(data)
            e = rpc_error(client.ingest, r.stub, make_samples(5, prefix="late"))
            assert e.code() == CODE.RESOURCE_EXHAUSTED and "full" in (e.details() or ""), e.details()
            # Labels go to SQLite's write-ahead log, which reuses its file: some may still fit. Flood
            # until the disk refuses one; every acknowledged call must be kept.
            for n in range(400):
                try:
                    client.submit_labels(r.stub, [(f"s{i}", "cat") for i in range(30)], annotator=f"flood{n}")
                    acked_labels.append(f"flood{n}")
                except grpc.RpcError as err:
                    assert err.code() == CODE.RESOURCE_EXHAUSTED and "full" in (err.details() or ""), err.details()
                    break
            else:
                pytest.fail("400 label calls fitted on a full disk")
            # reads and Select keep working
            st = status(r)
            assert st.samples == 30 and [w for w in st.warnings if "MiB free" in w and "RESOURCE_EXHAUSTED" in w]
            sel = r.stub.Select(agent_pb2.SelectRequest(budget=3, strategy="random", seed=1))
            assert len(sel.selected) == 3 or st.labeled == 30
            if SELECTION_NOT_RECORDED in sel.details:
                assert "full" in sel.details[SELECTION_NOT_RECORDED]
            assert len(list(client.list_samples(r.stub, include_payload=True))) == 30
            assert len(list(r.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn")))) >= 0
            r.stub.ReloadModel(agent_pb2.ReloadModelRequest())
            # space comes back: no restart needed
            filler.unlink()
            assert client.ingest(r.stub, make_samples(5, prefix="late")).accepted == 5
            assert client.submit_labels(r.stub, [("late0", "dog")], annotator="after").accepted == 1
            acked_labels.append("after")
            st = status(r)
            assert st.samples == 35 and not [w for w in st.warnings if "MiB free" in w]
        finally:
            r.stop()
        db = sqlite3.connect(data / "state.sqlite")
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            stored = {a for (a,) in db.execute("SELECT DISTINCT annotator FROM labels")}
            assert set(acked_labels) <= stored
            assert db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 35
        finally:
            db.close()


def test_read_only_data_folder_at_start(tmp_path: Path, registry: Path) -> None:
    with tmpfs(tmp_path / "data", "4m") as data:
        r = start(data, registry)
        client.ingest(r.stub, make_samples(5))
        r.stop()
        assert sh("mount", "-o", "remount,ro", str(data)).returncode == 0
        with pytest.raises(DataFolderError, match=r"not writable .*Read-only file system.*remount it read-write"):
            create_server(AgentConfig(data, registry, port=0, use_cuda=False))
        from typer.testing import CliRunner

        from shortlist.cli import app

        out = CliRunner().invoke(app, ["serve", "--data-dir", str(data), "--models", str(registry), "--port", "0"])
        text = " ".join(out.output.split())  # rich wraps lines
        assert out.exit_code == 2 and "is not writable" in text and "Traceback" not in text, text
        assert sh("mount", "-o", "remount,rw", str(data)).returncode == 0
        r = start(data, registry)
        try:
            assert status(r).samples == 5
        finally:
            r.stop()


def test_blob_folder_turning_read_only_while_running(tmp_path: Path, registry: Path) -> None:
    """A folder cannot be remounted read-only under SQLite's open files, so the payload folder (no
    open files) is made a read-only bind mount while the agent runs."""
    with tmpfs(tmp_path / "data", "4m") as data:
        r = start(data, registry)
        blobs = data / "blobs"
        try:
            assert client.ingest(r.stub, make_samples(5)).accepted == 5
            if sh("mount", "--bind", str(blobs), str(blobs)).returncode != 0:
                pytest.skip("cannot bind-mount here")
            try:
                assert sh("mount", "-o", "remount,bind,ro", str(blobs)).returncode == 0
                e = rpc_error(client.ingest, r.stub, make_samples(3, prefix="ro", seed=9))
                assert e.code() == CODE.FAILED_PRECONDITION and "not writable" in (e.details() or ""), e.details()
                assert [w for w in status(r).warnings if "read-only" in w]
                assert client.submit_labels(r.stub, [("s1", "dog")]).accepted == 1  # SQLite is still writable
                assert len(r.stub.Select(agent_pb2.SelectRequest(budget=2, strategy="coreset")).selected) == 2
            finally:
                sh("umount", str(blobs))
            assert client.ingest(r.stub, make_samples(3, prefix="ro", seed=9)).accepted == 3
            assert not [w for w in status(r).warnings if "read-only" in w]
        finally:
            r.stop()


def test_a_data_folder_that_is_a_file_is_said(tmp_path: Path, registry: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataFolderError, match="is a file, not a folder: give --data-dir a folder"):
        create_server(AgentConfig(tmp_path / "notes.txt", registry, port=0, use_cuda=False))
