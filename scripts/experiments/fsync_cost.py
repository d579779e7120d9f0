"""Cost of shortlist.atomic.fsync_tree (what `shortlist export-labels` adds before its rename) on N small files
spread over 10 class folders, written fresh before each try. Usage: python scripts/experiments/fsync_cost.py
N BYTES [FOLDER]; prints one line per try (threads=1, 16, and no fsync at all)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from shortlist.atomic import fsync_tree


def main() -> None:
    n, size = int(sys.argv[1]), int(sys.argv[2])
    root = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(tempfile.gettempdir())
    for threads in (1, 16, 0):
        for _ in range(2):
            d = Path(tempfile.mkdtemp(dir=root))
            for c in range(10):
                (d / f"c{c}").mkdir()
            for i in range(n):
                (d / f"c{i % 10}" / f"{i}.png").write_bytes(os.urandom(size))
            t = time.perf_counter()
            if threads:
                fsync_tree(d, threads)
            took = time.perf_counter() - t
            print(f"threads={threads or 'none (no fsync)'} files={n} bytes={size}: {took:.3f} s", flush=True)
            shutil.rmtree(d)


if __name__ == "__main__":
    main()
