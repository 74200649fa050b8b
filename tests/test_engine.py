"""The C++ engine through medrt._core.Engine on tiny random models: batch invariance,
preemption, abort, prefix caching, parity with transformers, input validation, background
mode."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
from helpers.engine_runs import (
    VOCAB,
    Result,
    check_batched_matches_alone,
    check_preemption_matches_alone,
    collect,
    drain,
    make_engine,
    mixed_requests,
    params,
    random_prompt,
    run_alone,
)
from medrt import _core
from medrt.errors import CapacityError, InvalidRequest, MedrtError


@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_batch_invariance_with_staggered_arrivals(tiny_model_dir: Any, model: str) -> None:
    batched, alone = check_batched_matches_alone(tiny_model_dir(model), 16,
                                                 ((5, 3), (10, 2), (16, 0)))
    assert len({tuple(r.tokens) for r in alone}) > 8, "requests should differ"
    for got in batched:
        assert got.finish_reason == "length"
        assert got.outputs == len(got.tokens)


def test_preemption_recomputes_to_the_same_tokens(tiny_llama: Path) -> None:
    check_preemption_matches_alone(tiny_llama)


def test_abort_frees_every_block(tiny_llama: Path) -> None:
    engine = make_engine(tiny_llama, num_blocks=64, max_num_batched_tokens=16)
    start = engine.stats()["free_blocks"]
    rng = random.Random(5)
    long_prompt = random_prompt(rng, 100)

    waiting = engine.add_request(random_prompt(rng, 8), params(max_tokens=50))
    engine.abort(waiting)  # before any step: still in the inbox
    out = engine.step()
    assert [(o.request_id, o.finished, o.finish_reason, o.new_token_ids) for o in out] == [
        (waiting, True, "abort", [])]
    assert not engine.has_unfinished()

    mid_prefill = engine.add_request(long_prompt, params(max_tokens=50))
    assert engine.step() == []  # 16 of 100 prompt tokens computed
    assert engine.stats()["free_blocks"] < start
    engine.abort(mid_prefill)
    out = engine.step()
    assert [(o.request_id, o.finish_reason) for o in out] == [(mid_prefill, "abort")]
    assert engine.stats()["free_blocks"] == start

    decoding = engine.add_request(random_prompt(rng, 10), params(max_tokens=50))
    queued = engine.add_request(long_prompt, params(max_tokens=50))
    results: dict[int, Result] = {}
    for _ in range(4):
        collect(results, engine.step())
    assert len(results[decoding].tokens) > 0
    engine.abort(decoding)
    engine.abort(queued)
    engine.abort(12345)  # unknown ids are ignored
    collect(results, engine.step())
    assert results[decoding].finish_reason == "abort"
    assert results[queued].finish_reason == "abort"
    assert not engine.has_unfinished()
    stats = engine.stats()
    assert stats["free_blocks"] == start
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0
    engine.abort(decoding)  # already finished: nothing happens
    assert engine.step() == []


def test_prefix_cache_hits_and_changes_nothing(tiny_llama: Path) -> None:
    rng = random.Random(9)
    shared = random_prompt(rng, 64)
    first = shared + random_prompt(rng, 5)
    second = shared + random_prompt(rng, 7)
    p = params(max_tokens=16, temperature=0.7, seed=3, logprobs=3)

    # Same block size: it fixes the order of attention's reduction over blocks.
    plain = [run_alone(tiny_llama, q, p, block_size=16, enable_prefix_caching=False)
             for q in (first, second)]
    engine = make_engine(tiny_llama, block_size=16, num_blocks=64)
    results: dict[int, Result] = {}
    a = engine.add_request(first, p)
    drain(engine, results)
    b = engine.add_request(second, p)
    drain(engine, results)
    assert results[a].num_cached_tokens == 0
    assert results[b].num_cached_tokens == 64
    assert results[b].num_prompt_tokens == len(second)
    stats = engine.stats()
    assert stats["prefix_cache_hits"] == 4
    assert stats["prefix_cache_queries"] == 4 + 4  # (69 - 1) // 16 + (71 - 1) // 16
    assert stats["prompt_tokens"] == len(first) + len(second) - 64
    assert results[a].tokens == plain[0].tokens and results[a].logprobs == plain[0].logprobs
    assert results[b].tokens == plain[1].tokens and results[b].logprobs == plain[1].logprobs

    # While the first copy still runs, an identical prompt shares its blocks too.
    c = engine.add_request(first, p)
    collect(results, engine.step())
    d = engine.add_request(first, p)
    drain(engine, results)
    assert results[d].num_cached_tokens == 64
    assert results[c].tokens == results[d].tokens == plain[0].tokens
    assert engine.stats()["free_blocks"] == 64


@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_greedy_matches_transformers(tiny_model_dir: Any, model: str) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model_dir = tiny_model_dir(model)
    prompt = random_prompt(random.Random(77), 11)
    got = run_alone(model_dir, prompt, params(max_tokens=32, temperature=0.0))

    ref = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    want = []
    with torch.no_grad():
        for _ in range(32):
            nxt = int(ref(ids).logits[0, -1].argmax())
            want.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    assert got.tokens == want
    assert got.finish_reason == "length"


def test_stop_tokens_min_tokens_and_logprobs(tiny_llama: Path) -> None:
    prompt = random_prompt(random.Random(3), 9)
    free = run_alone(tiny_llama, prompt, params(max_tokens=24, temperature=0.8, seed=11))
    stop = free.tokens[5]
    first = free.tokens.index(stop)
    got = run_alone(tiny_llama, prompt,
                    params(max_tokens=24, temperature=0.8, seed=11, stop_token_ids=[stop]))
    assert got.tokens == free.tokens[: first + 1]
    assert (got.finish_reason, got.stop_token_id) == ("stop", stop)

    # min_tokens masks the stop token: the text diverges where it would have been drawn.
    later = run_alone(tiny_llama, prompt, params(max_tokens=24, temperature=0.8, seed=11,
                                                 stop_token_ids=[stop], min_tokens=first + 1))
    assert later.tokens[:first] == free.tokens[:first]
    assert stop not in later.tokens[: first + 1]

    # Logprobs: the model's raw distribution; the top entries are sorted and sum below 1.
    lp = run_alone(tiny_llama, prompt, params(max_tokens=6, temperature=0.0, logprobs=5))
    assert len(lp.logprobs) == 6
    for token, (chosen, top) in zip(lp.tokens, lp.logprobs):
        assert len(top) == 5
        assert top[0][0] == token and math.isclose(top[0][1], chosen)  # greedy: the best one
        assert [v for _, v in top] == sorted((v for _, v in top), reverse=True)
        assert sum(math.exp(v) for _, v in top) <= 1.0 + 1e-5


def test_model_eos_stops_unless_ignored(tiny_llama: Path) -> None:
    prompt = random_prompt(random.Random(6), 5)
    eos = 2  # helpers.tiny_models.EOS_ID
    # A near-uniform distribution reaches EOS within a few hundred tokens for some seeds.
    engine = make_engine(tiny_llama, num_blocks=16 * 80)
    results: dict[int, Result] = {}
    ids = [engine.add_request(prompt, params(max_tokens=300, temperature=50.0, seed=seed))
           for seed in range(16)]
    drain(engine, results)
    seed = next((s for s, i in enumerate(ids) if eos in results[i].tokens), None)
    assert seed is not None, "no seed produced EOS"
    free = results[ids[seed]]
    hot = {"max_tokens": 300, "temperature": 50.0, "seed": seed}
    got = run_alone(tiny_llama, prompt, params(ignore_eos=False, **hot))
    assert got.tokens == free.tokens[: free.tokens.index(eos) + 1]
    assert (got.finish_reason, got.stop_token_id) == ("stop", eos)
    assert free.finish_reason == "length" and free.stop_token_id == -1


def test_max_model_len_stops_with_length(tiny_llama: Path) -> None:
    prompt = random_prompt(random.Random(4), 20)
    got = run_alone(tiny_llama, prompt, params(max_tokens=50), max_model_len=32)
    assert len(got.tokens) == 12
    assert got.finish_reason == "length"


def test_bad_requests_name_the_field(tiny_llama: Path) -> None:
    engine = make_engine(tiny_llama, num_blocks=8, max_model_len=64)
    ok = [5, 6, 7]
    cases = [
        ([], params(), "prompt"),
        ([5, VOCAB], params(), "prompt[1]"),
        ([5, -1], params(), "prompt[1]"),
        ([5, 2**40], params(), "prompt[1]"),
        (list(range(3, 67)), params(), "max_model_len"),
        (ok, params(max_tokens=-1), "max_tokens"),
        (ok, params(temperature=-1.0), "temperature"),
        (ok, params(temperature=float("nan")), "temperature"),
        (ok, params(top_p=0.0), "top_p"),
        (ok, params(top_p=1.5), "top_p"),
        (ok, params(min_p=2.0), "min_p"),
        (ok, params(top_k=-5), "top_k"),
        (ok, params(repetition_penalty=0.0), "repetition_penalty"),
        (ok, params(frequency_penalty=3.0), "frequency_penalty"),
        (ok, params(presence_penalty=float("nan")), "presence_penalty"),
        (ok, params(logprobs=21), "logprobs"),
        (ok, params(stop_token_ids=[VOCAB + 1]), "stop_token_ids"),
        (ok, params(min_tokens=30, max_tokens=10), "min_tokens"),
    ]
    for prompt, p, field_name in cases:
        with pytest.raises(InvalidRequest, match=field_name.replace("[", r"\[")):
            engine.add_request(prompt, p)
    # 8 blocks of 4 tokens hold 32 positions: 10 + 40 - 1 can never fit.
    with pytest.raises(CapacityError, match="KV blocks"):
        engine.add_request(list(range(3, 13)), params(max_tokens=40))
    assert not engine.has_unfinished()
    assert engine.stats()["num_waiting"] == 0

    with pytest.raises(TypeError, match="temprature"):
        _core.SamplingParams(temprature=0.5)
    with pytest.raises(InvalidRequest, match="max_model_len"):
        make_engine(tiny_llama, max_model_len=4096)
    with pytest.raises(InvalidRequest, match="block_size"):
        make_engine(tiny_llama, block_size=0)


def test_background_mode(tiny_llama: Path) -> None:
    reqs = mixed_requests(6)
    alone = [run_alone(tiny_llama, prompt, p) for prompt, p in reqs]
    engine = make_engine(tiny_llama)
    engine.start()
    try:
        with pytest.raises(MedrtError, match="background"):
            engine.step()
        ids = [engine.add_request(*r) for r in reqs]
        victim = engine.add_request(random_prompt(random.Random(8), 30), params(max_tokens=900))
        engine.abort(victim)
        results: dict[int, Result] = {}
        for _ in range(10_000):
            collect(results, engine.wait_outputs(200))
            if all(results.get(i, Result()).finish_reason for i in ids + [victim]):
                break
        assert not engine.has_unfinished()
        assert results[victim].finish_reason == "abort"
        for i, rid in enumerate(ids):
            assert results[rid].tokens == alone[i].tokens
        assert engine.wait_outputs(10) == []
    finally:
        engine.stop()
    engine.stop()  # idempotent
    assert engine.stats()["free_blocks"] == 512
    # Stopped: synchronous stepping works again.
    rid = engine.add_request(*reqs[0])
    results = {}
    drain(engine, results)
    assert results[rid].tokens == alone[0].tokens
