"""Prometheus metrics with vLLM's names under ``medrt:``.

Per-request figures (tokens, latencies, outcomes) are labelled by tenant. Engine-wide state
(running and waiting requests, KV usage, prefix cache, preemptions) is read from the engine's
own counters (``AsyncLLM.stats()``, the C++ EngineStats) at scrape time, so it cannot drift from
what the engine holds. Prefix-cache queries and hits count KV blocks (the engine's unit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

disable_created_metrics()  # the *_created series only add noise to every scrape

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                1.0, 2.5, 5.0)
_LOOKUP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
_E2E_BUCKETS = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                50.0, 60.0, 120.0, 240.0, 480.0)


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], dict[str, int] | None],
                 queued: Callable[[], int]) -> None:
        self._stats = stats
        self._queued = queued

    def collect(self) -> Iterator:
        s = self._stats()
        if s is None:  # the model is still loading
            return
        yield GaugeMetricFamily("medrt:num_requests_running",
                                "Requests the engine is running.", s["num_running"])
        yield GaugeMetricFamily("medrt:num_requests_waiting",
                                "Requests waiting (server queue and engine queue).",
                                s["num_waiting"] + self._queued())
        total = max(s["num_blocks"], 1)
        yield GaugeMetricFamily("medrt:kv_cache_usage_perc",
                                "Fraction of KV blocks in use (1 = full).",
                                (s["num_blocks"] - s["free_blocks"]) / total)
        yield GaugeMetricFamily("medrt:kv_blocks_total", "KV blocks in the pool.",
                                s["num_blocks"])
        yield GaugeMetricFamily("medrt:kv_blocks_free", "KV blocks free.", s["free_blocks"])
        yield CounterMetricFamily("medrt:prefix_cache_queries",
                                  "Full prompt blocks looked up in the prefix cache.",
                                  s["prefix_cache_queries"])
        yield CounterMetricFamily("medrt:prefix_cache_hits",
                                  "Full prompt blocks found in the prefix cache.",
                                  s["prefix_cache_hits"])
        yield CounterMetricFamily("medrt:num_preemptions", "Preemptions (by recompute).",
                                  s["num_preemptions"])


class ServeMetrics:
    """One registry per server (tests run several servers in one process)."""

    def __init__(self, stats: Callable[[], dict[str, int] | None],
                 queued: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.prompt_tokens = Counter("medrt:prompt_tokens", "Prompt tokens of requests.",
                                     ["tenant"], registry=r)
        self.generation_tokens = Counter("medrt:generation_tokens", "Generated tokens.",
                                         ["tenant"], registry=r)
        self.request_success = Counter("medrt:request_success",
                                       "Requests finished, by finish reason.",
                                       ["tenant", "finished_reason"], registry=r)
        self.request_failure = Counter("medrt:request_failure",
                                       "Requests answered with an error, by status code.",
                                       ["tenant", "code"], registry=r)
        self.ttft = Histogram("medrt:time_to_first_token_seconds",
                              "Seconds from arrival to the first generated token.", ["tenant"],
                              buckets=_TTFT_BUCKETS, registry=r)
        self.itl = Histogram("medrt:inter_token_latency_seconds",
                             "Seconds between generated tokens.", ["tenant"],
                             buckets=_ITL_BUCKETS, registry=r)
        self.e2e = Histogram("medrt:e2e_request_latency_seconds",
                             "Seconds from arrival to the end of the request.", ["tenant"],
                             buckets=_E2E_BUCKETS, registry=r)
        self.queue_time = Histogram("medrt:request_queue_time_seconds",
                                    "Seconds a request waited in the server's queue.",
                                    ["tenant"], buckets=_E2E_BUCKETS, registry=r)
        # The semantic cache (when the server runs one): what each lookup found.
        self.cache_hits = Counter("medrt:semantic_cache_hits",
                                  "Requests answered from the semantic cache, by tier.",
                                  ["tenant", "tier"], registry=r)
        self.cache_misses = Counter("medrt:semantic_cache_misses",
                                    "Semantic cache lookups that found no answer.", ["tenant"],
                                    registry=r)
        self.cache_refused = Counter(
            "medrt:semantic_cache_refused",
            "Requests the cache would not serve: patient data, PHI, undeterministic sampling, "
            "a disabled cache, or a near match turned down by a guard rule (guard_<rule>).",
            ["tenant", "reason"], registry=r)
        self.cache_lookup = Histogram("medrt:semantic_cache_lookup_seconds",
                                      "Seconds per semantic cache lookup (embedding included).",
                                      buckets=_LOOKUP_BUCKETS, registry=r)
        self.cache_errors = Counter("medrt:semantic_cache_errors",
                                    "Cache lookups or stores that failed (served as a miss).",
                                    ["tenant", "op"], registry=r)
        self.cache_stores = Counter("medrt:semantic_cache_stores",
                                    "Answers stored in the semantic cache.", ["tenant"],
                                    registry=r)
        r.register(_EngineCollector(stats, queued))

    def render(self) -> bytes:
        return generate_latest(self.registry)
