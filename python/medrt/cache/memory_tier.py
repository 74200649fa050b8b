"""The memory tier: the most recently used entries, bounded by count and bytes, with a TTL.

Entries of every scope share one LRU order (a busy tenant cannot grow without bound), and each
scope has its own vector index, so a lookup searches only its own scope's entries.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

from medrt.cache.entry import Entry
from medrt.cache.vector_index import VectorIndex


class MemoryTier:
    def __init__(self, dim: int, max_entries: int, max_bytes: int,
                 ttl_seconds: float | None) -> None:
        self.dim = dim
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl_seconds
        self._lru: OrderedDict[int, Entry] = OrderedDict()
        self._by_hash: dict[tuple[str, str], int] = {}
        self._hash_of: dict[int, str] = {}
        self._indexes: dict[str, VectorIndex] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._lru

    def expired(self, entry: Entry, now: float | None = None) -> bool:
        return self.ttl is not None and (now or time.time()) - entry.created > self.ttl

    def put(self, entry: Entry, qhash: str) -> None:
        if entry.id in self._lru:
            self._lru.move_to_end(entry.id)
            return
        replaced = self._by_hash.get((entry.scope, qhash))
        if replaced is not None:  # a refreshed answer: the old entry must not be served again
            self.remove(replaced)
        self._lru[entry.id] = entry
        self._by_hash[(entry.scope, qhash)] = entry.id
        self._hash_of[entry.id] = qhash
        self.bytes += entry.nbytes()
        idx = self._indexes.get(entry.scope)
        if idx is None:
            idx = self._indexes[entry.scope] = VectorIndex(self.dim)
        idx.add(np.array([entry.id]), entry.embedding.reshape(1, -1))
        while len(self._lru) > self.max_entries or self.bytes > self.max_bytes:
            self.remove(next(iter(self._lru)))

    def remove(self, entry_id: int) -> None:
        entry = self._lru.pop(entry_id, None)
        if entry is None:
            return
        self.bytes -= entry.nbytes()
        self._by_hash.pop((entry.scope, self._hash_of.pop(entry_id)), None)
        idx = self._indexes[entry.scope]
        idx.remove([entry_id])
        if len(idx) == 0:
            del self._indexes[entry.scope]

    def clear(self) -> None:
        self._lru.clear()
        self._by_hash.clear()
        self._hash_of.clear()
        self._indexes.clear()
        self.bytes = 0

    def scope_size(self, scope: str) -> int:
        """Entries of `scope` held here (expired ones included until they are dropped)."""
        idx = self._indexes.get(scope)
        return 0 if idx is None else len(idx)

    def get(self, entry_id: int) -> Entry | None:
        """The entry (marked recently used), or None when absent or expired (then dropped)."""
        entry = self._lru.get(entry_id)
        if entry is None:
            return None
        if self.expired(entry):
            self.remove(entry_id)
            return None
        self._lru.move_to_end(entry_id)
        return entry

    def exact(self, scope: str, qhash: str) -> Entry | None:
        entry_id = self._by_hash.get((scope, qhash))
        return None if entry_id is None else self.get(entry_id)

    def search(self, scope: str, query: np.ndarray, k: int) -> list[tuple[Entry, float]]:
        idx = self._indexes.get(scope)
        if idx is None:
            return []
        out = []
        for entry_id, cos in idx.search(query, k):
            entry = self.get(entry_id)
            if entry is not None:
                out.append((entry, cos))
        return out
