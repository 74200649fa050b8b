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
