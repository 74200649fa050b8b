"""The request both transports hand to the core, and its validation.

gRPC and HTTP parse their own wire formats into a ``ServeRequest``; everything that can be
checked without the model is checked here, naming the field as the client spelled it
(``field_prefix`` is ``"sampling."`` for gRPC, empty for OpenAI's flat JSON).
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from medrt.cache.frontend_cache import MODES as CACHE_MODES
from medrt.chat_template import content_text
from medrt.errors import InvalidRequest
from medrt.medical.conversation import TEMPLATE_CHOICES
from medrt.sampling_params import SamplingParams
from medrt.serve.errors import ServeError, invalid

ROLES = ("system", "user", "assistant", "tool", "developer")
SAMPLING_FIELDS = ("n", "max_tokens", "min_tokens", "temperature", "top_k", "top_p", "min_p",
                   "repetition_penalty", "frequency_penalty", "presence_penalty", "seed", "stop",
                   "stop_token_ids", "ignore_eos", "logprobs", "include_stop_str_in_output",
                   "skip_special_tokens")
_FIELD_IN_MESSAGE = re.compile(r"SamplingParams\.(\w+)")


@dataclass
class ServeRequest:
    kind: str  # "generate" or "chat"
    model: str = ""
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    messages: list[dict[str, Any]] | None = None
    sampling: dict[str, Any] = field(default_factory=dict)  # the fields the client gave
    request_id: str = ""
    medical_template: str = ""
    add_generation_prompt: bool = True
    field_prefix: str = ""
    prompt_field: str = "prompt"
    messages_field: str = "messages"
    default_max_tokens_to_context: bool = False  # OpenAI: no max_tokens runs to the context
    # The semantic cache (when the server has one): "auto" looks up and stores, "bypass"
    # neither, "refresh" computes a fresh answer and stores it. A request that says it carries
    # patient data never uses the cache.
    cache: str = "auto"
    patient_context: bool = False


def check_text(value: Any, name: str, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise invalid(name, f"must be a string, not {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise invalid(name, "is not valid UTF-8 (it holds unpaired surrogates)") from None
    if size > max_bytes:
        raise invalid(name, f"is {size} bytes; the limit is {max_bytes}")
    return value


def check_shape(req: ServeRequest, max_prompt_bytes: int) -> None:
    """Checks the prompt or the messages (not yet tokenized) and the template choice."""
    if req.kind == "generate":
        if req.prompt_token_ids is not None:
            if not req.prompt_token_ids:
                raise invalid(req.prompt_field, "is empty")
        elif req.prompt is None or req.prompt == "":
            raise invalid(req.prompt_field, "is empty")
        else:
            check_text(req.prompt, req.prompt_field, max_prompt_bytes)
    else:
        msgs = req.messages
        if not msgs:
            raise invalid(req.messages_field, "is empty; send at least one message")
        total = 0
        texts = []
        for i, m in enumerate(msgs):
            where = f"{req.messages_field}[{i}]"
            if not isinstance(m, dict):
                raise invalid(where, "must be an object with 'role' and 'content'")
            if m.get("role") not in ROLES:
                raise invalid(f"{where}.role", f"{m.get('role')!r} is not one of {list(ROLES)}")
            try:
                content = content_text(m, f"{where}.content")
            except InvalidRequest as e:
                raise ServeError("INVALID_ARGUMENT", str(e), e.field) from None
            total += len(check_text(content, f"{where}.content", max_prompt_bytes))
            if total > max_prompt_bytes:
                raise invalid(req.messages_field, f"hold more than {max_prompt_bytes} bytes")
            texts.append({**m, "content": content})
        req.messages = texts  # what the chat template and the cache read: content as text
    if req.cache not in CACHE_MODES:
        raise invalid("cache", f"{req.cache!r} is not one of {list(CACHE_MODES)}")
    if not isinstance(req.patient_context, bool):
        raise invalid("patient_context", "must be a boolean")
    if req.medical_template and req.medical_template not in TEMPLATE_CHOICES:
        raise invalid("medical_template",
                      f"{req.medical_template!r} is not one of {list(TEMPLATE_CHOICES)}")


def sampling_params(req: ServeRequest, max_model_len: int, prompt_len: int,
                    model_defaults: dict[str, Any] | None = None,
                    kv_tokens: int | None = None) -> SamplingParams:
    """The SamplingParams in effect: the client's fields over the model's generation_config.json
    defaults (medrt.generation_defaults); a missing seed is drawn so that the answer can be
    replayed from its fingerprint.

    ``kv_tokens``: the positions the whole KV pool holds. A sequence of n tokens needs n - 1 of
    them, so when the pool is smaller than the context, a default max_tokens stops where the
    pool ends, and a request that could never fit is refused here, naming what to shorten
    (the engine would refuse it as a full cache, which clients retry)."""
    given = dict(req.sampling)
    p = req.field_prefix
    for name in given:
        if name not in SAMPLING_FIELDS:
            raise invalid(f"{p}{name}", "is not a sampling parameter")
    room = max_model_len if kv_tokens is None else min(max_model_len, kv_tokens + 1)
    if room < max_model_len and prompt_len >= room:
        raise invalid(req.messages_field if req.kind == "chat" else req.prompt_field,
                      f"the prompt has {prompt_len} tokens; the server's KV cache holds "
                      f"{kv_tokens} positions, which leaves no room to generate")
    model = {k: v for k, v in (model_defaults or {}).items() if k not in given}
    if "max_tokens" in model:  # the model's max_new_tokens, within what the context leaves
        model["max_tokens"] = max(min(model["max_tokens"], room - prompt_len), 1)
    given = {**model, **given}
    for name in ("temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty",
                 "presence_penalty"):
        v = given.get(name)
        if isinstance(v, float) and math.isnan(v):
            raise invalid(f"{p}{name}", "is NaN")
    if "max_tokens" not in given and req.default_max_tokens_to_context:
        given["max_tokens"] = max(room - prompt_len, 1)
    mt = given.get("max_tokens")
    if isinstance(mt, int) and not isinstance(mt, bool):
        if mt > max_model_len:
            raise invalid(f"{p}max_tokens", f"{mt} is more than the context ({max_model_len})")
        if room < max_model_len and prompt_len + mt > room:
            raise invalid(f"{p}max_tokens", f"the prompt's {prompt_len} tokens and {mt} new "
                          f"ones need {prompt_len + mt - 1} KV positions; the server's KV cache "
                          f"holds {kv_tokens}: ask for at most {room - prompt_len}")
    if given.get("seed") is None:
        given["seed"] = secrets.randbelow(2**63)
    try:
        return SamplingParams(**given)
    except InvalidRequest as e:
        m = _FIELD_IN_MESSAGE.search(str(e))
        name = f"{p}{m.group(1)}" if m else f"{p}sampling"
        raise invalid(name, str(e)) from None
    except TypeError as e:
        raise invalid(f"{p}sampling", str(e)) from None


def params_in_effect(params: SamplingParams) -> dict[str, Any]:
    """Every sampling parameter as used (the fingerprint's ``sampling``)."""
    out = {name: getattr(params, name) for name in SAMPLING_FIELDS}
    out["stop"] = list(params.stop_strings)
    out["stop_token_ids"] = list(params.stop_token_ids or [])
    return out
