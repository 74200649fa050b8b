"""One request's progress on the Python side: engine outputs in, RequestOutputs out."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from medrt.detokenizer import TextStream
from medrt.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from medrt.sampling_params import SamplingParams
from medrt.tokenizer import Tokenizer


class RequestState:
    """Accumulates the engine's outputs for one request.

    ``finished`` turns true when the completion is over for the user (engine finish or a
    stop string); ``engine_done`` when the engine has released the request. After a stop
    string the engine still runs the request until it processes the abort, so the caller
    aborts it (``needs_abort``) and ignores what arrives until ``engine_done``.
    """

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: Sequence[int],
                 params: SamplingParams, tokenizer: Tokenizer) -> None:
        self.request_id = request_id
        self.engine_id = -1
        self.prompt = prompt
        self.prompt_token_ids = list(prompt_token_ids)
        self.params = params
        self._tokenizer = tokenizer
        self._stream = TextStream(
            tokenizer, self.prompt_token_ids, stop=params.stop_strings,
            include_stop_str_in_output=params.include_stop_str_in_output,
            skip_special_tokens=params.skip_special_tokens, min_tokens=params.min_tokens)
        self.token_ids: list[int] = []
        self.logprobs: list[dict[int, Logprob]] | None = (
            None if params.logprobs is None else [])
        self.cumulative_logprob: float | None = None if params.logprobs is None else 0.0
        self.prompt_logprobs: list[dict[int, Logprob] | None] | None = None
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.metrics = RequestMetrics(arrival_time=time.monotonic(),
                                      num_prompt_tokens=len(self.prompt_token_ids))
        self.engine_done = False
        self.needs_abort = False
        self._sent_tokens = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def process(self, raw: Any, received: float) -> bool:
        """Applies one engine output (a ``_core.RequestOutput``); True if anything changed."""
        if raw.finished:
            self.engine_done = True
        if self.finished:
            return False
        self.metrics.num_cached_tokens = max(self.metrics.num_cached_tokens,
                                             raw.num_cached_tokens)
        if self.params.prompt_logprobs is not None and self.prompt_logprobs is None and (
                raw.prompt_logprobs or raw.finished):
            self._set_prompt_logprobs(raw.prompt_logprobs_start, raw.prompt_logprobs)
        new_ids = list(raw.new_token_ids)
        engine_stop = raw.finished and raw.finish_reason == "stop"
        for i, tid in enumerate(new_ids):
            if self.metrics.first_token_time is None:
                self.metrics.first_token_time = received
            self.token_ids.append(tid)
            if self.logprobs is not None and i < len(raw.logprobs):
                self._add_logprobs(tid, raw.logprobs[i])
            ends_by_token = engine_stop and i == len(new_ids) - 1 and tid == raw.stop_token_id
            if ends_by_token and not self.params.include_stop_str_in_output:
                continue  # vLLM leaves the stop token's text out of the output
            if self._stream.push(tid):
                self._finish("stop", self._stream.stop_string, received)
                self.needs_abort = not raw.finished
                return True
        if raw.finished:
            reason = raw.finish_reason or "abort"
            stop_reason = None
            if reason == "stop" and raw.stop_token_id in (self.params.stop_token_ids or []):
                stop_reason = raw.stop_token_id
            self._stream.finish()
            self._finish(reason, stop_reason, received)
        return bool(new_ids) or raw.finished

    def _ranked(self, chosen_id: int, entry: Any) -> dict[int, Logprob]:
        chosen, top = entry
        decode = self._tokenizer.decode
        ranked: dict[int, Logprob] = {}
        for rank, (tid, lp) in enumerate(top, start=1):
            ranked[tid] = Logprob(lp, rank, decode([tid], skip_special_tokens=False))
        if chosen_id not in ranked:
            ranked = {chosen_id: Logprob(chosen, None, decode([chosen_id], skip_special_tokens=False)),
                      **ranked}
        return ranked

    def _add_logprobs(self, chosen_id: int, entry: Any) -> None:
        if self.logprobs is not None:
            self.logprobs.append(self._ranked(chosen_id, entry))
            self.cumulative_logprob = (self.cumulative_logprob or 0.0) + entry[0]

    def _set_prompt_logprobs(self, start: int, entries: Sequence[Any]) -> None:
        # An aborted request may end before its prompt was scored: its entries stay None.
        ids = self.prompt_token_ids
        scored: list[dict[int, Logprob] | None] = [None] * len(ids)
        for i, entry in enumerate(entries):
            scored[start + i] = self._ranked(ids[start + i], entry)
        self.prompt_logprobs = scored

    def _finish(self, reason: str, stop_reason: int | str | None, when: float) -> None:
        self.finish_reason = reason
        self.stop_reason = stop_reason
        self.metrics.finished_time = when
        self.metrics.num_generation_tokens = len(self.token_ids)

    def take_delta_text(self) -> str:
        """Text that became safe to show since the last call."""
        return self._stream.take_delta()

    def output(self, delta: bool = False) -> RequestOutput:
        """A RequestOutput with the text shown so far (cumulative) or since the last output.

        Cumulative outputs carry this request's own token_ids and logprobs lists, which keep
        growing as the stream goes on (as in vLLM): copying them for every streamed token
        would make a stream of n tokens cost O(n^2).
        """
        new_text = self._stream.take_delta()
        start = self._sent_tokens
        self._sent_tokens = len(self.token_ids)
        completion = CompletionOutput(
            index=0,
            text=new_text if delta else self._stream.shown_text,
            token_ids=self.token_ids[start:] if delta else self.token_ids,
            cumulative_logprob=self.cumulative_logprob,
            logprobs=(None if self.logprobs is None
                      else self.logprobs[start:] if delta else self.logprobs),
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
        )
        return RequestOutput(
            request_id=self.request_id, prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids, outputs=[completion],
            finished=self.finished, metrics=self.metrics, prompt_logprobs=self.prompt_logprobs)
