"""shortlist.locks.FolderLock, the lock a training run (run.lock) and a bench command (bench.lock) hold on their
--out: one holder at a time, nothing left behind on release, a file in the way said as such."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shortlist.locks import FolderLock, Locked


def test_one_holder_and_nothing_left_behind(tmp_path: Path) -> None:
    out = tmp_path / "run"
    lock = FolderLock(out, "run.lock")
    with pytest.raises(Locked) as held:
        FolderLock(out, "run.lock")
    assert held.value.holder == str(os.getpid())
    lock.release()
    assert not out.exists()  # made by the lock, nothing else written: removed
    lock = FolderLock(out, "run.lock")
    (out / "config.json").write_text("{}")
    lock.release()
    assert [p.name for p in out.iterdir()] == ["config.json"]  # the run's files stay, the lock file goes
    FolderLock(out, "run.lock").release()
    assert out.is_dir()  # a folder it did not make is kept


def test_a_file_as_the_folder(tmp_path: Path) -> None:
    (tmp_path / "one.csv").write_text("a\n")
    with pytest.raises(FileExistsError):
        FolderLock(tmp_path / "one.csv", "run.lock")
    with pytest.raises(NotADirectoryError):
        FolderLock(tmp_path / "one.csv" / "sub", "run.lock")
    assert (tmp_path / "one.csv").read_text() == "a\n"


def test_a_lock_on_a_file_removed_meanwhile_is_taken_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that opened the lock file just before the holder removed it, and locked it just after, holds a file
    no longer in the folder: FolderLock sees that and locks the file at the path, so two runs never both hold."""
    import shortlist.locks as locks

    out = tmp_path / "run"
    out.mkdir()
    real = locks.PidLock
    calls: list[int] = []

    def stale_first(path: Path, mode: int = 0o644) -> locks.PidLock:
        lock = real(path, mode)
        if not calls:  # the first lock taken: its file is then removed, as a finishing holder removes it
            path.unlink()
        calls.append(1)
        return lock

    monkeypatch.setattr(locks, "PidLock", stale_first)
    lock = FolderLock(out, "run.lock")
    assert len(calls) == 2 and (out / "run.lock").is_file()
    monkeypatch.setattr(locks, "PidLock", real)
    with pytest.raises(Locked):
        FolderLock(out, "run.lock")
    lock.release()


def test_a_pid_lock_can_hold_what_its_holder_says_of_itself(tmp_path: Path) -> None:
    """PidLock's ``holder``: the text written in the locked file instead of the bare pid (a training cycle's pid,
    start time and run folder, training/cycle.py); a second taker is refused with no pid parsed from it."""
    from shortlist.locks import PidLock

    path = tmp_path / ".cycle.lock"
    lock = PidLock(path, holder='{"pid": 12, "run": "/runs/a"}\n')
    assert path.read_text() == '{"pid": 12, "run": "/runs/a"}\n'
    with pytest.raises(Locked) as held:
        PidLock(path)
    assert held.value.holder == "" and path.read_text() == '{"pid": 12, "run": "/runs/a"}\n'
    lock.release()
    PidLock(path).release()
    assert path.read_text() == f"{os.getpid()}\n"
