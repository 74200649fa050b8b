"""Instruction records -> token tensors: prompt tokens masked out of the loss, entity weights
on the response tokens, right padding."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .corpus import CorpusError, iter_jsonl
from .entities import EntityLexicon

IGNORE = -100


@dataclass
class Instruction:
    """One line of an instruction corpus (the output of `medrt-train corpus`)."""

    question: str
    response: str
    system: str = ""
    category: str = "general"
    id: str = ""


def load_instructions(path: str | Path) -> list[Instruction]:
    """Reads an instruction JSONL: `question` and `response` required, `system` optional."""
    out = []
    for lineno, obj in iter_jsonl(path):
        for key in ("question", "response"):
            if key not in obj or obj[key] is None:
                raise CorpusError(f"{path}:{lineno}: record is missing the field '{key}'")
        out.append(Instruction(question=str(obj["question"]), response=str(obj["response"]),
                               system=str(obj.get("system", "")),
                               category=str(obj.get("category") or "general"),
                               id=str(obj.get("id", lineno))))
    if not out:
        # Zero optimizer steps would otherwise "succeed" and save the untouched base.
        raise CorpusError(f"{path}: no instruction records (the file is empty)")
    return out


def prompt_text(tokenizer: PreTrainedTokenizerBase, system: str, question: str) -> str:
    """The prompt as text: the model's chat template when it has one, else a plain layout."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    head = f"{system}\n\n" if system else ""
    return f"{head}Question: {question}\nAnswer:"


def encode(tokenizer: PreTrainedTokenizerBase, item: Instruction, max_len: int,
           lexicon: EntityLexicon | None = None) -> dict[str, Any]:
    """input_ids and labels (prompt masked) and per-token entity weights, cut to max_len."""
    prompt = prompt_text(tokenizer, item.system, item.question)
    uses_template = bool(getattr(tokenizer, "chat_template", None))
    p_ids = tokenizer(prompt, add_special_tokens=not uses_template)["input_ids"]
    response = (" " if not uses_template else "") + item.response.strip()
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    r_ids = list(enc["input_ids"]) + [tokenizer.eos_token_id]
    weights = lexicon.token_weights(response, enc["offset_mapping"]) if lexicon else [0.0] * (
        len(r_ids) - 1)
    weights = weights + [0.0]
    # Keep at least a few response tokens when the prompt alone is longer than max_len.
    p_ids = p_ids[-max(1, max_len - min(len(r_ids), max_len // 2)):]
    ids = (p_ids + r_ids)[:max_len]
    labels = ([IGNORE] * len(p_ids) + r_ids)[:max_len]
    ent = ([0.0] * len(p_ids) + weights)[:max_len]
    return {"input_ids": ids, "labels": labels, "entity_weights": ent}


def collate(batch: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pads a list of encoded examples into tensors."""
    width = max(len(b["input_ids"]) for b in batch)

    def pad(key: str, value: Any, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([b[key] + [value] * (width - len(b[key])) for b in batch], dtype=dtype)

    return {"input_ids": pad("input_ids", pad_id, torch.long),
            "labels": pad("labels", IGNORE, torch.long),
            "attention_mask": torch.tensor([[1] * len(b["input_ids"]) +
                                            [0] * (width - len(b["input_ids"])) for b in batch]),
            "entity_weights": pad("entity_weights", 0.0, torch.float32)}
