"""The model's generation_config.json sampling as the default of every request that leaves a
parameter unset: the Python API, the service's request builder and the `medrt` command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import medrt
import pytest
from medrt.errors import InvalidCheckpoint, InvalidRequest
from medrt.generation_defaults import sampling_defaults
from medrt.serve.request import ServeRequest, sampling_params
from test_cli import run_medrt

SAMPLED = {"do_sample": True, "temperature": 0.7, "top_k": 5, "repetition_penalty": 1.3,
           "max_new_tokens": 9, "eos_token_id": 2}
PROMPT = "The patient reports"


def _with_config(src: Path, dst: Path, cfg: dict) -> Path:
    shutil.copytree(src, dst)
    (dst / "generation_config.json").write_text(json.dumps(cfg))
    return dst


def test_hugging_face_rules(tmp_path: Path) -> None:
    def read(cfg: dict | str) -> dict:
        (tmp_path / "generation_config.json").write_text(
            cfg if isinstance(cfg, str) else json.dumps(cfg))
        return sampling_defaults(tmp_path)

    assert sampling_defaults(tmp_path) == {}  # no file
    assert read(SAMPLED) == {"temperature": 0.7, "top_k": 5, "repetition_penalty": 1.3,
                             "max_tokens": 9}
    # Without do_sample, Hugging Face decodes greedily and ignores temperature: only the
    # penalty and the length carry over; do_sample false is greedy.
    assert read({"temperature": 0.6, "repetition_penalty": 1.1}) == {"repetition_penalty": 1.1}
    assert read({"do_sample": False, "top_p": 0.9}) == {"temperature": 0.0}
    assert read({"bos_token_id": 1, "eos_token_id": [2, 3]}) == {}
    with pytest.raises(InvalidCheckpoint, match="temperature = -1"):
        read({"do_sample": True, "temperature": -1})
    with pytest.raises(InvalidCheckpoint, match="max_new_tokens = 0"):
        read({"max_new_tokens": 0})
    with pytest.raises(InvalidCheckpoint, match="not readable JSON"):
        read("{not json")


def test_api_requests_without_params_use_the_model_sampling(tiny_llama: Path,
                                                            tmp_path: Path) -> None:
    model = _with_config(tiny_llama, tmp_path / "m", SAMPLED)
    explicit = medrt.SamplingParams(temperature=0.7, top_k=5, repetition_penalty=1.3,
                                    max_tokens=9)
    # Fresh engines with the same engine seed draw the same seed for their first request.
    with medrt.LLM(model) as llm:
        d = llm.get_default_sampling_params()
        assert (d.temperature, d.top_k, d.top_p, d.repetition_penalty, d.max_tokens) == \
            (0.7, 5, 1.0, 1.3, 9)
        by_default = llm.generate(PROMPT)[0].outputs[0]
    with medrt.LLM(model) as llm:
        by_hand = llm.generate(PROMPT, explicit)[0].outputs[0]
    with medrt.LLM(tiny_llama) as llm:
        plain = llm.generate(PROMPT)[0].outputs[0]  # SamplingParams(): 16 tokens at T=1
    assert by_default.token_ids == by_hand.token_ids
    assert len(by_default.token_ids) == 9 or by_default.finish_reason == "stop"
    assert len(plain.token_ids) == 16 or plain.finish_reason == "stop"


def test_generation_config_option(tiny_llama: Path, tmp_path: Path) -> None:
    """generation_config="none" keeps SamplingParams' defaults; a directory lends its file to a
    model without one; anything else is refused by name."""
    model = _with_config(tiny_llama, tmp_path / "m", SAMPLED)
    with medrt.LLM(model, generation_config="none") as llm:
        assert llm.get_default_sampling_params() == medrt.SamplingParams()
    with medrt.LLM(tiny_llama, generation_config=str(model)) as llm:
        d = llm.get_default_sampling_params()
        assert (d.temperature, d.top_k, d.max_tokens) == (0.7, 5, 9)
    with pytest.raises(InvalidRequest, match="generation_config='/nonexistent'"):
        medrt.LLM(tiny_llama, generation_config="/nonexistent")


def test_cli_flags_over_model_sampling_over_greedy(tiny_llama: Path, tmp_path: Path) -> None:
    model = _with_config(tiny_llama, tmp_path / "m", SAMPLED)
    home = tmp_path / "home"
    with medrt.LLM(model) as llm:
        want = llm.generate(PROMPT, medrt.SamplingParams(
            temperature=0.7, top_k=5, repetition_penalty=1.3, max_tokens=12))[0].outputs[0].text
    with medrt.LLM(model) as llm:
        greedy = llm.generate(PROMPT, medrt.SamplingParams(
            temperature=0.0, top_k=5, repetition_penalty=1.3, max_tokens=12))[0].outputs[0].text
    r = run_medrt(home, "generate", "--model", str(model), "--max-tokens", "12", PROMPT)
    assert r.returncode == 0, r.stderr
    assert r.stdout == want + "\n"
    r = run_medrt(home, "generate", "--model", str(model), "--max-tokens", "12",
                  "--temperature", "0", PROMPT)
    assert r.returncode == 0, r.stderr
    assert r.stdout == greedy + "\n"
    with medrt.LLM(model) as llm:
        plain = llm.generate(PROMPT, medrt.SamplingParams(temperature=0.0, max_tokens=12))
    r = run_medrt(home, "generate", "--model", str(model), "--max-tokens", "12",
                  "--generation-config", "none", PROMPT)
    assert r.returncode == 0, r.stderr
    assert r.stdout == plain[0].outputs[0].text + "\n"


def test_service_fills_only_what_the_client_left_out() -> None:
    model = {"temperature": 0.6, "top_p": 0.95, "repetition_penalty": 1.1, "max_tokens": 10_000}
    req = ServeRequest(kind="generate", prompt="x", sampling={"top_p": 0.5, "seed": 7})
    p = sampling_params(req, max_model_len=100, prompt_len=30, model_defaults=model)
    assert (p.temperature, p.top_p, p.repetition_penalty, p.seed) == (0.6, 0.5, 1.1, 7)
    assert p.max_tokens == 70  # the model's max_new_tokens, cut to what the context leaves
    req = ServeRequest(kind="generate", prompt="x", sampling={"temperature": 0.0,
                                                              "max_tokens": 5})
    p = sampling_params(req, max_model_len=100, prompt_len=30, model_defaults=model)
    assert (p.temperature, p.max_tokens, p.top_p) == (0.0, 5, 0.95)
    p = sampling_params(ServeRequest(kind="generate", prompt="x"), 100, 30)
    assert (p.temperature, p.top_p, p.max_tokens) == (1.0, 1.0, 16)
