"""Stage 1: LoRA/RSLoRA (or QLoRA, or full) fine-tuning of a model on an instruction corpus."""
from __future__ import annotations

import argparse
import logging
import random

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from . import config as cfg
from .examples import encode, load_instructions
from .lora import apply_lora, lora_config
from .losses import DistillLoss
from .merge import save_trained
from .models import default_dtype, load_model, load_tokenizer
from .trainer import Objective, add_lora_arguments, add_train_arguments, train

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="base model: Hugging Face directory or .gguf file")
    add_train_arguments(p)
    add_lora_arguments(p, default_mode="lora")
    p.add_argument("--qlora", action="store_true",
                   help="load the base in NF4 through bitsandbytes (GPU only)")
    cfg.add_config_argument(p)


def make_accelerator(args: argparse.Namespace) -> Accelerator:
    """bf16 autocast on GPUs, plain f32 on the CPU."""
    precision = "bf16" if torch.cuda.is_available() else "no"
    return Accelerator(gradient_accumulation_steps=args.grad_accum, mixed_precision=precision)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg.resolve(args, required=("model", "data", "out"))
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    if accelerator.is_main_process:
        cfg.save(args, args.out)
    tokenizer = load_tokenizer(args.model)
    # Master weights stay f32 for full training; a LoRA base may sit in bf16 on GPUs.
    dtype = torch.float32 if args.mode == "full" else default_dtype()
    model = load_model(args.model, dtype, load_in_4bit=args.qlora)
    if args.mode == "lora":
        model = apply_lora(model, lora_config(args.lora_r, args.lora_alpha, args.lora_dropout,
                                              args.targets, args.rslora), quantized=args.qlora)
    elif args.qlora:
        raise SystemExit("--qlora trains adapters on a frozen 4-bit base: use --mode lora")
    items = load_instructions(args.data)
    if args.limit:
        items = items[:args.limit]
    random.Random(args.seed).shuffle(items)
    examples = [encode(tokenizer, it, args.max_len) for it in items]
    objective = Objective(model, DistillLoss(ce=1.0, kl=0.0))
    objective = train(accelerator, objective, examples, tokenizer.pad_token_id, args)
    target = save_trained(accelerator, objective, tokenizer, args.out, args.model, args.merge)
    if accelerator.is_main_process:
        print(f"sft: wrote {target}")
    return 0
