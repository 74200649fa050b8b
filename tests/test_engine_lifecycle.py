"""Closing while the engine runs: close() from several threads at once, the engine's
destructor from Python, a stream cut short by the close. Every wait here is bounded."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import medrt
from medrt import _core
from medrt.errors import Cancelled, MedrtError


def _params(n: int) -> medrt.SamplingParams:
    return medrt.SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def test_close_from_several_threads_while_streaming(tiny_llama: Path) -> None:
    llm = medrt.LLM(str(tiny_llama), num_threads=1, max_model_len=512)
    stream = llm.chat([{"role": "user", "content": "Signs of sepsis?"}], _params(400),
                      stream=True)
    assert next(stream)
    closers = [threading.Thread(target=llm.close) for _ in range(4)]
    for t in closers:
        t.start()
    for t in closers:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in closers)
    # Every closer returned only once the engine was stopped: the stream ends at once, its
    # request aborted by the close (or cancelled, if the close outran the abort).
    ended_by: BaseException | None = None
    try:
        for _ in stream:
            pass
    except (Cancelled, MedrtError) as e:
        ended_by = e
    assert ended_by is None or isinstance(ended_by, Cancelled)
    stats = llm.stats()
    assert stats["num_running"] == stats["num_waiting"] == 0
    assert stats["free_blocks"] == stats["num_blocks"]


def test_engine_destroyed_from_python_while_its_loop_runs(tiny_llama: Path) -> None:
    config = _core.EngineConfig(model_dir=str(tiny_llama), num_threads=1, max_model_len=512)
    for _ in range(3):
        engine = _core.Engine(config)
        engine.start()
        for i in range(4):
            engine.add_request([1 + i, 5, 9], _params(400).to_core())
        # Another Python thread keeps running while the destructor joins the loop thread.
        ticks = []
        ticker = threading.Thread(target=lambda t=ticks: [t.append(1) for _ in range(100000)])
        ticker.start()
        del engine
        gc.collect()
        ticker.join(timeout=60)
        assert len(ticks) == 100000
