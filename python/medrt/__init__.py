"""medrt: a medical LLM runtime. See README.md.

``import medrt`` stays light: the engine module, the tokenizer and Jinja load when LLM or
AsyncLLM is first used.
"""

from __future__ import annotations

from typing import Any

from medrt import errors
from medrt.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from medrt.sampling_params import SamplingParams

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "AsyncLLM",
    "CompletionOutput",
    "Embedder",
    "LoRARequest",
    "Logprob",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "SemanticCache",
    "__version__",
    "errors",
]


def __getattr__(name: str) -> Any:
    if name == "LLM":
        from medrt.llm import LLM

        return LLM
    if name == "AsyncLLM":
        from medrt.async_llm import AsyncLLM

        return AsyncLLM
    if name == "LoRARequest":
        from medrt.lora.request import LoRARequest

        return LoRARequest
    if name == "Embedder":
        from medrt.embedder import Embedder

        return Embedder
    if name == "SemanticCache":
        from medrt.cache import SemanticCache

        return SemanticCache
    raise AttributeError(f"module 'medrt' has no attribute {name!r}")
