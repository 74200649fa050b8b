"""What a model directory's weights are: each module's weight type, the bytes stored, and the
cut against the same weights in f16, read from config.json and the safetensors headers only
(no tensor data, no torch), for `medrt models` and `LLM.model_info`.

Types are named as medrt_train.quant.types.WeightType prints them: "f32", "f16", "bf16",
"int8", "int8-g32", "nf4", "int4-g64", "int4-g32-mins", "int6-g64".
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrt.errors import InvalidCheckpoint
from medrt.lora.tensors import read_header

_WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
          "U8": 1, "BOOL": 1}
_FLOAT_NAMES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}


@dataclass(frozen=True)
class WeightSummary:
    """The weights of one model directory."""

    types: dict[str, int] = field(default_factory=dict)  # weight type -> number of modules
    bytes: int = 0  # bytes of every stored tensor
    f16_bytes: int = 0  # bytes of the same weights (and biases) in f16

    @property
    def memory_cut(self) -> float:
        """1 - bytes / f16_bytes: 0.69 means 69% less memory than f16 (negative for f32)."""
        return 1.0 - self.bytes / self.f16_bytes if self.f16_bytes else 0.0

    def types_text(self) -> str:
        """e.g. "int4-g32-mins x210, f32 x61, int8-g32 x1" (most modules first)."""
        ranked = sorted(self.types.items(), key=lambda kv: (-kv[1], kv[0]))
        return ", ".join(f"{name} x{n}" for name, n in ranked)

    def as_dict(self) -> dict[str, Any]:
        return {"weight_types": dict(self.types), "weight_bytes": self.bytes,
                "f16_bytes": self.f16_bytes, "memory_cut": self.memory_cut}


def _tensors(model_dir: Path) -> dict[str, tuple[str, list[int]]]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise InvalidCheckpoint(f"{model_dir}: no model.safetensors or its index")
    out = {}
    for name in files:
        for tensor, info in read_header(model_dir / name).items():
            out[tensor] = (info["dtype"], [int(d) for d in info["shape"]])
    return out


def _type_name(entry: dict[str, Any]) -> str:
    name = str(entry.get("type", "?"))
    group = entry.get("group_size")
    if name in ("int4", "int6", "int8") and group is not None and "-g" not in name:
        name = f"{name}-g{group}"
    return name + ("-mins" if entry.get("offset") == "mins" else "")


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def weight_summary(model_dir: str | Path) -> WeightSummary:
    """The weight types, bytes and f16 bytes of a Hugging Face or medrt-quant directory."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    section = config.get("quantization") or {}
    entries: dict[str, dict[str, Any]] = section.get("modules") or {}
    tensors = _tensors(model_dir)
    types: Counter[str] = Counter()
    stored = f16 = 0
    modules: set[str] = set()
    for tensor, (dtype, shape) in tensors.items():
        stored += _numel(shape) * _WIDTH.get(dtype, 0)
        module, _, suffix = tensor.rpartition(".")
        if suffix in ("weight", "bias"):
            f16 += 2 * _numel(shape)  # a float tensor: the same elements in f16
        if suffix == "weight" or module in entries:
            modules.add(module)
    for module in modules:
        entry = entries.get(module)
        if entry is None:
            dtype = tensors.get(f"{module}.weight", ("?", []))[0]
            types[_FLOAT_NAMES.get(dtype, dtype.lower())] += 1
            continue
        types[_type_name(entry)] += 1
        shape = entry.get("shape")
        if isinstance(shape, list) and f"{module}.weight" not in tensors:
            f16 += 2 * _numel(shape)  # a quantized weight: its logical shape in f16
    return WeightSummary(dict(types), stored, f16)
