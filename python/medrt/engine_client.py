"""The thread between Python callers and the C++ engine running in background mode.

The engine loop steps on its own C++ thread. One Python thread (``medrt-engine-client``)
waits on ``Engine.wait_outputs`` with the GIL released and hands each output to the sink its
request was registered with: a ``queue.SimpleQueue.put`` for blocking callers, a
``loop.call_soon_threadsafe`` wrapper for asyncio. Detokenization runs in the callers, so this
thread never holds the GIL for long.

A sink receives ``(monotonic time, output)`` items, or ``(time, exception)`` when the engine
fails or is closed under the request. The engine's final output for a request (finished) is
the last item its sink gets. A request may also name an ``on_finished`` callback, called on
this thread once the request has left the engine, even when its outputs were detached (the
LoRA slots learn this way that an adapter may have become free).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from medrt.errors import Cancelled, MedrtError

Sink = Callable[[tuple[float, Any]], None]

_WAIT_MS = 50
# On close, how long to wait for the engine to confirm the aborts of requests still running.
_CLOSE_GRACE_S = 5.0


class EngineClient:
    """Owns a started ``_core.Engine`` and routes its outputs to per-request sinks."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._sinks: dict[int, Sink | None] = {}
        self._on_finished: dict[int, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._closing = False
        self._closed = threading.Event()  # set once close() has stopped the engine
        self._close_deadline = 0.0
        self._error: BaseException | None = None
        engine.start()
        self._thread = threading.Thread(target=self._run, name="medrt-engine-client",
                                        daemon=True)
        self._thread.start()

    def add_request(self, prompt: Sequence[int], params: Any, sink: Sink,
                    on_finished: Callable[[], None] | None = None) -> int:
        """Queues a request in the engine; its outputs go to ``sink``, and ``on_finished`` is
        called after its last. Returns the engine id."""
        with self._lock:
            if self._closing:
                raise Cancelled("the engine is closed")
            if self._error is not None:
                raise MedrtError(f"the engine failed earlier: {self._error}")
            # Registered under the lock, so the dispatcher cannot see an output before its sink.
            request_id = self.engine.add_request(list(prompt), params)
            self._sinks[request_id] = sink
            if on_finished is not None:
                self._on_finished[request_id] = on_finished
        return request_id

    def abort(self, request_id: int, detach: bool = False) -> None:
        """Aborts a request; with ``detach`` its remaining outputs are dropped."""
        with self._lock:
            if request_id not in self._sinks:
                return
            if detach:
                self._sinks[request_id] = None
        self.engine.abort(request_id)

    def num_in_flight(self) -> int:
        """Requests whose final engine output has not arrived yet."""
        with self._lock:
            return len(self._sinks)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Blocks until every request has its final output; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._sinks, timeout)

    def close(self) -> None:
        """Aborts what is still running, stops the dispatcher thread and the engine loop.

        Safe from several threads at once: later callers wait until the first has finished.
        """
        with self._lock:
            first = not self._closing
            if first:
                self._closing = True
                self._close_deadline = time.monotonic() + _CLOSE_GRACE_S
                running = list(self._sinks)
        if not first:
            if threading.current_thread() is not self._thread:
                self._closed.wait()
            return
        for request_id in running:
            self.engine.abort(request_id)
        try:
            if threading.current_thread() is not self._thread:
                self._thread.join()
            self.engine.stop()
        finally:
            self._closed.set()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closing and (not self._sinks
                                      or time.monotonic() > self._close_deadline):
                    break
            try:
                outputs = self.engine.wait_outputs(_WAIT_MS)
            except BaseException as e:  # noqa: BLE001 - handed to every waiting caller
                self._fail(e)
                return
            now = time.monotonic()
            deliveries, finished = [], []
            with self._lock:
                for out in outputs:
                    sink = self._sinks.get(out.request_id)
                    if out.finished:
                        self._sinks.pop(out.request_id, None)
                        finished.append(self._on_finished.pop(out.request_id, None))
                    if sink is not None:
                        deliveries.append((sink, out))
                if not self._sinks:
                    self._idle.notify_all()
            for sink, out in deliveries:
                sink((now, out))
            for hook in finished:
                if hook is not None:
                    hook()
        self._fail(Cancelled("the engine was closed while the request ran"))

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if not self._closing:
                self._error = error
            sinks = [s for s in self._sinks.values() if s is not None]
            hooks = list(self._on_finished.values())
            self._sinks.clear()
            self._on_finished.clear()
            self._idle.notify_all()
        now = time.monotonic()
        for sink in sinks:
            sink((now, error))
        for hook in hooks:
            hook()
