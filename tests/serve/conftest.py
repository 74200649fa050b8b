"""A medrt server on 127.0.0.1 (ephemeral ports) in a background thread, for real clients."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
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


@pytest.fixture(scope="session")
def start_server(tiny_llama: Path) -> Iterator[Callable[..., ServerThread]]:
    """start_server(**config overrides) -> a running ServerThread over the tiny Llama."""
    started: list[ServerThread] = []

    def start(**overrides: object) -> ServerThread:
        kw: dict = {"model": str(tiny_llama), "served_model_name": "tiny-llama",
                    "grpc_port": 0, "http_port": 0, "num_threads": 1, "max_model_len": 512,
                    "drain_grace_s": 5.0}
        kw.update(overrides)
        st = ServerThread(ServeConfig(**kw))
        started.append(st)
        return st

    yield start
    for st in started:
        if not st.server._stopped.is_set():
            st.stop()


@pytest.fixture(scope="session")
def medium_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Llama big enough (hidden 256, 4 layers) that 1000 tokens take a while, for
    cancel, deadline, queue and drain tests; still a 16 MB f32 checkpoint."""
    from helpers.tiny_models import build_tiny_model

    return build_tiny_model("llama", "float32", True, tmp_path_factory.mktemp("medium") / "m",
                            hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerThread]) -> ServerThread:
    """An open server (no key file: anonymous tenant, loopback only)."""
    return start_server()
