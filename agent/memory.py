"""glibc malloc settings for the long-running agent process (``shortlist serve``).

With glibc's defaults the agent's resident memory kept growing under load without a leak
(docs/reliability.md, Load, has the measurements behind this module): each of
its dozens of threads (gRPC workers, admission lanes, ingest stages) gets a malloc arena of its own (up
to 8 per core), and the mmap threshold rises to 32 MB after large blocks are freed, so numpy's large
temporaries (k-means distances, similarity blocks) come from those arenas and their pages stay with the
process, fragmented, after they are freed. Two settings (mallopt(3)) fix it:

- ``M_ARENA_MAX`` = 2: threads share two arenas (the agent's threads mostly wait on I/O or run numpy
  with the GIL released in BLAS, so arena contention costs nothing measurable);
- ``M_MMAP_THRESHOLD`` = 1 MiB (setting it also turns the dynamic threshold off): every block of 1 MiB
  or more is its own mapping, returned to the system when freed.

They are set by ``tune_malloc`` at the
start of ``shortlist serve`` (not on import: the library and tests keep the process's own settings);
the environment variables ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` override them. Elsewhere
than glibc (macOS, musl) nothing is changed.

What the two settings leave: blocks under 1 MiB (Python objects over 512 bytes, gRPC's and SQLite's
buffers, ...) still come from the two arenas, and when a burst of calls frees them, the free space stays
with the process wherever a live block sits above it in its arena (glibc's own trimming only gives back
free space at an arena's top). ``IdleTrim`` hands those free pages back (``malloc_trim(3)``: it
``madvise``s away every whole free page of every arena) once no call of the agent has started or ended for
``IDLE_S`` (how much that gives back, and what else stays live after a load: docs/reliability.md,
Load). Trimming while calls run would stall their allocations behind the arena locks it holds while it
walks each arena, for pages the next call takes again, so it waits for a pause.

What neither gives back, by design, is the working set a served agent reaches in its first minute of load
and then keeps (docs/reliability.md, "What a fresh agent's first load fills", has its parts measured):
OpenBLAS's buffers (outside malloc: numpy's and scipy's copies of OpenBLAS each keep one buffer per thread
that called BLAS at the same time as another, for the life of the process, bounded by the agent's threads),
the thread pools grown to their peak size (they never shrink), the live blocks of the second arena, and
the pages of shared libraries first touched by the heavy calls. None of it grows with further load; the
pool's own rows (the index and its graph, which grow with every sample ingested) are data, not this.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc malloc.h
M_ARENA_MAX = -8
ARENA_MAX = 2
MMAP_THRESHOLD = 1 << 20
IDLE_S = 2.0  # seconds without a call starting or ending before the free pages are handed back (IdleTrim)


@functools.cache  # find_library runs `ldconfig -p` in a child process: once, not at every trim
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def tune_malloc(arena_max: int = ARENA_MAX, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Apply the settings above to this process (glibc only; an environment variable wins). True when
    glibc accepted every setting made."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:  # not Linux, or not glibc
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


def malloc_trim() -> bool:
    """Hand the free pages of every malloc arena back to the system (glibc ``malloc_trim(0)``; each arena's
    lock is held while it is walked, milliseconds to a tenth of a second: docs/reliability.md). True when
    memory was released; False when none was, or off glibc."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))


class IdleTrim:
    """Calls ``malloc_trim`` once after each burst of calls: when ``IDLE_S`` seconds have passed without
    a call starting or ending (``touch``) and at least one did since the last trim. A daemon thread checks every
    ``idle_s / 4`` seconds; ``close`` stops it. ``trims`` counts the trims done (for tests and logs)."""

    def __init__(self, idle_s: float = IDLE_S, trim: Callable[[], bool] = malloc_trim) -> None:
        self.idle_s = idle_s
        self.trims = 0
        self._trim = trim
        self._last = time.monotonic()  # when a call last started or ended
        self._pending = False  # a call started or ended since the last trim
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="malloc-trim", daemon=True)
        self._thread.start()

    def touch(self) -> None:
        """A call started or ended (cheap: two stores, no lock; called twice per RPC)."""
        self._last = time.monotonic()
        self._pending = True

    def _loop(self) -> None:
        while not self._stop.wait(self.idle_s / 4):
            if self._pending and time.monotonic() - self._last >= self.idle_s:
                self._pending = False
                t0 = time.perf_counter()
                released = self._trim()
                self.trims += 1
                log.debug("malloc_trim after %.1f s idle: %s in %.1f ms", self.idle_s,
                          "released memory" if released else "nothing to release", 1e3 * (time.perf_counter() - t0))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
