"""Inputs of the wrong type or shape reach the user as medrt.errors naming what was wrong,
never as a TypeError from pybind, numpy or the tokenizers library."""

from __future__ import annotations

import asyncio
from pathlib import Path

import medrt
import pytest
from medrt.errors import InvalidRequest


@pytest.fixture(scope="module")
def llm(tiny_llama: Path) -> medrt.LLM:
    with medrt.LLM(str(tiny_llama), num_threads=1, max_model_len=256) as m:
        yield m


GREEDY = medrt.SamplingParams(max_tokens=2, temperature=0.0)


def test_a_lone_surrogate_is_named(llm: medrt.LLM) -> None:
    text = "caf\ud800e"  # json.loads('"caf\\ud800e"') gives this
    with pytest.raises(InvalidRequest, match=r"unpaired surrogate \(U\+D800 at character 3\)"):
        llm.generate(text, GREEDY)
    with pytest.raises(InvalidRequest, match="unpaired surrogate"):
        llm.chat([{"role": "user", "content": text}], GREEDY)
    assert llm.generate("cafe", GREEDY)[0].outputs[0].token_ids  # still serving


@pytest.mark.parametrize("prompt,match", [
    ({"prompt_token_ids": None}, r"prompt_token_ids: token ids must be a list of ints, not None"),
    ({"prompt_token_ids": "hello"}, r"prompt_token_ids: .* must be a list of ints, not str"),
    ({"prompt_token_ids": [5, 1.5]}, r"prompt_token_ids\[1\] = 1.5: token ids must be ints"),
])
def test_token_id_prompts_of_the_wrong_type(llm: medrt.LLM, prompt: dict, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        llm.generate(prompt, GREEDY)


def test_async_prompts_and_conversations(tiny_llama: Path) -> None:
    async def run() -> None:
        async with medrt.AsyncLLM(str(tiny_llama), num_threads=1, max_model_len=256) as a:
            with pytest.raises(InvalidRequest, match=r"takes one prompt"):
                async for _ in a.generate(["a", "b"], GREEDY):
                    pass
            with pytest.raises(InvalidRequest, match=r"AsyncLLM.chat takes one conversation"):
                async for _ in a.chat("hello", GREEDY):
                    pass

    asyncio.run(run())


def test_chat_arguments_and_content(llm: medrt.LLM) -> None:
    with pytest.raises(InvalidRequest, match=r"chat_template_kwargs: \['messages'\]"):
        llm.chat([{"role": "user", "content": "hi"}], GREEDY,
                 chat_template_kwargs={"messages": 1})
    with pytest.raises(InvalidRequest, match=r"messages\[0\].content: is missing or null") as e:
        llm.chat([{"role": "user"}], GREEDY)
    assert e.value.field == "messages[0].content"
    parts = llm.chat([{"role": "user", "content": [{"type": "text", "text": "a"},
                                                    {"type": "text", "text": "b"}]}], GREEDY)
    joined = llm.chat([{"role": "user", "content": "a\nb"}], GREEDY)
    assert parts[0].prompt_token_ids == joined[0].prompt_token_ids
    with pytest.raises(InvalidRequest, match=r"messages\[0\].content\[0\]: a 'image_url' part"):
        llm.chat([{"role": "user", "content": [{"type": "image_url"}]}], GREEDY)


@pytest.mark.parametrize("kwargs,match", [
    ({"seed": -1}, r"seed = -1: must be in \[0, "),
    ({"seed": 2**64}, r"seed = 18446744073709551616: must be in"),
    ({"max_model_len": "512"}, r"max_model_len = '512': must be an integer"),
    ({"num_threads": 1.5}, r"num_threads = 1.5: must be an integer"),
    ({"generation_config": 5}, r"generation_config=5: not 'auto', 'none' or a directory"),
])
def test_engine_options_of_the_wrong_type(tiny_llama: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        medrt.LLM(str(tiny_llama), **{"num_threads": 1, **kwargs})


def test_stop_token_ids_must_be_a_list() -> None:
    with pytest.raises(InvalidRequest, match="stop_token_ids"):
        medrt.SamplingParams(stop_token_ids=5)
