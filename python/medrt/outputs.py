"""What a request returns: vLLM-shaped RequestOutput / CompletionOutput plus operator metrics."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Logprob:
    """One candidate token's log-probability; ``rank`` is 1 for the most likely token."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    """One completion of a request.

    ``finish_reason`` is None while it runs, then ``"stop"`` (EOS, a stop token or a stop
    string), ``"length"`` (max_tokens or the context length) or ``"abort"``. ``stop_reason``
    is the stop string or stop token id that ended it (None for EOS and other reasons).
    ``logprobs`` holds, per generated token, a dict token id -> Logprob with the chosen token
    and the top alternatives (None unless SamplingParams.logprobs was set).
    """

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, Logprob]] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """Timings (``time.monotonic()`` seconds) and token counts of one request."""

    arrival_time: float
    first_token_time: float | None = None
    finished_time: float | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_generation_tokens: int = 0

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from submission to the first generated token."""
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def e2e_latency(self) -> float | None:
        """Seconds from submission to the end of the request."""
        if self.finished_time is None:
            return None
        return self.finished_time - self.arrival_time


@dataclass
class RequestOutput:
    """The state of one request: the prompt, its completion so far, and whether it is done.

    ``num_cached_tokens`` counts the prompt tokens served from the prefix cache. ``cache`` is
    None when the answer was generated; for an answer served by the semantic cache it is
    ``{"score", "matched_question", "tier"}`` (tier: "exact", "memory" or "disk").
    ``prompt_logprobs`` (with SamplingParams.prompt_logprobs) is aligned with
    ``prompt_token_ids``: entry i maps the prompt token i (and the top alternatives at that
    position) to its Logprob given tokens 0..i-1; None for token 0 and for the tokens before
    SamplingParams.prompt_logprobs_start.
    ``medical_category`` is the category whose template answered the request (chat with
    ``medical_template``), else None.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics = field(repr=False)
    prompt_logprobs: list[dict[int, Logprob] | None] | None = field(default=None, repr=False)
    medical_category: str | None = None
    cache: dict | None = None

    @property
    def num_cached_tokens(self) -> int:
        return self.metrics.num_cached_tokens
