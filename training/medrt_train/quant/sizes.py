"""Weight bytes of a model under a recipe, from config.json alone, against an all-f16 copy."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medrt_train.quant.recipes import Recipe
from medrt_train.quant.types import stored_bytes


@dataclass(frozen=True)
class ModuleBytes:
    module: str
    kind: str  # linear | embedding | lm_head | other
    wtype: str
    nbytes: int
    f16_bytes: int


def plan_bytes(model_dir: Path, recipe: Recipe) -> list[ModuleBytes]:
    """Bytes per module that quantizing `model_dir` (only its config.json is read) would give."""
    from transformers import AutoConfig

    from medrt_train.quant.quantize import meta_model, plan_modules

    config = AutoConfig.from_pretrained(model_dir)
    model = meta_model(config)
    plan = plan_modules(model, recipe)
    head = model.get_output_embeddings()
    tied = getattr(config, "tie_word_embeddings", False) and \
        head.weight is model.get_input_embeddings().weight
    rows = []
    for name, module in model.named_modules():
        if name not in plan:
            continue
        p = plan[name]
        if tied and p.kind == "lm_head" and p.wtype == recipe.type_for(name, "embedding"):
            continue
        numel = module.weight.numel()
        shape = tuple(module.weight.shape)
        nbytes = stored_bytes(p.wtype, *shape) if len(shape) == 2 else \
            numel * (4 if p.wtype.name == "f32" else 2)
        bias = getattr(module, "bias", None)
        nbias = 0 if bias is None else bias.numel()
        rows.append(ModuleBytes(name, p.kind, str(p.wtype), nbytes + 4 * nbias,
                                2 * (numel + nbias)))
    return rows


def summarize(rows: list[ModuleBytes]) -> dict:
    """Linear-layer and whole-model bytes, their f16 equivalents, cuts, and bytes by type."""
    lin = [r for r in rows if r.kind == "linear"]
    by_type: dict[str, int] = {}
    for r in rows:
        by_type[r.wtype] = by_type.get(r.wtype, 0) + r.nbytes
    out = {
        "linear_bytes": sum(r.nbytes for r in lin),
        "linear_f16_bytes": sum(r.f16_bytes for r in lin),
        "total_bytes": sum(r.nbytes for r in rows),
        "total_f16_bytes": sum(r.f16_bytes for r in rows),
        "bytes_by_type": by_type,
    }
    out["linear_cut"] = 1 - out["linear_bytes"] / max(out["linear_f16_bytes"], 1)
    out["total_cut"] = 1 - out["total_bytes"] / max(out["total_f16_bytes"], 1)
    return out


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def size_table(rows: list[ModuleBytes]) -> str:
    """A Markdown table of the summary."""
    s = summarize(rows)
    lines = ["| | bytes | f16 bytes | cut vs f16 |", "|---|---:|---:|---:|",
             (f"| linear layers | {_mib(s['linear_bytes'])} | {_mib(s['linear_f16_bytes'])} | "
              f"{100 * s['linear_cut']:.1f}% |"),
             (f"| whole model | {_mib(s['total_bytes'])} | {_mib(s['total_f16_bytes'])} | "
              f"{100 * s['total_cut']:.1f}% |")]
    lines += [f"| {t} | {_mib(b)} | | |" for t, b in sorted(s["bytes_by_type"].items())]
    return "\n".join(lines)


def dir_bytes(model_dir: Path) -> list[ModuleBytes]:
    """Bytes per module actually stored in a model directory (medrt quantized or plain HF)."""
    from transformers import AutoConfig

    from medrt_train.quant.format import TensorIndex, module_bytes
    from medrt_train.quant.loader import is_quantized_dir
    from medrt_train.quant.quantize import meta_model, module_kinds

    config = AutoConfig.from_pretrained(model_dir)
    model = meta_model(config)
    kinds = module_kinds(model)
    if is_quantized_dir(model_dir):
        stored = module_bytes(model_dir)
    else:
        index = TensorIndex(model_dir)
        names = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
        stored = {}
        for name in index.names():
            module = name.rsplit(".", 1)[0]
            shape, dtype = index.meta(name)
            numel = 1
            for d in shape:
                numel *= d
            prev = stored.get(module, (names.get(dtype, dtype), 0))[1]
            stored[module] = (names.get(dtype, dtype), prev + numel * (4 if dtype == "F32" else 2))
    rows = []
    for module, (wtype, nbytes) in stored.items():
        m = model.get_submodule(module)
        numel = m.weight.numel() + (m.bias.numel() if getattr(m, "bias", None) is not None else 0)
        rows.append(ModuleBytes(module, kinds.get(module, "other"), wtype, nbytes, 2 * numel))
    return rows
