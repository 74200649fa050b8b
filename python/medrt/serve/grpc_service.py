"""The gRPC face of the service: medrt.v1.Medrt over ServeCore, grpc.health.v1, reflection.

Authentication reads ``authorization: Bearer KEY`` metadata in each method (the health and
reflection services take no token: probes carry none). Errors leave as status codes; bad
input carries a google.rpc.BadRequest naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import medrt
from medrt.serve.auth import UNAUTHENTICATED, Tenant
from medrt.serve.core import Delta, RunningRequest, ServeCore, map_engine_error
from medrt.serve.errors import ServeError, invalid
from medrt.serve.request import ServeRequest
from medrt.v1 import medrt_pb2, medrt_pb2_grpc

SERVICE_NAME = medrt_pb2.DESCRIPTOR.services_by_name["Medrt"].full_name
MAX_MESSAGE_BYTES = 64 << 20  # large prompts reach validation and get INVALID_ARGUMENT

_SAMPLING_PROTO_FIELDS = [f.name for f in medrt_pb2.SamplingParams.DESCRIPTOR.fields]


def _status(e: ServeError) -> status_pb2.Status:
    code = getattr(grpc.StatusCode, e.code)
    status = status_pb2.Status(code=code.value[0], message=e.message)
    if e.field is not None:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=e.field, description=e.message)]))
        status.details.append(detail)
    return status


async def _abort(context: grpc.aio.ServicerContext, e: ServeError) -> None:
    status = _status(e)
    await context.abort(getattr(grpc.StatusCode, e.code), e.message,
                        trailing_metadata=(("grpc-status-details-bin",
                                            status.SerializeToString()),))


def _sampling_from_proto(msg: medrt_pb2.SamplingParams) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _SAMPLING_PROTO_FIELDS:
        fd = msg.DESCRIPTOR.fields_by_name[name]
        if fd.is_repeated:
            values = list(getattr(msg, name))
            if values:
                out[name] = values
        elif msg.HasField(name):
            out[name] = getattr(msg, name)
    return out


def _sampling_to_proto(params: dict[str, Any]) -> medrt_pb2.SamplingParams:
    msg = medrt_pb2.SamplingParams()
    for name, value in params.items():
        if value is None or name not in _SAMPLING_PROTO_FIELDS:
            continue
        if isinstance(value, list):
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)
    return msg


def _check_unknown_fields(msg: Any, where: str = "") -> None:
    """Fields this server does not know (a newer client) are refused, not silently dropped."""
    from google.protobuf import unknown_fields

    unknown = unknown_fields.UnknownFieldSet(msg)
    if len(unknown):
        raise invalid(f"{where}#{unknown[0].field_number}",
                      f"field number {unknown[0].field_number} is unknown to this server")
    for fd, value in msg.ListFields():
        if (fd.message_type is not None and not fd.is_repeated
                and not fd.message_type.GetOptions().map_entry):
            _check_unknown_fields(value, f"{where}{fd.name}.")


class Undecodable:
    """What the deserializer hands the servicer for bytes that are not a valid message (e.g. a
    string field holding invalid UTF-8), so that the client gets INVALID_ARGUMENT rather than
    the UNKNOWN grpc would answer."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as e:
            return Undecodable(e)
    return parse


def _decoded(msg: Any) -> Any:
    if isinstance(msg, Undecodable):
        raise invalid("request", f"cannot be parsed: {msg.error}")
    _check_unknown_fields(msg)
    return msg


