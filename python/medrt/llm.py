"""medrt.LLM: blocking generation and chat over the continuous-batching engine."""

from __future__ import annotations

import itertools
import queue
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medrt.cache import frontend_cache as fcache
from medrt.errors import InvalidRequest
from medrt.frontend import Conversation, EngineFrontend, PreparedRequest, PromptType
from medrt.lora.request import LoRARequest
from medrt.outputs import RequestOutput
from medrt.request_state import RequestState
from medrt.sampling_params import SamplingParams

if TYPE_CHECKING:
    from typing_extensions import Self

    from medrt.cache import SemanticCache
    from medrt.embedder import EmbeddingRequestOutput


# Put in a batch's inbox when a request with a LoRA adapter ended: its pending requests may
# find a slot now.
_SLOT_FREED = object()


class LLM(EngineFrontend):
    """A model loaded into the engine, for offline and batch use.

    ``model`` is a model directory (Hugging Face layout) or the name of a model that
    ``medrt.models`` knows and pulls on first use. Engine options keep vLLM's names:
    ``block_size`` (tokens per KV block), ``kv_cache_memory_bytes`` (KV pool budget,
    512 MiB by default; the block count follows) or ``num_kv_blocks`` (exact pool size), ``max_num_seqs``,
    ``max_num_batched_tokens``, ``max_model_len`` (default: the model's context),
    ``enable_prefix_caching``; ``num_threads`` (0: physical cores) and ``seed`` (for
    requests without a seed of their own). ``tokenizer`` is a directory to read the tokenizer
    files from instead of the model directory. ``device`` is "auto" (CUDA when usable, else
    the CPU), "cpu" or "cuda"; ``MEDRT_DEVICE`` overrides it and ``medrt info`` says what is
    chosen and why. ``enforce_eager`` turns CUDA graphs off; ``device_map="auto"`` splits the
    layers between GPU and CPU when they do not fit (docs/cuda.md).
    ``activation_precision`` says how the CPU kernels of quantized weights read activations:
    "int8" (default: int8 blocks of 32, as llama.cpp) or "int8x2" (each value as two int8
    terms, about 15 bits: the distribution of the f32 reference on the same weights, for
    scoring, at about 0.6x the prompt speed; docs/quantization.md). ``kv_cache_dtype`` is
    "f32" (default) or "f16" (llama.cpp's default: the pool holds twice the tokens and a decode
    step reads half the cache bytes, at one f16 rounding of each key and value).
    ``generation_config`` says what a request's unset sampling parameters are: "auto" (default)
    the model's generation_config.json, "none" SamplingParams' own defaults, or a directory
    holding another generation_config.json (vLLM's option; ``get_default_sampling_params()``).

    All requests of one call run together in the engine (continuous batching). The engine
    computes on its own threads without the GIL. Use as a context manager, or call
    ``close()``, to stop the engine threads.

    ``cache`` is a :class:`medrt.SemanticCache`: generate and chat then take ``tenant``,
    ``cache`` ("auto" looks up and stores, "bypass" neither, "refresh" regenerates and
    stores) and ``patient_context`` (never cached); an answer from the cache has
    ``RequestOutput.cache`` set.

    An encoder directory or name (all-MiniLM-L6-v2) gives an embedding model: ``embed()``
    only, with ``num_threads`` and ``dtype`` (the linear weights' type, "auto" by default:
    see :class:`medrt.Embedder`).
    """

    def __init__(self, model: str | Path, *, cache: SemanticCache | None = None,
                 **kwargs: Any) -> None:
        from medrt.embedder import Embedder, is_encoder

        self._embedder = None
        if is_encoder(model):  # an embedding model: embed() only (as vLLM's task="embed")
            self._embedder = Embedder(model, num_threads=kwargs.get("num_threads", 0),
                                      dtype=kwargs.get("dtype", "auto"))
            self.model_dir = self._embedder.model_dir
            self._ids = itertools.count()
            self._cache = None
            return
        super().__init__(model, **kwargs)
        self._cache = fcache.attach(self, cache)

    def embed(self, prompts: str | Sequence[str]) -> list[EmbeddingRequestOutput]:
        """Embeddings of texts when the model is an encoder (all-MiniLM-L6-v2 or another
        BERT): one EmbeddingRequestOutput per text, ``outputs.embedding`` of unit norm."""
        if self._embedder is None:
            raise InvalidRequest(f"{self.model_dir} is a decoder; embed() needs an encoder "
                                 "model such as 'all-minilm-l6-v2'")
        from medrt.embedder import embed_outputs

        return embed_outputs(self._embedder, prompts, self._ids)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        *,
        tenant: str = "default",
        cache: str = "auto",
        patient_context: bool = False,
    ) -> list[RequestOutput]:
        """Completes each prompt; returns one finished RequestOutput per prompt, in order.

        A prompt is text (tokenized with BOS as the checkpoint wants), a list of token ids, or
        a dict with ``prompt`` or ``prompt_token_ids``. ``sampling_params`` is one
        SamplingParams for all prompts or a list with one per prompt. Every prompt is checked
        before any is queued. ``lora_request`` (adapter mode) is one LoRARequest for all
        prompts or a list with one per prompt; None runs the base model. More distinct
        adapters than ``max_loras`` are fine: prompts whose adapter finds every slot busy run
        as slots free up (docs/adapters.md).
        """
        self._require_decoder("generate")
        batch = _as_prompt_list(prompts)
        params = _params_per_prompt(sampling_params, len(batch))
        loras = _lora_per_prompt(lora_request, len(batch))
        prepared = [self._prepare(p, sp, lr) for p, sp, lr in zip(batch, params, loras)]
        reqs = [fcache.for_prompt(p, tenant, cache, patient_context,
                                  fcache.adapter_hash(self, pr.lora))
                for p, pr in zip(batch, prepared)]
        return fcache.run_batch(self._cache, self, prepared, reqs, self._run_batch)

    def chat(
        self,
        messages: Conversation | Sequence[Conversation],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        stream: bool = False,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        tools: list[dict] | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        medical_template: str | None = None,
        tenant: str = "default",
        cache: str = "auto",
        patient_context: bool = False,
    ) -> list[RequestOutput] | Iterator[str]:
        """Answers a conversation (a list of {"role", "content"} dicts) or several.

        The conversation is rendered with the checkpoint's chat template (or
        ``chat_template``; ``chat_template_kwargs`` reach the template, e.g.
        ``{"enable_thinking": True}``). Returns a list of finished RequestOutputs, like vLLM.

        With ``stream=True`` (one conversation only) returns an iterator of text chunks: their
        concatenation is the finished output's text, and no chunk shows the beginning of a
        stop string that later matches. Leaving the loop early aborts the request.

        ``medical_template`` ("auto" or a category of medrt.medical) puts P_base + S_category
        first in the system message; each output's ``medical_category`` names the category.
        """
        self._require_decoder("chat")
        conversations = _as_conversation_list(messages)
        categories: list[str | None] = [None] * len(conversations)
        if medical_template is not None:
            conversations, categories = _apply_medical_template(conversations, medical_template)
        params = _params_per_prompt(sampling_params, len(conversations))
        loras = _lora_per_prompt(lora_request, len(conversations))
        prepared = [
            self._prepare(self._render_chat(c, add_generation_prompt, chat_template,
                                            chat_template_kwargs, tools), sp, lr)
            for c, sp, lr in zip(conversations, params, loras)]
        options = [add_generation_prompt, chat_template, chat_template_kwargs, tools]
        # The medical template is in the system message, so it is part of the cache scope.
        reqs = [fcache.for_conversation(c, tenant, cache, patient_context, options,
                                        fcache.adapter_hash(self, pr.lora))
                for c, pr in zip(conversations, prepared)]
        if not stream:
            outputs = fcache.run_batch(self._cache, self, prepared, reqs, self._run_batch)
            for out, category in zip(outputs, categories):
                out.medical_category = category
            return outputs
        if len(prepared) != 1:
            raise InvalidRequest(f"stream=True takes one conversation, got {len(prepared)}")
        return fcache.stream_text(self._cache, reqs[0], prepared[0].params,
                                  lambda: self._stream_text(prepared[0]))

    def close(self) -> None:
        """Stops the engine (an encoder model has none to stop). Idempotent."""
        if self._embedder is None:
            super().close()

    def _require_decoder(self, what: str) -> None:
        if self._embedder is not None:
            raise InvalidRequest(f"{self.model_dir} is an encoder (embedding) model: use "
                                 f"embed(), not {what}()")

    def _run_batch(self, prepared: list[PreparedRequest]) -> list[RequestOutput]:
        # Requests whose adapter finds every LoRA slot busy stay pending, in prompt order, and
        # are submitted as running requests end (lora/slots.py).
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        states: dict[int, RequestState] = {}
        started: list[RequestState | None] = [None] * len(prepared)
        pending = list(range(len(prepared)))

        def wake() -> None:
            inbox.put((0.0, _SLOT_FREED))

        self._slots.listen(wake)
        try:
            self._submit_fitting(prepared, pending, started, states, inbox)
            while pending or not all(s.engine_done for s in states.values()):
                if self._apply_next(inbox, states) is _SLOT_FREED and pending:
                    self._submit_fitting(prepared, pending, started, states, inbox)
        except Exception:
            # E.g. a later prompt does not fit the KV pool: the requests already queued are
            # aborted, and the error is raised once the engine has released them.
            self._abort_and_wait(inbox, states)
            raise
        finally:
            self._slots.unlisten(wake)
            self._detach_unfinished(states)
        return [s.output() for s in started]  # type: ignore[union-attr]

    def _submit_fitting(self, prepared: list[PreparedRequest], pending: list[int],
                        started: list[RequestState | None], states: dict[int, RequestState],
                        inbox: queue.SimpleQueue) -> None:
        """Submits the pending requests that find their adapter's slot, in order; the others
        stay pending. A batch ends, so later prompts may overtake one that waits."""
        full = False  # once a load failed, only adapters already loaded can start this pass
        for i in list(pending):
            p = prepared[i]
            if full and not self._slots.loaded(p.lora):
                continue
            state = self._slots.start(p.lora, lambda p=p: self._submit(p, inbox.put))
            if state is None:
                full = True
                continue
            pending.remove(i)
            started[i] = states[state.engine_id] = state

    def _stream_text(self, prepared: PreparedRequest) -> Iterator[str]:
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        state = self._slots.start_blocking(prepared.lora, lambda: self._submit(prepared, inbox.put))
        states = {state.engine_id: state}
        try:
            while not state.engine_done:
                self._apply_next(inbox, states)
                delta = state.take_delta_text()
                if delta:
                    yield delta
        except (Exception, GeneratorExit):
            # Leaving the loop early closes the generator: the request is aborted, and close()
            # returns once the engine has released it (its KV blocks are free).
            self._abort_and_wait(inbox, states)
            raise
        finally:
            self._detach_unfinished(states)

    def _apply_next(self, inbox: queue.SimpleQueue, states: dict[int, RequestState]) -> Any:
        """Applies the next engine output; returns the item taken (_SLOT_FREED included)."""
        received, item = inbox.get()
        if item is _SLOT_FREED:
            return item
        if isinstance(item, BaseException):
            # The engine failed or was closed: the client has dropped every request.
            for state in states.values():
                state.engine_done = True
            raise item
        state = states[item.request_id]
        state.process(item, received)
        if state.needs_abort:
            state.needs_abort = False
            self._abort(state, detach=False)
        return item

    def _abort_and_wait(self, inbox: queue.SimpleQueue, states: dict[int, RequestState]) -> None:
        for state in states.values():
            if not state.engine_done:
                self._abort(state, detach=False)
        while not all(s.engine_done for s in states.values()):
            self._apply_next(inbox, states)

    def _detach_unfinished(self, states: dict[int, RequestState]) -> None:
        # Only reached with requests still running on KeyboardInterrupt and the like: abort
        # them without waiting.
        for state in states.values():
            if not state.engine_done:
                self._abort(state, detach=True)


