"""LLM and AsyncLLM with LoRA requests and a semantic cache: an answer is cached under the
sha256 of the adapter that computed it (in the scope's template category, as the service
does), so adapters never share answers with each other or with the base model, and a hit
under the same adapter carries the tokens that adapter generated."""

from __future__ import annotations

import asyncio
from pathlib import Path

import medrt
import pytest
from helpers.lora_adapters import build_adapter
from medrt import LoRARequest, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=8)
Q = "What is the maximum daily dose of paracetamol for a child of 20 kg?"
PARA = "What's the max daily dose of paracetamol for a 20 kg child?"


@pytest.fixture(scope="module")
def adapters(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"a": build_adapter(tiny_llama, root / "a", seed=1),
            "b": build_adapter(tiny_llama, root / "b", r=8, seed=2)}


@pytest.fixture
def cache(embedder, tmp_path: Path):
    cache = medrt.SemanticCache(tmp_path / "cache", embedder=embedder, threshold=0.8)
    yield cache
    cache.close()


def _tokens(out: medrt.RequestOutput) -> list[int]:
    return list(out.outputs[0].token_ids)


def test_generate_keeps_adapters_and_base_apart(tiny_llama: Path, adapters: dict[str, Path],
                                                cache) -> None:
    a = LoRARequest("a", 1, str(adapters["a"]))
    b = LoRARequest("b", 2, str(adapters["b"]))
    with medrt.LLM(tiny_llama, cache=cache, num_threads=1, enable_lora=True) as llm:
        first_a = llm.generate(Q, GREEDY, lora_request=a)[0]
        assert first_a.cache is None
        first_b = llm.generate(Q, GREEDY, lora_request=b)[0]
        assert first_b.cache is None  # A's answer is not B's
        base = llm.generate(Q, GREEDY)[0]
        assert base.cache is None  # nor the base model's

        hits = llm.generate([Q, PARA, Q, Q], GREEDY, lora_request=[a, a, b, None])
        assert all(h.cache is not None for h in hits)
        assert hits[0].cache["tier"] == "exact" and hits[1].cache["matched_question"] == Q
        for hit, want in zip(hits, [first_a, first_a, first_b, base]):
            assert _tokens(hit) == _tokens(want)
            assert hit.outputs[0].text == want.outputs[0].text
        # By name, and under another name with the same files: the same weights, one scope.
        assert _tokens(llm.generate(Q, GREEDY, lora_request="a")[0]) == _tokens(first_a)
        twin = llm.generate(Q, GREEDY, lora_request=LoRARequest("a-twin", 3,
                                                                 str(adapters["a"])))[0]
        assert twin.cache is not None and _tokens(twin) == _tokens(first_a)

        # A question only one adapter has answered misses under the other and the base.
        other = "How long should amoxicillin be taken for strep throat?"
        only_b = llm.generate(other, GREEDY, lora_request=b)[0]
        again = llm.generate([other] * 3, GREEDY, lora_request=[a, None, b])
        assert [o.cache is None for o in again] == [True, True, False]
        assert _tokens(again[2]) == _tokens(only_b)


def test_chat_and_async_use_the_same_scopes(tiny_llama: Path, adapters: dict[str, Path],
                                            cache) -> None:
    a = LoRARequest("a", 1, str(adapters["a"]))
    b = LoRARequest("b", 2, str(adapters["b"]))
    conv = [{"role": "user", "content": Q}]
    with medrt.LLM(tiny_llama, cache=cache, num_threads=1, enable_lora=True) as llm:
        chat_a = llm.chat(conv, GREEDY, lora_request=a)[0]
        assert llm.chat(conv, GREEDY, lora_request=b)[0].cache is None
        assert llm.chat(conv, GREEDY)[0].cache is None
        hit = llm.chat([{"role": "user", "content": PARA}], GREEDY, lora_request=a)[0]
        assert hit.cache is not None and _tokens(hit) == _tokens(chat_a)
        assert "".join(llm.chat(conv, GREEDY, stream=True, lora_request=a)) == \
            chat_a.outputs[0].text

    async def run() -> None:
        async with medrt.AsyncLLM(tiny_llama, cache=cache, num_threads=1,
                                  enable_lora=True) as allm:
            async def last(lora, question=Q):
                out = None
                async for out in allm.chat([{"role": "user", "content": question}], GREEDY,
                                           lora_request=lora):
                    pass
                return out

            # Answers LLM.chat stored under adapter A are A's for AsyncLLM too (one model).
            hit_a = await last(a, PARA)
            assert hit_a.cache is not None and _tokens(hit_a) == _tokens(chat_a)
            other = "Which vaccines are recommended for adults over 65?"
            first_b = await last(b, other)
            assert first_b.cache is None
            assert (await last(a, other)).cache is None
            assert (await last(None, other)).cache is None
            hit_b = await last(b, other)
            assert hit_b.cache is not None and _tokens(hit_b) == _tokens(first_b)
            async for out in allm.generate(Q, GREEDY, lora_request=b):
                assert out.cache is None  # generate() is another template than chat()

    asyncio.run(run())
