"""shortlist.atomic: a write that fails at any step leaves the old content or the new, never part of either,
and no temporary file behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shortlist import atomic
from shortlist.atomic import NotWholeJson, atomic_file, read_json, write_atomic


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


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
@pytest.mark.parametrize("text", [False, True])
def test_mode_is_the_one_asked_from_the_temp_file_on(tmp_path: Path, umask: int, text: bool) -> None:
    """``mode``: the final file has exactly those permission bits whatever the umask, and so does the temporary
    file while it is being written (the path never exists with wider ones)."""
    path = tmp_path / "map.npz"
    old = os.umask(umask)
    try:
        with atomic_file(path, text=text, mode=0o600) as f:
            [tmp] = [p for p in tmp_path.iterdir() if atomic.TMP_INFIX in p.name]
            assert tmp.stat().st_mode & 0o777 == 0o600
            f.write("x" if text else b"x")
        assert path.stat().st_mode & 0o777 == 0o600
        write_atomic(path, b"y", mode=0o640)  # a rewrite takes the mode asked, not the old file's
        assert path.stat().st_mode & 0o777 == 0o640 and path.read_bytes() == b"y"
        write_atomic(path, b"z")  # no mode: the usual 0o666 less the umask
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    finally:
        os.umask(old)
    assert _leftovers(tmp_path) == []


def test_mode_with_an_exception_in_the_block_leaves_no_temp_and_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "map.npz"
    write_atomic(path, b"old", mode=0o600)
    with pytest.raises(Crash), atomic_file(path, mode=0o600) as f:
        f.write(b"new, half")
        raise Crash("killed mid-write")
    assert path.read_bytes() == b"old" and path.stat().st_mode & 0o777 == 0o600
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(("content", "said"), [
    (b'{"steps": 4, "ev', "is not valid JSON (line 1 column 14: torn by a crash, or edited by hand?)"),
    (b"", "is not valid JSON (line 1 column 1: torn by a crash, or edited by hand?)"),
    (b"\xff\xfe{}", "is not valid JSON (not UTF-8: torn by a crash, or edited by hand?)"),
    (b"[1]", "holds an array, not a JSON object (edited by hand?)"),
    (b"null", "holds null, not a JSON object (edited by hand?)"),
    (b"8.5", "holds 8.5, not a JSON object (edited by hand?)"),
])
def test_read_json_names_the_file_and_the_fix(tmp_path: Path, content: bytes, said: str) -> None:
    path = tmp_path / "cell.json"
    path.write_bytes(content)
    with pytest.raises(NotWholeJson) as e:
        read_json(path, "delete it to re-run that cell")
    assert str(e.value) == f"{path} {said}; delete it to re-run that cell"
    assert isinstance(e.value, ValueError)


def test_read_json_reads_what_write_atomic_wrote(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_atomic(path, '{"steps": 4, "name": "caf\u00e9"}')
    assert read_json(path, "unused") == {"steps": 4, "name": "caf\u00e9"}
    with pytest.raises(FileNotFoundError):  # missing: the caller's OSError, as before
        read_json(tmp_path / "none.json", "unused")
