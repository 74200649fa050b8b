"""One cached answer, as both tiers hold it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Entry:
    id: int  # SQLite rowid: the same id in the memory tier, the disk index and the store
    scope: str  # Scope.key
    question: str
    answer: str
    embedding: np.ndarray  # float32 [dim], unit norm
    created: float  # time.time() when stored
    payload: dict[str, Any] = field(default_factory=dict)  # token ids, finish reason, ...
    words: frozenset[str] = frozenset()

    def nbytes(self) -> int:
        """What the entry costs the memory tier, roughly: its texts and its vector."""
        return (len(self.question.encode()) + len(self.answer.encode())
                + len(json.dumps(self.payload)) + self.embedding.nbytes + 200)
