"""A KV pool smaller than the context: what a request can never fit is bad input (400 /
INVALID_ARGUMENT naming what to shorten), not a full cache (429, which OpenAI clients retry),
and an OpenAI request without max_tokens runs to where the pool ends."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable

import grpc
import openai
import pytest
from helpers.serve_server import ServerThread
from medrt.v1 import medrt_pb2, medrt_pb2_grpc

MODEL = "tiny-llama"
BLOCKS, BLOCK = 4, 16  # the pool holds 64 positions; the context is 512 tokens


@pytest.fixture(scope="module")
def small(start_server: Callable[..., ServerThread]) -> ServerThread:
    return start_server(num_kv_blocks=BLOCKS)


@pytest.fixture(scope="module")
def client(small: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=small.http_base + "/v1", api_key="unused", timeout=30,
                         max_retries=0)


def test_the_pool_is_smaller_than_the_context(small: ServerThread) -> None:
    assert small.server.core.llm.max_model_len == 512
    assert small.server.core.kv_tokens == BLOCKS * BLOCK == small.stats()["num_blocks"] * BLOCK


def test_the_warning_at_startup(start_server: Callable[..., ServerThread],
                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="medrt.serve"):
        st = start_server(num_kv_blocks=2)
    st.stop()
    assert any("the KV cache holds 32 positions, fewer than the context (512 tokens)"
               in r.getMessage() for r in caplog.records), caplog.text


def test_no_max_tokens_runs_to_the_end_of_the_pool(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                          temperature=0, extra_body={"ignore_eos": True})
    u = resp.usage
    assert resp.choices[0].finish_reason == "length"
    assert u.prompt_tokens + u.completion_tokens == BLOCKS * BLOCK + 1  # the last needs no slot
    stream = list(client.completions.create(model=MODEL, prompt="hi", temperature=0, stream=True,
                                            extra_body={"ignore_eos": True}))
    assert stream[-1].choices[0].finish_reason == "length"


def test_max_tokens_beyond_the_pool_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=100)
    body = info.value.body
    assert body["param"] == "max_tokens" and body["type"] == "invalid_request_error", body
    assert "the server's KV cache holds 64" in body["message"] and "at most" in body["message"]
    # the largest max_tokens the message allows runs
    most = int(body["message"].rsplit("at most ", 1)[1])
    ok = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                        max_tokens=most, temperature=0,
                                        extra_body={"ignore_eos": True})
    assert ok.usage.completion_tokens == most


def test_a_prompt_beyond_the_pool_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=list(range(3, 3 + 70)), max_tokens=1)
    assert info.value.body["param"] == "prompt", info.value.body
    assert "70 tokens" in info.value.body["message"]


def test_grpc_names_the_field(small: ServerThread) -> None:
    with grpc.insecure_channel(small.grpc_target) as ch:
        stub = medrt_pb2_grpc.MedrtStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(medrt_pb2.GenerateRequest(
                prompt="hi", sampling=medrt_pb2.SamplingParams(max_tokens=100)), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sampling.max_tokens" in info.value.details()


def test_refusals_are_counted(small: ServerThread, client: openai.OpenAI) -> None:
    def failures() -> float:
        with urllib.request.urlopen(small.http_base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith("medrt:request_failure_total{") and \
                    'code="INVALID_ARGUMENT"' in line and 'tenant="anonymous"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = failures()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=100)
    for data in (b"{not json", json.dumps({"model": MODEL, "frobnicate": 1}).encode()):
        req = urllib.request.Request(small.http_base + "/v1/completions", data=data,
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=30)
        assert info.value.code == 400
    assert failures() == before + 3
