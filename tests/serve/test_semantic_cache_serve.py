"""`medrt serve --semantic-cache`: the real semantic cache (all-MiniLM-L6-v2 on medrt's engine,
FAISS, SQLite) in the request path, called with the official openai client and gRPC.

What a user checks: a repeated or reworded question is answered from the cache with the same
tokens and the fingerprint that computed them; a question that differs in a number, another
tenant's question, a request that carries patient data and an unseeded sampled request are
never answered from it; the answers survive a restart."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import openai
import pytest
from helpers.serve_server import ServerThread
from medrt.serve.auth import add_key
from medrt.v1 import medrt_pb2, medrt_pb2_grpc

ADULT = "What is the maximum daily dose of paracetamol for an adult?"
ADULT_REWORDED = "What is the maximum daily dose of paracetamol for adults?"
CHILD_20 = "What is the maximum daily dose of paracetamol for a child of 20 kg?"
CHILD_40 = "What is the maximum daily dose of paracetamol for a child of 40 kg?"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    path = tmp_path_factory.mktemp("keys") / "keys"
    return path, add_key("ward7", path), add_key("lab", path)


def _start(start_server: Callable[..., ServerThread], encoder_dir: Path, cache_dir: Path,
           keys: tuple[Path, str, str]) -> ServerThread:
    return start_server(api_keys=str(keys[0]), semantic_cache=str(cache_dir),
                        semantic_cache_embedder=str(encoder_dir))


def _ask(client: openai.OpenAI, question: str, **extra: object):
    return client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": question}], max_tokens=8,
        temperature=0, extra_body={"ignore_eos": True, **extra})


def _metrics(st: ServerThread) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(st.http_base + "/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def _token_ids(resp) -> list[int]:
    return resp.choices[0].token_ids


def test_served_answers_come_from_the_cache_only_when_safe(
        start_server: Callable[..., ServerThread], encoder_dir: Path, tmp_path: Path,
        keys: tuple[Path, str, str]) -> None:
    cache_dir = tmp_path / "cache"
    st = _start(start_server, encoder_dir, cache_dir, keys)
    ward = openai.OpenAI(base_url=st.http_base + "/v1", api_key=keys[1], max_retries=0)
    lab = openai.OpenAI(base_url=st.http_base + "/v1", api_key=keys[2], max_retries=0)

    first = _ask(ward, ADULT)
    assert "cache" not in first.medrt_fingerprint  # computed by the engine
    again = _ask(ward, ADULT)
    assert again.medrt_fingerprint["cache"]["tier"] == "exact"
    assert _token_ids(again) == _token_ids(first)
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.medrt_fingerprint["seed"] == first.medrt_fingerprint["seed"]
    assert again.usage.completion_tokens == first.usage.completion_tokens

    reworded = _ask(ward, ADULT_REWORDED)
    src = reworded.medrt_fingerprint["cache"]
    assert src["tier"] == "memory" and src["score"] >= 0.89
    assert _token_ids(reworded) == _token_ids(first)

    # Another tenant never sees ward7's answers, even for the very same question.
    assert "cache" not in _ask(lab, ADULT).medrt_fingerprint
    # A dose for 40 kg is never the answer stored for 20 kg (the guard's number rule).
    _ask(ward, CHILD_20)
    assert "cache" not in _ask(ward, CHILD_40).medrt_fingerprint
    # Patient data neither reads nor writes the cache; "bypass" skips it.
    assert "cache" not in _ask(ward, ADULT, patient_context=True).medrt_fingerprint
    assert "cache" not in _ask(ward, ADULT, cache="bypass").medrt_fingerprint
    # A sampled answer without a client seed is not repeatable, so it is not stored.
    sampled = [ward.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "Is fever dangerous?"}],
        max_tokens=8, temperature=1.0) for _ in range(2)]
    assert all("cache" not in r.medrt_fingerprint for r in sampled)
    with pytest.raises(openai.BadRequestError, match="cache"):
        _ask(ward, ADULT, cache="always")

    # gRPC reads the same cache: a reworded question over Chat is a hit with its source.
    with grpc.insecure_channel(st.grpc_target) as ch:
        stub = medrt_pb2_grpc.MedrtStub(ch)
        meta = (("authorization", f"Bearer {keys[1]}"),)
        req = medrt_pb2.ChatRequest(
            messages=[medrt_pb2.ChatMessage(role="user", content=CHILD_20)],
            sampling=medrt_pb2.SamplingParams(max_tokens=8, temperature=0))
        computed = stub.Chat(req, timeout=30, metadata=meta)
        assert not computed.fingerprint.HasField("cache")
        hit = stub.Chat(req, timeout=30, metadata=meta)
        assert hit.fingerprint.cache.tier == "exact" and hit.token_ids == computed.token_ids

    # What each lookup found is in /metrics, by tenant and reason.
    metrics = _metrics(st)
    assert metrics['medrt:semantic_cache_hits_total{tenant="ward7",tier="exact"}'] == 2
    assert metrics['medrt:semantic_cache_hits_total{tenant="ward7",tier="memory"}'] == 1
    assert metrics['medrt:semantic_cache_misses_total{tenant="lab"}'] == 1
    ward_refused = 'medrt:semantic_cache_refused_total{reason="%s",tenant="ward7"}'
    # 20 kg near the adult answer, then 40 kg near the 20 kg one: both turned down
    assert metrics[ward_refused % "guard_number"] == 2
    assert metrics[ward_refused % "patient_context"] == 1
    assert metrics[ward_refused % "nondeterministic"] == 2
    # adult, 20 kg and 40 kg over HTTP, 20 kg over gRPC (no ignore_eos: another scope)
    assert metrics['medrt:semantic_cache_stores_total{tenant="ward7"}'] == 4
    st.stop()

    # After a restart over the same directory the answers are still there.
    st = _start(start_server, encoder_dir, cache_dir, keys)
    ward = openai.OpenAI(base_url=st.http_base + "/v1", api_key=keys[1], max_retries=0)
    after = _ask(ward, ADULT_REWORDED)
    assert after.medrt_fingerprint["cache"]["tier"] in ("exact", "memory", "disk")
    assert _token_ids(after) == _token_ids(first)
    st.stop()
