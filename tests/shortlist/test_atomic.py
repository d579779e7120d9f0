"""shortlist.atomic: a write that fails at any step leaves the old content or the new, never part of either,
and no temporary file behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shortlist import atomic
from shortlist.atomic import atomic_file, write_atomic


class Crash(Exception):
    pass


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if atomic.TMP_INFIX in p.name)


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_crash_mid_write_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    path = tmp_path / "labels.csv"
    write_atomic(path, "id,label\na,cat\n")

    def fsync(fd: int) -> None:
        raise Crash("power loss")

    def replace(src: object, dst: object) -> None:
        raise Crash("power loss")

    with monkeypatch.context() as m:
        if step == "fsync":
            m.setattr(atomic.os, "fsync", fsync)
        if step == "replace":
            m.setattr(atomic.os, "replace", replace)
        with pytest.raises(Crash), atomic_file(path, text=True) as f:
            f.write("id,label\n")  # half of the new content
            if step == "write":
                raise Crash("killed mid-write")
            f.write("b,dog\n")
    assert path.read_text() == "id,label\na,cat\n"  # the old content, whole
    assert _leftovers(tmp_path) == []
    write_atomic(path, b"id,label\nb,dog\n")
    assert path.read_text() == "id,label\nb,dog\n"
    assert _leftovers(tmp_path) == []


def test_first_write_that_fails_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "summary.json"
    monkeypatch.setattr(atomic.os, "replace", lambda s, d: (_ for _ in ()).throw(Crash("power loss")))
    with pytest.raises(Crash):
        write_atomic(path, "{}")
    assert not path.exists() and _leftovers(tmp_path) == []


def test_folder_is_fsynced_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rename is durable only once the folder is fsynced: the last fsync is of the folder, after replace."""
    path = tmp_path / "pull.json"
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    write_atomic(path, "{}")
    assert events == ["fsync-file", "replace", "fsync-dir"]


def test_temp_of_a_dead_writer_is_swept_by_the_next_write(tmp_path: Path) -> None:
    """A process killed mid-write (no exception handler ran) leaves its temporary file; the next successful
    write of that path removes it. One of a live process (maybe writing now) is kept."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    path = tmp_path / "config.json"
    stale = tmp_path / f".config.json{atomic.TMP_INFIX}{dead.stdout.strip()}-deadbeef"
    live = tmp_path / f".config.json{atomic.TMP_INFIX}{os.getpid()}-0badf00d"
    stale.write_text('{"torn')
    live.write_text('{"being')
    write_atomic(path, '{"a": 1}')
    assert path.read_text() == '{"a": 1}'
    assert _leftovers(tmp_path) == [live.name]
