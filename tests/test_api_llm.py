"""medrt.LLM end to end on the tiny random models: parity, chat, streaming, stops, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import medrt
import medrt._core
import pytest
from medrt.errors import Cancelled, CapacityError, InvalidCheckpoint, InvalidRequest

PROMPT = "The patient reports chest pain"
CHAT = [{"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Metformin is a first-line medication for?"}]


@pytest.fixture(scope="module")
def llm(tiny_llama: Path) -> Iterator[medrt.LLM]:
    with medrt.LLM(str(tiny_llama), num_threads=1, max_model_len=256) as model:
        yield model


def _hf_greedy(model_dir: Path, prompt: list[int], n: int) -> list[int]:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt):]


def _greedy(max_tokens: int, **kw: object) -> medrt.SamplingParams:
    return medrt.SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2"])
def test_greedy_matches_core_and_transformers(name: str, request: pytest.FixtureRequest) -> None:
    from medrt import _core

    model_dir: Path = request.getfixturevalue(name)
    with medrt.LLM(str(model_dir), num_threads=1) as llm:
        prompt = llm.get_tokenizer().encode(PROMPT)
        out = llm.generate(PROMPT, _greedy(12, ignore_eos=True))[0]
    ids = out.outputs[0].token_ids
    assert out.prompt == PROMPT and out.prompt_token_ids == prompt
    assert ids == _core.Model(str(model_dir), 1).greedy(prompt, 12)
    assert ids == _hf_greedy(model_dir, prompt, 12)
    assert out.outputs[0].finish_reason == "length" and out.finished
    assert out.outputs[0].text == llm.get_tokenizer().decode(ids)


def test_batch_keeps_input_order_and_each_request_its_params(llm: medrt.LLM) -> None:
    tok = llm.get_tokenizer()
    prompts = [PROMPT, tok.encode("Take ibuprofen"), {"prompt": "Hello, how"},
               {"prompt_token_ids": tok.encode("Vaccination")}]
    singles = [llm.generate(p, _greedy(5 + i, ignore_eos=True))[0] for i, p in enumerate(prompts)]
    batch = llm.generate(prompts, [_greedy(5 + i, ignore_eos=True) for i in range(4)])
    assert [len(o.outputs[0].token_ids) for o in batch] == [5, 6, 7, 8]
    for one, many in zip(singles, batch):
        assert many.outputs[0].token_ids == one.outputs[0].token_ids
        assert many.prompt_token_ids == one.prompt_token_ids
    assert batch[1].prompt is None and batch[2].prompt == "Hello, how"
    assert len({o.request_id for o in batch}) == 4


def test_seeded_sampling_is_reproducible_in_any_batch(llm: medrt.LLM) -> None:
    params = medrt.SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=10,
                                  ignore_eos=True)
    alone = llm.generate(PROMPT, params)[0].outputs[0].token_ids
    crowd = llm.generate([PROMPT, "Hello", PROMPT],
                         [params, medrt.SamplingParams(seed=5, max_tokens=10), params])
    assert crowd[0].outputs[0].token_ids == alone == crowd[2].outputs[0].token_ids


def test_chat_stream_concatenates_to_the_final_text(llm: medrt.LLM) -> None:
    params = _greedy(24, ignore_eos=True)
    final = llm.chat(CHAT, params)
    assert isinstance(final, list) and len(final) == 1
    chunks = list(llm.chat(CHAT, params, stream=True))
    assert len(chunks) > 1 and "".join(chunks) == final[0].outputs[0].text
    rendered = llm.get_tokenizer().apply_chat_template(CHAT)
    assert final[0].prompt == rendered and rendered.endswith("<|im_start|>assistant\n")


def test_stop_string_cuts_text_and_frees_blocks(llm: medrt.LLM) -> None:
    start = llm.stats()["free_blocks"]
    full = llm.generate(PROMPT, _greedy(40, ignore_eos=True))[0].outputs[0]
    stop = full.text[10:13]
    cut = full.text.index(stop)
    out = llm.generate(PROMPT, _greedy(40, ignore_eos=True, stop=[stop]))[0].outputs[0]
    assert out.text == full.text[:cut]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop)
    assert len(out.token_ids) < len(full.token_ids)
    assert out.token_ids == full.token_ids[:len(out.token_ids)]
    kept = llm.generate(PROMPT, _greedy(40, ignore_eos=True, stop=stop,
                                        include_stop_str_in_output=True))[0].outputs[0]
    assert kept.text == full.text[:cut + len(stop)]
    streamed = "".join(llm.chat(CHAT, _greedy(40, ignore_eos=True, stop=stop), stream=True))
    assert stop not in streamed
    stats = llm.stats()
    assert stats["free_blocks"] == start and stats["num_running"] == 0


def test_stop_token_ids_and_eos(llm: medrt.LLM) -> None:
    full = llm.generate(PROMPT, _greedy(30, ignore_eos=True))[0].outputs[0]
    stop_id = full.token_ids[4]
    first = full.token_ids.index(stop_id)
    out = llm.generate(PROMPT, _greedy(30, ignore_eos=True, stop_token_ids=[stop_id]))[0]
    done = out.outputs[0]
    assert done.token_ids == full.token_ids[:first + 1]
    assert (done.finish_reason, done.stop_reason) == ("stop", stop_id)
    assert done.text == llm.get_tokenizer().decode(full.token_ids[:first])
    # min_tokens masks the stop token until enough tokens exist.
    late = llm.generate(PROMPT, _greedy(30, ignore_eos=True, stop_token_ids=[stop_id],
                                        min_tokens=first + 2))[0].outputs[0]
    assert len(late.token_ids) > first + 1


def test_context_length_ends_with_length(tiny_llama: Path) -> None:
    with medrt.LLM(str(tiny_llama), num_threads=1, max_model_len=24) as small:
        prompt = list(range(3, 23))  # 20 tokens
        out = small.generate(prompt, _greedy(100, ignore_eos=True))[0].outputs[0]
        assert out.finish_reason == "length" and len(out.token_ids) == 4
        with pytest.raises(InvalidRequest, match="max_model_len"):
            small.generate([list(range(3, 30))], _greedy(1))


def test_logprobs(llm: medrt.LLM) -> None:
    out = llm.generate(PROMPT, _greedy(6, ignore_eos=True, logprobs=3))[0].outputs[0]
    assert out.logprobs is not None and len(out.logprobs) == 6
    for tid, entry in zip(out.token_ids, out.logprobs):
        assert entry[tid].rank == 1 and len(entry) == 3  # greedy picks the best token
        assert entry[tid].logprob <= 0 and entry[tid].decoded_token is not None
    assert out.cumulative_logprob == pytest.approx(
        sum(e[t].logprob for t, e in zip(out.token_ids, out.logprobs)), abs=1e-4)
    assert llm.generate(PROMPT, _greedy(2))[0].outputs[0].logprobs is None


def test_metrics_and_prefix_cache(llm: medrt.LLM) -> None:
    long_prompt = "Hypertension is diagnosed when blood pressure stays above 140/90 mmHg. " * 3
    llm.generate(long_prompt, _greedy(2))
    before = llm.stats()
    out = llm.generate(long_prompt, _greedy(2))[0]
    after = llm.stats()
    assert out.num_cached_tokens >= after["block_size"]
    assert out.metrics.num_prompt_tokens == len(out.prompt_token_ids)
    assert out.metrics.num_generation_tokens == 2
    assert 0 <= out.metrics.time_to_first_token <= out.metrics.e2e_latency
    # The counters moved by exactly what this request did.
    assert after["generation_tokens"] - before["generation_tokens"] == 2
    assert (after["prompt_tokens"] - before["prompt_tokens"]
            == len(out.prompt_token_ids) - out.num_cached_tokens)
    assert after["prefix_cache_queries"] > before["prefix_cache_queries"]
    assert (after["prefix_cache_hits"] - before["prefix_cache_hits"]
            == out.num_cached_tokens // after["block_size"])
    assert after["num_preemptions"] == before["num_preemptions"]
    assert after["free_blocks"] == after["num_blocks"] > 0
    assert after["num_running"] == after["num_waiting"] == 0


def test_leaving_a_stream_early_aborts_the_request(llm: medrt.LLM) -> None:
    start = llm.stats()["free_blocks"]
    stream = llm.chat(CHAT, _greedy(200, ignore_eos=True), stream=True)
    assert next(stream)
    stream.close()
    stats = llm.stats()
    assert stats["free_blocks"] == start and stats["num_running"] == 0
    assert stats["num_waiting"] == 0


def test_invalid_requests_queue_nothing(llm: medrt.LLM) -> None:
    before = llm.stats()["steps"]
    vocab = llm.model_config["vocab_size"]
    with pytest.raises(InvalidRequest, match="outside the vocabulary"):
        llm.generate([[5, 6], [vocab]])
    with pytest.raises(InvalidRequest, match="empty"):
        llm.generate({"prompt_token_ids": []})
    with pytest.raises(InvalidRequest, match="max_model_len"):
        llm.generate(["ok", list(range(3, 3 + 300))])
    with pytest.raises(InvalidRequest, match="2 sampling_params for 1 prompts"):
        llm.generate("ok", [_greedy(1), _greedy(1)])
    with pytest.raises(InvalidRequest, match="one conversation"):
        llm.chat([CHAT, CHAT], stream=True)
    with pytest.raises(InvalidRequest, match="messages"):
        llm.chat("not a conversation")  # type: ignore[arg-type]
    assert llm.stats()["steps"] == before


def test_bad_model_directories(tmp_path: Path, tiny_llama: Path) -> None:
    with pytest.raises(InvalidCheckpoint, match="config.json"):
        medrt.LLM(str(tmp_path))
    with pytest.raises(InvalidCheckpoint, match="neither a model directory nor a known model"):
        medrt.LLM("no-such-model-anywhere")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_llama / name).read_bytes())
    with pytest.raises(InvalidCheckpoint):
        medrt.LLM(str(tmp_path))


def test_request_larger_than_the_kv_pool(tiny_llama: Path) -> None:
    with medrt.LLM(str(tiny_llama), num_threads=1, block_size=4, num_kv_blocks=4) as small:
        with pytest.raises(CapacityError, match="KV blocks"):
            small.generate(["ok", list(range(3, 30))], _greedy(4))
        stats = small.stats()  # "ok" was queued first; it was aborted before the error
        assert stats["free_blocks"] == stats["num_blocks"] == 4 and stats["num_running"] == 0
        # Requests that fit still run; too many at once wait or are preempted, not refused.
        outs = small.generate([[5, 6, 7]] * 3, _greedy(6, ignore_eos=True))
        assert all(len(o.outputs[0].token_ids) == 6 for o in outs)


def test_closed_llm_refuses_requests(tiny_llama: Path) -> None:
    llm = medrt.LLM(str(tiny_llama), num_threads=1)
    llm.close()
    llm.close()
    with pytest.raises(Cancelled):
        llm.generate(PROMPT, _greedy(2))
