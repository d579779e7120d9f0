"""The content-addressed blob store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent import client
from agent.blobs import BlobStore, sha256_hex
from shortlist.v1 import agent_pb2
from tests.agent.conftest import start


def test_put_get_dedupe_and_corruption(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "b")
    items = [(sha256_hex(bytes([i % 7]) * 50), bytes([i % 7]) * 50) for i in range(300)]  # repeats
    store.put_many(items)
    store.put_many(items[:10])  # again: a no-op
    assert all(store.get(d) == data for d, data in items)
    files = [p for p in (tmp_path / "b").rglob("*") if p.is_file()]
    assert len(files) == 7 and not any(p.name.startswith(".tmp-") for p in files)
    digest = items[0][0]
    store.path(digest).write_bytes(b"torn")
    with pytest.raises(OSError, match="corrupt"):
        store.get(digest)
    with pytest.raises(FileNotFoundError):
        store.get("ab" * 32)


def test_leftover_temporary_files_are_removed_on_open(tmp_path: Path) -> None:
    (tmp_path / "b" / "ab").mkdir(parents=True)
    (tmp_path / "b" / "ab" / ".tmp-cdef-1-2").write_bytes(b"half")
    BlobStore(tmp_path / "b")
    assert not (tmp_path / "b" / "ab" / ".tmp-cdef-1-2").exists()


def test_blobs_no_sample_names_are_removed_when_the_agent_opens(tmp_path: Path, registry: Path) -> None:
    """(an agent killed during an Ingest left the blobs its uncommitted batch had written, for good: 20 of them
    after a kill -9 in the soak test)"""
    r = start(tmp_path / "data", registry)
    rng = np.random.default_rng(0)
    ingested = [client.tensor_sample(f"t{i}", rng.integers(0, 255, (8, 8, 3), np.uint8)) for i in range(3)]
    assert client.ingest(r.stub, ingested).accepted == 3
    r.stop()
    store = BlobStore(tmp_path / "data" / "blobs")
    orphans = [(sha256_hex(b"never committed %d" % i), b"never committed %d" % i) for i in range(4)]
    store.put_many(orphans)
    kept = [p for p in (tmp_path / "data" / "blobs").rglob("*") if p.is_file()]
    assert len(kept) == 3 + 4
    r = start(tmp_path / "data", registry)
    try:
        assert all(not store.has(d) for d, _ in orphans)
        assert len([p for p in (tmp_path / "data" / "blobs").rglob("*") if p.is_file()]) == 3
        listed = list(r.stub.ListSamples(agent_pb2.ListSamplesRequest(include_payload=True), timeout=10))
        assert sorted(s.id for s in listed) == ["t0", "t1", "t2"] and all(s.tensor.data for s in listed)
    finally:
        r.stop()
