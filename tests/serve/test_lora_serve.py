"""`medrt serve --lora-modules name=path`: peft adapters served by name over HTTP (the openai
client) and gRPC, in one batch with the base model, each answer identical to the library's
adapter mode on the same weights; listed as models; permissions by name; fingerprinted."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import medrt
import openai
import pytest
from helpers.lora_adapters import build_adapter
from helpers.serve_server import ServerThread
from medrt.serve.auth import hash_key
from medrt.v1 import medrt_pb2, medrt_pb2_grpc

PROMPT = "The patient was admitted with"
# The tiny random model puts almost all mass on one token whatever the adapter, so the
# answers are compared by their top-5 log-probabilities at every step, which each adapter moves
# by several nats.
PARAMS = {"max_tokens": 4, "temperature": 0.0, "ignore_eos": True, "logprobs": 5}
TOL = 2e-3  # same weights and kernels; batches of other shapes may round differently


@pytest.fixture(scope="module")
def adapters(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"cardiology": build_adapter(tiny_llama, root / "cardiology", seed=1),
            "pharmacy": build_adapter(tiny_llama, root / "pharmacy", r=8, seed=2)}


@pytest.fixture(scope="module")
def expected(tiny_llama: Path, adapters: dict[str, Path]) -> dict[str, tuple]:
    """What the library's adapter mode generates for each model name: the token ids and the
    sorted top-5 log-probabilities of each step."""
    params = medrt.SamplingParams(**PARAMS)

    def run(llm: medrt.LLM, lora: medrt.LoRARequest | None) -> tuple[list, list]:
        c = llm.generate(PROMPT, params, lora_request=lora)[0].outputs[0]
        return list(c.token_ids), [sorted(lp.logprob for lp in e.values()) for e in c.logprobs]

    with medrt.LLM(str(tiny_llama), num_threads=1, max_model_len=512,
                   enable_lora=True) as llm:
        out = {"tiny-llama": run(llm, None)}
        for i, (name, path) in enumerate(adapters.items()):
            out[name] = run(llm, medrt.LoRARequest(name, i + 1, str(path)))
    tops = [v[1] for v in out.values()]
    for i, a in enumerate(tops):  # each adapter changes the distribution
        for b in tops[i + 1:]:
            assert not _close(a, b)
    return out


def _close(a: list[list[float]], b: list[list[float]]) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(abs(u - v) < TOL for u, v in zip(x, y)) for x, y in zip(a, b))


def _same(token_ids: list, tops: list, want: tuple[list, list]) -> bool:
    return list(token_ids) == want[0] and _close([sorted(t) for t in tops], want[1])


def _same_http(choice, want: tuple[list, list]) -> bool:
    """OpenAI's top_logprobs map token text to logprob, so tokens that decode to the same
    text (byte pieces of the tiny tokenizer) share one entry: each entry must be one of the
    expected alternatives, and at least 3 of the 5 must be there."""
    tops = [list(t.values()) for t in choice.logprobs.top_logprobs]
    return list(choice.token_ids) == want[0] and len(tops) == len(want[1]) and all(
        len(got) >= 3 and all(any(abs(g - w) < TOL for w in exp) for g in got)
        for got, exp in zip(tops, want[1]))


@pytest.fixture(scope="module")
def lora_server(start_server: Callable[..., ServerThread], adapters: dict[str, Path],
                tmp_path_factory: pytest.TempPathFactory) -> tuple[ServerThread, str, str]:
    keys = tmp_path_factory.mktemp("keys") / "keys"
    everything, pharmacy_only = "medrt-all-wards", "medrt-pharmacy-only"
    keys.write_text(f"sha256:{hash_key(everything)} hospital\n"
                    f"sha256:{hash_key(pharmacy_only)} pharmacy models=pharmacy\n")
    st = start_server(api_keys=str(keys), max_loras=2,
                      lora_modules=tuple(f"{n}={p}" for n, p in adapters.items()))
    yield st, everything, pharmacy_only
    st.stop()


def test_adapters_by_name_match_the_library(lora_server: tuple[ServerThread, str, str],
                                            expected: dict[str, list[int]]) -> None:
    st, key, _ = lora_server
    client = openai.OpenAI(base_url=st.http_base + "/v1", api_key=key, max_retries=0)
    listed = {m.id: m for m in client.models.list().data}
    assert set(listed) == {"tiny-llama", "cardiology", "pharmacy"}
    assert listed["cardiology"].parent == "tiny-llama"

    def complete(model: str):
        return client.completions.create(
            model=model, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=5,
            extra_body={"ignore_eos": True})

    # The base and both adapters at once: one engine batch, each as the library runs it.
    names = ["tiny-llama", "cardiology", "pharmacy"] * 2
    with ThreadPoolExecutor(len(names)) as pool:
        results = list(pool.map(complete, names))
    for name, r in zip(names, results):
        assert _same_http(r.choices[0], expected[name]), name
        fp = r.medrt_fingerprint
        assert fp["lora_name"] == ("" if name == "tiny-llama" else name)
        assert (len(fp["lora_sha256"]) == 64) == (name != "tiny-llama")

    with grpc.insecure_channel(st.grpc_target) as ch:
        stub = medrt_pb2_grpc.MedrtStub(ch)
        meta = (("authorization", f"Bearer {key}"),)
        out = stub.Generate(medrt_pb2.GenerateRequest(
            model="pharmacy", prompt=PROMPT, sampling=medrt_pb2.SamplingParams(
                max_tokens=4, temperature=0, ignore_eos=True, logprobs=5)), timeout=30,
            metadata=meta)
        tops = [[t.logprob for t in lp.top] for lp in out.logprobs]
        assert _same(out.token_ids, tops, expected["pharmacy"])
        assert out.fingerprint.lora_name == "pharmacy"
        info = stub.ModelInfo(medrt_pb2.ModelInfoRequest(), timeout=30, metadata=meta)
        assert list(info.lora_adapters) == ["cardiology", "pharmacy"]
        with pytest.raises(grpc.RpcError) as e:
            stub.Generate(medrt_pb2.GenerateRequest(model="oncology", prompt=PROMPT),
                          timeout=30, metadata=meta)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cardiology" in e.value.details()  # the error lists what is served


def test_tenants_use_only_the_adapters_their_key_names(
        lora_server: tuple[ServerThread, str, str], expected: dict[str, list[int]]) -> None:
    st, _, key = lora_server
    client = openai.OpenAI(base_url=st.http_base + "/v1", api_key=key, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["pharmacy"]
    r = client.completions.create(model="pharmacy", prompt=PROMPT, max_tokens=4,
                                  temperature=0, logprobs=5, extra_body={"ignore_eos": True})
    assert _same_http(r.choices[0], expected["pharmacy"])
    for other in ("cardiology", "tiny-llama"):
        with pytest.raises(openai.PermissionDeniedError):
            client.completions.create(model=other, prompt=PROMPT, max_tokens=2)


def test_bad_lora_modules_are_refused_before_loading(tiny_llama: Path,
                                                     adapters: dict[str, Path]) -> None:
    from medrt.serve.server import ServeConfig, Server

    for spec, message in [("cardiology", "name=path"),
                          (f"tiny-llama={adapters['cardiology']}", "already taken"),
                          (f"x={tiny_llama}", "no adapter_config.json")]:
        with pytest.raises(ValueError, match=message):
            Server(ServeConfig(model=str(tiny_llama), served_model_name="tiny-llama",
                               lora_modules=(spec,)))


# -- one adapter slot: a request for another adapter waits for it ------------------------------

@contextlib.contextmanager
def _holding(st: ServerThread, model: str) -> Iterator[Any]:
    """A stream for `model` that keeps running until the test reads it to the end or cancels
    it: with 20 logprobs per token it outgrows the HTTP/2 flow-control window of a client that
    stops reading, so the servicer waits to write (as in test_lifecycle.py). Its own channel,
    without BDP probing, keeps that window at its initial 64 KiB."""
    with grpc.insecure_channel(st.grpc_target, options=[("grpc.http2.bdp_probe", 0)]) as ch:
        yield medrt_pb2_grpc.MedrtStub(ch).GenerateStream(medrt_pb2.GenerateRequest(
            model=model, prompt=PROMPT, sampling=medrt_pb2.SamplingParams(
                max_tokens=1000, temperature=0, ignore_eos=True, logprobs=20)), timeout=120)


def _pharmacy() -> medrt_pb2.GenerateRequest:
    return medrt_pb2.GenerateRequest(model="pharmacy", prompt=PROMPT, sampling=medrt_pb2.
                                     SamplingParams(max_tokens=4, temperature=0, ignore_eos=True,
                                                    logprobs=5))


def _until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def one_slot(start_server: Callable[..., ServerThread], adapters: dict[str, Path]
             ) -> tuple[ServerThread, medrt_pb2_grpc.MedrtStub]:
    st = start_server(max_loras=1, max_queued_requests=1, max_model_len=1024,
                      lora_modules=tuple(f"{n}={p}" for n, p in adapters.items()))
    with grpc.insecure_channel(st.grpc_target) as ch:
        yield st, medrt_pb2_grpc.MedrtStub(ch)
    st.stop()


def test_a_request_waits_for_the_adapter_slot(one_slot, expected: dict[str, tuple]) -> None:
    st, stub = one_slot
    admission = st.server.core.admission
    with _holding(st, "cardiology") as holder, ThreadPoolExecutor(1) as pool:
        tokens = list(next(holder).token_ids)
        waiting = pool.submit(stub.Generate, _pharmacy(), timeout=120)
        _until(lambda: admission.num_waiting == 1, "the pharmacy request to queue")
        assert admission.adapters == {"cardiology": 1} and not waiting.done()
        last = None
        for last in holder:  # cardiology runs to its end ...
            tokens += last.token_ids
        out = waiting.result(timeout=120)  # ... and then pharmacy takes the slot
    assert last.finish_reason == "length" and len(tokens) == 1000
    tops = [[t.logprob for t in lp.top] for lp in out.logprobs]
    assert _same(out.token_ids, tops, expected["pharmacy"])
    assert out.fingerprint.lora_name == "pharmacy"
    _until(lambda: admission.num_running == 0 and not admission.adapters, "the slot to free")


def test_a_slot_waiter_ends_at_its_deadline_or_when_its_client_leaves(
        one_slot, expected: dict[str, tuple]) -> None:
    st, stub = one_slot
    admission = st.server.core.admission
    with _holding(st, "cardiology") as holder:
        next(holder)
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(_pharmacy(), timeout=1.0)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        _until(lambda: admission.num_waiting == 0, "the expired request to leave the queue")

        leaving = stub.GenerateStream(_pharmacy(), timeout=120)
        _until(lambda: admission.num_waiting == 1, "the pharmacy request to queue")
        with pytest.raises(grpc.RpcError) as info:  # the queue limit still applies
            stub.Generate(_pharmacy(), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        leaving.cancel()  # the client leaves while it waits: it took nothing, frees nothing
        _until(lambda: admission.num_waiting == 0, "the cancelled request to leave the queue")
        assert sum(admission.running.values()) == 1 and admission.adapters == {"cardiology": 1}
        holder.cancel()  # the engine aborts it at its next step; then the slot is free
    out = stub.Generate(_pharmacy(), timeout=60)
    tops = [[t.logprob for t in lp.top] for lp in out.logprobs]
    assert _same(out.token_ids, tops, expected["pharmacy"])
    _until(lambda: admission.num_running == 0 and not admission.adapters, "the slot to free")
