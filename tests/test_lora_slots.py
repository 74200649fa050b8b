"""More adapters in flight than max_loras slots (python/medrt/lora/slots.py): LLM.generate
submits what fits and runs the rest as slots free up, AsyncLLM requests wait for a slot first
come first served, and a waiter that is cancelled takes nothing. Greedy tokens equal each
adapter's prompts run alone (the engine is batch invariant)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

import medrt
from helpers.lora_adapters import build_adapter
from helpers.tiny_models import MODEL_VOCAB
from medrt.errors import Cancelled, CapacityError
from medrt.lora import LoRARequest

N_NEW = 8


@pytest.fixture(scope="module")
def loras(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> list[LoRARequest]:
    root = tmp_path_factory.mktemp("adapters")
    return [LoRARequest(f"a{i}", i, str(build_adapter(tiny_llama, root / f"a{i}", r=4,
                                                        seed=i)))
            for i in range(1, 5)]


def _prompt(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"prompt_token_ids": [int(t) for t in rng.integers(3, MODEL_VOCAB, size=9)]}


def _greedy(n: int = N_NEW) -> medrt.SamplingParams:
    return medrt.SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


@pytest.fixture(scope="module")
def interleaved(loras: list[LoRARequest]) -> list[tuple[dict, LoRARequest | None]]:
    """Two prompts for each adapter and the base, adapters interleaved."""
    order = [*loras, None, *loras, None]
    return [(_prompt(i), lora) for i, lora in enumerate(order)]


@pytest.fixture(scope="module")
def alone(tiny_llama: Path, loras: list[LoRARequest],
          interleaved: list[tuple[dict, LoRARequest | None]]) -> list[list[int]]:
    """Each prompt's greedy tokens, every adapter's prompts run in a batch of their own."""
    want: list[list[int]] = [[] for _ in interleaved]
    with medrt.LLM(str(tiny_llama), num_threads=2, enable_lora=True, max_loras=1) as llm:
        for lora in [*loras, None]:
            idx = [i for i, (_, lr) in enumerate(interleaved) if lr == lora]
            outs = llm.generate([interleaved[i][0] for i in idx], _greedy(), lora_request=lora)
            for i, out in zip(idx, outs):
                want[i] = list(out.outputs[0].token_ids)
    return want


@pytest.mark.parametrize("max_loras", [1, 2])
def test_generate_runs_more_adapters_than_slots(tiny_llama: Path, interleaved, alone,
                                                max_loras: int) -> None:
    with medrt.LLM(str(tiny_llama), num_threads=2, enable_lora=True,
                   max_loras=max_loras) as llm:
        outs = llm.generate([p for p, _ in interleaved], _greedy(),
                            lora_request=[lr for _, lr in interleaved])
        assert [list(o.outputs[0].token_ids) for o in outs] == alone
        assert len(llm.list_loras()) <= max_loras
        # chat takes the same path: one conversation per adapter, all in one call.
        chats = llm.chat([[{"role": "user", "content": f"q{i}"}] for i in range(4)], _greedy(2),
                         lora_request=[lr for _, lr in interleaved[:4]])
        assert all(c.finished for c in chats)


@pytest.fixture
def engine(tiny_llama: Path) -> Iterator[medrt.AsyncLLM]:
    e = medrt.AsyncLLM(str(tiny_llama), num_threads=2, enable_lora=True, max_loras=1)
    yield e
    e.close()


async def _tokens(engine: medrt.AsyncLLM, prompt: dict, lora: LoRARequest | None,
                  n: int = N_NEW) -> list[int]:
    last = None
    async for out in engine.generate(prompt, _greedy(n), lora_request=lora):
        last = out
    return list(last.outputs[0].token_ids)


def test_async_requests_wait_for_a_slot(engine: medrt.AsyncLLM, interleaved, alone) -> None:
    async def run() -> list[list[int]]:
        return await asyncio.gather(*[_tokens(engine, p, lr) for p, lr in interleaved])

    assert asyncio.run(run()) == alone
    assert engine._slots.num_waiting == 0


def _slots_busy(engine: medrt.LLM | medrt.AsyncLLM, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Makes every loaded adapter unevictable, as if running requests held them all (a real
    request on the tiny model ends too soon to test against); the call returned frees them."""
    def refuse() -> None:
        raise CapacityError("all max_loras=1 LoRA slots hold adapters of running requests")

    monkeypatch.setattr(engine._lora, "_evict_one", refuse)

    def free() -> None:
        monkeypatch.undo()
        engine._slots.released()  # what the end of the last running request would call

    return free


