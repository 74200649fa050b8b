"""What LLM and AsyncLLM share: loading, prompt preparation, request submission."""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medrt.engine_client import EngineClient, Sink
from medrt.errors import InvalidCheckpoint, InvalidRequest
from medrt.generation_defaults import defaults_from
from medrt.request_state import RequestState
from medrt.sampling_params import SamplingParams
from medrt.tokenizer import Tokenizer

# A prompt: text, token ids, or vLLM's {"prompt": text} / {"prompt_token_ids": ids}.
PromptType = str | Sequence[int] | Mapping[str, Any]
Conversation = Sequence[Mapping[str, Any]]


@dataclass
class PreparedRequest:
    prompt: str | None
    token_ids: list[int]
    params: SamplingParams
    core_params: Any
    lora: Any = None  # the LoRARequest of the adapter it runs with (None: the base model)


def resolve_model_dir(model: str | Path) -> Path:
    """A model directory as given, or a known model name pulled by medrt.models."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    from medrt.models import resolve_model  # imported late: it brings the GGUF importer

    return Path(resolve_model(str(model)))


def _close(client: EngineClient, lora: Any) -> None:
    client.close()
    lora.close()


_INT32, _INT64, _UINT64 = (-(2**31), 2**31 - 1), (-(2**63), 2**63 - 1), (0, 2**64 - 1)


def _check_int_options(**options: tuple[Any, tuple[int, int]]) -> None:
    """Integer engine options of the type and range of their C++ fields (None: left unset).
    The engine checks what each value means; this keeps a string or a negative seed from
    reaching pybind as a TypeError that names no option."""
    for name, (value, (lo, hi)) in options.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"{name} = {value!r}: must be an integer")
        if not lo <= value <= hi:
            raise InvalidRequest(f"{name} = {value}: must be in [{lo}, {hi}]")


# What chat() passes to the template itself; chat_template_kwargs may not name them again.
_CHAT_ARGUMENTS = frozenset({"messages", "add_generation_prompt", "chat_template", "tools"})


def _token_ids(ids: Any, where: str) -> list[int]:
    """A prompt given as token ids: a list or tuple of ints (the engine checks the range).
    Text where ids are expected is named as such, not as an out-of-vocabulary 'id'."""
    if isinstance(ids, str) or not isinstance(ids, Sequence):
        raise InvalidRequest(f"{where}: token ids must be a list of ints, not "
                             f"{type(ids).__name__}")
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, int):
            hint = (" (a list of prompts? AsyncLLM.generate takes one prompt; LLM.generate "
                    "takes a list of them)" if isinstance(t, str) else "")
            raise InvalidRequest(f"{where}[{i}] = {t!r}: token ids must be ints{hint}")
    return list(ids)


class EngineFrontend:
    """Loads a checkpoint and turns user requests into engine requests."""

    def __init__(
        self,
        model: str | Path,
        *,
        tokenizer: str | Path | None = None,
        block_size: int = 16,
        kv_cache_memory_bytes: int | None = None,
        num_kv_blocks: int | None = None,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 2048,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        num_threads: int = 0,
        seed: int = 0,
        enable_lora: bool = False,
        max_loras: int = 8,
        max_lora_rank: int = 64,
        lora: Any = None,
        merge: bool = False,
        deployment: str | None = None,
        device: str = "auto",
        enforce_eager: bool = False,
        device_map: str | None = None,
        activation_precision: str = "int8",
        kv_cache_dtype: str = "f32",
        generation_config: str | Path = "auto",
    ) -> None:
        from medrt import _core
        from medrt.device import select_device
        from medrt.lora.manager import LoraManager
        from medrt.lora.slots import LoraSlots

        # "auto" | "cpu" | "cuda" (MEDRT_DEVICE overrides); enforce_eager and device_map only
        # matter on CUDA (docs/cuda.md).
        self.device = select_device(device)

        model_dir = resolve_model_dir(model)
        if not (model_dir / "config.json").is_file():
            raise InvalidCheckpoint(f"{model_dir}: no config.json")
        self.model_dir = model_dir
        self.tokenizer = Tokenizer(tokenizer if tokenizer is not None else model_dir)
        # What requests leave unset: the model's generation_config.json ("auto"), SamplingParams'
        # own defaults ("none"), or another directory's file (medrt.generation_defaults).
        self.sampling_defaults = defaults_from(generation_config, model_dir)
        _check_int_options(block_size=(block_size, _INT32), max_num_seqs=(max_num_seqs, _INT32),
                           max_num_batched_tokens=(max_num_batched_tokens, _INT32),
                           max_model_len=(max_model_len, _INT32),
                           num_threads=(num_threads, _INT32), seed=(seed, _UINT64),
                           kv_cache_memory_bytes=(kv_cache_memory_bytes, _INT64),
                           num_kv_blocks=(num_kv_blocks, _INT64))
        config = _core.EngineConfig()
        config.model_dir = str(model_dir)
        config.block_size = block_size
        if kv_cache_memory_bytes is not None:
            config.kv_cache_bytes = kv_cache_memory_bytes
        if num_kv_blocks is not None:
            config.num_blocks = num_kv_blocks
        config.max_num_seqs = max_num_seqs
        config.max_num_batched_tokens = max_num_batched_tokens
        config.max_model_len = max_model_len or 0
        config.enable_prefix_caching = enable_prefix_caching
        config.num_threads = num_threads
        config.seed = seed
        config.activation_precision = activation_precision  # InvalidRequest names a bad one
        self.activation_precision = activation_precision
        config.kv_cache_dtype = kv_cache_dtype  # "f32" | "f16"; InvalidRequest names another
        self.kv_cache_dtype = kv_cache_dtype

        def probe_engine() -> Any:  # deployment="auto" measures decode costs on a small engine
            probe = _core.EngineConfig()
            probe.model_dir, probe.num_blocks, probe.num_threads = str(model_dir), 64, num_threads
            probe.activation_precision = activation_precision
            probe.kv_cache_dtype = kv_cache_dtype
            return _core.Engine(probe)

        # LoRA: merged mode hands the engine a merged copy of the model; adapter mode (lora=
        # without merge, or enable_lora) loads adapters into engine slots (docs/adapters.md).
        self._lora = LoraManager(model_dir, enable_lora=enable_lora, max_loras=max_loras,
                                 max_lora_rank=max_lora_rank, lora=lora, merge=merge,
                                 deployment=deployment, probe_engine=probe_engine)
        self.deployment: dict[str, Any] | None = self._lora.deployment
        config.model_dir = str(self._lora.engine_model_dir)
        if self.device.device == "cuda":
            config.device = "cuda"
            config.enforce_eager = enforce_eager
            config.device_map = device_map or ""
        engine = _core.Engine(config)
        self.model_config: dict[str, Any] = dict(engine.model_config)
        self.max_model_len: int = engine.max_model_len
        self._vocab_size = int(self.model_config["vocab_size"])
        engine_eos = set(self.model_config.get("eos_token_ids") or [])
        # EOS ids the tokenizer or generation_config.json know and the engine does not (chat
        # models often end turns with such a token) become stop tokens of every request.
        self._extra_eos = [t for t in self.tokenizer.eos_token_ids
                           if t not in engine_eos and 0 <= t < self._vocab_size]
        self._client = EngineClient(engine)
        self._finalizer = weakref.finalize(self, _close, self._client, self._lora)
        self._lora.attach(engine)
        self._slots = LoraSlots(self._lora)  # requests whose adapter finds no slot wait here
        self._ids = itertools.count()

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Aborts running requests and stops the engine. Idempotent."""
        self._slots.close()
        self._finalizer()
        self._client.close()  # when another thread is closing, waits until it is done

    def stats(self) -> dict[str, int]:
        """Engine counters: KV blocks (num_blocks, free_blocks), running/waiting requests,
        preemptions, prefix-cache queries and hits, steps, prompt and generation tokens; on
        CUDA, graph_replays (decode steps replayed from a CUDA graph) and device_layers
        (decoder layers on the GPU under device_map)."""
        return dict(self._client.engine.stats())

    def get_tokenizer(self) -> Tokenizer:
        return self.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """What a request without SamplingParams runs with: SamplingParams' defaults, with
        the model's generation_config.json sampling over them (medrt.generation_defaults)."""
        return SamplingParams(**self.sampling_defaults)

    @property
    def model_info(self) -> dict[str, Any]:
        """The model directory and its weights: ``weight_types`` (type -> number of modules,
        e.g. {"int4-g32-mins": 210, "f32": 61, "int8-g32": 1}), ``weight_bytes`` (as stored),
        ``f16_bytes`` (the same weights in f16), ``memory_cut`` (1 - weight_bytes /
        f16_bytes: 0.64 is 64% less memory than f16), ``activation_precision`` (how the
        quantized weights' kernels read activations: "int8" or "int8x2") and
        ``kv_cache_dtype`` ("f32" or "f16")."""
        from medrt.models.weight_info import weight_summary

        return {"model_dir": str(self.model_dir), **weight_summary(self.model_dir).as_dict(),
                **self.engine_settings}

    @property
    def engine_settings(self) -> dict[str, str]:
        """The engine options that change the numbers (so a replay must match them):
        ``activation_precision`` and ``kv_cache_dtype``."""
        return {"activation_precision": self.activation_precision,
                "kv_cache_dtype": self.kv_cache_dtype}

    # -- LoRA adapters (adapter mode) ------------------------------------------------------

    def add_lora(self, lora_request: Any) -> bool:
        """Loads a LoRA adapter (a medrt.LoRARequest) into a free engine slot, evicting the
        least recently used idle adapter when all max_loras are taken. False if loaded."""
        return self._lora.add(lora_request)

    def remove_lora(self, lora_id: int) -> bool:
        """Unloads the adapter with this id; False if it was not loaded."""
        return self._lora.remove(lora_id)

    def list_loras(self) -> list[int]:
        """Ids of the adapters loaded in the engine, least recently used first."""
        return self._lora.list()

    # -- requests ----------------------------------------------------------------------------

    def _prepare(self, prompt: PromptType, params: SamplingParams | None,
                 lora_request: Any = None) -> PreparedRequest:
        lora = self._lora.resolve(lora_request)
        params = params if params is not None else self.get_default_sampling_params()
        if not isinstance(params, SamplingParams):
            raise InvalidRequest(f"sampling_params must be a medrt.SamplingParams, "
                                 f"not {type(params).__name__}")
        text, ids = self._tokenize_prompt(prompt)
        if not ids:
            raise InvalidRequest("the prompt is empty")
        # Every id is an int here (the tokenizer's, or _token_ids checked them): the range is
        # one min/max, not a second Python pass over the prompt.
        if min(ids) < 0 or max(ids) >= self._vocab_size:
            tid = next(t for t in ids if not 0 <= t < self._vocab_size)
            raise InvalidRequest(
                f"prompt token id {tid!r} is outside the vocabulary [0, {self._vocab_size})")
        if len(ids) >= self.max_model_len:
            raise InvalidRequest(
                f"the prompt has {len(ids)} tokens; max_model_len is {self.max_model_len}, "
                "which leaves no room for a generated token")
        for tid in params.stop_token_ids or []:
            if tid >= self._vocab_size:
                raise InvalidRequest(f"SamplingParams.stop_token_ids: {tid} is outside the "
                                     f"vocabulary [0, {self._vocab_size})")
        # A completion that would run past max_model_len ends there with "length" (as in vLLM).
        core = params.to_core()
        if not params.ignore_eos and self._extra_eos:
            core.stop_token_ids = list(core.stop_token_ids) + self._extra_eos
        return PreparedRequest(text, ids, params, core, lora)

    def _tokenize_prompt(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, Mapping):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), _token_ids(prompt["prompt_token_ids"],
                                                        "prompt_token_ids")
            if isinstance(prompt.get("prompt"), str):
                return prompt["prompt"], self.tokenizer.encode(prompt["prompt"])
            raise InvalidRequest("a prompt dict needs 'prompt' (text) or 'prompt_token_ids'")
        if isinstance(prompt, Sequence) and not isinstance(prompt, bytes):
            return None, _token_ids(prompt, "prompt")
        raise InvalidRequest(f"a prompt is text or a list of token ids, not {type(prompt).__name__}")

    def _render_chat(self, messages: Conversation, add_generation_prompt: bool,
                     chat_template: str | None, chat_template_kwargs: Mapping[str, Any] | None,
                     tools: list[dict] | None) -> dict[str, Any]:
        # The template writes BOS itself, so the text is encoded without adding it again;
        # control tokens spelled inside messages are encoded as text (no forged turns).
        extra = dict(chat_template_kwargs or {})
        taken = sorted(extra.keys() & _CHAT_ARGUMENTS)
        if taken:
            raise InvalidRequest(f"chat_template_kwargs: {taken} are chat() arguments of their "
                                 "own; pass them as such")
        text, ids = self.tokenizer.encode_chat(
            messages, add_generation_prompt=add_generation_prompt, chat_template=chat_template,
            tools=tools, **extra)
        return {"prompt": text, "prompt_token_ids": ids}

    def _submit(self, prepared: PreparedRequest, sink: Sink,
                request_id: str | None = None) -> RequestState:
        """Queues the request in the engine. A request with an adapter goes through the slots
        (self._slots.start*), which load the adapter first."""
        state = RequestState(request_id if request_id is not None else str(next(self._ids)),
                             prepared.prompt, prepared.token_ids, prepared.params,
                             self.tokenizer)
        on_finished = None
        if prepared.lora is not None:  # loaded now, so that eviction spares queued requests
            prepared.core_params.lora_id = self._lora.engine_id(prepared.lora)
            on_finished = self._slots.released
        state.engine_id = self._client.add_request(prepared.token_ids, prepared.core_params, sink,
                                                   on_finished)
        return state

    def _abort(self, state: RequestState, detach: bool) -> None:
        self._client.abort(state.engine_id, detach=detach)
