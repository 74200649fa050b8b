"""Fixtures of the serve tests: servers over the tiny models (see helpers.serve_server)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.serve_server import ServerThread
from medrt.serve.server import ServeConfig


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
