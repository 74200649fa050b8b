"""cache/vector_index.py: a scope's index turns IVF at its size threshold, retrains as it
grows, turns flat again as it shrinks, and keeps ids, vectors and exact cosines throughout."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
from medrt.cache.vector_index import IndexSettings, VectorIndex, lists_for

DIM = 32


def _unit(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _contents_sorted(idx: VectorIndex) -> tuple[np.ndarray, np.ndarray]:
    ids, vecs = idx.contents()
    order = np.argsort(ids)
    return ids[order], vecs[order]


def test_layout_follows_the_scope_size() -> None:
    v = _unit(2000)
    idx = VectorIndex(DIM, IndexSettings(ivf_min_entries=100, nprobe=4))
    idx.add(np.arange(99), v[:99])
    assert not idx.is_ivf
    idx.add(np.arange(99, 100), v[99:100])
    assert idx.is_ivf and idx.faiss_index.nlist == lists_for(100) == 10
    idx.add(np.arange(100, 399), v[100:399])  # wants 19 lists: not yet twice as many
    assert idx.faiss_index.nlist == 10
    idx.add(np.arange(399, 2000), v[399:])  # wants 44 lists: retrained
    assert idx.faiss_index.nlist == lists_for(2000)
    ids, vecs = _contents_sorted(idx)
    assert np.array_equal(ids, np.arange(2000)) and np.array_equal(vecs, v)
    idx.remove(range(1951))
    assert not idx.is_ivf and len(idx) == 49  # below half the threshold: flat again
    ids, vecs = _contents_sorted(idx)
    assert np.array_equal(ids, np.arange(1951, 2000)) and np.array_equal(vecs, v[1951:])


def test_ivf_search_returns_exact_cosines_and_honours_removal() -> None:
    v = _unit(3000, seed=1)
    ids = np.arange(3000) * 7 + 5  # SQLite ids need not be dense
    idx = VectorIndex(DIM, IndexSettings(ivf_min_entries=500, nprobe=8))
    idx.add(ids, v)
    assert idx.is_ivf
    for i in (0, 1234, 2999):
        (best, cos), *rest = idx.search(v[i], 5)
        assert best == ids[i] and abs(cos - 1.0) < 1e-5
        for other, c in rest:
            assert abs(c - float(v[(other - 5) // 7] @ v[i])) < 1e-5
    idx.remove([ids[1234]])
    assert all(found != ids[1234] for found, _ in idx.search(v[1234], 5))
    assert len(idx) == 2999


def test_ivf_index_survives_a_file_round_trip(tmp_path: Path) -> None:
    v = _unit(1000, seed=2)
    idx = VectorIndex(DIM, IndexSettings(ivf_min_entries=200, nprobe=3))
    idx.add(np.arange(1000), v)
    path = str(tmp_path / "s.faiss")
    faiss.write_index(idx.faiss_index, path)
    back = VectorIndex.from_faiss(faiss.read_index(path), DIM,
                                  IndexSettings(ivf_min_entries=200, nprobe=5))
    assert back.is_ivf and back.faiss_index.nprobe == 5 and len(back) == 1000
    assert back.search(v[17], 1)[0][0] == 17
    back.add(np.array([5000]), v[:1])
    assert {i for i, _ in back.search(v[0], 2)} == {0, 5000}
