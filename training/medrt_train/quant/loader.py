"""Build a transformers model from a medrt quantized directory by dequantizing its weights,
so quality can be measured in PyTorch before (and against) the C++ kernels."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from medrt_train.quant.format import dequantized_state


def is_quantized_dir(model_dir: Path) -> bool:
    """True when config.json carries medrt's `quantization` section."""
    config = Path(model_dir) / "config.json"
    return config.is_file() and "quantization" in json.loads(config.read_text())


def load_dequantized(model_dir: Path, dtype: torch.dtype = torch.float32):
    """A transformers causal LM whose weights are the dequantized medrt weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    state = dequantized_state(model_dir)  # validates first: a bad directory fails here
    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = {name: torch.from_numpy(array).to(dtype) for name, array in state.items()}
    model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise ValueError(f"{model_dir}: no weights for {missing[:5]}")
    # Buffers (rotary frequencies) are computed, not stored: rebuild their modules on the CPU.
    for name, module in list(model.named_modules()):
        if any(b.device.type == "meta" for b in module.buffers(recurse=False)):
            parent_name, _, child = name.rpartition(".")
            with torch.device("cpu"):
                setattr(model.get_submodule(parent_name), child, type(module)(config=config))
    return model.eval()
