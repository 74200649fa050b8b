"""PubMedQA (PQA-L) with medrt's fixed split: ids sorted as strings, first 800 `dev`, last 200
`test` (../shared/data/pubmedqa/README.md). `test` is for reported figures only.

`dev` is cut once more so that choosing a method never looks at the text it was calibrated
on: `dev-calib` (its first 600 entries) is what quantization calibrates on, `dev-held-out`
(its last 200) is what methods and settings are compared on."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from medrt.eval.tasks import DATA_ENV, locate_pubmedqa

DEV_SIZE = 800
DEV_CALIB_SIZE = 600
SPLITS = ("dev", "dev-calib", "dev-held-out", "test")
ANSWERS = ("yes", "no", "maybe")


@dataclass(frozen=True)
class Question:
    pubmed_id: str
    question: str
    contexts: tuple[str, ...]
    long_answer: str
    answer: str

    def text(self) -> str:
        """The entry as plain text (question, abstract, conclusion) for perplexity."""
        return "\n".join([self.question, *self.contexts, self.long_answer])

    def prompt(self) -> str:
        """The lm-evaluation-harness `pubmedqa` prompt; the answer follows after a space."""
        return "Abstract: {}\nQuestion: {}\nAnswer:".format("\n".join(self.contexts),
                                                            self.question)


def default_path() -> Path | None:
    """PubMedQA's ori_pqal.json where medrt looks for it (medrt.eval.tasks.locate_pubmedqa:
    $MEDRT_DATA, then shared/data beside the working directory or the package), or None."""
    return locate_pubmedqa()


def load_split(split: str, path: Path | str | None = None) -> list[Question]:
    """The `dev` (800), `dev-calib` (600), `dev-held-out` (200) or `test` (200) questions, in
    id order."""
    if split not in SPLITS:
        raise ValueError(f"PubMedQA split must be one of {', '.join(SPLITS)}, not {split!r}")
    path = Path(path) if path is not None else default_path()
    if path is None:
        raise FileNotFoundError(f"PubMedQA not found: pass its ori_pqal.json or set ${DATA_ENV} "
                                f"to a directory holding pubmedqa/ori_pqal.json")
    if not path.is_file():
        raise FileNotFoundError(f"PubMedQA not found at {path} (see shared/data/pubmedqa)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # bad JSON or bad UTF-8: say which file
        raise ValueError(f"{path}: not PubMedQA's ori_pqal.json ({exc})") from None
    ids = sorted(data)
    ids = {"dev": ids[:DEV_SIZE], "dev-calib": ids[:DEV_CALIB_SIZE],
           "dev-held-out": ids[DEV_CALIB_SIZE:DEV_SIZE], "test": ids[DEV_SIZE:]}[split]
    return [Question(i, data[i]["QUESTION"], tuple(data[i]["CONTEXTS"]),
                     data[i]["LONG_ANSWER"], data[i]["final_decision"]) for i in ids]
