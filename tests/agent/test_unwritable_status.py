"""GetStatus warns when the data folder is not writable by permissions (not only on a read-only mount), as the
Faults table of docs/agent.md says, without writing anything to find out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.core import Agent, storage_warnings


def test_status_warns_when_permissions_forbid_writing_the_data_folder(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    a = Agent(AgentConfig(tmp_path / "data", tmp_path / "models", background=False, use_cuda=False))
    try:
        assert not [w for w in a.status().warnings if "read-only" in w]
        real = os.access
        denied = tmp_path / "data" / "state.sqlite"  # e.g. after `chmod -R a-w` of the folder (tests may run as root)
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != denied and real(p, mode, **kw))
        before = sorted(p.name for p in (tmp_path / "data").iterdir())
        said = [w for w in a.status().warnings if "read-only" in w]
        assert len(said) == 1 and said[0].startswith(f"the data folder {tmp_path / 'data'} is read-only: its "
                                                     f"permissions do not let the agent's user write {denied}")
        # What is true (docs/agent.md, Faults): SQLite keeps writing labels through its open files.
        assert "Ingest of new samples and model swaps fail with FAILED_PRECONDITION (reads and Select keep working)" \
            in said[0]
        assert "SubmitLabels is still stored while the database files the agent holds open stay writable" in said[0]
        assert "Ingest, SubmitLabels and model swaps fail" not in said[0]
        assert sorted(p.name for p in (tmp_path / "data").iterdir()) == before  # asked, nothing written
    finally:
        a.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes whatever the permissions")
def test_a_folder_made_read_only_by_chmod_is_said(tmp_path: Path) -> None:
    (tmp_path / "blobs").mkdir()
    assert storage_warnings(tmp_path, 0) == []
    tmp_path.chmod(0o500)
    try:
        assert [w for w in storage_warnings(tmp_path, 0) if f"do not let the agent's user write {tmp_path}" in w]
    finally:
        tmp_path.chmod(0o700)
