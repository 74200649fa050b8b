"""Quantize a Hugging Face model directory into medrt's format, one tensor or one decoder
layer at a time: memory holds one layer (plus calibration activations), never the model."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medrt_train.quant.calibrated import METHODS, CalibratedMethod, quantize_layers
from medrt_train.quant.format import TensorIndex
from medrt_train.quant.gptq import GPTQOptions
from medrt_train.quant.recipes import Recipe
from medrt_train.quant.types import WeightType, check_shape, quantize_rtn
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


def _name_of(model, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def _is_tied(config, model) -> bool:
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    return bool(getattr(config, "tie_word_embeddings", False)) and head is not None and \
        head.weight is emb.weight


def quantize_model(src: Path, out: Path, recipe: Recipe, method: str,
                   calibration: torch.Tensor | None = None, calibration_info: dict | None = None,
                   options: GPTQOptions | None = None,
                   log: Callable[[str], None] = print) -> dict:
    """Write `out` from `src` under `recipe`; `method` is rtn, or a calibrated method (gptq,
    awq, awq-gptq: calibrated.py) which needs `calibration` token ids [samples, seq_len].
    Returns the quantization section written."""
    from transformers import AutoConfig

    src, out = Path(src), Path(out)
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    calibrated = None if method == "rtn" else CalibratedMethod.named(method, options)
    if calibrated is not None and calibration is None:
        raise ValueError(f"{method} needs calibration token ids")
    config = AutoConfig.from_pretrained(src)
    model = meta_model(config)
    plan = plan_modules(model, recipe)
    tied = _is_tied(config, model)
    head_name = _name_of(model, model.get_output_embeddings())
    emb_name = _name_of(model, model.get_input_embeddings())
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
    layers = f"{_layers_prefix(model)}." if method != "rtn" else None
    for module, p in plan.items():
        if layers is None or not module.startswith(layers):
            _write_module(writer, module, p.wtype, source(module), index)
    if layers is not None:
        _calibrated_layers(model, config, index, plan, layers, calibration, calibrated, writer,
                           log)
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
        "method": {"name": method, **(calibrated.to_json() if calibrated else {})},
        "calibration": calibration_info if calibrated else None,
        "modules": modules,
    }
    write_config(json.loads((src / "config.json").read_text()), out, section, tied)
    return section


def _write_module(writer: ShardWriter, module: str, wt: WeightType, weight: torch.Tensor,
                  index: TensorIndex) -> None:
    _write_weight(writer, module, wt, weight)
    # Biases are few and small; f32 keeps them exact whatever the weight type.
    if f"{module}.bias" in index.files:
        writer.add(f"{module}.bias", torch.from_numpy(index.numpy(f"{module}.bias")).float())


def _write_weight(writer: ShardWriter, module: str, wt: WeightType, weight: torch.Tensor
                  ) -> None:
    if wt.quantized:
        for suffix, t in quantize_rtn(wt, weight.float().numpy()).items():
            writer.add(f"{module}.{suffix}", t)
    else:
        writer.add(f"{module}.weight", weight.to(_TORCH_DTYPES[wt.name]))


def _layers_prefix(model) -> str:
    return _name_of(model, model.get_decoder().layers)


def _calibrated_layers(model, config, index: TensorIndex, plan: dict[str, ModulePlan],
                       layers: str, tokens: torch.Tensor, method: CalibratedMethod,
                       writer: ShardWriter, log: Callable[[str], None]) -> None:
    """Every module inside the decoder layers goes through calibrated.quantize_layers: the
    quantized linear layers by the method, the rest (norms, whose weights AWQ may rescale,
    and float linear layers) from the layer as it stands after scaling."""
    emb_name = _name_of(model, model.get_input_embeddings())
    emb = torch.from_numpy(index.numpy(f"{emb_name}.weight")).float()
    hidden = nn.functional.embedding(tokens, emb)
    del emb

    def load_layer(i: int, layer: nn.Module) -> None:
        for pname, param in layer.named_parameters():
            param.data.copy_(torch.from_numpy(index.numpy(f"{layers}{i}.{pname}")))

    def types_of(i: int) -> dict[str, WeightType]:
        head = f"{layers}{i}."
        return {n[len(head):]: p.wtype for n, p in plan.items()
                if n.startswith(head) and p.kind == "linear" and p.wtype.quantized}

    def write_layer(i: int, layer: nn.Module, tensors: dict[str, dict]) -> None:
        for rel, module in layer.named_modules():
            name = f"{layers}{i}.{rel}"
            if name not in plan:
                continue
            if rel in tensors:
                for suffix, t in tensors[rel].items():
                    writer.add(f"{name}.{suffix}", t)
            else:
                # A copy: the writer keeps tensors until its shard is full, and the layer's
                # storage is released when the loop moves on.
                _write_weight(writer, name, plan[name].wtype, module.weight.detach().clone())
            bias = getattr(module, "bias", None)
            if isinstance(bias, nn.Parameter):
                writer.add(f"{name}.bias", bias.detach().float().clone())

    quantize_layers(model, config, load_layer, hidden, types_of, method, write_layer, log)
