"""The labelled pairs (tests/data/cache_pairs.jsonl) through the guard and the embedder: the
shipped operating point keeps the targets of docs/semantic-cache.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from medrt.cache.guard import Guard
from medrt.cache.semantic_cache import DEFAULT_A, DEFAULT_THRESHOLD
from medrt.cache.text import combined_score, jaccard, words

PAIRS = Path(__file__).resolve().parents[1] / "data" / "cache_pairs.jsonl"


def load() -> list[dict]:
    return [json.loads(line) for line in PAIRS.read_text().splitlines()]


def test_the_set_is_as_documented() -> None:
    pairs = load()
    assert len(pairs) >= 300
    kinds = {p["kind"] for p in pairs}
    assert {"paraphrase", "dose", "weight", "age", "drug", "negation", "side",
            "patient"} <= kinds
    assert all((p["label"] == "hit") == (p["kind"] == "paraphrase") for p in pairs)


def test_guard_alone_refuses_every_number_unit_negation_and_drug_negative() -> None:
    guard = Guard.default()
    for p in load():
        if p["kind"] in ("dose", "weight", "age", "number", "unit", "negation", "drug"):
            assert not guard.check(p["cached"], p["asked"]).ok, p


def test_operating_point_meets_the_targets(embedder) -> None:
    pairs = load()
    texts = sorted({p["cached"] for p in pairs} | {p["asked"] for p in pairs})
    vec = dict(zip(texts, embedder.embed(texts)))
    guard = Guard.default()
    accepted = []
    for p in pairs:
        score = combined_score(jaccard(words(p["cached"]), words(p["asked"])),
                               float(vec[p["cached"]] @ vec[p["asked"]]), DEFAULT_A)
        accepted.append(score >= DEFAULT_THRESHOLD and guard.check(p["cached"], p["asked"]).ok)
    accepted = np.array(accepted)
    pos = np.array([p["label"] == "hit" for p in pairs])
    assert accepted[pos].mean() >= 0.70
    assert accepted[~pos].mean() <= 0.01
