"""RSS attribution sampler for ``shortlist serve`` (docs/reliability.md, "What a fresh agent's first load fills").

Python imports ``sitecustomize`` at start from the first folder on ``PYTHONPATH`` that has one, so with this
folder there and ``RSS_TRACE=FILE`` set, a ``shortlist serve`` process (``serve`` in its first two arguments;
any other process is left alone) starts a daemon thread that appends one JSON line a second to FILE:

- ``VmRSS``, ``VmHWM``, ``RssAnon``, ``RssFile`` (bytes) and ``Threads`` from /proc/self/status;
- ``cat``: the Rss of /proc/self/smaps split by kind, MiB: ``heap`` (the main malloc heap), ``arenas`` (the
  other malloc arenas: anonymous, 64 MiB-aligned), ``stacks`` (anonymous mappings right above a guard page),
  ``anon_big`` (other anonymous mappings of 1 MiB or more: malloc's blocks of 1 MiB+, numpy arrays, the
  index, Python's 1 MiB object arenas, OpenBLAS buffers), ``anon_small``, ``files`` (file-backed);
- ``mi``: glibc ``mallinfo2`` in MiB (``arena`` bytes from the system outside mmap, ``inuse`` / ``free`` in
  them, ``mmap``: malloc's own mmapped blocks, virtual size);
- ``sqlite_mb``: ``sqlite3_memory_used`` of the system libsqlite3 (the one Python's sqlite3 links to);
- ``cpu``: the process's user + system CPU seconds;
- every ``RSS_TRACE_DEEP_S`` seconds (10) also ``deep``: the number of modules and those new since the last,
  threads by name, numpy arrays over 256 KB reachable from Python (a pass over ``gc``: holds the GIL for
  0.2-0.7 s at 50,000 samples), each ``VersionIndex``'s rows and capacity, each ``LruCache``'s entries, each
  ``PoolMemo``'s names, every anonymous mapping of 1 MiB+ (size, Rss, address) and the largest files' Rss.

For diagnosis only: it reads /proc and walks objects while the agent serves.

    RSS_TRACE=/tmp/run/trace.jsonl PYTHONPATH=.:scripts/load/rss_trace shortlist serve --data-dir ... --cpu
"""

from __future__ import annotations

import os
import sys

DEEP_S = float(os.environ.get("RSS_TRACE_DEEP_S", "10"))
MIB = 1 << 20
ARENA = 64 * MIB  # glibc's HEAP_MAX_SIZE on 64-bit: every non-main arena heap is aligned to it


Mapping = tuple[int, int, str, str, int]  # (start address, end address, permissions, path, Rss bytes)


def _smaps() -> list[Mapping]:
    maps: list[Mapping] = []
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):
                parts = line.split()
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                maps.append((lo, hi, parts[1], parts[5] if len(parts) > 5 else "", 0))
            elif first == "Rss:" and maps:
                maps[-1] = (*maps[-1][:4], int(line.split()[1]) * 1024)
    return maps


def classify(maps: list[Mapping]) -> tuple[dict[str, int], list[tuple[int, int, int]], dict[str, int]]:
    """(Rss bytes by kind, [(size, Rss, address)] of the anonymous mappings of 1 MiB+, Rss bytes by file)."""
    cat: dict[str, int] = {}
    big: list[tuple[int, int, int]] = []
    files: dict[str, int] = {}

    def add(kind: str, n: int) -> None:
        cat[kind] = cat.get(kind, 0) + n

    for i, (lo, hi, perm, path, rss) in enumerate(maps):
        size = hi - lo
        prv = maps[i - 1] if i else None
        if path == "[heap]":
            add("heap", rss)
        elif path == "[stack]":
            add("stacks", rss)
        elif path.startswith("/"):
            add("files", rss)
            name = os.path.basename(path)
            files[name] = files.get(name, 0) + rss
        elif path:
            add("other", rss)
        elif lo % ARENA == 0 and size <= ARENA and "rw" in perm:
            add("arenas", rss)
        elif (prv is not None and prv[1] == lo and prv[2].startswith("---") and prv[1] - prv[0] <= 64 * 1024
              and size <= 16 * MIB):
            add("stacks", rss)
        elif size >= MIB:
            add("anon_big", rss)
            big.append((size, rss, lo))
        else:
            add("anon_small", rss)
    return cat, big, files


