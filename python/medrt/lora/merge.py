"""Merged mode: W' = W + scale * B @ A folded into a copy of the base's float weights.

The merge runs here, in numpy, into a new model directory that the engine then loads like any
checkpoint: the C++ load path and the base kernels stay as they are, and a merged model costs
nothing per token. Each weight is merged in f32 and rounded once to its stored dtype (f32, f16,
bf16). Files without an adapted weight, and every non-weight file, are linked, not copied."""

from __future__ import annotations

import json
import os
from pathlib import Path

from medrt.errors import InvalidCheckpoint
from medrt.lora.adapter import LoraAdapter
from medrt.lora.tensors import read_header, read_tensors, to_stored, write_tensors

_FLOAT = {"F32", "F16", "BF16"}


def is_quantized(model_dir: Path) -> bool:
    """Whether config.json carries medrt's (or another) quantization section."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return bool(cfg.get("quantization") or cfg.get("quantization_config"))


def merge_into_dir(model_dir: str | Path, adapter: LoraAdapter, out_dir: str | Path) -> Path:
    """Writes base + adapter as a model directory at `out_dir` (created; must be empty)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if is_quantized(model_dir):
        raise InvalidCheckpoint(f"{model_dir}: a quantized base cannot be merged with the "
                                f"adapter {adapter.path}; serve it in adapter mode")
    out_dir.mkdir(parents=True, exist_ok=True)
    pending = {f"{m}.weight": mod for m, mod in adapter.modules.items()}
    for f in sorted(model_dir.iterdir()):
        if f.suffix != ".safetensors" or not pending.keys() & read_header(f).keys():
            os.symlink(f.resolve(), out_dir / f.name)
            continue
        tensors, dtypes = read_tensors(f)
        for name in pending.keys() & tensors.keys():
            if dtypes[name] not in _FLOAT:
                raise InvalidCheckpoint(f"{f}: '{name}' is {dtypes[name]}, not a float weight; "
                                        "a quantized base runs the adapter unmerged")
            tensors[name] = tensors[name] + pending.pop(name).delta()
        write_tensors(out_dir / f.name, {k: to_stored(v, dtypes[k]) for k, v in tensors.items()},
                      dtypes)
    if pending:
        raise InvalidCheckpoint(f"LoRA adapter {adapter.path}: no base weight for "
                                f"{sorted(pending)[:3]}")
    return out_dir
