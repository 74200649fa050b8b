"""The semantic response cache (ARCHITECTURE.md step 2): an exact tier, FAISS retrieval
reranked by a * Jaccard + (1 - a) * cosine, a guard against answer-changing differences,
a memory tier (LRU, TTL) and a disk tier (SQLite + persisted FAISS index), scoped by tenant,
model, template category and sampling parameters. See docs/semantic-cache.md."""

from medrt.cache.errors import CacheCorrupt, CacheDiskFull, CacheError
from medrt.cache.guard import Guard, GuardResult
from medrt.cache.semantic_cache import CacheHit, Lookup, SemanticCache

__all__ = ["CacheCorrupt", "CacheDiskFull", "CacheError", "CacheHit", "Guard", "GuardResult",
           "Lookup", "SemanticCache"]
