"""The transport-neutral service: one AsyncLLM, admission, tenants, templates, fingerprints.

``ServeCore.start`` does everything that can fail before a response begins (readiness, model
and permission checks, validation, tokenization, the queue) and raises ``ServeError``; the
``RunningRequest`` it returns then streams the engine's deltas. Both the gRPC servicer and the
HTTP API are thin layers over these two calls, so they behave the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import medrt
from medrt.cache.frontend_cache import conversation_question, template_category
from medrt.cache.scope import sampling_key
from medrt.errors import CapacityError, InvalidRequest, MedrtError
from medrt.medical.conversation import apply_medical_template, resolve_category
from medrt.medical.templates import build_prompt
from medrt.outputs import Logprob
from medrt.serve.admission import Admission
from medrt.serve.auth import Tenant
from medrt.serve.errors import ServeError, invalid
from medrt.serve.fingerprint import WeightsFingerprint
from medrt.serve.metrics import ServeMetrics
from medrt.serve.request import ServeRequest, check_shape, params_in_effect, sampling_params

log = logging.getLogger("medrt.serve")

# How often a request whose adapter slot the engine has not yet freed tries again (about a
# decode step of a small model).
_SLOT_RETRY_S = 0.01


@dataclass(frozen=True)
class CacheKey:
    """What a cached answer is scoped by: tenant, model, the template category (the medical
    category and a hash of what else shapes the prompt) and the answer-changing sampling
    parameters (the seed only when the client chose it)."""

    tenant: str
    model: str
    template: str
    params: str  # JSON of the parameters, sorted keys
    patient_context: bool = False  # the client said the question carries patient data


@dataclass(frozen=True)
class CachedAnswer:
    """An answer as the cache keeps it. `fingerprint` is the one of the request that computed
    it (so a hit can be replayed); `source` says where a hit came from (tier, score)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    fingerprint: dict[str, Any] | None = None
    source: dict[str, Any] | None = None


