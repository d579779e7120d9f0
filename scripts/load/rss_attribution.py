"""The agent's RSS split by what holds it, at chosen moments of a trace written by scripts/load/rss_trace
(docs/reliability.md, "What a fresh agent's first load fills"). Each moment is the sample of the trace's
``deep`` readings nearest to it (seconds since the agent started, the trace's ``el``):

    python scripts/load/rss_attribution.py /tmp/run/trace.jsonl 31 135 348

Rows, MiB of resident memory: BLAS buffers (anonymous mappings of exactly 32 or 64 MiB: OpenBLAS's buffers, one
per thread that called BLAS at the same time as others, in numpy's and scipy's copies of OpenBLAS, kept for the
process's life; two adjacent ones merge into one 64 MiB mapping), index rows (the index's vectors and hnswlib's
level-0 graph, sized by its capacity), the other malloc arena, the main heap, other anonymous mappings of 1 MiB+
(malloc's large blocks, Python's 1 MiB object arenas), smaller anonymous mappings, thread stacks, files; then
threads, modules, numpy arrays reachable from Python, malloc's bytes in use (mallinfo2), samples, cache entries.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agent.index import M

MIB = 1 << 20
BLAS_SIZES = (32.0, 64.0)


def index_sizes(deep: dict[str, Any]) -> tuple[float, ...]:
    """MiB sizes of the index's two big blocks: vectors (capacity x dim float32) and hnswlib's level-0 data
    (capacity x (2M links + count + dim floats + label): hnswalg.h)."""
    out: list[float] = []
    for idx in deep.get("hnsw", []):
        cap = idx.get("capacity", idx.get("cap", 0))  # "cap" in the traces of the first runs
        dims = [a[0][1] for a in deep.get("arrays_top", []) if len(a[0]) == 2 and a[0][0] == cap and a[1] == "float32"]
        for dim in dims[:1]:
            out += [round(cap * dim * 4 / MIB, 1), round(cap * (2 * M * 4 + 4 + dim * 4 + 8) / MIB, 1)]
    return tuple(out)


def split(rec: dict[str, Any]) -> dict[str, Any]:
    cat, deep = rec["cat"], rec["deep"]
    big = deep["big_anon"]
    sizes = index_sizes(deep)
    blas = sum(b[1] for b in big if b[0] in BLAS_SIZES)  # [size, rss, address] ([size, rss] in the first runs)
    index = sum(b[1] for b in big if b[0] in sizes)
    return {
        "VmRSS": rec["VmRSS"] / MIB,
        "BLAS buffers": blas,
        "index rows": index,
        "other malloc arena": cat.get("arenas", 0.0),
        "main heap": cat.get("heap", 0.0),
        "other anon 1 MiB+": cat.get("anon_big", 0.0) - blas - index,
        "anon < 1 MiB": cat.get("anon_small", 0.0),
        "thread stacks": cat.get("stacks", 0.0),
        "files": cat.get("files", 0.0),
        "threads": rec["Threads"],
        "modules": deep["modules"],
        "numpy arrays reachable": deep["arrays_mb"],
        "malloc in use": rec["mi"]["inuse"],
        "samples": deep["hnsw"][0]["n"] if deep["hnsw"] else 0,
        "cache entries": "/".join(str(c["entries"]) for c in deep["caches"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", type=Path)
    ap.add_argument("moments", type=float, nargs="+", help="seconds since the agent started (the trace's el)")
    args = ap.parse_args()
    recs = [json.loads(line) for line in args.trace.read_text().splitlines() if '"deep"' in line]
    picked = [min(recs, key=lambda r: abs(r["el"] - t)) for t in args.moments]
    rows = [split(r) for r in picked]
    print(f"{'el (s)':26}" + "".join(f"{r['el']:>12}" for r in picked))
    for key in rows[0]:
        cells = (f"{r[key]:12.1f}" if isinstance(r[key], float) else f"{r[key]!s:>12}" for r in rows)
        print(f"{key:26}" + "".join(cells))


if __name__ == "__main__":
    main()
