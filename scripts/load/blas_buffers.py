"""OpenBLAS's buffers (docs/reliability.md, "What a fresh agent's first load fills"): how many anonymous
mappings of 32 and 64 MiB this process has after importing numpy, one matrix product, THREADS threads
multiplying at once, importing scipy's BLAS and one product through it. Run with one BLAS thread per call,
as the agent does:

    OPENBLAS_NUM_THREADS=1 python scripts/load/blas_buffers.py 16
"""

from __future__ import annotations

import argparse
import threading

import numpy as np


def mappings() -> dict[int, int]:
    """{size MiB: count} of this process's anonymous mappings of exactly 32 or 64 MiB."""
    out: dict[int, int] = {}
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 6:  # no path: anonymous
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                mib = (hi - lo) >> 20
                if hi - lo in (32 << 20, 64 << 20):
                    out[mib] = out.get(mib, 0) + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("threads", type=int, nargs="?", default=16)
    args = ap.parse_args()
    x = np.random.default_rng(0).random((2000, 128), dtype=np.float32)
    print("numpy imported", mappings())
    x @ x.T
    print("one product", mappings())
    start = threading.Barrier(args.threads)

    def work() -> None:
        start.wait()
        for _ in range(20):
            x @ x.T

    threads = [threading.Thread(target=work) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{args.threads} threads at once", mappings())
    import scipy.linalg.blas as scipy_blas

    print("scipy's BLAS imported", mappings())
    scipy_blas.sgemm(1.0, x, x, trans_b=True)
    print("one product through it", mappings())


if __name__ == "__main__":
    main()
