"""Quantize a Hugging Face model directory into medrt's format, one tensor or one decoder
layer at a time: memory holds one layer (plus calibration activations), never the model."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medrt_train.quant.format import TensorIndex
from medrt_train.quant.gptq import GPTQOptions, gptq_quantize
from medrt_train.quant.recipes import Recipe
from medrt_train.quant.types import WeightType, check_shape, dequantize, quantize_rtn
from medrt_train.quant.writer import ShardWriter, copy_side_files, write_config

_TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ModulePlan:
    kind: str  # linear | embedding | lm_head | other
    wtype: WeightType
    shape: tuple[int, ...]


def meta_model(config):
    """The architecture with no storage: names, module kinds and shapes for free."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def module_kinds(model) -> dict[str, str]:
    """Module name -> linear | embedding | lm_head | other, for every module with a weight."""
    head = model.get_output_embeddings()
    kinds = {}
    for name, module in model.named_modules():
        if not isinstance(getattr(module, "weight", None), nn.Parameter):
            continue
        if module is head:
            kinds[name] = "lm_head"
        elif isinstance(module, nn.Linear):
            kinds[name] = "linear"
        elif isinstance(module, nn.Embedding):
            kinds[name] = "embedding"
        else:
            kinds[name] = "other"
    return kinds


def plan_modules(model, recipe: Recipe) -> dict[str, ModulePlan]:
    """Module name -> kind, weight type and weight shape for every module holding a weight."""
    plan: dict[str, ModulePlan] = {}
    for name, kind in module_kinds(model).items():
        weight = model.get_submodule(name).weight
        wt = recipe.type_for(name, kind)
        if wt.quantized:
            if weight.dim() != 2:
                raise ValueError(f"module {name}: only 2-D weights can be {wt}")
            check_shape(wt, *weight.shape, f"module {name}")
            if wt.name != "int8" and weight.shape[1] % 32:
                raise ValueError(f"module {name}: input dimension {weight.shape[1]} is not a "
                                 f"multiple of 32, needed by {wt}")
        plan[name] = ModulePlan(kind, wt, tuple(weight.shape))
    return plan


def _is_tied(config, model) -> bool:
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    return bool(getattr(config, "tie_word_embeddings", False)) and head is not None and \
        head.weight is emb.weight


def quantize_model(src: Path, out: Path, recipe: Recipe, method: str,
                   calibration: torch.Tensor | None = None, calibration_info: dict | None = None,
                   options: GPTQOptions | None = None,
                   log: Callable[[str], None] = print) -> dict:
    """Write `out` from `src` under `recipe`; `method` is rtn or gptq (which needs
    `calibration` token ids [samples, seq_len]). Returns the quantization section written."""
    from transformers import AutoConfig

    src, out = Path(src), Path(out)
    options = options or GPTQOptions()
    if method not in ("rtn", "gptq"):
        raise ValueError(f"method {method!r} is not rtn or gptq")
    if method == "gptq" and calibration is None:
        raise ValueError("gptq needs calibration token ids")
    config = AutoConfig.from_pretrained(src)
    model = meta_model(config)
    plan = plan_modules(model, recipe)
    tied = _is_tied(config, model)
    head_name = next(n for n, m in model.named_modules() if m is model.get_output_embeddings())
    emb_name = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
    if tied and plan[head_name].wtype == plan[emb_name].wtype:
        del plan[head_name]  # stored once, as the embedding
    else:
        tied = False
    index = TensorIndex(src)

    def source(module: str) -> torch.Tensor:
        name = f"{module}.weight"
        if name not in index.files and module == head_name:
            name = f"{emb_name}.weight"  # the source ties them; the output unties
        return torch.from_numpy(index.numpy(name))

    writer = ShardWriter(out)
    by_gptq = set()
    if method == "gptq":
        by_gptq = {n for n, p in plan.items()
                   if p.kind == "linear" and p.wtype.quantized and ".layers." in n}
    for module, p in plan.items():
        if module not in by_gptq:
            _write_module(writer, module, p.wtype, source(module), index)
    if by_gptq:
        _gptq_layers(model, config, index, plan, by_gptq, calibration, options, writer, log)
    writer.close()
    copy_side_files(src, out)

    modules = {}
    for module, p in plan.items():
        entry = p.wtype.to_json()
        if p.wtype.quantized:
            entry["shape"] = list(p.shape)
        modules[module] = entry
    section = {
        "recipe": recipe.name,
        "method": {"name": method, **(options.to_json() if method == "gptq" else {})},
        "calibration": calibration_info if method == "gptq" else None,
        "modules": modules,
    }
    write_config(json.loads((src / "config.json").read_text()), out, section, tied)
    return section


