"""The `medrt-train` command: one subcommand per pipeline stage.

Each stage lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
this file only dispatches, so a stage is added by naming its module here.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "corpus": ("medrt_train.corpus_cli", "build an instruction corpus from seed questions"),
    "sft": ("medrt_train.sft", "LoRA/RSLoRA fine-tuning of a teacher"),
    "distill": ("medrt_train.distill", "teacher-to-student distillation"),
    "merge": ("medrt_train.merge", "merge a LoRA adapter into its base model"),
    "quantize": ("medrt_train.quant.cli", "mixed-precision quantization to medrt's format"),
    "eval": ("medrt_train.evaluate", "perplexity, KL and PubMedQA accuracy of a model"),
    "moe": ("medrt_train.moe.cli", "SparseDoctor LoRA-MoE: routed LoRA experts, contrastive router"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medrt-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    modules = {}
    for name, (module_name, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text)
        try:
            modules[name] = importlib.import_module(module_name)
        except ImportError as exc:  # a missing optional extra: say which stage needs what
            p.set_defaults(_import_error=exc)
            continue
        modules[name].add_arguments(p)
    # Known args first: a stage whose module did not import has no options, and its missing
    # extra must be the message rather than "unrecognized arguments".
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "_import_error", None) is not None:
        print(f"medrt-train {args.stage}: {args._import_error}. "
              "Install the training extra: pip install 'medrt[train]'", file=sys.stderr)
        return 2
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return int(modules[args.stage].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
