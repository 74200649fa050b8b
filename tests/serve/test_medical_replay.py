"""The medical request path (classifier + P_base + S_category, shared prefix in the prefix
cache, the category in the response; the same option in LLM.chat and AsyncLLM.chat) and the
fingerprint that replays an answer token for token."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import medrt
import openai
import pytest
from helpers.serve_server import ServerThread
from medrt.medical import P_BASE, classify, system_prompt
from medrt.medical.conversation import apply_medical_template
from medrt.serve.core import CachedAnswer
from medrt.v1 import medrt_pb2, medrt_pb2_grpc

DOSE = "What is the maximum daily dose of ibuprofen for an adult?"
SIGNS = "Which tests confirm a diagnosis of type 2 diabetes?"


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerThread]) -> ServerThread:
    # the templates are long for the tiny byte-level tokenizer: a longer context
    return start_server(max_model_len=1024)


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[medrt_pb2_grpc.MedrtStub]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield medrt_pb2_grpc.MedrtStub(ch)


def _chat(text: str, template: str, **sampling: object) -> medrt_pb2.ChatRequest:
    return medrt_pb2.ChatRequest(
        messages=[medrt_pb2.ChatMessage(role="user", content=text)], medical_template=template,
        sampling=medrt_pb2.SamplingParams(max_tokens=4, temperature=0, **sampling))


def test_auto_template_classifies_and_templates(stub: medrt_pb2_grpc.MedrtStub,
                                                server: ServerThread) -> None:
    assert classify(DOSE) == "medication"
    resp = stub.Chat(_chat(DOSE, "auto"), timeout=30)
    assert resp.medical_category == "medication"
    assert resp.fingerprint.medical_template == "auto"
    tok = server.server.core.llm.tokenizer
    expected = tok.render_chat([{"role": "system", "content": system_prompt("medication")},
                                {"role": "user", "content": DOSE}])
    assert resp.usage.prompt_tokens == len(tok.encode(expected, add_special_tokens=False))
    plain = stub.Chat(_chat(DOSE, ""), timeout=30)
    assert plain.medical_category == ""
    assert plain.usage.prompt_tokens < resp.usage.prompt_tokens


def test_named_category_and_stream(stub: medrt_pb2_grpc.MedrtStub) -> None:
    msgs = list(stub.ChatStream(_chat(DOSE, "emergency"), timeout=30))
    assert msgs[0].medical_category == "emergency"


def test_shared_p_base_hits_the_prefix_cache(stub: medrt_pb2_grpc.MedrtStub,
                                             server: ServerThread) -> None:
    stub.Chat(_chat(DOSE, "auto"), timeout=30)
    hits = server.stats()["prefix_cache_hits"]
    resp = stub.Chat(_chat(SIGNS, "auto"), timeout=30)
    assert resp.medical_category == "diagnosis"
    tok = server.server.core.llm.tokenizer
    shared = len(tok.encode(tok.render_chat([{"role": "system", "content": P_BASE}],
                                            add_generation_prompt=False),
                            add_special_tokens=False))
    block = server.stats()["block_size"]
    # every full block of the shared P_base prefix came from the cache
    assert resp.usage.cached_prompt_tokens >= (shared - 2) // block * block > 0
    assert server.stats()["prefix_cache_hits"] > hits


def test_http_medical_template(server: ServerThread) -> None:
    client = openai.OpenAI(base_url=server.http_base + "/v1", api_key="-", max_retries=0)
    resp = client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": SIGNS}], max_tokens=3,
        extra_body={"medical_template": "auto"})
    assert resp.medical_category == "diagnosis"
    comp = client.completions.create(model="tiny-llama", prompt=DOSE, max_tokens=3,
                                     extra_body={"medical_template": "auto"})
    assert comp.medical_category == "medication"


def test_llm_and_async_llm_chat_take_the_template(tiny_llama: Path,
                                                  server: ServerThread) -> None:
    conv = [{"role": "user", "content": DOSE}]
    templated, category = apply_medical_template(conv, "auto")
    assert category == "medication" and templated[0]["role"] == "system"
    params = medrt.SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    with medrt.LLM(str(tiny_llama), num_threads=1, max_model_len=1024) as llm:
        out = llm.chat(conv, params, medical_template="auto")[0]
        ref = llm.chat(templated, params)[0]
        assert out.medical_category == "medication" and ref.medical_category is None
        assert out.prompt_token_ids == ref.prompt_token_ids
        assert out.outputs[0].token_ids == ref.outputs[0].token_ids
        with pytest.raises(medrt.errors.InvalidRequest, match="medical_template"):
            llm.chat(conv, params, medical_template="astrology")

    async def run() -> list[medrt.RequestOutput]:
        return [o async for o in server.server.core.llm.chat(conv, params,
                                                              medical_template="prevention")]
    outs = server.call(run())
    assert outs[-1].medical_category == "prevention" and outs[-1].finished


# -- replay ----------------------------------------------------------------------------------

def test_fingerprint_names_the_weights(stub: medrt_pb2_grpc.MedrtStub, tiny_llama: Path) -> None:
    fp = stub.Generate(medrt_pb2.GenerateRequest(prompt="hi"), timeout=30).fingerprint
    digest = hashlib.sha256((tiny_llama / "model.safetensors").read_bytes()).hexdigest()
    assert dict(fp.weight_files) == {"model.safetensors": digest}
    assert fp.weights_sha256 == hashlib.sha256(
        f"model.safetensors {digest}\n".encode()).hexdigest()
    assert list(fp.weight_types) == ["F32"] and fp.medrt_version == medrt.__version__
    assert fp.model == "tiny-llama" and fp.activation_precision == "int8"
    assert fp.kv_cache_dtype == "f32"
    cache = json.loads((tiny_llama / ".medrt-weights.json").read_text())
    assert cache["model.safetensors"]["sha256"] == digest


def test_replay_from_the_fingerprint(stub: medrt_pb2_grpc.MedrtStub, tiny_llama: Path) -> None:
    sampled = medrt_pb2.SamplingParams(max_tokens=24, temperature=1.0, top_p=0.95, top_k=50,
                                       ignore_eos=True)
    first = stub.Generate(medrt_pb2.GenerateRequest(prompt="The patient", sampling=sampled),
                          timeout=30)
    fp = first.fingerprint
    assert fp.HasField("sampling") and fp.sampling.HasField("seed")
    assert fp.seed == fp.sampling.seed and fp.sampling.top_p == pytest.approx(0.95)
    replay = stub.Generate(medrt_pb2.GenerateRequest(prompt="The patient", sampling=fp.sampling),
                           timeout=30)
    assert list(replay.token_ids) == list(first.token_ids)
    assert replay.text == first.text
    # the same tokens from the Python API in another engine: a replay needs only the record
    from google.protobuf.json_format import MessageToDict

    params = MessageToDict(fp.sampling, preserving_proto_field_name=True)
    params["seed"] = int(params["seed"])
    params = {k: (int(v) if k in ("max_tokens", "min_tokens", "top_k", "n") else v)
              for k, v in params.items()}
    with medrt.LLM(str(tiny_llama), num_threads=1, max_model_len=1024) as llm:
        out = llm.generate("The patient", medrt.SamplingParams(**params))[0]
    assert out.outputs[0].token_ids == list(first.token_ids)


def test_http_replay(server: ServerThread) -> None:
    client = openai.OpenAI(base_url=server.http_base + "/v1", api_key="-", max_retries=0)
    msgs = [{"role": "user", "content": "Hello"}]
    first = client.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=16,
                                           temperature=1.0, extra_body={"ignore_eos": True})
    seed = first.medrt_fingerprint["seed"]
    again = client.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=16,
                                           temperature=1.0, seed=seed,
                                           extra_body={"ignore_eos": True})
    assert again.choices[0].token_ids == first.choices[0].token_ids
    assert again.system_fingerprint == first.system_fingerprint


# -- the semantic cache's hook ---------------------------------------------------------------

class DictCache:
    """A CacheHook that matches exact questions only: what the core hands a cache."""

    def __init__(self) -> None:
        self.store_calls: list = []
        self.answers: dict = {}

    def lookup(self, key: object, question: str) -> CachedAnswer | None:
        found = self.answers.get((key, question))
        return None if found is None else CachedAnswer(
            found.text, found.token_ids, found.finish_reason, found.fingerprint,
            {"tier": "exact", "score": 1.0})

    def store(self, key: object, question: str, answer: CachedAnswer) -> None:
        self.store_calls.append((key, question))
        self.answers[(key, question)] = answer


def test_cache_hook_is_scoped_by_tenant_template_and_params(server: ServerThread,
                                                           stub: medrt_pb2_grpc.MedrtStub) -> None:
    hook = DictCache()
    server.server.core.cache_hook = hook
    try:
        req = _chat(DOSE, "auto")
        first = stub.Chat(req, timeout=30)
        assert first.token_ids and len(hook.store_calls) == 1
        key, question = hook.store_calls[0]
        assert question == DOSE  # the user's question, not the rendered template
        assert (key.tenant, key.model) == ("anonymous", "tiny-llama")
        assert key.template.startswith("medication:")
        assert '"seed"' not in key.params  # greedy: the seed changes nothing
        assert not first.fingerprint.HasField("cache")
        hit = stub.Chat(req, timeout=30)
        # served from the cache, exactly as computed, with the fingerprint that computed it
        assert hit.text == first.text and hit.token_ids == first.token_ids
        assert hit.finish_reason == first.finish_reason and hit.medical_category == "medication"
        assert hit.fingerprint.seed == first.fingerprint.seed
        assert hit.fingerprint.cache.tier == "exact"
        assert len(hook.store_calls) == 1
        other = stub.Chat(_chat(DOSE, "auto", top_k=5), timeout=30)  # other params: a miss
        assert other.token_ids and len(hook.store_calls) == 2
        plain = stub.Chat(_chat(DOSE, ""), timeout=30)  # no medical template: another scope
        assert not plain.fingerprint.HasField("cache") and len(hook.store_calls) == 3
        bypass = _chat(DOSE, "auto")
        bypass.cache = "bypass"
        assert not stub.Chat(bypass, timeout=30).fingerprint.HasField("cache")
        assert len(hook.store_calls) == 3  # bypass neither looks up nor stores
        refresh = _chat(DOSE, "auto")
        refresh.cache = "refresh"
        assert not stub.Chat(refresh, timeout=30).fingerprint.HasField("cache")
        assert len(hook.store_calls) == 4  # refresh computes and stores
        bad = _chat(DOSE, "auto")
        bad.cache = "sometimes"
        with pytest.raises(grpc.RpcError) as e:
            stub.Chat(bad, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cache" in e.value.details()
    finally:
        server.server.core.cache_hook = None


class BrokenCache:
    """A cache whose every call fails (a corrupt file, a bug in a custom hook)."""

    def lookup(self, key: object, question: str) -> CachedAnswer | None:
        raise OSError("cache file unreadable")

    def store(self, key: object, question: str, answer: CachedAnswer) -> None:
        raise OSError("cache file unreadable")


def test_a_failing_cache_never_fails_a_request(server: ServerThread,
                                               stub: medrt_pb2_grpc.MedrtStub) -> None:
    server.server.core.cache_hook = BrokenCache()
    try:
        for _ in range(2):  # looked up and stored each time; answered each time
            out = stub.Chat(_chat(DOSE, "auto"), timeout=30)
            assert out.token_ids and out.finish_reason in ("stop", "length")
        errors = server.server.core.metrics.cache_errors
        assert errors.labels("anonymous", "lookup")._value.get() == 2
        assert errors.labels("anonymous", "store")._value.get() == 2
    finally:
        server.server.core.cache_hook = None
