"""Medical question classifier and prompt templates (pure Python; the runtime uses them too)."""
from .classifier import CATEGORIES, GENERAL, KeywordClassifier, classify, default_classifier
from .templates import P_BASE, SUFFIXES, build_prompt, system_prompt

__all__ = [
           "CATEGORIES",
           "GENERAL",
           "P_BASE",
           "SUFFIXES",
           "KeywordClassifier",
           "build_prompt",
           "classify",
           "default_classifier",
           "system_prompt",
]
