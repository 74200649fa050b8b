"""Cosine retrieval of one scope's entries: FAISS IndexIDMap2 over IndexFlatIP.

Vectors are unit length, so inner product is cosine. Ids are the entries' SQLite ids, so a
search result names the row to read. A flat index is exact and supports removal (TTL,
eviction, invalidation); it searches 10^6 x 384 vectors in tens of milliseconds per query. A
larger cache should use an IVF index (IndexIVFFlat, which also supports remove_ids) trained
on a sample of the entries: docs/semantic-cache.md.
"""

from __future__ import annotations

import numpy as np


def _faiss():
    import faiss

    # A lookup searches one query: FAISS's OpenMP team costs more to wake (and, on a busy
    # machine, spins for tens of milliseconds) than the scan it would split. This sets the
    # process-wide OpenMP thread count FAISS uses.
    faiss.omp_set_num_threads(1)
    return faiss


class VectorIndex:
    def __init__(self, dim: int) -> None:
        faiss = _faiss()
        self.dim = dim
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @classmethod
    def from_faiss(cls, index, dim: int) -> VectorIndex:
        self = cls.__new__(cls)
        self.dim = dim
        self._index = index
        return self

    @property
    def faiss_index(self):
        return self._index

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                     np.asarray(ids, dtype=np.int64))

    def remove(self, ids) -> None:
        if len(ids):
            self._index.remove_ids(np.asarray(list(ids), dtype=np.int64))

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(id, cosine) of the k nearest entries, best first."""
        if len(self) == 0:
            return []
        scores, ids = self._index.search(query.reshape(1, -1).astype(np.float32, copy=False),
                                         min(k, len(self)))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