def _write_module(writer: ShardWriter, module: str, wt: WeightType, weight: torch.Tensor,
                  index: TensorIndex) -> None:
    if wt.quantized:
        for suffix, t in quantize_rtn(wt, weight.float().numpy()).items():
            writer.add(f"{module}.{suffix}", t)
    else:
        writer.add(f"{module}.weight", weight.to(_TORCH_DTYPES[wt.name]))
    _write_bias(writer, module, index)


def _write_bias(writer: ShardWriter, module: str, index: TensorIndex) -> None:
    # Biases are few and small; f32 keeps them exact whatever the weight type.
    if f"{module}.bias" in index.files:
        writer.add(f"{module}.bias", torch.from_numpy(index.numpy(f"{module}.bias")).float())


def _gptq_layers(model, config, index: TensorIndex, plan: dict[str, ModulePlan],
                 targets: set[str], tokens: torch.Tensor, options: GPTQOptions,
                 writer: ShardWriter, log: Callable[[str], None]) -> None:
    """Run the calibration batch through the decoder one layer at a time; quantize each
    layer's linears with GPTQ on their own inputs, then feed the quantized layer's output on.
    """
    base = model.get_decoder()
    emb_name = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
    emb = torch.from_numpy(index.numpy(f"{emb_name}.weight")).float()
    hidden = nn.functional.embedding(tokens, emb)
    del emb
    rotary = type(base.rotary_emb)(config=config)
    positions = torch.arange(tokens.shape[1]).unsqueeze(0)
    cos_sin = rotary(hidden[:1], positions)
    prefix = next(n for n, m in model.named_modules() if m is base.layers) + "."
    micro = 4
    for i, layer in enumerate(base.layers):
        layer.to_empty(device="cpu")
        for pname, param in layer.named_parameters():
            param.data.copy_(torch.from_numpy(index.numpy(f"{prefix}{i}.{pname}")))
        linears = {f"{prefix}{i}.{n}": m for n, m in layer.named_modules()
                   if f"{prefix}{i}.{n}" in targets}
        hessians = {n: torch.zeros(m.in_features, m.in_features) for n, m in linears.items()}
        counts = dict.fromkeys(linears, 0)

        def hook(name, hessians=hessians, counts=counts):
            def accumulate(_module, inputs):
                x = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
                hessians[name].addmm_(x.T, x)
                counts[name] += x.shape[0]
            return accumulate

        handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
        with torch.no_grad():
            for b in range(0, hidden.shape[0], micro):
                layer(hidden[b:b + micro], position_embeddings=cos_sin)
        for h in handles:
            h.remove()
        for name, m in linears.items():
            wt = plan[name].wtype
            h = (hessians.pop(name) / counts[name]).numpy()
            tensors = gptq_quantize(wt, m.weight.detach().numpy(), h, options)
            for suffix, t in tensors.items():
                writer.add(f"{name}.{suffix}", t)
            _write_bias(writer, name, index)
            m.weight.data.copy_(torch.from_numpy(dequantize(wt, tensors)))
        with torch.no_grad():
            for b in range(0, hidden.shape[0], micro):
                hidden[b:b + micro] = layer(hidden[b:b + micro], position_embeddings=cos_sin)
        layer.to("meta")
        log(f"gptq: layer {i + 1}/{len(base.layers)} done")
