"""Chat templates: the checkpoint's Jinja template rendered the way transformers renders it.

Checkpoints ship their prompt format as a Jinja template (tokenizer_config.json's
``chat_template`` or a ``chat_template.jinja`` file). A template is untrusted code, so it runs
in Jinja's immutable sandbox, with the globals and filters that templates written for
transformers rely on: ``raise_exception``, ``strftime_now``, a ``tojson`` that does not escape
HTML, ``trim_blocks``/``lstrip_blocks``, and ``{% generation %}`` blocks (rendered as-is).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, ClassVar

from medrt.errors import InvalidRequest

Message = Mapping[str, Any]


def render_chat_template(
    template: str,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | None = None,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    **kwargs: Any,
) -> str:
    """Renders one conversation.

    ``special_tokens`` (bos_token, eos_token, ...) are visible to the template as variables;
    ``kwargs`` (for example ``enable_thinking``) override them. Like transformers, keys whose
    value is None are dropped from each message, since many templates test for a key's
    presence rather than for None. A template that fails (including ``raise_exception``)
    raises :class:`medrt.errors.InvalidRequest`.
    """
    import jinja2

    _check_messages(messages)
    chat = [{k: _plain(v) for k, v in {**m, "content": content_text(m, f"messages[{i}].content")
                                         }.items() if v is not None}
            for i, m in enumerate(messages)]
    variables = {**(special_tokens or {}), **{k: _plain(v) for k, v in kwargs.items()}}
    compiled = _compile(template)
    try:
        return compiled.render(
            messages=chat,
            tools=_plain(tools),
            documents=_plain(documents),
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.TemplateError as e:
        raise InvalidRequest(f"chat template: {e}") from e
    except RecursionError as e:
        # A macro that calls itself without end.
        raise InvalidRequest("chat template: recursion too deep while rendering") from e
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as e:
        # Errors of the template's own expressions, e.g. tojson over a missing field.
        raise InvalidRequest(f"chat template: {type(e).__name__}: {e}") from e


# The roles of the OpenAI chat API plus Llama 3's "ipython" (tool results); a template given
# another role would render it in some way nobody chose, so it is refused before rendering.
ROLES = ("system", "developer", "user", "assistant", "tool", "function", "ipython")


def _check_messages(messages: Sequence[Message]) -> None:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidRequest("messages must be a list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m:
            raise InvalidRequest(f"messages[{i}] = {m!r}: must be a dict with a 'role' key")
        if m["role"] not in ROLES:
            raise InvalidRequest(f"messages[{i}]['role'] = {m['role']!r}: unknown role "
                                 f"(one of {', '.join(ROLES)})")


def content_text(message: Message, where: str) -> str:
    """A message's content as the text a chat template reads, from the shapes OpenAI's API
    allows: a string; a list of text parts (joined by newlines, as vLLM does for text-only
    models); null or absent on an assistant message (a turn that only called tools: ""). Other
    part types and a missing content elsewhere raise InvalidRequest naming the field (``where``
    is the content's path, e.g. ``messages[0].content``)."""
    content = message.get("content")
    if content is None:
        if message.get("role") != "assistant":
            raise InvalidRequest(f"{where}: is missing or null; only an assistant message may "
                                 "leave it out", where)
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: must be a string or a list of text parts, not "
                             f"{type(content).__name__}", where)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise InvalidRequest(f"{where}[{j}]: a {kind!r} part; only text parts "
                                 "({'type': 'text', 'text': ...}) are read", f"{where}[{j}]")
        if not isinstance(part.get("text"), str):
            raise InvalidRequest(f"{where}[{j}].text: must be a string", f"{where}[{j}].text")
        texts.append(part["text"])
    return "\n".join(texts)


def _plain(value: Any) -> Any:
    """A copy built of plain JSON types: the sandbox must never see objects with methods."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return f"<{type(value).__name__}>"


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        # Training templates mark assistant turns with {% generation %}; for inference the
        # block renders its body unchanged.
        tags: ClassVar[set[str]] = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(
                self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller: Any) -> str:
            return caller()

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        # Jinja's sandbox bounds range() but not `*` and `**`: `'a' * 10**12` in a template
        # would take the process's memory. Both operators are checked before they run.
        intercepted_binops = frozenset(("*", "**"))

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _check_binop(operator, left, right)
            return super().call_binop(context, operator, left, right)

    env = BoundedSandbox(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise InvalidRequest(f"chat template does not compile: {e}") from e
    except RecursionError as e:
        # Jinja's parser recurses once per nesting level ("{{ ((((...").
        raise InvalidRequest("chat template does not compile: nested too deeply") from e


# The largest string or list a template may build with `*`, and the largest power with `**`.
MAX_REPEAT_ITEMS = 1 << 20
MAX_POW_BITS = 4096


def _check_binop(operator: str, left: Any, right: Any) -> None:
    import jinja2

    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int) \
                    and len(seq) * n > MAX_REPEAT_ITEMS:
                raise jinja2.exceptions.SecurityError(
                    f"template repeats a sequence to more than {MAX_REPEAT_ITEMS} items")
    elif isinstance(left, int) and isinstance(right, int) and right > 0 \
            and left.bit_length() * right > MAX_POW_BITS:
        raise jinja2.exceptions.SecurityError(
            f"template computes a power of more than {MAX_POW_BITS} bits")


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson HTML-escapes '<', '>' and '&', which would change the prompt.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)

