"""The medical template in the request path: a conversation gets P_base + S_category as its
system message, the category picked by the classifier (``"auto"``) or named by the caller."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .classifier import CATEGORIES, GENERAL, classify
from .templates import system_prompt

TEMPLATE_CHOICES: tuple[str, ...] = ("auto", *CATEGORIES, GENERAL)


def resolve_category(mode: str, question: str) -> str:
    """The category for ``mode`` ("auto" classifies ``question``); ValueError if unknown."""
    if mode not in TEMPLATE_CHOICES:
        raise ValueError(f"medical_template={mode!r}: expected one of {list(TEMPLATE_CHOICES)}")
    return classify(question) if mode == "auto" else mode


def apply_medical_template(messages: Sequence[Mapping[str, Any]],
                           mode: str) -> tuple[list[dict[str, Any]], str]:
    """(messages with the template as system message, the category used).

    The classifier reads the user messages. The template comes first, so every templated
    request shares the P_base prefix (the engine's prefix cache reuses it); a system message
    of the caller is kept after the template, in the same system message.
    """
    question = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
    category = resolve_category(mode, question)
    template = system_prompt(category)
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{template}\n\n{out[0].get('content', '')}"
    else:
        out.insert(0, {"role": "system", "content": template})
    return out, category
