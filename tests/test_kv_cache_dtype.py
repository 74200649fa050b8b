"""kv_cache_dtype="f16": the engine's KV cache in half precision (llama.cpp's default). The
same pool budget holds twice the blocks; each cached key and value is rounded to f16 once, so
the logits move by about 2^-11 relative, and batching, chunking and preemption still give every
request the tokens it gets alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.engine_runs import (
    check_batched_matches_alone,
    check_preemption_matches_alone,
    llm_prompt_logprobs_per_option,
    make_engine,
)
from medrt import _core
from medrt.errors import InvalidRequest

PROMPT = [5, 9, 3, 17, 40, 2, 33, 8, 21, 13, 34, 55, 1, 4, 9, 16, 25, 36, 49, 64]


@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_f16_cache_logits_stay_within_f16_rounding_of_transformers(tiny_model_dir: Any,
                                                                     model: str) -> None:
    """The decoder over an f16 cache against transformers' f32 forward: within a few f16
    roundings of the logits' scale, the same argmax, and not the f32 cache's bits (the cache
    really is f16)."""
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_dir(model)
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        want = ref(torch.tensor([PROMPT])).logits[0].numpy()
    f32 = np.asarray(_core.Model(str(model_dir), 1).prefill_logits(PROMPT))
    f16 = np.asarray(_core.Model(str(model_dir), 1, kv_cache_dtype="f16").prefill_logits(PROMPT))
    scale = float(np.abs(want).max())
    err16, err32 = float(np.abs(f16 - want).max()), float(np.abs(f32 - want).max())
    assert err16 <= 2e-3 * scale, f"{model}: max |diff| {err16:.4g} (logits to {scale:.4g})"
    assert err16 > err32, f"{model}: the f16 cache gave f32's logits ({err16:.4g})"
    assert (f16.argmax(-1) == want.argmax(-1)).all()


def test_f16_cache_holds_twice_the_blocks_in_the_same_budget(tiny_llama: Path) -> None:
    budget = 1 << 20
    f32 = make_engine(tiny_llama, num_blocks=0, kv_cache_bytes=budget)
    f16 = make_engine(tiny_llama, num_blocks=0, kv_cache_bytes=budget, kv_cache_dtype="f16")
    assert f16.stats()["num_blocks"] == 2 * f32.stats()["num_blocks"]


def test_batch_invariance_and_preemption_with_an_f16_cache(tiny_qwen2: Path) -> None:
    """Rows still never depend on the batch: staggered, chunked and batched requests give the
    tokens and logprobs each gets alone, and preempted ones recompute to the same tokens."""
    check_batched_matches_alone(tiny_qwen2, 8, ((4, 3),), kv_cache_dtype="f16")
    check_preemption_matches_alone(tiny_qwen2, kv_cache_dtype="f16")


def test_llm_runs_the_kv_cache_dtype_it_is_given(tiny_llama: Path) -> None:
    """medrt.LLM(kv_cache_dtype=...) reaches the engine (prompt log-probabilities are those of
    _core.Model with that cache), model_info names it, and a bad value is an InvalidRequest
    naming it and the choices."""
    import medrt

    got = llm_prompt_logprobs_per_option(tiny_llama, "kv_cache_dtype", ("f32", "f16"), PROMPT)
    assert got["f32"] != got["f16"]
    with pytest.raises(InvalidRequest, match="KV cache dtype 'bf16' is not one of: f32, f16"):
        medrt.LLM(tiny_llama, num_threads=1, kv_cache_dtype="bf16")
    with pytest.raises(InvalidRequest, match="'fp8'"):
        _core.Model(str(tiny_llama), 1, kv_cache_dtype="fp8")
    with pytest.raises(InvalidRequest, match="'fp8'"):
        _core.EngineConfig(kv_cache_dtype="fp8")


def test_cli_generate_takes_kv_cache_dtype(tiny_llama: Path, capsys: Any) -> None:
    from medrt.cli import main

    assert main(["generate", "--model", str(tiny_llama), "--max-tokens", "3",
                 "--kv-cache-dtype", "f16", "--threads", "1", "hello"]) == 0
    assert capsys.readouterr().out.strip()
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(tiny_llama), "--kv-cache-dtype", "f8", "hi"])