def _status() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * (1 if key == "Threads" else 1024)
    return out


def _deep(seen_modules: set[str]) -> dict[str, object]:
    import collections
    import gc
    import threading

    import numpy as np

    arrays: dict[int, tuple[tuple[int, ...], str, int]] = {}
    indexes: list[dict[str, int]] = []
    caches: list[dict[str, int]] = []
    memos: list[list[str]] = []
    for o in gc.get_objects():
        kind = type(o).__name__
        if kind == "LruCache":
            caches.append({"entries": len(o._items), "weight": o._weight})
        elif kind == "PoolMemo":
            memos.append(sorted(o._items))
        elif kind == "VersionIndex":
            indexes.append({"n": o.n, "capacity": len(o._seqs), "graph_max": o._graph.get_max_elements()})
        for r in gc.get_referents(o):
            if isinstance(r, np.ndarray):
                base = r
                while isinstance(base.base, np.ndarray):
                    base = base.base
                if base.base is None and base.nbytes > 256 * 1024:
                    arrays[id(base)] = (base.shape, str(base.dtype), base.nbytes)
    modules = set(sys.modules)
    new = sorted(modules - seen_modules)
    seen_modules |= modules
    threads = collections.Counter(t.name.rstrip("0123456789_").rstrip("-_") for t in threading.enumerate())
    top = sorted(arrays.values(), key=lambda a: -a[2])
    return {"modules": len(modules), "new_modules": new[:80], "new_modules_n": len(new), "threads_py": dict(threads),
            "arrays_mb": round(sum(a[2] for a in top) / MIB, 2), "arrays_n": len(top),
            "arrays_top": [[list(shape), dtype, round(n / MIB, 2)] for shape, dtype, n in top[:12]],
            "hnsw": indexes, "caches": caches, "memos": memos}


def _loop(path: str) -> None:
    import ctypes
    import json
    import time

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    sqlite: ctypes.CDLL | None = None
    try:
        sqlite = ctypes.CDLL("libsqlite3.so.0")
        sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    except OSError:
        pass
    seen_modules = set(sys.modules)
    last_deep = 0.0
    t0 = time.time()
    with open(path, "a", buffering=1) as out:
        while True:
            try:
                now = time.time()
                rec: dict[str, object] = {"t": round(now, 2), "el": round(now - t0, 1), **_status()}
                cat, big, files = classify(_smaps())
                rec["cat"] = {k: round(v / MIB, 2) for k, v in cat.items()}
                mi = libc.mallinfo2()
                rec["mi"] = {"arena": round(mi.arena / MIB, 2), "inuse": round(mi.uordblks / MIB, 2),
                             "free": round(mi.fordblks / MIB, 2), "mmap_n": mi.hblks, "mmap": round(mi.hblkhd / MIB, 2)}
                if sqlite is not None:
                    rec["sqlite_mb"] = round(sqlite.sqlite3_memory_used() / MIB, 2)
                rec["cpu"] = round(sum(os.times()[:2]), 2)
                if now - last_deep >= DEEP_S:
                    last_deep = now
                    deep = _deep(seen_modules)
                    deep["big_anon"] = sorted(([round(s / MIB, 1), round(r / MIB, 1), hex(a)] for s, r, a in big),
                                              reverse=True)[:60]
                    deep["files_top"] = {k: round(v / MIB, 2)
                                         for k, v in sorted(files.items(), key=lambda kv: -kv[1])[:25]}
                    rec["deep"] = deep
                    rec["deep_s"] = round(time.time() - now, 3)
                out.write(json.dumps(rec) + "\n")
            except Exception as e:  # a diagnosis thread must never take the agent down
                out.write(json.dumps({"err": repr(e)}) + "\n")
            time.sleep(1.0)


_PATH = os.environ.get("RSS_TRACE")
if _PATH and "serve" in sys.argv[1:3]:
    import threading as _threading

    _threading.Thread(target=_loop, args=(_PATH,), name="rss-trace", daemon=True).start()
