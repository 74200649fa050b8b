"""Which requests may enter the engine now: a server-wide running limit (the engine's
max_num_seqs), per-tenant concurrency limits, and a bounded first-come waiting queue.

A request that cannot start waits in the queue; when the queue already holds
``max_queued`` requests it is refused at once (RESOURCE_EXHAUSTED), so overload shows as fast
errors instead of growing latency.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from medrt.serve.errors import ServeError


@dataclass
class _Waiter:
    tenant: str
    limit: int
    future: asyncio.Future = field(repr=False)


class Admission:
    def __init__(self, max_running: int, max_queued: int) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self.running: Counter[str] = Counter()
        self._waiting: deque[_Waiter] = deque()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def num_running(self) -> int:
        return sum(self.running.values())

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def _can_start(self, tenant: str, limit: int) -> bool:
        return (self.num_running < self.max_running
                and (limit <= 0 or self.running[tenant] < limit))

    async def acquire(self, tenant: str, limit: int = 0) -> float:
        """Waits for a slot; returns the seconds spent waiting."""
        start = time.monotonic()
        if not self._waiting and self._can_start(tenant, limit):
            self._start(tenant)
            return 0.0
        if len(self._waiting) >= self.max_queued:
            why = (f"tenant {tenant!r} has {self.running[tenant]} requests running (its limit)"
                   if limit > 0 and self.running[tenant] >= limit
                   else f"{self.num_running} requests are running")
            raise ServeError("RESOURCE_EXHAUSTED",
                             f"the waiting queue is full ({self.max_queued} requests) and {why}; "
                             "retry later")
        waiter = _Waiter(tenant, limit, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        self._idle.clear()
        try:
            await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(tenant)  # granted and cancelled at once: hand the slot on
            else:
                self._waiting.remove(waiter)
                self._update_idle()
            raise
        return time.monotonic() - start

    def release(self, tenant: str) -> None:
        self.running[tenant] -= 1
        if self.running[tenant] <= 0:
            del self.running[tenant]
        self._grant()
        self._update_idle()

    def _start(self, tenant: str) -> None:
        self.running[tenant] += 1
        self._idle.clear()

    def _grant(self) -> None:
        # First come first served, except that a waiter whose tenant is at its own limit does
        # not block the others behind it.
        for waiter in list(self._waiting):
            if self.num_running >= self.max_running:
                return
            if self._can_start(waiter.tenant, waiter.limit):
                self._waiting.remove(waiter)
                self._start(waiter.tenant)
                waiter.future.set_result(None)

    def _update_idle(self) -> None:
        if not self.running and not self._waiting:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Waits until nothing runs or waits; False after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
