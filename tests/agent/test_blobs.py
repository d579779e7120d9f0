"""The content-addressed blob store."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.blobs import BlobStore, sha256_hex


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
