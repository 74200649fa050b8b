"""OpenAI-compatible HTTP over ServeCore (aiohttp): chat completions, completions, models,
server-sent-event streams, /health and /metrics. Errors use OpenAI's error JSON.

Extra request fields beyond OpenAI's are vLLM's sampling extras (top_k, min_p, ...) and
``medical_template``, ``cache`` and ``patient_context`` (the semantic cache); responses add
``medical_category`` and ``medrt_fingerprint`` (with ``cache`` on a cache hit). Any other
unknown field is refused (400 naming it) rather than silently ignored.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from medrt.serve.auth import UNAUTHENTICATED, Tenant
from medrt.serve.core import Delta, RunningRequest, ServeCore, map_engine_error
from medrt.serve.errors import ServeError, invalid
from medrt.serve.metrics import CONTENT_TYPE
from medrt.serve.request import ServeRequest

MAX_BODY_BYTES = 64 << 20  # large bodies reach validation and get a 400 naming the field

_VLLM_EXTRAS = {"top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos",
                "stop_token_ids", "skip_special_tokens", "include_stop_str_in_output"}
_COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options",
           "stop", "seed", "frequency_penalty", "presence_penalty", "user", "medical_template",
           "request_id", "cache", "patient_context"} | _VLLM_EXTRAS
_CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "logprobs", "top_logprobs",
                          "add_generation_prompt"}
_COMPLETION_FIELDS = _COMMON | {"prompt", "logprobs", "echo", "best_of", "suffix"}
_SAMPLING_NAMES = {"max_tokens", "temperature", "top_p", "n", "stop", "seed",
                   "frequency_penalty", "presence_penalty"} | _VLLM_EXTRAS


def _error(e: ServeError) -> web.Response:
    return web.json_response(e.openai_json(), status=e.http_status)


# aiohttp's own refusals (no such route, a method the route does not take) as OpenAI error JSON,
# which OpenAI clients parse, rather than aiohttp's plain text.
_ROUTE_ERRORS = {404: "NOT_FOUND", 405: "INVALID_ARGUMENT"}


@web.middleware
async def _json_route_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status not in _ROUTE_ERRORS:
            raise
        err = ServeError(_ROUTE_ERRORS[e.status], f"{request.method} {request.path}: {e.reason}")
        return web.json_response(err.openai_json(), status=e.status)


async def _body(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ServeError("INVALID_ARGUMENT", f"body: is larger than the limit of "
                         f"{MAX_BODY_BYTES} bytes", "body", http_status=413) from None
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise invalid("body", f"is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise invalid("body", f"is not valid JSON: {e}") from None
    except RecursionError:
        raise invalid("body", "nests arrays or objects too deeply") from None
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    for name in body:
        if name not in allowed:
            raise invalid(name, "is not a field this server knows")
    return body


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k in _SAMPLING_NAMES and v is not None}
    if body.get("max_completion_tokens") is not None:
        out["max_tokens"] = body["max_completion_tokens"]
    return out


def _check_streaming_options(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream", "must be a boolean")
    opts = body.get("stream_options")
    if opts is None:
        opts = {}
    elif not isinstance(opts, dict):
        raise invalid("stream_options", "must be an object")
    elif not stream:  # as OpenAI and vLLM: options of a stream that is not one are a mistake
        raise invalid("stream_options", "needs \"stream\": true")
    return stream, bool(opts.get("include_usage"))


class HttpFrontend:
    def __init__(self, core: ServeCore, authenticate: Callable[[str | None], Tenant],
                 metrics_auth: bool) -> None:
        self.core = core
        self._authenticate = authenticate
        self._metrics_auth = metrics_auth
        self.app = web.Application(client_max_size=MAX_BODY_BYTES,
                                   middlewares=[_json_route_errors])
        self.app.router.add_post("/v1/chat/completions", self.chat_completions)
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_get("/v1/models/{model}", self.model)
        self.app.router.add_get("/health", self.health)
        self.app.router.add_get("/metrics", self.metrics)

    def _tenant(self, request: web.Request) -> Tenant:
        return self._authenticate(request.headers.get("Authorization"))

    async def health(self, request: web.Request) -> web.Response:
        if self.core.ready:
            return web.json_response({"status": "ok", "model": self.core.model_name})
        state = "draining" if self.core.draining else "loading"
        return web.json_response({"status": state}, status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        if self._metrics_auth:
            try:
                self._tenant(request)
            except ServeError as e:
                return _error(e)
        return web.Response(body=self.core.metrics.render(),
                            headers={"Content-Type": CONTENT_TYPE})

    def _models(self, request: web.Request) -> list[dict[str, Any]]:
        """The models this request's tenant may use, as OpenAI's model objects."""
        tenant = self._tenant(request)
        self.core.check_ready()
        now, base = int(time.time()), self.core.model_name
        models = []
        for name in self.core.served_models(tenant):  # only what this tenant may use
            entry = {"id": name, "object": "model", "created": now, "owned_by": "medrt",
                     "max_model_len": self.core.llm.max_model_len}
            if name != base:  # a LoRA adapter: a model of its own over the base, as in vLLM
                entry["parent"] = base
            models.append(entry)
        return models

    async def models(self, request: web.Request) -> web.Response:
        try:
            return web.json_response({"object": "list", "data": self._models(request)})
        except ServeError as e:
            return _error(e)

    async def model(self, request: web.Request) -> web.Response:
        """GET /v1/models/{model}: one model, 404 when this tenant has no such model."""
        name = request.match_info["model"]
        try:
            for entry in self._models(request):
                if entry["id"] == name:
                    return web.json_response(entry)
            raise ServeError("NOT_FOUND", f"model: {name!r} is not a model this server "
                             "serves", "model")
        except ServeError as e:
            return _error(e)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        tenant: Tenant | None = None
        try:
            tenant = self._tenant(request)
            body = await _body(request, _CHAT_FIELDS)
            stream, usage = _check_streaming_options(body)
            messages = body.get("messages")
            if not isinstance(messages, list):
                raise invalid("messages", "must be a list of {role, content} objects")
            sampling = _sampling(body)
            logprobs = body.get("logprobs")
            if logprobs is not None and not isinstance(logprobs, bool):
                raise invalid("logprobs", "must be a boolean")
            if logprobs:
                sampling["logprobs"] = body.get("top_logprobs") or 0
            elif body.get("top_logprobs"):
                raise invalid("top_logprobs", "needs logprobs: true")
            add_gen = body.get("add_generation_prompt", True)
            if not isinstance(add_gen, bool):
                raise invalid("add_generation_prompt", "must be a boolean")
            req = ServeRequest("chat", model=_str(body, "model"), messages=messages,
                               sampling=sampling, request_id=_str(body, "request_id"),
                               medical_template=_str(body, "medical_template"),
                               add_generation_prompt=add_gen,
                               default_max_tokens_to_context=True, **_cache_fields(body))
            rr = await self.core.start(tenant, req)
        except Exception as e:  # noqa: BLE001 - before the response starts: a JSON error
            return self._refused(tenant, e)
        return await _respond(request, rr, "chat", stream, usage)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        tenant: Tenant | None = None
        try:
            tenant = self._tenant(request)
            body = await _body(request, _COMPLETION_FIELDS)
            stream, usage = _check_streaming_options(body)
            if body.get("echo"):
                raise invalid("echo", "is not supported")
            if body.get("best_of") not in (None, 1):
                raise invalid("best_of", "only 1 is supported")
            if body.get("suffix") is not None:
                raise invalid("suffix", "is not supported")
            sampling = _sampling(body)
            if body.get("logprobs") is not None:
                sampling["logprobs"] = body["logprobs"]
            req = ServeRequest("generate", model=_str(body, "model"), sampling=sampling,
                               request_id=_str(body, "request_id"),
                               medical_template=_str(body, "medical_template"),
                               default_max_tokens_to_context=True, **_cache_fields(body))
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
                req.prompt_token_ids = prompt
            elif isinstance(prompt, str):
                req.prompt = prompt
            else:
                raise invalid("prompt", "must be a string or a list of token ids "
                              "(one prompt per request)")
            rr = await self.core.start(tenant, req)
        except Exception as e:  # noqa: BLE001
            return self._refused(tenant, e)
        return await _respond(request, rr, "completion", stream, usage)

    def _refused(self, tenant: Tenant | None, e: Exception) -> web.Response:
        """A request that failed before it started: counted, and answered with error JSON."""
        err = map_engine_error(e)
        self.core.count_failure(UNAUTHENTICATED if tenant is None else tenant.name, err.code)
        return _error(err)


def _cache_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The semantic cache's request fields; checked in check_shape."""
    return {"cache": _str(body, "cache") or "auto",
            "patient_context": (False if body.get("patient_context") is None
                                else body["patient_context"])}


