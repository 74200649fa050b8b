"""The weighted lexicon of key medical entities used by the distillation entity term."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LEXICON = Path(__file__).with_name("data") / "entities.json"


@dataclass
class EntityGroup:
    name: str
    weight: float
    pattern: re.Pattern[str]


class EntityLexicon:
    """Finds entity spans in text and turns them into per-token weights."""

    def __init__(self, groups: list[EntityGroup]) -> None:
        self.groups = groups

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> EntityLexicon:
        """Loads a lexicon shaped like data/entities.json (the shipped one by default)."""
        path = Path(path or DEFAULT_LEXICON)
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        groups = []
        for name, spec in data.get("groups", {}).items():
            if "weight" not in spec:
                raise ValueError(f"{path}: entity group {name!r} is missing the field 'weight'")
            alternatives = [rf"(?<!\w){re.escape(t)}(?!\w)" for t in spec.get("terms", [])]
            alternatives += spec.get("patterns", [])
            if not alternatives:
                raise ValueError(f"{path}: entity group {name!r} has no terms or patterns")
            groups.append(EntityGroup(name, float(spec["weight"]),
                                      re.compile("|".join(f"(?:{a})" for a in alternatives),
                                                 re.IGNORECASE)))
        return cls(groups)

    def spans(self, text: str) -> list[tuple[int, int, float, str]]:
        """(start, end, weight, group) of every entity match in `text`."""
        return [(m.start(), m.end(), g.weight, g.name)
                for g in self.groups for m in g.pattern.finditer(text)]

    def count(self, text: str) -> int:
        """The number of distinct entity strings in `text`."""
        return len({text[s:e].lower() for s, e, _, _ in self.spans(text)})

    def token_weights(self, text: str, offsets: list[tuple[int, int]]) -> list[float]:
        """For each token (character offsets into `text`) the largest weight of an entity it
        overlaps, 0 for tokens outside every entity."""
        spans = self.spans(text)
        weights = []
        for start, end in offsets:
            w = 0.0
            for s, e, weight, _ in spans:
                if start < e and s < end:
                    w = max(w, weight)
            weights.append(w)
        return weights
