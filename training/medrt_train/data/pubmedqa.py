"""PubMedQA (PQA-L) with medrt's fixed split: ids sorted as strings, first 800 `dev`, last 200
`test` (../shared/data/pubmedqa/README.md). `test` is for reported figures only."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parents[3].parent / "shared/data/pubmedqa/ori_pqal.json"
DEV_SIZE = 800
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


def load_split(split: str, path: Path | str | None = None) -> list[Question]:
    """The `dev` (800) or `test` (200) questions, in id order."""
    if split not in ("dev", "test"):
        raise ValueError(f"PubMedQA split must be 'dev' or 'test', not {split!r}")
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise FileNotFoundError(f"PubMedQA not found at {path} (see shared/data/pubmedqa)")
    data = json.loads(path.read_text())
    ids = sorted(data)
    ids = ids[:DEV_SIZE] if split == "dev" else ids[DEV_SIZE:]
    return [Question(i, data[i]["QUESTION"], tuple(data[i]["CONTEXTS"]),
                     data[i]["LONG_ANSWER"], data[i]["final_decision"]) for i in ids]
