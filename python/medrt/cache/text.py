"""Question text as the cache compares it: the normalised form (exact tier key) and word sets
(the Jaccard term of the combined score)."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_SPACE = re.compile(r"\s+")
_EDGE_PUNCT = "?!.,;:\"'()[] "
_WORD = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")


def normalize(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed, punctuation trimmed from both ends only (so
    "2.5 mg" keeps its point: inner punctuation can carry meaning)."""
    t = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", t).strip(_EDGE_PUNCT)


def text_hash(text: str) -> str:
    """The exact tier's key: SHA-256 of the normalised text."""
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()


def words(text: str) -> frozenset[str]:
    """The set of words (letters and digits, inner '.' and apostrophes kept) of a text."""
    return frozenset(_WORD.findall(normalize(text)))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def combined_score(jac: float, cosine: float, a: float) -> float:
    """Zhang and Qin's similarity: a * Jaccard + (1 - a) * cosine."""
    return a * jac + (1.0 - a) * cosine
