"""Export: adapter mode (peft's adapter files) and merged mode (LoRA folded into the base,
saved as an ordinary Hugging Face model directory)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from accelerate import Accelerator
from peft import PeftConfig, PeftModel

from . import config as cfg
from .models import load_model, load_tokenizer, save_hf

log = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base: str | Path | None = None,
                  dtype: torch.dtype = torch.float32) -> Path:
    """Loads `base` (default: the adapter's recorded base), applies the adapter, folds it into
    the weights and saves the result with the tokenizer under `out_dir`."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        # Else peft takes the path for a Hub repository id and says so, puzzlingly.
        raise FileNotFoundError(f"--adapter {adapter_dir}: no adapter_config.json there")
    base = base or PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    if not base:
        raise SystemExit(f"{adapter_dir}: adapter records no base model; pass --base")
    model = PeftModel.from_pretrained(load_model(base, dtype), str(adapter_dir))
    merged = model.merge_and_unload()
    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    save_hf(merged, load_tokenizer(adapter_dir if has_tokenizer else base), out_dir)
    log.info("merged %s into %s -> %s", adapter_dir, base, out_dir)
    return Path(out_dir)


def save_trained(accelerator: Accelerator, objective: torch.nn.Module, tokenizer,
                 out_dir: Path, base_path: str, merge: bool) -> Path:
    """Writes the trained model: OUT/adapter (+ OUT/merged) for LoRA, OUT/model for full."""
    state = accelerator.get_state_dict(objective)  # gathers FSDP shards onto the main process
    model = accelerator.unwrap_model(objective).model
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return out_dir
    state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if isinstance(model, PeftModel):
        # A local base is recorded absolute: a relative one would be looked up against the
        # directory `merge` (or peft) runs in, and from elsewhere on the Hugging Face Hub.
        recorded = Path(base_path).resolve() if Path(base_path).exists() else base_path
        for peft_config in model.peft_config.values():
            peft_config.base_model_name_or_path = str(recorded)
        target = out_dir / "adapter"
        model.save_pretrained(target, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(target)
        if merge:
            merge_adapter(target, out_dir / "merged", base_path)
    else:
        target = out_dir / "model"
        model.save_pretrained(target, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(target)
    accelerator.wait_for_everyone()
    return target


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", type=Path, help="directory with adapter_config.json")
    p.add_argument("--base", default=None,
                   help="base model directory or .gguf (default: the adapter's recorded base)")
    p.add_argument("--out", type=Path, help="output model directory")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    cfg.add_config_argument(p)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg.resolve(args, required=("adapter", "out"))
    merge_adapter(args.adapter, args.out, args.base, _DTYPES[args.dtype])
    cfg.save(args, args.out)
    print(f"merged model written to {args.out}")
    return 0
