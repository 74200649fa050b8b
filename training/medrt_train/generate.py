"""Batched generation from a teacher (the corpus builder and sequence-level KD use it)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class GenerationSettings:
    """Recorded with every generated answer as provenance."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy decoding
    top_p: float = 1.0
    batch_size: int = 8
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
             settings: GenerationSettings, desc: str = "generate") -> list[str]:
    """One completion per prompt text (prompts already templated), in input order."""
    model.eval()
    torch.manual_seed(settings.seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    uses_template = bool(getattr(tokenizer, "chat_template", None))
    sampling = settings.temperature > 0
    kwargs = {"max_new_tokens": settings.max_new_tokens, "do_sample": sampling,
              "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if sampling:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    device = next(model.parameters()).device
    outputs: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), settings.batch_size), desc=desc):
            chunk = prompts[start:start + settings.batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True,
                            add_special_tokens=not uses_template).to(device)
            out = model.generate(**enc, **kwargs)
            new = out[:, enc["input_ids"].shape[1]:]
            outputs.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return outputs
