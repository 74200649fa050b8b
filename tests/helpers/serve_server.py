"""A medrt server on 127.0.0.1 (ephemeral ports) in a background thread, for tests that use
real clients against it."""

from __future__ import annotations

import asyncio
import threading

from medrt.serve.server import ServeConfig, Server

START_TIMEOUT_S = 60


class ServerThread:
    """Runs ``Server(config)`` on its own event loop; ``call`` runs a coroutine there."""

    def __init__(self, config: ServeConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.server: Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="medrt-test-server",
                                         daemon=True)
        self._thread.start()
        self.server = self.call(self._start(config))

    async def _start(self, config: ServeConfig) -> Server:
        server = Server(config)
        await server.start()
        await server.wait_ready(START_TIMEOUT_S)
        return server

    def call(self, coro, timeout: float = START_TIMEOUT_S):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    def stats(self) -> dict[str, int]:
        return self.server.core.llm.stats()

    def stop(self) -> None:
        async def drain() -> None:
            self.server.begin_drain()
            await self.server.wait_stopped()
        try:
            self.call(drain())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
