"""Training's run-folder writes are crash-safe (temp file fsynced, renamed, folder fsynced), and a torn
summary.json (the "run finished" marker) reads as an unfinished run, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from shortlist import atomic
from training import cycle, loop


@pytest.fixture
def synced(fsync_events: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every fsync and os.replace, in order (tests/conftest.py ``fsync_events``)."""
    return fsync_events


def _durable(events: list[tuple[str, str]], path: Path) -> bool:
    """The file was fsynced before its rename onto ``path``, and its folder fsynced after it."""
    try:
        i = events.index(("replace", str(path)))
    except ValueError:
        return False
    before = [p for kind, p in events[:i] if kind == "fsync"]
    after = [p for kind, p in events[i + 1:] if kind == "fsync"]
    return any(Path(p).parent == path.parent and path.name in Path(p).name for p in before) and \
        str(path.parent) in after


def test_write_json_and_checkpoint_are_durable(tmp_path: Path, synced: list[tuple[str, str]]) -> None:
    loop.write_json(tmp_path / loop.SUMMARY, {"steps": 3})
    loop.save_atomic({"w": torch.zeros(2)}, tmp_path / loop.CHECKPOINT)
    assert _durable(synced, tmp_path / loop.SUMMARY)
    assert _durable(synced, tmp_path / loop.CHECKPOINT)


def test_record_pull_is_durable(tmp_path: Path, synced: list[tuple[str, str]]) -> None:
    class Data(SimpleNamespace):  # the TensorData fields _record_pull reads
        def __len__(self) -> int:
            return 3

    data: Any = Data(ids=["a", "b", "c"], classes=["cat", "dog"], labels=torch.tensor([0, -1, 1]))
    cycle._record_pull(tmp_path, data, "localhost:1", SimpleNamespace(model_version="v0001"), 7)  # type: ignore[arg-type]
    assert (tmp_path / cycle.LABELS_FILE).read_bytes() == b"id,label\r\na,cat\r\nc,dog\r\n"
    assert json.loads((tmp_path / cycle.PULL_FILE).read_text())["label_events"] == 7
    assert _durable(synced, tmp_path / cycle.LABELS_FILE)
    assert _durable(synced, tmp_path / cycle.PULL_FILE)
    assert [p.name for p in tmp_path.iterdir() if atomic.TMP_INFIX in p.name] == []


@pytest.mark.parametrize("torn", ["", '{"steps": 12, "knn_a', "\xff\xfe", "[1, 2]"])
def test_torn_summary_is_an_unfinished_run(tmp_path: Path, torn: str) -> None:
    """A crash while an older version wrote summary.json without fsync can leave it empty or cut: the run is
    unfinished (export refuses it and says how to finish it), never a JSONDecodeError traceback."""
    (tmp_path / loop.CHECKPOINT).write_bytes(b"ckpt")
    (tmp_path / loop.CONFIG).write_text(json.dumps({"method": "simclr"}))
    (tmp_path / loop.SUMMARY).write_bytes(torn.encode("latin-1"))
    why = loop.unfinished_run(tmp_path)
    assert why is not None and "unfinished" in why and "--resume" in why
    assert loop.read_summary(tmp_path) is None
    (tmp_path / loop.SUMMARY).write_text('{"steps": 12}')
    assert loop.unfinished_run(tmp_path) is None