def test_llm_waits_for_slots_it_does_not_hold(tiny_llama: Path, loras: list[LoRARequest],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch (and a streamed chat) whose adapter finds the slots held by requests of other
    callers waits for their end, with none of its own requests running to wake it."""
    with medrt.LLM(str(tiny_llama), num_threads=1, enable_lora=True, max_loras=1) as llm:
        llm.generate(_prompt(1), _greedy(1), lora_request=loras[0])
        threading.Timer(0.1, _slots_busy(llm, monkeypatch)).start()
        outs = llm.generate([_prompt(2), _prompt(3)], _greedy(2), lora_request=[loras[1], None])
        assert all(o.finished for o in outs) and llm.list_loras() == [loras[1].lora_int_id]
        threading.Timer(0.1, _slots_busy(llm, monkeypatch)).start()
        text = llm.chat([{"role": "user", "content": "hi"}], _greedy(2), stream=True,
                        lora_request=loras[2])
        assert isinstance("".join(text), str) and llm.list_loras() == [loras[2].lora_int_id]


def test_async_waiters_are_first_come_first_served(engine: medrt.AsyncLLM,
                                                   loras: list[LoRARequest],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = loras[0], loras[1]
    started: list[str] = []

    async def one(name: str, lora: LoRARequest) -> None:
        async for _ in engine.generate(_prompt(7), _greedy(2), lora_request=lora):
            if not started or started[-1] != name:
                started.append(name)

    async def run() -> None:
        await one("a", a)  # a is loaded and idle
        free = _slots_busy(engine, monkeypatch)
        wait_b = asyncio.create_task(one("b", b))
        await asyncio.sleep(0.02)
        assert engine._slots.num_waiting == 1
        # a's adapter is in the slot, but b came first: a later request for a queues behind b.
        late_a = asyncio.create_task(one("a", a))
        await asyncio.sleep(0.02)
        assert engine._slots.num_waiting == 2 and started == ["a"]
        free()
        await asyncio.gather(wait_b, late_a)

    asyncio.run(run())
    assert started == ["a", "b", "a"]
    assert engine._slots.num_waiting == 0


def test_cancelled_waiter_takes_no_slot(engine: medrt.AsyncLLM, loras: list[LoRARequest],
                                        interleaved, alone,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = loras[:3]

    async def run() -> list[int]:
        await _tokens(engine, _prompt(100), a)
        free = _slots_busy(engine, monkeypatch)
        waiter = asyncio.create_task(_tokens(engine, _prompt(101), b))
        behind = asyncio.create_task(_tokens(engine, interleaved[2][0], c))
        await asyncio.sleep(0.02)
        assert engine._slots.num_waiting == 2
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert engine._slots.num_waiting == 1
        free()
        # The waiter behind the cancelled one gets the slot, and b was never loaded.
        got = await behind
        assert engine.list_loras() == [c.lora_int_id]
        return got

    assert asyncio.run(run()) == alone[2]
    assert engine._slots.num_waiting == 0 and engine.num_unfinished_requests() == 0


def test_waiters_end_when_the_engine_closes(tiny_llama: Path, loras: list[LoRARequest],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    engine = medrt.AsyncLLM(str(tiny_llama), num_threads=1, enable_lora=True, max_loras=1)

    async def run() -> None:
        await _tokens(engine, _prompt(1), loras[0], 1)
        _slots_busy(engine, monkeypatch)
        waiter = asyncio.create_task(_tokens(engine, _prompt(2), loras[1]))
        await asyncio.sleep(0.02)
        engine.close()
        with pytest.raises(Cancelled):
            await waiter

    asyncio.run(run())
