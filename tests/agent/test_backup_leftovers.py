"""What a killed ``shortlist backup`` or ``restore`` leaves (``.OUT.partial-PID``, ``.D.restore-PID``,
``.D.replaced-PID``): refused by serve, check and restore, named, and removed by the next backup or restore
(docs/agent.md, "Backup and restore"). A killed process is simulated by folders named as the code names them,
with the PID of no process."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.state import State, StateCorruptError
from shortlist.cli import app
from tests.agent.test_backup import blob_folder, text

runner = CliRunner()
UNFINISHED_MARKER = "UNFINISHED-COPY.txt"  # agent.state.UNFINISHED_MARKER (named here so the test runs on older code)
DEAD = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # above the largest PID: no process has it


def hot_journal_state(folder: Path) -> None:
    """``folder/state.sqlite`` as a backup killed mid-copy leaves it: pages written, the rollback journal hot
    (a process writing in DELETE journal mode dies inside its transaction, as the backup API's copy does)."""
    folder.mkdir(parents=True, exist_ok=True)
    code = ("import os, sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "db.execute('PRAGMA cache_size=5'); db.execute('BEGIN'); "
            "db.execute('CREATE TABLE samples (seq INTEGER PRIMARY KEY, b BLOB)'); "
            "[db.execute('INSERT INTO samples (b) VALUES (?)', (os.urandom(4000),)) for _ in range(200)]; "
            "os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(folder / "state.sqlite")], check=True)
    assert (folder / "state.sqlite-journal").exists() and (folder / "state.sqlite").stat().st_size > 100_000


def killed_backup(out: Path, pid: int = DEAD) -> Path:
    """The folder a backup to ``out`` by process ``pid`` leaves when killed while copying state.sqlite."""
    partial = out.parent / f".{out.name}.partial-{pid}"
    hot_journal_state(partial)
    (partial / UNFINISHED_MARKER).write_text("unfinished\n")
    return partial


def test_a_killed_backups_folder_is_refused_by_serve_check_and_restore_and_removed_by_the_next_backup(
        tmp_path: Path) -> None:
    """The SRE's report: a copy of `.bk1.partial-PID` was served as an EMPTY agent (SQLite rolled the journal
    back, the agent made a fresh schema), check gave upgrade advice, restore said "no such table"."""
    data, bk = tmp_path / "d", tmp_path / "bk"
    blob_folder(data)
    partial = killed_backup(bk)
    copy = tmp_path / "copy"
    shutil.copytree(partial, copy)
    with pytest.raises(StateCorruptError, match="unfinished backup"):
        State(copy / "state.sqlite")
    assert (copy / "state.sqlite-journal").exists()  # not opened: the journal is not rolled back
    checked = runner.invoke(app, ["check", "--data-dir", str(copy)])
    assert checked.exit_code == 1 and "unfinished backup" in text(checked), checked.output
    assert "schema version" not in text(checked) and "integrity_check" not in text(checked)
    restored = runner.invoke(app, ["restore", str(copy), str(tmp_path / "r")])
    assert restored.exit_code == 2 and "unfinished backup" in text(restored), restored.output
    assert not (tmp_path / "r").exists()
    # a backup still running into the same --out (its process alive) is left alone
    running = killed_backup(bk, pid=os.getppid())
    made = runner.invoke(app, ["backup", "--data-dir", str(data), "--out", str(bk)])
    assert made.exit_code == 0, made.output
    assert not partial.exists() and f"removed {partial}" in text(made), made.output
    assert running.exists() and str(running) not in text(made)
    assert not (bk / UNFINISHED_MARKER).exists()
    s = State(bk / "state.sqlite")
    try:
        assert s.count() == 5
    finally:
        s.close()


def test_serve_refuses_a_killed_backups_folder_and_leaves_it_as_it_was(tmp_path: Path, registry: Path) -> None:
    """`shortlist serve` on an unfinished copy names it and exits 2, before it writes anything there: no
    ``agent.lock`` (was left inside the refused folder), no write probe, the folder's mode unchanged."""
    partial = killed_backup(tmp_path / "bk")
    partial.chmod(0o755)  # what serve would make 0700 when it opens a data folder
    before = sorted((p.name, p.stat().st_size) for p in partial.iterdir())
    served = subprocess.run([sys.executable, "-m", "shortlist.cli", "serve", "--data-dir", str(partial),
                             "--models", str(registry), "--port", "0", "--cpu"],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert served.returncode == 2 and "unfinished backup" in served.stderr, served.stderr
    assert str(partial) in " ".join(served.stderr.split())
    assert sorted((p.name, p.stat().st_size) for p in partial.iterdir()) == before
    assert partial.stat().st_mode & 0o777 == 0o755


def test_a_state_sqlite_without_the_agents_schema_is_refused_not_made_an_empty_pool(tmp_path: Path) -> None:
    """A killed backup's copy without a marker (an older shortlist's, or the marker removed): a hot journal that
    SQLite rolls back to nothing; and some other database. Neither becomes a fresh empty pool."""
    hot = tmp_path / "hot"
    hot_journal_state(hot)
    size = (hot / "state.sqlite").stat().st_size
    checked = runner.invoke(app, ["check", "--data-dir", str(hot)])
    assert checked.exit_code == 1 and "has a rollback journal beside it" in text(checked), checked.output
    assert "migrates it" not in text(checked)
    for _ in range(2):  # left unopened: a second start does not find an empty database to make a pool in
        with pytest.raises(StateCorruptError, match="has a rollback journal beside it"):
            State(hot / "state.sqlite")
        assert (hot / "state.sqlite-journal").exists() and (hot / "state.sqlite").stat().st_size == size
    restored = runner.invoke(app, ["restore", str(hot), str(tmp_path / "r")])
    assert restored.exit_code == 2 and "has a rollback journal beside it" in text(restored), restored.output
    assert (hot / "state.sqlite-journal").exists() and not (tmp_path / "r").exists()
    other = tmp_path / "other"
    other.mkdir()
    db = sqlite3.connect(other / "state.sqlite")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(StateCorruptError, match="holds no shortlist agent data"):
        State(other / "state.sqlite")
    checked = runner.invoke(app, ["check", "--data-dir", str(other)])
    assert checked.exit_code == 1 and "holds no shortlist agent data" in text(checked), checked.output
    # an empty file (an agent's first start cut short) is a new pool, as before
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "state.sqlite").touch()
    State(tmp_path / "new" / "state.sqlite").close()


def test_a_killed_restores_folders_are_named_by_check_and_removed_by_the_next_restore(tmp_path: Path) -> None:
    """The SRE's report: 7 killed `restore --force` runs left `.D.restore-PID` and `.D.replaced-PID` (a full copy
    of the old data) that nothing mentioned."""
    data, bk = tmp_path / "d", tmp_path / "bk"
    blob_folder(data)
    assert runner.invoke(app, ["backup", "--data-dir", str(data), "--out", str(bk)]).exit_code == 0
    unfinished = tmp_path / f".d.restore-{DEAD}"
    shutil.copytree(bk, unfinished)
    (unfinished / UNFINISHED_MARKER).write_text("unfinished\n")
    replaced = tmp_path / f".d.replaced-{DEAD + 1}"
    shutil.copytree(data, replaced)
    checked = runner.invoke(app, ["check", "--data-dir", str(data)])
    assert checked.exit_code == 0, checked.output
    assert f"{unfinished}: a killed restore's unfinished copy" in text(checked), checked.output
    assert f"{replaced}: the old folder a killed `restore --force` moved aside" in text(checked)
    done = runner.invoke(app, ["restore", str(bk), str(data), "--force"])
    assert done.exit_code == 0, done.output
    assert f"removed {unfinished}" in text(done) and f"removed {replaced}" in text(done), done.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bk", "d"]
    # killed between its two renames: D is gone and the replaced folder is the only copy of the old data: kept
    gone = tmp_path / "e"
    old = tmp_path / f".e.replaced-{DEAD}"
    shutil.copytree(data, old)
    done = runner.invoke(app, ["restore", str(bk), str(gone)])
    assert done.exit_code == 0 and old.exists() and f"kept {old}" in text(done), done.output
