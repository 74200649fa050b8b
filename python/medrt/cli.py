"""The ``medrt`` command: pull and import models, list them, generate text, chat, evaluate."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from medrt.engine_options import add_engine_options, engine_options
from medrt.errors import InvalidCheckpoint, MedrtError
from medrt.eval.cli import add_parser as _add_eval_parser
from medrt.eval.cli import cmd_eval
from medrt.models.registry import DEFAULT_MODEL

EXIT_COMMANDS = ("/exit", "/quit")


def _add_model_and_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"model directory or known model name (default: {DEFAULT_MODEL}, "
                        "pulled on first use)")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens to generate at most")
    # Unset sampling flags take the model's generation_config.json values (as vLLM does:
    # medrt.generation_defaults), else the neutral value each help text names.
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature; 0 is greedy (default: the model's "
                        "generation_config.json, else 0)")
    p.add_argument("--top-p", type=float, default=None, help="(default: the model's, else 1)")
    p.add_argument("--top-k", type=int, default=None,
                   help="0 keeps every token (default: the model's, else 0)")
    p.add_argument("--min-p", type=float, default=None,
                   help="drop tokens below this fraction of the top token's probability "
                        "(default: the model's, else 0)")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help="make tokens already in the prompt or output less likely (a positive "
                        "logit is divided by it, a negative one multiplied; 1 is off, as "
                        "vLLM's repetition_penalty; default: the model's, else 1)")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampler")
    p.add_argument("--generation-config", default="auto", metavar="auto|none|DIR",
                   help="where unset sampling flags come from: the model's "
                        "generation_config.json (auto), none (greedy), or DIR's file")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop when the output contains TEXT (repeatable)")
    p.add_argument("--threads", type=_thread_count, default=0,
                   help="CPU threads (0: one per physical core; at most the CPUs this process "
                        "may use)")
    add_engine_options(p)


def _thread_count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n}: must be 0 (one per physical core) or more")
    return n  # above the usable CPUs: refused by the engine, which names the limit


def _parser() -> argparse.ArgumentParser:
    from medrt import __version__

    parser = argparse.ArgumentParser(prog="medrt", description="medrt: a medical LLM runtime")
    parser.add_argument("--version", action="version", version=f"medrt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("pull", help="download a known model and convert it")
    p.add_argument("name", help="a known model name (see `medrt models`)")
    p.add_argument("--dtype", choices=("f16", "bf16", "f32"), default=None,
                   help="dequantize the weights to this dtype, into <name>-<dtype> (default: "
                        "the packaged GGUF's own precision, e.g. 4 bits)")

    p = sub.add_parser("import-gguf", help="convert a Llama/Qwen2 GGUF file to a model directory")
    p.add_argument("file", help="the .gguf file")
    p.add_argument("dir", help="the model directory to write")
    p.add_argument("--dtype", choices=("auto", "f16", "bf16", "f32"), default="auto",
                   help="auto (default): keep Q4_0, Q4_1 and Q8_0 tensors at their precision and "
                        "write the rest in f16 (bf16 for a bf16 GGUF); f16, bf16, f32: dequantize "
                        "every tensor (f32 keeps the dequantized weights exact)")

    sub.add_parser("models", help="list known and pulled models")
    p = sub.add_parser("info", help="which device the engine would use, and why")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (MEDRT_DEVICE overrides)")

    p = sub.add_parser("generate", help="complete a prompt")
    p.add_argument("prompt", nargs="+", help="the prompt (words are joined with spaces)")
    _add_model_and_sampling(p)

    p = sub.add_parser("chat", help="chat with a model (interactive without --prompt)")
    p.add_argument("--prompt", "-p", default=None, help="answer this one message and exit")
    p.add_argument("--system", default=None, help="system message")
    _add_model_and_sampling(p)

    _add_eval_parser(sub, DEFAULT_MODEL)

    from medrt.serve.cli_args import add_keys_parser, add_serve_parser

    add_serve_parser(sub)
    add_keys_parser(sub)
    return parser


_CLI_NEUTRAL = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                "repetition_penalty": 1.0}


def _sampling(args: argparse.Namespace, llm: Any) -> Any:
    """The flags given, over the model's generation_config.json sampling, over greedy."""
    from medrt import SamplingParams

    model = {k: v for k, v in llm.sampling_defaults.items() if k in _CLI_NEUTRAL}
    fields = {k: getattr(args, k) if getattr(args, k) is not None else model.get(k, neutral)
              for k, neutral in _CLI_NEUTRAL.items()}
    return SamplingParams(max_tokens=args.max_tokens, seed=args.seed, stop=args.stop, **fields)


