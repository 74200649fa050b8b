"""SamplingParams.prompt_logprobs: every prompt token's log-probability given its prefix, through
the engine (chunked prefill, prefix cache, batching), against transformers on the tiny models."""

from __future__ import annotations

import random
from pathlib import Path

import medrt
import pytest
from medrt.errors import InvalidRequest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4


def _hf_log_softmax(model_dir: Path, ids: list[int]) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, dim=-1)  # row p scores token p + 1


def _prompt(n: int, seed: int, vocab: int = 300) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, vocab) for _ in range(n)]


def _params(**kw: object) -> medrt.SamplingParams:
    return medrt.SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2"])
def test_prompt_logprobs_match_transformers_over_chunks(name: str,
                                                        request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(name)
    prompt = _prompt(70, seed=1)  # over four steps of 16 tokens: chunked prefill
    ref = _hf_log_softmax(model_dir, prompt)
    with medrt.LLM(str(model_dir), num_threads=1, max_num_batched_tokens=16,
                   block_size=4) as llm:
        out = llm.generate({"prompt_token_ids": prompt}, _params(prompt_logprobs=3))[0]
    scored = out.prompt_logprobs
    assert scored is not None and len(scored) == len(prompt) and scored[0] is None
    worst = 0.0
    for p in range(1, len(prompt)):
        entry = scored[p]
        assert entry is not None and prompt[p] in entry
        worst = max(worst, abs(entry[prompt[p]].logprob - ref[p - 1, prompt[p]].item()))
        top = torch.topk(ref[p - 1], 3)
        ranked = sorted((lp.rank, tid) for tid, lp in entry.items() if lp.rank is not None)
        assert [tid for _, tid in ranked] == top.indices.tolist()
        for tid, lp in zip(top.indices.tolist(), top.values.tolist()):
            assert entry[tid].logprob == pytest.approx(lp, abs=TOL)
    assert worst < TOL
    # The generated token's logprobs are untouched by the prompt scoring.
    assert out.outputs[0].token_ids[0] == int(ref[-1].argmax())


def test_prefix_cache_and_start(tiny_llama: Path) -> None:
    prompt = _prompt(48, seed=2)
    ref = _hf_log_softmax(tiny_llama, prompt)
    with medrt.LLM(str(tiny_llama), num_threads=1, block_size=4) as llm:
        llm.generate({"prompt_token_ids": prompt}, _params())  # fills the prefix cache
        full = llm.generate({"prompt_token_ids": prompt}, _params(prompt_logprobs=0))[0]
        # Every position scored: nothing may come from the cache.
        assert full.num_cached_tokens == 0
        assert full.prompt_logprobs is not None
        for p in range(1, len(prompt)):
            got = full.prompt_logprobs[p][prompt[p]].logprob  # type: ignore[index]
            assert got == pytest.approx(ref[p - 1, prompt[p]].item(), abs=TOL)
        # Scoring the last 5 tokens only: the context before them comes from the cache.
        start = len(prompt) - 5
        tail = llm.generate({"prompt_token_ids": prompt},
                            _params(prompt_logprobs=0, prompt_logprobs_start=start))[0]
        assert tail.num_cached_tokens == (start - 1) // 4 * 4 > 0
        assert tail.prompt_logprobs is not None
        assert all(e is None for e in tail.prompt_logprobs[:start])
        for p in range(start, len(prompt)):
            got = tail.prompt_logprobs[p][prompt[p]].logprob  # type: ignore[index]
            assert got == pytest.approx(ref[p - 1, prompt[p]].item(), abs=TOL)


def test_batch_invariance_and_mixed_requests(tiny_qwen2: Path) -> None:
    prompts = [_prompt(n, seed=10 + n) for n in (9, 33, 20)]
    with medrt.LLM(str(tiny_qwen2), num_threads=1, max_num_batched_tokens=24) as llm:
        alone = [llm.generate({"prompt_token_ids": p}, _params(prompt_logprobs=1))[0]
                 for p in prompts]
        mixed = llm.generate([{"prompt_token_ids": p} for p in prompts],
                             [_params(prompt_logprobs=1), _params(), _params(prompt_logprobs=1)])
    assert mixed[1].prompt_logprobs is None
    for i in (0, 2):
        a, b = alone[i].prompt_logprobs, mixed[i].prompt_logprobs
        assert a is not None and b is not None
        for ea, eb in zip(a[1:], b[1:]):
            assert ea is not None and eb is not None
            assert {t: lp.logprob for t, lp in ea.items()} == {t: lp.logprob for t, lp in eb.items()}
        assert alone[i].outputs[0].token_ids == mixed[i].outputs[0].token_ids


def test_invalid_prompt_logprobs() -> None:
    with pytest.raises(InvalidRequest, match="prompt_logprobs"):
        medrt.SamplingParams(prompt_logprobs=21)
    with pytest.raises(InvalidRequest, match="prompt_logprobs_start"):
        medrt.SamplingParams(prompt_logprobs=0, prompt_logprobs_start=0)


def test_preemption_keeps_prompt_logprobs(tiny_llama: Path) -> None:
    # 24 blocks of 4 tokens: each request fits alone, the four together preempt while decoding;
    # the recompute must neither rescore nor resend the prompt, and the scores stay exact.
    prompts = [_prompt(30, seed=20 + i) for i in range(4)]
    params = medrt.SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True,
                                  prompt_logprobs=0)
    with medrt.LLM(str(tiny_llama), num_threads=1, block_size=4) as llm:
        alone = [llm.generate({"prompt_token_ids": p}, params)[0] for p in prompts]
    with medrt.LLM(str(tiny_llama), num_threads=1, block_size=4, num_kv_blocks=24,
                   max_num_batched_tokens=32) as llm:
        together = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
        assert llm.stats()["num_preemptions"] > 0
    for a, b in zip(alone, together):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert a.prompt_logprobs is not None and b.prompt_logprobs is not None
        assert [None if e is None else {t: x.logprob for t, x in e.items()}
                for e in a.prompt_logprobs] == \
            [None if e is None else {t: x.logprob for t, x in e.items()}
             for e in b.prompt_logprobs]
