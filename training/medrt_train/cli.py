"""The `medrt-train` command: one subcommand per pipeline stage.

Each stage lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
this file only dispatches, so a stage is added by naming its module here.
"""
from __future__ import annotations

import argparse
import importlib
import os
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
    words = list(sys.argv[1:] if argv is None else argv)
    # The stage's own words, so config.resolve can tell a typed flag from a default.
    args._argv = words[words.index(args.stage) + 1:]
    try:
        return int(modules[args.stage].run(args) or 0)
    except _user_errors() as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"medrt-train {args.stage}: {_one_line(exc)}", file=sys.stderr)
        return 2


# Set to 1 for the full traceback of an error that is otherwise one line.
DEBUG_ENV = "MEDRT_TRAIN_DEBUG"


def _user_errors() -> tuple[type[BaseException], ...]:
    """What bad input raises (missing or unreadable files, malformed YAML/JSON/safetensors,
    values out of range): a one-line message, not a traceback. Corpus errors are ValueErrors;
    a Hugging Face 'not found' is an OSError."""
    import yaml
    from safetensors import SafetensorError

    return (OSError, ValueError, yaml.YAMLError, SafetensorError)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return text


if __name__ == "__main__":
    sys.exit(main())