def _as_prompt_list(prompts: PromptType | Sequence[PromptType]) -> list[PromptType]:
    if isinstance(prompts, (str, Mapping)):
        return [prompts]
    if not isinstance(prompts, Sequence) or isinstance(prompts, bytes):
        raise InvalidRequest(f"prompts must be text, token ids or a list of them, "
                             f"not {type(prompts).__name__}")
    if prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]  # one prompt given as token ids
    if not prompts:
        raise InvalidRequest("no prompts given")
    return list(prompts)


def _as_conversation_list(messages: Conversation | Sequence[Conversation]) -> list[Conversation]:
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidRequest("messages must be a list of {'role': ..., 'content': ...} dicts "
                             "or a list of such lists")
    if all(isinstance(m, Mapping) for m in messages):
        return [messages]  # type: ignore[list-item]
    return list(messages)  # type: ignore[arg-type]


def _apply_medical_template(conversations: list[Conversation], mode: str
                            ) -> tuple[list[Conversation], list[str | None]]:
    from medrt.medical.conversation import apply_medical_template

    try:
        pairs = [apply_medical_template(c, mode) for c in conversations]
    except ValueError as e:
        raise InvalidRequest(str(e)) from None
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _params_per_prompt(params: SamplingParams | Sequence[SamplingParams] | None,
                       n: int) -> list[SamplingParams | None]:
    if params is None or isinstance(params, SamplingParams):
        return [params] * n
    params = list(params)
    if len(params) != n:
        raise InvalidRequest(f"got {len(params)} sampling_params for {n} prompts")
    return params


def _lora_per_prompt(lora: LoRARequest | Sequence[LoRARequest | None] | None,
                     n: int) -> list[LoRARequest | None]:
    if lora is None or isinstance(lora, (LoRARequest, str)):
        return [lora] * n
    lora = list(lora)
    if len(lora) != n:
        raise InvalidRequest(f"got {len(lora)} lora_requests for {n} prompts")
    return lora
