"""The cache's key space: (tenant, model fingerprint, template category, the sampling
parameters that change an answer). Entries of one scope are invisible to every other: each
scope has its own index, so a lookup touches only its own tenant's entries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medrt.errors import InvalidRequest

# SamplingParams fields that change the text of an answer (n, logprobs and the like either
# do not, or make the request uncacheable: see cacheable_reason).
ANSWER_FIELDS = ("max_tokens", "min_tokens", "temperature", "top_k", "top_p", "min_p",
                 "repetition_penalty", "frequency_penalty", "presence_penalty", "seed",
                 "stop_strings", "stop_token_ids", "ignore_eos", "include_stop_str_in_output",
                 "skip_special_tokens")


def sampling_key(params: Any) -> dict[str, Any]:
    """The answer-changing fields of a SamplingParams (or a mapping of them), as plain JSON."""
    if params is None:
        return {}
    src = params if isinstance(params, Mapping) else {
        f: getattr(params, f, None) for f in ANSWER_FIELDS}
    key = {f: src[f] for f in ANSWER_FIELDS if f in src and src[f] is not None}
    if key.get("temperature", 1.0) == 0:
        key.pop("seed", None)  # greedy: the seed does not change the answer
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in key.items()}


def is_deterministic(params: Any) -> bool:
    """Greedy, or seeded: the same request gives the same answer."""
    key = sampling_key(params)
    return key.get("temperature", 1.0) == 0 or key.get("seed") is not None


@dataclass(frozen=True)
class Scope:
    tenant: str
    model: str  # the answering model's fingerprint
    category: str  # the template category (medical.classify)
    sampling: str  # canonical JSON of sampling_key()

    @classmethod
    def of(cls, tenant: str, model: str, category: str, params: Any) -> Scope:
        if not isinstance(tenant, str) or not tenant:
            raise InvalidRequest(f"tenant must be a non-empty string, got {tenant!r}")
        return cls(tenant, model, category,
                   json.dumps(sampling_key(params), sort_keys=True, separators=(",", ":")))

    @property
    def key(self) -> str:
        """A fixed-length id of the scope (file names, SQLite column)."""
        raw = json.dumps([self.tenant, self.model, self.category, self.sampling])
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]
