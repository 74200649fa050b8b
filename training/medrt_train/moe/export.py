"""LoRA-MoE files (docs/adapters.md, "LoRA-MoE format"):

    OUT/moe_config.json            format, version, the MoeConfig, base model, category map
    OUT/moe_model.safetensors      per layer l and projection P (e.g. self_attn.q_proj):
        model.layers.{l}.router.proj.weight   [router_dim, hidden]
        model.layers.{l}.router.keys          [experts, router_dim]
        model.layers.{l}.{P}.lora_A           [experts, r, in]
        model.layers.{l}.{P}.lora_B           [experts, out, r]
    OUT/experts/expert_{e}/        expert e alone as an ordinary peft LoRA adapter
                                   (adapter_config.json, adapter_model.safetensors)
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .model import MoeConfig, MoeModel

FORMAT = "medrt-lora-moe"
VERSION = 1


def save_moe(model: MoeModel, out_dir: str | Path, base_name: str = "") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    meta = {"format": FORMAT, "version": VERSION, "base_model_name_or_path": base_name,
            "num_layers": len(model.routers),
            "category_experts": {c: cfg.expert_of(c) for c in cfg.categories},
            **{k: v for k, v in asdict(cfg).items() if k != "extra"}}
    meta["targets"] = list(cfg.targets)
    meta["categories"] = list(cfg.categories)
    (out / "moe_config.json").write_text(json.dumps(meta, indent=2))
    tensors: dict[str, torch.Tensor] = {}
    for i, router in enumerate(model.routers):
        tensors[f"model.layers.{i}.router.proj.weight"] = router.proj.weight
        tensors[f"model.layers.{i}.router.keys"] = router.keys
    experts = model.expert_modules()
    for name, m in experts.items():
        tensors[f"{name}.lora_A"] = m.lora_A
        tensors[f"{name}.lora_B"] = m.lora_B
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()},
              str(out / "moe_model.safetensors"), metadata={"format": FORMAT})
    _save_expert_adapters(model, out / "experts", base_name)
    return out


def _save_expert_adapters(model: MoeModel, root: Path, base_name: str) -> None:
    from peft import LoraConfig

    cfg = model.config
    experts = model.expert_modules()
    for e in range(cfg.n_experts):
        target = root / f"expert_{e}"
        target.mkdir(parents=True, exist_ok=True)
        LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, use_rslora=cfg.rslora, lora_dropout=0.0,
                   target_modules=list(cfg.targets), bias="none", task_type="CAUSAL_LM",
                   base_model_name_or_path=base_name or None).save_pretrained(str(target))
        weights = {}
        for name, m in experts.items():
            weights[f"base_model.model.{name}.lora_A.weight"] = m.lora_A[e]
            weights[f"base_model.model.{name}.lora_B.weight"] = m.lora_B[e]
        save_file({k: v.detach().float().contiguous() for k, v in weights.items()},
                  str(target / "adapter_model.safetensors"))


def read_moe_config(path: str | Path) -> tuple[MoeConfig, dict]:
    meta = json.loads((Path(path) / "moe_config.json").read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{VERSION} directory "
                         f"(format {meta.get('format')!r}, version {meta.get('version')!r})")
    names = {f.name for f in fields(MoeConfig)} - {"extra"}
    kwargs = {k: meta[k] for k in names if k in meta}
    kwargs["targets"] = tuple(kwargs["targets"])
    kwargs["categories"] = tuple(kwargs["categories"])
    return MoeConfig(**kwargs), meta


def load_moe(base: torch.nn.Module, path: str | Path) -> MoeModel:
    """`base` (a freshly loaded causal LM) with the routers and experts stored under `path`."""
    config, _ = read_moe_config(path)
    model = MoeModel(base, config)
    tensors = load_file(str(Path(path) / "moe_model.safetensors"))
    with torch.no_grad():
        for i, router in enumerate(model.routers):
            router.proj.weight.copy_(tensors.pop(f"model.layers.{i}.router.proj.weight"))
            router.keys.copy_(tensors.pop(f"model.layers.{i}.router.keys"))
        for name, m in model.expert_modules().items():
            m.lora_A.copy_(tensors.pop(f"{name}.lora_A"))
            m.lora_B.copy_(tensors.pop(f"{name}.lora_B"))
    if tensors:
        raise ValueError(f"{path}: tensors the model has no place for: {sorted(tensors)[:5]}")
    return model
