"""Fixtures of the semantic-cache tests: the real all-MiniLM-L6-v2 embedder (encoder_dir, in
tests/conftest.py) and PubMedQA text from the shared data folder."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

# ../shared/data next to the repository, as the other tests read it; MEDRT_SHARED_DIR
# overrides it for checkouts that live elsewhere.
SHARED = Path(os.environ.get("MEDRT_SHARED_DIR")
              or Path(__file__).resolve().parents[2] / ".." / "shared")
PUBMEDQA = SHARED / "data" / "pubmedqa" / "ori_pqal.json"


@pytest.fixture(scope="session")
def embedder(encoder_dir: Path):
    import medrt

    return medrt.Embedder(encoder_dir, num_threads=2)


def pubmedqa_sentences(n: int) -> list[str]:
    """The first n sentences of PubMedQA (questions and abstract sentences, in file order)."""
    if not PUBMEDQA.is_file():
        pytest.skip(f"PubMedQA not found at {PUBMEDQA} (the shared data folder is absent)")
    data = json.loads(PUBMEDQA.read_text())
    out: list[str] = []
    for item in data.values():
        out.append(item["QUESTION"])
        for ctx in item["CONTEXTS"]:
            out += [s for s in re.split(r"(?<=[.!?])\s+", ctx) if len(s) > 20]
        if len(out) >= n:
            break
    return out[:n]
