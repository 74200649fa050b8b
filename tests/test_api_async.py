"""medrt.AsyncLLM: streaming, concurrency (continuous batching) and cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import medrt
import medrt._core
import pytest
from medrt.errors import InvalidRequest

PROMPTS = ["The patient reports chest pain", "Metformin is", "Call emergency services",
           "Take ibuprofen with food"]


@pytest.fixture(scope="module")
def llm(tiny_llama: Path) -> Iterator[medrt.AsyncLLM]:
    model = medrt.AsyncLLM(str(tiny_llama), num_threads=1, max_model_len=512)
    yield model
    model.close()


def _greedy(max_tokens: int, **kw: object) -> medrt.SamplingParams:
    return medrt.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                                **kw)  # type: ignore[arg-type]


async def _until_idle(llm: medrt.AsyncLLM) -> None:
    # The engine confirms an abort at its next step; wait for that, not for a time.
    for _ in range(1000):
        if llm.num_unfinished_requests() == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the engine never confirmed the abort")


async def _collect(llm: medrt.AsyncLLM, prompt: str, params: medrt.SamplingParams,
                   log: list[str] | None = None, **kw: object) -> list[medrt.RequestOutput]:
    outs = []
    async for out in llm.generate(prompt, params, **kw):  # type: ignore[arg-type]
        outs.append(out)
        if log is not None:
            log.append(out.request_id)
    return outs


def test_streams_cumulative_outputs(llm: medrt.AsyncLLM) -> None:
    outs = asyncio.run(_collect(llm, PROMPTS[0], _greedy(12)))
    assert outs[-1].finished and not any(o.finished for o in outs[:-1])
    texts = [o.outputs[0].text for o in outs]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    assert len(outs[-1].outputs[0].token_ids) == 12
    assert [len(o.outputs[0].token_ids) for o in outs] == sorted(
        len(o.outputs[0].token_ids) for o in outs)


def test_delta_outputs_add_up_to_the_cumulative_one(llm: medrt.AsyncLLM) -> None:
    full = asyncio.run(_collect(llm, PROMPTS[1], _greedy(20)))[-1].outputs[0]
    deltas = asyncio.run(_collect(llm, PROMPTS[1], _greedy(20), delta=True))
    assert "".join(o.outputs[0].text for o in deltas) == full.text
    assert [t for o in deltas for t in o.outputs[0].token_ids] == full.token_ids


def test_concurrent_requests_interleave_and_match_solo_runs(llm: medrt.AsyncLLM) -> None:
    # The tiny model steps faster than Python submits requests, so one long request gives
    # the short ones time to join it; all are submitted in one pass of the event loop.
    lengths = [480, 100, 100, 100]
    solo = [asyncio.run(_collect(llm, p, _greedy(n)))[-1].outputs[0].token_ids
            for p, n in zip(PROMPTS, lengths)]

    async def together() -> list[medrt.RequestOutput]:
        runs = await asyncio.gather(*(_collect(llm, p, _greedy(n), request_id=f"r{i}")
                                      for i, (p, n) in enumerate(zip(PROMPTS, lengths))))
        return [r[-1] for r in runs]

    steps_before = llm.stats()["steps"]
    finals = asyncio.run(together())
    steps = llm.stats()["steps"] - steps_before
    assert [f.outputs[0].token_ids for f in finals] == solo
    assert [f.request_id for f in finals] == ["r0", "r1", "r2", "r3"]
    # Continuous batching: steps served several requests at once, and the short requests,
    # submitted while the long one ran, finished before it.
    assert steps < sum(lengths)
    for short in finals[1:]:
        assert short.metrics.finished_time <= finals[0].metrics.finished_time


def test_cancelling_the_consumer_frees_the_blocks(llm: medrt.AsyncLLM) -> None:
    """A consumer cancelled while its request runs frees the request's blocks. The engine runs
    on its own thread and may finish all 400 tokens before the consumer, reading queued
    outputs, gets to cancel; such an attempt still must end with every block free, and the
    scenario is run again (at most 5 times) until a cancel lands on a running request."""
    async def scenario() -> bool:
        start = llm.stats()["free_blocks"]
        started = asyncio.Event()

        async def consume() -> None:
            async for out in llm.generate(PROMPTS[0], _greedy(400)):
                if len(out.outputs[0].token_ids) >= 3:
                    started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        running = llm.stats()["free_blocks"] < start  # it holds blocks: still in the engine
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await _until_idle(llm)
        stats = llm.stats()
        assert stats["free_blocks"] == start
        assert stats["num_running"] == 0 and stats["num_waiting"] == 0
        return running

    assert any(asyncio.run(scenario()) for _ in range(5)), \
        "the request finished before every cancel: nothing was cancelled"


def test_breaking_out_and_abort_by_id(llm: medrt.AsyncLLM) -> None:
    async def scenario() -> None:
        start = llm.stats()["free_blocks"]
        gen = llm.generate(PROMPTS[2], _greedy(400))
        async for _ in gen:
            break
        await gen.aclose()
        await _until_idle(llm)
        assert llm.stats()["free_blocks"] == start

        outs = []
        async for out in llm.generate(PROMPTS[3], _greedy(400), request_id="ward-7"):
            outs.append(out)
            if len(outs) == 2:
                llm.abort("ward-7")
        assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "abort"
        assert len(outs[-1].outputs[0].token_ids) < 400
        await _until_idle(llm)
        assert llm.stats()["free_blocks"] == start

    asyncio.run(scenario())


def test_stop_string_and_chat(llm: medrt.AsyncLLM) -> None:
    async def scenario() -> None:
        full = (await _collect(llm, PROMPTS[0], _greedy(40)))[-1].outputs[0].text
        stop = next(full[i:i + 3] for i in range(8, len(full))
                    if "\ufffd" not in full[i:i + 3])
        outs = await _collect(llm, PROMPTS[0], _greedy(40, stop=stop))
        assert all(stop not in o.outputs[0].text for o in outs)
        last = outs[-1].outputs[0]
        assert last.text == full[:full.index(stop)] and last.stop_reason == stop
        await _until_idle(llm)

        chat = [{"role": "user", "content": "Hello, how can I help you today?"}]
        answer = [o async for o in llm.chat(chat, _greedy(8))][-1]
        assert answer.prompt == llm.get_tokenizer().apply_chat_template(chat)
        assert len(answer.outputs[0].token_ids) == 8

    asyncio.run(scenario())


def test_errors_surface_on_first_iteration(llm: medrt.AsyncLLM) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidRequest, match="max_model_len"):
            await _collect(llm, "x " * 600, _greedy(4))
        gen = llm.generate(PROMPTS[0], _greedy(50), request_id="dup")
        await gen.__anext__()
        with pytest.raises(InvalidRequest, match="already running"):
            await _collect(llm, PROMPTS[0], _greedy(4), request_id="dup")
        await gen.aclose()
        await _until_idle(llm)

    asyncio.run(scenario())
