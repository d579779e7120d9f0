"""Agent (agent/core.py): opening and closing a data folder."""

from __future__ import annotations

import errno
from dataclasses import replace
from pathlib import Path

import pytest

from agent.blobs import BlobStore
from agent.config import AgentConfig
from agent.core import Agent, DataFolderError
from agent.models import ModelManager
from agent.security import DataDirLock
from agent.state import State


def offline(data: Path, registry: Path) -> AgentConfig:
    """An Agent's config without the background threads or CUDA."""
    return AgentConfig(data, registry, use_cuda=False, background=False)


def test_a_failed_start_frees_the_folder_for_the_next_agent(tmp_path: Path, registry: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A start that fails after the lock (here the blob store cannot open its folder) releases it: once the
    cause is gone, an agent of the same process opens the folder (it was refused as 'in use by another agent'
    with this process's own pid)."""
    data = tmp_path / "d"
    Agent(offline(data, registry)).close()
    with monkeypatch.context() as patched:
        patched.setattr(BlobStore, "__init__", failing_blob_store)
        with pytest.raises(OSError, match="the blob folder broke"):
            Agent(offline(data, registry))
    Agent(offline(data, registry)).close()


def failing_blob_store(store: BlobStore, root: Path) -> None:
    raise OSError(errno.EIO, "the blob folder broke")


@pytest.mark.parametrize(("name", "folder"), [("blobs", True), ("index", True), ("map", True),
                                              ("state.sqlite", False),
                                              ("agent.lock", False)])
def test_a_part_of_the_data_folder_of_the_wrong_kind_is_named(tmp_path: Path, registry: Path, name: str,
                                                              folder: bool) -> None:
    """A part of the data folder that is a file where a folder belongs (or a folder where a file belongs) is
    refused before anything is opened, naming the path, what it should be and what to do (``blobs`` as a file
    said only "[Errno 17] File exists: '.../blobs'", ``agent.lock`` as a folder "[Errno 21] Is a directory",
    and ``index`` or ``map`` as a file started an agent that could never save its snapshots)."""
    data = tmp_path / "d"
    Agent(offline(data, registry)).close()
    part = data / name
    if part.is_dir():
        part.rmdir()  # empty: nothing was ingested or saved
    elif part.exists():
        part.unlink()
    part.write_text("x") if folder else part.mkdir()
    with pytest.raises(DataFolderError) as caught:
        Agent(offline(data, registry))
    said = str(caught.value)
    should, is_ = ("a folder", "a file") if folder else ("a file", "a folder")
    assert said.startswith(f"{part} should be {should} (") and f") but is {is_}: " in said, said
    assert "the data folder is damaged or not a Shortlist data folder" in said, said
    assert f"move that {is_[2:]} away" in said, said
    assert part.is_file() if folder else part.is_dir()  # left as it was


def test_a_blobs_file_is_no_matter_without_blobs(tmp_path: Path, registry: Path) -> None:
    """--no-blobs never reads ``blobs``: a file there does not stop the start."""
    data = tmp_path / "d"
    data.mkdir()
    (data / "blobs").write_text("x")
    Agent(replace(offline(data, registry), blobs=False)).close()


def test_a_failed_start_closes_the_state_it_opened(tmp_path: Path, registry: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A start that fails late (the model manager's start) closes the database it opened and frees the lock."""
    closed: list[State] = []
    close = State.close

    def spy_close(state: State) -> None:
        closed.append(state)
        close(state)

    def fail(manager: ModelManager, background: bool = True) -> None:
        raise RuntimeError("the registry broke")

    monkeypatch.setattr(State, "close", spy_close)
    monkeypatch.setattr(ModelManager, "start", fail)
    with pytest.raises(RuntimeError, match="the registry broke"):
        Agent(offline(tmp_path / "d", registry))
    assert len(closed) == 1
    DataDirLock(tmp_path / "d").release()  # free: no DataDirLocked