def _handlers(servicer: medrt_pb2_grpc.MedrtServicer) -> grpc.GenericRpcHandler:
    """The generated servicer's methods, registered with lenient request parsing."""
    service = medrt_pb2.DESCRIPTOR.services_by_name["Medrt"]
    handlers = {}
    for m in service.methods:
        make = (grpc.unary_stream_rpc_method_handler if m.server_streaming
                else grpc.unary_unary_rpc_method_handler)
        handlers[m.name] = make(
            getattr(servicer, m.name),
            request_deserializer=_lenient(getattr(medrt_pb2, m.input_type.name)),
            response_serializer=getattr(medrt_pb2, m.output_type.name).SerializeToString)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _generate_request(msg: medrt_pb2.GenerateRequest) -> ServeRequest:
    _decoded(msg)
    req = ServeRequest("generate", model=msg.model, request_id=msg.request_id,
                       medical_template=msg.medical_template, cache=msg.cache or "auto",
                       patient_context=msg.patient_context,
                       sampling=_sampling_from_proto(msg.sampling), field_prefix="sampling.")
    which = msg.WhichOneof("input")
    if which == "prompt_token_ids":
        req.prompt_token_ids = list(msg.prompt_token_ids.ids)
        req.prompt_field = "prompt_token_ids"
    else:
        req.prompt = msg.prompt
    return req


def _chat_request(msg: medrt_pb2.ChatRequest, check: bool = True) -> ServeRequest:
    if check:
        _decoded(msg)
    return ServeRequest(
        "chat", model=msg.model, request_id=msg.request_id,
        messages=[{"role": m.role, "content": m.content} for m in msg.messages],
        medical_template=msg.medical_template, sampling=_sampling_from_proto(msg.sampling),
        field_prefix="sampling.", cache=msg.cache or "auto", patient_context=msg.patient_context,
        add_generation_prompt=(msg.add_generation_prompt
                               if msg.HasField("add_generation_prompt") else True))


def _fill(msg: Any, d: Delta) -> None:
    msg.text = d.text
    msg.token_ids.extend(d.token_ids)
    for tid, lp, text, top in d.logprobs or []:
        msg.logprobs.append(medrt_pb2.TokenLogprob(
            token_id=tid, logprob=lp, text=text,
            top=[medrt_pb2.TopLogprob(token_id=t, logprob=v, text=s) for t, v, s in top]))


def _finish_fields(msg: Any, rr: RunningRequest, d: Delta) -> None:
    msg.finish_reason = d.finish_reason or ""
    msg.stop_reason = d.stop_reason or ""
    msg.usage.CopyFrom(medrt_pb2.Usage(prompt_tokens=rr.usage.prompt_tokens,
                                       completion_tokens=rr.usage.completion_tokens,
                                       cached_prompt_tokens=rr.usage.cached_prompt_tokens))
    fp = dict(rr.fingerprint)
    sampling = _sampling_to_proto(fp.pop("sampling"))
    source = fp.pop("cache", None)
    cache = medrt_pb2.CacheSource(**source) if source else None
    msg.fingerprint.CopyFrom(medrt_pb2.Fingerprint(sampling=sampling, cache=cache, **fp))


