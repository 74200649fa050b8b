"""The evaluation tasks: which file, which questions, and the prompt each question is scored with.

Log-likelihood prompts are lm-evaluation-harness's (lm_eval 0.4, ``lm_eval/tasks/``), so the
figures compare with published lm-eval runs question by question:

- ``pubmedqa`` (``pubmedqa/preprocess_pubmedqa.py``): ``"Abstract: {contexts joined by
  newlines}\\nQuestion: {question}\\nAnswer:"``; choices ``yes``, ``no``, ``maybe``.
- ``medqa`` (``medqa/preprocess_medqa.py``, task ``medqa_4options``): ``"Question: {question}\\n"``
  then one ``"{letter}. {option}\\n"`` per option, then ``"Answer:"``; choices the letters. The
  5-option USMLE file gets the same format with five letters.
- ``medmcqa`` (``medmcqa/utils_medmcqa.py``): ``"Question: {question}\\nChoices:\\n"``, one
  ``"{letter}. {option}\\n"`` per option, ``"Answer:"``; choices ``A``..``D``.
- ``jsonl:FILE`` (a clinic's own questions, docs/evaluation.md): the ``medqa`` format, with
  ``"Context: {context}\\n"`` first when a record has a context.

Each choice is scored as the continuation ``" " + choice`` (lm-eval's target delimiter).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from medrt.errors import InvalidRequest
from medrt.eval.formats import Record, load
from medrt.medical import classify

TASKS = ("pubmedqa", "medqa", "medmcqa", "jsonl:FILE")
SPLITS = ("dev", "test")
# medrt's fixed PubMedQA split (shared/data/pubmedqa/README.md): ids sorted as strings, the
# first 800 are `dev`, the last 200 `test`. `test` is for reported figures only.
PUBMEDQA_DEV_SIZE = 800
PUBMEDQA_FILE = Path("pubmedqa") / "ori_pqal.json"
DATA_ENV = "MEDRT_DATA"
YES_NO_MAYBE = ("yes", "no", "maybe")


@dataclass(frozen=True)
class Question:
    """One question as scored: the lm-eval prompt, its choices and the gold choice."""

    id: str
    prompt: str                # the log-likelihood context (ends without a trailing space)
    choices: tuple[str, ...]   # continuation texts, scored after a space
    gold: int                  # index into choices
    category: str              # medrt.medical category of the question
    record: Record

    @property
    def gold_choice(self) -> str:
        return self.choices[self.gold]


def locate_pubmedqa() -> Path | None:
    """Where PubMedQA is when no path is given: $MEDRT_DATA, else ``shared/data`` beside the
    working directory or the package (the project's layout), whichever holds the file first;
    None when none does. An installed package sits far from the checkout, so the working
    directory is searched before it."""
    roots = [Path(os.environ[DATA_ENV])] if os.environ.get(DATA_ENV) else []
    for base in (Path.cwd().resolve(), Path(__file__).resolve()):
        roots += [p / "shared" / "data" for p in base.parents]
    for root in roots:
        if (root / PUBMEDQA_FILE).is_file():
            return root / PUBMEDQA_FILE
    return None


def find_pubmedqa(data: str | Path | None = None) -> Path:
    """``data`` (a file, or a directory holding pubmedqa/ori_pqal.json), else
    ``locate_pubmedqa()``."""
    if data is not None:
        path = Path(data)
        return path / PUBMEDQA_FILE if path.is_dir() else path
    found = locate_pubmedqa()
    if found is None:
        raise InvalidRequest(f"PubMedQA not found: pass --data PATH/ori_pqal.json or set "
                             f"${DATA_ENV} to a directory holding {PUBMEDQA_FILE}")
    return found


def load_task(task: str, data: str | Path | None = None, split: str | None = None,
              limit: int | None = None) -> list[Question]:
    """The questions of ``task`` (see TASKS), in file order (PubMedQA: id order), the first
    ``limit`` of them. ``split`` (dev or test) applies to PubMedQA only."""
    if limit is not None and limit < 1:
        raise InvalidRequest(f"--limit {limit}: must be at least 1")
    if task == "pubmedqa":
        split = split or "dev"
        if split not in SPLITS:
            raise InvalidRequest(f"--split {split!r}: PubMedQA has {' and '.join(SPLITS)}")
        records = load(find_pubmedqa(data), "pubmedqa")  # sorted by PubMed id
        records = records[:PUBMEDQA_DEV_SIZE] if split == "dev" else records[PUBMEDQA_DEV_SIZE:]
        questions = [_pubmedqa(r) for r in records]
    else:
        if split is not None:
            raise InvalidRequest(f"--split applies to pubmedqa only; the {task} file is the split")
        fmt, path = _file_task(task, data)
        questions = [_lettered(r, fmt) for r in load(path, fmt)]
    if not questions:
        raise InvalidRequest(f"task {task}: no questions")
    return questions[:limit] if limit else questions


def _file_task(task: str, data: str | Path | None) -> tuple[str, Path]:
    if task.startswith("jsonl:"):
        return "jsonl", Path(task[len("jsonl:"):])
    if task not in ("medqa", "medmcqa"):
        raise InvalidRequest(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if data is None:
        raise InvalidRequest(f"task {task} needs --data FILE (the {task} JSONL as published)")
    return task, Path(data)


def _pubmedqa(r: Record) -> Question:
    prompt = f"Abstract: {r.context}\nQuestion: {r.question}\nAnswer:"
    return Question(r.id, prompt, YES_NO_MAYBE, YES_NO_MAYBE.index(r.answer),
                    r.category or classify(r.question), r)


def _lettered(r: Record, fmt: str) -> Question:
    letters = tuple(sorted(r.options))
    if len(letters) < 2:
        raise InvalidRequest(f"{r.source} question {r.id}: needs at least two options to score")
    if r.answer not in letters:
        raise InvalidRequest(f"{r.source} question {r.id}: answer {r.answer!r} is not one of the "
                             f"options {list(letters)}")
    options = "".join(f"{k}. {r.options[k]}\n" for k in letters)
    if fmt == "medmcqa":
        prompt = f"Question: {r.question}\nChoices:\n{options}Answer:"
    else:
        context = f"Context: {r.context}\n" if r.context else ""
        prompt = f"{context}Question: {r.question}\n{options}Answer:"
    return Question(r.id, prompt, letters, letters.index(r.answer),
                    r.category or classify(r.question), r)
