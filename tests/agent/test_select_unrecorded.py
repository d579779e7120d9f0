"""A Select whose record the disk refuses (full or read-only) is answered without a selection_id: a client must
not keep an id that names no stored selection (docs/agent.md, Faults)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from agent import client
from agent.core import SELECTION_NOT_RECORDED
from shortlist.v1 import agent_pb2
from tests.agent.conftest import make_samples, start


def test_a_select_the_full_disk_kept_from_being_recorded_has_no_selection_id(
        tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = start(tmp_path / "d", registry)
    try:
        client.ingest(r.stub, make_samples(20))
        state = r.agent.state
        original = state.record_selection

        def full(*args: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(state, "record_selection", full)
        request = agent_pb2.SelectRequest(budget=3, strategy="random", seed=1)
        sel = r.stub.Select(request)
        assert len(sel.selected) == 3 and sel.selection_id == ""
        why = sel.details[SELECTION_NOT_RECORDED]
        assert why.startswith("this selection is complete but was not recorded, so it has no selection_id (empty)")
        assert "data folder is full" in why and "nothing of this request" not in why, why
        assert state.selections() == []
        # Space is back: the same request is recorded (the unrecorded answer was not cached with an id).
        monkeypatch.setattr(state, "record_selection", original)
        again = r.stub.Select(request)
        assert [s.id for s in again.selected] == [s.id for s in sel.selected]
        assert again.selection_id and SELECTION_NOT_RECORDED not in again.details
        assert [sid for sid, *_ in state.selections()] == [again.selection_id]
    finally:
        r.stop()