class MedrtServicer(medrt_pb2_grpc.MedrtServicer):
    def __init__(self, core: ServeCore, authenticate: Callable[[str | None], Tenant]) -> None:
        self.core = core
        self._authenticate = authenticate

    def _tenant(self, context: grpc.aio.ServicerContext) -> Tenant:
        header = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value
        return self._authenticate(header)

    async def _run(self, context: grpc.aio.ServicerContext, make: Callable[[], ServeRequest],
                   on_delta: Callable[[RunningRequest, Delta], Awaitable[None]]) -> None:
        """Starts the request and hands each delta to ``on_delta``; errors become statuses.

        The events are consumed inside this coroutine (streams write with context.write, not
        by yielding), so a client that cancels cancels this task, and ``aclosing`` closes the
        request at once: the engine aborts it and its KV blocks and queue slot are freed then,
        not whenever a suspended generator is garbage collected.
        """
        tenant: Tenant | None = None
        rr: RunningRequest | None = None
        try:
            tenant = self._tenant(context)
            req = make()
            rr = await self.core.start(tenant, req, context.time_remaining())
            async with contextlib.aclosing(rr.events()) as events:
                async for d in events:
                    await on_delta(rr, d)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every error leaves as a status
            err = map_engine_error(e)
            if rr is None:  # a started request counted its outcome as its events ended
                self.core.count_failure(UNAUTHENTICATED if tenant is None else tenant.name,
                                        err.code)
            await _abort(context, err)

    async def _unary(self, context: grpc.aio.ServicerContext,
                     make: Callable[[], ServeRequest]) -> medrt_pb2.GenerateResponse:
        resp = medrt_pb2.GenerateResponse()
        text: list[str] = []

        async def add(rr: RunningRequest, d: Delta) -> None:
            if not resp.request_id:
                resp.request_id = rr.request_id
                resp.medical_category = rr.category
            text.append(d.text)
            _fill(resp, d)
            if d.finish_reason is not None:
                _finish_fields(resp, rr, d)

        await self._run(context, make, add)
        resp.text = "".join(text)
        return resp

    async def _stream(self, context: grpc.aio.ServicerContext,
                      make: Callable[[], ServeRequest]) -> None:
        first = True

        async def write(rr: RunningRequest, d: Delta) -> None:
            nonlocal first
            msg = medrt_pb2.GenerateStreamResponse(request_id=rr.request_id)
            if first:
                msg.medical_category = rr.category
                first = False
            _fill(msg, d)
            if d.finish_reason is not None:
                _finish_fields(msg, rr, d)
            await context.write(msg)

        await self._run(context, make, write)

    async def Generate(self, request: Any, context: Any) -> Any:
        return await self._unary(context, lambda: _generate_request(request))

    async def GenerateStream(self, request: Any, context: Any) -> None:
        await self._stream(context, lambda: _generate_request(request))

    async def Chat(self, request: Any, context: Any) -> Any:
        return await self._unary(context, lambda: _chat_request(request))

    async def ChatStream(self, request: Any, context: Any) -> None:
        await self._stream(context, lambda: _chat_request(request))

    async def Tokenize(self, request: Any, context: Any) -> Any:
        try:
            tenant = self._tenant(context)
            _decoded(request)
            if request.WhichOneof("input") == "chat":
                req = _chat_request(request.chat, check=False)
                req.messages_field = "chat.messages"
            else:
                req = ServeRequest("generate", prompt=request.prompt)
            req.model = request.model
            ids = self.core.tokenize(tenant, req)
        except Exception as e:  # noqa: BLE001
            await _abort(context, map_engine_error(e))
        return medrt_pb2.TokenizeResponse(token_ids=ids, count=len(ids),
                                          max_model_len=self.core.llm.max_model_len)

    async def ModelInfo(self, request: Any, context: Any) -> Any:
        try:
            tenant = self._tenant(context)
            self.core.check_model(tenant, _decoded(request).model)
        except Exception as e:  # noqa: BLE001
            await _abort(context, map_engine_error(e))
        llm, w = self.core.llm, self.core.weights
        stats = llm.stats()
        archs = llm.model_config.get("architectures") or [llm.model_config.get("model_type", "")]
        return medrt_pb2.ModelInfoResponse(
            model=self.core.model_name, architecture=str(archs[0] if archs else ""),
            max_model_len=llm.max_model_len, vocab_size=int(llm.model_config["vocab_size"]),
            weight_types=w.weight_types, weights_sha256=w.weights_sha256,
            medrt_version=medrt.__version__,
            kv_block_size=stats["block_size"], kv_blocks_total=stats["num_blocks"],
            lora_adapters=[n for n in self.core.served_models(tenant) if n in self.core.adapters])

    async def Abort(self, request: Any, context: Any) -> Any:
        try:
            tenant = self._tenant(context)
            if not _decoded(request).request_id:
                raise invalid("request_id", "is empty")
        except Exception as e:  # noqa: BLE001
            await _abort(context, map_engine_error(e))
        return medrt_pb2.AbortResponse(aborted=self.core.abort(tenant, request.request_id))


class GrpcFrontend:
    """The grpc.aio server with the Medrt, health and reflection services."""

    def __init__(self, core: ServeCore, authenticate: Callable[[str | None], Tenant]) -> None:
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ])
        self.server.add_generic_rpc_handlers((_handlers(MedrtServicer(core, authenticate)),))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)

    def add_port(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        if credentials is None:
            return self.server.add_insecure_port(address)
        return self.server.add_secure_port(address, credentials)

    async def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
