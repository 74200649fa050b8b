"""Keyword classifier of medical questions into five categories (or `general`).

The category is the one with the most keyword matches. Ties go to the category listed first
in `tie_order` (emergency first: a question that is as much about an emergency as anything
else must get the emergency template). No match at all gives `general`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

CATEGORIES: tuple[str, ...] = ("medication", "diagnosis", "treatment", "prevention", "emergency")
GENERAL = "general"
DEFAULT_KEYWORDS = Path(__file__).with_name("data") / "keywords.json"
KEYWORDS_ENV = "MEDRT_MEDICAL_KEYWORDS"


def _pattern(keyword: str) -> re.Pattern[str]:
    # Whole-word match; a trailing '*' allows any word ending ("antibiotic*" -> antibiotics).
    stem = keyword.rstrip("*")
    body = r"\s+".join(re.escape(part) for part in stem.split())
    tail = r"\w*" if keyword.endswith("*") else ""
    return re.compile(rf"(?<!\w){body}{tail}(?!\w)")


@dataclass
class KeywordClassifier:
    """Counts keyword matches per category; see the module docstring for the decision rule."""

    keywords: dict[str, list[str]]
    tie_order: list[str] = field(default_factory=lambda: ["emergency", "medication", "diagnosis",
                                                           "treatment", "prevention"])

    def __post_init__(self) -> None:
        unknown = set(self.keywords) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories in keyword sets: {sorted(unknown)}; "
                             f"expected a subset of {list(CATEGORIES)}")
        if sorted(self.tie_order) != sorted(CATEGORIES):
            raise ValueError(f"tie_order must list each of {list(CATEGORIES)} once, "
                             f"got {self.tie_order}")
        self._patterns = {cat: [_pattern(k.lower()) for k in words]
                          for cat, words in self.keywords.items()}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> KeywordClassifier:
        """Loads keyword sets from a JSON file shaped like data/keywords.json."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if "categories" not in data:
            raise ValueError(f"{path}: missing the 'categories' object")
        kwargs = {"keywords": data["categories"]}
        if "tie_order" in data:
            kwargs["tie_order"] = data["tie_order"]
        return cls(**kwargs)

    def scores(self, text: str) -> dict[str, int]:
        """Number of distinct keywords of each category found in `text`."""
        lowered = text.lower()
        return {cat: sum(1 for p in pats if p.search(lowered))
                for cat, pats in self._patterns.items()}

    def classify(self, text: str) -> str:
        """The category of `text`: most matches, ties by `tie_order`, no match -> general."""
        scores = self.scores(text)
        best = max(scores.values(), default=0)
        if best == 0:
            return GENERAL
        return next(cat for cat in self.tie_order if scores.get(cat, 0) == best)


@lru_cache(maxsize=1)
def default_classifier() -> KeywordClassifier:
    """The classifier over $MEDRT_MEDICAL_KEYWORDS, or the shipped keyword file."""
    return KeywordClassifier.from_file(os.environ.get(KEYWORDS_ENV) or DEFAULT_KEYWORDS)


def classify(text: str) -> str:
    """One of medication, diagnosis, treatment, prevention, emergency, general."""
    return default_classifier().classify(text)
