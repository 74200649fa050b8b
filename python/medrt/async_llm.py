"""medrt.AsyncLLM: asyncio streaming over the continuous-batching engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medrt.errors import InvalidRequest
from medrt.frontend import Conversation, EngineFrontend, PreparedRequest, PromptType
from medrt.outputs import RequestOutput
from medrt.request_state import RequestState
from medrt.sampling_params import SamplingParams

if TYPE_CHECKING:
    from typing_extensions import Self


class AsyncLLM(EngineFrontend):
    """A model loaded into the engine, for servers: many concurrent streaming requests.

    Takes the same arguments as :class:`medrt.LLM`. Requests from any number of tasks run
    together in the engine (continuous batching); the event loop never waits for the model.

    ``generate`` yields cumulative RequestOutputs by default, as vLLM does: each yield holds
    the whole text and token ids so far (text that could start a stop string is held back
    until it is known not to). With ``delta=True`` each yield holds only what is new since
    the previous one. Cancelling the consuming task, leaving the ``async for`` early or
    calling ``abort(request_id)`` aborts the request in the engine and frees its KV blocks.
    """

    def __init__(self, model: str | Path, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self._running: dict[str, RequestState] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def shutdown(self) -> None:
        """Same as close(), under vLLM's name."""
        self.close()

    async def generate(
        self,
        prompt: PromptType,
        sampling_params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        delta: bool = False,
        lora_request: Any = None,
    ) -> AsyncIterator[RequestOutput]:
        """Streams the completion of one prompt (text, token ids, or a prompt dict);
        ``lora_request`` names its LoRA adapter (adapter mode), None the base model."""
        prepared = self._prepare(prompt, sampling_params, lora_request)
        async for out in self._stream(prepared, request_id, delta):
            yield out

    async def chat(
        self,
        messages: Conversation,
        sampling_params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        delta: bool = False,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        tools: list[dict] | None = None,
        lora_request: Any = None,
    ) -> AsyncIterator[RequestOutput]:
        """Streams the answer to one conversation rendered with the chat template."""
        prompt = self._render_chat(messages, add_generation_prompt, chat_template,
                                   chat_template_kwargs, tools)
        prepared = self._prepare(prompt, sampling_params, lora_request)
        async for out in self._stream(prepared, request_id, delta):
            yield out

    def abort(self, request_id: str) -> None:
        """Aborts a running request by its request_id; unknown ids are ignored."""
        state = self._running.get(request_id)
        if state is not None:
            self._abort(state, detach=False)

    def num_unfinished_requests(self) -> int:
        """Requests the engine still holds (including aborts it has not processed yet)."""
        return self._client.num_in_flight()

    async def _stream(self, prepared: PreparedRequest, request_id: str | None,
                      delta: bool) -> AsyncIterator[RequestOutput]:
        if request_id is not None and request_id in self._running:
            raise InvalidRequest(f"request_id {request_id!r} is already running")
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()

        def sink(item: tuple[float, Any]) -> None:
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, item)
            except RuntimeError:
                pass  # the event loop is closed; nobody is waiting any more

        state = self._submit(prepared, sink, request_id)
        self._running[state.request_id] = state
        try:
            while not state.engine_done:
                received, item = await inbox.get()
                if isinstance(item, BaseException):
                    raise item
                was_finished = state.finished
                changed = state.process(item, received)
                if state.needs_abort:
                    state.needs_abort = False
                    self._abort(state, detach=False)
                if changed and not was_finished:
                    yield state.output(delta=delta)
        finally:
            self._running.pop(state.request_id, None)
            if not state.engine_done:
                self._abort(state, detach=True)
