"""Cosine retrieval of one scope's entries: a flat FAISS index, or an IVF index once the scope
is large.

Vectors are unit length, so inner product is cosine. Ids are the entries' SQLite ids, so a
search result names the row to read. Both layouts support removal (TTL, eviction,
invalidation) and are written to and read from index files as they are.

- Flat (IndexIDMap2 over IndexFlatIP): exact, but scans every vector: about 65 ns per vector
  on one core here, so 1 ms at 15,000 entries and 6.5 ms at 10^5.
- IVF (IndexIVFFlat, inner product), from `ivf_min_entries` entries of the scope: the vectors
  are split into about sqrt(N) lists by k-means trained on the scope's own vectors; a search
  scores the list centroids and scans only the `nprobe` nearest lists. It keeps full float32
  vectors, so every score it returns is the exact cosine; what it can do is miss the true
  nearest entry when that one sits in a list not scanned. Such a miss is a cache miss, never
  a false hit: the threshold and the guard judge whatever candidate comes back.

The layout follows the size: a flat index becomes IVF at `ivf_min_entries`, an IVF index is
retrained when the scope has grown so that it wants twice its lists (4x the entries), and goes
back to flat below half of `ivf_min_entries`. Each change rebuilds the index from its own
vectors (seconds at 10^6 entries, under the cache's lock: it happens at most once per 4x of
growth).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

# Where a flat scan of 384-dim vectors passes ~1.3 ms on one core of this machine
# (docs/semantic-cache.md, "Large scopes").
DEFAULT_IVF_MIN_ENTRIES = 20_000
# Lists scanned per search. On real questions (scripts/cache_ivf_recall.py; 10^5 and 10^6
# entries) 8 lists already found the true nearest entry of every probe whose nearest entry is
# close enough to be a hit; 16 doubles that margin. A search costs about sqrt(N) centroids
# plus nprobe * sqrt(N) vectors: ~0.2 ms at 10^5 entries, ~1.2 ms at 10^6 on one core here.
DEFAULT_NPROBE = 16
# k-means settings: a sample of 64 points per list and 10 iterations already place centroids
# well enough for retrieval, and keep training at 10^6 entries to seconds.
_POINTS_PER_LIST = 64
_KMEANS_ITERATIONS = 10


def _faiss():
    import faiss

    # A lookup searches one query: FAISS's OpenMP team costs more to wake (and, on a busy
    # machine, spins for tens of milliseconds) than the scan it would split. This sets the
    # process-wide OpenMP thread count FAISS uses (the embedder has its own thread pool, so
    # it does not change the embedder).
    faiss.omp_set_num_threads(1)
    return faiss


def lists_for(n: int) -> int:
    """IVF lists for n vectors: about sqrt(n), so centroids and one list cost about the same."""
    return max(1, int(math.sqrt(n)))


@dataclass(frozen=True)
class IndexSettings:
    """When a scope's index turns IVF, and how many lists an IVF search scans."""

    ivf_min_entries: int = DEFAULT_IVF_MIN_ENTRIES
    nprobe: int = DEFAULT_NPROBE


DEFAULT_SETTINGS = IndexSettings()


class VectorIndex:
    """A scope's vectors: flat below `ivf_min_entries`, IVF above (see the module's doc)."""

    def __init__(self, dim: int, settings: IndexSettings = DEFAULT_SETTINGS) -> None:
        faiss = _faiss()
        self.dim = dim
        self.settings = settings
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @classmethod
    def from_faiss(cls, index, dim: int,
                   settings: IndexSettings = DEFAULT_SETTINGS) -> VectorIndex:
        """Wraps an index read from a file (either layout); the next change of size brings
        it to the layout this size calls for."""
        _faiss()
        self = cls.__new__(cls)
        self.dim, self.settings = dim, settings
        self._index = index  # faiss.read_index returns the concrete class (and owns it)
        if self.is_ivf:
            self._index.nprobe = settings.nprobe
        return self

    @property
    def faiss_index(self):
        return self._index

    @property
    def is_ivf(self) -> bool:
        return hasattr(self._index, "nlist")

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                     np.asarray(ids, dtype=np.int64))
            self._fit_layout()

    def remove(self, ids) -> None:
        if len(ids):
            self._index.remove_ids(np.asarray(list(ids), dtype=np.int64))
            self._fit_layout()

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(id, cosine) of the k nearest entries found, best first."""
        n = len(self)
        if n == 0:
            return []
        scores, ids = self._index.search(query.reshape(1, -1).astype(np.float32, copy=False),
                                         min(k, n))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    # -- layout ---------------------------------------------------------------------------
    def _fit_layout(self) -> None:
        n, least = len(self), self.settings.ivf_min_entries
        if self.is_ivf:
            if n < least // 2:
                self._rebuild(ivf=False)
            elif lists_for(n) >= 2 * self._index.nlist:
                self._rebuild(ivf=True)
        elif n >= least:
            self._rebuild(ivf=True)

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids [n] int64, vectors [n, dim] float32) of every entry, in no particular order."""
        faiss = _faiss()
        n = len(self)
        if not self.is_ivf:
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            return ids, self._index.index.reconstruct_n(0, n)
        from faiss.contrib.inspect_tools import get_invlist

        parts = [get_invlist(self._index.invlists, j) for j in range(self._index.nlist)]
        ids = np.concatenate([p[0] for p in parts])
        codes = np.concatenate([p[1] for p in parts])  # IVFFlat codes are the float32 vectors
        return ids, codes.view(np.float32).reshape(n, self.dim)

    def _rebuild(self, ivf: bool) -> None:
        faiss = _faiss()
        ids, vectors = self.contents()
        # Training and assigning N vectors is the one bulk job here: give it every CPU the
        # process may use, then back to one thread for the single-query searches.
        faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
        try:
            self._index = self._build(faiss, ivf, ids, vectors)
        finally:
            faiss.omp_set_num_threads(1)

    def _build(self, faiss, ivf: bool, ids: np.ndarray, vectors: np.ndarray):
        if not ivf:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        else:
            nlist = lists_for(len(ids))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist,
                                       faiss.METRIC_INNER_PRODUCT)
            index.cp.niter = _KMEANS_ITERATIONS
            index.cp.max_points_per_centroid = _POINTS_PER_LIST
            index.cp.min_points_per_centroid = 1  # small scopes (tests): no warning on stderr
            # A fixed seed (FAISS's default draw is fixed too): the same vectors give the same
            # lists, so a rebuilt index answers as the one it replaces.
            index.cp.seed = 1234
            index.train(vectors)
            index.nprobe = self.settings.nprobe
        index.add_with_ids(vectors, ids)
        return index
