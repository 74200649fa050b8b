"""Which requests may enter the engine now: a server-wide running limit (the engine's
max_num_seqs), per-tenant concurrency limits, the engine's LoRA adapter slots (max_loras),
and a bounded first-come waiting queue.

A request that cannot start waits in the queue; when the queue already holds
``max_queued`` requests it is refused at once (RESOURCE_EXHAUSTED), so overload shows as fast
errors instead of growing latency. A request for a LoRA adapter starts when its adapter is
one of those the running requests use or fewer than ``max_loras`` adapters are in use; else
it waits until a slot's last request ends, as vLLM's scheduler holds such requests back.
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
    adapter: str | None
    future: asyncio.Future = field(repr=False)


class Admission:
    def __init__(self, max_running: int, max_queued: int, max_loras: int = 0) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self.max_loras = max_loras  # 0: no adapter slots to share
        self.running: Counter[str] = Counter()
        self.adapters: Counter[str] = Counter()  # running requests per LoRA adapter name
        self._waiting: deque[_Waiter] = deque()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def num_running(self) -> int:
        return sum(self.running.values())

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def _slot_free(self, adapter: str | None) -> bool:
        return (adapter is None or self.max_loras <= 0 or adapter in self.adapters
                or len(self.adapters) < self.max_loras)

    def _can_start(self, tenant: str, limit: int, adapter: str | None = None) -> bool:
        return (self.num_running < self.max_running
                and (limit <= 0 or self.running[tenant] < limit) and self._slot_free(adapter))

    def _waits_for_slot(self) -> bool:
        return any(not self._slot_free(w.adapter) for w in self._waiting)

    async def acquire(self, tenant: str, limit: int = 0, adapter: str | None = None) -> float:
        """Waits for a slot (and for an adapter slot when ``adapter`` names a LoRA adapter);
        returns the seconds spent waiting."""
        start = time.monotonic()
        # Waiters that could start were granted when the slot they wait for freed, so the
        # ones still queued are held by their tenants' limits or wait for an adapter slot: a
        # request that can start now overtakes none of them, except that adapter requests
        # queue behind one that waits for a slot (else steady traffic for the adapters in
        # the slots would keep it waiting for ever).
        if self._can_start(tenant, limit, adapter) and not (adapter is not None
                                                            and self._waits_for_slot()):
            self._start(tenant, adapter)
            return 0.0
        if len(self._waiting) >= self.max_queued:
            if limit > 0 and self.running[tenant] >= limit:
                why = f"tenant {tenant!r} has {self.running[tenant]} requests running (its limit)"
            elif not self._slot_free(adapter):
                why = (f"all max_loras={self.max_loras} adapter slots hold adapters of running "
                       "requests")
            else:
                why = f"{self.num_running} requests are running"
            raise ServeError("RESOURCE_EXHAUSTED",
                             f"the waiting queue is full ({self.max_queued} requests) and {why}; "
                             "retry later")
        waiter = _Waiter(tenant, limit, adapter, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        self._idle.clear()
        try:
            await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(tenant, adapter)  # granted and cancelled at once: hand it on
            else:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
                self._grant()  # it may have held back adapter requests behind it
                self._update_idle()
            raise
        return time.monotonic() - start

    def release(self, tenant: str, adapter: str | None = None) -> None:
        self.running[tenant] -= 1
        if self.running[tenant] <= 0:
            del self.running[tenant]
        if adapter is not None:
            self.adapters[adapter] -= 1
            if self.adapters[adapter] <= 0:
                del self.adapters[adapter]
        self._grant()
        self._update_idle()

    def _start(self, tenant: str, adapter: str | None) -> None:
        self.running[tenant] += 1
        if adapter is not None:
            self.adapters[adapter] += 1
        self._idle.clear()

    def _grant(self) -> None:
        # First come first served, except that a waiter whose tenant is at its own limit does
        # not block the others behind it; once an adapter request waits for a slot, the
        # adapter requests behind it wait too (see acquire).
        slot_wait = False
        for waiter in list(self._waiting):
            if self.num_running >= self.max_running:
                return
            if waiter.future.done():
                # Cancelled (the client left) but its task has not run yet to leave the
                # queue: it must not take a slot nobody would release.
                self._waiting.remove(waiter)
                continue
            if waiter.adapter is not None and (slot_wait or not self._slot_free(waiter.adapter)):
                slot_wait = True
                continue
            if self._can_start(waiter.tenant, waiter.limit, waiter.adapter):
                self._waiting.remove(waiter)
                self._start(waiter.tenant, waiter.adapter)
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