def _load(args: argparse.Namespace) -> Any:
    from medrt import LLM

    return LLM(args.model, num_threads=args.threads, generation_config=args.generation_config,
               **engine_options(args))


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _say_weights(model_dir: Any) -> None:
    """One line on stderr (stdout stays the directory, for scripts): types, bytes, the cut."""
    from medrt.models import weight_summary

    w = weight_summary(model_dir)
    vs = f"{abs(100 * w.memory_cut):.1f}% {'less' if w.memory_cut >= 0 else 'more'}"
    print(f"weights: {w.types_text()}; {_human(w.bytes)}, {vs} than f16 ({_human(w.f16_bytes)})",
          file=sys.stderr)


def cmd_pull(args: argparse.Namespace) -> int:
    from medrt.models import pull
    from medrt.models.registry import KNOWN_ENCODERS

    if args.name in KNOWN_ENCODERS:  # a sentence encoder (medrt.Embedder)
        from medrt.models.encoder_pull import pull_encoder

        print(pull_encoder(args.name))
        return 0
    from medrt.models.registry import KNOWN_MODELS

    if args.name not in KNOWN_MODELS:  # the library names its models; the CLI pulls both
        raise InvalidCheckpoint(f"unknown model '{args.name}' (known: "
                                f"{', '.join(sorted({*KNOWN_MODELS, *KNOWN_ENCODERS}))})")
    model_dir = pull(args.name, dtype=args.dtype)
    print(model_dir)
    _say_weights(model_dir)
    return 0


def cmd_import_gguf(args: argparse.Namespace) -> int:
    from medrt.models import import_gguf

    model_dir = import_gguf(args.file, args.dir, dtype=args.dtype, progress=True)
    print(model_dir)
    _say_weights(model_dir)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from medrt.models import list_models, medrt_home

    print(f"medrt home: {medrt_home()}")
    rows = [("NAME", "SIZE", "VS F16", "WEIGHTS", "PATH", "DESCRIPTION")]
    for m in list_models():
        size = _human(m.size_bytes) if m.size_bytes is not None else "-"
        cut = f"{-100 * m.weights.memory_cut:+.0f}%" if m.weights else "-"
        types = m.weights.types_text() if m.weights else "-"
        path = str(m.path) if m.path else "(not pulled)"
        rows.append((m.name, size, cut, types, path, m.description))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[5])
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from medrt.device import describe, select_device

    for line in describe(select_device(args.device)):
        print(line)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    with _load(args) as llm:
        out = llm.generate(" ".join(args.prompt), _sampling(args, llm))
    print(out[0].outputs[0].text)
    return 0


def _answer(llm: Any, history: list[dict[str, str]], params: Any) -> str:
    parts = []
    for chunk in llm.chat(history, params, stream=True):
        parts.append(chunk)
        print(chunk, end="", flush=True)
    print()
    return "".join(parts)


def cmd_chat(args: argparse.Namespace) -> int:
    history: list[dict[str, str]] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    with _load(args) as llm:
        params = _sampling(args, llm)
        if args.prompt is not None:
            history.append({"role": "user", "content": args.prompt})
            _answer(llm, history, params)
            return 0
        interactive = sys.stdin.isatty()
        if interactive:
            print("Type a message; /exit or Ctrl-D quits, Ctrl-C stops an answer.",
                  file=sys.stderr)
        failed = 0  # turns that got no answer: a script piping questions sees exit status 1
        while True:
            try:
                line = input(">>> " if interactive else "")
            except EOFError:
                if interactive:
                    print(file=sys.stderr)
                return 1 if failed and not interactive else 0
            if line.strip() in EXIT_COMMANDS:
                return 1 if failed and not interactive else 0
            if not line.strip():
                continue
            history.append({"role": "user", "content": line})
            try:
                history.append({"role": "assistant", "content": _answer(llm, history, params)})
            except (KeyboardInterrupt, MedrtError) as e:
                # The stream's iterator aborts the request when it is dropped; the unanswered
                # message leaves the history so the next turn starts clean.
                history.pop()
                failed += 1
                print(f"\n[stopped] {_one_line(e)}".rstrip(), file=sys.stderr)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def cmd_serve(args: argparse.Namespace) -> int:
    from medrt.serve.cli_args import run_serve

    return run_serve(args)


def cmd_keys(args: argparse.Namespace) -> int:
    from medrt.serve.cli_args import run_keys

    return run_keys(args)


_COMMANDS = {
    "serve": cmd_serve,
    "keys": cmd_keys,
    "pull": cmd_pull,
    "import-gguf": cmd_import_gguf,
    "models": cmd_models,
    "info": cmd_info,
    "generate": cmd_generate,
    "chat": cmd_chat,
    "eval": cmd_eval,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the medrt command line; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (MedrtError, OSError) as e:
        print(f"medrt: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