def _str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise invalid(name, "must be a string")
    return value


def _usage(rr: RunningRequest) -> dict[str, Any]:
    u = rr.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens}}


def _system_fingerprint(rr: RunningRequest) -> str:
    fp = rr.fingerprint
    return f"medrt-{fp['medrt_version']}-{fp['weights_sha256'][:16]}"


def _chat_logprobs(d: Delta) -> dict[str, Any] | None:
    if d.logprobs is None:
        return None
    content = []
    for _tid, lp, token, top in d.logprobs:
        tops = [{"token": s, "logprob": v, "bytes": list(s.encode())} for _t, v, s in top]
        content.append({"token": token, "logprob": lp, "bytes": list(token.encode()),
                        "top_logprobs": tops})
    return {"content": content}


def _completion_logprobs(d: Delta) -> dict[str, Any] | None:
    if d.logprobs is None:
        return None
    tokens, values, tops = [], [], []
    for _tid, lp, token, top in d.logprobs:
        tokens.append(token)
        values.append(lp)
        tops.append({s: v for _t, v, s in top})
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops}


def _head(rr: RunningRequest, kind: str, chunk: bool) -> dict[str, Any]:
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    obj = ("chat.completion" if kind == "chat" else "text_completion") + (
        ".chunk" if chunk and kind == "chat" else "")
    return {"id": f"{prefix}-{rr.request_id}", "object": obj, "created": int(time.time()),
            "model": rr.core.model_name, "system_fingerprint": _system_fingerprint(rr),
            "medical_category": rr.category or None}


