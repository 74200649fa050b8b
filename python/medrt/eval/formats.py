"""Readers for the published medical QA file formats, into one record type.

Formats (one reader each):
- ``medqa``: MedQA (USMLE) as published, JSONL, one object a line with ``question``,
  ``options`` (letter -> text; 4 or 5 options) and ``answer_idx`` (a letter).
- ``pubmedqa``: PubMedQA ``ori_pqal.json``, an object keyed by PubMed id whose entries carry
  ``QUESTION``, ``CONTEXTS`` (a list of abstract sections), ``final_decision``
  (yes/no/maybe) and ``LONG_ANSWER``.
- ``medmcqa``: MedMCQA JSONL with ``question``, ``opa``..``opd``, ``cop`` and ``exp``. ``cop`` is
  1-based (1 = a) as in the original release; a file in which some ``cop`` is 0 is read as
  the 0-based Hugging Face export.
- ``jsonl``: medrt's own records (a clinic's questions; docs/evaluation.md), one object a line
  with at least ``question``; ``options``, ``answer``, ``context``, ``id``, ``source``,
  ``category`` and ``explanation`` are optional.

The runtime (``medrt eval``) and the training package (``medrt_train.corpus``) share them; they
need nothing beyond the standard library.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medrt.errors import InvalidRequest

FORMATS = ("medqa", "pubmedqa", "medmcqa", "jsonl")


class CorpusError(InvalidRequest):
    """A corpus file that cannot be read; the message names the file, line and field."""


@dataclass
class Record:
    """One medical question in any source format."""

    question: str
    options: dict[str, str] = field(default_factory=dict)
    answer: str = ""
    context: str = ""
    source: str = ""
    id: str = ""
    category: str | None = None
    explanation: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a bad line raises with file:line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column "
                                  f"{exc.colno})") from None
            if not isinstance(obj, dict):
                raise CorpusError(f"{path}:{lineno}: expected a JSON object, "
                                  f"got {type(obj).__name__}")
            yield lineno, obj


def _need(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj or obj[key] is None:
        raise CorpusError(f"{where}: record is missing the field '{key}'")
    return obj[key]


def _read_medqa(path: Path) -> list[Record]:
    records = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        options = _need(obj, "options", where)
        if not isinstance(options, dict):
            raise CorpusError(f"{where}: field 'options' must map letters to texts")
        answer = str(_need(obj, "answer_idx", where)).strip()
        if answer not in options:
            raise CorpusError(f"{where}: answer_idx {answer!r} is not one of the options "
                              f"{sorted(options)}")
        records.append(Record(question=str(_need(obj, "question", where)),
                              options={str(k): str(v) for k, v in options.items()},
                              answer=answer, source="medqa", id=str(obj.get("id", lineno))))
    return records


def _read_pubmedqa(path: Path) -> list[Record]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise CorpusError(f"{path}: expected an object keyed by PubMed id")
    records = []
    for pmid in sorted(data):
        entry, where = data[pmid], f"{path}: entry {pmid}"
        contexts = _need(entry, "CONTEXTS", where)
        decision = str(_need(entry, "final_decision", where)).strip().lower()
        if decision not in ("yes", "no", "maybe"):
            raise CorpusError(f"{where}: final_decision must be yes, no or maybe, "
                              f"got {decision!r}")
        records.append(Record(question=str(_need(entry, "QUESTION", where)),
                              answer=decision, context="\n".join(map(str, contexts)),
                              source="pubmedqa", id=str(pmid),
                              explanation=str(entry.get("LONG_ANSWER", ""))))
    return records


def _read_medmcqa(path: Path) -> list[Record]:
    rows = list(iter_jsonl(path))
    zero_based = any(obj.get("cop") == 0 for _, obj in rows)
    records = []
    for lineno, obj in rows:
        where = f"{path}:{lineno}"
        options = {letter: str(_need(obj, f"op{key}", where))
                   for letter, key in zip("ABCD", "abcd")}
        try:
            cop = int(_need(obj, "cop", where)) + (1 if zero_based else 0)
        except (TypeError, ValueError):
            raise CorpusError(f"{where}: field 'cop' must be an integer") from None
        if not 1 <= cop <= 4:
            raise CorpusError(f"{where}: field 'cop' out of range: {obj['cop']}")
        records.append(Record(question=str(_need(obj, "question", where)), options=options,
                              answer="ABCD"[cop - 1], source="medmcqa",
                              id=str(obj.get("id", lineno)),
                              explanation=str(obj.get("exp") or "")))
    return records


def _read_jsonl(path: Path) -> list[Record]:
    records = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        options = obj.get("options") or {}
        if not isinstance(options, dict):
            raise CorpusError(f"{where}: field 'options' must map letters to texts")
        records.append(Record(question=str(_need(obj, "question", where)),
                              options={str(k): str(v) for k, v in options.items()},
                              answer=str(obj.get("answer", "")),
                              context=str(obj.get("context", "")),
                              source=str(obj.get("source") or path.stem),
                              id=str(obj.get("id", lineno)), category=obj.get("category"),
                              explanation=str(obj.get("explanation", ""))))
    return records


_READERS = {"medqa": _read_medqa, "pubmedqa": _read_pubmedqa, "medmcqa": _read_medmcqa,
            "jsonl": _read_jsonl}


def load(path: str | Path, format: str) -> list[Record]:
    """Reads `path` in `format` (medqa, pubmedqa, medmcqa or jsonl) into Records."""
    if format not in _READERS:
        raise CorpusError(f"unknown corpus format {format!r}; expected one of {list(FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    return _READERS[format](path)
