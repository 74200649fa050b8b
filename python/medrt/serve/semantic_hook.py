"""The server's CacheHook over medrt.SemanticCache (ARCHITECTURE.md step 2).

The server hands the hook the user's question and the request's scope; the cache keeps each
answer with its token ids, finish reason and the fingerprint of the request that computed
it, so a hit is returned exactly as the engine produced it and can be replayed. Tenant
scoping, the guard against answer-changing differences, and the refusal of patient data and
of undeterministic requests all live in SemanticCache; this file translates, and counts what
each lookup found in the server's metrics.
"""

from __future__ import annotations

import json
import logging

from medrt.cache import SemanticCache
from medrt.serve.core import CachedAnswer, CacheKey
from medrt.serve.metrics import ServeMetrics

log = logging.getLogger("medrt.serve")


class SemanticCacheHook:
    def __init__(self, cache: SemanticCache, model_fingerprint: str,
                 metrics: ServeMetrics) -> None:
        self.cache = cache
        self.model = model_fingerprint
        self.metrics = metrics
        cache.bind_model(model_fingerprint)  # answers of another model are deleted

    def _scope(self, key: CacheKey) -> dict:
        return {"tenant": key.tenant, "model": self.model, "category": key.template,
                "sampling": json.loads(key.params), "patient_context": key.patient_context}

    def lookup(self, key: CacheKey, question: str) -> CachedAnswer | None:
        found = self.cache.lookup(question, **self._scope(key))
        m = self.metrics
        m.cache_lookup.observe(found.seconds)
        hit = found.hit
        if found.refused is not None:
            m.cache_refused.labels(key.tenant, found.refused).inc()
        elif hit is None and found.refused_hit is not None:
            m.cache_refused.labels(key.tenant, f"guard_{found.refused_hit}").inc()
        elif hit is None:
            m.cache_misses.labels(key.tenant).inc()
        if hit is None:
            return None
        m.cache_hits.labels(key.tenant, hit.tier).inc()
        p = hit.payload
        return CachedAnswer(hit.answer, list(p.get("token_ids") or []),
                            p.get("finish_reason") or "stop", p.get("fingerprint"),
                            {"tier": hit.tier, "score": round(float(hit.score), 6)})

    def store(self, key: CacheKey, question: str, answer: CachedAnswer) -> None:
        stored = self.cache.store(question, answer.text, **self._scope(key),
                                  payload={"token_ids": answer.token_ids,
                                           "finish_reason": answer.finish_reason,
                                           "fingerprint": answer.fingerprint})
        if stored:
            self.metrics.cache_stores.labels(key.tenant).inc()

    def close(self) -> None:
        self.cache.close()
