"""Adapter mode in the engine against peft's PeftModel on the same tiny base: a mixed batch of
three adapters and the base, batch invariance, merged mode, the prefix cache per adapter, slots
and errors.

Tolerance: log-probabilities (logit minus the row's log-sum-exp, so any logit error shows)
within 1e-4 of peft's in f32; greedy tokens identical."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

import medrt
from helpers.lora_adapters import build_adapter, peft_model
from helpers.tiny_models import MODEL_VOCAB
from medrt import _core
from medrt.errors import CapacityError, InvalidCheckpoint, InvalidRequest
from medrt.lora import LoRARequest

TOL = 1e-4
N_NEW = 8
TOP = 20


@pytest.fixture(scope="module")
def adapters(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "cardiology": build_adapter(tiny_llama, root / "cardiology", r=4, alpha=8.0, seed=1),
        "paediatrics": build_adapter(tiny_llama, root / "paediatrics", r=8, alpha=8.0,
                                     use_rslora=True, seed=2),
        "pharmacy": build_adapter(tiny_llama, root / "pharmacy", r=2, alpha=4.0, seed=3,
                                  targets=["q_proj", "v_proj", "down_proj"]),
        "spare": build_adapter(tiny_llama, root / "spare", r=2, alpha=4.0, seed=4),
    }


def _requests(adapters: dict[str, Path]) -> list[LoRARequest | None]:
    return [LoRARequest("cardiology", 1, str(adapters["cardiology"])),
            LoRARequest("paediatrics", 2, str(adapters["paediatrics"])),
            LoRARequest("pharmacy", 3, str(adapters["pharmacy"])),
            None]


def _prompt(seed: int, n: int = 11) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(3, MODEL_VOCAB, size=n)]


def _reference(model, prompt: list[int], n: int) -> tuple[list[int], list[np.ndarray]]:
    """peft's greedy tokens and the log-probabilities of every step."""
    ids, steps = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1].double()
            steps.append(torch.log_softmax(logits, -1).numpy())
            ids.append(int(logits.argmax()))
    return ids[len(prompt):], steps


def _check(out, want_tokens: list[int], want_logprobs: list[np.ndarray]) -> None:
    comp = out.outputs[0]
    assert comp.token_ids == want_tokens
    for entry, ref in zip(comp.logprobs, want_logprobs):
        assert len(entry) >= TOP
        for tid, lp in entry.items():
            assert abs(lp.logprob - ref[tid]) < TOL, (tid, lp.logprob, ref[tid])


@pytest.fixture(scope="module")
def llm(tiny_llama: Path) -> Iterator[medrt.LLM]:
    with medrt.LLM(str(tiny_llama), num_threads=2, enable_lora=True, max_loras=4,
                   max_lora_rank=16) as model:
        yield model


def _greedy() -> medrt.SamplingParams:
    return medrt.SamplingParams(temperature=0.0, max_tokens=N_NEW, ignore_eos=True, logprobs=TOP)


def test_mixed_batch_matches_peft(llm: medrt.LLM, tiny_llama: Path, adapters) -> None:
    requests = _requests(adapters)
    prompts = [_prompt(i) for i in range(len(requests))]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], _greedy(),
                        lora_request=requests)
    for prompt, req, out in zip(prompts, requests, outs):
        ref = peft_model(tiny_llama, req.lora_path) if req else peft_model_base(tiny_llama)
        _check(out, *_reference(ref, prompt, N_NEW))
    assert sorted(llm.list_loras()) == [1, 2, 3]


