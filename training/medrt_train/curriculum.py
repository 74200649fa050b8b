"""Progressive curriculum: examples ordered from basic to complex.

complexity(question, response) = words(question) / 20 + words(response) / 100
                                 + 0.5 * distinct key entities (drugs, doses, contraindications,
                                   diagnostic criteria) in question and response
                                 + 1 if the question is an emergency or medication question
A long answer full of doses and drug names about a medication is "complex"; a short
prevention answer is "basic". The examples are sorted by this score and cut into `stages`
equal parts; order is shuffled inside a stage (seeded), never across stages.
"""
from __future__ import annotations

import random

from .entities import EntityLexicon
from .examples import Instruction

_HARD_CATEGORIES = ("emergency", "medication")


def complexity(item: Instruction, lexicon: EntityLexicon) -> float:
    """The documented complexity score of one example (higher is harder)."""
    score = len(item.question.split()) / 20 + len(item.response.split()) / 100
    score += 0.5 * lexicon.count(f"{item.question}\n{item.response}")
    return score + (1.0 if item.category in _HARD_CATEGORIES else 0.0)


def curriculum_order(scores: list[float], stages: int = 3, seed: int = 0) -> list[int]:
    """Indices from basic to complex: sorted by score, shuffled only within each stage."""
    if stages < 1:
        raise ValueError("curriculum stages must be at least 1")
    ranked = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    rng = random.Random(seed)
    order: list[int] = []
    for s in range(stages):
        chunk = ranked[s * len(ranked) // stages:(s + 1) * len(ranked) // stages]
        rng.shuffle(chunk)
        order.extend(chunk)
    return order
