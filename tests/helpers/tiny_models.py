"""Tiny random Llama / Qwen2 checkpoints, built locally with transformers, for tests.

A model is saved the way Hugging Face saves one (config.json, model.safetensors,
generation_config.json) plus, optionally, a small byte-level BPE tokenizer with a ChatML chat
template, so the whole stack (medrt.LLM included) can run on it. Weights depend only on the
seed: the f32, bf16 and f16 variants of one model hold the same values, rounded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL_VOCAB = 320
TOKENIZER_VOCAB = 300  # <= MODEL_VOCAB: 3 special tokens, 256 bytes, the rest merges
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2  # ids of SPECIAL_TOKENS, in that order

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)

_TRAINING_TEXT = [
    "The patient reports chest pain radiating to the left arm.",
    "Metformin is a first-line medication for type 2 diabetes.",
    "Hypertension is diagnosed when blood pressure stays above 140/90 mmHg.",
    "Vaccination prevents influenza and reduces hospital admissions.",
    "Call emergency services if the person is not breathing.",
    "Take ibuprofen with food to protect the stomach.",
    "Hello, how can I help you today?",
]

# Named models that tests share. "llama": tied embeddings, grouped-query attention and llama3
# rope scaling whose original context (64) is short enough that the scaling matters at small
# positions; its 8 frequencies fall in all three llama3 bands (1 kept, 2 interpolated, 5
# divided by the factor).
SPECS: dict[str, dict[str, Any]] = {
    "llama": {"arch": "llama", "tie": True},
    "llama_untied": {"arch": "llama", "tie": False},
    "llama_bias": {"arch": "llama", "tie": False, "attention_bias": True},
    "qwen2": {"arch": "qwen2", "tie": False},
}

DTYPES = ("float32", "bfloat16", "float16")


def tiny_config(arch: str, tie: bool, **overrides: Any) -> Any:
    """The transformers config of a tiny model (vocab 320, hidden 64, 4 heads, 2 KV heads)."""
    from transformers import LlamaConfig, Qwen2Config

    common: dict[str, Any] = {
        "vocab_size": MODEL_VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": tie,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
    }
    if arch == "llama":
        common["rope_parameters"] = {
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
        common.update(overrides)
        return LlamaConfig(**common)
    if arch == "qwen2":
        common["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
        common.update(overrides)
        return Qwen2Config(**common)
    raise ValueError(f"unknown tiny architecture {arch!r} (llama or qwen2)")


def _randomize(model: Any, seed: int) -> None:
    """Replace transformers' init (zero biases, unit norms, std 0.02) with values large enough
    that every weight matters and greedy choices have clear margins."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.5 * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / p.shape[1] ** 0.5)


def build_tiny_model(
    arch: str,
    dtype: str,
    tie: bool,
    out_dir: str | Path,
    *,
    with_tokenizer: bool = True,
    seed: int = 0,
    **config_overrides: Any,
) -> Path:
    """Build a tiny random `arch` ("llama" or "qwen2") model and save it to out_dir.

    dtype is the stored weight type ("float32", "bfloat16" or "float16"); the weights are drawn
    in float32 from `seed`, so every dtype of one seed holds the same model, rounded.
    """
    import torch
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    out = Path(out_dir)
    config = tiny_config(arch, tie, **config_overrides)
    torch.manual_seed(seed)
    cls = LlamaForCausalLM if arch == "llama" else Qwen2ForCausalLM
    model = cls(config).eval()
    _randomize(model, seed)
    model.to(getattr(torch, dtype)).save_pretrained(out)
    if with_tokenizer:
        build_tiny_tokenizer(out)
    return out


def build_tiny_tokenizer(out_dir: str | Path) -> Path:
    """Write tokenizer.json (byte-level BPE, TOKENIZER_VOCAB ids) and tokenizer_config.json
    (ChatML chat template, eos <|im_end|>) into out_dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAINING_TEXT, trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    tok.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": SPECIAL_TOKENS[EOS_ID],
        "pad_token": SPECIAL_TOKENS[PAD_ID],
        "add_bos_token": False,
        "model_max_length": 1024,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return out


class TinyModels:
    """Builds each (name, dtype) of SPECS once under `root` and hands back its directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, name: str = "llama", dtype: str = "float32") -> Path:
        """Directory of the tiny model `name` (a key of SPECS) stored in `dtype`."""
        if name not in SPECS:
            raise KeyError(f"unknown tiny model {name!r}; known: {sorted(SPECS)}")
        out = self.root / f"{name}-{dtype}"
        if not (out / "config.json").exists():
            spec = dict(SPECS[name])
            build_tiny_model(spec.pop("arch"), dtype, spec.pop("tie"), out, **spec)
        return out
