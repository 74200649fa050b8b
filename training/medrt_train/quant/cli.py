"""`medrt-train quantize`: a Hugging Face model directory -> a medrt quantized directory."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medrt_train.quant.calibrated import METHODS
from medrt_train.quant.format import module_type, validate
from medrt_train.quant.gptq import GPTQOptions
from medrt_train.quant.recipes import load_recipe
from medrt_train.quant.sizes import plan_bytes, size_table
from medrt_train.quant.types import QuantFormatError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path, help="Hugging Face model directory (f32/bf16/f16)")
    p.add_argument("out", type=Path, nargs="?", help="output directory (omit with --dry-run)")
    p.add_argument("--recipe", default="paper",
                   help="paper, int4, int8, or a YAML file of rules (docs/quantization.md)")
    p.add_argument("--method", choices=METHODS,
                   help="rtn (round-to-nearest), or calibrated: gptq, awq, awq-gptq (AWQ "
                        "scaling then GPTQ) (default: the recipe's)")
    p.add_argument("--embeddings", help="override the embeddings' type (e.g. f16, int8)")
    p.add_argument("--lm-head",
                   help="override the LM head's type (e.g. f16, int8, int6, int4-g32, nf4)")
    p.add_argument("--calib-data", type=Path,
                   help="PubMedQA ori_pqal.json (its dev split is used), a .jsonl corpus or "
                        ".txt; never evaluation text")
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--no-act-order", action="store_true", help="GPTQ in natural column order")
    p.add_argument("--damp", type=float, default=0.01)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--dry-run", action="store_true",
                   help="print the bytes the recipe gives from config.json alone; write nothing")


def run(args: argparse.Namespace) -> int:
    try:
        if not args.src.is_dir():
            # Else transformers answers with a puzzling "Repo id must be ..." error.
            raise FileNotFoundError(f"{args.src}: no such model directory")
        recipe = load_recipe(args.recipe).with_overrides(args.embeddings, args.lm_head)
        if args.dry_run:
            print(size_table(plan_bytes(args.src, recipe)))
            return 0
        if args.out is None:
            raise ValueError("an output directory is needed (or --dry-run)")
        if args.out.resolve() == args.src.resolve():
            # The writer replaces the weight files of OUT: that would destroy the source.
            raise ValueError(f"output {args.out} is the source directory; choose another")
        method = args.method or recipe.method
        return _quantize(args, recipe, method)
    except (QuantFormatError, ValueError, OSError) as exc:
        print(f"medrt-train quantize: {exc}", file=sys.stderr)
        return 2


def _quantize(args: argparse.Namespace, recipe, method: str) -> int:
    from transformers import AutoTokenizer

    from medrt_train.quant.calibration import calibration_batch, calibration_texts, describe
    from medrt_train.quant.quantize import quantize_model

    tokens = info = None
    if method != "rtn":
        if args.calib_data is None:
            raise ValueError(f"{method} needs --calib-data (PubMedQA ori_pqal.json or a corpus)")
        texts, source = calibration_texts(args.calib_data)
        tokenizer = AutoTokenizer.from_pretrained(args.src)
        tokens = calibration_batch(texts, tokenizer, args.calib_samples, args.calib_seq_len)
        info = describe(args.calib_data, source, tokens)
    options = GPTQOptions(act_order=not args.no_act_order, block_size=args.block_size,
                          damp=args.damp)
    section = quantize_model(args.src, args.out, recipe, method, tokens, info, options,
                             log=lambda m: print(m, file=sys.stderr))
    # What medrt will check when it loads OUT: fail here, not at serving time.
    validate(args.out)
    counts: dict[str, int] = {}
    for module, entry in section["modules"].items():
        key = str(module_type(entry, module))  # e.g. int4-g64, int6-g64, int8-g32, nf4, f16
        counts[key] = counts.get(key, 0) + 1
    print(json.dumps({"out": str(args.out), "recipe": recipe.name, "method": method,
                      "modules_by_type": counts}, indent=2))
    return 0
