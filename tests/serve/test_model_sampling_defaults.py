"""A served model's generation_config.json sampling fills what an OpenAI client leaves out
(medrt.generation_defaults); what the client sends wins."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import medrt
import openai
from helpers.serve_server import ServerThread

MODEL = "tiny-llama"
PROMPT = "The patient reports"


def test_openai_requests_take_the_model_sampling(start_server: Callable[..., ServerThread],
                                                 tiny_llama: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    (model / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.7, "top_k": 5, "repetition_penalty": 1.8,
         "max_new_tokens": 5}))
    st = start_server(model=str(model))
    client = openai.OpenAI(base_url=st.http_base + "/v1", api_key="unused", timeout=30,
                           max_retries=0)
    try:
        # No max_tokens: OpenAI's rule would run to the context (512); the model says 5.
        resp = client.completions.create(model=MODEL, prompt=PROMPT,
                                         extra_body={"ignore_eos": True})
        assert resp.usage.completion_tokens == 5
        # temperature from the client, top_k and the penalty from the model.
        resp = client.completions.create(model=MODEL, prompt=PROMPT, temperature=0,
                                         max_tokens=8, extra_body={"ignore_eos": True})
    finally:
        st.stop()
    # An operator's --generation-config none: OpenAI's rule again (no max_tokens: the context).
    st = start_server(model=str(model), generation_config="none")
    try:
        client = openai.OpenAI(base_url=st.http_base + "/v1", api_key="unused", timeout=30,
                               max_retries=0)
        none = client.completions.create(model=MODEL, prompt=PROMPT,
                                         extra_body={"ignore_eos": True})
    finally:
        st.stop()
    assert none.usage.completion_tokens == 512 - none.usage.prompt_tokens
    want = medrt.SamplingParams(temperature=0.0, top_k=5, repetition_penalty=1.8, max_tokens=8,
                                ignore_eos=True)
    plain = medrt.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    with medrt.LLM(model) as llm:
        assert resp.choices[0].text == llm.generate(PROMPT, want)[0].outputs[0].text
        assert resp.choices[0].text != llm.generate(PROMPT, plain)[0].outputs[0].text
