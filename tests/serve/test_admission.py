"""The admission queue: limits, first come first served, and no slot lost to a waiter that
leaves (the race a cancelled client and a finishing request can run)."""

from __future__ import annotations

import asyncio

import pytest
from medrt.serve.admission import Admission
from medrt.serve.errors import ServeError


def test_limits_queue_and_order() -> None:
    async def run() -> None:
        a = Admission(max_running=2, max_queued=2)
        await a.acquire("x")
        await a.acquire("y")
        order: list[str] = []

        async def wait(name: str) -> None:
            await a.acquire(name)
            order.append(name)
        w1 = asyncio.create_task(wait("p"))
        w2 = asyncio.create_task(wait("q"))
        await asyncio.sleep(0)
        assert a.num_waiting == 2
        with pytest.raises(ServeError) as info:
            await a.acquire("z")
        assert info.value.code == "RESOURCE_EXHAUSTED"
        a.release("x")
        a.release("y")
        await asyncio.gather(w1, w2)
        assert order == ["p", "q"] and a.num_running == 2 and a.num_waiting == 0

    asyncio.run(run())


def test_tenant_limit_does_not_block_others() -> None:
    async def run() -> None:
        a = Admission(max_running=4, max_queued=4)
        await a.acquire("solo", limit=1)
        blocked = asyncio.create_task(a.acquire("solo", limit=1))
        await asyncio.sleep(0)
        assert a.num_waiting == 1
        await asyncio.wait_for(a.acquire("other", limit=1), 1)  # passes the waiting one
        a.release("solo")
        await asyncio.wait_for(blocked, 1)
        assert a.running == {"solo": 1, "other": 1}

    asyncio.run(run())


def test_a_waiter_cancelled_before_its_grant_takes_no_slot() -> None:
    async def run() -> None:
        a = Admission(max_running=1, max_queued=1)
        await a.acquire("x")
        waiter = asyncio.create_task(a.acquire("y"))
        await asyncio.sleep(0)
        waiter.cancel()   # the client left ...
        a.release("x")    # ... and a slot frees before the waiter's task runs again
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert a.num_running == 0 and a.num_waiting == 0
        assert await a.wait_idle(0.1)

    asyncio.run(run())


def test_a_waiter_granted_then_cancelled_hands_the_slot_on() -> None:
    async def run() -> None:
        a = Admission(max_running=1, max_queued=2)
        await a.acquire("x")
        first = asyncio.create_task(a.acquire("y"))
        second = asyncio.create_task(a.acquire("z"))
        await asyncio.sleep(0)
        a.release("x")    # grants "y" ...
        first.cancel()    # ... whose task is cancelled before it resumes
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 1)  # the slot went on to "z"
        assert a.running == {"z": 1}

    asyncio.run(run())


def test_a_request_for_another_adapter_waits_for_a_slot() -> None:
    async def run() -> None:
        a = Admission(max_running=8, max_queued=4, max_loras=1)
        await a.acquire("t", adapter="cardiology")
        await a.acquire("t", adapter="cardiology")  # the adapter in the slot: starts
        await a.acquire("t")  # the base model needs no slot
        pharmacy = asyncio.create_task(a.acquire("t", adapter="pharmacy"))
        await asyncio.sleep(0)
        assert a.num_waiting == 1 and not pharmacy.done()
        # Behind a request that waits for a slot, adapter requests queue in arrival order,
        # even for the adapter in the slot (else it could wait for ever); the base does not.
        late = asyncio.create_task(a.acquire("t", adapter="cardiology"))
        await asyncio.wait_for(a.acquire("t"), 1)
        await asyncio.sleep(0)
        assert a.num_waiting == 2
        a.release("t", "cardiology")
        await asyncio.sleep(0)
        assert not pharmacy.done()  # one cardiology request still holds the slot
        a.release("t", "cardiology")
        await asyncio.wait_for(pharmacy, 1)
        assert a.adapters == {"pharmacy": 1} and not late.done()
        a.release("t", "pharmacy")
        await asyncio.wait_for(late, 1)
        assert a.adapters == {"cardiology": 1} and a.num_waiting == 0

    asyncio.run(run())


def test_a_slot_waiter_that_leaves_takes_nothing_and_unblocks_the_others() -> None:
    async def run() -> None:
        a = Admission(max_running=8, max_queued=2, max_loras=1)
        await a.acquire("t", adapter="cardiology")
        pharmacy = asyncio.create_task(a.acquire("t", adapter="pharmacy"))
        await asyncio.sleep(0)
        behind = asyncio.create_task(a.acquire("t", adapter="cardiology"))
        await asyncio.sleep(0)
        with pytest.raises(ServeError) as info:  # the queue limit still applies
            await a.acquire("t", adapter="pharmacy")
        assert info.value.code == "RESOURCE_EXHAUSTED"
        assert "adapter slots" in info.value.message
        pharmacy.cancel()  # the client left while it waited for the slot
        with pytest.raises(asyncio.CancelledError):
            await pharmacy
        await asyncio.wait_for(behind, 1)  # no longer held back behind it
        assert a.adapters == {"cardiology": 2} and a.num_waiting == 0
        a.release("t", "cardiology")
        a.release("t", "cardiology")
        assert a.num_running == 0 and not a.adapters and await a.wait_idle(0.1)

    asyncio.run(run())


def test_an_adapter_slot_the_engine_frees_a_step_later() -> None:
    """Admission counts a slot free when the last request of its adapter ends; the engine
    lets the adapter go only once it has processed that request's abort (a client that went
    away), so loading the next adapter is retried until then, or until the deadline."""
    from types import SimpleNamespace

    from medrt.errors import CapacityError
    from medrt.serve.core import ServeCore

    class Engine:
        busy_steps = 3
        loads = 0

        def add_lora(self, request) -> bool:
            self.loads += 1
            if self.loads <= self.busy_steps:
                raise CapacityError("all max_loras=1 LoRA slots hold adapters of running "
                                    "requests")
            return True

    async def run() -> None:
        core = ServeCore("m", max_running=1, max_queued=1, max_loras=1)
        core.llm = Engine()
        rr = SimpleNamespace(adapter=SimpleNamespace(request="pharmacy"), deadline_hit=False,
                             aborted_by_client=False,
                             _abort_error=lambda: ServeError("DEADLINE_EXCEEDED", "late"))
        await asyncio.wait_for(core.load_adapter(rr), 5)
        assert core.llm.loads == 4
        core.llm = Engine()
        core.llm.busy_steps = 10 ** 9
        waiting = asyncio.create_task(core.load_adapter(rr))
        await asyncio.sleep(0.05)
        rr.deadline_hit = True
        with pytest.raises(ServeError) as info:
            await asyncio.wait_for(waiting, 5)
        assert info.value.code == "DEADLINE_EXCEEDED"

    asyncio.run(run())
