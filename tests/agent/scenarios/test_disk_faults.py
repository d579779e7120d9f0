"""A full and a read-only data folder, for real: a small tmpfs mounted as the data folder (needs root;
skipped with the reason otherwise). Every RPC answers a clear status, reads and Select keep working,
nothing acknowledged is lost, and the agent recovers by itself once space is back. A disk full at start is
also simulated (no root needed): serve says so and to free space."""

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
            assert st.samples == 30 and [w for w in st.warnings if "is full (0.0 MiB free)" in w and "fail now" in w]
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


def serve_once(data: Path, registry: Path) -> tuple[int, str]:
    """``shortlist serve`` on ``data``, which is expected not to start: its exit code and output on one line."""
    from typer.testing import CliRunner

    from shortlist.cli import app

    out = CliRunner().invoke(app, ["serve", "--data-dir", str(data), "--models", str(registry), "--port", "0"])
    return out.exit_code, " ".join(out.output.split())  # rich wraps lines


def free_bytes(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    """Make shutil.disk_usage say ``free`` bytes are left (the start's disk-full check reads it)."""
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(1 << 30, (1 << 30) - free, free))


def state_at_schema(path: Path, version: int) -> None:
    """A state database as a schema-``version`` agent left it (for migrations: schema 3 added the queues table)."""
    from agent.state import State

    State(path).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TABLE queues")
    db.execute(f"PRAGMA user_version={version}")
    db.execute("VACUUM")  # no free page left for a migration to reuse
    db.close()


def test_a_full_disk_during_an_upgrade_at_start_says_to_free_space(tmp_path: Path, registry: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's own "database or disk is full" (here from a page limit) in the 2 -> 3 migration at start: serve
    says the data folder's disk is full, how much is free, to free space and start again, and that the folder is
    intact (it said only "cannot be used (SQLite: database or disk is full)"). The 1 -> 2 step stays done, the
    failed step was rolled back, and the next start finishes the upgrade."""
    from agent import state as state_module
    from agent.state import SCHEMA_VERSION

    data = tmp_path / "data"
    data.mkdir()
    path = data / "state.sqlite"
    state_at_schema(path, 1)
    migrate = state_module.MIGRATIONS[2]

    def out_of_space(db: sqlite3.Connection) -> None:
        db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0]}")  # no page more
        migrate(db)

    monkeypatch.setattr(state_module, "MIGRATIONS", [*state_module.MIGRATIONS[:2], out_of_space])
    free_bytes(monkeypatch, 60 * 1024)
    code, text = serve_once(data, registry)
    assert code == 2, text
    assert (f"cannot start: the disk of the data folder {data} is full (0.1 MiB free; SQLite: database or disk is "
            "full): free space there and start the agent again. Nothing was lost: the folder is intact") in text, text
    assert "Traceback" not in text, text
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2  # 1 -> 2 done, 2 -> 3 rolled back
        assert not db.execute("SELECT name FROM sqlite_master WHERE name='queues'").fetchall()
    finally:
        db.close()
    monkeypatch.undo()  # space freed
    r = start(data, registry)
    try:
        assert r.agent.state.schema_version() == SCHEMA_VERSION
    finally:
        r.stop()


@pytest.mark.parametrize("free_mib,full", [(0.02, True), (4096, False)])
def test_an_io_error_at_start_on_a_nearly_full_disk_says_the_disk_is_full(
        tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch, free_mib: float, full: bool) -> None:
    """SQLite cannot create state.sqlite's -wal file (here: a folder is in its way, as ENOSPC would stop it):
    with little space left, serve says the disk is full and to free space (it said "cannot be used (SQLite:
    disk I/O error)", which reads as a failing disk); with plenty left, it keeps SQLite's own words."""
    data = tmp_path / "data"
    r = start(data, registry)
    client.ingest(r.stub, make_samples(3))
    r.stop()
    (data / "state.sqlite-wal").mkdir()
    free_bytes(monkeypatch, int(free_mib * MIB))
    code, text = serve_once(data, registry)
    assert code == 2 and "Traceback" not in text, text
    said = (f"cannot start: the disk of the data folder {data} is full (0.0 MiB free; SQLite: unable to open "
            "database file): free space there and start the agent again. Nothing was lost")
    if full:
        assert said in text, text
    else:
        assert "is full" not in text and f"{data / 'state.sqlite'} cannot be used (SQLite: unable to open" in text, text
    (data / "state.sqlite-wal").rmdir()
    r = start(data, registry)
    try:
        assert status(r).samples == 3
    finally:
        r.stop()


def test_a_full_disk_at_start_for_real(tmp_path: Path, registry: Path) -> None:
    """A stopped agent's folder whose disk filled up meanwhile (SQLite cannot create state.sqlite's -shm and
    -wal): serve says the disk is full and to free space (it said "cannot be used (SQLite: disk I/O error)"),
    and starts once space is freed."""
    with tmpfs(tmp_path / "data", "8m") as data:
        r = start(data, registry)
        client.ingest(r.stub, make_samples(5))
        r.stop()
        filler = fill(data)
        code, text = serve_once(data, registry)
        assert code == 2 and "Traceback" not in text, text
        assert f"cannot start: the disk of the data folder {data} is full (0.0 MiB free; " in text, text
        assert "free space there and start the agent again" in text, text
        filler.unlink()
        r = start(data, registry)
        try:
            assert status(r).samples == 5
        finally:
            r.stop()


@pytest.mark.parametrize("free_mib,said", [
    (0.0, "is full (0.0 MiB free): Ingest, SubmitLabels and model swaps fail now with RESOURCE_EXHAUSTED"),
    (0.5, "is full (0.5 MiB free): Ingest, SubmitLabels and model swaps fail now"),
    (100.0, "has 100.0 MiB free (warning below 256 MiB): when it is full, Ingest, SubmitLabels and model swaps fail"),
    (300.0, "")])
def test_status_says_a_full_data_folder_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_mib: float,
                                                 said: str) -> None:
    """GetStatus's space warning: at (nearly) no space left it says the writes fail now (it said "when it is
    full, ... fail" with 0.0 MiB free, while they were failing); with little space left, that they will."""
    from types import SimpleNamespace

    from agent.core import storage_warnings

    fake = SimpleNamespace(f_flag=0, f_bavail=int(free_mib * MIB) // 4096, f_frsize=4096)
    monkeypatch.setattr(os, "statvfs", lambda _p: fake)
    warnings = storage_warnings(tmp_path, 256 * MIB)
    if said:
        assert len(warnings) == 1 and f"the data folder {tmp_path} {said}" in warnings[0], warnings
        assert warnings[0].endswith("(reads and Select keep working); free space there"), warnings
    else:
        assert warnings == []
