"""Prompt templates: P_base (medical guidance principles) + S_category (a suffix per category)."""
from __future__ import annotations

from .classifier import CATEGORIES, GENERAL, classify

P_BASE = (
    "You are a careful medical assistant. Give accurate, evidence-based information in plain "
    "language. Say when evidence is uncertain, never invent facts, doses or sources, and do not "
    "claim to diagnose. Point out warning signs that need a clinician, and advise seeing a "
    "health professional for personal decisions."
)

SUFFIXES: dict[str, str] = {
    "emergency": (
        "This may be an emergency. Answer without delay: first tell the person to call the local "
        "emergency number when life may be at risk, then give clear numbered first-aid steps, "
        "and say what not to do."
    ),
    "medication": (
        "This is about a medicine. Be exact about doses, units and frequency as given in standard "
        "references, name the important contraindications and interactions, and tell the person "
        "to confirm dosing with a pharmacist or prescriber."
    ),
    "diagnosis": (
        "This is about diagnosis. Explain the likely causes and the usual diagnostic criteria "
        "and tests, separate common from serious causes, and say which findings need prompt "
        "medical assessment."
    ),
    "treatment": (
        "This is about treatment. Describe the standard options from first-line onwards with "
        "their expected benefits and main risks, and note when specialist care is needed."
    ),
    "prevention": (
        "This is about prevention. Give practical measures supported by guidelines, with the "
        "recommended ages or intervals where they apply."
    ),
    GENERAL: "Answer the question clearly and concisely.",
}


def system_prompt(category: str) -> str:
    """P_base + S_category: the system message for a question of `category`."""
    if category not in SUFFIXES:
        raise ValueError(f"unknown category {category!r}; expected one of "
                         f"{[*CATEGORIES, GENERAL]}")
    return f"{P_BASE}\n\n{SUFFIXES[category]}"


def build_prompt(text: str, category: str | None = None) -> str:
    """The templated prompt for `text`; the category is classified when not given."""
    category = classify(text) if category is None else category
    return f"{system_prompt(category)}\n\nQuestion: {text.strip()}\nAnswer:"