class CacheHook(Protocol):
    """The semantic cache's seam (ARCHITECTURE.md step 2); medrt.serve.semantic_hook holds
    the implementation over medrt.SemanticCache. ``lookup`` runs before the request is
    queued, on a worker thread; a hit streams back without the engine. ``store`` gets each
    answer that finished by itself (stop or length). ``question`` is the user's question as
    written (the text prompt, or the one user message of a conversation), never the rendered
    template."""

    def lookup(self, key: CacheKey, question: str) -> CachedAnswer | None: ...

    def store(self, key: CacheKey, question: str, answer: CachedAnswer) -> None: ...


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter the server serves by name (``--lora-modules name=path``): a request
    whose ``model`` is ``name`` runs the base model with it (adapter mode)."""

    request: Any  # the medrt.LoRARequest
    sha256: str  # over the adapter's files: part of the fingerprint and the cache scope


@dataclass
class Delta:
    text: str
    token_ids: list[int]
    # per token: (id, logprob, text, [(id, logprob, text) of the top alternatives, best first])
    logprobs: list[tuple[int, float, str, list[tuple[int, float, str]]]] | None
    finish_reason: str | None = None
    stop_reason: str | None = None


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0


@dataclass
class RunningRequest:
    core: ServeCore
    tenant: Tenant
    request_id: str
    engine_request_id: str
    prompt: dict[str, Any]
    params: medrt.SamplingParams
    category: str
    fingerprint: dict[str, Any]
    arrival: float
    queue_time: float
    deadline_s: float | None
    cache_key: CacheKey | None = None
    cache_question: str | None = None
    adapter: Adapter | None = None
    cached_answer: CachedAnswer | None = None  # a cache hit: streamed without the engine
    usage: Usage = field(init=False)
    deadline_hit: bool = False
    aborted_by_client: bool = False

    def __post_init__(self) -> None:
        self.usage = Usage(len(self.prompt["prompt_token_ids"]))

    async def events(self) -> AsyncIterator[Delta]:
        """The completion in deltas; the last has ``finish_reason``. Raises ServeError for a
        deadline or an Abort call, CancelledError when the client went away."""
        core, metrics, tname = self.core, self.core.metrics, self.tenant.name
        if self.cached_answer is not None:
            hit = self.cached_answer
            self.usage.completion_tokens = len(hit.token_ids)
            metrics.request_success.labels(tname, hit.finish_reason).inc()
            metrics.e2e.labels(tname).observe(time.monotonic() - self.arrival)
            core._finish(self, "OK")
            yield Delta(hit.text, list(hit.token_ids), None, hit.finish_reason)
            return
        loop = asyncio.get_running_loop()
        timer = (loop.call_later(max(self.deadline_s, 0.0), self._on_deadline)
                 if self.deadline_s is not None else None)
        last_time: float | None = None
        outcome = "CANCELLED"
        answer: list[str] = []  # what was streamed so far, kept only to store in the cache
        token_ids: list[int] = []
        try:
            lora = None if self.adapter is None else self.adapter.request
            if lora is not None:
                # Loaded here, so that nothing runs between the load and the engine request
                # (which keeps the adapter in its slot): no other request can evict it.
                await core.load_adapter(self)
            gen = core.llm.generate(self.prompt, self.params, self.engine_request_id, delta=True,
                                    lora_request=lora)
            async with contextlib.aclosing(gen):  # closing it aborts the engine request now
                async for out in gen:
                    now = time.monotonic()
                    c = out.outputs[0]
                    n = len(c.token_ids)
                    if n:
                        if last_time is None:
                            metrics.ttft.labels(tname).observe(now - self.arrival)
                        else:
                            for _ in range(n):
                                metrics.itl.labels(tname).observe((now - last_time) / n)
                        last_time = now
                    self.usage.completion_tokens += n
                    self.usage.cached_prompt_tokens = out.num_cached_tokens
                    if c.finish_reason == "abort":
                        raise self._abort_error()
                    if c.finish_reason is not None:
                        # counted before the last delta leaves: a client that goes away right
                        # after it still got a whole answer
                        outcome = "OK"
                        metrics.request_success.labels(tname, c.finish_reason).inc()
                        metrics.e2e.labels(tname).observe(now - self.arrival)
                        if (self.cache_key is not None and core.cache_hook is not None
                                and c.finish_reason in ("stop", "length")):
                            done = CachedAnswer("".join(answer) + c.text, token_ids + list(
                                c.token_ids), c.finish_reason, self.fingerprint)
                            await core.cache_call("store", self.cache_key,
                                                  self.cache_question, done)
                    yield Delta(c.text, list(c.token_ids), _logprobs(c.token_ids, c.logprobs),
                                c.finish_reason,
                                None if c.stop_reason is None else str(c.stop_reason))
                    if self.cache_key is not None:
                        answer.append(c.text)
                        token_ids.extend(c.token_ids)
        except Exception as e:
            outcome = map_engine_error(e).code
            raise
        finally:
            if timer is not None:
                timer.cancel()
            metrics.generation_tokens.labels(tname).inc(self.usage.completion_tokens)
            if outcome != "OK":
                metrics.request_failure.labels(tname, outcome).inc()
            core._finish(self, outcome)

    def _abort_error(self) -> ServeError:
        """Why the engine aborted the request (it aborts only when asked to)."""
        if self.deadline_hit:
            return ServeError("DEADLINE_EXCEEDED",
                              "the deadline passed before the completion finished")
        if self.aborted_by_client or not self.core.draining:
            return ServeError("CANCELLED", "the request was aborted by an Abort call")
        return ServeError("UNAVAILABLE", "the server shut down: the drain's grace period ended "
                          "before the request finished")

    def _on_deadline(self) -> None:
        self.deadline_hit = True
        self.core.llm.abort(self.engine_request_id)


def _engine_request_id(tenant: Tenant, request_id: str) -> str:
    """The engine's id of a tenant's request: the tenant's name quoted, so that no (tenant,
    request id) pair spells another's ("ward/icu" + "r1" against "ward" + "icu/r1"): a
    tenant reaches only its own requests (Abort, "already running")."""
    return f"{urllib.parse.quote(tenant.name, safe='')}/{request_id}"


def _logprobs(token_ids: list[int], entries: list[dict[int, Logprob]] | None
              ) -> list[tuple[int, float, str, list[tuple[int, float, str]]]] | None:
    if entries is None:
        return None
    out = []
    for tid, entry in zip(token_ids, entries):
        chosen = entry[tid]  # present whether or not it ranks among the alternatives
        top = sorted(((t, lp) for t, lp in entry.items() if lp.rank is not None),
                     key=lambda item: item[1].rank or 0)
        out.append((tid, chosen.logprob, chosen.decoded_token or "",
                    [(t, lp.logprob, lp.decoded_token or "") for t, lp in top]))
    return out


class ServeCore:
    def __init__(self, model_name: str, *, max_running: int, max_queued: int,
                 max_prompt_bytes: int = 1 << 20, default_tenant_limit: int = 0,
                 max_loras: int = 0) -> None:
        self.model_name = model_name
        self.llm: medrt.AsyncLLM | None = None
        self.weights: WeightsFingerprint | None = None
        # max_loras: the engine's LoRA adapter slots; a request whose adapter finds none free
        # waits in the queue until one does (0: no adapters served).
        self.admission = Admission(max_running, max_queued, max_loras)
        self.max_prompt_bytes = max_prompt_bytes
        self.default_tenant_limit = default_tenant_limit
        self.draining = False
        self.cache_hook: CacheHook | None = None
        self.adapters: dict[str, Adapter] = {}  # served LoRA adapters by name
        self.metrics = ServeMetrics(self._stats, lambda: self.admission.num_waiting)
        self._running: dict[str, RunningRequest] = {}
        self.kv_tokens: int | None = None  # positions of the whole KV pool (attach)

    # -- lifecycle -------------------------------------------------------------------------

    def attach(self, llm: medrt.AsyncLLM, weights: WeightsFingerprint) -> None:
        self.llm = llm
        self.weights = weights
        stats = llm.stats()
        self.kv_tokens = int(stats["num_blocks"]) * int(stats["block_size"])
        if self.kv_tokens + 1 < llm.max_model_len:
            log.warning(f"the KV cache holds {self.kv_tokens} positions, fewer than the "
                        f"context ({llm.max_model_len} tokens): a request longer than that is "
                        "refused; raise --kv-cache-memory-bytes or lower --max-model-len",
                        extra={"event": "kv_cache_smaller_than_context"})

    @property
    def ready(self) -> bool:
        return self.llm is not None and not self.draining

    def _stats(self) -> dict[str, int] | None:
        return None if self.llm is None else self.llm.stats()

    def abort_all(self) -> None:
        for rr in list(self._running.values()):
            self.llm.abort(rr.engine_request_id)

    # -- requests --------------------------------------------------------------------------

    def check_ready(self) -> None:
        if self.draining:
            raise ServeError("UNAVAILABLE", "the server is draining; send the request to "
                             "another replica")
        if self.llm is None:
            raise ServeError("UNAVAILABLE", "the model is still loading")

    def served_models(self, tenant: Tenant) -> list[str]:
        """The names `tenant` may give as a request's model: the base, then the adapters."""
        names = [self.model_name, *sorted(self.adapters)]
        return [n for n in names if tenant.may_use(n)]

    def check_model(self, tenant: Tenant, model: str, field_name: str = "model"
                    ) -> Adapter | None:
        """Checks that the server can take a request for `model` from `tenant`; returns the
        LoRA adapter that `model` names (None: the base model)."""
        self.check_ready()
        name = model or self.model_name
        adapter = self.adapters.get(name)
        if name != self.model_name and adapter is None:
            served = [self.model_name, *sorted(self.adapters)]
            raise invalid(field_name, f"unknown model {model!r}; this server serves "
                          f"{', '.join(repr(m) for m in served)}")
        if not tenant.may_use(name):
            raise ServeError("PERMISSION_DENIED",
                             f"tenant {tenant.name!r} may not use model {name!r}")
        return adapter

    def count_failure(self, tenant: str, code: str) -> None:
        """A request refused before it started (bad input, auth, a full queue, draining).
        The transports call it for every completion request that fails before ``start``
        returns (tenant "unauthenticated" when no tenant was established); a started request
        counts its own outcome when its events end."""
        self.metrics.request_failure.labels(tenant, code).inc()

    async def start(self, tenant: Tenant, req: ServeRequest,
                    deadline_s: float | None = None) -> RunningRequest:
        arrival = time.monotonic()
        adapter = self.check_model(tenant, req.model)
        check_shape(req, self.max_prompt_bytes)
        request_id = req.request_id or f"req-{uuid.uuid4().hex}"
        engine_id = _engine_request_id(tenant, request_id)
        if engine_id in self._running:
            raise invalid("request_id", f"{request_id!r} is already running")
        prompt, category = self._render(req)
        params = sampling_params(req, self.llm.max_model_len, len(prompt["prompt_token_ids"]),
                                 self.llm.sampling_defaults, self.kv_tokens)
        vocab = int(self.llm.model_config["vocab_size"])
        for t in params.stop_token_ids or []:  # the engine checks too, but only once queued
            if not 0 <= t < vocab:
                raise invalid(f"{req.field_prefix}stop_token_ids", f"{t} is outside the "
                              f"vocabulary [0, {vocab})")
        fp = self.fingerprint(params, req.medical_template, adapter)
        key, question = self._cache_key(tenant, req, category, params, adapter)
        if key is not None and req.cache != "refresh":
            cached = await self.cache_call("lookup", key, question)
            if cached is not None:
                # The fingerprint of the request that computed the answer, with where it
                # came from: replaying that fingerprint gives this answer again.
                hit_fp = {**(cached.fingerprint or fp), "cache": cached.source or {}}
                return RunningRequest(self, tenant, request_id, engine_id, prompt, params,
                                      category, hit_fp, arrival, 0.0, deadline_s, key,
                                      question, adapter, cached)
        limit = tenant.max_concurrency or self.default_tenant_limit
        # A request already queued when a drain begins still runs: it is in flight.
        acquire = self.admission.acquire(tenant.name, limit,
                                         None if adapter is None else adapter.request.lora_name)
        if deadline_s is None:
            queue_time = await acquire
        else:
            try:
                queue_time = await asyncio.wait_for(acquire, deadline_s - (time.monotonic()
                                                                           - arrival))
            except asyncio.TimeoutError:
                raise ServeError("DEADLINE_EXCEEDED", "the deadline passed while the request "
                                 "waited in the queue") from None
            deadline_s -= time.monotonic() - arrival  # what is left for the completion
        self.metrics.queue_time.labels(tenant.name).observe(queue_time)
        self.metrics.prompt_tokens.labels(tenant.name).inc(len(prompt["prompt_token_ids"]))
        rr = RunningRequest(self, tenant, request_id, engine_id, prompt, params, category, fp,
                            arrival, queue_time, deadline_s, key, question, adapter)
        self._running[engine_id] = rr
        return rr

    async def load_adapter(self, rr: RunningRequest) -> None:
        """Loads the request's adapter into an engine slot. Admission counted a free slot, but
        a request whose client went away is aborted by the engine at its next step, and until
        then its adapter cannot leave its slot: retry until it has."""
        while True:
            if rr.deadline_hit or rr.aborted_by_client:  # the engine has no request to abort
                raise rr._abort_error()
            try:
                self.llm.add_lora(rr.adapter.request)
                return
            except CapacityError:
                await asyncio.sleep(_SLOT_RETRY_S)

    async def cache_call(self, what: str, key: CacheKey, *args: Any) -> Any:
        """A cache hook call on a worker thread. A cache that fails (a corrupt file, a bug) is
        logged and treated as a miss: it never fails the request it serves."""
        hook = self.cache_hook
        if hook is None:
            return None
        try:
            return await asyncio.to_thread(getattr(hook, what), key, *args)
        except Exception as e:  # noqa: BLE001 - the answer matters more than the cache
            self.metrics.cache_errors.labels(key.tenant, what).inc()
            log.error(f"semantic cache {what} failed: {type(e).__name__}: {e}",
                      extra={"tenant": key.tenant})
            return None

    def _cache_key(self, tenant: Tenant, req: ServeRequest, category: str,
                   params: medrt.SamplingParams, adapter: Adapter | None
                   ) -> tuple[CacheKey | None, str | None]:
        """The cache scope and the question of a request that may use the cache, else None.

        The question is what the user asked (a text prompt, or the single user message of a
        conversation, as the library's cache takes it); logprob requests, token-id prompts
        and longer conversations do not use the cache."""
        if self.cache_hook is None or req.cache == "bypass" or params.logprobs is not None:
            return None, None
        if req.kind == "chat":
            question, system = conversation_question(req.messages)
        else:
            question, system = req.prompt, []
        if not question:
            return None, None
        shape = [req.kind, system, req.add_generation_prompt, req.medical_template, category,
                 None if adapter is None else adapter.sha256]  # an adapter changes answers
        sampling = sampling_key(params)
        if req.sampling.get("seed") is None:
            sampling.pop("seed", None)  # drawn by the server: not part of what the client asked
        name = self.model_name if adapter is None else adapter.request.lora_name
        key = CacheKey(tenant.name, name, template_category(question, shape),
                       json.dumps(sampling, sort_keys=True), req.patient_context)
        return key, question

    def _finish(self, rr: RunningRequest, outcome: str) -> None:
        if rr.cached_answer is not None or self._running.pop(rr.engine_request_id,
                                                             None) is not None:
            if rr.cached_answer is None:
                self.admission.release(rr.tenant.name, None if rr.adapter is None
                                       else rr.adapter.request.lora_name)
            log.info("request done", extra={"tenant": rr.tenant.name,
                                            "request_id": rr.request_id, "outcome": outcome,
                                            "cached": rr.cached_answer is not None,
                                            "prompt_tokens": rr.usage.prompt_tokens,
                                            "completion_tokens": rr.usage.completion_tokens,
                                            "seconds": round(time.monotonic() - rr.arrival, 4)})

    def abort(self, tenant: Tenant, request_id: str) -> bool:
        rr = self._running.get(_engine_request_id(tenant, request_id))
        if rr is None:
            return False
        rr.aborted_by_client = True
        self.llm.abort(rr.engine_request_id)
        return True

    def _render(self, req: ServeRequest, fit_context: bool = True
                ) -> tuple[dict[str, Any], str]:
        """The engine prompt ({"prompt", "prompt_token_ids"}) and the medical category;
        ``fit_context``: refuse a prompt that leaves the context no room to generate."""
        tok = self.llm.tokenizer
        category = ""
        try:
            if req.kind == "chat":
                messages = req.messages
                if req.medical_template:
                    messages, category = apply_medical_template(messages, req.medical_template)
                # Control tokens spelled in a message are encoded as text (no forged turns).
                text, ids = tok.encode_chat(messages,
                                            add_generation_prompt=req.add_generation_prompt)
                where = req.messages_field
            elif req.prompt_token_ids is not None:
                text, ids, where = None, list(req.prompt_token_ids), req.prompt_field
                vocab = int(self.llm.model_config["vocab_size"])
                for i, t in enumerate(ids):
                    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
                        raise invalid(f"{where}[{i}]", f"{t!r} is outside the vocabulary "
                                      f"[0, {vocab})")
                if req.medical_template:
                    raise invalid("medical_template", "needs a text prompt, not token ids")
            else:
                text, where = req.prompt, req.prompt_field
                if req.medical_template:
                    category = resolve_category(req.medical_template, text)
                    text = build_prompt(text, category)
                ids = tok.encode(text)
        except InvalidRequest as e:
            raise invalid(req.messages_field if req.kind == "chat" else req.prompt_field,
                          str(e)) from None
        if fit_context and len(ids) >= self.llm.max_model_len:
            raise invalid(where, f"the prompt has {len(ids)} tokens; the context is "
                          f"{self.llm.max_model_len} tokens and leaves no room to generate")
        return {"prompt": text, "prompt_token_ids": ids}, category

    def fingerprint(self, params: medrt.SamplingParams, template: str,
                    adapter: Adapter | None = None) -> dict[str, Any]:
        w = self.weights
        return {"model": self.model_name, "weights_sha256": w.weights_sha256,
                "weight_files": dict(w.files), "weight_types": list(w.weight_types),
                "medrt_version": medrt.__version__, "seed": params.seed,
                "sampling": params_in_effect(params), "medical_template": template,
                "lora_name": "" if adapter is None else adapter.request.lora_name,
                "lora_sha256": "" if adapter is None else adapter.sha256,
                **self.llm.engine_settings}

    def tokenize(self, tenant: Tenant, req: ServeRequest) -> list[int]:
        self.check_model(tenant, req.model)
        check_shape(req, self.max_prompt_bytes)
        # Counting tokens is how a client learns that a text is too long: no context check.
        return self._render(req, fit_context=False)[0]["prompt_token_ids"]


def map_engine_error(e: BaseException) -> ServeError:
    """An error raised from the engine while a request ran, as a status."""
    if isinstance(e, ServeError):
        return e
    if isinstance(e, CapacityError):
        return ServeError("RESOURCE_EXHAUSTED", str(e))
    if isinstance(e, InvalidRequest):
        return ServeError("INVALID_ARGUMENT", str(e))
    if isinstance(e, MedrtError):
        return ServeError("UNAVAILABLE", str(e))
    return ServeError("INTERNAL", f"{type(e).__name__}: {e}")
