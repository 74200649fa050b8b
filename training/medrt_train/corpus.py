"""The medical QA corpus formats (medqa, pubmedqa, medmcqa, jsonl) for training.

The readers live in the runtime (``medrt.eval.formats``: ``medrt eval`` scores the same files)
and are re-exported here; this module adds how a training example shows a question.
"""
from __future__ import annotations

from medrt.eval.formats import FORMATS, CorpusError, Record, iter_jsonl, load

__all__ = ["FORMATS", "CorpusError", "Record", "iter_jsonl", "load", "question_text"]


def question_text(record: Record) -> str:
    """The question as a model sees it: context first, then lettered options when present."""
    parts = []
    if record.context:
        parts.append(f"Context: {record.context}")
    parts.append(record.question.strip())
    parts.extend(f"{letter}. {text}" for letter, text in sorted(record.options.items()))
    return "\n".join(parts)
