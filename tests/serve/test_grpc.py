"""The gRPC service through stock grpcio clients: unary and streaming, chat, tokenize, model
info, health and reflection through their own stubs, and bad input as INVALID_ARGUMENT with a
google.rpc.BadRequest naming the field."""

from __future__ import annotations

import math
from collections.abc import Iterator

import grpc
import medrt
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from helpers.serve_server import ServerThread
from medrt.v1 import medrt_pb2, medrt_pb2_grpc

TIMEOUT = 30


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> medrt_pb2_grpc.MedrtStub:
    return medrt_pb2_grpc.MedrtStub(channel)


def _greedy(n: int, **kw: object) -> medrt_pb2.SamplingParams:
    return medrt_pb2.SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


def test_generate_matches_the_python_api(stub: medrt_pb2_grpc.MedrtStub,
                                         server: ServerThread) -> None:
    resp = stub.Generate(medrt_pb2.GenerateRequest(prompt="The patient reports chest pain",
                                                   sampling=_greedy(12)), timeout=TIMEOUT)
    llm = server.server.core.llm
    ref = []

    async def collect() -> None:
        async for out in llm.generate("The patient reports chest pain",
                                      medrt.SamplingParams(temperature=0.0, max_tokens=12,
                                                           ignore_eos=True)):
            ref.append(out)
    server.call(collect())
    assert list(resp.token_ids) == ref[-1].outputs[0].token_ids
    assert resp.text == ref[-1].outputs[0].text
    assert resp.finish_reason == "length"
    assert resp.usage.completion_tokens == 12
    assert resp.usage.prompt_tokens == len(ref[-1].prompt_token_ids)
    assert resp.request_id


def test_stream_concatenates_to_the_unary_answer(stub: medrt_pb2_grpc.MedrtStub) -> None:
    req = medrt_pb2.GenerateRequest(prompt="Metformin is", sampling=_greedy(10, logprobs=2))
    unary = stub.Generate(req, timeout=TIMEOUT)
    msgs = list(stub.GenerateStream(req, timeout=TIMEOUT))
    assert len(msgs) > 1
    assert "".join(m.text for m in msgs) == unary.text
    assert [t for m in msgs for t in m.token_ids] == list(unary.token_ids)
    assert [m.finish_reason for m in msgs[:-1]] == [""] * (len(msgs) - 1)
    assert msgs[-1].finish_reason == "length" and msgs[-1].usage.completion_tokens == 10
    lps = [lp for m in msgs for lp in m.logprobs]
    assert len(lps) == 10
    for tok, lp in zip(unary.token_ids, lps):
        assert lp.token_id == tok and lp.logprob <= 0 and 1 <= len(lp.top) <= 3
        # greedy: the chosen token is the most likely one
        assert lp.top[0].token_id == tok and math.isclose(lp.top[0].logprob, lp.logprob)
        assert lp.text == lp.top[0].text


def test_chat_uses_the_chat_template(stub: medrt_pb2_grpc.MedrtStub,
                                     server: ServerThread) -> None:
    msgs = [medrt_pb2.ChatMessage(role="user", content="Hello")]
    resp = stub.Chat(medrt_pb2.ChatRequest(messages=msgs, sampling=_greedy(6)), timeout=TIMEOUT)
    tok = server.server.core.llm.tokenizer
    rendered = tok.render_chat([{"role": "user", "content": "Hello"}])
    assert resp.usage.prompt_tokens == len(tok.encode(rendered, add_special_tokens=False))
    streamed = list(stub.ChatStream(medrt_pb2.ChatRequest(messages=msgs, sampling=_greedy(6)),
                                    timeout=TIMEOUT))
    assert [t for m in streamed for t in m.token_ids] == list(resp.token_ids)


def test_tokenize_and_model_info(stub: medrt_pb2_grpc.MedrtStub, server: ServerThread) -> None:
    tok = server.server.core.llm.tokenizer
    resp = stub.Tokenize(medrt_pb2.TokenizeRequest(prompt="Take ibuprofen with food"),
                         timeout=TIMEOUT)
    assert list(resp.token_ids) == tok.encode("Take ibuprofen with food")
    assert resp.count == len(resp.token_ids) and resp.max_model_len == 512
    # a text longer than the context is counted (that is how a client learns it is too long)
    long = stub.Tokenize(medrt_pb2.TokenizeRequest(prompt="word " * 600), timeout=TIMEOUT)
    assert long.count == len(tok.encode("word " * 600)) > long.max_model_len
    info = stub.ModelInfo(medrt_pb2.ModelInfoRequest(), timeout=TIMEOUT)
    assert info.model == "tiny-llama" and info.max_model_len == 512 and info.vocab_size == 320
    assert info.weight_types == ["F32"] and len(info.weights_sha256) == 64
    assert info.medrt_version == medrt.__version__ and info.kv_blocks_total > 0


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "medrt.v1.Medrt"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = list(refl.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="medrt.v1.Medrt"),
    ]), timeout=TIMEOUT))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"medrt.v1.Medrt", "grpc.health.v1.Health"} <= names
    from google.protobuf import descriptor_pb2

    fd = descriptor_pb2.FileDescriptorProto.FromString(
        answers[1].file_descriptor_response.file_descriptor_proto[0])
    assert fd.package == "medrt.v1"
    assert [m.name for m in fd.service[0].method] == [
        "Generate", "GenerateStream", "Chat", "ChatStream", "Tokenize", "ModelInfo", "Abort"]