async def _respond(request: web.Request, rr: RunningRequest, kind: str, stream: bool,
                   include_usage: bool) -> web.StreamResponse:
    if not stream:
        text, token_ids, logprobs = [], [], []
        last: Delta | None = None
        try:
            async with contextlib.aclosing(rr.events()) as events:
                async for d in events:
                    text.append(d.text)
                    token_ids.extend(d.token_ids)
                    if d.logprobs is not None:
                        logprobs.extend(d.logprobs)
                    last = d
        except Exception as e:  # noqa: BLE001
            return _error(map_engine_error(e))
        whole = Delta("".join(text), token_ids, logprobs if last and last.logprobs is not None
                      else None, last.finish_reason if last else None)
        body = _head(rr, kind, chunk=False)
        choice: dict[str, Any] = {"index": 0, "finish_reason": whole.finish_reason,
                                  "token_ids": whole.token_ids}
        if kind == "chat":
            choice["message"] = {"role": "assistant", "content": whole.text}
            choice["logprobs"] = _chat_logprobs(whole)
        else:
            choice["text"] = whole.text
            choice["logprobs"] = _completion_logprobs(whole)
        body.update(choices=[choice], usage=_usage(rr), medrt_fingerprint=rr.fingerprint)
        return web.json_response(body)

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)

    async def send(obj: Any) -> None:
        data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
        await resp.write(f"data: {data}\n\n".encode())

    first = True
    try:
        async with contextlib.aclosing(rr.events()) as events:
            async for d in events:
                chunk = _head(rr, kind, chunk=True)
                if kind == "chat":
                    delta: dict[str, Any] = {"content": d.text}
                    if first:
                        delta["role"] = "assistant"
                    choice = {"index": 0, "delta": delta, "logprobs": _chat_logprobs(d),
                              "finish_reason": d.finish_reason, "token_ids": d.token_ids}
                else:
                    choice = {"index": 0, "text": d.text, "logprobs": _completion_logprobs(d),
                              "finish_reason": d.finish_reason, "token_ids": d.token_ids}
                first = False
                chunk["choices"] = [choice]
                if d.finish_reason is not None:
                    chunk["medrt_fingerprint"] = rr.fingerprint
                await send(chunk)
        if include_usage:
            chunk = _head(rr, kind, chunk=True)
            chunk.update(choices=[], usage=_usage(rr))
            await send(chunk)
    except ConnectionError:
        # The client went away; leaving the aclosing block aborted the engine request.
        return resp
    except Exception as e:  # noqa: BLE001 - the stream has begun: the error is its last event
        await send(map_engine_error(e).openai_json())
    await send("[DONE]")
    await resp.write_eof()
    return resp
