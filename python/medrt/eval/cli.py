"""``medrt eval``: medical QA accuracy of a model as medrt serves it (docs/evaluation.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medrt.engine_options import add_engine_options, engine_options
from medrt.errors import InvalidRequest


def add_parser(sub: argparse._SubParsersAction, default_model: str) -> None:
    p = sub.add_parser(
        "eval", help="medical QA accuracy through the engine (PubMedQA, MedQA, MedMCQA, JSONL)",
        description="Scores a model on medical questions through medrt's engine, as "
                    "lm-evaluation-harness does (loglik) or from generated answers (generate). "
                    "With --compare, pairs two reports written by --output.")
    p.add_argument("--model", "-m", default=default_model,
                   help=f"model directory or known model name (default: {default_model})")
    p.add_argument("--task", default="pubmedqa",
                   help="pubmedqa, medqa, medmcqa or jsonl:FILE (default: pubmedqa)")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="the task's file (medqa, medmcqa: required; pubmedqa: ori_pqal.json, "
                        "found under $MEDRT_DATA or shared/data by default)")
    p.add_argument("--split", choices=("dev", "test"), default=None,
                   help="PubMedQA split (default: dev; report figures on test, tune on dev)")
    p.add_argument("--mode", choices=("loglik", "generate"), default="loglik")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="the first N questions")
    p.add_argument("--output", "-o", default=None, metavar="FILE", help="write the JSON report")
    p.add_argument("--markdown", default=None, metavar="FILE",
                   help="write the Markdown report (it is printed either way)")
    p.add_argument("--max-tokens", type=int, default=64, help="generate: answer tokens")
    p.add_argument("--reasoning-budget", type=int, default=0, metavar="N",
                   help="generate: tokens of <think> reasoning before the answer is forced")
    p.add_argument("--temperature", type=float, default=0.0, help="generate: 0 is greedy")
    p.add_argument("--seed", type=int, default=None, help="generate: sampling seed")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: physical cores)")
    p.add_argument("--window", type=int, default=16,
                   help="loglik: questions in flight (each context is computed once)")
    add_engine_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--compare", nargs=2, default=None, metavar=("A.json", "B.json"),
                   help="paired agreement and McNemar's test of two --output reports")


def cmd_eval(args: argparse.Namespace) -> int:
    from medrt.eval import report

    if args.compare:
        result = report.compare(report.load_report(args.compare[0]),
                                report.load_report(args.compare[1]))
        print(report.compare_markdown(result), end="")
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
        return 0
    from medrt.eval.generate import GenerateConfig
    from medrt.eval.run import evaluate
    from medrt.eval.tasks import load_task
    from medrt.frontend import resolve_model_dir

    if args.max_tokens < 1 or args.reasoning_budget < 0:
        raise InvalidRequest("--max-tokens must be >= 1 and --reasoning-budget >= 0")
    questions = load_task(args.task, args.data, args.split, args.limit)
    split = (args.split or "dev") if args.task == "pubmedqa" else None
    cfg = GenerateConfig(max_tokens=args.max_tokens, reasoning_budget=args.reasoning_budget,
                         temperature=args.temperature, seed=args.seed)
    result = evaluate(resolve_model_dir(args.model), questions, task=args.task, mode=args.mode,
                      split=split, generate=cfg, num_threads=args.threads, window=args.window,
                      progress=not args.no_progress,
                      engine_args=engine_options(args))
    text = report.markdown(result)
    print(text, end="")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0
