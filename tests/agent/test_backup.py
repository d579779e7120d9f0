"""``shortlist backup``: a consistent copy of a data folder taken while the agent serves it (agent/backup.py), and
an agent started on it (docs/agent.md, "Backup and restore")."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent import client
from agent.blobs import BlobStore, sha256_hex
from agent.state import SCHEMA_VERSION, NewSample, State
from shortlist.cli import app
from shortlist.v1 import agent_pb2
from tests.agent.conftest import CLASSES, Running, make_samples, start
from tests.agent.scenarios.test_state_faults import lose_index_rows, small_state

runner = CliRunner()


def text(result: object) -> str:
    return " ".join(result.output.split())  # type: ignore[attr-defined]  # rich wraps long lines


def test_an_agent_started_on_a_backup_taken_during_labelling_has_every_label_acknowledged_before_it(
        tmp_path: Path, running: Running) -> None:
    """Labels are submitted one by one, each with its own annotator, while `shortlist backup` runs; an agent
    started on the backup has every label acknowledged before the backup started, all the samples, and its
    index rebuilt from the stored embeddings (the snapshot is not copied)."""
    samples = make_samples(30)
    assert client.ingest(running.stub, samples).accepted == 30
    ids = [s.id for s in samples]
    acked: list[tuple[float, str, str, str]] = []  # (time acknowledged, id, label, annotator)
    stop = threading.Event()
    failed: list[BaseException] = []

    def label() -> None:
        k = 0
        try:
            while not stop.is_set():
                sid, lab, who = ids[k % len(ids)], CLASSES[k % 3], f"w{k}"
                assert client.submit_labels(running.stub, [(sid, lab)], who).accepted == 1
                acked.append((time.time(), sid, lab, who))
                k += 1
        except BaseException as e:
            failed.append(e)

    writer = threading.Thread(target=label)
    writer.start()
    try:
        while len(acked) < 40 and writer.is_alive():
            time.sleep(0.01)
        dest = tmp_path / "backups" / "b1"
        started = time.time()
        result = runner.invoke(app, ["backup", "--data-dir", str(running.data), "--out", str(dest), "--json"])
        ended = time.time()
        n_end = len(acked)
        while len(acked) < n_end + 20 and writer.is_alive():  # labelling goes on after the backup
            time.sleep(0.01)
    finally:
        stop.set()
        writer.join()
    assert not failed, failed
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    before = {(sid, lab, who) for t, sid, lab, who in acked if t < started}
    assert len(before) >= 40 and any(t > ended for t, *_ in acked)  # labelled before, during and after
    assert summary["samples"] == 30 and summary["integrity"] == "ok" and summary["schema_version"] == SCHEMA_VERSION
    assert summary["label_events"] >= len(before) and summary["labelled"] == 30
    assert summary["versions"] == {"v0001": "serving"} and summary["serving_version"] == "v0001"
    assert summary["blobs"] == 30 and summary["blobs_linked"] == 30 and not summary["missing_blobs"]
    # the folder: state.sqlite (one file) and the referenced blobs; no index, lock, WAL or partial folder
    assert sorted(p.name for p in dest.iterdir()) == ["blobs", "state.sqlite"]
    assert [p.name for p in dest.parent.iterdir()] == ["b1"]
    assert dest.stat().st_mode & 0o777 == 0o700 and (dest / "state.sqlite").stat().st_mode & 0o777 == 0o600
    # no absolute path: the folder can be moved anywhere
    for f in dest.rglob("*"):
        if f.is_file():
            assert str(running.data).encode() not in f.read_bytes() and str(tmp_path).encode() not in f.read_bytes()
    moved = tmp_path / "elsewhere" / "restored"
    moved.parent.mkdir()
    dest.rename(moved)
    restored = start(moved, running.models)
    try:
        st = restored.stub.GetStatus(agent_pb2.GetStatusRequest())
        assert (st.samples, st.embedded, st.model_version) == (30, 30, "v0001")
        assert restored.agent.manager.current is not None
        assert restored.agent.manager.current.index.loaded_from_snapshot == 0  # rebuilt from SQLite
        history = {(e.id, e.label, e.annotator) for e in client.list_labels(restored.stub, history=True)}
        assert before <= history, sorted(before - history)[:5]
        assert client.ingest(restored.stub, make_samples(3, prefix="new", seed=7)).accepted == 3  # it serves on
        chosen = restored.stub.Select(agent_pb2.SelectRequest(budget=5, strategy="coreset")).selected
        assert sorted(c.id for c in chosen) == ["new0", "new1", "new2"]  # the only unlabelled samples
    finally:
        restored.stop()


def blob_folder(data: Path, n: int = 5) -> list[str]:
    """A data folder of ``n`` samples with their blobs, and an orphan blob no sample refers to; the digests."""
    store = BlobStore(data / "blobs")
    payloads = [f"payload {i}".encode() for i in range(n)]
    digests = [sha256_hex(p) for p in payloads]
    store.put_many([*zip(digests, payloads, strict=True), (sha256_hex(b"orphan"), b"orphan")])
    s = State(data / "state.sqlite")
    s.add_samples([NewSample(f"s{i}", "", {}, "image", d) for i, d in enumerate(digests)])
    s.close()
    return digests


def test_backup_takes_only_referenced_blobs_links_or_copies_them_and_reports_missing_ones(tmp_path: Path) -> None:
    data = tmp_path / "d"
    digests = blob_folder(data)
    linked, copied = tmp_path / "linked", tmp_path / "copied"
    one = json.loads(runner.invoke(app, ["backup", "--data-dir", str(data), "--out", str(linked), "--json"]).stdout)
    two = json.loads(runner.invoke(app, ["backup", "--data-dir", str(data), "--out", str(copied), "--json",
                                         "--copy-blobs"]).stdout)
    assert (one["blobs"], one["blobs_linked"], two["blobs"], two["blobs_copied"]) == (5, 5, 5, 5)
    for d in digests:
        src, a, b = (root / "blobs" / d[:2] / d[2:] for root in (data, linked, copied))
        assert a.stat().st_ino == src.stat().st_ino and b.stat().st_ino != src.stat().st_ino
        assert b.read_bytes() == src.read_bytes() and b.stat().st_mode & 0o777 == 0o600
    orphan = sha256_hex(b"orphan")
    assert not (linked / "blobs" / orphan[:2] / orphan[2:]).exists()
    assert sum(1 for p in copied.rglob("*") if p.is_file()) == 1 + 5
    # a blob gone, another damaged: the backup still holds the rest, and says which (exit 0)
    (data / "blobs" / digests[0][:2] / digests[0][2:]).unlink()
    (data / "blobs" / digests[1][:2] / digests[1][2:]).write_bytes(b"bit rot")
    result = runner.invoke(app, ["backup", "--data-dir", str(data), "--out", str(tmp_path / "third"), "--copy-blobs"])
    assert result.exit_code == 0 and "3 blobs (3 copied" in text(result), result.output
    assert f"1 blob(s) of its samples are missing from {data / 'blobs'} (e.g. {digests[0]})" in text(result)
    assert f"1 blob(s) of its samples are damaged in {data / 'blobs'} (e.g. {digests[1]})" in text(result)


def test_backup_prints_its_summary_on_stdout_and_warnings_on_stderr(tmp_path: Path) -> None:
    """`shortlist backup ... > o.txt` left o.txt empty: the summary went to stderr. It is the command's result,
    on stdout as ingest's counts are; a warning (a blob missing) stays on stderr."""
    data = tmp_path / "d"
    digests = blob_folder(data)
    (data / "blobs" / digests[0][:2] / digests[0][2:]).unlink()
    out = tmp_path / "bk"
    result = runner.invoke(app, ["backup", "--data-dir", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    stdout, stderr = " ".join(result.stdout.split()), " ".join(result.stderr.split())
    assert stdout.startswith(f"backed up {data} to {out} in ") and "4 blobs" in stdout, (stdout, stderr)
    assert f"restore: shortlist restore {out} D (or serve it: shortlist serve --data-dir {out}" in stdout
    assert "missing from" not in stdout
    assert stderr.startswith("warning: 1 blob(s) of its samples are missing from"), stderr
    blob_folder(tmp_path / "sound")
    quiet = runner.invoke(app, ["backup", "--data-dir", str(tmp_path / "sound"), "--out", str(tmp_path / "bk2")])
    assert quiet.exit_code == 0 and quiet.stdout.startswith("backed up") and quiet.stderr == ""  # no blank line

def test_the_new_install_backs_up_an_older_folder_before_upgrading_it(tmp_path: Path) -> None:
    """docs/agent.md "Upgrading": older releases have no `shortlist backup`, so the new install's backs up the
    stopped folder before its first start: the folder (of the release before schema versions) is left at its
    schema, and the backup is the same folder, at the same schema, for the old version to serve."""
    import shutil
    import sqlite3

    from tests.agent.scenarios.test_state_faults import SCHEMA0

    data, out = tmp_path / "D", tmp_path / "bk"
    shutil.copytree(SCHEMA0, data)
    before = (data / "state.sqlite").read_bytes()
    result = runner.invoke(app, ["backup", "--data-dir", str(data), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["schema_version"], summary["samples"], summary["integrity"]) == (0, 6, "ok"), summary
    assert (data / "state.sqlite").read_bytes() == before
    db = sqlite3.connect(out / "state.sqlite")
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 6
    finally:
        db.close()


def test_backup_refuses_what_it_cannot_do_and_leaves_nothing_when_it_fails(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "d"
    blob_folder(data)
    (tmp_path / "exists").mkdir()
    for out, args, why in (
            (tmp_path / "exists", [], "exists: give --out a new folder"),
            (tmp_path / "x1", ["--data-dir", str(tmp_path)], "is not an agent data folder (it has no state.sqlite)"),
            (data / "inside", [], "is inside the data folder")):
        result = runner.invoke(app, ["backup", "--data-dir", str(data), "--out", str(out), *args])
        assert result.exit_code == 2 and why in text(result) and "Traceback" not in result.output, result.output
        assert not (out.exists() and out.name != "exists")
    # the disk fills up while blobs are copied: exit 1, nothing at --out, no partial folder left
    import agent.backup

    calls: list[Path] = []
    copy = agent.backup._copy_blob

    def full(src: Path, dst: Path, digest: str) -> tuple[int, bool]:
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return copy(src, dst, digest)

    monkeypatch.setattr(agent.backup, "_copy_blob", full)
    out = tmp_path / "bk" / "full"
    result = runner.invoke(app, ["backup", "--data-dir", str(data), "--out", str(out), "--copy-blobs"])
    assert result.exit_code == 1 and "No space left on device" in text(result), result.output
    assert "nothing was left at" in text(result) and "free space there" in text(result)
    assert list((tmp_path / "bk").iterdir()) == []
    monkeypatch.undo()
    # the disk fills up while SQLite writes the state copy: SQLite says so in its own words; the same advice
    real_into = agent.backup._backup_into

    def sqlite_full(*args: object, **kwargs: object) -> object:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(agent.backup, "_backup_into", sqlite_full)
    result = runner.invoke(app, ["backup", "--data-dir", str(data), "--out", str(out)])
    assert result.exit_code == 1 and "SQLite: database or disk is full" in text(result), result.output
    assert "free space there, or back up elsewhere" in text(result) and list((tmp_path / "bk").iterdir()) == []
    monkeypatch.setattr(agent.backup, "_backup_into", real_into)
    # a damaged database is not backed up as if it were sound
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    seqs = small_state(damaged / "state.sqlite")
    lose_index_rows(damaged / "state.sqlite", seqs[4:])
    result = runner.invoke(app, ["backup", "--data-dir", str(damaged), "--out", str(tmp_path / "bk" / "d")])
    assert result.exit_code == 1 and "fails SQLite's integrity check (row" in text(result), result.output
    assert "restore it from an earlier backup" in text(result) and list((tmp_path / "bk").iterdir()) == []


def test_a_backup_racing_a_deletion_holds_the_payloads_of_every_sample_its_state_copy_holds(
        running: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data steward's report: a backup whose state copy came before a deletion's commit, and whose blob links
    came after the deletion removed the files, held 5 samples without payloads (exit 0, blaming the source).
    Here a deletion comes while the backup sits between its state copy and its links: it waits for the backup
    (before the agent's write lock, test_delete_races.py), which then holds every payload; the deletion, its
    commit and its file removal come after it."""
    import agent.backup as backup_module

    samples = make_samples(5)
    client.ingest(running.stub, samples)
    copied = threading.Event()
    original = backup_module._copy_blobs
    removed_at: list[float] = []

    def slow_links(*args: object, **kw: object) -> None:
        copied.set()
        time.sleep(0.5)  # time for the deletion to commit and remove the files, if nothing held it back
        linked_at = time.monotonic()
        original(*args, **kw)  # type: ignore[arg-type]
        assert not removed_at or removed_at[0] > linked_at

    def delete() -> None:
        assert copied.wait(10)
        running.agent.delete_samples(["s0", "s1"], "ops", "privacy")
        removed_at.append(time.monotonic())

    monkeypatch.setattr(backup_module, "_copy_blobs", slow_links)
    deleter = threading.Thread(target=delete)
    deleter.start()
    summary = backup_module.backup(running.data, tmp_path / "bk")
    deleter.join(10)
    assert not deleter.is_alive() and removed_at
    assert (summary.samples, summary.blobs, summary.missing_blobs) == (5, 5, [])
    digests = [sha256_hex(s.encoded_image) for s in samples]
    assert all((tmp_path / "bk" / "blobs" / d[:2] / d[2:]).is_file() for d in digests)
    assert not any((running.data / "blobs" / d[:2] / d[2:]).exists() for d in digests[:2])  # removed after it


def crash_after_a_label(state_path: Path) -> None:
    """Label sample 1 "wolf" in another process that then dies without closing the database (as kill -9): the
    label stays in ``state.sqlite-wal`` only."""
    code = ("import os, sys; from pathlib import Path; from agent.state import State; "
            "s = State(Path(sys.argv[1])); s.add_labels([(1, s.class_index('wolf'))], 'eve'); os._exit(0)")
    import subprocess
    import sys
    subprocess.run([sys.executable, "-c", code, str(state_path)], check=True, cwd=Path(__file__).parents[2])


def test_restore_over_a_crashed_folder_replays_none_of_its_wal_and_refuses_what_it_must(tmp_path: Path) -> None:
    """The data steward's report: `cp -a backup/. D/` over a folder a crashed agent left kept its state.sqlite-wal,
    which SQLite replayed onto the restored copy (a label the backup does not hold appeared). `shortlist restore`
    makes a fresh folder instead, and refuses a served or non-empty target unless told."""
    data, bk = tmp_path / "d", tmp_path / "bk"
    blob_folder(data)
    assert runner.invoke(app, ["backup", "--data-dir", str(data), "--out", str(bk)]).exit_code == 0
    crash_after_a_label(data / "state.sqlite")
    assert (data / "state.sqlite-wal").stat().st_size > 0  # the crashed agent's label, in the WAL only
    # what a copy over the folder did: the old WAL replayed onto the restored file, a label the backup lacks
    merged = tmp_path / "copied-over"
    shutil.copytree(data, merged)
    shutil.copy2(bk / "state.sqlite", merged / "state.sqlite")
    s = State(merged / "state.sqlite")
    assert "wolf" in s.classes and s.labeled_count() == 1
    s.close()
    shutil.rmtree(merged)
    refused = runner.invoke(app, ["restore", str(bk), str(data)])
    assert refused.exit_code == 2 and "is not empty" in text(refused) and "--force" in text(refused), refused.output
    from agent.security import DataDirLock
    lock = DataDirLock(data)  # an agent serving it
    try:
        served = runner.invoke(app, ["restore", str(bk), str(data), "--force"])
        # restore's own sentence (it reused serve's "...in use by another agent; stop it, or give this agent its
        # own --data-dir: stop that agent first")
        assert served.exit_code == 2 and text(served) == (
            f"cannot restore: {data} is served by an agent (pid {os.getpid()}): stop that agent, then restore (a "
            "restore never replaces a folder an agent has open)"), served.output
    finally:
        lock.release()
    done = runner.invoke(app, ["restore", str(bk), str(data), "--force", "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert (summary["samples"], summary["blobs"], summary["integrity"], summary["labelled"]) == (5, 5, "ok", 0)
    assert not (data / "state.sqlite-wal").exists() and not (data / "state.sqlite-shm").exists()
    s = State(data / "state.sqlite")
    try:
        assert (s.count(), s.labeled_count(), "wolf" in s.classes) == (5, 0, False)
    finally:
        s.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bk", "d"]  # no partial or replaced folder left
    fresh = runner.invoke(app, ["restore", str(bk), str(tmp_path / "new")])
    assert fresh.exit_code == 0 and "restored" in fresh.stdout, fresh.output


def test_backup_and_restore_print_the_label_events_status_prints_also_after_a_deletion(tmp_path: Path,
                                                                                       registry: Path) -> None:
    """backup/restore printed "N label events" counting the label rows left, where `shortlist status`'s
    label_events also counts the rows deletions removed plus one per deletion (36 vs 38 in the report): the
    same figure, named the same way, now."""
    data = tmp_path / "d"
    r = start(data, registry)
    try:
        client.ingest(r.stub, make_samples(6, labels=4))
        assert client.submit_labels(r.stub, [("s5", "cat")], annotator="ana").accepted == 1
        assert r.stub.DeleteSamples(agent_pb2.DeleteSamplesRequest(ids=["s0", "s1"], annotator="ops")).accepted == 2
        events = r.stub.GetStatus(agent_pb2.GetStatusRequest()).label_events
    finally:
        r.stop()
    assert events == 5 + 1  # 5 rows stored, 3 left: the 2 removed still count, and one for the deletion
    for cmd in (["backup", "--data-dir", str(data), "--out", str(tmp_path / "bk")],
                ["restore", str(tmp_path / "bk"), str(tmp_path / "d2")]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 0, res.output
        assert f"3 labelled, label_events {events} " in text(res), res.output
        assert json.loads(runner.invoke(app, [*cmd[:-1], str(tmp_path / "x"), "--json"]).stdout)[
            "label_events"] == events
        shutil.rmtree(tmp_path / "x")


def test_restore_into_a_symlink_to_a_data_folder_restores_the_folder_it_names(tmp_path: Path) -> None:
    """`restore B Dlink --force`, Dlink a symlink to the data folder (what `serve --data-dir Dlink` uses), said
    "Dlink is not a folder". It restores the folder the link names and keeps the link; a link to no folder is
    refused saying so."""
    data, bk, link = tmp_path / "real", tmp_path / "bk", tmp_path / "link"
    blob_folder(data)
    assert runner.invoke(app, ["backup", "--data-dir", str(data), "--out", str(bk)]).exit_code == 0
    (data / "stray.txt").write_text("x")
    link.symlink_to(data)
    done = runner.invoke(app, ["restore", str(bk), str(link), "--force"])
    assert done.exit_code == 0, done.output
    assert link.is_symlink() and link.resolve() == data.resolve() and not (data / "stray.txt").exists()
    assert (data / "state.sqlite").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bk", "link", "real"]
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    refused = runner.invoke(app, ["restore", str(bk), str(dangling)])
    assert refused.exit_code == 2 and f"{dangling} is a symlink to {tmp_path / 'nowhere'}, which is not a folder" \
        in text(refused), refused.output


def test_restore_writes_nothing_into_the_backup_it_reads(tmp_path: Path) -> None:
    """`shortlist restore` made BACKUP/blobs/.lock (the removal lock a backup of a served folder takes): a restore
    must leave its backup as it was, byte for byte and file for file."""
    data, bk = tmp_path / "d", tmp_path / "bk"
    blob_folder(data)
    assert runner.invoke(app, ["backup", "--data-dir", str(data), "--out", str(bk)]).exit_code == 0
    (bk / "blobs" / ".lock").unlink(missing_ok=True)  # (the backup's own copy of the source's lock, if any)
    before = sorted((str(p.relative_to(bk)), p.stat().st_mtime_ns) for p in bk.rglob("*"))
    done = runner.invoke(app, ["restore", str(bk), str(tmp_path / "new")])
    assert done.exit_code == 0, done.output
    assert sorted((str(p.relative_to(bk)), p.stat().st_mtime_ns) for p in bk.rglob("*")) == before
