"""Calibration text for GPTQ: PubMedQA `dev` or a training corpus, never evaluation text."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from medrt_train.data.pubmedqa import load_split


def calibration_texts(path: Path) -> tuple[list[str], str]:
    """Texts and a description of where they came from.

    `ori_pqal.json` (PubMedQA) gives its `dev-calib` part only (the first 600 `dev`
    entries; `dev-held-out` is kept for comparing methods, `test` for figures); a `.jsonl`
    corpus gives each line's `text`, or its `prompt`/`response` (or chat `messages`) joined;
    a `.txt` file gives its blank-line separated paragraphs.
    """
    path = Path(path)
    if path.suffix == ".json":
        return [q.text() for q in load_split("dev-calib", path)], "pubmedqa:dev-calib"
    if path.suffix == ".jsonl":
        texts = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({exc})") from None
            texts.append(_record_text(record, path))
        return texts, "corpus"
    if path.suffix == ".txt":
        return [p for p in path.read_text().split("\n\n") if p.strip()], "text"
    raise ValueError(f"calibration data {path}: expected PubMedQA .json, a .jsonl corpus or .txt")


def _record_text(record: dict, path: Path) -> str:
    if "text" in record:
        return str(record["text"])
    if "messages" in record:
        return "\n".join(str(m.get("content", "")) for m in record["messages"])
    parts = [str(record[k]) for k in ("prompt", "instruction", "question", "response", "answer")
             if k in record]
    if not parts:
        raise ValueError(f"{path}: a record has none of text, messages, prompt/response")
    return "\n".join(parts)


def calibration_batch(texts: list[str], tokenizer, samples: int, seq_len: int
                      ) -> torch.Tensor:
    """[samples, seq_len] token ids: the texts joined by EOS and cut in consecutive windows."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if len(ids) >= samples * seq_len:
            break
    if len(ids) < samples * seq_len:
        raise ValueError(f"calibration data has {len(ids)} tokens; {samples}x{seq_len} needed")
    return torch.tensor(ids[:samples * seq_len]).view(samples, seq_len)


def describe(path: Path, source: str, batch: torch.Tensor) -> dict:
    """The `calibration` record of the quantization section (hash of the token ids used)."""
    digest = hashlib.sha256(batch.to(torch.int64).numpy().tobytes()).hexdigest()
    return {"data": Path(path).name, "source": source, "samples": int(batch.shape[0]),
            "seq_len": int(batch.shape[1]), "sha256": digest}
