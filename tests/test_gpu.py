"""medrt.LLM on a CUDA device against the CPU engine and transformers (marker `gpu`).

Skipped without a usable CUDA device (medrt._core.cuda_status()). Below the engine, the kernels,
the decoder on the CUDA backend and op-level graph replay are covered by
cpp/tests/test_cuda_*.cpp; scripts/gpu_check.sh runs both.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import medrt
import pytest
from medrt.device import cuda_status, engine_runs_cuda

pytestmark = pytest.mark.gpu

_STATUS = cuda_status()
if not _STATUS["available"]:
    pytest.skip(f"no usable CUDA device: {_STATUS['reason']}", allow_module_level=True)
if not engine_runs_cuda():
    pytest.skip("the engine's model runner takes no device yet (docs/cuda.md)",
                allow_module_level=True)

PROMPTS = [[5, 17, 42, 9, 3, 77, 120, 8], [200, 1, 2, 3], list(range(10, 80))]


def _greedy(n: int) -> medrt.SamplingParams:
    return medrt.SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


def _tokens_and_stats(model: Path, prompts: list[list[int]], **kw: object
                      ) -> tuple[list[list[int]], dict]:
    with medrt.LLM(str(model), max_model_len=256, **kw) as llm:  # type: ignore[arg-type]
        outs = llm.generate(prompts, _greedy(24))
        return [o.outputs[0].token_ids for o in outs], llm.stats()


def _tokens(model: Path, **kw: object) -> list[list[int]]:
    return _tokens_and_stats(model, PROMPTS, **kw)[0]


@pytest.mark.parametrize("name", ["llama", "qwen2", "llama_bias"])
def test_greedy_tokens_match_the_cpu_engine(name: str, tiny_model_dir: Callable[..., Path]) -> None:
    model = tiny_model_dir(name, "bfloat16")
    assert _tokens(model, device="cuda") == _tokens(model, device="cpu")


def test_logits_match_transformers_in_bf16(tiny_model_dir: Callable[..., Path]) -> None:
    import torch
    import transformers

    model = tiny_model_dir("qwen2", "bfloat16")
    hf = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    prompt = PROMPTS[2]
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0, -1]
    with medrt.LLM(str(model), device="cuda", max_model_len=256) as llm:
        out = llm.generate([prompt], medrt.SamplingParams(temperature=0.0, max_tokens=1,
                                                           logprobs=5))[0]
    top = out.outputs[0].logprobs[0]
    ref_lp = torch.log_softmax(ref, -1)
    for tok, lp in top.items():
        assert abs(float(ref_lp[tok]) - lp.logprob) < 5e-2  # bf16 operands in the prefill GEMM


def test_graph_replay_gives_the_eager_tokens(tiny_model_dir: Callable[..., Path]) -> None:
    model = tiny_model_dir("llama", "bfloat16")
    graphs, g_stats = _tokens_and_stats(model, PROMPTS, device="cuda")
    eager, e_stats = _tokens_and_stats(model, PROMPTS, device="cuda", enforce_eager=True)
    assert graphs == eager
    # The decode steps (three sequences, then fewer) replayed graphs; eager replayed none.
    assert g_stats["graph_replays"] >= 20 and e_stats["graph_replays"] == 0


def test_layer_mapping_gives_the_all_gpu_tokens(tiny_model_dir: Callable[..., Path]) -> None:
    model = tiny_model_dir("llama_untied", "float32")
    # Prompts of at most 8 tokens: every GPU linear takes the f32 GEMV (no bf16 operands), so
    # CPU and GPU layers differ only in summation order.
    short = [p[:8] for p in PROMPTS]
    all_gpu, a_stats = _tokens_and_stats(model, short, device="cuda")
    mapped, m_stats = _tokens_and_stats(model, short, device="cuda", device_map="auto")
    on_cpu, c_stats = _tokens_and_stats(model, short, device="cuda", device_map="auto:0")
    layers = a_stats["device_layers"]
    assert layers > 0 and m_stats["device_layers"] == layers  # everything fits the device
    assert c_stats["device_layers"] == 0  # no budget: every decoder layer on the CPU
    assert mapped == all_gpu and on_cpu == all_gpu


def test_a_bad_device_or_map_is_refused(tiny_model_dir: Callable[..., Path]) -> None:
    model = tiny_model_dir("llama", "float32")
    with pytest.raises(medrt.errors.InvalidRequest, match="device_map"):
        medrt.LLM(str(model), device="cuda", device_map="everywhere")


def test_abort_frees_blocks_and_a_thousand_requests_leak_nothing(
    tiny_model_dir: Callable[..., Path],
) -> None:
    model = tiny_model_dir("llama", "bfloat16")
    with medrt.LLM(str(model), device="cuda", max_model_len=256) as llm:
        start = llm.stats()["free_blocks"]
        stream = llm.chat([{"role": "user", "content": "hello"}], _greedy(200), stream=True)
        assert next(stream)
        stream.close()
        assert llm.stats()["free_blocks"] == start
        for i in range(0, 1000, 100):
            llm.generate([[1 + (i + j) % 300, 5, 9] for j in range(100)], _greedy(4))
        stats = llm.stats()
        assert stats["free_blocks"] == start and stats["num_running"] == 0
