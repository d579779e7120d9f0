"""Agent (agent/core.py): opening and closing a data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.core import Agent
from agent.models import ModelManager
from agent.security import DataDirLock
from agent.state import State


def offline(data: Path, registry: Path) -> AgentConfig:
    """An Agent's config without the background threads or CUDA."""
    return AgentConfig(data, registry, use_cuda=False, background=False)


def test_a_failed_start_frees_the_folder_for_the_next_agent(tmp_path: Path, registry: Path) -> None:
    """A start that fails after the lock (here the blob store: ``blobs`` is a file) releases it: once the
    cause is removed, an agent of the same process opens the folder (it was refused as 'in use by another
    agent' with this process's own pid)."""
    data = tmp_path / "d"
    Agent(offline(data, registry)).close()
    (data / "blobs").rmdir()  # empty: nothing was ingested
    (data / "blobs").write_text("not a folder")
    with pytest.raises(OSError):
        Agent(offline(data, registry))
    (data / "blobs").unlink()
    Agent(offline(data, registry)).close()


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
