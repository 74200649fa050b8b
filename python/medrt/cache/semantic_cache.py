"""medrt.SemanticCache: answers a repeated medical question without running the model.

Lookup, in order: (1) refuse requests that carry patient context (the caller's flag or an
identifier from medical/phi.py) and non-deterministic sampling; (2) the exact tier: the
normalised text's hash in the request's scope; (3) FAISS retrieval of the top_k nearest
questions of the scope by cosine, first in the memory tier, then in the disk tier; each
candidate is scored a * Jaccard(words) + (1 - a) * cosine (Zhang and Qin), and the best one at
or above `threshold` that the guard accepts is the hit. A disk hit is promoted to memory.

A failure to write (full disk) turns the cache off for the rest of the process: lookups
miss, stores are skipped, the answer is still served, and `disabled_reason` says why.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medrt.cache.disk_tier import DiskTier
from medrt.cache.errors import CacheDiskFull
from medrt.cache.guard import Guard
from medrt.cache.memory_tier import MemoryTier
from medrt.cache.scope import Scope, is_deterministic
from medrt.cache.text import combined_score, jaccard, text_hash, words
from medrt.cache.vector_index import DEFAULT_IVF_MIN_ENTRIES, DEFAULT_NPROBE, IndexSettings
from medrt.errors import InvalidRequest
from medrt.medical.phi import has_phi

if TYPE_CHECKING:
    from typing_extensions import Self

# The operating point of docs/semantic-cache.md (scripts/cache_eval.py chose it).
DEFAULT_A = 0.0
DEFAULT_THRESHOLD = 0.89


@dataclass(frozen=True)
class CacheHit:
    answer: str
    score: float
    matched_question: str
    tier: str  # "exact", "memory" or "disk"
    payload: dict


@dataclass(frozen=True)
class Lookup:
    """What a lookup found: a hit, or why there is none (refused: the request may not use the
    cache; else `refused_hit` names the guard rule that turned down a candidate)."""

    hit: CacheHit | None = None
    refused: str | None = None  # "patient_context", "phi", "nondeterministic", "disabled"
    refused_hit: str | None = None  # "number", "negation", "laterality", "population", "entity"
    seconds: float = 0.0


class SemanticCache:
    """A two-tier semantic cache of answers, scoped by tenant, model, template and sampling.

    ``SemanticCache(path)`` alone works: the embedder is all-MiniLM-L6-v2 (pulled on first
    use) and ``a``/``threshold`` are the documented operating point. ``guard=False`` turns the
    number/negation/laterality/entity guard off (for measurement only). ``store_nondeterministic``
    also stores sampled answers without a seed. ``ttl_seconds`` expires entries in both tiers.
    A scope of at least ``ivf_min_entries`` entries is searched through an IVF index that
    scans ``nprobe`` of its lists (cache/vector_index.py).
    """

    def __init__(self, path: str | os.PathLike, *, embedder: Any = "all-minilm-l6-v2",
                 a: float = DEFAULT_A, threshold: float = DEFAULT_THRESHOLD, guard: bool = True,
                 top_k: int = 8, memory_entries: int = 10_000, memory_bytes: int = 256 << 20,
                 ttl_seconds: float | None = None, store_nondeterministic: bool = False,
                 num_threads: int = 2, ivf_min_entries: int = DEFAULT_IVF_MIN_ENTRIES,
                 nprobe: int = DEFAULT_NPROBE) -> None:
        if not 0.0 <= a <= 1.0:
            raise InvalidRequest(f"a must be in [0, 1], got {a}")
        if not -1.0 <= threshold <= 1.0:
            raise InvalidRequest(f"threshold must be in [-1, 1], got {threshold}")
        if min(top_k, memory_entries, memory_bytes, ivf_min_entries, nprobe) < 1:
            raise InvalidRequest("top_k, memory_entries, memory_bytes, ivf_min_entries and "
                                 "nprobe must be positive")
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise InvalidRequest(f"ttl_seconds must be positive, got {ttl_seconds}")
        if isinstance(embedder, (str, os.PathLike)):
            from medrt.embedder import Embedder

            embedder = Embedder(embedder, num_threads=num_threads)
        self.embedder = embedder
        self.path = Path(path)
        self.a, self.threshold, self.top_k = a, threshold, top_k
        self.guard = Guard.default() if guard else None
        self.store_nondeterministic = store_nondeterministic
        index = IndexSettings(ivf_min_entries, nprobe)
        self.memory = MemoryTier(embedder.dim, memory_entries, memory_bytes, ttl_seconds, index)
        self.disk = DiskTier(self.path, embedder.dim, embedder.fingerprint, ttl_seconds, index)
        self.disabled_reason: str | None = None
        self._lock = threading.RLock()
        self._model: str | None = None
        self.stats = {"hits": 0, "misses": 0, "refused": 0, "stores": 0}

    # -- the model whose answers are stored ------------------------------------------------
    def bind_model(self, fingerprint: str) -> None:
        """Declares the answering model; entries of any other model are deleted (a changed
        model invalidates everything it answered)."""
        with self._lock:
            self._model = fingerprint
            if self.disabled_reason is None:
                for entry_id in self._guarded(self.disk.delete_other_models, fingerprint) or []:
                    self.memory.remove(entry_id)

    def delete_tenant(self, tenant: str) -> int:
        """Deletes every entry of `tenant` from both tiers (a tenant that leaves, or asks to
        be forgotten); returns how many."""
        with self._lock:
            ids = self._guarded(self.disk.delete_tenant, tenant) or []
            for entry_id in ids:
                self.memory.remove(entry_id)
            return len(ids)

    # -- lookup ---------------------------------------------------------------------------
    def embed(self, question: str) -> np.ndarray:
        return self.embedder.embed([question])[0]

    def refusal(self, question: str, sampling: Any, patient_context: bool) -> str | None:
        """Why this request may not use the cache at all, or None."""
        if self.disabled_reason is not None:
            return "disabled"
        if patient_context:
            return "patient_context"
        if has_phi(question):
            return "phi"
        if not self.store_nondeterministic and not is_deterministic(sampling):
            return "nondeterministic"
        return None

    def lookup(self, question: str, *, tenant: str = "default", model: str | None = None,
               category: str = "general", sampling: Any = None,
               patient_context: bool = False, embedding: np.ndarray | None = None) -> Lookup:
        """The best acceptable cached answer for `question` in its scope, or why none."""
        start = time.perf_counter()
        reason = self.refusal(question, sampling, patient_context)
        if reason is not None:
            self.stats["refused"] += 1
            return Lookup(refused=reason, seconds=time.perf_counter() - start)
        scope = Scope.of(tenant, self._model_of(model), category, sampling).key
        qhash = text_hash(question)
        with self._lock:
            hit = self._exact(scope, qhash)
        refused_hit = None
        if hit is None:
            query = self.embed(question) if embedding is None else embedding
            with self._lock:
                hit, refused_hit = self._semantic(scope, question, query)
        self.stats["hits" if hit else "misses"] += 1
        return Lookup(hit=hit, refused_hit=refused_hit, seconds=time.perf_counter() - start)

    def _model_of(self, model: str | None) -> str:
        m = model if model is not None else self._model
        return m if m is not None else ""

    def _exact(self, scope: str, qhash: str) -> CacheHit | None:
        entry = self.memory.exact(scope, qhash)
        tier = "exact"
        if entry is None:
            if self._memory_holds_scope(scope):
                return None
            entry = self._guarded(self.disk.exact, scope, qhash)
            if entry is None or self.disk.expired(entry):
                return None
            self.memory.put(entry, qhash)
        return CacheHit(entry.answer, 1.0, entry.question, tier, entry.payload)

    def _semantic(self, scope: str, question: str,
                  query: np.ndarray) -> tuple[CacheHit | None, str | None]:
        qwords = words(question)
        # The guard's features of the question only once a candidate reaches the threshold:
        # most lookups miss on score alone, and extracting them is most of the reranking.
        qfeat = None
        refused: str | None = None
        seen: set[int] = set()
        for tier in ("memory", "disk"):
            if tier == "memory":
                cands = self.memory.search(scope, query, self.top_k)
            elif self._memory_holds_scope(scope):
                break
            else:
                found = self._guarded(self.disk.search, scope, query, self.top_k) or []
                found = [(i, c) for i, c in found if i not in seen]
                rows = self._guarded(self.disk.get, [i for i, _ in found]) or {}
                cands = [(rows[i], c) for i, c in found
                         if i in rows and not self.disk.expired(rows[i])]
            scored = sorted(((combined_score(jaccard(qwords, e.words), c, self.a), e)
                             for e, c in cands), key=lambda sc: -sc[0])
            for score, entry in scored:
                seen.add(entry.id)
                if score < self.threshold:
                    break
                if self.guard is not None:
                    qfeat = qfeat or self.guard.features(question)
                    verdict = self.guard.compare(qfeat, self.guard.features(entry.question))
                    if not verdict.ok:
                        refused = refused or verdict.reason
                        continue
                if tier == "disk":
                    self.memory.put(entry, text_hash(entry.question))
                return CacheHit(entry.answer, float(score), entry.question, tier,
                                entry.payload), None
        return None, refused

    def _memory_holds_scope(self, scope: str) -> bool:
        """True when every stored entry of the scope is in memory: the disk has nothing more,
        and a lookup then touches no shared file (nor another tenant's rows' B-tree)."""
        return self.memory.scope_size(scope) >= (self._guarded(self.disk.count, scope) or 0)

    # -- store ----------------------------------------------------------------------------
    def store(self, question: str, answer: str, *, tenant: str = "default",
              model: str | None = None, category: str = "general", sampling: Any = None,
              patient_context: bool = False, payload: dict | None = None,
              embedding: np.ndarray | None = None) -> bool:
        """Stores an answer when the request may be cached; True once it is durable."""
        if self.refusal(question, sampling, patient_context) is not None:
            return False
        scope_obj = Scope.of(tenant, self._model_of(model), category, sampling)
        query = self.embed(question) if embedding is None else embedding
        qhash = text_hash(question)
        with self._lock:
            entry = self._guarded(self.disk.insert, scope_obj.key, tenant, scope_obj.model,
                                  qhash, question, answer, payload or {}, query)
            if entry is None:
                return False
            self.memory.put(entry, qhash)
            self.stats["stores"] += 1
            return True

    def store_many(self, items: list[dict[str, Any]],
                   embeddings: np.ndarray | None = None, batch_size: int = 64) -> int:
        """store() for many items (dicts of question, answer and store()'s keywords) in one
        transaction, embedding the questions in batches unless `embeddings` are given;
        returns how many were stored."""
        keep, rows, qhashes = [], [], []
        for i, it in enumerate(items):
            if self.refusal(it["question"], it.get("sampling"),
                            it.get("patient_context", False)) is None:
                keep.append(i)
        if embeddings is None:
            embeddings = np.zeros((len(items), self.embedder.dim), dtype=np.float32)
            for s in range(0, len(keep), batch_size):
                idx = keep[s:s + batch_size]
                embeddings[idx] = self.embedder.embed([items[i]["question"] for i in idx])
        for i in keep:
            it = items[i]
            scope = Scope.of(it.get("tenant", "default"), self._model_of(it.get("model")),
                             it.get("category", "general"), it.get("sampling"))
            qhashes.append(text_hash(it["question"]))
            rows.append((scope.key, scope.tenant, scope.model, qhashes[-1], it["question"],
                         it["answer"], it.get("payload") or {}, embeddings[i]))
        with self._lock:
            entries = self._guarded(self.disk.insert_many, rows) or []
            self.memory.put_many(list(zip(entries, qhashes)))
            self.stats["stores"] += len(entries)
        return len(entries)

    # -- housekeeping ---------------------------------------------------------------------
    def _guarded(self, fn, *args):
        """Runs a disk operation; a full disk turns the cache off instead of failing."""
        if self.disabled_reason is not None:
            return None
        try:
            return fn(*args)
        except CacheDiskFull as e:
            self.disabled_reason = str(e)
            warnings.warn(f"semantic cache turned off: {e}", RuntimeWarning, stacklevel=3)
            return None

    def checkpoint(self) -> None:
        """Persists the loaded index files (SQLite already holds every acknowledged entry)."""
        with self._lock:
            self._guarded(self.disk.checkpoint)

    def close(self) -> None:
        with self._lock:
            if self.disabled_reason is None:
                self._guarded(self.disk.checkpoint)
            self.disk.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.disk.count()


