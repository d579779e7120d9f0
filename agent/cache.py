"""A small bounded LRU cache for the answers of heavy work (Select, PriorLabels).

Keys say everything the answer depends on (model version, pool rows, labelled set, strategy or method,
params, seed, budget, where / ids), so an entry is never stale: a new label, sample or model version
makes a new key and the old entry ages out. Bounded by entry count and by total weight (rows held), so
it never holds more than a few MB.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

import numpy as np

V = TypeVar("V")


class LruCache(Generic[V]):
    """At most ``max_entries`` values of at most ``max_weight`` total weight (a put's ``weight``: rows, bytes or
    1 an entry); the least recently put or got goes first. Thread-safe. ``peek`` and ``in`` read without making an
    entry recent (for a memory whose order is that of the writes, as the Label Studio backend's)."""

    def __init__(self, max_entries: int, max_weight: int | None = None) -> None:
        """``max_weight`` None: ``max_entries`` (every put weighing 1, the default, is then bounded by count)."""
        self.max_entries = max_entries
        self.max_weight = max_entries if max_weight is None else max_weight
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def peek(self, key: Hashable) -> V | None:
        """``key``'s value or None, leaving the order and the hit counts as they are."""
        with self._lock:
            item = self._items.get(key)
            return None if item is None else item[0]

    def __contains__(self, key: Hashable) -> bool:
        """Whether ``key`` is held (as ``peek``: the order is left as it is)."""
        with self._lock:
            return key in self._items

    def put(self, key: Hashable, value: V, weight: int = 1) -> list[tuple[Hashable, V]]:
        """Keep ``value`` (``weight`` = rows it holds) as the most recent entry; a value heavier than the whole
        cache is not kept. Returns the entries pushed out to make room, oldest first (key, value)."""
        if self.max_entries <= 0 or weight > self.max_weight:
            return []
        evicted: list[tuple[Hashable, V]] = []
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._weight -= old[1]
            self._items[key] = (value, weight)
            self._weight += weight
            while len(self._items) > self.max_entries or self._weight > self.max_weight:
                k, (v, w) = self._items.popitem(last=False)
                self._weight -= w
                evicted.append((k, v))
        return evicted

    def pop(self, key: Hashable) -> V | None:
        """Forget ``key``; its value, or None when it was not held."""
        with self._lock:
            item = self._items.pop(key, None)
            if item is None:
                return None
            self._weight -= item[1]
            return item[0]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._weight = 0


def fingerprint(*arrays: np.ndarray) -> str:
    """A digest of arrays' contents (e.g. the label of every row: the labelled set and its labels)."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def frozen(mapping: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """A mapping as a hashable, order-free key part."""
    return tuple(sorted(mapping.items()))
