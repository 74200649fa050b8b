"""LoRA / RSLoRA adapters through peft, and the QLoRA preparation of a 4-bit base."""
from __future__ import annotations

import math

from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import PreTrainedModel

# The four attention and three MLP projections of Llama and Qwen2 blocks.
DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                    "up_proj", "down_proj")


def rslora_scaling(alpha: float, r: int) -> float:
    """RSLoRA's scale alpha / sqrt(r) (Kalajdzievski 2023); plain LoRA uses alpha / r."""
    return alpha / math.sqrt(r)


def parse_targets(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Target module names from a comma list (or list); empty means the seven projections."""
    if not value:
        return list(DEFAULT_TARGETS)
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    return [v for v in value if v]


def lora_config(r: int = 16, alpha: float = 32.0, dropout: float = 0.05,
                targets: list[str] | None = None, rslora: bool = True) -> LoraConfig:
    """A causal-LM LoraConfig, RSLoRA scaling on by default."""
    if r < 1:
        raise ValueError("LoRA rank must be at least 1")
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=parse_targets(targets), use_rslora=rslora, bias="none",
                      task_type="CAUSAL_LM")


def apply_lora(model: PreTrainedModel, config: LoraConfig, quantized: bool = False) -> PeftModel:
    """Wraps `model` with trainable adapters; a 4-bit base is prepared for QLoRA first."""
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    missing = [t for t in config.target_modules
               if not any(name.endswith("." + t) for name, _ in model.named_modules())]
    if missing:
        raise ValueError(f"LoRA target modules not found in {type(model).__name__}: {missing}")
    return get_peft_model(model, config)
