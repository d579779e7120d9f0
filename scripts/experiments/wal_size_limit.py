"""What ``PRAGMA journal_size_limit`` does to the agent's WAL (agent/state.py, JOURNAL_SIZE_LIMIT): its size
after the big transactions of a model swap and of an outside VACUUM, and the time of a one-label commit
(SubmitLabels' transaction, synchronous=FULL), for several limits.

    python scripts/experiments/wal_size_limit.py [SAMPLES] [DIM] [LIMIT_MIB ...]   # defaults: 20000 384 -1 64 16 4

For each limit (-1: none, SQLite's default), in a fresh folder under $TMPDIR: SAMPLES samples with a DIM-d
embedding each under v0001 (~106 MB at 20,000 x 384), 300,000 labels; then
  swap     v0002's embeddings stored in batches of 256 (one transaction each, as a re-embedding does), then
           v0001 dropped in one transaction (``drop_version``), then one label committed
  vacuum   VACUUM by a second connection (an operator's), then one label committed by the agent's
  labels   2,000 one-label commits: median and 99th percentile ms (noisy on a shared disk), how often the WAL
           file was cut (each time it is then grown again, a file size change for every fsync until it is
           back at its steady size), and its size after them
The WAL sizes are those a reader of the folder sees (``ls -l D/state.sqlite-wal``).
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from agent import state as state_module
from agent.state import EmbeddingRows, NewSample, State

MIB = 1 << 20


def wal_mib(path: Path) -> float:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size / MIB if wal.exists() else 0.0


def build(path: Path, n: int, dim: int, rng: np.random.Generator) -> None:
    st = State(path, check="none")
    for c in range(10):
        st.class_index(f"c{c}")
    for start in range(0, n, 2000):
        k = min(2000, n - start)
        samples = [NewSample(f"s{start + i:07d}", f"file:///pool/{start + i}.png", {"site": "a"}, "image",
                             f"{start + i:064x}") for i in range(k)]
        vecs = rng.standard_normal((k, dim)).astype(np.float32)
        st.add_samples(samples, EmbeddingRows("v0001", start, vecs, rng.standard_normal((k, 10)).astype(np.float32)),
                       "v0001")
    seqs = st.all_seqs()
    for _ in range(60):
        st.add_labels([(int(q), int(rng.integers(0, 10))) for q in rng.choice(seqs, 5000)], "alice")
    st.set_serving("v0001", n)
    st.close()


def one_label(st: State, seqs: np.ndarray, rng: np.random.Generator) -> float:
    t = time.perf_counter()
    st.add_labels([(int(rng.choice(seqs)), int(rng.integers(0, 10)))], "bob")
    return (time.perf_counter() - t) * 1000


def run(limit_mib: float, n: int, dim: int) -> str:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.sqlite"
        build(path, n, dim, rng)
        state_module.JOURNAL_SIZE_LIMIT = -1 if limit_mib < 0 else int(limit_mib * MIB)
        st = State(path, check="none")
        seqs = st.all_seqs()
        peak = 0.0
        for start in range(0, n, 256):  # a re-embedding's batches under the new version
            k = min(256, n - start)
            st.add_embeddings(EmbeddingRows("v0002", start, rng.standard_normal((k, dim)).astype(np.float32),
                                            rng.standard_normal((k, 10)).astype(np.float32)),
                              [int(q) for q in seqs[start:start + k]])
            peak = max(peak, wal_mib(path))
        st.set_serving("v0002", n)
        st.drop_version("v0001", "retired")
        after_swap = wal_mib(path)
        one_label(st, seqs, rng)
        swap_then_label = wal_mib(path)
        outside = sqlite3.connect(path)
        outside.execute("VACUUM")
        outside.close()
        after_vacuum = wal_mib(path)
        one_label(st, seqs, rng)
        vacuum_then_label = wal_mib(path)
        ms: list[float] = []
        truncated = 0  # commits after which the WAL file was smaller: it was cut, then grows again
        before = wal_mib(path)
        for _ in range(2000):
            ms.append(one_label(st, seqs, rng))
            now = wal_mib(path)
            truncated += now < before
            before = now
        steady = wal_mib(path)
        st.close()
        size = path.stat().st_size / MIB
    q = statistics.quantiles(ms, n=100)
    name = "none" if limit_mib < 0 else f"{limit_mib:g} MiB"
    return (f"limit {name:>8}: db {size:.0f} MiB | swap: WAL peak {peak:.1f}, after drop {after_swap:.1f}, after the "
            f"next commit {swap_then_label:.1f} | VACUUM: {after_vacuum:.1f}, after the next commit "
            f"{vacuum_then_label:.1f} | 2,000 one-label commits: median {statistics.median(ms):.2f} ms, p99 "
            f"{q[98]:.2f} ms, WAL truncated {truncated} times, {steady:.1f} after (MiB)")


def main() -> None:
    args = sys.argv[1:]
    n = int(args[0]) if args else 20000
    dim = int(args[1]) if len(args) > 1 else 384
    limits = [float(a) for a in args[2:]] or [-1, 64, 16, 4]
    print(f"sqlite {sqlite3.sqlite_version}, {n} samples x {dim}-d, TMPDIR {tempfile.gettempdir()}, "
          f"pid {os.getpid()}", flush=True)
    for limit in limits:
        print(run(limit, n, dim), flush=True)


if __name__ == "__main__":
    main()
