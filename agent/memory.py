"""glibc malloc settings for the long-running agent process (``shortlist serve``).

With glibc's defaults the agent's resident memory kept growing under load (docs/reliability.md, Load:
+16% over 40 s of `bench load` at 54,000 samples, 820 -> 954 MB, peak 1,048 MB) without a leak: each of
its dozens of threads (gRPC workers, admission lanes, ingest stages) gets a malloc arena of its own (up
to 8 per core), and the mmap threshold rises to 32 MB after large blocks are freed, so numpy's large
temporaries (k-means distances, similarity blocks) come from those arenas and their pages stay with the
process, fragmented, after they are freed. Two settings (mallopt(3)) fix it:

- ``M_ARENA_MAX`` = 2: threads share two arenas (the agent's threads mostly wait on I/O or run numpy
  with the GIL released in BLAS, so arena contention costs nothing measurable);
- ``M_MMAP_THRESHOLD`` = 1 MiB (setting it also turns the dynamic threshold off): every block of 1 MiB
  or more is its own mapping, returned to the system when freed.

The same 40 s load with them: 367 -> 356 MB (-3%), peak 629 MB. They are set by ``tune_malloc`` at the
start of ``shortlist serve`` (not on import: the library and tests keep the process's own settings);
the environment variables ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` override them. Elsewhere
than glibc (macOS, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc malloc.h
M_ARENA_MAX = -8
ARENA_MAX = 2
MMAP_THRESHOLD = 1 << 20


def tune_malloc(arena_max: int = ARENA_MAX, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Apply the settings above to this process (glibc only; an environment variable wins). True when
    glibc accepted every setting made."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = True
    if "MALLOC_ARENA_MAX" not in os.environ:
        ok = mallopt(M_ARENA_MAX, arena_max) == 1 and ok
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 and ok
    if not ok:
        log.warning("mallopt refused the agent's malloc settings; memory may grow under load")
    return ok
