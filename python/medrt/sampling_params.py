"""Per-request sampling parameters, with vLLM's names and defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from medrt.errors import InvalidRequest

MAX_LOGPROBS = 20  # the engine returns at most this many alternatives per token
INT32_MAX = 2**31 - 1  # the engine's integer fields (cpp/include/medrt/sampling.h)


@dataclass
class SamplingParams:
    """How to sample one completion.

    Names and defaults follow vLLM: ``temperature=0`` is greedy, ``top_k`` of 0 or -1 is off,
    ``stop`` strings end the completion (the text is cut before the match unless
    ``include_stop_str_in_output``), ``stop_token_ids`` and the model's EOS tokens end it too
    (unless ``ignore_eos``). ``logprobs=n`` returns the chosen token's log-probability and the
    top ``n`` alternatives per generated token. ``prompt_logprobs=n`` returns, once, the
    log-probability of every prompt token given the tokens before it (exact log-softmax of the
    model's logits over the whole vocabulary) and the top ``n`` alternatives at that position;
    the first token has none. ``prompt_logprobs_start`` (a medrt extension, default 1) scores
    only the prompt tokens from that index on: the tokens before it may then be served by the
    prefix cache, so scoring several answers after one long context computes the context once.
    Only ``n=1`` is supported.

    Every field is checked when the object is built; a bad value raises
    :class:`medrt.errors.InvalidRequest` naming the field and the value.
    """

    n: int = 1
    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    prompt_logprobs_start: int = 1
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    stop_strings: list[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Checks every field again (they are plain attributes and may have been changed)."""
        self._check_ints()
        self._check_floats()
        self.stop_strings = self._normalize_stop()
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        else:
            if not isinstance(self.stop_token_ids, (list, tuple)):
                _bad("stop_token_ids", self.stop_token_ids, "must be a list of token ids")
            self.stop_token_ids = list(self.stop_token_ids)
            for tok in self.stop_token_ids:
                if isinstance(tok, bool) or not isinstance(tok, int) or not 0 <= tok <= INT32_MAX:
                    _bad("stop_token_ids", self.stop_token_ids,
                         "must be token ids (non-negative 32-bit integers)")

    def _check_ints(self) -> None:
        for name in ("n", "max_tokens", "min_tokens", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                _bad(name, value, "must be an integer")
        if self.n != 1:
            _bad("n", self.n, "only n=1 is supported; send the request several times with "
                 "different seeds for several completions")
        if self.max_tokens < 1:
            _bad("max_tokens", self.max_tokens, "must be at least 1")
        if self.min_tokens < 0:
            _bad("min_tokens", self.min_tokens, "must be >= 0")
        if self.min_tokens > self.max_tokens:
            _bad("min_tokens", self.min_tokens, f"must be <= max_tokens ({self.max_tokens})")
        if self.top_k < -1:
            _bad("top_k", self.top_k, "must be -1 or 0 (off) or a positive integer")
        for name in ("max_tokens", "min_tokens"):  # the engine's fields are 32-bit
            if getattr(self, name) > INT32_MAX:
                _bad(name, getattr(self, name), f"must be at most {INT32_MAX}")
        for name in ("seed", "logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                _bad(name, value, "must be an integer or None")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            _bad("seed", self.seed, "must be in [0, 2**63)")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            _bad("logprobs", self.logprobs, f"must be in [0, {MAX_LOGPROBS}] or None")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= MAX_LOGPROBS:
            _bad("prompt_logprobs", self.prompt_logprobs,
                 f"must be in [0, {MAX_LOGPROBS}] or None")
        start = self.prompt_logprobs_start
        if isinstance(start, bool) or not isinstance(start, int) or not 1 <= start <= INT32_MAX:
            _bad("prompt_logprobs_start", start, f"must be an integer in [1, {INT32_MAX}] (the "
                 "first prompt token has no prefix to score it)")
        for name in ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                _bad(name, getattr(self, name), "must be a bool")

    def _check_floats(self) -> None:
        for name in ("temperature", "top_p", "min_p", "repetition_penalty",
                     "frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                _bad(name, value, "must be a number")
            if not math.isfinite(value):
                _bad(name, value, "must be a finite number")
        if self.temperature < 0:
            _bad("temperature", self.temperature, "must be >= 0 (0 is greedy)")
        if not 0 < self.top_p <= 1:
            _bad("top_p", self.top_p, "must be in (0, 1]")
        if not 0 <= self.min_p <= 1:
            _bad("min_p", self.min_p, "must be in [0, 1]")
        if self.repetition_penalty <= 0:
            _bad("repetition_penalty", self.repetition_penalty, "must be > 0 (1 is off)")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                _bad(name, getattr(self, name), "must be in [-2, 2]")

    def _normalize_stop(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        if not isinstance(stops, (list, tuple)):
            _bad("stop", self.stop, "must be a string or a list of strings")
        for s in stops:
            if not isinstance(s, str) or not s:
                _bad("stop", self.stop, "stop strings must be non-empty strings")
        return list(stops)

    def to_core(self) -> Any:
        """The engine's parameter object (``medrt._core.SamplingParams``)."""
        from medrt import _core

        self.validate()
        core = _core.SamplingParams()
        core.max_tokens = self.max_tokens
        core.min_tokens = self.min_tokens
        core.temperature = float(self.temperature)
        core.top_k = min(max(self.top_k, 0), INT32_MAX)  # beyond the vocabulary: keeps all
        core.top_p = float(self.top_p)
        core.min_p = float(self.min_p)
        core.repetition_penalty = float(self.repetition_penalty)
        core.frequency_penalty = float(self.frequency_penalty)
        core.presence_penalty = float(self.presence_penalty)
        core.seed = -1 if self.seed is None else self.seed
        core.stop_token_ids = list(self.stop_token_ids or [])
        core.ignore_eos = self.ignore_eos
        core.logprobs = -1 if self.logprobs is None else self.logprobs
        core.prompt_logprobs = -1 if self.prompt_logprobs is None else self.prompt_logprobs
        core.prompt_logprobs_start = self.prompt_logprobs_start
        return core


def _bad(name: str, value: object, why: str) -> None:
    raise InvalidRequest(f"SamplingParams.{name}={value!r}: {why}")
