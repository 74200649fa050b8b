"""peft LoRA adapters on the tiny models, with random (not zero) B so every delta matters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_adapter(base_dir: str | Path, out_dir: str | Path, *, r: int = 4, alpha: float = 8.0,
                  use_rslora: bool = False, targets: list[str] | None = None, seed: int = 0,
                  std: float = 0.1, **config: Any) -> Path:
    """Saves a peft adapter (adapter_config.json, adapter_model.safetensors) for base_dir."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lora = LoraConfig(r=r, lora_alpha=alpha, use_rslora=use_rslora, lora_dropout=0.0,
                      target_modules=targets or ALL_TARGETS, bias="none", task_type="CAUSAL_LM",
                      **config)
    model = get_peft_model(base, lora)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    model.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def peft_model(base_dir: str | Path, adapter_dir: str | Path) -> Any:
    """The base with the adapter, as peft runs it (eager attention, f32)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                attn_implementation="eager")
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()
