"""The semantic cache in front of LLM / AsyncLLM: which requests may use it, the question
and scope of each, a RequestOutput built from a hit, and the store after a generation.

A request is looked up only when its question is plain text (a text prompt, or a
conversation of one user message after an optional system message: a longer history
changes the answer), it asks no logprobs, and the cache mode is "auto". The scope's
template category is the medical classifier's category of the question plus a hash of what
else shapes the prompt (generate vs chat, the system message, the chat template options, and
the LoRA adapter the request runs with: its files' sha256, as the service scopes it).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medrt.cache.semantic_cache import CacheHit, SemanticCache
from medrt.errors import InvalidRequest
from medrt.outputs import CompletionOutput, RequestMetrics, RequestOutput

MODES = ("auto", "bypass", "refresh")


@dataclass
class CacheRequest:
    """One request's cache key material; `question` None means it cannot use the cache."""

    question: str | None
    category: str
    tenant: str
    mode: str
    patient_context: bool


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InvalidRequest(f"cache must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not tenant:
        raise InvalidRequest(f"tenant must be a non-empty string, got {tenant!r}")
    return tenant


def _shape_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def template_category(question: str, shape: Any, adapter: str | None = None) -> str:
    """The scope's template category: the medical classifier's category of the question and a
    hash of everything else that shapes the prompt (`shape`, any JSON-able value) and of the
    LoRA adapter that answers it (`adapter`, its sha256; None: the base model)."""
    from medrt.medical import classify

    if adapter is not None:  # base-model scopes keep the hash they had before adapters
        shape = [shape, {"lora_sha256": adapter}]
    return f"{classify(question)}:{_shape_hash(shape)}"


def conversation_question(messages: Sequence[Mapping[str, Any]]) -> tuple[str | None, list]:
    """The question of a conversation that may use the cache, and its system messages'
    contents: one user message after at most one system message. A longer history changes
    the answer, so it has no question (None)."""
    msgs = list(messages)
    system = [m for m in msgs[:-1] if m.get("role") == "system"]
    question = None
    if (msgs and msgs[-1].get("role") == "user" and isinstance(msgs[-1].get("content"), str)
            and len(msgs) - 1 == len(system) <= 1):
        question = msgs[-1]["content"]
    return question, [m.get("content") for m in system]


def for_prompt(prompt: Any, tenant: str, mode: str, patient_context: bool,
               adapter: str | None = None) -> CacheRequest:
    """The cache request of a generate() prompt (text, or a dict with text only); `adapter`
    is the sha256 of the LoRA adapter it runs with (adapter_hash), None for the base."""
    text = prompt if isinstance(prompt, str) else None
    if isinstance(prompt, Mapping) and "prompt_token_ids" not in prompt:
        text = prompt.get("prompt") if isinstance(prompt.get("prompt"), str) else None
    category = template_category(text, "generate", adapter) if text else ""
    return CacheRequest(text, category, check_tenant(tenant), check_mode(mode), patient_context)


def for_conversation(messages: Sequence[Mapping[str, Any]], tenant: str, mode: str,
                     patient_context: bool, options: Any,
                     adapter: str | None = None) -> CacheRequest:
    """The cache request of a chat() conversation; `options` are the rendering arguments and
    `adapter` the sha256 of its LoRA adapter, as in for_prompt."""
    question, system = conversation_question(messages)
    shape = ["chat", system, options]
    category = template_category(question, shape, adapter) if question else ""
    return CacheRequest(question, category, check_tenant(tenant), check_mode(mode),
                        patient_context)


class FrontendCache:
    """What LLM and AsyncLLM call around a generation."""

    def __init__(self, cache: SemanticCache, model_fingerprint: str) -> None:
        if not isinstance(cache, SemanticCache):
            raise InvalidRequest(f"cache must be a medrt.SemanticCache, "
                                 f"not {type(cache).__name__}")
        self.cache = cache
        self.model = model_fingerprint
        cache.bind_model(model_fingerprint)

    def usable(self, req: CacheRequest, params: Any) -> bool:
        return (req.question is not None and req.mode != "bypass"
                and getattr(params, "logprobs", None) is None)

    def lookup(self, req: CacheRequest, params: Any) -> CacheHit | None:
        if not self.usable(req, params) or req.mode == "refresh":
            return None
        return self.cache.lookup(req.question, tenant=req.tenant, model=self.model,
                                 category=req.category, sampling=params,
                                 patient_context=req.patient_context).hit

    def store(self, req: CacheRequest, params: Any, out: RequestOutput) -> None:
        done = out.outputs[0] if out.outputs else None
        if (not self.usable(req, params) or done is None or not out.finished
                or done.finish_reason in (None, "abort", "error")):
            return
        self.cache.store(req.question, done.text, tenant=req.tenant, model=self.model,
                         category=req.category, sampling=params,
                         patient_context=req.patient_context,
                         payload={"token_ids": list(done.token_ids),
                                  "finish_reason": done.finish_reason,
                                  "stop_reason": done.stop_reason})

    def store_text(self, req: CacheRequest, params: Any, text: str) -> None:
        """Stores a streamed answer that ran to its end (only its text is known)."""
        if self.usable(req, params):
            self.cache.store(req.question, text, tenant=req.tenant, model=self.model,
                             category=req.category, sampling=params,
                             patient_context=req.patient_context,
                             payload={"finish_reason": "stop"})


def hit_output(hit: CacheHit, request_id: str, prompt: str | None,
               prompt_token_ids: list[int], arrival: float, tokenizer: Any) -> RequestOutput:
    """A finished RequestOutput carrying the cached answer and `cache` = the hit."""
    now = time.monotonic()
    token_ids = hit.payload.get("token_ids")
    if token_ids is None:
        token_ids = tokenizer.encode(hit.answer, add_special_tokens=False)
    completion = CompletionOutput(index=0, text=hit.answer, token_ids=list(token_ids),
                                  finish_reason=hit.payload.get("finish_reason") or "stop",
                                  stop_reason=hit.payload.get("stop_reason"))
    metrics = RequestMetrics(arrival_time=arrival, first_token_time=now, finished_time=now,
                             num_prompt_tokens=len(prompt_token_ids),
                             num_generation_tokens=len(completion.token_ids))
    out = RequestOutput(request_id=request_id, prompt=prompt, prompt_token_ids=prompt_token_ids,
                        outputs=[completion], finished=True, metrics=metrics)
    out.cache = {"score": hit.score, "matched_question": hit.matched_question,
                 "tier": hit.tier}
    return out


def run_batch(fc: FrontendCache | None, frontend: Any, prepared: list, reqs: list[CacheRequest],
              run: Any) -> list[RequestOutput]:
    """LLM.generate/chat's batch with the cache: hits are answered at once, misses run together
    in the engine (`run`), and their answers are stored; outputs keep the prompts' order."""
    if fc is None:
        return run(prepared)
    arrival = time.monotonic()
    hits = [fc.lookup(r, p.params) for r, p in zip(reqs, prepared)]
    misses = [i for i, h in enumerate(hits) if h is None]
    outs: list[RequestOutput | None] = [None] * len(prepared)
    for i, out in zip(misses, run([prepared[i] for i in misses]) if misses else []):
        outs[i] = out
        fc.store(reqs[i], prepared[i].params, out)
    for i, hit in enumerate(hits):
        if hit is not None:
            outs[i] = hit_output(hit, str(next(frontend._ids)), prepared[i].prompt,
                                 prepared[i].token_ids, arrival, frontend.tokenizer)
    return outs  # type: ignore[return-value]


def stream_text(fc: FrontendCache | None, req: CacheRequest, params: Any, start: Any) -> Any:
    """LLM.chat(stream=True) with the cache: a hit is one chunk; a miss streams and, when it
    runs to its end, is stored."""
    hit = fc.lookup(req, params) if fc is not None else None
    if hit is not None:
        return iter([hit.answer])
    stream = start()
    if fc is None:
        return stream

    def relay():
        parts = []
        for chunk in stream:
            parts.append(chunk)
            yield chunk
        fc.store_text(req, params, "".join(parts))

    return relay()


async def stream_outputs(fc: FrontendCache | None, frontend: Any, prepared: Any,
                         req: CacheRequest, stream: Any, request_id: str | None,
                         delta: bool) -> Any:
    """AsyncLLM's stream with the cache: a hit is one finished output; a miss streams and its
    finished answer is stored. Lookups and stores run off the event loop."""
    import asyncio

    if fc is not None:
        arrival = time.monotonic()
        hit = await asyncio.to_thread(fc.lookup, req, prepared.params)
        if hit is not None:
            rid = request_id if request_id is not None else str(next(frontend._ids))
            yield hit_output(hit, rid, prepared.prompt, prepared.token_ids, arrival,
                             frontend.tokenizer)
            return
    text, token_ids, last = [], [], None
    async for out in stream:
        last = out
        text.append(out.outputs[0].text)
        token_ids.extend(out.outputs[0].token_ids)
        yield out
    if fc is not None and last is not None and last.finished:
        done = last.outputs[0]
        if delta:  # rebuild the whole answer from the deltas
            done = CompletionOutput(0, "".join(text), token_ids, finish_reason=done.finish_reason,
                                    stop_reason=done.stop_reason)
            last = RequestOutput(last.request_id, last.prompt, last.prompt_token_ids, [done],
                                 True, last.metrics)
        await asyncio.to_thread(fc.store, req, prepared.params, last)


def adapter_hash(frontend: Any, lora: Any) -> str | None:
    """The sha256 of the LoRA adapter a prepared request runs with (`PreparedRequest.lora`),
    for its cache scope: an adapter changes the answer, so each adapter's answers, and the
    base model's, are kept apart. None for the base, or when the frontend has no cache (the
    hash reads the adapter's files)."""
    if lora is None or getattr(frontend, "_cache", None) is None:
        return None
    return frontend._lora.sha256(lora)


def model_fingerprint_of(frontend: Any) -> str:
    """The fingerprint of the model a frontend answers with. A LoRA adapter merged into the
    weights, or applied to requests that name none, changes every answer, so it is part of it:
    such an LLM never shares cache entries with the base model's."""
    from medrt.embedder import model_fingerprint
    from medrt.lora.adapter import adapter_sha256

    fingerprint = model_fingerprint(frontend.model_dir)
    lora = getattr(frontend, "_lora", None)
    adapter = (lora.merged or lora.default) if lora is not None else None
    if adapter is None or not adapter.lora_path:
        return fingerprint
    combined = f"{fingerprint} {adapter_sha256(adapter.lora_path)}"
    return hashlib.sha256(combined.encode()).hexdigest()[:16]


def attach(frontend: Any, cache: SemanticCache | None) -> FrontendCache | None:
    """The cache bound to `frontend`'s model (model_fingerprint_of), or None without a cache."""
    if cache is None:
        return None
    return FrontendCache(cache, model_fingerprint_of(frontend))
