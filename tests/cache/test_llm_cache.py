"""LLM and AsyncLLM with a semantic cache (tiny random decoder: fast, deterministic)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import medrt
import pytest
from medrt import SamplingParams
from medrt.errors import InvalidRequest

GREEDY = SamplingParams(temperature=0, max_tokens=8)
Q = "What is the maximum daily dose of paracetamol for a child of 20 kg?"
PARA = "What's the max daily dose of paracetamol for a 20 kg child?"


@pytest.fixture
def llm(tiny_llama: Path, embedder, tmp_path: Path):
    cache = medrt.SemanticCache(tmp_path / "cache", embedder=embedder, threshold=0.8)
    with medrt.LLM(tiny_llama, cache=cache, num_threads=1) as llm:
        yield llm
    cache.close()


def test_generate_hits_on_a_paraphrase(llm) -> None:
    first = llm.generate(Q, GREEDY)[0]
    assert first.cache is None
    again = llm.generate([PARA, Q.replace("20 kg", "40 kg")], GREEDY)
    assert again[0].cache is not None and again[0].cache["matched_question"] == Q
    assert again[0].cache["tier"] == "memory" and again[0].cache["score"] >= 0.8
    assert again[0].outputs[0].text == first.outputs[0].text
    assert again[0].outputs[0].token_ids == first.outputs[0].token_ids
    assert again[0].outputs[0].finish_reason == first.outputs[0].finish_reason
    assert again[0].finished and again[1].cache is None  # 40 kg: generated
    assert llm.generate(Q, GREEDY)[0].cache["tier"] == "exact"


def test_modes_tenants_and_patient_context(llm) -> None:
    llm.generate(Q, GREEDY)
    assert llm.generate(Q, GREEDY, cache="bypass")[0].cache is None
    assert llm.generate(Q, GREEDY, cache="refresh")[0].cache is None
    assert llm.generate(Q, GREEDY, tenant="other-hospital")[0].cache is None
    assert llm.generate(Q, GREEDY, patient_context=True)[0].cache is None
    sampled = SamplingParams(temperature=0.9, max_tokens=8)
    llm.generate(PARA, sampled)
    assert llm.generate(PARA, sampled)[0].cache is None  # never stored: not deterministic
    assert llm.generate(Q, SamplingParams(temperature=0, max_tokens=8, logprobs=2))[0].cache \
        is None
    with pytest.raises(InvalidRequest, match="cache must be one of"):
        llm.generate(Q, GREEDY, cache="sometimes")
    with pytest.raises(InvalidRequest, match="tenant"):
        llm.generate(Q, GREEDY, tenant="")


def test_chat_and_stream(llm) -> None:
    conv = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": Q}]
    first = llm.chat(conv, GREEDY)[0]
    assert first.cache is None
    hit = llm.chat([conv[0], {"role": "user", "content": PARA}], GREEDY)[0]
    assert hit.cache is not None and hit.outputs[0].text == first.outputs[0].text
    # Another system message is another template: no hit. A longer history is not cached.
    assert llm.chat([{"role": "system", "content": "Be verbose."}, conv[1]], GREEDY)[0].cache \
        is None
    history = [conv[1], {"role": "assistant", "content": "x"}, {"role": "user", "content": Q}]
    assert llm.chat(history, GREEDY)[0].cache is None
    # A generate() prompt of the same text is another template too.
    assert llm.generate(Q, GREEDY)[0].cache is None
    assert "".join(llm.chat(conv, GREEDY, stream=True)) == first.outputs[0].text


def test_full_disk_still_answers(llm) -> None:
    cache = llm._cache.cache
    pages = cache.disk._db.execute("PRAGMA page_count").fetchone()[0]
    cache.disk._db.execute(f"PRAGMA max_page_count = {pages}")
    # Each entry holds a 1.5 kB vector: a few fill the last page SQLite may use.
    questions = [f"How should I use inhaler model {i} for asthma?" for i in range(6)]
    with pytest.warns(RuntimeWarning, match="turned off"):
        outs = llm.generate(questions, GREEDY)
    assert all(o.cache is None and o.finished and o.outputs[0].token_ids for o in outs)
    assert cache.disabled_reason is not None and "disk full" in cache.disabled_reason
    assert llm.generate(questions[0], GREEDY)[0].cache is None  # off: answers keep coming


def test_async_llm(tiny_llama: Path, embedder, tmp_path: Path) -> None:
    async def main() -> None:
        with medrt.SemanticCache(tmp_path, embedder=embedder, threshold=0.8) as cache:
            async with medrt.AsyncLLM(tiny_llama, cache=cache, num_threads=1) as llm:
                outs = [o async for o in llm.generate(Q, GREEDY, delta=True)]
                assert outs[-1].finished and all(o.cache is None for o in outs)
                text = "".join(o.outputs[0].text for o in outs)
                hits = [o async for o in llm.generate(PARA, GREEDY)]
                assert len(hits) == 1 and hits[0].cache is not None
                assert hits[0].outputs[0].text == text
                other = [o async for o in llm.generate(PARA, GREEDY, tenant="b")]
                assert other[-1].cache is None
                chat = [o async for o in llm.chat([{"role": "user", "content": Q}], GREEDY)]
                assert chat[-1].cache is None
                again = [o async for o in llm.chat([{"role": "user", "content": PARA}], GREEDY)]
                assert again[0].cache is not None

    asyncio.run(main())
