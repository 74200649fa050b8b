"""The guard: refuses a cache hit when two questions differ in a detail that changes the
answer, whatever their similarity score.

Compared as sets (after normalisation): numbers with their units ("20 kg" vs "40 kg", "5 mg"
vs "5 g", "twice" vs "once"), negation cues ("not", "without", "avoid"), laterality words
("left", "right"), body sites ("leg" vs "arm"), patient details (child / adult / pregnant / renal ...), and medical entities
of the training package's lexicon (drugs, contraindications, diagnostic criteria; a copy lives
in medical/data/entities.json so the runtime does not import medrt_train), with spelling
synonyms folded ("acetaminophen" = "paracetamol"). The word lists are in
medical/data/guard_lexicon.json.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from medrt.cache.text import normalize

_DATA = Path(__file__).resolve().parent.parent / "medical" / "data"
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)\s*(%|[a-zµ]+(?:/[a-z0-9]+)?)?")
_TOKEN = re.compile(r"[a-z0-9µ%]+(?:['/][a-z0-9]+)*")


@dataclass(frozen=True)
class GuardResult:
    ok: bool
    reason: str | None = None  # number, negation, laterality, site, population, entity
    detail: str = ""


class Guard:
    """Extracts the answer-changing details of a question and compares two of them."""

    def __init__(self, lexicon: dict, entities: dict) -> None:
        self.units = set(lexicon["units"])
        self.number_words = dict(lexicon["number_words"])
        self.negations = set(lexicon["negations"])
        self.laterality = set(lexicon["laterality"])
        self.population = dict(lexicon["population"])
        self.body_sites = dict(lexicon["body_sites"])
        self.synonyms = dict(lexicon["synonyms"])
        terms: list[str] = []
        for spec in entities.get("groups", {}).values():
            terms += [t.lower() for t in spec.get("terms", [])]
        terms += list(self.synonyms)
        # Longest first, so "ace inhibitors" wins over a shorter overlapping term.
        alternatives = sorted(set(terms), key=len, reverse=True)
        self._entity = re.compile(
            "|".join(rf"(?<!\w){re.escape(t)}(?!\w)" for t in alternatives))

    @classmethod
    @lru_cache(maxsize=1)
    def default(cls) -> Guard:
        """The guard over the shipped word lists."""
        with open(_DATA / "guard_lexicon.json", encoding="utf-8") as f:
            lexicon = json.load(f)
        with open(_DATA / "entities.json", encoding="utf-8") as f:
            entities = json.load(f)
        return cls(lexicon, entities)

    def features(self, question: str) -> dict[str, frozenset[str]]:
        """The details the guard compares, each as a set of canonical strings."""
        text = normalize(question)
        tokens = _TOKEN.findall(text)
        numbers = set()
        for m in _NUMBER.finditer(text):
            value = m.group(1).replace(",", ".")
            value = value.rstrip("0").rstrip(".") if "." in value else value
            unit = m.group(2) or ""
            numbers.add(f"{value} {unit}" if unit in self.units else value)
        numbers |= {self.number_words[t] for t in tokens if t in self.number_words}
        entities = {self.synonyms.get(m.group(0), m.group(0)) for m in self._entity.finditer(text)}
        return {
            "number": frozenset(numbers),
            "negation": frozenset(t for t in tokens if t in self.negations or t.endswith("n't")),
            "laterality": frozenset(t for t in tokens if t in self.laterality),
            "population": frozenset(self.population[t] for t in tokens if t in self.population),
            "site": frozenset(self.body_sites[t] for t in tokens if t in self.body_sites),
            "entity": frozenset(entities),
        }

    def compare(self, a: dict[str, frozenset[str]], b: dict[str, frozenset[str]]) -> GuardResult:
        """ok when every feature set matches; else the first that differs and how."""
        for kind in ("number", "negation", "laterality", "site", "population", "entity"):
            if a[kind] != b[kind]:
                diff = sorted(a[kind] ^ b[kind])
                return GuardResult(False, kind, ", ".join(diff))
        return GuardResult(True)

    def check(self, q1: str, q2: str) -> GuardResult:
        return self.compare(self.features(q1), self.features(q2))
