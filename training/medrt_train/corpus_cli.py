"""`medrt-train corpus`: seed questions -> classify -> template -> teacher answers -> JSONL.

Each output line carries the question, its category, the system prompt (P_base + S_category),
the teacher's response, the reference answer of the source when there is one, and the
provenance: source, category, teacher, generation settings and time.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path

import torch
from medrt.medical import classify, system_prompt

from . import config as cfg
from .corpus import FORMATS, load, question_text
from .data.pubmedqa import load_split
from .examples import prompt_text
from .generate import GenerationSettings, generate
from .models import default_dtype, load_model, load_tokenizer

log = logging.getLogger(__name__)
DEFAULT_SEEDS = Path(__file__).with_name("data") / "seed_questions.jsonl"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=Path, default=DEFAULT_SEEDS,
                   help="seed questions (default: the 300 shipped ones)")
    p.add_argument("--format", choices=FORMATS, default="jsonl", help="format of --seeds")
    p.add_argument("--teacher", help="teacher: any causal LM directory or .gguf file")
    p.add_argument("--out", type=Path, help="output directory (corpus.jsonl, config.yaml)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N seeds")
    p.add_argument("--sample", type=int, default=0,
                   help="use a random sample of N seeds (seeded by --seed, file order kept)")
    p.add_argument("--reclassify", action="store_true",
                   help="classify every seed even when it carries a category")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device-map", default=None,
                   help="'auto' to spread a large teacher over all GPUs")
    cfg.add_config_argument(p)


def _pubmedqa_dev_only(records: list, path: Path) -> list:
    """The records of PubMedQA's `dev` split: its `test` questions, with their gold answers,
    are for reported figures only and must never reach a training corpus."""
    dev = {q.pubmed_id for q in load_split("dev", path)}
    kept = [r for r in records if r.id in dev]
    log.info("PubMedQA seeds %s: kept %d dev questions, dropped %d test questions (test is "
             "for reported figures only)", path, len(kept), len(records) - len(kept))
    return kept


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg.resolve(args, required=("teacher", "out"))
    out_dir = Path(args.out)
    cfg.save(args, out_dir)
    records = load(args.seeds, args.format)
    if args.format == "pubmedqa":
        records = _pubmedqa_dev_only(records, args.seeds)
    if args.limit:
        records = records[:args.limit]
    if args.sample and args.sample < len(records):
        keep = sorted(random.Random(args.seed).sample(range(len(records)), args.sample))
        records = [records[i] for i in keep]
    tokenizer = load_tokenizer(args.teacher)
    model = load_model(args.teacher, default_dtype(), device_map=args.device_map)
    if torch.cuda.is_available() and not args.device_map:
        model.to("cuda")
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature, top_p=args.top_p,
                                  batch_size=args.batch_size, seed=args.seed)
    questions = [question_text(r) for r in records]
    categories = [r.category if r.category and not args.reclassify else classify(q)
                  for r, q in zip(records, questions)]
    systems = [system_prompt(c) for c in categories]
    prompts = [prompt_text(tokenizer, s, q) for s, q in zip(systems, questions)]
    responses = generate(model, tokenizer, prompts, settings, desc="teacher answers")
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = out_dir / "corpus.jsonl"
    rows = []
    for i, (rec, q, cat, sysp, resp) in enumerate(zip(records, questions, categories, systems,
                                                      responses)):
        provenance = {"source": rec.source, "category": cat, "teacher": str(args.teacher),
                      "generation": settings.to_dict(), "created": created}
        rows.append(json.dumps({"id": f"{rec.source}-{rec.id or i}", "question": q,
                                "category": cat, "system": sysp, "response": resp,
                                "reference": rec.answer, "provenance": provenance}) + "\n")
    path.write_text("".join(rows), encoding="utf-8")
    counts = {c: categories.count(c) for c in sorted(set(categories))}
    print(f"corpus: {len(records)} records -> {path} {counts}")
    return 0
