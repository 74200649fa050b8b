"""When a LoRA request may enter the engine: its adapter must hold one of the max_loras slots,
and a slot can only be taken from an adapter no running request uses. A request that finds
every slot busy is held back until a request with an adapter ends, as vLLM's scheduler holds
back requests beyond max_loras adapters per batch.

LLM batches (blocking) and AsyncLLM requests (asyncio) share this object. A batch is finite, so
it submits whatever fits and keeps the rest pending, in order (no starvation possible).
AsyncLLM's waiters are served first come first served: once one waits, later adapter requests
queue behind it, even for adapters in the slots, so steady traffic for those cannot keep it
waiting for ever (the service's admission queue keeps the same rule).

Every engine request with an adapter reports its end here (``released``, called on the engine
client's thread, also for requests aborted and detached); that is what wakes the waiters.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from medrt.errors import Cancelled, CapacityError


@dataclass
class _Waiter:
    lora: Any
    submit: Callable[[], Any]
    future: asyncio.Future = field(repr=False)


class LoraSlots:
    def __init__(self, manager: Any) -> None:
        self._manager = manager
        # Load-then-submit is one step under this lock: no other thread can evict the adapter
        # between its load and its request reaching the engine.
        self._start_lock = threading.Lock()
        self._listeners_lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._waiting: deque[_Waiter] = deque()  # AsyncLLM's, touched on its event loop only
        self._closed = False

    def start(self, lora: Any, submit: Callable[[], Any]) -> Any:
        """Loads ``lora`` (None: the base, no slot) and runs ``submit``, returning what it
        returns; None when every slot holds adapters of running requests."""
        with self._start_lock:
            if self._closed:
                raise Cancelled("the engine is closed")
            if lora is not None:
                try:
                    self._manager.add(lora)
                except CapacityError:
                    return None
            return submit()

    def loaded(self, lora: Any) -> bool:
        return lora is None or lora.lora_int_id in self._manager.list()

    def listen(self, wake: Callable[[], None]) -> None:
        """``wake`` (thread-safe, quick) is called after each request with an adapter ends."""
        with self._listeners_lock:
            self._listeners.append(wake)

    def unlisten(self, wake: Callable[[], None]) -> None:
        with self._listeners_lock:
            if wake in self._listeners:
                self._listeners.remove(wake)

    def released(self) -> None:
        """A request with an adapter ended: its slot may be free now."""
        with self._listeners_lock:
            listeners = list(self._listeners)
        for wake in listeners:
            wake()

    def close(self) -> None:
        """The engine is closing: waiters end with Cancelled instead of waiting for ever."""
        self._closed = True
        self.released()

    # -- blocking callers --------------------------------------------------------------------

    def start_blocking(self, lora: Any, submit: Callable[[], Any]) -> Any:
        """start(), waiting for a slot as long as it takes."""
        freed = threading.Event()
        self.listen(freed.set)
        try:
            while True:
                freed.clear()
                started = self.start(lora, submit)
                if started is not None:
                    return started
                freed.wait()
        finally:
            self.unlisten(freed.set)

    # -- asyncio callers -----------------------------------------------------------------------

    async def start_async(self, lora: Any, submit: Callable[[], Any],
                          undo: Callable[[Any], None]) -> Any:
        """start(), awaiting a slot in first-come order. Cancelled while waiting, the request
        leaves the queue having taken nothing; cancelled just after it was submitted, ``undo``
        gets what ``submit`` returned (to abort it)."""
        if lora is None:
            return self.start(None, submit)
        if not self._waiting:
            started = self.start(lora, submit)
            if started is not None:
                return started
        loop = asyncio.get_running_loop()
        waiter = _Waiter(lora, submit, loop.create_future())

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(self._grant)
            except RuntimeError:
                pass  # the event loop is closed; nobody is waiting any more

        self._waiting.append(waiter)
        self.listen(wake)
        self._grant()  # a slot freed between the try above and listen() would wake nobody
        try:
            return await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled() \
                    and waiter.future.exception() is None:
                undo(waiter.future.result())  # submitted and cancelled at once
            elif waiter in self._waiting:
                self._waiting.remove(waiter)
                self._grant()  # it may have held back the waiters behind it
            raise
        finally:
            self.unlisten(wake)

    def _grant(self) -> None:
        # First come first served: the first waiter without a slot holds back the others.
        while self._waiting:
            waiter = self._waiting[0]
            if waiter.future.done():  # cancelled; its task has not run yet to leave the queue
                self._waiting.popleft()
                continue
            try:
                started = self.start(waiter.lora, waiter.submit)
            except Exception as e:  # noqa: BLE001 - the waiter's own error, raised in its task
                self._waiting.popleft()
                waiter.future.set_exception(e)
                continue
            if started is None:
                return
            self._waiting.popleft()
            waiter.future.set_result(started)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)
