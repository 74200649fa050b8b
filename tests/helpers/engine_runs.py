"""Driving medrt._core.Engine in tests: engines with small pools, requests run alone or
together, and their collected outputs."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrt import _core

VOCAB = 320  # helpers.tiny_models.MODEL_VOCAB


@dataclass
class Result:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)
    finish_reason: str = ""
    stop_token_id: int = -1
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    outputs: int = 0


def make_engine(model_dir: Path, **overrides: Any) -> _core.Engine:
    cfg: dict[str, Any] = {
        "model_dir": str(model_dir),
        "block_size": 4,
        "num_blocks": 512,
        "max_num_seqs": 16,
        "max_num_batched_tokens": 64,
        "num_threads": 1,
    }
    cfg.update(overrides)
    return _core.Engine(_core.EngineConfig(**cfg))


def params(**kw: Any) -> _core.SamplingParams:
    kw.setdefault("ignore_eos", True)
    return _core.SamplingParams(**kw)


def collect(results: dict[int, Result], outputs: list[Any]) -> None:
    for o in outputs:
        r = results.setdefault(o.request_id, Result())
        assert not r.finish_reason, "output after the final one"
        r.tokens += o.new_token_ids
        r.logprobs += o.logprobs
        r.outputs += 1
        r.num_prompt_tokens = o.num_prompt_tokens
        r.num_cached_tokens = o.num_cached_tokens
        if o.finished:
            r.finish_reason = o.finish_reason
            r.stop_token_id = o.stop_token_id


def drain(engine: _core.Engine, results: dict[int, Result]) -> None:
    for _ in range(10_000):
        if not engine.has_unfinished():
            return
        collect(results, engine.step())
    raise AssertionError("the engine did not finish its requests")


def run_alone(model_dir: Path, prompt: list[int], p: _core.SamplingParams,
              **overrides: Any) -> Result:
    engine = make_engine(model_dir, **overrides)
    results: dict[int, Result] = {}
    rid = engine.add_request(prompt, p)
    drain(engine, results)
    return results[rid]


def random_prompt(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(3, VOCAB) for _ in range(n)]


def mixed_requests(n: int) -> list[tuple[list[int], _core.SamplingParams]]:
    """n requests of different prompt lengths: greedy ones and seeded sampled ones."""
    rng = random.Random(1234)
    reqs = []
    for i in range(n):
        prompt = random_prompt(rng, 3 + 7 * i % 61)
        if i % 2 == 0:
            p = params(max_tokens=12 + i % 5, temperature=0.0, logprobs=2)
        else:
            p = params(max_tokens=10 + i % 7, temperature=0.9, top_k=40 if i % 3 else 0,
                       top_p=0.95, min_p=0.02, repetition_penalty=1.1,
                       frequency_penalty=0.2, presence_penalty=0.1, seed=100 + i, logprobs=1)
        reqs.append((prompt, p))
    return reqs


def check_batched_matches_alone(model_dir: Path, n: int,
                                arrivals: tuple[tuple[int, int], ...] = (),
                                **overrides: Any) -> tuple[list[Result], list[Result]]:
    """n mixed requests on one engine with a 24-token step budget and two threads (prompts
    split into other chunks than the lone runs', kernels split their work differently): every
    request gets exactly the tokens and logprobs it gets alone. `arrivals`: waves of (end,
    steps), add the requests up to index `end`, then run `steps` engine steps (default: all at
    once); every block returns to the pool. `overrides`: more EngineConfig fields of both.
    Returns (batched, alone) results."""
    reqs = mixed_requests(n)
    alone = [run_alone(model_dir, prompt, p, **overrides) for prompt, p in reqs]
    engine = make_engine(model_dir, max_num_batched_tokens=24, num_threads=2, **overrides)
    free = engine.stats()["free_blocks"]
    results: dict[int, Result] = {}
    ids: list[int] = []
    for end, steps in arrivals or ((n, 0),):
        ids += [engine.add_request(*r) for r in reqs[len(ids):end]]
        for _ in range(steps):
            collect(results, engine.step())
    ids += [engine.add_request(*r) for r in reqs[len(ids):]]
    drain(engine, results)
    for i, rid in enumerate(ids):
        assert results[rid].tokens == alone[i].tokens, f"request {i}"
        assert results[rid].logprobs == alone[i].logprobs, f"request {i}"
    assert engine.stats()["free_blocks"] == free
    return [results[rid] for rid in ids], alone


def check_preemption_matches_alone(model_dir: Path, **overrides: Any) -> None:
    """Eight mixed requests on a pool too small for all of them at once (30 blocks of 4
    tokens): the engine preempts, and every request still gets the tokens and logprobs it gets
    alone; every block returns to the pool. `overrides`: more EngineConfig fields of both."""
    reqs = mixed_requests(8)
    alone = [run_alone(model_dir, prompt, p, **overrides) for prompt, p in reqs]
    engine = make_engine(model_dir, num_blocks=30, max_num_batched_tokens=32, **overrides)
    results: dict[int, Result] = {}
    ids = [engine.add_request(*r) for r in reqs]
    drain(engine, results)
    stats = engine.stats()
    assert stats["num_preemptions"] > 0
    assert stats["free_blocks"] == 30
    for i, rid in enumerate(ids):
        assert results[rid].tokens == alone[i].tokens, f"request {i}"
        assert results[rid].logprobs == alone[i].logprobs, f"request {i}"


def llm_prompt_logprobs_per_option(model_dir: Path, option: str, values: tuple[str, ...],
                                   prompt: list[int]) -> dict[str, list[float]]:
    """For each value of an engine option of medrt.LLM (activation_precision, kv_cache_dtype):
    the LLM built with it names it in model_info, and its prompt log-probabilities are those of
    _core.Model built with the same option (so the option reached the engine). Returns them
    per value."""
    import medrt
    import numpy as np
    import pytest
    import torch

    params = medrt.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    got = {}
    for value in values:
        with medrt.LLM(model_dir, num_threads=1, **{option: value}) as llm:
            assert llm.model_info[option] == value
            out = llm.generate({"prompt_token_ids": prompt}, params)[0]
        got[value] = [next(iter(d.values())).logprob for d in out.prompt_logprobs[1:]]
        logits = _core.Model(str(model_dir), 1, **{option: value}).prefill_logits(prompt)
        want = torch.log_softmax(torch.from_numpy(np.asarray(logits)).double(), -1)
        expect = [float(want[i, prompt[i + 1]]) for i in range(len(prompt) - 1)]
        assert got[value] == pytest.approx(expect, abs=1e-4), value
    return got