def _bad_request_field(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status details"
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            return br.field_violations[0].field
    raise AssertionError("no BadRequest detail")


_USER = [medrt_pb2.ChatMessage(role="user", content="hi")]


@pytest.mark.parametrize("method,request_,field", [
    ("Generate", medrt_pb2.GenerateRequest(prompt="hi", sampling=medrt_pb2.SamplingParams(
        max_tokens=-3)), "sampling.max_tokens"),
    ("Generate", medrt_pb2.GenerateRequest(prompt="hi", sampling=medrt_pb2.SamplingParams(
        max_tokens=10**12)), "sampling.max_tokens"),
    ("Generate", medrt_pb2.GenerateRequest(prompt="hi", sampling=medrt_pb2.SamplingParams(
        temperature=float("nan"))), "sampling.temperature"),
    ("Generate", medrt_pb2.GenerateRequest(prompt="hi", sampling=medrt_pb2.SamplingParams(
        temperature=-1)), "sampling.temperature"),
    ("Generate", medrt_pb2.GenerateRequest(prompt="hi", sampling=medrt_pb2.SamplingParams(
        top_p=0)), "sampling.top_p"),
    ("Generate", medrt_pb2.GenerateRequest(prompt="hi", sampling=medrt_pb2.SamplingParams(
        top_p=1.5)), "sampling.top_p"),
    ("Generate", medrt_pb2.GenerateRequest(prompt="hi", model="gpt-17"), "model"),
    ("Generate", medrt_pb2.GenerateRequest(prompt="word " * 600), "prompt"),
    ("Generate", medrt_pb2.GenerateRequest(prompt="x" * (10 << 20)), "prompt"),
    ("Generate", medrt_pb2.GenerateRequest(prompt=""), "prompt"),
    ("Generate", medrt_pb2.GenerateRequest(prompt_token_ids=medrt_pb2.TokenIds(ids=[5, 9999])),
     "prompt_token_ids[1]"),
    ("Generate", medrt_pb2.GenerateRequest(prompt="hi", medical_template="cardiology"),
     "medical_template"),
    ("Chat", medrt_pb2.ChatRequest(), "messages"),
    ("Chat", medrt_pb2.ChatRequest(messages=[medrt_pb2.ChatMessage(role="wizard",
                                                                   content="hi")]),
     "messages[0].role"),
    ("Chat", medrt_pb2.ChatRequest(messages=_USER, sampling=medrt_pb2.SamplingParams(n=2)),
     "sampling.n"),
    ("Generate", medrt_pb2.GenerateRequest(prompt="hi", sampling=medrt_pb2.SamplingParams(
        stop_token_ids=[10**9])), "sampling.stop_token_ids"),
])
def test_bad_input_is_invalid_argument_naming_the_field(stub: medrt_pb2_grpc.MedrtStub,
                                                        method: str, request_: object,
                                                        field: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request_, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert _bad_request_field(info.value) == field
    # ... and the server keeps serving
    ok = stub.Generate(medrt_pb2.GenerateRequest(prompt="hi", sampling=_greedy(2)),
                       timeout=TIMEOUT)
    assert len(ok.token_ids) == 2


def _raw(channel: grpc.Channel, method: str, payload: bytes) -> grpc.RpcError:
    call = channel.unary_unary(f"/medrt.v1.Medrt/{method}", request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as info:
        call(payload, timeout=TIMEOUT)
    return info.value


def test_unknown_field_is_refused(channel: grpc.Channel) -> None:
    payload = medrt_pb2.GenerateRequest(prompt="hi").SerializeToString()
    payload += bytes([(15 << 3) | 0, 1])  # field 15, varint 1: unknown to the server
    err = _raw(channel, "Generate", payload)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request_field(err) == "#15"


def test_invalid_utf8_is_refused(channel: grpc.Channel) -> None:
    # field 2 (prompt), length-delimited, bytes that are not UTF-8
    err = _raw(channel, "Generate", bytes([(2 << 3) | 2, 3, 0xFF, 0xFE, 0x41]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request_field(err) == "request" and "UTF-8" in err.details()
    # the server keeps serving
    stub = medrt_pb2_grpc.MedrtStub(channel)
    assert stub.Generate(medrt_pb2.GenerateRequest(prompt="hi", sampling=_greedy(1)),
                         timeout=TIMEOUT).token_ids