def peft_model_base(tiny_llama: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def test_one_engine_step_is_batch_invariant(tiny_llama: Path, adapters) -> None:
    """Four requests prefilled in one step give bit-identical log-probabilities to each request
    run alone, and each matches peft."""
    config = _core.EngineConfig()
    config.model_dir = str(tiny_llama)
    config.num_threads = 2
    requests = _requests(adapters)
    from medrt.lora.adapter import base_linear_shapes, read_adapter

    shapes = base_linear_shapes(tiny_llama)

    def engine() -> _core.Engine:
        e = _core.Engine(config)
        for r in requests[:3]:
            a = read_adapter(r.lora_path, shapes)
            e.add_lora(r.lora_int_id, [(m.name, m.a, m.b) for m in a.modules.values()], a.scale)
        return e

    def first_logprobs(e: _core.Engine, items: list[tuple[list[int], int]]) -> list:
        ids = [e.add_request(p, _core.SamplingParams(max_tokens=1, temperature=0.0,
                                                     logprobs=TOP, lora_id=lora))
               for p, lora in items]
        outs = {o.request_id: o for o in e.step()}
        assert sorted(outs) == sorted(ids)  # all in the one step
        return [outs[i].logprobs[0] for i in ids]

    items = [(_prompt(10 + i, 5 + 3 * i), r.lora_int_id if r else 0)
             for i, r in enumerate(requests)]
    together = first_logprobs(engine(), items)
    alone = [first_logprobs(engine(), [item])[0] for item in items]
    assert together == alone  # exact: a row's delta never depends on the batch
    for (prompt, _), req, (chosen, top) in zip(items, requests, together):
        ref = peft_model(tiny_llama, req.lora_path) if req else peft_model_base(tiny_llama)
        tokens, steps = _reference(ref, prompt, 1)
        assert top[0][0] == tokens[0]
        for tid, lp in top:
            assert abs(lp - steps[0][tid]) < TOL


def test_merged_mode_matches_adapter_mode(tiny_llama: Path, llm: medrt.LLM, adapters) -> None:
    req = _requests(adapters)[1]
    prompt = {"prompt_token_ids": _prompt(7)}
    adapter_out = llm.generate(prompt, _greedy(), lora_request=req)[0].outputs[0]
    with medrt.LLM(str(tiny_llama), num_threads=2, lora=req.lora_path, merge=True) as merged:
        merged_out = merged.generate(prompt, _greedy())[0].outputs[0]
        with pytest.raises(InvalidRequest, match="enable_lora"):
            merged.generate(prompt, _greedy(), lora_request=req)
    assert merged_out.token_ids == adapter_out.token_ids
    for a, m in zip(adapter_out.logprobs, merged_out.logprobs):
        for tid in a.keys() & m.keys():
            assert abs(a[tid].logprob - m[tid].logprob) < TOL
    # lora= without merge: adapter mode with that adapter as every request's default.
    with medrt.LLM(str(tiny_llama), num_threads=2, lora=req.lora_path) as default:
        assert default.generate(prompt, _greedy())[0].outputs[0].token_ids == \
            adapter_out.token_ids


def test_prefix_cache_never_crosses_adapters(llm: medrt.LLM, adapters) -> None:
    cardio, paed = _requests(adapters)[:2]
    prompt = {"prompt_token_ids": _prompt(99, 3 * 16 + 1)}  # three full blocks
    params = medrt.SamplingParams(temperature=0.0, max_tokens=1)
    assert llm.generate(prompt, params)[0].num_cached_tokens == 0
    assert llm.generate(prompt, params)[0].num_cached_tokens == 48  # the base's own blocks
    assert llm.generate(prompt, params, lora_request=cardio)[0].num_cached_tokens == 0
    assert llm.generate(prompt, params, lora_request=paed)[0].num_cached_tokens == 0
    assert llm.generate(prompt, params, lora_request=cardio)[0].num_cached_tokens == 48
    # A reloaded id starts a new chain: the old adapter's blocks are never served under it.
    while not llm.remove_lora(1):
        pass
    other = LoRARequest("cardiology-v2", 1, str(adapters["spare"]))
    assert llm.generate(prompt, params, lora_request=other)[0].num_cached_tokens == 0
    llm.remove_lora(1)


def test_slots_are_lru_and_names_resolve(tiny_llama: Path, adapters) -> None:
    reqs = _requests(adapters)[:3]
    with medrt.LLM(str(tiny_llama), num_threads=1, enable_lora=True, max_loras=2) as small:
        params = medrt.SamplingParams(temperature=0.0, max_tokens=2)
        small.generate("chest pain", params, lora_request=reqs[0])
        small.generate("chest pain", params, lora_request=reqs[1])
        small.generate("chest pain", params, lora_request=reqs[0])  # 1 is now most recent
        assert small.add_lora(reqs[2]) is True
        assert small.list_loras() == [1, 3]  # 2, least recently used, was evicted
        assert small.add_lora(reqs[2]) is False
        by_name = small.generate("chest pain", params, lora_request="pharmacy")[0]
        by_req = small.generate("chest pain", params, lora_request=reqs[2])[0]
        assert by_name.outputs[0].token_ids == by_req.outputs[0].token_ids
        with pytest.raises(InvalidRequest, match="unknown LoRA adapter 'radiology'"):
            small.generate("chest pain", params, lora_request="radiology")
        with pytest.raises(InvalidRequest, match="2 lora_requests for 1 prompts"):
            small.generate("chest pain", params, lora_request=[reqs[0], None])
        assert small.remove_lora(3) is True and small.list_loras() == [1]
        with pytest.raises(InvalidCheckpoint, match="max_lora_rank=64"):
            big = build_adapter(tiny_llama, Path(adapters["spare"]).parent / "big", r=65)
            small.generate("chest pain", params, lora_request=LoRARequest("big", 9, str(big)))


def test_engine_refuses_bad_ids_and_modules(tiny_llama: Path) -> None:
    config = _core.EngineConfig()
    config.model_dir = str(tiny_llama)
    config.num_threads = 1
    e = _core.Engine(config)
    with pytest.raises(InvalidRequest, match="lora_id = 5: no LoRA adapter"):
        e.add_request([5, 6, 7], _core.SamplingParams(lora_id=5))
    a, b = np.zeros((2, 64), np.float32), np.zeros((64, 2), np.float32)
    with pytest.raises(InvalidCheckpoint, match="'model.layers.7.self_attn.q_proj' is not a"):
        e.add_lora(1, [("model.layers.7.self_attn.q_proj", a, b)], 1.0)
    with pytest.raises(InvalidCheckpoint, match=r"do not fit the base \[32, 64\]"):
        e.add_lora(1, [("model.layers.0.self_attn.k_proj", a, b)], 1.0)
    e.add_lora(1, [("model.layers.0.self_attn.q_proj", a, b)], 1.0)
    with pytest.raises(InvalidRequest, match="already loaded"):
        e.add_lora(1, [("model.layers.0.self_attn.q_proj", a, b)], 1.0)
    e.add_request([5, 6, 7], _core.SamplingParams(lora_id=1, max_tokens=2))
    assert e.remove_lora(1) is False  # a queued request uses it
    while e.has_unfinished():
        e.step()
    assert e.remove_lora(1) is True and e.loras() == []
    _ = CapacityError  # all slots busy is covered by the manager's eviction path
