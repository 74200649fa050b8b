"""The Python streaming path does constant work per token: no cumulative copies, short
detokenization windows, one event-loop wake-up per batch of outputs (time per token is
measured by scripts/bench/stream_cost.py, recorded in docs/reliability.md)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from medrt.async_llm import _batched_sink
from medrt.request_state import RequestState
from medrt.sampling_params import SamplingParams
from medrt.tokenizer import Tokenizer

N = 4000
TEXT = "Sepsis is a life-threatening organ dysfunction caused by infection. " * 400


def _raw(token: int) -> Any:
    return SimpleNamespace(finished=False, num_cached_tokens=0, new_token_ids=[token],
                           finish_reason="", stop_token_id=-1, logprobs=[(-1.0, [(token, -1.0)])])


@pytest.mark.parametrize("delta", [False, True])
def test_work_per_streamed_token_does_not_grow(tiny_llama: Path, delta: bool) -> None:
    tok = Tokenizer(tiny_llama)
    ids = tok.encode(TEXT, add_special_tokens=False)[:N]
    assert len(ids) == N
    decoded = []  # tokens passed to each decode call
    real_decode = tok.decode
    tok.decode = lambda t, skip_special_tokens=True: (  # type: ignore[method-assign]
        decoded.append(len(t)) or real_decode(t, skip_special_tokens=skip_special_tokens))
    state = RequestState("r", None, ids[:3], SamplingParams(max_tokens=N, logprobs=1), tok)
    text = ""
    for i, t in enumerate(ids):
        state.process(_raw(t), 0.0)
        out = state.output(delta=delta).outputs[0]
        text = text + out.text if delta else out.text
        if not delta:
            # The cumulative output is the request's own growing list, not a copy of it.
            assert out.token_ids is state.token_ids and len(out.token_ids) == i + 1
            assert out.logprobs is state.logprobs
    state.process(SimpleNamespace(**{**vars(_raw(ids[0])), "new_token_ids": [],
                                     "finished": True, "finish_reason": "length"}), 0.0)
    out = state.output(delta=delta).outputs[0]
    text = text + out.text if delta else out.text
    assert text == real_decode(ids)
    # Each decode looks at a short window, never at the whole completion.
    assert max(decoded) < 64
    assert sum(decoded) < 16 * N


def test_async_sink_wakes_the_loop_once_per_batch() -> None:
    loop = asyncio.new_event_loop()
    try:
        inbox: asyncio.Queue = asyncio.Queue()
        wakeups = []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: wakeups.append(1) or real(*a)  # type: ignore
        sink = _batched_sink(loop, inbox)
        producer = threading.Thread(target=lambda: [sink((0.0, i)) for i in range(1000)])
        producer.start()
        producer.join(timeout=30)

        async def drain() -> list[int]:
            await asyncio.sleep(0)
            return [inbox.get_nowait()[1] for _ in range(inbox.qsize())]

        assert loop.run_until_complete(drain()) == list(range(1000))
        assert len(wakeups) == 1  # the loop was not running: every item joined one batch
        sink((0.0, 1000))
        assert loop.run_until_complete(drain()) == [1000] and len(wakeups) == 2
    finally:
        loop.close()
