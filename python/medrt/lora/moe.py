"""LoRA-MoE adapters (medrt-train moe's files, docs/adapters.md "LoRA-MoE") read for the engine:
the routers of every layer and every expert's A and B, checked against the base."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medrt.errors import InvalidCheckpoint
from medrt.lora.adapter import PROJECTIONS
from medrt.lora.tensors import read_tensors

FORMAT, VERSION = "medrt-lora-moe", 1


@dataclass
class MoeAdapter:
    path: Path
    rank: int
    scale: float
    top_k: int
    temperature: float
    proj: list[np.ndarray] = field(default_factory=list)   # per layer [dim, hidden]
    keys: list[np.ndarray] = field(default_factory=list)   # per layer [experts, dim]
    modules: list[tuple[str, int, np.ndarray, np.ndarray]] = field(default_factory=list)

    def engine_args(self) -> dict:
        return {"modules": self.modules, "scale": self.scale, "top_k": self.top_k,
                "temperature": self.temperature, "proj": self.proj, "keys": self.keys}


def is_moe_dir(path: str | Path) -> bool:
    return (Path(path).expanduser() / "moe_config.json").is_file()


def read_moe_adapter(path: str | Path, base_shapes: dict[str, tuple[int, int]],
                     max_lora_rank: int | None = None) -> MoeAdapter:
    path = Path(path).expanduser()
    try:
        meta = json.loads((path / "moe_config.json").read_text())
    except (OSError, ValueError) as e:
        raise InvalidCheckpoint(f"LoRA-MoE adapter {path}: unreadable moe_config.json: {e}") from e
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise InvalidCheckpoint(f"LoRA-MoE adapter {path}: format {meta.get('format')!r} "
                                f"version {meta.get('version')!r}, expected {FORMAT} {VERSION}")
    r, alpha = int(meta["r"]), float(meta["alpha"])
    if max_lora_rank is not None and r > max_lora_rank:
        raise InvalidCheckpoint(f"LoRA-MoE adapter {path}: rank r={r} is above max_lora_rank="
                                f"{max_lora_rank}")
    scale = alpha / math.sqrt(r) if meta["rslora"] else alpha / r
    ad = MoeAdapter(path, r, scale, int(meta["top_k"]), float(meta["temperature"]))
    tensors, _ = read_tensors(path / "moe_model.safetensors")
    for i in range(int(meta["num_layers"])):
        try:
            ad.proj.append(tensors.pop(f"model.layers.{i}.router.proj.weight"))
            ad.keys.append(tensors.pop(f"model.layers.{i}.router.keys"))
        except KeyError as e:
            raise InvalidCheckpoint(f"LoRA-MoE adapter {path}: no router for layer {i}") from e
    for name in sorted({k.rsplit(".", 1)[0] for k in tensors}):
        a, b = tensors.get(f"{name}.lora_A"), tensors.get(f"{name}.lora_B")
        if a is None or b is None or name.rsplit(".", 1)[-1] not in PROJECTIONS:
            raise InvalidCheckpoint(f"LoRA-MoE adapter {path}: '{name}' is not a projection "
                                    "with lora_A and lora_B")
        if name not in base_shapes:
            raise InvalidCheckpoint(f"LoRA-MoE adapter {path}: target module '{name}' is not in "
                                    "the base model")
        out, inp = base_shapes[name]
        if a.shape[1:] != (r, inp) or b.shape[1:] != (out, r) or a.shape[0] != b.shape[0]:
            raise InvalidCheckpoint(f"LoRA-MoE adapter {path}: '{name}' has lora_A "
                                    f"{list(a.shape)} and lora_B {list(b.shape)}; the base "
                                    f"weight [{out}, {inp}] needs [E, {r}, {inp}] and "
                                    f"[E, {out}, {r}]")
        for e in range(a.shape[0]):
            ad.modules.append((name, e, np.ascontiguousarray(a[e]), np.ascontiguousarray(b[e])))
    return ad
