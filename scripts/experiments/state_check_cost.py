"""What `shortlist serve`'s start check of state.sqlite costs (``--state-check``: agent/state.py, STATE_CHECKS):
SQLite's ``PRAGMA integrity_check`` and ``quick_check``, with the file in the page cache (warm) and out of it
(cold: ``posix_fadvise(DONTNEED)`` first, so it is read from the disk), and opening ``State`` without a check.

    python scripts/experiments/state_check_cost.py build [SAMPLES] [DIM] [LABELS]  # a folder under $TMPDIR
    python scripts/experiments/state_check_cost.py PATH/state.sqlite ...            # an existing database

``build`` makes a state database of SAMPLES samples with a DIM-d embedding and 10 logits each, 10% of them
labelled at ingest, and LABELS more labels (defaults 20000, 384, 300000: 106 MiB), then measures it.
Each figure is the best of 2 runs.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from agent.state import EmbeddingRows, NewSample, State


def build(path: Path, n: int, dim: int, labels: int) -> None:
    rng = np.random.default_rng(0)
    st = State(path, check="none")
    for c in range(10):
        st.class_index(f"c{c}")
    for start in range(0, n, 2000):
        k = min(2000, n - start)
        samples = [NewSample(f"s{start + i:07d}", f"file:///pool/{start + i}.png", {"site": "a"}, "image",
                             f"{start + i:064x}", label=int(rng.integers(0, 10)) if rng.random() < 0.1 else -1)
                   for i in range(k)]
        vecs = rng.standard_normal((k, dim)).astype(np.float32)
        st.add_samples(samples, EmbeddingRows("v0001", start, vecs, rng.standard_normal((k, 10)).astype(np.float32)),
                       "v0001")
    seqs = st.all_seqs()
    for _ in range(0, labels, 5000):
        st.add_labels([(int(q), int(rng.integers(0, 10))) for q in rng.choice(seqs, 5000)], "alice")
    st.close()


def uncache(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-wal")):
        if p.exists():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(path: Path, what: str, cold: bool) -> float:
    best = float("inf")
    for _ in range(2):
        if cold:
            uncache(path)
        t = time.perf_counter()
        if what == "open":
            State(path, check="none").close()
        else:
            db = sqlite3.connect(path)
            rows = db.execute(f"PRAGMA {what}").fetchall()
            db.close()
            assert rows == [("ok",)], rows[:3]
        best = min(best, time.perf_counter() - t)
    return best


def measure(path: Path) -> None:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    labels = db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
    samples = db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    db.close()
    print(f"{path}: {path.stat().st_size / 2**20:.0f} MiB, {samples} samples, {labels} label rows "
          f"(sqlite {sqlite3.sqlite_version})")
    for what in ("integrity_check", "quick_check", "open"):
        warm, cold = timed(path, what, False), timed(path, what, True)
        name = "State() without a check" if what == "open" else what
        print(f"  {name:24s} warm {warm:6.2f} s   cold {cold:6.2f} s", flush=True)


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "build":
        n, dim, labels = (int(a) for a in (args[1:] + ["20000", "384", "300000"][len(args) - 1:])[:3])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "state.sqlite"
            build(path, n, dim, labels)
            measure(path)
        return
    for a in args:
        measure(Path(a))


if __name__ == "__main__":
    main()
