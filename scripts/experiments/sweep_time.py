"""Time BlobStore.sweep (agent/blobs.py) over N one-byte blobs, all kept: the cost it adds to every agent
start (docs/agent.md, after "Resuming a broken Ingest"). From the repository root:

    PYTHONPATH=. .venv/bin/python scripts/experiments/sweep_time.py 100000
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from pathlib import Path

from agent.blobs import BlobStore


def main(n: int) -> None:
    root = Path(tempfile.mkdtemp()) / "b"
    store = BlobStore(root)
    keep: set[str] = set()
    for i in range(n):
        digest = hashlib.sha256(str(i).encode()).hexdigest()
        keep.add(digest)
        (root / digest[:2]).mkdir(exist_ok=True)
        (root / digest[:2] / digest[2:]).write_bytes(b"x")
    t0 = time.perf_counter()
    removed = store.sweep(keep)
    print(f"{n} blobs, {removed} removed, sweep {time.perf_counter() - t0:.2f} s wall")


if __name__ == "__main__":
    main(int(sys.argv[1]))
