"""medrt.AsyncLLM: asyncio streaming over the continuous-batching engine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medrt.cache import frontend_cache as fcache
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

    A request whose LoRA adapter finds all ``max_loras`` slots held by adapters of running
    requests waits for a slot, first come first served, without a bound (docs/adapters.md);
    cancelling it while it waits leaves the queue having taken nothing.
    """

    def __init__(self, model: str | Path, *, cache: Any = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self._running: dict[str, RequestState] = {}
        self._cache = fcache.attach(self, cache)  # a medrt.SemanticCache, as in LLM

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
        tenant: str = "default",
        cache: str = "auto",
        patient_context: bool = False,
        lora_request: Any = None,
    ) -> AsyncIterator[RequestOutput]:
        """Streams the completion of one prompt (text, token ids, or a prompt dict). With a
        semantic cache, ``tenant``/``cache``/``patient_context`` work as in LLM.generate;
        ``lora_request`` names its LoRA adapter (adapter mode; the cache keeps each adapter's
        answers apart)."""
        prepared = self._prepare(prompt, sampling_params, lora_request)
        req = fcache.for_prompt(prompt, tenant, cache, patient_context,
                                fcache.adapter_hash(self, prepared.lora))
        async for out in fcache.stream_outputs(self._cache, self, prepared, req,
                                               self._stream(prepared, request_id, delta),
                                               request_id, delta):
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
        medical_template: str | None = None,
        tenant: str = "default",
        cache: str = "auto",
        patient_context: bool = False,
        lora_request: Any = None,
    ) -> AsyncIterator[RequestOutput]:
        """Streams the answer to one conversation rendered with the chat template.

        ``medical_template`` ("auto" or a category) works as in :meth:`medrt.LLM.chat`; with a
        semantic cache, ``tenant``/``cache``/``patient_context`` work as in LLM.chat.
        ``lora_request`` names its LoRA adapter (adapter mode; the cache keeps each adapter's
        answers apart).
        """
        if (isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence)
                or not all(isinstance(m, Mapping) for m in messages)):
            raise InvalidRequest("messages: AsyncLLM.chat takes one conversation, a list of "
                                 "{'role': ..., 'content': ...} dicts")
        category = None
        if medical_template is not None:
            from medrt.llm import _apply_medical_template

            conversations, categories = _apply_medical_template([messages], medical_template)
            messages, category = conversations[0], categories[0]
        prompt = self._render_chat(messages, add_generation_prompt, chat_template,
                                   chat_template_kwargs, tools)
        prepared = self._prepare(prompt, sampling_params, lora_request)
        req = fcache.for_conversation(messages, tenant, cache, patient_context,
                                      [add_generation_prompt, chat_template,
                                       chat_template_kwargs, tools],
                                      fcache.adapter_hash(self, prepared.lora))
        async for out in fcache.stream_outputs(self._cache, self, prepared, req,
                                               self._stream(prepared, request_id, delta),
                                               request_id, delta):
            out.medical_category = category
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
        sink = _batched_sink(loop, inbox)

        # A request whose adapter finds every LoRA slot busy awaits one here, first come first
        # served (lora/slots.py); the wait is not bounded.
        state = await self._slots.start_async(
            prepared.lora, lambda: self._submit(prepared, sink, request_id),
            lambda s: self._abort(s, detach=True))
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


def _batched_sink(loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue) -> Any:
    """A sink for the engine client's thread that hands items to ``inbox`` on ``loop``.

    Items wait in a list, and one ``call_soon_threadsafe`` moves all that arrived before the
    loop ran it: one wake-up of the event loop per batch instead of one per token.
    """
    pending: list[tuple[float, Any]] = []
    lock = threading.Lock()

    def deliver() -> None:
        with lock:
            items = pending[:]
            pending.clear()
        for item in items:
            inbox.put_nowait(item)

    def sink(item: tuple[float, Any]) -> None:
        with lock:
            pending.append(item)
            if len(pending) > 1:
                return  # a deliver() is already scheduled and will take this item too
        try:
            loop.call_soon_threadsafe(deliver)
        except RuntimeError:
            pass  # the event loop is closed; nobody is waiting any more

    return sink
