"""Requests that end early: client cancel, deadline, Abort, a full queue, tenant limits. Each
must free its KV blocks (the pool's free count returns to where it started) and leave the
server serving."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import openai
import pytest
from helpers.serve_server import ServerThread
from medrt.serve.auth import add_key
from medrt.v1 import medrt_pb2, medrt_pb2_grpc

LONG = medrt_pb2.SamplingParams(max_tokens=1000, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerThread], medium_llama: Path) -> ServerThread:
    return start_server(model=str(medium_llama), served_model_name="medium", max_model_len=1024,
                        max_num_seqs=2, max_queued_requests=1)


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[medrt_pb2_grpc.MedrtStub]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield medrt_pb2_grpc.MedrtStub(ch)


def _wait(cond: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _settled(server: ServerThread, free_at_start: int) -> None:
    _wait(lambda: server.stats()["free_blocks"] == free_at_start
          and server.stats()["num_running"] == 0
          and server.server.core.admission.num_running == 0, "the KV blocks to be freed")


def _long(prompt: str, request_id: str = "") -> medrt_pb2.GenerateRequest:
    return medrt_pb2.GenerateRequest(prompt=prompt, sampling=LONG, request_id=request_id)


def _holding(prompt: str, request_id: str = "") -> medrt_pb2.GenerateRequest:
    """A request that keeps its slot until cancelled, however fast the machine: with 20
    logprobs per token its stream outgrows the HTTP/2 flow-control window of a client that
    stops reading, so the servicer waits to write and the request stays running."""
    sampling = medrt_pb2.SamplingParams()
    sampling.CopyFrom(LONG)
    sampling.logprobs = 20
    return medrt_pb2.GenerateRequest(prompt=prompt, sampling=sampling, request_id=request_id)


def test_client_cancel_frees_blocks(server: ServerThread, stub: medrt_pb2_grpc.MedrtStub) -> None:
    free = server.stats()["free_blocks"]
    call = stub.GenerateStream(_long("The patient reports chest pain"), timeout=180)
    first = next(call)
    assert first.token_ids
    assert server.stats()["free_blocks"] < free  # the request holds blocks now
    call.cancel()
    _settled(server, free)
    assert server.server.core.admission.num_running == 0


def test_deadline_is_deadline_exceeded_and_frees_blocks(server: ServerThread,
                                                        stub: medrt_pb2_grpc.MedrtStub) -> None:
    free = server.stats()["free_blocks"]
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(_long("Metformin is"), timeout=0.05)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _settled(server, free)


def test_server_side_deadline_on_a_stream(server: ServerThread,
                                          stub: medrt_pb2_grpc.MedrtStub) -> None:
    free = server.stats()["free_blocks"]
    call = stub.GenerateStream(_long("Vaccination prevents"), timeout=0.1)
    with pytest.raises(grpc.RpcError) as info:
        for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _settled(server, free)


def test_abort_by_request_id(server: ServerThread, stub: medrt_pb2_grpc.MedrtStub) -> None:
    free = server.stats()["free_blocks"]
    call = stub.GenerateStream(_long("Take ibuprofen", request_id="ward-7-q1"), timeout=180)
    next(call)
    assert stub.Abort(medrt_pb2.AbortRequest(request_id="ward-7-q1"), timeout=10).aborted
    with pytest.raises(grpc.RpcError) as info:
        for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.CANCELLED
    assert not stub.Abort(medrt_pb2.AbortRequest(request_id="ward-7-q1"), timeout=10).aborted
    _settled(server, free)


def test_full_queue_is_resource_exhausted(server: ServerThread,
                                          stub: medrt_pb2_grpc.MedrtStub) -> None:
    free = server.stats()["free_blocks"]
    running = [stub.GenerateStream(_holding(f"Question {i}"), timeout=180) for i in range(2)]
    for call in running:
        next(call)
    queued = stub.GenerateStream(_long("Question 3"), timeout=180)
    _wait(lambda: server.server.core.admission.num_waiting == 1, "the third request to queue")
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(_long("Question 4"), timeout=120)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in info.value.details()
    client = openai.OpenAI(base_url=server.http_base + "/v1", api_key="-", max_retries=0,
                           timeout=120)
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model="medium", prompt="Question 5", max_tokens=5)
    for call in [*running, queued]:
        call.cancel()
    _settled(server, free)
    assert server.server.core.admission.num_waiting == 0
    ok = stub.Generate(medrt_pb2.GenerateRequest(prompt="hi", sampling=medrt_pb2.SamplingParams(
        max_tokens=2)), timeout=120)
    assert len(ok.token_ids) >= 1


def test_http_client_disconnect_frees_blocks(server: ServerThread) -> None:
    free = server.stats()["free_blocks"]
    client = openai.OpenAI(base_url=server.http_base + "/v1", api_key="-", max_retries=0,
                           timeout=120)
    stream = client.chat.completions.create(
        model="medium", messages=[{"role": "user", "content": "hi"}], stream=True,
        max_tokens=1000, temperature=0, extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content is not None:
            break
    stream.close()
    _settled(server, free)


def test_tenant_concurrency_limit(start_server: Callable[..., ServerThread], medium_llama: Path,
                                  tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    solo = add_key("solo", keys, max_concurrency=1)
    other = add_key("other", keys)
    nested = add_key("solo/icu", keys)  # a name that extends another with "/"
    st = start_server(model=str(medium_llama), served_model_name="medium", max_model_len=1024,
                      api_keys=str(keys), max_num_seqs=4, max_queued_requests=0)
    with grpc.insecure_channel(st.grpc_target) as ch:
        stub = medrt_pb2_grpc.MedrtStub(ch)
        auth_solo = (("authorization", f"Bearer {solo}"),)
        auth_other = (("authorization", f"Bearer {other}"),)
        first = stub.GenerateStream(_holding("one", request_id="q"), metadata=auth_solo,
                                    timeout=180)
        next(first)
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(_long("two"), metadata=auth_solo, timeout=120)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "tenant 'solo'" in info.value.details()
        three = medrt_pb2.GenerateRequest(prompt="three",
                                          sampling=medrt_pb2.SamplingParams(max_tokens=3))
        ok = stub.Generate(three, metadata=auth_other, timeout=120)
        assert ok.token_ids
        # another tenant cannot abort solo's request, solo can
        assert not stub.Abort(medrt_pb2.AbortRequest(request_id="q"), metadata=auth_other,
                              timeout=10).aborted
        # nor can "solo" reach "solo/icu"'s request "r1" by spelling it "icu/r1"
        auth_nested = (("authorization", f"Bearer {nested}"),)
        victim = stub.GenerateStream(_holding("four", request_id="r1"), metadata=auth_nested,
                                     timeout=180)
        next(victim)
        assert not stub.Abort(medrt_pb2.AbortRequest(request_id="icu/r1"), metadata=auth_solo,
                              timeout=10).aborted
        assert stub.Abort(medrt_pb2.AbortRequest(request_id="r1"), metadata=auth_nested,
                          timeout=10).aborted
        victim.cancel()
        assert stub.Abort(medrt_pb2.AbortRequest(request_id="q"), metadata=auth_solo,
                          timeout=10).aborted
        first.cancel()
    st.stop()


def test_a_disconnect_loses_nothing_of_anyone_else(server: ServerThread,
                                                   stub: medrt_pb2_grpc.MedrtStub) -> None:
    free = server.stats()["free_blocks"]
    params = medrt_pb2.SamplingParams(max_tokens=200, temperature=0.8, seed=7, ignore_eos=True)
    req = medrt_pb2.GenerateRequest(prompt="Vaccination prevents influenza", sampling=params)
    alone = stub.Generate(req, timeout=180)
    kept = stub.GenerateStream(req, timeout=180)
    dropped = [stub.GenerateStream(_long(f"Question {i}"), timeout=180) for i in range(1)]
    got = list(next(kept).token_ids)
    for call in dropped:
        next(call)
        call.cancel()
    for msg in kept:
        got.extend(msg.token_ids)
    assert got == list(alone.token_ids)
    _settled(server, free)


def test_drain_grace_over_aborts_with_unavailable(start_server: Callable[..., ServerThread],
                                                  medium_llama: Path) -> None:
    st = start_server(model=str(medium_llama), served_model_name="medium", max_model_len=1024,
                      drain_grace_s=0.2)
    with grpc.insecure_channel(st.grpc_target) as ch:
        call = medrt_pb2_grpc.MedrtStub(ch).GenerateStream(_long("The patient"), timeout=180)
        next(call)
        st.loop.call_soon_threadsafe(st.server.begin_drain)
        with pytest.raises(grpc.RpcError) as info:
            for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "grace period" in info.value.details()
    st.call(st.server.wait_stopped())


def test_step_token_budget_reaches_the_engine(start_server: Callable[..., ServerThread]) -> None:
    """--max-num-batched-tokens / ServeConfig.max_num_batched_tokens bounds one engine step:
    a prompt of n tokens under a budget of 8 is prefilled in at least n / 8 steps."""
    import argparse

    from medrt.serve.cli_args import add_serve_parser

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="cmd"))
    assert parser.parse_args(["serve", "--max-num-batched-tokens", "8"]).max_num_batched_tokens == 8
    assert parser.parse_args(["serve"]).max_num_batched_tokens == 2048

    small = start_server(max_num_batched_tokens=8)
    with grpc.insecure_channel(small.grpc_target) as ch:
        stub = medrt_pb2_grpc.MedrtStub(ch)
        prompt = "The patient was admitted with chest pain and shortness of breath. " * 3
        n = stub.Tokenize(medrt_pb2.TokenizeRequest(prompt=prompt), timeout=60).count
        assert n > 24
        steps = small.stats()["steps"]
        stub.Generate(medrt_pb2.GenerateRequest(prompt=prompt, sampling=medrt_pb2.SamplingParams(
            max_tokens=1, temperature=0.0)), timeout=60)
        assert small.stats()["steps"] - steps >= -(-n // 8)


def test_activation_precision_and_kv_cache_dtype_reach_the_engine_and_the_fingerprint(
        start_server: Callable[..., ServerThread]) -> None:
    """--activation-precision and --kv-cache-dtype (ServeConfig's fields) are the engine's, and
    every answer's fingerprint names them (the same weights give other tokens at others)."""
    import argparse

    from medrt.serve.cli_args import add_serve_parser

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="cmd"))
    assert parser.parse_args(["serve"]).activation_precision == "int8"
    args = parser.parse_args(["serve", "--activation-precision", "int8x2"])
    assert args.activation_precision == "int8x2"
    assert parser.parse_args(["serve"]).kv_cache_dtype == "f32"
    assert parser.parse_args(["serve", "--kv-cache-dtype", "f16"]).kv_cache_dtype == "f16"

    st = start_server(activation_precision="int8x2", kv_cache_dtype="f16")
    assert st.server.core.llm.activation_precision == "int8x2"
    assert st.server.core.llm.kv_cache_dtype == "f16"
    with grpc.insecure_channel(st.grpc_target) as ch:
        stub = medrt_pb2_grpc.MedrtStub(ch)
        greedy = medrt_pb2.SamplingParams(max_tokens=2, temperature=0.0)
        out = stub.Generate(medrt_pb2.GenerateRequest(prompt="hi", sampling=greedy), timeout=60)
    assert out.fingerprint.activation_precision == "int8x2"
    assert out.fingerprint.kv_cache_dtype == "f16"
