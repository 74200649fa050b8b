"""The memory tier: the most recently used entries, bounded by count and bytes, with a TTL.

Entries of every scope share one LRU order (a busy tenant cannot grow without bound), and each
scope has its own vector index, so a lookup searches only its own scope's entries.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

from medrt.cache.entry import Entry
from medrt.cache.vector_index import DEFAULT_SETTINGS, IndexSettings, VectorIndex


class MemoryTier:
    def __init__(self, dim: int, max_entries: int, max_bytes: int,
                 ttl_seconds: float | None, index: IndexSettings = DEFAULT_SETTINGS) -> None:
        self.dim = dim
        self.index_settings = index
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl_seconds
        self._lru: OrderedDict[int, Entry] = OrderedDict()
        self._by_hash: dict[tuple[str, str], int] = {}
        self._hash_of: dict[int, str] = {}
        self._indexes: dict[str, VectorIndex] = {}
        self._scope_of: dict[int, str] = {}  # entries forgotten, not yet out of their index
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._lru

    def expired(self, entry: Entry, now: float | None = None) -> bool:
        return self.ttl is not None and (now or time.time()) - entry.created > self.ttl

    def put(self, entry: Entry, qhash: str) -> None:
        self.put_many([(entry, qhash)])

    def put_many(self, items: list[tuple[Entry, str]]) -> None:
        """Adds entries (most recent last), then evicts the least recently used beyond the
        limits in one pass."""
        new: dict[str, list[Entry]] = {}
        for entry, qhash in items:
            if entry.id in self._lru:
                self._lru.move_to_end(entry.id)
                continue
            replaced = self._by_hash.get((entry.scope, qhash))
            if replaced is not None:  # a refreshed answer: the old one must not be served
                self.remove(replaced)
            self._lru[entry.id] = entry
            self._by_hash[(entry.scope, qhash)] = entry.id
            self._hash_of[entry.id] = qhash
            self.bytes += entry.nbytes()
            new.setdefault(entry.scope, []).append(entry)
        for scope, entries in new.items():
            idx = self._indexes.get(scope)
            if idx is None:
                idx = self._indexes[scope] = VectorIndex(self.dim, self.index_settings)
            idx.add(np.array([e.id for e in entries]), np.stack([e.embedding for e in entries]))
        evicted: list[int] = []
        while len(self._lru) > self.max_entries or self.bytes > self.max_bytes:
            evicted.append(next(iter(self._lru)))
            self._forget(evicted[-1])
        self._unindex(evicted)

    def remove(self, entry_id: int) -> None:
        if entry_id in self._lru:
            self._forget(entry_id)
            self._unindex([entry_id])

    def _forget(self, entry_id: int) -> None:
        entry = self._lru.pop(entry_id)
        self.bytes -= entry.nbytes()
        self._by_hash.pop((entry.scope, self._hash_of.pop(entry_id)), None)
        self._scope_of[entry_id] = entry.scope

    def _unindex(self, ids: list[int]) -> None:
        # One remove_ids per scope: a flat index compacts itself on each call (O(size)),
        # so evicting many entries one by one would cost O(size) each.
        by_scope: dict[str, list[int]] = {}
        for entry_id in ids:
            by_scope.setdefault(self._scope_of.pop(entry_id), []).append(entry_id)
        for scope, scope_ids in by_scope.items():
            idx = self._indexes[scope]
            idx.remove(scope_ids)
            if len(idx) == 0:
                del self._indexes[scope]

    def clear(self) -> None:
        self._lru.clear()
        self._by_hash.clear()
        self._hash_of.clear()
        self._indexes.clear()
        self._scope_of.clear()
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
